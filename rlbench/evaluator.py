"""Meta-test evaluation (docs/protocol.md section 6), the same for every agent.

For each checkpoint: T meta-test tasks drawn from (seed, "test-tasks") — the same tasks for
every algorithm of a seed — and for t = 0..n_updates: run one sampling round of
``episodes_per_task`` slots per task with the run's sampling unit, record the mean
undiscounted return of each slot's first episode (and the success rate), and if
t < n_updates take one adaptation step on the whole round. The step is the inner update of
the paired MAML algorithm (``cfg.paired_inner``: ProMP's likelihood-ratio surrogate for
DRS+PPO and ProMP, TRPO-MAML's log-likelihood loss for DRS+TRPO and TRPO-MAML) with the
pair's test-time step size (:func:`adaptation_lr`), via the pure :func:`agents.core.adapt`.

``gs_adam_compat`` reproduces the authors' released code instead: one Adam step per update,
one Adam optimiser whose moments persist across all tasks of the evaluation (tasks are then
processed one at a time, in order), learning rates DRS+PPO = its PPO rate, ProMP and
TRPO-MAML = their inner rate, DRS+TRPO = 0 (never adapted).

Evaluation steps are counted separately from the training budget.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import envs
from agents import metagrad, registry
from agents.core import DTYPES, adapt, as_stacked, inner_loss_fn, process
from agents.policy import Params
from agents.registry import make_policy
from rlbench import locking, seeding, store
from rlbench.errors import UsageError
from rlbench.progress import progress
from rlbench.sampler import Sampler
from rlbench.settings import RunConfig

# Adam constants of the compatibility mode (TensorFlow's AdamOptimizer defaults used by GS).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

COLUMNS = ["env_id", "algo", "seed", "checkpoint", "budget_mark", "env_steps", "test_update", "task", "return", "success", "episodes"]


@dataclass
class PersistentAdam:
    """A functional Adam whose moments persist across calls (GS compatibility mode)."""

    lr: float
    m: dict[str, torch.Tensor] = field(default_factory=dict)
    v: dict[str, torch.Tensor] = field(default_factory=dict)
    t: int = 0

    def step(self, params: Params, grads: Params) -> Params:
        b1, b2 = ADAM_BETAS
        self.t += 1
        out = {}
        for k, g in grads.items():
            self.m[k] = b1 * self.m.get(k, torch.zeros_like(g)) + (1 - b1) * g
            self.v[k] = b2 * self.v.get(k, torch.zeros_like(g)) + (1 - b2) * g * g
            mhat = self.m[k] / (1 - b1**self.t)
            vhat = self.v[k] / (1 - b2**self.t)
            out[k] = params[k] - self.lr * mhat / (torch.sqrt(vhat) + ADAM_EPS)
        return out


def gs_compat_lr(cfg: RunConfig) -> float:
    """Test-time learning rate of GS's code for the run's algorithm (its registry entry's
    ``gs_test_lr``; docs/protocol.md section 6.3)."""
    return registry.get(cfg.algo).gs_test_lr(cfg.algo_cfg)


def draw_test_tasks(env_id: str, n_tasks: int, seed: int, design: str = "random") -> list[Any]:
    """``n_tasks`` meta-test tasks of ``seed`` with the ``eval.task_design`` ``design``, from the
    seed's "test-tasks" stream (docs/protocol.md section 6.1)."""
    dist = envs.get_task_distribution(env_id)
    rng = seeding.generator(seed, "test-tasks")
    if design == "stratified":
        check_task_design(env_id, design)
        return dist.stratified_test_tasks(n_tasks, rng)
    return dist.test_tasks(n_tasks, rng)


def check_task_design(env_id: str, design: str) -> None:
    """A usage error if ``env_id``'s tasks cannot be drawn with ``design``."""
    dist = envs.get_task_distribution(env_id)
    if design == "stratified" and not dist.stratifiable:
        raise UsageError(f"eval.task_design: 'stratified' needs tasks with one scalar parameter; "
                         f"{env_id} varies {dist.describe()} (use 'random')")


def test_tasks(cfg: RunConfig) -> list[Any]:
    """The meta-test tasks of a seed: identical for every algorithm of that seed."""
    return draw_test_tasks(cfg.env_id, cfg.eval.n_tasks, cfg.seed, cfg.eval.task_design)


