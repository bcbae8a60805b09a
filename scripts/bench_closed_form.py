"""The closed-form learners' kernels (agents/closed_form.py), each next to the operation it
replaced, timed side by side in one process on one task group of the paper's batch shape.

For each pair the script prints the best of ``--repeats`` timings of both forms, their ratio
(old / new: above 1, the new form is faster), and whether the two give the same bits:

* ``tanh``: ``torch.tanh`` vs :func:`closed_form.tanh_` (2 sigmoid(2x) - 1 in place; float
  rounding, so ``same_bits`` is false and ``max_abs_diff`` is reported);
* ``out_layer``: the output layer's forward product ``h W^T + b`` as ``torch.baddbmm`` in the
  policy's operand order vs :func:`closed_form.out_layer` (``(W h^T)^T``; float rounding);
* ``weight_cotangent_{first,second}``: a hidden layer's weight cotangent ``g^T h`` (plus the
  Hessian-vector product's extra term for the second) vs :func:`closed_form.weight_cotangent`
  (``(h^T g)^T``), taken on the fast path only: it gave the same bits at the paper's shapes, but
  TRPO-MAML's results on the toy (PointGoal, 80 transitions per task) changed with it.

The shapes are one task group of HalfCheetahRandVel at the protocol's batch shape (4 tasks x
20 episodes x 200 steps, observation 17, hidden 64, action 6) unless given.

    python scripts/bench_closed_form.py --threads 1 --repeats 20 --out results/bench/closed_form_kernels.json
    python scripts/bench_closed_form.py --table results/bench/closed_form_kernels.json   # its markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from agents import closed_form
from rlbench.cli import check_out

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_iterations import emit  # noqa: E402


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` timed calls of ``fn()`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def pair(name: str, old, new, repeats: int) -> dict:
    """Time ``old()`` and ``new()`` alternately (each best of ``repeats``) and compare their results."""
    a, b = old(), new()
    t_old = t_new = float("inf")
    for _ in range(2):  # alternate, so that a drift of the machine hits both
        t_old = min(t_old, best_time(old, repeats))
        t_new = min(t_new, best_time(new, repeats))
    row = {"kernel": name, "old_ms": 1e3 * t_old, "new_ms": 1e3 * t_new, "old_over_new": t_old / t_new,
           "same_bits": bool(torch.equal(a, b)), "max_abs_diff": float((a - b).abs().max()),
           "max_abs_value": float(a.abs().max())}
    print(json.dumps(row), file=sys.stderr)
    return row


def table(path: str) -> str:
    """The markdown table of a file this script wrote."""
    rows = json.loads(open(path).read())["rows"]
    lines = ["| kernel | old ms | new ms | old / new | same bits | max abs diff |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['kernel']} | {r['old_ms']:.3f} | {r['new_ms']:.3f} | {r['old_over_new']:.2f} | {'yes' if r['same_bits'] else 'no'} "
              f"| {r['max_abs_diff']:.1e} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", metavar="FILE", help="print the markdown table of a file this script wrote, and nothing else")
    p.add_argument("--tasks", type=int, default=4, help="tasks in the group")
    p.add_argument("--rows", type=int, default=4000, help="transitions per task")
    p.add_argument("--obs", type=int, default=17)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--act", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out")
    a = p.parse_args()
    if a.table:
        try:
            print(table(a.table))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: --table {a.table}: not a file of this script ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
        return 0
    if min(a.tasks, a.rows, a.obs, a.hidden, a.act, a.threads, a.repeats) < 1:
        print("error: every size, --threads and --repeats must be at least 1", file=sys.stderr)
        return 2
    if check_out(a.out):
        print(f"error: {check_out(a.out)}", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    T, N, H = a.tasks, a.rows, a.hidden

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    t = closed_form._t
    x = 2 * r(T, N, H)
    h_in = closed_form._with_ones(torch.tanh(r(T, N, a.obs)))  # layer 0's input with the column of ones
    h_hid = closed_form._with_ones(torch.tanh(r(T, N, H)))  # a hidden layer's
    g = r(T, N, H)  # cotangent of a hidden layer's output
    delta, dh = r(T, N, H), r(T, N, H)
    w_out, b_out = r(T, a.act, H), r(T, a.act)
    rows = [
        pair("tanh", lambda: torch.tanh(x), lambda: closed_form.tanh_(x.clone()), a.repeats),
        pair("out_layer", lambda: torch.baddbmm(b_out.unsqueeze(1), h_hid[..., :-1], t(w_out)),
             lambda: closed_form.out_layer(w_out, h_hid[..., :-1], b_out), a.repeats),
        pair("weight_cotangent_first", lambda: torch.bmm(t(g), h_in), lambda: closed_form.weight_cotangent(g, h_in, True), a.repeats),
    ]

    def old_second() -> torch.Tensor:
        dw = torch.bmm(t(g), h_hid)
        dw[..., :-1].baddbmm_(t(delta), dh)
        return dw

    rows.append(pair("weight_cotangent_second", old_second, lambda: closed_form.weight_cotangent(g, h_hid, True, (delta, dh)), a.repeats))
    emit({"command": " ".join(sys.argv), "shape": {"tasks": T, "rows": N, "obs": a.obs, "hidden": H, "act": a.act},
          "torch_threads": a.threads, "torch": torch.__version__, "loadavg": os.getloadavg()[0], "rows": rows}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
