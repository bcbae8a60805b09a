"""Training metrics of run directories side by side, grouped by a config value: table and plot.

Groups the runs by a dotted config key (``--by``, e.g. ``algo_cfg.fvp_subsample``) and reads a
metric of their metrics.jsonl (``--metric``; default ``rollout/return_mean``: the mean return of
the iteration's last sampling round, the post-adaptation episodes for the MAML learners). At
each iteration of ``--at`` it averages the metric over the ``--window`` iterations ending there
(one iteration's return is noisy) and prints, per group: the seeds' mean and range, and against
the first group (runs matched by seed) the paired difference with its 95% t interval
(rlbench.stats.paired); and each group's mean seconds per iteration (``time/iteration_s``).
``--plot`` writes the curves: one thin line per run, the group's mean thick.

    python scripts/training_curves.py results/fvp_subsample/runs/* --by algo_cfg.fvp_subsample \\
        --at 10 20 30 --plot results/fvp_subsample/curves.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from rlbench import config, stats, store
from rlbench.cli import OneLineParser
from rlbench.runner import lookup


class CurveError(ValueError):
    """A run directory or option the table cannot be made from (reported in one line, exit 2)."""


def read_run(run_dir: Path, by: str, metric: str) -> tuple[object, int, np.ndarray, np.ndarray]:
    """(group value, seed, metric per iteration, seconds per iteration) of one run directory."""
    if not store.is_run_dir(run_dir):
        raise CurveError(f"{run_dir} is not an rlbench run directory")
    cfg = store.read_config(run_dir)
    value = lookup(config.to_dict(cfg), by)
    if value is None:
        raise CurveError(f"--by {by}: no such config key in {run_dir / store.CONFIG_FILE}")
    rows = [row for _, row in store.read_jsonl(Path(run_dir) / store.METRICS_FILE)]
    if not rows or any(not isinstance(r.get(metric), (int, float)) or not isinstance(r.get("iteration"), int) for r in rows):
        raise CurveError(f"{run_dir}: {store.METRICS_FILE} has no number {metric!r} (and iteration) in every row, or no rows")
    rows.sort(key=lambda r: r["iteration"])
    return value, cfg.seed, np.array([float(r[metric]) for r in rows]), np.array([float(r.get("time/iteration_s", np.nan)) for r in rows])


def windowed(values: np.ndarray, at: int, window: int) -> float:
    """Mean of iterations (at - window, at] (1-based), NaN when the run has not reached ``at``."""
    if at > len(values):
        return float("nan")
    return float(values[max(0, at - window):at].mean())


def table(groups: dict, at: list[int], window: int, metric: str) -> str:
    """The markdown table; ``groups``: value -> {seed: (metric per iteration, seconds per iteration)}."""
    names = list(groups)
    ref = groups[names[0]]
    head = f"| {'group'} | seeds | s per iteration | " + " | ".join(f"{metric} at {i} (mean of {window})" for i in at)
    head += " | " + " | ".join(f"minus {names[0]} at {i} [95% CI]" for i in at) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(at))]
    for name in names:
        runs = groups[name]
        seeds = sorted(runs)
        secs = np.nanmean(np.concatenate([runs[s][1] for s in seeds]))
        cells = []
        for i in at:
            v = np.array([windowed(runs[s][0], i, window) for s in seeds])
            cells.append(f"{np.mean(v):.4g} [{np.min(v):.4g}, {np.max(v):.4g}]")
        diffs = []
        for i in at:
            common = sorted(set(seeds) & set(ref))
            if name == names[0] or len(common) < 2:
                diffs.append("-")
                continue
            a = np.array([windowed(runs[s][0], i, window) for s in common])
            b = np.array([windowed(ref[s][0], i, window) for s in common])
            r = stats.paired(a, b)
            diffs.append(f"{float(r['diff']):+.4g} [{float(r['ci_low']):.4g}, {float(r['ci_high']):.4g}] (n={len(common)})")
        lines.append(f"| {name} | {', '.join(map(str, seeds))} | {secs:.2f} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def bad_plot_path(path: Path | None) -> str | None:
    """What is wrong with a ``--plot`` path (checked before any run is read), or None."""
    if path is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        return f"--plot {path}: unknown image format {path.suffix!r} (one of {', '.join(sorted(formats))})"
    if path.is_dir() or not path.resolve().parent.is_dir():
        return f"--plot {path}: a directory, or its directory does not exist"
    return None


def plot(groups: dict, metric: str, by: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (name, runs) in enumerate(groups.items()):
        color = f"C{k}"
        curves = [runs[s][0] for s in sorted(runs)]
        for c in curves:
            ax.plot(np.arange(1, len(c) + 1), c, color=color, lw=0.6, alpha=0.5)
        n = min(len(c) for c in curves)
        ax.plot(np.arange(1, n + 1), np.mean([c[:n] for c in curves], axis=0), color=color, lw=2, label=f"{by} = {name}")
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories")
    p.add_argument("--by", required=True, help="dotted config key whose value groups the runs (the first value seen is the reference)")
    p.add_argument("--metric", default="rollout/return_mean")
    p.add_argument("--at", nargs="+", type=int, default=[10, 20, 30], help="iterations to report (1-based)")
    p.add_argument("--window", type=int, default=5, help="iterations averaged at each --at")
    p.add_argument("--plot", type=Path, help="write the curves to this image file")
    a = p.parse_args(argv)
    problem = "--window and --at must be at least 1" if a.window < 1 or any(i < 1 for i in a.at) else bad_plot_path(a.plot)
    if problem:
        print(f"training_curves: error: {problem}", file=sys.stderr)
        return 2
    groups: dict = {}
    try:
        for run in a.runs:
            value, seed, values, secs = read_run(run, a.by, a.metric)
            runs = groups.setdefault(str(value), {})
            if seed in runs:
                raise CurveError(f"two runs of {a.by} = {value} with seed {seed} ({run})")
            runs[seed] = (values, secs)
    except (CurveError, config.ConfigError, store.StoreError, store.CorruptFileError) as e:
        print(f"training_curves: error: {e}", file=sys.stderr)
        return 2
    print(table(groups, a.at, a.window, a.metric))
    if a.plot:
        plot(groups, a.metric, a.by, a.plot)
        print(f"wrote {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
