"""Figures of the DRS-vs-MAML comparison (the paper's Figures 1 and 2, learning and adaptation curves).

rliable style: every plotting function takes a matplotlib ``Axes`` and returns it; figure
builders assemble panels (one per environment) and :func:`save_figure` writes PNG and PDF.
Figures are created as ``matplotlib.figure.Figure`` objects on an explicit Agg canvas, never
through pyplot, so nothing depends on (or changes) the global backend and no figure stays
registered in pyplot's state after it is saved.

Colours: red means the first method of a pair (DRS) is better, blue the second (MAML), as in
the paper (RdBu_r). Learning and adaptation curves use the same convention.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from scipy import stats as sps

from rlbench import stats

#: First method of a pair in red, second in blue (RdBu_r: red = first better).
PAIR_COLORS = ("tab:red", "tab:blue")
METRIC_LABELS = {"return": "undiscounted return", "success": "success rate"}

#: Paper-compatible contour levels (GS summary.py): 50 levels over [-1.01, 1.01].
GS_LEVELS = np.linspace(-1.01, 1.01, 50)
#: Default contour levels of the probability scale (steps of 0.05, 0.5 is a level boundary).
PROB_LEVELS = np.linspace(0.0, 1.0, 21)


def algo_label(algo: str) -> str:
    """Human-readable name of an algorithm key: its registry entry's display name (unknown
    keys are shown as they are)."""
    from agents import registry  # imported on use: it loads torch

    return registry.display_name(algo)


def env_label(env_id: str) -> str:
    """Short panel title for an environment id: ``rlbench/HalfCheetahRandVel-v0`` -> ``HalfCheetahRandVel-v0``."""
    return env_id.split("/")[-1]


#: Panel order of the paper's Figures 1/2 (docs/protocol.md section 2); other environments follow, sorted.
PAPER_ENV_ORDER = ("HalfCheetahRandVel", "Walker2DRandVel", "Walker2DRandParams", "HopperRandParams",
                   "ML1-Push", "ML1-Reach", "ML10", "ML45")


def ordered_envs(env_ids) -> list[str]:
    """Environment ids in the paper's panel order (matched on the name without namespace/version)."""
    def key(env_id: str) -> tuple[int, str]:
        name = re.sub(r"-v\d+$", "", env_label(env_id))
        return (PAPER_ENV_ORDER.index(name) if name in PAPER_ENV_ORDER else len(PAPER_ENV_ORDER), env_id)
    return sorted(set(env_ids), key=key)


def step_scale(max_steps: float) -> tuple[float, str]:
    """(divisor, unit suffix) that keeps env-step tick labels short: 320e6 -> (1e6, "M")."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if max_steps >= 10 * div:
            return div, unit
    return 1.0, ""


def steps_axis_label(max_steps: float) -> str:
    """x-axis label with the unit chosen by :func:`step_scale`."""
    _, unit = step_scale(max_steps)
    return "meta-training env steps" + (f" ({unit})" if unit else "")


def new_figure(n_panels: int, *, ncols: int = 4, panel_size: tuple[float, float] = (3.4, 2.5),
               extra_height: float = 0.9) -> tuple[Figure, list[Axes]]:
    """A figure on an Agg canvas with ``n_panels`` axes in rows of at most ``ncols`` (constrained layout)."""
    ncols = max(1, min(ncols, n_panels))
    nrows = max(1, -(-n_panels // ncols))
    fig = Figure(figsize=(panel_size[0] * ncols + 0.8, panel_size[1] * nrows + extra_height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def save_figure(fig: Figure, stem: Path | str) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf``; returns the two paths."""
    stem = Path(stem)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths


