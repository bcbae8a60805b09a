"""``rlbench train``, ``rlbench evaluate`` and ``rlbench run``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agents import registry
from rlbench import config, presets
from rlbench.errors import UsageError


def _int_steps(text: str) -> int:
    """Accept 1000000, 1e6, 1_000_000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of environment steps, got {text!r}") from None
    if not value.is_integer() or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative whole number of steps, got {text!r}")
    return int(value)


def _count(text: str) -> int:
    """A non-negative whole number (iterations, workers)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative whole number, got {text!r}")
    return value


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over = config.parse_set(args.set or [])
    algo: dict[str, Any] = {}
    if args.meta_gradient:
        algo["meta_gradient"] = args.meta_gradient
    if args.inner_steps is not None:
        algo["inner_steps"] = args.inner_steps
    if args.inner_lr_over_k:
        algo["inner_lr_over_k"] = True
    if algo:
        over = config.merge(over, {"algo_cfg": algo})
    if args.workers is not None:
        over = config.merge(over, {"sampler": {"n_workers": args.workers}})
    return over


def _train(args: argparse.Namespace) -> int:
    import envs
    from rlbench.runner import NonFiniteError, train

    envs.entry(args.env)
    over = _run_overrides(args)
    budget = args.budget
    if args.preset:
        exp = presets.load_experiment(args.preset)
        over = config.merge(presets.experiment_overrides(exp, args.env, args.algo), over)
        if budget is None and exp.budget:
            budget = exp.budget
    cfg = presets.run_config(args.env, args.algo, args.seed, budget, over)
    try:
        meta = train(cfg, Path(args.out), resume=args.resume, quiet=args.quiet, max_iterations=args.max_iterations)
    except NonFiniteError as e:
        print(f"rlbench: run stopped: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {meta['status']}, {meta['iterations']} iterations, {meta['budget_used']} env steps, "
          f"{len(meta['checkpoints'])} checkpoints")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from rlbench.evaluator import evaluate_run

    for d in args.run_dirs:
        table = evaluate_run(Path(d), n_workers=args.workers, quiet=args.quiet)
        print(f"{Path(d) / 'evaluation.csv'}: {len(table)} rows, {table['checkpoint'].nunique()} checkpoints")
    return 0


def _run(args: argparse.Namespace) -> int:
    from rlbench.grid import run_experiment

    exp = presets.load_experiment(args.experiment)
    if args.parallel < 1:
        raise UsageError("--parallel must be >= 1")
    out = Path(args.out or Path("runs") / exp.name)
    from rlbench.commands.plan_cmd import preflight
    from rlbench.grid import check_experiment

    # Bad input, and an unusable Ray head, fail on one line before the plan prints or calibrates.
    check_experiment(exp, out)
    ray_started = False
    if args.ray_address:
        from rlbench.ray_cluster import connect

        ray_started = connect(args.ray_address)
    try:
        preflight(exp, yes=args.yes, max_hours=args.max_hours, quiet=args.quiet)  # the plan's summary; refuses a too-long grid
        summary = run_experiment(exp, out, parallel=args.parallel, ray_address=args.ray_address, quiet=args.quiet,
                                 workers_per_run=args.workers_per_run)
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    comp = summary.get("comparison", {})
    for key, path in sorted(comp.items()):
        if key.endswith("contour_png"):
            print(f"contour plot: {path}")
    print(f"results: {out}")
    return 0


def register(sub) -> None:
    t = sub.add_parser("train", help="train one run (checkpoints at shared env-step marks)")
    t.add_argument("--env", required=True, help="environment id, e.g. rlbench/HalfCheetahRandVel-v0")
    t.add_argument("--algo", required=True, choices=registry.keys())
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--budget", type=_int_steps, default=None, help="environment steps (default: the protocol budget)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--preset", help="apply an experiment preset's settings (paper, quick, smoke)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. algo_cfg.inner_lr=0.05")
    t.add_argument("--meta-gradient", choices=["second-order", "first-order", "hessian-free"])
    t.add_argument("--inner-steps", type=int, help="K inner steps (MAML)")
    t.add_argument("--inner-lr-over-k", action="store_true", help="use inner_lr / K")
    t.add_argument("--workers", type=_count, help="sampler worker processes (0 = one per core)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run")
    t.add_argument("--max-iterations", type=_count, help="stop after this many iterations (resume later)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="meta-test evaluation of every checkpoint of runs")
    e.add_argument("run_dirs", nargs="+")
    e.add_argument("--workers", type=_count)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_evaluate)

    r = sub.add_parser("run", help="train, evaluate and compare a whole experiment grid")
    r.add_argument("experiment", help="preset name (paper, quick, smoke) or a YAML file")
    r.add_argument("--out", help="results directory (default: runs/<experiment name>)")
    r.add_argument("--parallel", type=int, default=1, help="runs at once on the local process pool")
    r.add_argument("--workers-per-run", type=_count, help="sampler workers per run")
    r.add_argument("--ray-address", help="run the grid as Ray tasks: 'auto', an address, or 'local'")
    r.add_argument("--yes", action="store_true", help="start even if projected above --max-hours (skips calibrating)")
    r.add_argument("--max-hours", type=float, help="refuse grids projected above this many hours here without --yes "
                   "(default: $RLBENCH_MAX_HOURS or 24)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_run)
