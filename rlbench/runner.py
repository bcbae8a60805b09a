"""One training run: equal-budget iterations, checkpoints at shared env-step marks, resume.

Determinism and resume: every random number of iteration i comes from generators derived
from (seed, purpose, i), and the full learner state (parameters, optimiser moments, ProMP's
eta) is saved atomically after every iteration, so a run resumed after a crash at any moment
continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

import envs
from rlbench import backends, config, locking, pairing, store
from rlbench.errors import UsageError
from rlbench.evaluator import adaptation_rule
from rlbench.progress import progress
from rlbench.sampler import STEPPERS, Sampler, resolve_backend
from rlbench.settings import RunConfig
from rlbench.trainer import Trainer


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses or parameters; the last good state is kept."""


def comparability(cfg: RunConfig) -> dict[str, Any]:
    """Everything that changes meta-test numbers and must be identical across the runs compared
    for one environment (``rlbench compare`` refuses a difference, naming the key). Settings
    that change speed only (workers, ``eval.task_chunk``) are left out, and so is the learner's
    thread count: it changes float rounding (so a resume must keep it) but not what is measured."""
    return {
        "env": envs.fingerprint(cfg.env_id, cfg.sampler.horizon, cfg.env_kwargs),
        "sampler": {"meta_batch_size": cfg.sampler.meta_batch_size, "episodes_per_task": cfg.sampler.episodes_per_task,
                    "horizon": cfg.sampler.horizon, "unit": cfg.sampler.unit, "keep_tails": cfg.sampler.keep_tails},
        "advantage": config.to_dict(cfg.advantage),
        "budget": cfg.budget,
        "checkpoint_marks": cfg.checkpoint_marks,
        "eval": {k: v for k, v in config.to_dict(cfg.eval).items() if k not in SPEED_ONLY_EVAL},
        "test_time": adaptation_rule(cfg),
        # Which simulation code path steps the environments: recorded, but compare does not
        # require it to match (every path is bit-identical to the package's, by test).
        "sampler_path": backends.path_of(cfg.sampler.backend, cfg.env_id),
        "policy": {"hidden_sizes": list(cfg.policy.hidden_sizes), "action_scale": cfg.policy.action_scale,
                   "init_std": cfg.policy.init_std},
        "dtype": cfg.dtype,
    }


#: Evaluation settings that change speed only, and settings a resume may change.
SPEED_ONLY_EVAL = ("task_chunk", "adapt_lr")  # adapt_lr is recorded resolved, in "test_time"
SPEED_ONLY = ("sampler.n_workers", "eval.task_chunk")


def check_budget(cfg: RunConfig) -> None:
    if cfg.budget < cfg.iteration_steps:
        raise UsageError(
            f"budget {cfg.budget} is smaller than one {cfg.algo} iteration ({cfg.iteration_steps} steps = "
            f"{cfg.sampler.meta_batch_size} tasks x {cfg.sampler.episodes_per_task} slots x horizon {cfg.sampler.horizon}"
            f"{' x ' + str(cfg.sampling_rounds) + ' rounds' if cfg.sampling_rounds > 1 else ''})"
        )


def check_backend(cfg: RunConfig) -> None:
    """The sampler backend exists and supports the environment (checked before any file is written)."""
    try:
        name = resolve_backend(cfg.sampler.backend, cfg.env_id)
    except ValueError as e:
        raise UsageError(f"sampler.backend: {e}") from None
    supports = getattr(STEPPERS[name], "supports", None)
    if supports is not None and not supports(cfg.env_id):
        raise UsageError(f"sampler.backend: {name!r} does not support {cfg.env_id} (use auto or gym)")


def check_run(cfg: RunConfig, run_dir: Path, max_iterations: int | None = None) -> None:
    """Everything about a run that can be checked without writing a file."""
    check_budget(cfg)
    check_backend(cfg)
    if max_iterations is not None and max_iterations < 0:
        raise UsageError(f"--max-iterations must be >= 0, got {max_iterations}")
    locking.check_out_path(run_dir)
    run_dir = Path(run_dir)
    if run_dir.is_dir() and not store.is_run_dir(run_dir) and not _is_empty(run_dir):
        raise UsageError(f"{run_dir} exists and is not an rlbench run directory; choose an empty or new --out")


