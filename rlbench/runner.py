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
from rlbench import config, store
from rlbench.errors import UsageError
from rlbench.evaluator import adaptation_rule
from rlbench.progress import progress
from rlbench.sampler import Sampler
from rlbench.settings import RunConfig
from rlbench.trainer import Trainer


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses or parameters; the last good state is kept."""


def comparability(cfg: RunConfig) -> dict[str, Any]:
    """Everything that changes meta-test numbers and must be identical across the runs compared
    for one environment (``rlbench compare`` refuses a difference, naming the key). Settings
    that change speed only (workers, learner threads, ``eval.task_chunk``) are left out."""
    return {
        "env": envs.fingerprint(cfg.env_id, cfg.sampler.horizon),
        "sampler": {"meta_batch_size": cfg.sampler.meta_batch_size, "episodes_per_task": cfg.sampler.episodes_per_task,
                    "horizon": cfg.sampler.horizon, "unit": cfg.sampler.unit, "keep_tails": cfg.sampler.keep_tails},
        "advantage": config.to_dict(cfg.advantage),
        "budget": cfg.budget,
        "checkpoint_marks": cfg.checkpoint_marks,
        "eval": {k: v for k, v in config.to_dict(cfg.eval).items() if k not in SPEED_ONLY_EVAL},
        "test_time": adaptation_rule(cfg),
        "policy": {"hidden_sizes": list(cfg.policy.hidden_sizes), "action_scale": cfg.policy.action_scale,
                   "init_std": cfg.policy.init_std},
        "dtype": cfg.dtype,
    }


#: Evaluation settings that change speed only, and settings a resume may change.
SPEED_ONLY_EVAL = ("task_chunk", "adapt_lr")  # adapt_lr is recorded resolved, in "test_time"
SPEED_ONLY = ("sampler.n_workers", "eval.task_chunk", "torch_threads")


def check_budget(cfg: RunConfig) -> None:
    if cfg.budget < cfg.iteration_steps:
        raise UsageError(
            f"budget {cfg.budget} is smaller than one {cfg.algo} iteration ({cfg.iteration_steps} steps = "
            f"{cfg.sampler.meta_batch_size} tasks x {cfg.sampler.episodes_per_task} slots x horizon {cfg.sampler.horizon}"
            f"{' x ' + str(cfg.algo_cfg.inner_steps + 1) + ' rounds' if cfg.is_maml else ''})"
        )


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> bool:
    """Create a run directory, or check that ``resume`` continues the same config.

    Returns True if a previous state exists. Never overwrites another run's files."""
    run_dir = Path(run_dir)
    if store.is_run_dir(run_dir):
        if not resume:
            raise UsageError(f"{run_dir} already holds a run; pass --resume to continue it (nothing was changed)")
        old = store.read_config(run_dir)
        diffs = store.diff_dicts(config.to_dict(old), config.to_dict(cfg))
        # Settings that change speed but not results may differ on resume.
        diffs = [d for d in diffs if d not in SPEED_ONLY]
        if diffs:
            a, b = _lookup(config.to_dict(old), diffs[0]), _lookup(config.to_dict(cfg), diffs[0])
            raise UsageError(f"cannot resume {run_dir}: config differs in {diffs[0]} ({a!r} in the run, {b!r} now)")
        return (run_dir / store.STATE_FILE).exists()
    if run_dir.exists() and any(run_dir.iterdir()):
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
    store.save_torch(store.ckpt_path(run_dir, index), {**entry, "params": {k: v.detach().clone() for k, v in trainer.agent.params.items()}})
    return entry


def _read_metrics(run_dir: Path, upto_iteration: int) -> list[str]:
    path = run_dir / store.METRICS_FILE
    if not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a crash mid-append
            continue
        if row.get("iteration", 0) <= upto_iteration:
            keep.append(line)
    return keep


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False, max_iterations: int | None = None) -> dict[str, Any]:
    """Train one run to its budget (or ``max_iterations`` more iterations). Returns run.json."""
    check_budget(cfg)
    run_dir = Path(run_dir)
    has_state = prepare_run_dir(cfg, run_dir, resume)
    meta = store.read_meta(run_dir)
    if meta.get("status") == "finished":
        return meta
    marks = cfg.checkpoint_marks
    torch.set_num_threads(cfg.learner_threads)
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=cfg.sampler.n_workers, backend=cfg.sampler.backend) as sampler:
        trainer = Trainer(cfg, sampler)
        checkpoints: list[dict[str, Any]] = list(meta.get("checkpoints", []))
        wall = float(meta.get("wall_time_s", 0.0))
        if has_state:
            state = store.load_torch(run_dir / store.STATE_FILE)
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