class PerTaskActor:
    """A sampler actor that computes each task's actions separately, from fresh copies of its
    observations and noise, with that task's own parameters ([1, ...] stacked)."""

    def __init__(self, policy, params_per_task: list[Params]):
        self.actors = [policy.actor(p) for p in params_per_task]

    def __call__(self, obs, noise):
        outs = [a(np.array(obs[i : i + 1]), np.array(noise[i : i + 1])) for i, a in enumerate(self.actors)]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def adaptation_rule(cfg: RunConfig) -> dict[str, Any]:
    """How this run is adapted at meta-test time (docs/protocol.md section 6); part of the
    run's comparability record, so both sides of a pair are always adapted by the same rule."""
    if cfg.eval.gs_adam_compat:
        return {"optimizer": "gs-adam", "loss": cfg.paired_inner, "lr": gs_compat_lr(cfg), "updates": cfg.eval.n_updates}
    return {"optimizer": "sgd", "loss": cfg.paired_inner, "lr": adaptation_lr(cfg), "updates": cfg.eval.n_updates}


def adaptation_lr(cfg: RunConfig) -> float:
    """Step size of the test-time SGD step: ``eval.adapt_lr`` (set per pair by experiments),
    else the rule of the run's registry entry (its effective inner step size)."""
    return cfg.eval.adapt_lr or registry.get(cfg.algo).test_lr(cfg.algo_cfg)


def eval_generators(cfg: RunConfig, checkpoint: int, tasks: range, test_update: int) -> list:
    """One generator per meta-test task: every evaluation random number is a function of
    (seed, checkpoint, task, test update) alone, so results do not depend on ``task_chunk``,
    and every algorithm of a seed sees the same streams (common random numbers)."""
    return [seeding.generator(cfg.seed, "eval", checkpoint, i, test_update) for i in tasks]


def evaluate_params(cfg: RunConfig, sampler: Sampler, params: Params, checkpoint: int, tasks: list[Any]) -> tuple[list[dict], int]:
    """Rows (one per task x test update) and the evaluation env steps for one parameter set.

    Each adaptation round uses the run's sampling unit (the inner step sees the data it saw in
    training); the recorded return is the mean over the first episode of each slot (E whole
    episodes per task, unbiased under either unit)."""
    policy = make_policy(cfg, sampler.obs_dim, sampler.act_dim)
    dtype = DTYPES[cfg.dtype]
    params = {k: v.detach().to(dtype) for k, v in params.items()}
    ev = cfg.eval
    lr = adaptation_lr(cfg)
    kind = registry.inner_loss(cfg.paired_inner)  # the paired meta-learner's inner loss
    rows: list[dict] = []
    steps = 0
    chunk = 1 if ev.gs_adam_compat else ev.task_chunk
    adam = PersistentAdam(gs_compat_lr(cfg)) if ev.gs_adam_compat else None
    for c0 in range(0, len(tasks), chunk):
        chunk_tasks = tasks[c0 : c0 + chunk]
        # The chunk's environments step together, but all learner arithmetic (acting, the
        # baseline, the adaptation step) runs per task on its own freshly allocated arrays:
        # batched kernels round differently with the batch's size and memory alignment, and a
        # task's numbers must not depend on which tasks share its chunk.
        current = [as_stacked(params, 1) for _ in chunk_tasks]
        for t in range(ev.n_updates + 1):
            rngs = eval_generators(cfg, checkpoint, range(c0, c0 + len(chunk_tasks)), t)
            batch = sampler.collect(chunk_tasks, ev.episodes_per_task, PerTaskActor(policy, current), rngs,
                                    unit=cfg.sampler.unit, keep_tails=cfg.sampler.keep_tails)
            steps += batch.env_steps
            ret, succ = batch.first_episode_returns().mean(-1), batch.first_episode_success().mean(-1)
            for i in range(len(chunk_tasks)):
                rows.append({"test_update": t, "task": c0 + i, "return": float(ret[i]), "success": float(succ[i]),
                             "episodes": ev.episodes_per_task})
            if t == ev.n_updates:
                break
            for i, p_i in enumerate(current):
                tb = process(policy, p_i, batch.task(i), cfg.advantage, dtype)
                if adam is None:
                    current[i] = adapt(policy, p_i, tb, lr, kind)
                else:
                    g = metagrad.grad(inner_loss_fn(kind, policy, tb), p_i)
                    current[i] = adam.step(p_i, g)
    rows.sort(key=lambda r: (r["test_update"], r["task"]))  # the same table for any task_chunk
    return rows, steps


def evaluate_run(run_dir: Path, n_workers: int | None = None, quiet: bool = False, n_tasks: int | None = None) -> pd.DataFrame:
    """Evaluate every saved checkpoint of a run (resumable per checkpoint); writes evaluation.csv."""
    run_dir = Path(run_dir)
    if not store.is_run_dir(run_dir):
        raise UsageError(f"{run_dir} is not an rlbench run directory (no {store.CONFIG_FILE} / {store.META_FILE})")
    with locking.claim(run_dir, "run"):
        return _evaluate_run(run_dir, n_workers, quiet, n_tasks)