def suptitle(fig: Figure, text: str, fontsize: float = 10.5) -> None:
    """Figure title wrapped to the figure's width, so that one-panel figures keep a readable title."""
    width_chars = max(30, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    fig.suptitle(textwrap.fill(text, width_chars, break_on_hyphens=False), fontsize=fontsize)


# --------------------------------------------------------------------------- contour (Figures 1/2)


def _cell_edges(v: np.ndarray) -> np.ndarray:
    """Edges halfway between consecutive grid values, clipped to the data range (the contour's extent)."""
    v = np.asarray(v, dtype=float)
    if v.size == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = (v[1:] + v[:-1]) / 2
    return np.concatenate([[v[0]], mid, [v[-1]]])


def _flag_mask(flags: np.ndarray) -> np.ndarray:
    """Bool mask from a bool array or an array of reason strings (non-empty string = flagged)."""
    f = np.asarray(flags)
    if f.dtype.kind == "b":
        return f

    def flagged(v: object) -> bool:
        if isinstance(v, str):
            return v != ""
        return v is not None and not pd.isna(v) and bool(v)

    return np.vectorize(flagged, otypes=[bool])(f)


def contour(ax: Axes, budget_steps: Sequence[float], test_updates: Sequence[int], prob: np.ndarray, *,
            title: str, flags: np.ndarray | None = None, paper_compat: bool = False,
            not_significant: np.ndarray | None = None) -> Axes:
    """Contour map of a probability over (meta-training budget, test updates).

    budget_steps: [C] env-step marks (x), test_updates: [U] (y), prob: [C, U] probabilities
    (P(first method better); in paper-compat mode GS's ``F_nu(d/se)``), NaN allowed.
    Default style: ``contourf`` of P on RdBu_r with vmin 0, vmax 1 (0.5 = white = no
    difference) and the P = 0.5 contour drawn in black. Paper-compat style (GS summary.py):
    ``2P - 1`` with 50 levels over [-1.01, 1.01], RdBu_r, vmin -1, vmax 1, and a visible
    "paper-compat" label. ``flags``: [C, U] bool or reason strings (non-empty = flagged);
    flagged cells are cross-hatched ("xxx"). ``not_significant``: [C, U] bool, cells whose BH
    q-value is not below 0.05 in the analysis shown, hatched "///" (unless flagged). NaN cells are left blank. With a single checkpoint or update a
    cell map (pcolormesh) replaces the contour, which needs two values per axis.

    The plotted array (shape [U, C], masked where NaN) is attached to the returned axes as
    ``ax.rlbench_values`` and the contour set as ``ax.rlbench_mappable`` so tests and callers
    can check exactly what was drawn.
    """
    x_raw = np.asarray(budget_steps, dtype=float)
    y = np.asarray(test_updates, dtype=float)
    p = np.asarray(prob, dtype=float)
    if p.shape != (x_raw.size, y.size):
        raise ValueError(f"prob has shape {p.shape}, expected (len(budget_steps), len(test_updates)) = "
                         f"{(x_raw.size, y.size)}")
    div, _ = step_scale(float(np.nanmax(np.abs(x_raw))) if x_raw.size else 0.0)
    x = x_raw / div
    z = (2.0 * p - 1.0) if paper_compat else p
    zm = np.ma.masked_invalid(z.T)
    if paper_compat:
        levels, vmin, vmax = GS_LEVELS, -1.0, 1.0
    else:
        levels, vmin, vmax = PROB_LEVELS, 0.0, 1.0
    if x.size >= 2 and y.size >= 2:
        cs = ax.contourf(x, y, zm, levels, cmap="RdBu_r", vmin=vmin, vmax=vmax)
        if not paper_compat and np.ma.count(zm) and np.nanmin(z) < 0.5 < np.nanmax(z):
            ax.contour(x, y, zm, [0.5], colors="k", linewidths=1.2)
    else:
        cs = ax.pcolormesh(x, y, zm, cmap="RdBu_r", vmin=vmin, vmax=vmax, shading="nearest")
    ax.rlbench_values = zm
    ax.rlbench_mappable = cs
    xe, ye = _cell_edges(x), _cell_edges(y)
    f = np.zeros(p.shape, bool)
    if flags is not None:
        f = _flag_mask(flags)
        if f.shape != p.shape:
            raise ValueError(f"flags has shape {f.shape}, expected {p.shape}")
    ns = np.zeros(p.shape, bool)
    if not_significant is not None:
        ns = np.asarray(not_significant, dtype=bool)
        if ns.shape != p.shape:
            raise ValueError(f"not_significant has shape {ns.shape}, expected {p.shape}")
        ns = ns & ~f
    ax.rlbench_hatched = {"flagged": f.copy(), "not_significant": ns.copy()}
    for mask, hatch in ((f, "xxx"), (ns, "///")):
        for i, j in zip(*np.nonzero(mask)):
            ax.add_patch(Rectangle((xe[i], ye[j]), xe[i + 1] - xe[i], ye[j + 1] - ye[j], facecolor="none",
                                   edgecolor="0.35", hatch=hatch, linewidth=0.0, zorder=3))
    if paper_compat:
        ax.text(0.02, 0.96, "paper-compat (GS)", transform=ax.transAxes, ha="left", va="top", fontsize=7,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.5"},
                zorder=4)
    ax.set_xlim(x.min() if x.size > 1 else x[0] - 0.5, x.max() if x.size > 1 else x[0] + 0.5)
    ax.set_xticks(x, minor=True)  # minor ticks show where the checkpoints are (contourf interpolates between them)
    ax.set_yticks(y)
    ax.set_yticklabels([str(int(v)) for v in y])
    ax.set_xlabel(steps_axis_label(float(np.nanmax(np.abs(x_raw))) if x_raw.size else 0.0))
    ax.set_ylabel("test updates")
    ax.set_title(title, fontsize=10)
    return ax


#: How each analysis is named in captions.
ANALYSIS_TEXT = {
    "paired": "one-sided paired t-test over seeds (seed = block: shared initial policy and test tasks)",
    "welch": "one-sided Welch t-test over seed means (unpaired)",
    "paper": "paper-compatible (GS) statistic",
}
P_NOTE = "1 - p is a p-value transform, not a posterior probability"


def _panel_values(report: pd.DataFrame, env_id: str, analysis: str):
    """(marks, updates, 1-p values, flags, not-significant mask) of one env for the shown analysis."""
    marks, upds, prob = stats.grid(report, env_id, f"{analysis}_one_minus_p")
    _, _, fl = stats.grid(report, env_id, f"{analysis}_flags")
    _, _, q = stats.grid(report, env_id, f"{analysis}_q")
    ns = ~(q < stats.Q_LEVEL) & ~np.isnan(prob)
    return marks, upds, prob, fl, ns


def _caption(la: str, lb: str, metric: str, analysis: str) -> tuple[str, str]:
    if analysis == "paper":
        head = (f"{la} vs {lb} ({METRIC_LABELS.get(metric, metric)}): paper-compatible (GS) statistic 2P - 1 with "
                f"P = F_nu(d/se) ({P_NOTE.replace('1 - p', 'P')})")
        return head, f"2P - 1   (+1: {la} better)"
    head = (f"{la} vs {lb} ({METRIC_LABELS.get(metric, metric)}): 1 - p of the {ANALYSIS_TEXT[analysis]}; "
            f"{P_NOTE}; black line: 1 - p = 0.5")
    return head, f"1 - p   (1: {la} better)"


def _legend(fig: Figure, any_flag: bool, any_ns: bool, analysis: str, allowed: str) -> None:
    handles = []
    if any_ns:
        handles.append(Patch(facecolor="white", edgecolor="0.35", hatch="///",
                             label=f"not significant: BH q >= {stats.Q_LEVEL:g} ({analysis})"))
    if any_flag:
        handles.append(Patch(facecolor="white", edgecolor="0.35", hatch="xxx",
                             label="flagged (n<2, zero variance, NaN, missing/unpaired runs; see report)"))
    if handles:
        ncol = len(handles) if fig.get_figwidth() >= 9 else 1
        fig.legend(handles=handles, loc="outside lower center", fontsize=7, frameon=False, ncol=ncol)
    if allowed:
        fig.text(0.5, 0.0, textwrap.fill(f"allowed comparability difference: {allowed}", 160), ha="center",
                 va="bottom", fontsize=7)


def contour_figure(report: pd.DataFrame, *, analysis: str = "paired", paper_compat: bool = False) -> Figure:
    """The paper's Figure 1/2 layout for one pair: one contour panel per environment, shared colorbar.

    ``report`` is :func:`rlbench.stats.compare_cells` output for ONE pair. ``analysis``: which
    of its analyses to show (``paired``, ``welch``: 1 - p of the one-sided test; ``paper``: GS's
    2P - 1; ``paper_compat=True`` is the old spelling of ``analysis="paper"``). Cells not
    significant at BH q < 0.05 in that analysis are hatched "///", flagged cells "xxx"; the
    caption names the analysis and any allowed comparability difference.
    """
    if paper_compat:
        analysis = "paper"
    stats.check_analysis(analysis)
    a, b = report["algo_a"].iloc[0], report["algo_b"].iloc[0]
    metric = report["metric"].iloc[0]
    la, lb = algo_label(a), algo_label(b)
    envs = ordered_envs(report["env_id"])
    fig, axes = new_figure(len(envs), ncols=4, extra_height=1.2)
    any_flag = any_ns = False
    for ax, env_id in zip(axes, envs):
        marks, upds, prob, fl, ns = _panel_values(report, env_id, analysis)
        any_flag |= bool((fl != "").any())
        any_ns |= bool((ns & (fl == "")).any())
        contour(ax, marks, upds, prob, title=f"{env_label(env_id)}\n{la} vs {lb}", flags=fl,
                paper_compat=analysis == "paper", not_significant=ns)
    head, label = _caption(la, lb, metric, analysis)
    norm = Normalize(-1, 1) if analysis == "paper" else Normalize(0, 1)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap="RdBu_r"), ax=axes, label=label, shrink=0.9)
    if analysis != "paper":
        cbar.set_ticks([0, 0.25, 0.5, 0.75, 1.0])
    suptitle(fig, head)
    allowed = report["allowed_differences"].iloc[0] if "allowed_differences" in report else ""
    _legend(fig, any_flag, any_ns, analysis, allowed if isinstance(allowed, str) else "")
    return fig


