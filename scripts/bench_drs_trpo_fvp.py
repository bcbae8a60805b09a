"""DRS-TRPO's update with closed-form and with autograd Fisher-vector products, side by side.

Samples one DRS-TRPO iteration's pooled batch at the protocol's batch shape (or ``--fraction``
of its tasks) once, then replays it to fresh agents with ``fvp_impl="closed-form"`` (the
default, agents/drs.py) and ``fvp_impl="autograd"`` (double backpropagation through the pooled
KL at every conjugate-gradient product), alternating, ``--repeats`` times each. Reports each
update's wall and process CPU time, the per-repeat ratio autograd / closed-form, and how far
the two updates' parameters are apart (they differ by float rounding of the products, which
the conjugate gradient amplifies; the accept decision and backtracks are reported too).

    python scripts/bench_drs_trpo_fvp.py --out results/bench/drs_trpo_fvp.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from agents.drs import DRSTRPO

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_iterations import emit  # noqa: E402
from bench_maml_update import add_batch_arguments, bad_batch_arguments, record  # noqa: E402

IMPLS = ("closed-form", "autograd")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_batch_arguments(p, threads=2, repeats=3)
    a = p.parse_args()
    if bad_batch_arguments(a):
        return 2
    fresh, tasks, log, sampling_cpu, backend = record(a.env, DRSTRPO.algo, a.fraction, a.threads, None)
    rows, params = [], {}
    for rep in range(a.repeats):
        for impl in IMPLS:
            agent = fresh(None)
            agent.fvp_impl = impl
            replay = iter(log)
            load = os.getloadavg()[0]
            c0, w0 = time.process_time(), time.perf_counter()
            m = agent.train_iteration(lambda tasks_, params_, replay=replay: next(replay), tasks)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            params[impl] = {k: v.detach().clone() for k, v in agent.params.items()}
            rows.append({"impl": impl, "repeat": rep, "update_wall_s": wall, "update_cpu_s": cpu, "loadavg": [load, os.getloadavg()[0]],
                         "accepted": m["train/accepted"], "backtracks": m["train/backtracks"], "kl": m["train/kl"], "loss_after": m["train/loss"]})
            print(rows[-1], file=sys.stderr)
    by = {impl: [r for r in rows if r["impl"] == impl] for impl in IMPLS}
    ref, new = params["autograd"], params["closed-form"]
    out = {
        "command": " ".join(["python", "scripts/bench_drs_trpo_fvp.py", *sys.argv[1:]]), "env": a.env, "tasks": len(tasks),
        "torch_threads": a.threads, "sampling_backend": backend, "sampling_cpu_s": sampling_cpu, "rows": rows,
        "autograd_over_closed_form_wall": [x["update_wall_s"] / y["update_wall_s"] for x, y in zip(by["autograd"], by["closed-form"])],
        "best_wall_s": {impl: min(r["update_wall_s"] for r in by[impl]) for impl in IMPLS},
        "param_max_rel_diff": max(float((new[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30)) for k in ref),
        "same_decision": all(x["accepted"] == y["accepted"] and x["backtracks"] == y["backtracks"] for x, y in zip(by["autograd"], by["closed-form"])),
    }
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