_RECOMPUTE = "delete it and run rlbench evaluate again to recompute it"


def read_part(run_dir: Path, index: int, cfg: RunConfig, sha256: str | None) -> pd.DataFrame:
    """One checkpoint's evaluation part, checked: its sha256 against the one recorded in
    run.json when it was written (runs evaluated before checksums have none), its columns,
    its checkpoint index and its number of rows. Damage raises CorruptFileError."""
    path = store.eval_part_path(run_dir, index)
    data = path.read_bytes()
    if sha256 is not None and store.sha256_bytes(data) != sha256:
        raise store.CorruptFileError(f"{path} is damaged (its sha256 differs from the one recorded in run.json); {_RECOMPUTE}")
    try:
        df = pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        raise store.CorruptFileError(f"{path} is damaged (not a CSV table); {_RECOMPUTE}") from None
    rows = cfg.eval.n_tasks * (cfg.eval.n_updates + 1)
    if list(df.columns) != COLUMNS or len(df) != rows or not (df["checkpoint"] == index).all():
        raise store.CorruptFileError(f"{path} is damaged (expected {rows} rows of checkpoint {index} with columns "
                                     f"{','.join(COLUMNS)}); {_RECOMPUTE}")
    return df


def _evaluate_run(run_dir: Path, n_workers: int | None, quiet: bool, n_tasks: int | None) -> pd.DataFrame:
    cfg = store.read_config(run_dir)
    if n_tasks is not None and n_tasks != cfg.eval.n_tasks:
        raise UsageError("the number of test tasks is part of the run's config (eval.n_tasks); set it at training time")
    meta = store.read_meta(run_dir)
    ckpts = meta.get("checkpoints", [])
    if not ckpts:
        raise UsageError(f"{run_dir} has no checkpoints yet; train it first")
    tasks = test_tasks(cfg)
    workers = cfg.sampler.n_workers if n_workers is None else n_workers
    frames = []
    done_steps: dict[str, int] = dict(meta.get("eval_steps_by_ckpt", {}))
    torch.set_num_threads(cfg.learner_threads)
    # A part counts as done once its checksum is in run.json (a part written just before a
    # crash, with no checksum yet, is recomputed). Runs evaluated before checksums existed
    # have no "eval_sha256" at all: their parts are checked by shape only.
    shas: dict[str, str] | None = meta.get("eval_sha256")
    if shas is None and not done_steps:
        shas = {}
    todo = [c for c in ckpts if not store.eval_part_path(run_dir, c["index"]).exists() or (shas is not None and str(c["index"]) not in shas)]
    if todo:
        per_ckpt = cfg.eval.n_tasks * (cfg.eval.n_updates + 1) * cfg.eval.episodes_per_task * cfg.sampler.horizon
        bar = progress(total=per_ckpt * len(todo), desc=f"evaluate {cfg.algo} seed {cfg.seed}", disable=quiet)
        with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=workers, backend=cfg.sampler.backend,
                     env_kwargs=cfg.env_kwargs) as sampler:
            for c in todo:
                state = store.load_torch(store.ckpt_path(run_dir, c["index"]), sha256=c.get("sha256"))
                rows, steps = evaluate_params(cfg, sampler, state["params"], c["index"], tasks)
                df = pd.DataFrame(rows)
                df.insert(0, "env_steps", c["env_steps"])
                df.insert(0, "budget_mark", c["budget_mark"])
                df.insert(0, "checkpoint", c["index"])
                df.insert(0, "seed", cfg.seed)
                df.insert(0, "algo", cfg.algo)
                df.insert(0, "env_id", cfg.env_id)
                buf = io.StringIO()
                df[COLUMNS].to_csv(buf, index=False)
                text = buf.getvalue()
                store.write_text(store.eval_part_path(run_dir, c["index"]), text)
                done_steps[str(c["index"])] = steps
                shas = {**(shas or {}), str(c["index"]): store.sha256_bytes(text.encode())}
                store.update_meta(run_dir, eval_steps_by_ckpt=done_steps, eval_steps=int(sum(done_steps.values())), eval_sha256=shas)
                bar.update(per_ckpt)
        bar.close()
    for c in ckpts:
        frames.append(read_part(run_dir, c["index"], cfg, (shas or {}).get(str(c["index"]))))
    table = pd.concat(frames, ignore_index=True)
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    store.write_text(run_dir / store.EVAL_FILE, buf.getvalue())
    return table