def study_figure(reports: Sequence[pd.DataFrame], *, analysis: str = "paired") -> Figure:
    """One figure per study (the paper's Figures 1 and 2 together): a contour panel per
    (environment x pair), environments in columns and pairs in rows, one shared colour scale."""
    stats.check_analysis(analysis)
    reports = [r for r in reports if len(r)]
    envs = ordered_envs(pd.concat([r["env_id"] for r in reports]))
    ncols = len(envs)
    fig, axes = new_figure(ncols * len(reports), ncols=ncols, extra_height=1.3)
    any_flag = any_ns = False
    for row, report in enumerate(reports):
        la, lb = algo_label(report["algo_a"].iloc[0]), algo_label(report["algo_b"].iloc[0])
        for col, env_id in enumerate(envs):
            ax = axes[row * ncols + col]
            if not (report["env_id"] == env_id).any():
                ax.set_visible(False)
                continue
            marks, upds, prob, fl, ns = _panel_values(report, env_id, analysis)
            any_flag |= bool((fl != "").any())
            any_ns |= bool((ns & (fl == "")).any())
            contour(ax, marks, upds, prob, title=f"{env_label(env_id)}\n{la} vs {lb}", flags=fl,
                    paper_compat=analysis == "paper", not_significant=ns)
    metric = reports[0]["metric"].iloc[0]
    head, label = _caption("first", "second method", metric, analysis)
    head = head.replace("first vs second method", "DRS method vs MAML method (red: DRS better)")
    norm = Normalize(-1, 1) if analysis == "paper" else Normalize(0, 1)
    fig.colorbar(ScalarMappable(norm=norm, cmap="RdBu_r"), ax=axes, label=label.replace("first", "DRS method"),
                 shrink=0.9)
    suptitle(fig, head)
    allowed = "; ".join(sorted({str(r["allowed_differences"].iloc[0]) for r in reports
                                if "allowed_differences" in r and r["allowed_differences"].iloc[0]}))
    _legend(fig, any_flag, any_ns, analysis, allowed)
    return fig


