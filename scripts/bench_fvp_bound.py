"""How fast TRPO-MAML's exact Fisher-vector products could be on this machine, at best.

Issue 15 asks for a TRPO-MAML update of at most 25% of an iteration at the paper's batch shape,
i.e. an update no longer than a third of the iteration's sampling time. Most of the update is
the conjugate gradient's exact products J^T F J v (``cg_iters`` of the preset's hyperparameter
table, 10 in the protocol) (the Fisher matrix of the post-adaptation
KL, taken through the inner step's Jacobian J). This script measures, on one recorded batch:

* ``fvp``: the wall and CPU time of one product of the default (``fused``) learner, and its
  matrix-multiply floating-point operations, counted by ``torch.utils.flop_counter`` with
  formulas added for the in-place products it skips (:data:`IN_PLACE_PRODUCTS`; elementwise
  work is not counted, so the count is a lower bound on the work);
* ``gemm``: this machine's matrix-multiply throughput with the same thread count: square
  1024 x 1024 products, and products shaped like the policy's layers (a task group's rows x 64
  by 64 x 64) into a reused output and into a fresh one per call (see :func:`gemm_rate`);
* ``bound``: the time ``cg_iters`` products would take if every counted operation ran at the
  best of those throughputs (``products_at_best_gemm_s``) or at the layer-shaped one
  (``products_at_layer_gemm_s``) and nothing else took time, next to the budget a 25% share leaves, taken from a
  ``scripts/bench_iterations.py`` file (``--iterations``: its TRPO-MAML row's sampling time of
  the same batch shape, minus the update's measured time outside the products).

    python scripts/bench_fvp_bound.py --threads 2 --repeats 5 \
        --iterations results/bench/iterations_halfcheetah_s9_a.json --out results/bench/fvp_bound_s10.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from agents import maml
from rlbench.plan import is_default_row

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_closed_form import best_time  # noqa: E402
from bench_iterations import emit  # noqa: E402
from bench_maml_update import add_batch_arguments, bad_batch_arguments, record  # noqa: E402

ALGO = maml.TRPOMAML.algo


def best_rate(fn, flops: float, repeats: int) -> float:
    """FLOP/s of ``fn`` (``flops`` per call), best of ``repeats`` timed calls after one warm-up."""
    return flops / best_time(fn, repeats)


#: The in-place products the closed forms accumulate with (``baddbmm_``, ``addmm_``): torch's
#: counter has formulas for the out-of-place operations only and counted these as zero, which
#: left 40% of a product's FLOPs out of sessions 7-9's measurements (15.25 instead of 25.3
#: GFLOP; results/bench/README.md, "Correction: the FLOP count").
def _product_flops(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    """2 m n k (times the batch) for ``self + a @ b`` with ``a`` [..., m, k], ``b`` [..., k, n]."""
    *batch, m, k = a_shape
    return 2 * m * k * b_shape[-1] * (batch[0] if batch else 1)


IN_PLACE_PRODUCTS = {torch.ops.aten.baddbmm_: _product_flops, torch.ops.aten.addmm_: _product_flops}


def count_flops(fn) -> float:
    """Matrix-multiply FLOPs of ``fn()``, in-place products included. The learner runs its task
    groups on pool threads, which the (thread-local) counter does not see, so the groups run on
    this thread while counting."""
    pooled = maml.map_groups
    maml.map_groups = lambda f, items: [f(x) for x in items]
    try:
        with FlopCounterMode(display=False, custom_mapping=IN_PLACE_PRODUCTS) as counter:
            fn()
    finally:
        maml.map_groups = pooled
    return float(counter.get_total_flops())


def gemm_rate(rows: int, repeats: int) -> dict[str, float]:
    """FLOP/s of square 1024 products and of layer-shaped ones (rows x 64 by 64 x 64): into a
    reused output (``layer_shaped``, the rate the arithmetic allows) and into a fresh one each
    call (``layer_shaped_fresh_output``: for outputs above glibc's mmap threshold every call
    maps, faults in and zeroes new pages, which halved the rate in this script's first version)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, w, o = torch.randn(rows, 64), torch.randn(64, 64), torch.empty(rows, 64)
    flops = 2 * rows * 64 * 64
    return {"square_1024": best_rate(lambda: a @ b, 2 * 1024**3, repeats),
            "layer_shaped": best_rate(lambda: torch.mm(x, w, out=o), flops, repeats),
            "layer_shaped_fresh_output": best_rate(lambda: x @ w, flops, repeats)}


def sampling_budget(path: str, env_id: str) -> dict[str, float]:
    """The TRPO-MAML fused row of a bench_iterations.py file: sampling and update seconds."""
    try:
        with open(path) as f:
            rows = json.load(f)["rows"]
        row = next(r for r in rows if r["env"] == env_id and r["algo"] == ALGO and r.get("impl") == "fused" and is_default_row(r))
        return {"sampling_s": float(row["sampling_s"]), "update_s": float(row["update_s"]),
                "tasks": int(row["tasks_per_iteration"])}
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        raise ValueError(f"{path} holds no {ALGO} fused row of {env_id} with sampling_s and update_s and fvp_subsample 1 "
                         "(a scripts/bench_iterations.py output)") from None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_batch_arguments(p, threads=2, repeats=3)
    p.add_argument("--iterations", required=True, help="bench_iterations.py output with the TRPO-MAML fused row")
    a = p.parse_args()
    if bad_batch_arguments(a):
        return 2
    try:
        budget = sampling_budget(a.iterations, a.env)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fresh, tasks, log, _, _ = record(a.env, ALGO, a.fraction, a.threads, "fused")
    if len(tasks) != budget["tasks"]:
        print(f"error: --fraction {a.fraction:g} gives {len(tasks)} tasks per iteration, but {a.iterations} measured "
              f"{budget['tasks']}: use the same batch shape", file=sys.stderr)
        return 2
    agent = fresh("fused")
    replay = iter(log)
    inner, post, _ = agent.sample_rounds(lambda tasks_, params: next(replay), tasks)
    _, _, _, g, fvp = agent.fused_problem(inner, post, len(tasks), agent.last_chain)
    flops = count_flops(lambda: fvp(g))
    wall, cpu = [], []
    for _ in range(a.repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fvp(g)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    rows_per_group = max(post.obs.shape[0] * post.obs.shape[1] * post.obs.shape[2] // max(1, len(agent.chunks(post))), 1)
    gemm = gemm_rate(rows_per_group, a.repeats)
    best = max(gemm.values())
    cg = agent.cfg.algo_cfg.cg_iters  # products per update (the preset's hyperparameter table)
    products_s = cg * min(wall)
    rest_s = max(0.0, budget["update_s"] - products_s)  # the update's time outside the products (measured file)
    allowed = budget["sampling_s"] / 3.0
    out = {
        "command": " ".join(sys.argv), "env": a.env, "tasks": len(tasks), "torch_threads": a.threads,
        "loadavg": os.getloadavg()[0],
        "fvp": {"gflop_per_product": flops / 1e9, "wall_s": wall, "cpu_s": cpu, "achieved_gflop_s": flops / min(wall) / 1e9},
        "gemm_gflop_s": {k: v / 1e9 for k, v in gemm.items()},
        "bound": {"cg_iters": cg, "products_at_best_gemm_s": cg * flops / best, "products_at_layer_gemm_s": cg * flops / gemm["layer_shaped"],
                  "products_measured_s": products_s,
                  "update_s_file": budget["update_s"], "update_outside_products_s": rest_s,
                  "sampling_s_file": budget["sampling_s"], "update_allowed_at_25pct_s": allowed,
                  "best_case_update_s": cg * flops / best + rest_s},
    }
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
