"""``rlbench plan`` (cost before a run) and ``rlbench status`` (state during it)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rlbench import presets
from rlbench.errors import UsageError

#: ``rlbench run`` refuses a grid projected above this many hours on this machine without --yes.
DEFAULT_MAX_HOURS = 24.0


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    return parse


def make_plan(exp, from_file: str | None = None, cache_dir: str | None = None, recalibrate: bool = False,
              cores: int | None = None, quiet: bool = False, cached_only: bool = False) -> dict:
    from rlbench import plan

    if from_file:
        rates = plan.rates_from_file(Path(from_file))
    else:
        rates = plan.calibrated_rates(presets.experiment_run_configs(exp), Path(cache_dir) if cache_dir else None,
                                      refresh=recalibrate, quiet=quiet, cached_only=cached_only)
    return plan.plan_experiment(exp, rates, cores=cores)


def _plan(args: argparse.Namespace) -> int:
    from rlbench import plan

    exp = presets.load_experiment(args.experiment)
    p = make_plan(exp, args.from_file, args.cache_dir, args.recalibrate, args.cores, quiet=args.json)
    if p["totals"]["core_h"] is None and args.from_file:
        raise UsageError(f"{args.from_file} has no measurement for {', '.join(p['totals']['missing_rates'])}")
    print(json.dumps(p, indent=2, default=str) if args.json else plan.format_plan(p))
    return 0


def _status(args: argparse.Namespace) -> int:
    from rlbench import status

    result = status.experiment_status(Path(args.dir), stale_after=args.stale_after)
    print(json.dumps(result, indent=2) if args.json else status.format_status(result))
    return 0


def max_hours_default() -> float:
    text = os.environ.get("RLBENCH_MAX_HOURS")
    if not text:
        return DEFAULT_MAX_HOURS
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"RLBENCH_MAX_HOURS must be a number of hours, got {text!r}") from None


def preflight(exp, yes: bool, max_hours: float | None, quiet: bool = False) -> None:
    """``rlbench run``'s check: print the plan's summary; refuse above the threshold without ``yes``.

    With ``yes`` nothing is calibrated that is not cached already (the summary then may lack hours)."""
    limit = max_hours_default() if max_hours is None else max_hours
    p = make_plan(exp, cached_only=yes)
    if not quiet:
        print(p["summary"], file=sys.stderr)
    hours = p["totals"]["wall_h_here"]
    if not yes and hours is not None and hours > limit:
        from rlbench.plan import human_hours

        raise UsageError(f"{exp.name} is projected at {human_hours(hours)} on this machine, above the {limit:g} h threshold; "
                         f"see 'rlbench plan {exp.name}', then rerun with --yes (or --max-hours H)")


def register(sub) -> None:
    p = sub.add_parser("plan", help="what an experiment will cost here: steps, evaluation, disk, projected time")
    p.add_argument("experiment", help="preset name (paper, quick, smoke) or a YAML file")
    p.add_argument("--cores", type=_positive(int), help="also project the grid's wall time on this many cores")
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="rates from a measured projection (scripts/bench_iterations.py --out) instead of calibrating")
    p.add_argument("--cache-dir", help="calibration cache (default: $RLBENCH_CACHE_DIR or ~/.cache/rlbench)")
    p.add_argument("--recalibrate", action="store_true", help="measure again even if cached")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)

    s = sub.add_parser("status", help="state of every run of an experiment (or one run) directory; reads files only")
    s.add_argument("dir", help="an experiment directory (rlbench run --out) or a run directory")
    s.add_argument("--stale-after", type=_positive(float), default=1800.0, metavar="SECONDS",
                   help="a running run not written to for this long is reported stale (default 1800)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_status)
