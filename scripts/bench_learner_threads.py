"""Time the learner update with different torch thread counts on the same recorded batches.

The learner's thread count is a fixed setting of a run (``torch_threads``; results depend on
it), so its default trades speed for nothing else. This script samples one iteration's
batches once, then replays the agent update from the same starting state with each thread
count, interleaved over ``--repeats`` rounds so that machine noise hits every count alike.
Reports the median update time per count and its ratio to the default.

    python scripts/bench_learner_threads.py --env rlbench/HalfCheetahRandVel-v0 --algos drs-ppo promp --fraction 0.25
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from agents import registry
from rlbench import config, presets
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer


def bench(env_id: str, algo: str, fraction: float, threads: list[int], repeats: int, workers: int) -> dict:
    cfg = presets.run_config(env_id, algo, seed=1, budget=10**12)
    tasks_n = max(1, round(cfg.sampler.meta_batch_size * fraction))
    cfg = config.replace(cfg, sampler=config.replace(cfg.sampler, meta_batch_size=tasks_n, n_workers=workers))
    torch.set_num_threads(cfg.learner_threads)
    with Sampler(env_id, horizon=cfg.sampler.horizon, n_workers=cfg.sampler.n_workers, backend=cfg.sampler.backend) as sampler:
        trainer = Trainer(cfg, sampler)
        start = copy.deepcopy(trainer.agent.state_dict())
        batches = []
        collect = trainer.collect

        def record(tasks, params):
            batches.append(collect(tasks, params))
            return batches[-1]

        trainer.collect = record
        tasks = trainer.tasks.sample(tasks_n, np.random.default_rng(0))
        trainer.agent.train_iteration(record, tasks, np.random.default_rng(1))
    times: dict[int, list[float]] = {n: [] for n in threads}
    for _ in range(repeats):
        for n in threads:
            torch.set_num_threads(n)
            trainer.agent.load_state_dict(copy.deepcopy(start))
            replay = iter(batches)
            t0 = time.perf_counter()
            trainer.agent.train_iteration(lambda _t, _p, it=replay: next(it), tasks, np.random.default_rng(1))
            times[n].append(time.perf_counter() - t0)
    default = cfg.torch_threads
    med = {n: statistics.median(v) for n, v in times.items()}
    return {"env": env_id, "algo": algo, "tasks_per_iteration": tasks_n, "default_threads": default,
            "update_s_median": {str(n): round(t, 3) for n, t in med.items()},
            "ratio_to_default": {str(n): round(t / med[default], 3) for n, t in med.items()} if default in med else {},
            "all_s": {str(n): [round(x, 3) for x in v] for n, v in times.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="rlbench/HalfCheetahRandVel-v0")
    p.add_argument("--algos", nargs="+", default=list(registry.default_pairs()[0]))
    p.add_argument("--fraction", type=float, default=0.25, help="fraction of the protocol's tasks per iteration")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args()
    rows = [bench(a.env, algo, a.fraction, a.threads, a.repeats, a.workers) for algo in a.algos]
    print(json.dumps({"command": " ".join(sys.argv), "load_average": os.getloadavg(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
