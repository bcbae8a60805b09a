"""``rlbench compare``: statistics and figures of DRS vs MAML from a directory of finished runs.

Reads every run directory (one holding ``run.json``) under RESULTS_DIR, checks that runs of
the same environment are comparable (identical ``comparability`` dicts, up to the keys named
with ``--allow-difference``) and which runs are proven paired (their ``pairing`` records,
:mod:`rlbench.pairing`), and writes per pair of algorithms: the per-cell report CSV with the
paired, Welch and paper analyses side by side, the contour figure (the paper's Figures 1/2)
in the chosen analysis, learning and adaptation curves (and success-rate versions where
success is recorded), the rliable export (seeds x environments) and the aggregate across
environments; per study: one figure with a panel per environment x pair and a summary
table. With ``--power`` it prints the seeds needed for 80% power instead.
``rlbench run`` calls :func:`compare`.

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

from agents import registry
from rlbench.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

# numpy/pandas/matplotlib are imported inside the functions that use them: the CLI imports
# every command module to build its parser, and `rlbench envs` should not pay for matplotlib.

#: The comparisons of the paper (docs/protocol.md section 1) and any registered since: DRS method first, MAML method second.
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = registry.default_pairs()  # every registered DRS:MAML pair
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
    pairing: dict | None = None


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


def _strip_prefix(key: str) -> str:
    return key.strip().removeprefix("comparability.")


def _drop(d: object, dotted: str) -> object:
    """A copy of nested dict ``d`` without the entry at the dotted path (unchanged if absent)."""
    head, _, rest = dotted.partition(".")
    if not isinstance(d, dict) or head not in d:
        return d
    out = dict(d)
    if rest:
        out[head] = _drop(d[head], rest)
        if out[head] == {} and d[head] != {}:  # emptied by the drop: as if the parent were absent too
            del out[head]
    else:
        del out[head]
    return out


def _get(d: object, dotted: str) -> object:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return "<missing>"
        d = d[part]
    return d


#: Comparability keys that must agree within each compared pair only: DRS+PPO/ProMP and
#: DRS+TRPO/TRPO-MAML are adapted by different rules at meta-test time (docs/protocol.md 6.3).
PER_PAIR_KEYS = ("test_time",)
#: Comparability keys recorded for the reader but never required to match: the simulation code
#: path (gym, metaworld-fast, metaworld-batched, ...) is bit-identical by test.
INFORMATIONAL_KEYS = ("sampler_path",)


def check_comparable(runs: Iterable[Run], allow: Iterable[str] = (),
                     pairs: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Check that the runs of each environment have identical ``comparability`` dicts, except
    :data:`PER_PAIR_KEYS`, which must agree between the runs of each pair in ``pairs``.

    ``allow``: dotted keys (``sampler.unit``, with or without the ``comparability.`` prefix)
    whose values may differ; a key allows its whole subtree. Raises UsageError naming the env
    and the first other differing key. Returns one line per allowed key that does differ,
    e.g. ``"rlbench/X-v0: sampler.unit differs (\"step\" vs \"episode\")"``, for captions.
    """
    runs = list(runs)
    allow = [_strip_prefix(k) for k in allow]
    every_env: dict[tuple[str, str], set[str]] = {}
    _check_group(runs, [*allow, *PER_PAIR_KEYS, *INFORMATIONAL_KEYS], every_env, "")
    seen = {k: v for k, v in every_env.items() if k[1] in allow}
    for pair in pairs:
        per_pair = [Run(r.path, r.env_id, r.algo, r.seed, {k: r.comparability.get(k) for k in PER_PAIR_KEYS})
                    for r in runs if r.algo in pair]
        _check_group(per_pair, allow, seen, f" of the pair {pair[0]}:{pair[1]}")
    return [f"{env}: {key} differs ({' vs '.join(sorted(vals))})" for (env, key), vals in sorted(seen.items())]


