"""CPU time of the MAML learners' update alone, per implementation, on the same recorded batch.

Samples one iteration's rounds (pre-adaptation, post-adaptation) at the protocol's batch shape
(or ``--fraction`` of its tasks) once, then replays exactly those batches to a fresh agent of
each ``impl`` (agents/maml.py) and measures the process CPU time and the wall time of its
``train_iteration`` (everything an iteration does besides sampling: advantages, inner steps,
the outer update). The sampler is idle during the replay, so with ``--threads 1`` the CPU time
is the learner's own work, comparable between implementations on a machine shared with other
jobs (the wall time is not). Each implementation is replayed ``--repeats`` times, in turn.

``--impls`` also takes ``fused-exact``: ``fused`` with the policy's exact forward operations
(``fast_forward`` off, agents/maml.py MAMLBase), the fused learner as it was before the fast
path, to time the two side by side (TRPO-MAML has no fast path: the two are the same there).

The process CPU time of the recorded sampling rounds is reported too (``sampling_cpu_s``: the
threaded batched backend steps in this process, so it counts its threads), and with it each
implementation's estimated update share of an iteration, update / (update + sampling), both
in CPU time.

    python scripts/bench_maml_update.py --impls fused analytic
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

import torch

import envs
from agents import maml, registry
from agents.core import DTYPES
from agents.registry import AGENTS, make_policy
from envs.base import UnknownEnvError
from rlbench import config, presets, seeding
from rlbench.cli import check_out
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_iterations import emit  # noqa: E402


def record(env_id: str, algo: str, fraction: float, threads: int, impl: str | None):
    """Sample one iteration's rounds once at the protocol's batch shape (``fraction`` of its
    tasks). Returns (fresh, tasks, log, sampling CPU seconds, backend): ``fresh(impl)`` makes
    a new agent from the same initial parameters (``impl`` None: a learner without
    implementations), ``log`` holds the recorded batches in the order the agent asked for them
    (replay them to an agent's ``train_iteration``)."""
    cfg = presets.run_config(env_id, algo, seed=1, budget=10**12)
    tasks_n = max(1, round(cfg.sampler.meta_batch_size * fraction))
    cfg = config.replace(cfg, sampler=config.replace(cfg.sampler, meta_batch_size=tasks_n))
    torch.set_num_threads(threads)

    def fresh(impl: str | None):
        policy = make_policy(cfg, sampler.obs_dim, sampler.act_dim)
        params = policy.init_params(seeding.torch_generator(cfg.seed, "policy-init"), DTYPES[cfg.dtype])
        return AGENTS[algo](cfg, policy, params, **({} if impl is None else {"impl": impl}))

    with Sampler(env_id, horizon=cfg.sampler.horizon, n_workers=cfg.sampler.n_workers, backend=cfg.sampler.backend) as sampler:
        trainer = Trainer(cfg, sampler)
        tasks = trainer.tasks.sample(tasks_n, seeding.generator(cfg.seed, "train-tasks", 0))
        log: list = []
        sampling_cpu = [0.0]

        def record_(tasks_, params):
            c0 = time.process_time()
            log.append(trainer.collect(tasks_, params))
            sampling_cpu[0] += time.process_time() - c0
            return log[-1]

        fresh(impl).train_iteration(record_, tasks)
        return fresh, tasks, log, sampling_cpu[0], sampler.backend


def add_batch_arguments(p: argparse.ArgumentParser, threads: int, repeats: int) -> None:
    """The options the update benchmarks share: environment, fraction of the protocol's tasks,
    learner threads, repeats, output file."""
    p.add_argument("--env", default="rlbench/HalfCheetahRandVel-v0")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the protocol's tasks per iteration")
    p.add_argument("--threads", type=int, default=threads, help="learner torch threads")
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--out")


def bad_batch_arguments(a: argparse.Namespace) -> bool:
    """True (after printing the one-line error) when --env is unknown, --fraction, --threads or
    --repeats is out of range, or --out cannot be written (rlbench.cli.check_out)."""
    try:
        envs.entry(a.env)
    except UnknownEnvError as e:
        print(f"error: --env: {e}", file=sys.stderr)
        return True
    if not 0 < a.fraction <= 1 or a.threads < 1 or a.repeats < 1:
        print("error: --fraction must be in (0, 1], --threads and --repeats at least 1", file=sys.stderr)
        return True
    problem = check_out(a.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return True
    return False


#: ``--impls`` suffix: the implementation with ``fast_forward`` off
EXACT = "-exact"


def bench(env_id: str, algo: str, impls: list[str], fraction: float, threads: int, repeats: int) -> list[dict]:
    fresh, tasks, log, sampling_cpu, backend = record(env_id, algo, fraction, threads, impls[0].removesuffix(EXACT))
    tasks_n = len(tasks)
    rows = []
    for rep in range(repeats):
        for impl in impls:
            agent = fresh(impl.removesuffix(EXACT))
            if impl.endswith(EXACT):
                agent.fast_forward = False
            replay = iter(log)
            load = os.getloadavg()[0]
            c0, w0 = time.process_time(), time.perf_counter()
            metrics = agent.train_iteration(lambda tasks_, params, replay=replay: next(replay), tasks)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            rows.append({"env": env_id, "algo": algo, "impl": impl, "repeat": rep, "tasks": tasks_n, "torch_threads": threads,
                         "update_cpu_s": cpu, "update_wall_s": wall, "loadavg": [load, os.getloadavg()[0]],
                         "sampling_cpu_s": sampling_cpu, "sampling_backend": backend, "sampling_rounds": len(log),
                         "loss_after": metrics.get("train/loss", metrics.get("train/outer_loss"))})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    maml_algos = [k for k in registry.keys() if "impl" in inspect.signature(AGENTS[k]).parameters]  # the MAML learners
    p.add_argument("--algos", nargs="+", default=maml_algos, choices=maml_algos)
    p.add_argument("--impls", nargs="+", default=list(maml.IMPLS[:2]), choices=[*maml.IMPLS, maml.IMPLS[0] + EXACT])
    add_batch_arguments(p, threads=1, repeats=1)
    a = p.parse_args()
    if bad_batch_arguments(a):
        return 2
    rows = [r for algo in a.algos for r in bench(a.env, algo, a.impls, a.fraction, a.threads, a.repeats)]
    summary = {}
    for algo in a.algos:
        cpu = {impl: min(r["update_cpu_s"] for r in rows if r["algo"] == algo and r["impl"] == impl) for impl in a.impls}
        sampling = next(r["sampling_cpu_s"] for r in rows if r["algo"] == algo)
        summary[algo] = {"min_update_cpu_s": cpu, "cpu_ratio_to_" + a.impls[-1]: {i: cpu[i] / cpu[a.impls[-1]] for i in a.impls},
                         "sampling_cpu_s": sampling, "update_share_estimate": {i: cpu[i] / (cpu[i] + sampling) for i in a.impls}}
    emit({"command": " ".join(sys.argv), "rows": rows, "summary": summary}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
