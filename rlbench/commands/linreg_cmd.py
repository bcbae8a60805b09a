"""``rlbench linreg``: reproduce Figure 3 of Gao & Sener (NeurIPS 2020) for meta-linear regression.

Computes, over a grid of M (tasks) and N (points per task), the fraction of simulated datasets
for which the MAML estimate has lower expected loss than the DRS estimate, before and after
adaptation (docs/protocol.md section 8), and writes ``linreg.csv``, ``linreg.png``, ``linreg.pdf``
and ``linreg.json`` (settings, versions, wall time) into ``--out``. Defaults come from
``studies.linreg.DEFAULTS``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path

from rlbench import store
from rlbench.commands.study_io import finish, output_paths, parse_int
from rlbench.errors import UsageError

OUTPUT_NAMES = ("linreg.csv", "linreg.png", "linreg.pdf", "linreg.json")


def _parse_alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--alpha expects numbers, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--alpha must be a positive finite number, got {text!r}")
    return value


def _parse_grid(flag: str, values: list[str]) -> tuple[int, ...]:
    if not values:
        raise UsageError(f"{flag} needs at least two values, got an empty grid")
    grid = [parse_int(flag, v, 1) for v in values]
    if len(set(grid)) != len(grid):
        raise UsageError(f"{flag} has repeated values: {' '.join(values)}")
    if len(grid) < 2:
        raise UsageError(f"{flag} needs at least two values (the figure is a contour plot), got {grid[0]}")
    return tuple(sorted(grid))


def _validate(args: argparse.Namespace) -> dict:
    from studies.linreg import DEFAULTS

    alphas = tuple(_parse_alpha(a) for a in args.alpha) if args.alpha is not None else DEFAULTS.alphas
    if not alphas:
        raise UsageError("--alpha needs at least one value")
    if len(set(alphas)) != len(alphas):
        raise UsageError("--alpha has repeated values")
    settings = {
        "alphas": tuple(sorted(alphas)),
        "p": parse_int("--p", args.p, 1) if args.p is not None else DEFAULTS.p,
        "grid_m": _parse_grid("--grid-m", args.grid_m) if args.grid_m is not None else DEFAULTS.grid_m,
        "grid_n": _parse_grid("--grid-n", args.grid_n) if args.grid_n is not None else DEFAULTS.grid_n,
        "datasets": parse_int("--datasets", args.datasets, 1) if args.datasets is not None else DEFAULTS.datasets,
        "seed": parse_int("--seed", args.seed, 0) if args.seed is not None else DEFAULTS.seed,
        "rotation": args.rotation,
    }
    return settings


def canonical_command(settings: dict, out: str) -> str:
    """The full command line (every setting explicit) that reproduces a run."""
    parts = ["rlbench", "linreg", "--alpha", *(f"{a:g}" for a in settings["alphas"]), "--p", str(settings["p"]),
             "--grid-m", *map(str, settings["grid_m"]), "--grid-n", *map(str, settings["grid_n"]),
             "--datasets", str(settings["datasets"]), "--seed", str(settings["seed"]),
             "--rotation", settings["rotation"], "--out", out]
    return " ".join(shlex.quote(p) for p in parts)


def _output_paths(out: str, force: bool) -> dict[str, Path]:
    return output_paths(out, OUTPUT_NAMES, force, key=lambda name: name.split(".")[1])


def _run(args: argparse.Namespace) -> int:
    settings = _validate(args)
    paths = _output_paths(args.out, args.force)  # checked before any computing


    from studies.linreg import figure3, plot_figure3

    start = time.perf_counter()
    df = figure3(
        settings["alphas"], settings["p"], settings["grid_m"], settings["grid_n"],
        settings["datasets"], settings["seed"], rotation=settings["rotation"],
    )
    compute_s = time.perf_counter() - start

    paths["csv"].parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(paths["csv"], index=False, float_format="%.4f")
    fig = plot_figure3(df, p=settings["p"])
    # Fixed metadata keep the PDF byte-stable across runs with the same inputs.
    fig.savefig(paths["png"], dpi=130)
    fig.savefig(paths["pdf"], metadata={"CreationDate": None, "Producer": None, "Creator": "rlbench linreg"})
    import matplotlib.pyplot as plt

    plt.close(fig)
    wall_s = time.perf_counter() - start
    meta = {
        "command": canonical_command(settings, args.out),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "compute_seconds": round(compute_s, 2),
        "wall_seconds": round(wall_s, 2),
        "moments": "exact (Gauss-Legendre, Haar average)" if settings["p"] <= 12 else "Monte Carlo",
        "versions": store.versions(),
        "reference": "Gao & Sener, Modeling and Optimization Trade-off in Meta-learning, NeurIPS 2020, Fig. 3; docs/protocol.md s.8",
    }
    return finish(paths["json"], meta, paths, wall_s)


def register(sub) -> None:
    """Add the ``linreg`` subcommand."""
    from studies.linreg import DEFAULTS, ROTATIONS

    p = sub.add_parser(
        "linreg",
        help="meta-linear regression: P(MAML beats DRS) over tasks x points (Gao & Sener 2020, Fig. 3)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Values are parsed by this module (not argparse's type=) so bad input raises UsageError.
    p.add_argument("--alpha", nargs="*", metavar="A", help=f"inner step sizes, > 0 (default {' '.join(map(str, DEFAULTS.alphas))})")
    p.add_argument("--p", metavar="P", help=f"dimension of x and theta, >= 1 (default {DEFAULTS.p})")
    p.add_argument("--grid-m", nargs="*", metavar="M", help="numbers of tasks (default: DEFAULTS.grid_m, 2..400)")
    p.add_argument("--grid-n", nargs="*", metavar="N", help="points per task and half (default: DEFAULTS.grid_n, 1..400)")
    p.add_argument("--datasets", metavar="D", help=f"simulated datasets per cell (default {DEFAULTS.datasets})")
    p.add_argument("--seed", metavar="S", help=f"root seed (default {DEFAULTS.seed})")
    p.add_argument("--rotation", choices=ROTATIONS, default=DEFAULTS.rotation, help="one rotation V per task (default) or per dataset")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs in DIR")
    p.set_defaults(func=_run)
