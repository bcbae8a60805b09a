"""Time training iterations split into sampling and update, and project the paper preset's cost.

For each environment and algorithm: run a few iterations at the protocol's batch shape (or
``--fraction`` of the tasks per iteration), measure wall time spent in the sampler and in the
learner update, peak memory, and the steps/s of sampling. From these, project the cost of one
run of the ``paper`` preset (320M / 600M steps) in core-hours and the wall time of the whole
grid on a cluster of ``--cluster-cores`` cores.

    python scripts/bench_iterations.py --envs rlbench/HalfCheetahRandVel-v0 --algos promp trpo-maml

``--impls fused analytic batched reference`` times the MAML learners' implementations side by side
(agents/maml.py ``impl``; the first is the default) in the same run; ``--fvp-subsample 1 0.25``
times the TRPO learners with each ``algo_cfg.fvp_subsample`` (1, the default, first; only its
rows enter the projection). Every row runs in a fresh process, so its
``peak_rss_mb`` is that row's own peak (``self``: the learner and, for the threaded
backends, the sampler; ``children``: sampler worker processes). ``loadavg`` is the machine's
1-minute load average before and after the row (the machine may be shared).
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import resource
import sys
import time

import torch

from agents import maml, registry
from agents.core import DTYPES
from agents.registry import AGENTS, make_policy
from rlbench import config, presets, seeding
from rlbench.cli import OneLineParser, check_out
from rlbench.plan import is_default_row
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer


def peak_rss_mb() -> dict[str, float]:
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _has_impls(algo: str) -> bool:
    """Learners with a batched and a reference implementation (the MAML learners' ``impl``)."""
    return "impl" in inspect.signature(AGENTS[algo]).parameters


def _reads_fvp_subsample(algo: str) -> bool:
    return "fvp_subsample" in registry.get(algo).reads


def bench(env_id: str, algo: str, iterations: int, fraction: float, workers: int, threads: int, impl: str = maml.IMPLS[0],
          fvp_subsample: float = 1.0) -> dict:
    cfg = presets.run_config(env_id, algo, seed=1, budget=10**12)
    tasks = max(1, round(cfg.sampler.meta_batch_size * fraction))
    cfg = config.replace(cfg, sampler=config.replace(cfg.sampler, meta_batch_size=tasks, n_workers=workers), torch_threads=threads or cfg.torch_threads,
                         algo_cfg=config.replace(cfg.algo_cfg, fvp_subsample=fvp_subsample))
    torch.set_num_threads(cfg.learner_threads)
    with Sampler(env_id, horizon=cfg.sampler.horizon, n_workers=cfg.sampler.n_workers, backend=cfg.sampler.backend) as sampler:
        load_before = os.getloadavg()[0]
        trainer = Trainer(cfg, sampler)
        if _has_impls(algo):
            policy = make_policy(cfg, sampler.obs_dim, sampler.act_dim)
            params = policy.init_params(seeding.torch_generator(cfg.seed, "policy-init"), DTYPES[cfg.dtype])
            trainer.agent = AGENTS[algo](cfg, policy, params, impl=impl)
        trainer.iterate()  # warm-up (env construction, first allocations)
        sample0 = trainer.sample_seconds
        steps0 = trainer.budget.used
        t0 = time.perf_counter()
        for _ in range(iterations):
            trainer.iterate()
        total = time.perf_counter() - t0
        sample_time = trainer.sample_seconds - sample0
        steps = trainer.budget.used - steps0
        backend, n_workers = sampler.backend, sampler.n_workers
    update = total - sample_time
    full_scale = presets.FAMILIES[presets.family_of(env_id)].meta_batch_size / tasks  # the paper batch over this one
    return {
        "env": env_id, "algo": algo, "impl": impl if _has_impls(algo) else "-",
        **({"fvp_subsample": fvp_subsample} if _reads_fvp_subsample(algo) else {}), "backend": backend, "workers": n_workers, "torch_threads": cfg.learner_threads,
        "tasks_per_iteration": tasks, "fraction_of_paper_batch": tasks / presets.FAMILIES[presets.family_of(env_id)].meta_batch_size,
        "iteration_s": total / iterations, "sampling_s": sample_time / iterations, "update_s": update / iterations,
        "update_share": update / total, "sampling_steps_per_s": steps / sample_time, "steps_per_s": steps / total,
        "steps_per_iteration": steps / iterations, "paper_iteration_s_estimate": total / iterations * full_scale,
        "peak_rss_mb": peak_rss_mb(), "loadavg": [load_before, os.getloadavg()[0]],
    }


def bench_in_fresh_process(*args) -> dict:
    """:func:`bench` in a new process (its own peak memory and allocator state)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(bench, args)


def project(rows: list[dict], seeds: int, cluster_cores: int) -> dict:
    """Paper-preset cost from measured steps/s (per run: budget / steps_per_s x workers cores)."""
    out = {}
    for r in rows:
        # One row per (env, algo): the first, which is the default implementation (--impls lists
        # it first). Files recorded before implementations were named have no "impl" key.
        if f"{r['env']}:{r['algo']}" in out or not is_default_row(r):
            continue
        budget = presets.FAMILIES[presets.family_of(r["env"])].budget
        wall_h = budget / r["steps_per_s"] / 3600
        core_h = wall_h * r["workers"]
        out[f"{r['env']}:{r['algo']}"] = {"run_wall_h": round(wall_h, 1), "run_core_h": round(core_h, 1),
                                          "steps_per_s_per_core": round(r["steps_per_s"] / r["workers"])}
    total_core_h = sum(v["run_core_h"] for v in out.values()) * seeds
    return {"per_run": out, "seeds": seeds, "grid_core_h_measured_pairs": round(total_core_h),
            f"grid_wall_h_on_{cluster_cores}_cores": round(total_core_h / cluster_cores, 1)}


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=["rlbench/HalfCheetahRandVel-v0"])
    p.add_argument("--algos", nargs="+", default=list(registry.keys()))
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the protocol's tasks per iteration")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="learner torch threads (0 = the preset's fixed count)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--cluster-cores", type=int, default=64)
    p.add_argument("--impls", nargs="+", default=[maml.IMPLS[0]], choices=list(maml.IMPLS),
                   help="MAML learner implementations to time (agents/maml.py)")
    p.add_argument("--fvp-subsample", nargs="+", type=float, default=[1.0],
                   help="algo_cfg.fvp_subsample values for the TRPO learners (one row each; 1 = the default)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    problem = (check_out(a.out) or bad_fvp_subsample(a.fvp_subsample)
               or ("--impls reference has no fvp_subsample below 1 (agents/maml.py reference_problem)"
                   if "reference" in a.impls and min(a.fvp_subsample) < 1 else None)
               or ("--cluster-cores and --seeds must be at least 1" if a.cluster_cores < 1 or a.seeds < 1 else None))
    if problem:
        print(f"bench_iterations: error: {problem}", file=sys.stderr)
        return 2
    rows = []
    for env_id in a.envs:
        for algo in a.algos:
            for impl in a.impls if _has_impls(algo) else [maml.IMPLS[0]]:
                for f in a.fvp_subsample if _reads_fvp_subsample(algo) else [1.0]:
                    rows.append(bench_in_fresh_process(env_id, algo, a.iterations, a.fraction, a.workers, a.threads, impl, f))
                    print(json.dumps(rows[-1]), file=sys.stderr)
    command = " ".join(sys.argv) if argv is None else " ".join(["scripts/bench_iterations.py", *argv])
    emit({"command": command, "rows": rows, "projection": project(rows, a.seeds, a.cluster_cores)}, a.out)
    return 0


def bad_fvp_subsample(values: list[float]) -> str | None:
    """What is wrong with a list of ``--fvp-subsample`` values (each in (0, 1], no repeats, the
    default 1 among them: it is the reference and the only value projected), or None."""
    if not all(0 < f <= 1 for f in values):
        return f"--fvp-subsample values must lie in (0, 1], got {values}"
    if len(set(values)) != len(values) or 1 not in values:
        return f"--fvp-subsample values must be distinct and include the default 1, got {values}"
    return None


def emit(result: dict, out: str | None) -> None:
    """Print a benchmark's result as JSON and, with ``out``, write it there too (the bench scripts' one output path)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
