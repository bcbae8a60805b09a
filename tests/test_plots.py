"""rlbench.plots: files are written and what is drawn equals the report's numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.contour import QuadContourSet
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rlbench import plots, stats


def _ax() -> plots.Axes:
    _, axes = plots.new_figure(1)
    return axes[0]


# What an axes drew, read from its artists (never from attributes the code under test attaches),
# and compared with what matplotlib itself draws from values recomputed here from the input.


def _filled(ax) -> QuadContourSet:
    sets = [c for c in ax.collections if isinstance(c, QuadContourSet) and c.filled]
    assert len(sets) == 1
    return sets[0]


def _assert_contourf_of(cs: QuadContourSet, x, y, z_cu, levels) -> None:
    """``cs`` has exactly the regions matplotlib's contourf draws for ``z_cu`` ([C, U]; NaN
    blank) over x (checkpoints) and y (test updates), with ``levels``."""
    ref = Figure().add_subplot().contourf(x, y, np.ma.masked_invalid(np.asarray(z_cu, float).T), levels)
    np.testing.assert_allclose(cs.levels, ref.levels)
    assert len(cs.get_paths()) == len(ref.get_paths())
    for a, b in zip(cs.get_paths(), ref.get_paths()):
        np.testing.assert_allclose(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.codes, b.codes)


def _edges(v: np.ndarray, i: int) -> tuple[float, float]:
    """Cell i's extent: halfway to its neighbours, clipped to the data range (+-0.5 alone)."""
    if v.size == 1:
        return v[0] - 0.5, v[0] + 0.5
    lo = v[0] if i == 0 else (v[i - 1] + v[i]) / 2
    hi = v[-1] if i == v.size - 1 else (v[i] + v[i + 1]) / 2
    return lo, hi


