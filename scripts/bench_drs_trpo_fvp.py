"""A DRS learner's update in closed form and by autograd, side by side (DRS-TRPO by default).

Samples one DRS iteration's pooled batch at the protocol's batch shape (or ``--fraction`` of
its tasks) once, then replays it to fresh agents of both implementations (agents/drs.py),
alternating, ``--repeats`` times each:

* ``--algo drs-trpo``: ``fvp_impl="closed-form"`` (the default) and ``fvp_impl="autograd"``
  (double backpropagation through the pooled KL at every conjugate-gradient product);
* ``--algo drs-ppo``: ``grad_impl="closed-form"`` (the default: by task groups, the fast
  forward path, the clipped surrogate's gradient in closed form) and ``grad_impl="autograd"``.

Reports each update's wall and process CPU time, the per-repeat ratio autograd / closed-form,
and how far the two updates' parameters are apart (they differ by float rounding, which
TRPO's conjugate gradient amplifies; its accept decision and backtracks are reported too).

    python scripts/bench_drs_trpo_fvp.py --out results/bench/drs_trpo_fvp.json
    python scripts/bench_drs_trpo_fvp.py --algo drs-ppo --out results/bench/drs_ppo_update.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from agents.drs import DRSPPO, DRSTRPO

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_iterations import emit  # noqa: E402
from bench_maml_update import add_batch_arguments, bad_batch_arguments, record  # noqa: E402

IMPLS = ("closed-form", "autograd")
#: per DRS learner: the attribute choosing its implementation, and its logged KL
LEARNERS = {DRSTRPO.algo: ("fvp_impl", "train/kl"), DRSPPO.algo: ("grad_impl", "train/approx_kl")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", default=DRSTRPO.algo, choices=list(LEARNERS))
    add_batch_arguments(p, threads=2, repeats=3)
    a = p.parse_args()
    if bad_batch_arguments(a):
        return 2
    attribute, kl_key = LEARNERS[a.algo]
    fresh, tasks, log, sampling_cpu, backend = record(a.env, a.algo, a.fraction, a.threads, None)
    rows, params = [], {}
    for rep in range(a.repeats):
        for impl in IMPLS:
            agent = fresh(None)
            setattr(agent, attribute, impl)
            replay = iter(log)
            load = os.getloadavg()[0]
            c0, w0 = time.process_time(), time.perf_counter()
            m = agent.train_iteration(lambda tasks_, params_, replay=replay: next(replay), tasks)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            params[impl] = {k: v.detach().clone() for k, v in agent.params.items()}
            rows.append({"impl": impl, "repeat": rep, "update_wall_s": wall, "update_cpu_s": cpu, "loadavg": [load, os.getloadavg()[0]],
                         "accepted": m.get("train/accepted", 1.0), "backtracks": m.get("train/backtracks", 0.0), "kl": m[kl_key],
                         "loss_after": m["train/loss"]})
            print(rows[-1], file=sys.stderr)
    by = {impl: [r for r in rows if r["impl"] == impl] for impl in IMPLS}
    ref, new = params["autograd"], params["closed-form"]
    out = {
        "command": " ".join(["python", "scripts/bench_drs_trpo_fvp.py", *sys.argv[1:]]), "env": a.env, "algo": a.algo, "tasks": len(tasks),
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
