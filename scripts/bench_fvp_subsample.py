"""TRPO updates on a subsample of the Fisher-vector products, side by side with the default.

``algo_cfg.fvp_subsample`` (docs/protocol.md section 4.4, off by default) runs the TRPO
learners' conjugate gradient on the products of the first ceil(f T) of an iteration's T tasks.
This script samples one iteration at the protocol's batch shape (or ``--fraction`` of its
tasks) once, then replays it to fresh agents of ``--algo`` with each value of
``--fvp-subsample`` (distinct, including the default 1, which is the reference), alternating, ``--repeats``
times each. For every update it reports:

* the wall and process CPU time, and the reference's wall time over this one in the same
  repeat (``speedup``);
* the step: accepted, backtracks, the KL and the surrogate loss after it (the same batch for
  every value, so the losses are comparable), and the cosine between its parameter change
  and the reference's (1: the same direction).

    python scripts/bench_fvp_subsample.py --algo trpo-maml --fvp-subsample 1 0.5 0.25 --repeats 3 \\
        --out results/bench/fvp_subsample_trpo_maml.json
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from agents.drs import DRSTRPO
from agents.maml import TRPOMAML, fvp_tasks
from rlbench import config
from rlbench.cli import OneLineParser

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_iterations import bad_fvp_subsample, emit  # noqa: E402
from bench_maml_update import add_batch_arguments, bad_batch_arguments, record  # noqa: E402

#: per TRPO learner: the ``impl`` its agents are made with (None: a learner without implementations)
LEARNERS = {TRPOMAML.algo: "fused", DRSTRPO.algo: None}


def flat_change(agent, start: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([(agent.params[k].detach() - start[k]).reshape(-1) for k in start])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Cosine of two parameter changes; None when either is zero (a rejected step)."""
    na, nb = float(a.norm()), float(b.norm())
    return None if na == 0 or nb == 0 else float(a @ b) / (na * nb)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", default=TRPOMAML.algo, choices=list(LEARNERS))
    p.add_argument("--fvp-subsample", nargs="+", type=float, default=[1.0, 0.5, 0.25],
                   help="algo_cfg.fvp_subsample values, distinct, including 1 (the reference of the speedups and cosines)")
    add_batch_arguments(p, threads=2, repeats=3)
    a = p.parse_args(argv)
    if bad_batch_arguments(a):
        return 2
    problem = bad_fvp_subsample(a.fvp_subsample)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    impl = LEARNERS[a.algo]
    order = [1.0] + [f for f in a.fvp_subsample if f != 1]  # the default first: the reference
    fresh, tasks, log, sampling_cpu, backend = record(a.env, a.algo, a.fraction, a.threads, impl)
    rows = []
    for rep in range(a.repeats):
        ref_change, ref_wall = None, None
        for f in order:
            agent = fresh(impl)
            agent.cfg = config.replace(agent.cfg, algo_cfg=config.replace(agent.cfg.algo_cfg, fvp_subsample=f))
            start = {k: v.detach().clone() for k, v in agent.params.items()}
            replay = iter(log)
            load = os.getloadavg()[0]
            c0, w0 = time.process_time(), time.perf_counter()
            m = agent.train_iteration(lambda tasks_, params_, replay=replay: next(replay), tasks)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            change = flat_change(agent, start)
            if ref_change is None:
                ref_change, ref_wall = change, wall
            rows.append({"fvp_subsample": f, "fvp_tasks": fvp_tasks(len(tasks), f), "repeat": rep, "update_wall_s": wall, "update_cpu_s": cpu, "speedup": ref_wall / wall,
                         "loadavg": [load, os.getloadavg()[0]], "accepted": m["train/accepted"], "backtracks": m["train/backtracks"],
                         "kl": m["train/kl"], "loss_after": m["train/loss"], "cosine_to_reference": cosine(change, ref_change)})
            print(rows[-1], file=sys.stderr)
    summary = {}
    for f in order:
        mine = [r for r in rows if r["fvp_subsample"] == f]
        summary[f"{f:g}"] = {"best_wall_s": min(r["update_wall_s"] for r in mine),
                             "median_speedup": statistics.median(r["speedup"] for r in mine),
                             "loss_after": mine[0]["loss_after"], "kl": mine[0]["kl"], "backtracks": mine[0]["backtracks"],
                             "cosine_to_reference": mine[0]["cosine_to_reference"]}
    out = {"command": " ".join(["python", "scripts/bench_fvp_subsample.py", *(sys.argv[1:] if argv is None else argv)]),
           "env": a.env, "algo": a.algo, "tasks": len(tasks), "torch_threads": a.threads, "sampling_backend": backend,
           "sampling_cpu_s": sampling_cpu, "rows": rows, "summary": summary}
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
