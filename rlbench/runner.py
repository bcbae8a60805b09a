"""One training run: equal-budget iterations, checkpoints at shared env-step marks, resume.

Determinism and resume: every random number of iteration i comes from generators derived
from (seed, purpose, i), and the full learner state (parameters, optimiser moments, ProMP's
eta) is saved atomically after every iteration, so a run resumed after a crash at any moment
continues exactly as the uninterrupted run would have.

This module prepares and checks the run directory and runs the loop; what happens around each
iteration (checkpoints, metrics log, non-finite guard, saved state, progress, run.json) is done
by the hooks of :mod:`rlbench.hooks`, to which a user can add their own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import envs
from envs import slot_physics
from rlbench import backends, config, hooks, locking, store
from rlbench.errors import UsageError
from rlbench.evaluator import adaptation_rule, check_task_design
from rlbench.hooks import NonFiniteError, TrainState  # noqa: F401 -- NonFiniteError re-exported
from rlbench.sampler import STEPPERS, Sampler, resolve_backend
from rlbench.settings import RunConfig
from rlbench.trainer import Trainer


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
        # task_design is recorded only when not the default, so runs made before the setting
        # existed stay comparable with new runs of the same (random) design.
        "eval": {k: v for k, v in config.to_dict(cfg.eval).items()
                 if k not in SPEED_ONLY_EVAL and not (k == "task_design" and v == "random")},
        "test_time": adaptation_rule(cfg),
        # Which simulation code path steps the environments: recorded, but compare does not
        # require it to match (every path is bit-identical to the package's, by test).
        "sampler_path": backends.path_of(cfg.sampler.backend, cfg.env_id),
        "policy": {"hidden_sizes": list(cfg.policy.hidden_sizes), "action_scale": cfg.policy.action_scale,
                   "init_std": cfg.policy.init_std},
        "dtype": cfg.dtype,
        # the TRPO learners' subsample of Fisher-vector products (off the protocol): recorded only
        # when set, so runs made before the option existed stay comparable with default runs
        **({"fvp_subsample": cfg.algo_cfg.fvp_subsample} if cfg.algo_cfg.fvp_subsample != 1 else {}),
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
    slot_physics.check()  # RLBENCH_PHYSICS_LOOP (the mujoco-batched backend's physics loop)


def check_run(cfg: RunConfig, run_dir: Path, max_iterations: int | None = None) -> None:
    """Everything about a run that can be checked without writing a file."""
    check_budget(cfg)
    check_backend(cfg)
    check_task_design(cfg.env_id, cfg.eval.task_design)
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
            a, b = lookup(config.to_dict(old), diffs[0]), lookup(config.to_dict(cfg), diffs[0])
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
        "cpu": store.cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "budget": cfg.budget, "budget_used": 0, "iterations": 0, "wall_time_s": 0.0, "eval_steps": 0,
        "checkpoints": [],
    })
    return False


def lookup(d: dict, dotted: str) -> Any:
    """``d``'s value at a dotted key (``algo_cfg.inner_lr``), None when absent."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False, max_iterations: int | None = None,
          hooks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one run to its budget (or ``max_iterations`` more iterations). Returns run.json.

    Everything checkable is checked before a file is written; the run directory is locked
    for the whole call (a second writer gets a usage error). ``hooks`` are the user's
    :mod:`rlbench.hooks` objects, called after the built-in ones (see that module for the
    calls, their order and their data); a run that is already finished calls none."""
    check_run(cfg, run_dir, max_iterations)
    run_dir = Path(run_dir)
    with locking.claim(run_dir, "run"):
        return _train(cfg, run_dir, resume, quiet, max_iterations, hooks)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, quiet: bool, max_iterations: int | None,
           user_hooks: Sequence[Any]) -> dict[str, Any]:
    has_state = prepare_run_dir(cfg, run_dir, resume)
    meta = store.read_meta(run_dir)
    if meta.get("status") == "finished":
        return meta
    torch.set_num_threads(cfg.learner_threads)
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=cfg.sampler.n_workers, backend=cfg.sampler.backend,
                 env_kwargs=cfg.env_kwargs) as sampler:
        state = TrainState(cfg, run_dir, Trainer(cfg, sampler), quiet=quiet, checkpoints=list(meta.get("checkpoints", [])),
                           wall_time_s=float(meta.get("wall_time_s", 0.0)), meta=meta)
        if has_state:
            _restore(state)
        state.hooks = [*hooks.builtin_hooks(), *user_hooks]
        trainer = state.trainer
        try:
            state.call("on_start")
            while trainer.can_iterate() and (max_iterations is None or state.done_iterations < max_iterations):
                t0 = time.perf_counter()
                before = trainer.budget.used
                state.metrics = trainer.iterate()
                state.seconds = time.perf_counter() - t0
                state.steps = trainer.budget.used - before
                state.wall_time_s += state.seconds
                state.call("on_iteration_end")
                state.done_iterations += 1
            state.finished = not trainer.can_iterate()
            state.call("on_end")
        finally:
            hooks.close_all(state.hooks, state)
        return state.meta


def _restore(state: TrainState) -> None:
    """Continue from the saved state: learner, iteration, budget used, checkpoints, wall time."""
    saved = store.load_torch(state.run_dir / store.STATE_FILE, todo="restore it from a backup or train again in a new directory")
    state.trainer.agent.load_state_dict(saved["agent"])
    state.trainer.iteration = saved["iteration"]
    state.trainer.budget.used = saved["env_steps"]
    state.checkpoints = saved["checkpoints"]
    state.wall_time_s = saved["wall_time_s"]