def _check_group(runs: list[Run], allow: list[str], seen: dict[tuple[str, str], set[str]], what: str) -> None:
    """Raise UsageError at the first difference between runs of one env outside ``allow``;
    record differences inside ``allow`` in ``seen``."""
    first: dict[str, Run] = {}
    for run in runs:
        ref = first.setdefault(run.env_id, run)
        ca, cb = ref.comparability, run.comparability
        for key in allow:
            va, vb = _get(ca, key), _get(cb, key)
            if va != vb:
                seen.setdefault((run.env_id, key), set()).update({_show(va), _show(vb)})
            ca, cb = _drop(ca, key), _drop(cb, key)
        d = _first_difference(ca, cb, "comparability")
        if d:
            key, va, vb = d
            raise UsageError(f"runs of {run.env_id}{what} differ in {key}: {_show(va)} vs {_show(vb)} "
                             f"({ref.path} vs {run.path}); if intended, pass --allow-difference "
                             f"{_strip_prefix(key)}")


def pairing_status(runs: Iterable[Run], pair: tuple[str, str]) -> dict[str, str]:
    """Per environment holding both algorithms of ``pair``: ``""`` if every seed the two share is
    proven paired (equal :mod:`rlbench.pairing` records), else the first reason it is not."""
    from rlbench import pairing

    by = {(r.env_id, r.algo, r.seed): r for r in runs}
    out: dict[str, str] = {}
    for env_id in sorted({r.env_id for r in runs}):
        seeds = sorted({s for (e, a, s) in by if e == env_id and a == pair[0]}
                       & {s for (e, a, s) in by if e == env_id and a == pair[1]})
        if not {a for (e, a, _) in by if e == env_id} >= set(pair):
            continue
        reason = "" if seeds else "no seed with runs of both algorithms"
        for seed in seeds:
            ok, why = pairing.paired(by[(env_id, pair[0], seed)].pairing, by[(env_id, pair[1], seed)].pairing)
            if not ok:
                reason = f"seed {seed}: {why}"
                break
        out[env_id] = reason
    return out


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
               comparability=meta["comparability"], pairing=meta.get("pairing"))


