"""``rlbench compare``: statistics and figures of DRS vs MAML from a directory of finished runs.

Reads every run directory (one holding ``run.json``) under RESULTS_DIR, checks that runs of
the same environment are comparable (identical ``comparability`` dicts), and writes per pair
of algorithms: the per-cell report CSV, the contour figure (the paper's Figures 1/2), learning
and adaptation curves (and success-rate versions where success is recorded), and the
per-seed scores as rliable (runs x tasks) arrays. ``rlbench run`` calls :func:`compare`.

Nothing in ``--out`` is deleted; only this command's own output files (fixed names starting
with the pair, see :func:`output_stem`) are written or replaced, and all validation happens
before the first file is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlbench.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

# numpy/pandas/matplotlib are imported inside the functions that use them: the CLI imports
# every command module to build its parser, and `rlbench envs` should not pay for matplotlib.

#: The two comparisons of the paper (docs/protocol.md section 1): DRS method first, MAML method second.
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("drs-ppo", "promp"), ("drs-trpo", "trpo-maml"))
#: Columns the runner writes to ``evaluation.csv`` (the input format of this command).
EVAL_COLUMNS = ("env_id", "algo", "seed", "checkpoint", "budget_mark", "env_steps", "test_update", "task",
                "return", "success", "episodes")
METRICS = ("return", "success")


@dataclass(frozen=True)
class Run:
    """One run directory: its metadata (``run.json``) and where it lives."""

    path: Path
    env_id: str
    algo: str
    seed: int
    comparability: dict


def _warn(msg: str) -> None:
    print(f"rlbench: warning: {msg}", file=sys.stderr)


def parse_pair(text: str | Sequence[str]) -> tuple[str, str]:
    """``"drs-ppo:promp"`` (or a 2-sequence) -> ``("drs-ppo", "promp")``; UsageError otherwise."""
    if isinstance(text, str):
        parts = text.split(":")
    else:
        parts = list(text)
    if len(parts) != 2 or not all(isinstance(p, str) and p.strip() for p in parts):
        raise UsageError(f"a pair is written FIRST:SECOND, e.g. drs-ppo:promp (got {text!r})")
    a, b = (p.strip() for p in parts)
    if a == b:
        raise UsageError(f"a pair compares two different algorithms (got {a}:{b})")
    return a, b


def find_run_dirs(results_dir: Path) -> list[Path]:
    """Directories under ``results_dir`` (at any depth, itself included) that hold a ``run.json``.

    The walk does not descend into a run directory (its checkpoints are not runs).
    """
    found = []
    for root, dirs, files in os.walk(results_dir):
        if "run.json" in files:
            found.append(Path(root))
            dirs[:] = []
        else:
            dirs.sort()
    return sorted(found)


def _first_difference(x: object, y: object, prefix: str) -> tuple[str, object, object] | None:
    """The first key path at which two JSON-like values differ (None if equal)."""
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y), key=str):
            if k not in x or k not in y:
                return f"{prefix}.{k}", x.get(k, "<missing>"), y.get(k, "<missing>")
            d = _first_difference(x[k], y[k], f"{prefix}.{k}")
            if d:
                return d
        return None
    return None if x == y else (prefix, x, y)


def _show(v: object) -> str:
    return v if v == "<missing>" else json.dumps(v, sort_keys=True, default=str)


def check_comparable(runs: Iterable[Run]) -> None:
    """UsageError naming the env and the first differing key if runs of one env are not comparable."""
    first: dict[str, Run] = {}
    for run in runs:
        ref = first.setdefault(run.env_id, run)
        d = _first_difference(ref.comparability, run.comparability, "comparability")
        if d:
            key, va, vb = d
            raise UsageError(f"runs of {run.env_id} differ in {key}: {_show(va)} vs {_show(vb)} "
                             f"({ref.path} vs {run.path})")


def _read_run(path: Path) -> Run:
    try:
        meta = json.loads((path / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path / 'run.json'}: {e}") from None
    missing = [k for k in ("env_id", "algo", "seed", "comparability") if k not in meta]
    if missing:
        raise UsageError(f"{path / 'run.json'} lacks {', '.join(missing)}")
    if not isinstance(meta["comparability"], dict):
        raise UsageError(f"{path / 'run.json'}: comparability must be a JSON object")
    return Run(path=path, env_id=str(meta["env_id"]), algo=str(meta["algo"]), seed=int(meta["seed"]),
               comparability=meta["comparability"])


def load_results(results_dir: Path | str, *, warn: Callable[[str], None] = _warn) -> tuple[pd.DataFrame, list[Run]]:
    """All evaluation rows under ``results_dir`` and the runs they came from.

    Runs without ``evaluation.csv`` are skipped with a warning (and are not part of the
    comparability check). Raises UsageError for: a
    missing or empty directory, malformed files, an ``evaluation.csv`` whose env/algo/seed
    disagree with its ``run.json``, two runs with the same (env, algo, seed), or runs of one
    environment whose ``comparability`` dicts differ.
    """
    import numpy as np
    import pandas as pd

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UsageError(f"results directory {results_dir} does not exist")
    runs, frames = [], []
    seen: dict[tuple[str, str, int], Path] = {}
    for path in find_run_dirs(results_dir):
        run = _read_run(path)
        csv = path / "evaluation.csv"
        if not csv.is_file():
            warn(f"skipping {path}: no evaluation.csv yet")
            continue
        key = (run.env_id, run.algo, run.seed)
        if key in seen:
            raise UsageError(f"two runs of {run.env_id} {run.algo} seed {run.seed}: {seen[key]} and {path}")
        seen[key] = path
        try:
            df = pd.read_csv(csv)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read {csv}: {e}") from None
        lacking = [c for c in EVAL_COLUMNS if c not in df.columns]
        if lacking:
            raise UsageError(f"{csv} lacks column(s) {', '.join(lacking)}")
        if df.empty:
            warn(f"skipping {path}: evaluation.csv has no rows yet")
            continue
        try:
            for c in ("seed", "checkpoint", "budget_mark", "env_steps", "test_update", "task", "episodes"):
                df[c] = df[c].astype(np.int64)
            for c in ("return", "success"):
                df[c] = df[c].astype(float)
        except (ValueError, TypeError) as e:
            raise UsageError(f"{csv}: bad value in column {c}: {str(e).splitlines()[0]}") from None
        for col, want in (("env_id", run.env_id), ("algo", run.algo), ("seed", run.seed)):
            got = set(df[col].unique().tolist())
            if got != {want}:
                raise UsageError(f"{csv}: column {col} holds {sorted(map(str, got))}, run.json says {want}")
        runs.append(run)
        frames.append(df)
    if not runs:
        raise UsageError(f"no runs with evaluation.csv under {results_dir}")
    check_comparable(runs)
    return pd.concat(frames, ignore_index=True), runs


def output_stem(out_dir: Path, pair: tuple[str, str], metric: str, kind: str) -> Path:
    """Path stem of one output: ``OUT/{a}_vs_{b}_{metric}_{kind}`` (extensions added by the writer)."""
    return Path(out_dir) / f"{pair[0]}_vs_{pair[1]}_{metric}_{kind}"


def compare(results_dir: Path | str, pairs: Iterable[str | Sequence[str]], out_dir: Path | str,
            paper_compat: bool = False, metric: str = "return", *,
            warn: Callable[[str], None] = _warn) -> dict[str, Path]:
    """Compare each pair of algorithms on every environment under ``results_dir``; write into ``out_dir``.

    pairs: ``"drs-ppo:promp"`` strings or ``(first, second)`` tuples, the DRS method first.
    metric: ``"return"`` or ``"success"`` (success only uses envs that record it, e.g.
    Meta-World). Writes per pair (``{a}_vs_{b}_{metric}_`` prefix): ``report.csv``, ``contour``
    (``contour_paper-compat`` with ``paper_compat``) and ``learning``/``adaptation`` as PNG and
    PDF, ``rliable.npz`` + ``rliable_index.csv``; with metric "return", also
    ``{a}_vs_{b}_success_learning``/``_adaptation`` figures for envs that record success.
    Returns ``{"{a}:{b}/{output}": path}``. Raises UsageError (before writing anything) on
    incomparable runs, an empty directory or a pair without runs of both algorithms.
    """
    from rlbench import plots, stats

    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)} (got {metric!r})")
    pairs_t = [parse_pair(p) for p in pairs]
    if not pairs_t:
        raise UsageError("no pair to compare (use --pair FIRST:SECOND)")
    df, runs = load_results(results_dir, warn=warn)
    present = sorted({r.algo for r in runs})
    for a, b in pairs_t:
        for algo in (a, b):
            if algo not in present:
                raise UsageError(f"no runs of {algo} under {results_dir} (found: {', '.join(present)})")

    # Compute everything first, so that a failure leaves --out untouched.
    jobs = []
    for pair in pairs_t:
        pdf = df[df["algo"].isin(pair)]
        if metric == "success":
            has = pdf.groupby("env_id")["success"].apply(lambda s: bool(s.notna().any()))
            dropped = sorted(has.index[~has])
            if dropped:
                warn(f"{pair[0]}:{pair[1]}: no success values for {', '.join(dropped)}; left out of the success "
                     "comparison")
            pdf = pdf[pdf["env_id"].isin(has.index[has])]
            if pdf.empty:
                raise UsageError(f"no environment of {pair[0]}:{pair[1]} records success (Meta-World only)")
        scores = stats.seed_scores(pdf, metric)
        report = stats.compare_cells(scores, pair[0], pair[1], metric)
        arrays, index = stats.rliable_arrays(pdf, metric)
        success_scores = None
        if metric == "return":
            sdf = pdf[pdf.groupby("env_id")["success"].transform(lambda s: s.notna().any())]
            if not sdf.empty:
                success_scores = stats.seed_scores(sdf, "success")
        jobs.append((pair, scores, report, arrays, index, success_scores))

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for pair, scores, report, arrays, index, success_scores in jobs:
        tag = f"{pair[0]}:{pair[1]}"
        p = output_stem(out, pair, metric, "report").with_suffix(".csv")
        report.to_csv(p, index=False)
        written[f"{tag}/report_csv"] = p
        npz = output_stem(out, pair, metric, "rliable").with_suffix(".npz")
        idx = output_stem(out, pair, metric, "rliable_index").with_suffix(".csv")
        stats.save_rliable(arrays, index, npz, idx)
        written[f"{tag}/rliable_npz"], written[f"{tag}/rliable_index"] = npz, idx
        # (output kind, metric, builder, arguments)
        figures = [
            ("contour_paper-compat" if paper_compat else "contour", metric, plots.contour_figure,
             {"report": report, "paper_compat": paper_compat}),
            ("learning", metric, plots.learning_figure, {"scores": scores, "algos": pair, "metric": metric}),
            ("adaptation", metric, plots.adaptation_figure, {"scores": scores, "algos": pair, "metric": metric}),
        ]
        if success_scores is not None:
            figures += [
                (kind, "success", build, {"scores": success_scores, "algos": pair, "metric": "success"})
                for kind, build in (("learning", plots.learning_figure), ("adaptation", plots.adaptation_figure))
            ]
        for kind, m, build, kwargs in figures:
            png, pdf_path = plots.save_figure(build(**kwargs), output_stem(out, pair, m, kind))
            key = kind if m == metric else f"{m}_{kind}"
            written[f"{tag}/{key}_png"], written[f"{tag}/{key}_pdf"] = png, pdf_path
    return written


def _run(args: argparse.Namespace) -> int:
    if args.pair:
        pairs = [parse_pair(p) for p in args.pair]
    else:  # default: the paper's pairs whose runs are present
        _, runs = load_results(args.results_dir, warn=lambda m: None)
        algos = {r.algo for r in runs}
        pairs = [p for p in DEFAULT_PAIRS if set(p) <= algos]
        if not pairs:
            raise UsageError(f"no complete pair ({', '.join(':'.join(p) for p in DEFAULT_PAIRS)}) under "
                             f"{args.results_dir}; found {', '.join(sorted(algos))}")
    written = compare(args.results_dir, pairs, args.out, paper_compat=args.paper_compat, metric=args.metric)
    for key, path in written.items():
        print(f"{key}\t{path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("compare", help="statistics and figures of DRS vs MAML from a results directory",
                       description="Per-cell Welch statistics over seeds, contour maps (the paper's Figures "
                                   "1/2), learning and adaptation curves, and an rliable export.")
    p.add_argument("results_dir", metavar="RESULTS_DIR", type=Path, help="directory holding run directories")
    p.add_argument("--pair", action="append", metavar="FIRST:SECOND",
                   help="algorithms to compare, DRS first (repeatable; default: drs-ppo:promp and "
                        "drs-trpo:trpo-maml where present)")
    p.add_argument("--out", required=True, type=Path, help="output directory (created; only its own files are written)")
    p.add_argument("--paper-compat", action="store_true",
                   help="contour in the authors' (GS) statistic and style: 2P-1, 50 levels (docs/protocol.md section 7)")
    p.add_argument("--metric", choices=METRICS, default="return", help="score to compare (default: return)")
    p.set_defaults(func=_run)