#: Columns of the study summary (see :func:`summary_table`).
SUMMARY_COLUMNS = ["env_id", "algo_a", "algo_b", "analysis", "checkpoint", "budget_mark", "test_update", "n",
                   "diff", "ci_low", "ci_high", "q", "verdict"]


def summary_table(reports: Sequence[pd.DataFrame], analysis: str) -> pd.DataFrame:
    """Per environment and pair, at each checkpoint after 1 and after the last test update: the
    difference with its 95% CI in ``analysis`` and a verdict: ``"<first> better"`` if BH q <
    0.05 (one-sided test for the first method), ``"<second> better"`` if the 95% CI lies below 0,
    ``"no difference shown"`` otherwise, ``"flagged: <reasons>"`` for flagged cells.
    The CI is the paired t interval (``paired``) or the Welch interval (``welch``, ``paper``:
    the paper's statistic has no interval of its own)."""
    stats.check_analysis(analysis)
    ci = ("paired_ci_low", "paired_ci_high") if analysis == "paired" else ("welch_ci_low", "welch_ci_high")
    dcol, ncol = ("paired_diff", "paired_n") if analysis == "paired" else ("diff", None)
    rows = []
    for report in reports:
        for env_id, r in report.groupby("env_id", sort=True):
            marks = sorted(r["budget_mark"].unique())
            ups = sorted(r["test_update"].unique())
            for k, mark in enumerate(marks):
                for u in sorted({min(1, ups[-1]), ups[-1]}):
                    c = r[(r["budget_mark"] == mark) & (r["test_update"] == u)]
                    if c.empty:
                        continue
                    c = c.iloc[0]
                    la, lb = algo_label(c["algo_a"]), algo_label(c["algo_b"])
                    fl, q = c[f"{analysis}_flags"], float(c[f"{analysis}_q"])
                    lo, hi = float(c[ci[0]]), float(c[ci[1]])
                    if fl:
                        verdict = f"flagged: {fl}"
                    elif q < stats.Q_LEVEL:
                        verdict = f"{la} better"
                    elif hi < 0:
                        verdict = f"{lb} better"
                    else:
                        verdict = "no difference shown"
                    n = int(c[ncol]) if ncol else int(min(c["n_a"], c["n_b"]))
                    rows.append({"env_id": env_id, "algo_a": c["algo_a"], "algo_b": c["algo_b"], "analysis": analysis,
                                 "checkpoint": k, "budget_mark": int(mark), "test_update": int(u), "n": n,
                                 "diff": float(c[dcol]), "ci_low": lo, "ci_high": hi, "q": q, "verdict": verdict})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def summary_markdown(summary: pd.DataFrame, analysis: str, allowed: str = "") -> str:
    """The study summary as a Markdown table (one row per env, pair and checkpoint; columns per test update)."""
    intro = (f"Difference (first - second method) with 95% CI at each checkpoint; verdict at BH q < {stats.Q_LEVEL:g} "
             f"({ANALYSIS_TEXT[analysis]}; 'second better' means the 95% CI lies below 0).")
    lines = [f"# Study summary ({analysis} analysis)", "", intro, ""]
    if allowed:
        lines += [f"Allowed comparability difference: {allowed}", ""]
    ups = sorted(summary["test_update"].unique())
    head = ["environment", "pair", "checkpoint (steps)"] + [f"after {u} test update{'s' if u != 1 else ''}" for u in ups]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (env_id, a, b, k), g in summary.groupby(["env_id", "algo_a", "algo_b", "checkpoint"], sort=True):
        cells = []
        for u in ups:
            c = g[g["test_update"] == u]
            if c.empty:
                cells.append("")
                continue
            c = c.iloc[0]
            cells.append(f"{c['diff']:.4g} [{c['ci_low']:.4g}, {c['ci_high']:.4g}], n={c['n']}: {c['verdict']}")
        row = [env_label(env_id), f"{algo_label(a)} vs {algo_label(b)}", f"{k} ({int(g['budget_mark'].iloc[0]):,})"]
        lines.append("| " + " | ".join(row + cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- curves


def _ci95(values: np.ndarray) -> tuple[float, float, int]:
    """Mean and half-width of the Student-t 95% CI over seeds (NaN half-width with < 2 seeds)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    n = v.size
    if n == 0:
        return np.nan, np.nan, 0
    if n < 2:
        return float(v.mean()), np.nan, n
    return float(v.mean()), float(sps.t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n)), n


def _band(t: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """CI band limits; a success rate's band is clipped to [0, 1] (the t interval can leave it)."""
    lo, hi = (t["mean"] - t["half"]).to_numpy(float), (t["mean"] + t["half"]).to_numpy(float)
    if metric == "success":
        lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
    return lo, hi


def _n_text(ns: Sequence[int]) -> str:
    lo, hi = min(ns), max(ns)
    return f"n = {lo} seeds" if lo == hi else f"n = {lo}-{hi} seeds"


def curve_table(scores: pd.DataFrame, algo: str, by: str, **fixed: int) -> pd.DataFrame:
    """Mean, 95% CI half-width and seed count of ``scores`` for one algorithm grouped by ``by``.

    ``scores`` is :func:`rlbench.stats.seed_scores` output for ONE env; ``fixed`` selects e.g.
    ``test_update=1``. Columns: ``by, mean, half, n``.
    """
    s = scores[scores["algo"] == algo]
    for k, v in fixed.items():
        s = s[s[k] == v]
    rows = [(key, *_ci95(g["score"].to_numpy())) for key, g in s.groupby(by, sort=True)]
    return pd.DataFrame(rows, columns=[by, "mean", "half", "n"])


def learning_curves(ax: Axes, scores: pd.DataFrame, algos: Sequence[str], *, test_update: int = 1,
                    metric: str = "return", title: str = "") -> Axes:
    """Score after ``test_update`` adaptation steps vs meta-training budget, mean and 95% CI over seeds.

    ``scores``: seed scores of one environment. One line per algorithm, band = Student-t 95% CI
    of the seed mean; the legend states the number of seeds. The plotted means are attached as
    ``ax.rlbench_curves[algo] = DataFrame(budget_mark, mean, half, n)``.
    """
    max_steps = float(scores["budget_mark"].max()) if len(scores) else 0.0
    div, _ = step_scale(max_steps)
    ax.rlbench_curves = {}
    for algo, color in zip(algos, PAIR_COLORS * 2):
        t = curve_table(scores, algo, "budget_mark", test_update=test_update)
        if t.empty:
            continue
        x = t["budget_mark"].to_numpy(float) / div
        ax.plot(x, t["mean"], color=color, marker="o", markersize=3, linewidth=1.5,
                label=f"{algo_label(algo)} ({_n_text(t['n'].tolist())})")
        lo, hi = _band(t, metric)
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
        ax.rlbench_curves[algo] = t
    ax.set_xlabel(steps_axis_label(max_steps))
    upd = f"{test_update} test update" + ("" if test_update == 1 else "s")
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)}\nafter {upd}")
    if metric == "success":
        ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return ax