def load_results(results_dir: Path | str, *, warn: Callable[[str], None] = _warn,
                 allow: Iterable[str] = ()) -> tuple[pd.DataFrame, list[Run]]:
    """All evaluation rows under ``results_dir`` and the runs they came from.

    Runs without ``evaluation.csv`` are skipped with a warning (and are not part of the
    comparability check). Raises UsageError for: a
    missing or empty directory, malformed files, an ``evaluation.csv`` whose env/algo/seed
    disagree with its ``run.json``, two runs with the same (env, algo, seed), or runs of one
    environment whose ``comparability`` dicts differ outside the ``allow``-ed keys
    (:func:`check_comparable`).
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
    check_comparable(runs, allow)
    return pd.concat(frames, ignore_index=True), runs


def output_stem(out_dir: Path, pair: tuple[str, str], metric: str, kind: str) -> Path:
    """Path stem of one output: ``OUT/{a}_vs_{b}_{metric}_{kind}`` (extensions added by the writer)."""
    return Path(out_dir) / f"{pair[0]}_vs_{pair[1]}_{metric}_{kind}"


#: Figure name of the contour map per analysis (``paper`` keeps the old ``--paper-compat`` name).
CONTOUR_KIND = {"paired": "contour", "welch": "contour_welch", "paper": "contour_paper-compat"}


def resolve_analysis(analysis: str | None, status: dict[tuple[str, str], dict[str, str]],
                     warn: Callable[[str], None]) -> str:
    """The analysis the figures show. ``None`` (the default) means ``paired`` if every pair's runs
    are proven paired, else ``welch`` with a printed notice; an explicit ``paired`` on runs that
    are not proven paired is a UsageError naming the env and the reason."""
    from rlbench import stats

    if analysis is not None:
        stats.check_analysis(analysis)
    bad = [(pair, env, why) for pair, st in status.items() for env, why in st.items() if why]
    if not bad or analysis in ("welch", "paper"):
        return analysis or "paired"
    (a, b), env, why = bad[0]
    if analysis == "paired":
        raise UsageError(f"--analysis paired: runs of {a}:{b} on {env} are not proven paired ({why}); "
                         "use --analysis welch, or rerun with this version (it records the pairing)")
    warn(f"{a}:{b} on {env} not proven paired ({why}); figures show the welch analysis "
         "(the report's paired columns are flagged 'unpaired')")
    return "welch"


def compare(results_dir: Path | str, pairs: Iterable[str | Sequence[str]], out_dir: Path | str,
            paper_compat: bool = False, metric: str = "return", *, analysis: str | None = None,
            allow_differences: Iterable[str] = (), n_boot: int = 9999,
            warn: Callable[[str], None] = _warn) -> dict[str, Path]:
    """Compare each pair of algorithms on every environment under ``results_dir``; write into ``out_dir``.

    pairs: ``"drs-ppo:promp"`` strings or ``(first, second)`` tuples, the DRS method first.
    metric: ``"return"`` or ``"success"`` (success only uses envs that record it, e.g.
    Meta-World). analysis: what the figures show, one of ``paired`` (the default when the runs
    are proven paired, else ``welch`` with a notice), ``welch``, ``paper`` (``paper_compat=True``
    is the old spelling of ``analysis="paper"``); the report always holds all three.
    allow_differences: dotted ``comparability`` keys that may differ between runs (named in the
    report's ``allowed_differences`` column and the figure captions).

    Writes per pair (``{a}_vs_{b}_{metric}_`` prefix): ``report.csv``, the contour map
    (:data:`CONTOUR_KIND`), ``learning``/``adaptation`` as PNG and PDF, the rliable export
    ``rliable.npz`` + ``rliable_index.csv`` + ``rliable_normalisation.csv`` (per-environment
    normalised seed scores, :mod:`rlbench.aggregate`), ``aggregate.csv`` (IQM and probability of
    improvement across environments); with metric "return", also
    ``{a}_vs_{b}_success_learning``/``_adaptation`` figures for envs that record success. Per
    study (all pairs): ``study_{metric}_contour`` (one panel per environment x pair, shared
    colour scale) and ``study_{metric}_summary.csv``/``.md`` (verdicts at each checkpoint after
    1 and the last test update). Returns ``{"{a}:{b}/{output}": path}`` (study outputs under
    ``"study/..."``). Raises UsageError (before writing anything) on incomparable runs, an
    empty directory, a pair without runs of both algorithms, an unknown analysis, or
    ``analysis="paired"`` on runs that are not proven paired.
    """
    from rlbench import aggregate, plots, stats

    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)} (got {metric!r})")
    if paper_compat:
        if analysis not in (None, "paper"):
            raise UsageError(f"--paper-compat is --analysis paper; it contradicts --analysis {analysis}")
        analysis = "paper"
    if analysis is not None:
        stats.check_analysis(analysis)
    pairs_t = [parse_pair(p) for p in pairs]
    if not pairs_t:
        raise UsageError("no pair to compare (use --pair FIRST:SECOND)")
    allow = list(allow_differences)
    df, runs = load_results(results_dir, warn=warn, allow=allow)
    allowed = check_comparable(runs, allow, pairs_t)
    present = sorted({r.algo for r in runs})
    for a, b in pairs_t:
        for algo in (a, b):
            if algo not in present:
                raise UsageError(f"no runs of {algo} under {results_dir} (found: {', '.join(present)})")
    status = {pair: pairing_status(runs, pair) for pair in pairs_t}
    shown = resolve_analysis(analysis, status, warn)
    allowed_text = "; ".join(allowed)

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
        unpaired = {env: why for env, why in status[pair].items() if why}
        report = stats.compare_cells(scores, pair[0], pair[1], metric, unpaired=unpaired,
                                     allowed_differences=allowed_text, n_boot=n_boot)
        norm = aggregate.normalisation(scores, pair, metric)
        nscores = aggregate.normalised_scores(aggregate.with_checkpoint_index(scores), norm)
        arrays, index = aggregate.score_matrices(nscores, pair)
        agg = aggregate.aggregate_table(arrays, index, pair[0], pair[1], metric)
        success_scores = None
        if metric == "return":
            sdf = pdf[pdf.groupby("env_id")["success"].transform(lambda s: s.notna().any())]
            if not sdf.empty:
                success_scores = stats.seed_scores(sdf, "success")
        jobs.append((pair, scores, report, (arrays, index, norm), agg, success_scores))
    reports = [j[2] for j in jobs]
    summary = plots.summary_table(reports, shown)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for pair, scores, report, (arrays, index, norm), agg, success_scores in jobs:
        tag = f"{pair[0]}:{pair[1]}"
        p = output_stem(out, pair, metric, "report").with_suffix(".csv")
        report.to_csv(p, index=False)
        written[f"{tag}/report_csv"] = p
        paths = [output_stem(out, pair, metric, k) for k in ("rliable", "rliable_index", "rliable_normalisation")]
        paths = [paths[0].with_suffix(".npz"), paths[1].with_suffix(".csv"), paths[2].with_suffix(".csv")]
        aggregate.save_export(arrays, index, norm, *paths)
        written[f"{tag}/rliable_npz"], written[f"{tag}/rliable_index"], written[f"{tag}/rliable_normalisation"] = paths
        p = output_stem(out, pair, metric, "aggregate").with_suffix(".csv")
        agg.to_csv(p, index=False)
        written[f"{tag}/aggregate_csv"] = p
        # (output kind, metric, builder, arguments)
        figures = [
            (CONTOUR_KIND[shown], metric, plots.contour_figure, {"report": report, "analysis": shown}),
            ("learning", metric, plots.learning_figure, {"scores": scores, "algos": pair, "metric": metric}),
            ("adaptation", metric, plots.adaptation_figure, {"scores": scores, "algos": pair, "metric": metric}),
        ]
        if len(agg) and agg["flags"].fillna("").eq("").any():
            figures.append(("aggregate", metric, plots.aggregate_figure, {"agg": agg}))
        if success_scores is not None:
            figures += [
                (kind, "success", build, {"scores": success_scores, "algos": pair, "metric": "success"})
                for kind, build in (("learning", plots.learning_figure), ("adaptation", plots.adaptation_figure))
            ]
        for kind, m, build, kwargs in figures:
            png, pdf_path = plots.save_figure(build(**kwargs), output_stem(out, pair, m, kind))
            key = "contour" if kind == CONTOUR_KIND[shown] else kind
            key = key if m == metric else f"{m}_{key}"
            written[f"{tag}/{key}_png"], written[f"{tag}/{key}_pdf"] = png, pdf_path
    stem = out / f"study_{metric}"
    png, pdf_path = plots.save_figure(plots.study_figure(reports, analysis=shown), stem.with_name(stem.name + "_contour"))
    written["study/contour_png"], written["study/contour_pdf"] = png, pdf_path
    p = stem.with_name(stem.name + "_summary.csv")
    summary.to_csv(p, index=False)
    written["study/summary_csv"] = p
    p = stem.with_name(stem.name + "_summary.md")
    p.write_text(plots.summary_markdown(summary, shown, allowed_text))
    written["study/summary_md"] = p
    return written


def power_report(results_dir: Path | str, pairs: Iterable[str | Sequence[str]], metric: str = "return", *,
                 effect: float | None = None, target: float = 0.8, allow_differences: Iterable[str] = (),
                 warn: Callable[[str], None] = _warn) -> pd.DataFrame:
    """:func:`rlbench.power.power_table` for every pair under ``results_dir`` (pilot runs), one table."""
    import pandas as pd

    from rlbench import power, stats

    if effect is not None and not effect > 0:
        raise UsageError(f"--effect must be a positive difference (got {effect})")
    pairs_t = [parse_pair(p) for p in pairs]
    df, runs = load_results(results_dir, warn=warn, allow=allow_differences)
    tables = []
    for pair in pairs_t:
        if not {pair[0], pair[1]} <= {r.algo for r in runs}:
            raise UsageError(f"no runs of both {pair[0]} and {pair[1]} under {results_dir}")
        unpaired = {env: why for env, why in pairing_status(runs, pair).items() if why}
        pdf = df[df["algo"].isin(pair)]
        if metric == "success":
            pdf = pdf[pdf.groupby("env_id")["success"].transform(lambda s: s.notna().any())]
            if pdf.empty:
                raise UsageError(f"no environment of {pair[0]}:{pair[1]} records success (Meta-World only)")
        scores = stats.seed_scores(pdf, metric)
        report = stats.compare_cells(scores, pair[0], pair[1], metric, unpaired=unpaired, n_boot=99)
        tables.append(power.power_table(report, scores, effect=effect, target=target))
    return pd.concat(tables, ignore_index=True)


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