def _is_empty(run_dir: Path) -> bool:
    """No files but our lock (and temporary files of a killed writer)."""
    return all(p.name == locking.LOCK_FILE or (p.name.startswith(".") and p.name.endswith(store.TMP_SUFFIX))
               for p in run_dir.iterdir())


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> bool:
    """Create a run directory, or check that ``resume`` continues the same config.

    Returns True if a previous state exists. Never overwrites another run's files."""
    run_dir = Path(run_dir)
    if store.is_run_dir(run_dir):
        if not resume:
            raise UsageError(f"{run_dir} already holds a run; pass --resume to continue it (nothing was changed)")
        old = store.read_config(run_dir)
        diffs = store.diff_dicts(config.to_dict(old), config.to_dict(cfg))
        # Settings that change speed but not results may differ on resume (torch_threads
        # changes float reductions, hence results: it must match).
        diffs = [d for d in diffs if d not in SPEED_ONLY]
        if diffs:
            a, b = _lookup(config.to_dict(old), diffs[0]), _lookup(config.to_dict(cfg), diffs[0])
            raise UsageError(f"cannot resume {run_dir}: config differs in {diffs[0]} ({a!r} in the run, {b!r} now)")
        has_state = (run_dir / store.STATE_FILE).exists()
        done = store.read_meta(run_dir).get("iterations", 0)
        if not has_state and done:
            raise store.CorruptFileError(f"{run_dir / store.STATE_FILE} is missing but {store.META_FILE} records {done} "
                                         f"iterations; restore it from a backup or train again in a new directory")
        return has_state
    if run_dir.exists() and not _is_empty(run_dir):
        raise UsageError(f"{run_dir} exists and is not an rlbench run directory; choose an empty or new --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    store.write_text(run_dir / store.CONFIG_FILE, store.config_text(cfg))
    store.write_json(run_dir / store.META_FILE, {
        "env_id": cfg.env_id, "algo": cfg.algo, "seed": cfg.seed, "status": "created",
        "comparability": comparability(cfg), "versions": store.versions(), "git_commit": store.git_commit(),
        "budget": cfg.budget, "budget_used": 0, "iterations": 0, "wall_time_s": 0.0, "eval_steps": 0,
        "checkpoints": [],
    })
    return False


def _lookup(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _finite(metrics: dict[str, float], params) -> bool:
    if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
        return False
    return all(bool(v.detach().isfinite().all()) for v in params.values())


def _save_checkpoint(run_dir: Path, index: int, mark: int, trainer: Trainer) -> dict[str, Any]:
    entry = {"index": index, "budget_mark": mark, "env_steps": trainer.budget.used, "iteration": trainer.iteration}
    digest = store.save_torch(store.ckpt_path(run_dir, index), {**entry, "params": {k: v.detach().clone() for k, v in trainer.agent.params.items()}})
    return {**entry, "sha256": digest}  # verified by the evaluator before it uses the file


def _read_metrics(run_dir: Path, upto_iteration: int) -> list[str]:
    """Lines of the metrics log up to the saved state's iteration (a line torn by a crash
    mid-append is dropped; a damaged line elsewhere is an error)."""
    return [line for line, row in store.read_jsonl(run_dir / store.METRICS_FILE) if row.get("iteration", 0) <= upto_iteration]


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False, max_iterations: int | None = None) -> dict[str, Any]:
    """Train one run to its budget (or ``max_iterations`` more iterations). Returns run.json.

    Everything checkable is checked before a file is written; the run directory is locked
    for the whole call (a second writer gets a usage error)."""
    check_run(cfg, run_dir, max_iterations)
    run_dir = Path(run_dir)
    with locking.claim(run_dir, "run"):
        return _train(cfg, run_dir, resume, quiet, max_iterations)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, quiet: bool, max_iterations: int | None) -> dict[str, Any]:
    has_state = prepare_run_dir(cfg, run_dir, resume)
    meta = store.read_meta(run_dir)
    if meta.get("status") == "finished":
        return meta
    marks = cfg.checkpoint_marks
    torch.set_num_threads(cfg.learner_threads)
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=cfg.sampler.n_workers, backend=cfg.sampler.backend,
                 env_kwargs=cfg.env_kwargs) as sampler:
        trainer = Trainer(cfg, sampler)
        checkpoints: list[dict[str, Any]] = list(meta.get("checkpoints", []))
        wall = float(meta.get("wall_time_s", 0.0))
        if has_state:
            state = store.load_torch(run_dir / store.STATE_FILE, todo="restore it from a backup or train again in a new directory")
            trainer.agent.load_state_dict(state["agent"])
            trainer.iteration = state["iteration"]
            trainer.budget.used = state["env_steps"]
            checkpoints = state["checkpoints"]
            wall = state["wall_time_s"]
        # Rewrite the metrics log to exactly the iterations the saved state has seen.
        lines = _read_metrics(run_dir, trainer.iteration)
        store.write_text(run_dir / store.METRICS_FILE, "".join(line + "\n" for line in lines))
        if not checkpoints:
            checkpoints.append(_save_checkpoint(run_dir, 0, marks[0], trainer))
        store.update_meta(run_dir, status="running", checkpoints=checkpoints)
        pairing.ensure(run_dir)  # proof for paired statistics: hashes of the initial policy and test tasks
        bar = progress(total=cfg.budget, initial=trainer.budget.used, desc=f"train {cfg.algo} seed {cfg.seed}", unit="step", disable=quiet)
        done_iters = 0
        try:
            with open(run_dir / store.METRICS_FILE, "a") as log:
                while trainer.can_iterate() and (max_iterations is None or done_iters < max_iterations):
                    t0 = time.perf_counter()
                    before = trainer.budget.used
                    metrics = trainer.iterate()
                    dt = time.perf_counter() - t0
                    wall += dt
                    if not _finite(metrics, trainer.agent.params):
                        bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
                        store.update_meta(run_dir, status="failed", error=f"non-finite values at iteration {trainer.iteration}: {bad or 'parameters'}")
                        raise NonFiniteError(
                            f"{run_dir}: non-finite {'metrics ' + ', '.join(bad) if bad else 'parameters'} at iteration "
                            f"{trainer.iteration}; kept the last good state (iteration {trainer.iteration - 1})"
                        )
                    while len(checkpoints) < len(marks) and trainer.budget.used >= marks[len(checkpoints)]:
                        checkpoints.append(_save_checkpoint(run_dir, len(checkpoints), marks[len(checkpoints)], trainer))
                    metrics["time/iteration_s"] = dt
                    metrics["time/steps_per_s"] = (trainer.budget.used - before) / dt
                    row = {"iteration": trainer.iteration, "env_steps": trainer.budget.used, **metrics}
                    # Log line first, then state: after a crash between them the log has one row
                    # beyond the saved state, which resume drops (rows past the state's iteration).
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    store.save_torch(run_dir / store.STATE_FILE, {
                        "agent": trainer.agent.state_dict(), "iteration": trainer.iteration,
                        "env_steps": trainer.budget.used, "checkpoints": checkpoints, "wall_time_s": wall,
                    })
                    done_iters += 1
                    bar.update(trainer.budget.used - before)
                    bar.set_postfix({"ret": f"{metrics.get('rollout/return_mean', float('nan')):.1f}", "it": trainer.iteration})
                    store.update_meta(run_dir, budget_used=trainer.budget.used, iterations=trainer.iteration, wall_time_s=wall,
                                      checkpoints=checkpoints)
        finally:
            bar.close()
        finished = not trainer.can_iterate()
        if finished:
            # Marks the budget could not reach (episodes ending early leave a remainder smaller
            # than one iteration) get the final policy, with its exact step count recorded.
            while len(checkpoints) < len(marks):
                checkpoints.append(_save_checkpoint(run_dir, len(checkpoints), marks[len(checkpoints)], trainer))
        return store.update_meta(run_dir, status="finished" if finished else "running", checkpoints=checkpoints,
                                 budget_used=trainer.budget.used, iterations=trainer.iteration, wall_time_s=wall)