def _hatched_cells(ax, x, y, hatch: str) -> set[tuple[int, int]]:
    """(checkpoint, update) indices of the cells covered by a rectangle with ``hatch``; a
    rectangle must cover exactly one cell, centred on its grid point (edges halfway between
    grid values, clipped at the ends)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    cells = set()
    for p in ax.patches:
        if isinstance(p, Rectangle) and p.get_hatch() == hatch:
            (x0, y0), w, h = p.get_xy(), p.get_width(), p.get_height()
            i = int(np.argmin(np.abs(x - (x0 + w / 2)))) if x.size > 1 else 0
            j = int(np.argmin(np.abs(y - (y0 + h / 2)))) if y.size > 1 else 0
            assert (x0, x0 + w, y0, y0 + h) == pytest.approx((*_edges(x, i), *_edges(y, j))), (x0, w, y0, h)
            cells.add((i, j))
    return cells


def _scores(n_marks: int = 3, seeds=(1, 2, 3, 4), envs=("rlbench/A-v0", "rlbench/B-v0")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for env in envs:
        for algo, gain in (("drs-ppo", 2.0), ("promp", 1.0)):
            for seed in seeds:
                for c in range(n_marks):
                    for u in range(6):
                        rows.append((env, algo, seed, c * 16_000_000, u, gain * c + 0.3 * u + rng.normal(0, 0.2),
                                     0.05, 5, c * 16_000_000))
    return pd.DataFrame(rows, columns=["env_id", "algo", "seed", "budget_mark", "test_update", "score",
                                       "within_se", "n_tasks", "env_steps"])


def test_contour_plots_the_given_probabilities_with_a_half_line_and_hatched_flags():
    x, y = np.array([0, 16e6, 32e6]), np.arange(6)
    prob = np.linspace(0.05, 0.95, 18).reshape(3, 6)
    flags = np.full((3, 6), "", dtype=object)
    flags[2, 5] = "n_b<2"
    ax = plots.contour(_ax(), x, y, prob, title="t", flags=flags)
    cs = _filled(ax)
    _assert_contourf_of(cs, x / 1e6, y, prob, np.linspace(0, 1, 21))  # 0.05 steps; x in millions
    assert (cs.norm.vmin, cs.norm.vmax) == (0.0, 1.0) and cs.cmap.name == "RdBu_r"
    lines = [c for c in ax.collections if isinstance(c, QuadContourSet) and not c.filled]
    assert len(lines) == 1 and list(lines[0].levels) == [0.5]
    ref = Figure().add_subplot().contour(x / 1e6, y, prob.T, [0.5])
    assert len(lines[0].get_paths()) == len(ref.get_paths()) == 1
    np.testing.assert_allclose(lines[0].get_paths()[0].vertices, ref.get_paths()[0].vertices)
    assert _hatched_cells(ax, x / 1e6, y, "xxx") == {(2, 5)}
    assert _hatched_cells(ax, x / 1e6, y, "///") == set()
    assert "steps (M)" in ax.get_xlabel() and ax.get_ylabel() == "test updates"


def test_contour_paper_compat_is_gs_style():
    x, y = np.array([0, 1e6, 2e6]), np.arange(6)
    prob = np.linspace(0.0, 1.0, 18).reshape(3, 6)
    ax = plots.contour(_ax(), x, y, prob, title="t", paper_compat=True)
    cs = _filled(ax)
    # GS summary.py: 2P - 1 on 50 levels over [-1.01, 1.01]; 2e6 steps are shown in thousands
    _assert_contourf_of(cs, x / 1e3, y, 2 * prob - 1, np.linspace(-1.01, 1.01, 50))
    assert (cs.norm.vmin, cs.norm.vmax) == (-1.0, 1.0) and cs.cmap.name == "RdBu_r"
    assert not [c for c in ax.collections if isinstance(c, QuadContourSet) and not c.filled]  # no 0.5 line
    assert any("paper-compat" in t.get_text() for t in ax.texts)


def test_contour_with_one_checkpoint_and_nan_cells():
    values = [0.2, np.nan, 0.5, 0.6, 0.9, 1.0]
    ax = plots.contour(_ax(), [0.0], np.arange(6), np.array([values]), title="t",
                       flags=np.array([[False, True, False, False, False, False]]))
    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1  # one column of cells: a cell map, not a contour
    drawn = meshes[0].get_array()
    assert drawn.mask.ravel().tolist() == [False, True, False, False, False, False]
    np.testing.assert_array_equal(drawn.ravel().compressed(), [0.2, 0.5, 0.6, 0.9, 1.0])
    assert _hatched_cells(ax, [0.0], np.arange(6), "xxx") == {(0, 1)}
    with pytest.raises(ValueError):
        plots.contour(_ax(), [0.0, 1.0], np.arange(6), np.zeros((6, 2)), title="t")


def test_contour_hatches_not_significant_cells_apart_from_flagged_ones():
    x, y = np.array([0, 1e6, 2e6]), np.arange(2)
    prob = np.full((3, 2), 0.9)
    flags = np.full((3, 2), "", dtype=object)
    flags[0, 0] = "zero_var"
    ns = np.zeros((3, 2), bool)
    ns[0, 0] = ns[1, 1] = True  # (0, 0) is flagged: hatched once, as flagged
    ax = plots.contour(_ax(), x, y, prob, title="t", flags=flags, not_significant=ns)
    hatches = sorted(p.get_hatch() for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch())
    assert hatches == ["///", "xxx"]
    assert _hatched_cells(ax, x / 1e3, y, "xxx") == {(0, 0)}
    assert _hatched_cells(ax, x / 1e3, y, "///") == {(1, 1)}


def test_contour_figure_draws_report_values_per_analysis_and_saves_png_pdf(tmp_path):
    rep = stats.compare_cells(_scores(), "drs-ppo", "promp", n_boot=99)
    rep.loc[rep.index[3], "welch_flags"] = "n_a<2"  # pretend degenerate: must be cross-hatched
    for analysis in stats.ANALYSES:
        fig = plots.contour_figure(rep, analysis=analysis)
        assert isinstance(fig, Figure)
        panels = [ax for ax in fig.axes if any(isinstance(c, QuadContourSet) for c in ax.collections)]
        assert [ax.get_title().split("\n")[0] for ax in panels] == ["A-v0", "B-v0"]
        for ax, env in zip(panels, ["rlbench/A-v0", "rlbench/B-v0"]):
            # recomputed from the report's rows, without stats.grid: one value per (mark, update)
            rows = rep[rep["env_id"] == env]
            marks, ups = np.sort(rows["budget_mark"].unique()), np.sort(rows["test_update"].unique())
            cell = rows.set_index(["budget_mark", "test_update"])
            col = "paper_value" if analysis == "paper" else f"{analysis}_one_minus_p"
            want = np.array([[cell.loc[(m, u), col] for u in ups] for m in marks], dtype=float)
            if analysis == "paper":  # GS's value, already on [-1, 1]
                _assert_contourf_of(_filled(ax), marks / 1e6, ups, want, np.linspace(-1.01, 1.01, 50))
            else:
                _assert_contourf_of(_filled(ax), marks / 1e6, ups, want, np.linspace(0, 1, 21))
            flagged = {(i, j) for i, m in enumerate(marks) for j, u in enumerate(ups) if cell.loc[(m, u), f"{analysis}_flags"] != ""}
            weak = {(i, j) for i, m in enumerate(marks) for j, u in enumerate(ups)
                    if not cell.loc[(m, u), f"{analysis}_q"] < 0.05 and (i, j) not in flagged}
            assert _hatched_cells(ax, marks / 1e6, ups, "xxx") == flagged
            assert _hatched_cells(ax, marks / 1e6, ups, "///") == weak
        n_flag = sum(p.get_hatch() == "xxx" for ax in panels for p in ax.patches)
        assert n_flag == int((rep[f"{analysis}_flags"] != "").sum())
        title = fig.get_suptitle().replace("\n", " ")
        assert {"paired": "paired t-test", "welch": "Welch t-test", "paper": "paper-compatible"}[analysis] in title
        assert "p-value transform, not a posterior probability" in title
        paths = plots.save_figure(fig, tmp_path / f"contour_{analysis}")
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        assert all(p.stat().st_size > 1000 for p in paths)
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"
    assert plots.contour_figure(rep, paper_compat=True).get_suptitle() == plots.contour_figure(
        rep, analysis="paper").get_suptitle()
    with pytest.raises(Exception, match="unknown analysis"):
        plots.contour_figure(rep, analysis="bayes")


def test_study_figure_has_a_panel_per_env_and_pair_on_one_scale_and_summary_matches_report():
    sc = _scores()
    sc2 = sc.replace({"drs-ppo": "drs-trpo", "promp": "trpo-maml"})
    reps = [stats.compare_cells(sc, "drs-ppo", "promp", n_boot=99),
            stats.compare_cells(sc2[sc2["env_id"] == "rlbench/A-v0"], "drs-trpo", "trpo-maml", n_boot=99)]
    fig = plots.study_figure(reps, analysis="paired")
    panels = [ax for ax in fig.axes if ax.get_visible() and any(isinstance(c, QuadContourSet) for c in ax.collections)]
    assert len(panels) == 3  # 2 envs x pair 1, 1 env x pair 2
    assert {(_filled(ax).norm.vmin, _filled(ax).norm.vmax) for ax in panels} == {(0.0, 1.0)}
    summ = plots.summary_table(reps, "paired")
    # 3 (env, pair) x 3 checkpoints x test updates {1, 5}
    assert len(summ) == 3 * 3 * 2 and set(summ["test_update"]) == {1, 5}
    for _, s in summ.iterrows():
        r = reps[0 if s["algo_a"] == "drs-ppo" else 1]
        c = r[(r["env_id"] == s["env_id"]) & (r["budget_mark"] == s["budget_mark"]) & (r["test_update"] == s["test_update"])]
        c = c.iloc[0]
        assert s["diff"] == c["paired_diff"] and s["ci_low"] == c["paired_ci_low"]
        if c["paired_flags"]:
            assert s["verdict"].startswith("flagged")
        elif c["paired_q"] < 0.05:
            assert s["verdict"] == f"{plots.algo_label(c['algo_a'])} better"
        else:
            assert s["verdict"] in ("no difference shown", f"{plots.algo_label(c['algo_b'])} better")
    md = plots.summary_markdown(summ, "paired", "env: sampler.unit differs")
    assert md.count("\n| A-v0 |") == 6 and "sampler.unit" in md


def test_learning_and_adaptation_curves_plot_seed_means_with_n_in_legend(tmp_path):
    sc = _scores(seeds=(1, 2, 3))
    env = sc[sc["env_id"] == "rlbench/A-v0"]
    ax = plots.learning_curves(_ax(), env, ["drs-ppo", "promp"], test_update=1)
    want = env[(env["algo"] == "drs-ppo") & (env["test_update"] == 1)].groupby("budget_mark")["score"].mean()
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), want.to_numpy())
    np.testing.assert_allclose(line.get_xdata(), want.index.to_numpy() / 1e6)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["DRS+PPO (n = 3 seeds)", "ProMP (n = 3 seeds)"]

    ax = plots.adaptation_curves(_ax(), env, ["drs-ppo", "promp"], marks=[0, 32_000_000])
    line = [ln for ln in ax.get_lines() if ln.get_label() == "ProMP @ 32M steps"]
    assert len(line) == 1
    want = env[(env["algo"] == "promp") & (env["budget_mark"] == 32_000_000)].groupby("test_update")["score"].mean()
    np.testing.assert_allclose(line[0].get_ydata(), want.to_numpy())
    np.testing.assert_allclose(line[0].get_xdata(), want.index.to_numpy())
    assert "n = 3 seeds" in ax.get_title()
    for build in (plots.learning_figure, plots.adaptation_figure):
        paths = plots.save_figure(build(sc, ["drs-ppo", "promp"]), tmp_path / build.__name__)
        assert all(p.exists() for p in paths)


def test_success_curves_stay_in_unit_interval():
    sc = _scores(seeds=(1, 2))
    sc["score"] = np.clip(sc["score"] / 10, 0, 1)
    ax = plots.learning_curves(_ax(), sc[sc["env_id"] == "rlbench/A-v0"], ["drs-ppo", "promp"], metric="success")
    assert ax.get_ylim() == (-0.03, 1.03) and "success rate" in ax.get_ylabel()
    for coll in ax.collections:  # CI bands clipped to [0, 1]
        verts = np.concatenate([p.vertices for p in coll.get_paths()])
        assert verts[:, 1].min() >= 0 and verts[:, 1].max() <= 1


def test_aggregate_figure_draws_the_table():
    from rlbench import aggregate

    sc = aggregate.with_checkpoint_index(_scores())
    norm = aggregate.normalisation(sc, ("drs-ppo", "promp"), "return")
    arrays, index = aggregate.score_matrices(aggregate.normalised_scores(sc, norm), ("drs-ppo", "promp"))
    agg = aggregate.aggregate_table(arrays, index, "drs-ppo", "promp", "return", reps=200)
    fig = plots.aggregate_figure(agg)
    rows = agg[agg["test_update"] == 1].sort_values("checkpoint")
    ax_iqm, ax_poi = [ax for ax in fig.axes if ax.get_visible()][:2]
    np.testing.assert_allclose(ax_iqm.get_lines()[0].get_ydata(), rows["iqm_a"])
    np.testing.assert_allclose(ax_iqm.get_lines()[1].get_ydata(), rows["iqm_b"])
    np.testing.assert_allclose(ax_poi.get_lines()[0].get_ydata(), rows["poi"])
    assert "0 = shared initial policy" in fig.get_suptitle().replace("\n", " ")
