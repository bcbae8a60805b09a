"""``rlbench compare``: statistics and figures of DRS vs MAML from a directory of finished runs.

The command line only (arguments, the default pairs, printing); the work is done by the
analysis library :mod:`rlbench.analysis` (loading results, the comparability check, the
statistics and writing the outputs), which ``rlbench run`` calls too. With ``--power`` it
prints the seeds needed for 80% power instead of writing outputs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from agents import registry
from rlbench.analysis import METRICS, compare, load_results, parse_pair, power_report
from rlbench.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

#: The comparisons of the paper (docs/protocol.md section 1) and any registered since: DRS method first, MAML method second.
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = registry.default_pairs()  # every registered DRS:MAML pair


def _print_power(table: pd.DataFrame, target: float, effect: float | None) -> None:
    import pandas as pd

    what = "the observed |difference|" if effect is None else f"a difference of {effect:g}"
    print(f"seeds per algorithm for {target:.0%} power to detect {what} (one-sided t-test, alpha 0.05), "
          "final checkpoint; pilot SDs taken as true")
    cols = ["env_id", "algo_a", "algo_b", "test_update", "n_pilot", "diff", "sd_diff", "sd_a", "sd_b",
            "seeds_paired", "seeds_welch", "note"]
    t = table[cols].copy()
    for c in ("seeds_paired", "seeds_welch"):
        t[c] = t[c].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    print(t.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


def _run(args: argparse.Namespace) -> int:
    allow = args.allow_difference or []
    if args.pair:
        pairs = [parse_pair(p) for p in args.pair]
    else:  # default: the paper's pairs whose runs are present
        _, runs = load_results(args.results_dir, warn=lambda m: None, allow=allow)
        algos = {r.algo for r in runs}
        pairs = [p for p in DEFAULT_PAIRS if set(p) <= algos]
        if not pairs:
            raise UsageError(f"no complete pair ({', '.join(':'.join(p) for p in DEFAULT_PAIRS)}) under "
                             f"{args.results_dir}; found {', '.join(sorted(algos))}")
    if args.power:
        table = power_report(args.results_dir, pairs, args.metric, effect=args.effect, allow_differences=allow)
        _print_power(table, 0.8, args.effect)
        return 0
    if args.effect is not None:
        raise UsageError("--effect only applies with --power")
    if args.out is None:
        raise UsageError("--out is required (except with --power)")
    written = compare(args.results_dir, pairs, args.out, paper_compat=args.paper_compat, metric=args.metric,
                      analysis=args.analysis, allow_differences=allow)
    for key, path in written.items():
        print(f"{key}\t{path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("compare", help="statistics and figures of DRS vs MAML from a results directory",
                       description="Per-cell paired (seed-blocked), Welch and paper-compatible statistics over "
                                   "seeds, contour maps (the paper's Figures 1/2), a study figure and summary, "
                                   "learning and adaptation curves, an rliable export and aggregate; or, with "
                                   "--power, the seeds needed for 80%% power.")
    p.add_argument("results_dir", metavar="RESULTS_DIR", type=Path, help="directory holding run directories")
    p.add_argument("--pair", action="append", metavar="FIRST:SECOND",
                   help="algorithms to compare, DRS first (repeatable; default: every registered pair present, "
                        f"{', '.join(':'.join(p) for p in DEFAULT_PAIRS)})")
    p.add_argument("--out", type=Path, help="output directory (created; only its own files are written)")
    p.add_argument("--analysis", metavar="NAME",
                   help="analysis the figures show: paired (default; falls back to welch with a notice if the "
                        "runs are not proven paired), welch, paper. The report holds all three.")
    p.add_argument("--paper-compat", action="store_true",
                   help="same as --analysis paper: the authors' (GS) statistic and style, 2P-1, 50 levels")
    p.add_argument("--allow-difference", action="append", metavar="KEY",
                   help="accept runs whose comparability records differ in this dotted key, e.g. sampler.unit "
                        "(repeatable; the captions name it)")
    p.add_argument("--metric", choices=METRICS, default="return", help="score to compare (default: return)")
    p.add_argument("--power", action="store_true",
                   help="treat the runs as a pilot: print the seeds needed for 80%% power (paired and Welch) per "
                        "environment and pair, instead of writing outputs")
    p.add_argument("--effect", type=float, help="with --power: the difference to detect (default: the observed one)")
    p.set_defaults(func=_run)