def adaptation_curves(ax: Axes, scores: pd.DataFrame, algos: Sequence[str], *,
                      marks: Sequence[int] | None = None, metric: str = "return", title: str = "") -> Axes:
    """Score vs number of test updates (0..5) at chosen checkpoints, mean and 95% CI over seeds.

    ``scores``: seed scores of one environment; ``marks``: budget marks to show (default: the
    first, middle and last mark present). Colour = algorithm, line style = checkpoint. The
    plotted means are attached as ``ax.rlbench_curves[(algo, mark)]``. The legend sits below the
    axes (six lines would cover the data) and the seed counts go into the title.
    """
    all_marks = sorted(scores["budget_mark"].unique())
    if marks is None:
        marks = sorted({all_marks[0], all_marks[len(all_marks) // 2], all_marks[-1]}) if all_marks else []
    div, unit = step_scale(float(max(all_marks)) if all_marks else 0.0)
    styles = ["--", "-.", "-", ":"]
    markers = ["s", "^", "o", "D"]
    ax.rlbench_curves = {}
    ns: dict[str, list[int]] = {}
    for algo, color in zip(algos, PAIR_COLORS * 2):
        for k, mark in enumerate(marks):
            t = curve_table(scores, algo, "test_update", budget_mark=int(mark))
            if t.empty:
                continue
            x = t["test_update"].to_numpy(float)
            ax.plot(x, t["mean"], color=color, linestyle=styles[k % 4], marker=markers[k % 4], markersize=3.5,
                    linewidth=1.4, label=f"{algo_label(algo)} @ {mark / div:g}{unit} steps")
            lo, hi = _band(t, metric)
            ax.fill_between(x, lo, hi, color=color, alpha=0.1, linewidth=0)
            ns.setdefault(algo, []).extend(t["n"].tolist())
            ax.rlbench_curves[(algo, int(mark))] = t
    ups = sorted(scores["test_update"].unique())
    if ups:
        ax.set_xticks(ups)
    ax.set_xlabel("test updates (adaptation steps)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if metric == "success":
        ax.set_ylim(-0.03, 1.03)
    n_line = ", ".join(f"{algo_label(a)} {_n_text(v)}" for a, v in ns.items())
    ax.set_title(f"{title}\n({n_line})" if title else f"({n_line})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    return ax


def learning_figure(scores: pd.DataFrame, algos: Sequence[str], *, metric: str = "return",
                    test_update: int = 1) -> Figure:
    """One learning-curve panel per environment for a pair (score after one test update vs budget)."""
    envs = ordered_envs(scores["env_id"])
    fig, axes = new_figure(len(envs), ncols=4, panel_size=(3.6, 2.8), extra_height=0.5)
    names = " vs ".join(algo_label(a) for a in algos)
    for ax, env_id in zip(axes, envs):
        learning_curves(ax, scores[scores["env_id"] == env_id], algos, test_update=test_update, metric=metric,
                        title=f"{env_label(env_id)}: {names}")
    upd = f"{test_update} test update" + ("" if test_update == 1 else "s")
    suptitle(fig, f"{names}: meta-test {METRIC_LABELS.get(metric, metric)} after {upd} vs meta-training "
                  "budget (mean and 95% CI over seeds)")
    return fig


def adaptation_figure(scores: pd.DataFrame, algos: Sequence[str], *, metric: str = "return",
                      marks: Sequence[int] | None = None) -> Figure:
    """One adaptation-curve panel per environment for a pair (score vs test updates at a few checkpoints)."""
    envs = ordered_envs(scores["env_id"])
    fig, axes = new_figure(len(envs), ncols=4, panel_size=(3.8, 3.9), extra_height=0.5)
    names = " vs ".join(algo_label(a) for a in algos)
    for ax, env_id in zip(axes, envs):
        adaptation_curves(ax, scores[scores["env_id"] == env_id], algos, marks=marks, metric=metric,
                          title=f"{env_label(env_id)}: {names}")
    suptitle(fig, f"{names}: meta-test {METRIC_LABELS.get(metric, metric)} vs test updates at selected "
                  "checkpoints (mean and 95% CI over seeds)")
    return fig


# --------------------------------------------------------------------------- aggregate across environments


def aggregate_figure(agg: pd.DataFrame, *, test_update: int = 1) -> Figure:
    """rliable-style aggregate of one pair across environments after ``test_update`` test updates.

    ``agg``: :func:`rlbench.aggregate.aggregate_table` output. Left: interquartile mean of the
    normalised scores of each algorithm per checkpoint with its stratified bootstrap 95% CI;
    right: probability of improvement P(first > second) with its CI (0.5 = no difference). The
    normalisation (0 = the shared initial policy, 1 = the best cell mean either algorithm
    reaches in that environment) is stated in the title. The plotted rows are attached as
    ``fig.rlbench_rows``.
    """
    a, b = agg["algo_a"].iloc[0], agg["algo_b"].iloc[0]
    metric = agg["metric"].iloc[0]
    ups = sorted(agg["test_update"].unique())
    u = test_update if test_update in ups else ups[-1]
    rows = agg[agg["test_update"] == u].sort_values("checkpoint")
    fig, (ax1, ax2) = new_figure(2, ncols=2, panel_size=(3.8, 2.8), extra_height=0.9)
    x = rows["checkpoint"].to_numpy(float)
    for algo, col, color in ((a, "a", PAIR_COLORS[0]), (b, "b", PAIR_COLORS[1])):
        ax1.plot(x, rows[f"iqm_{col}"], color=color, marker="o", markersize=3, label=algo_label(algo))
        ax1.fill_between(x, rows[f"iqm_{col}_low"], rows[f"iqm_{col}_high"], color=color, alpha=0.2, linewidth=0)
    ax1.set_xlabel("checkpoint (0 = initial policy)")
    ax1.set_ylabel("IQM of normalised score")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    ax2.plot(x, rows["poi"], color="k", marker="o", markersize=3)
    ax2.fill_between(x, rows["poi_low"], rows["poi_high"], color="0.5", alpha=0.3, linewidth=0)
    ax2.axhline(0.5, color="0.4", linestyle="--", linewidth=1)
    ax2.set_ylim(-0.03, 1.03)
    ax2.set_xlabel("checkpoint (0 = initial policy)")
    ax2.set_ylabel(f"P({algo_label(a)} > {algo_label(b)})")
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.set_xticks(x)
    n_env = int(rows["n_envs"].max()) if len(rows) else 0
    norm = ("success rate, not rescaled" if metric == "success" else
            "score normalised per environment: 0 = shared initial policy, 1 = best cell mean of either method")
    suptitle(fig, f"{algo_label(a)} vs {algo_label(b)} across {n_env} environment(s) after {u} test update(s): "
                  f"interquartile mean and probability of improvement, stratified bootstrap 95% CIs over seeds "
                  f"({norm})", fontsize=9)
    fig.rlbench_rows = rows
    return fig
