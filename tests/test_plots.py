"""rlbench.plots: files are written and what is drawn equals the report's numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.contour import QuadContourSet
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rlbench import plots, stats


def _ax() -> plots.Axes:
    _, axes = plots.new_figure(1)
    return axes[0]


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
    cs = ax.rlbench_mappable
    assert isinstance(cs, QuadContourSet)
    np.testing.assert_allclose(cs.levels, plots.PROB_LEVELS)
    assert (cs.norm.vmin, cs.norm.vmax) == (0.0, 1.0) and cs.cmap.name == "RdBu_r"
    np.testing.assert_array_equal(ax.rlbench_values, prob.T)
    lines = [c for c in ax.collections if isinstance(c, QuadContourSet) and not c.filled]
    assert len(lines) == 1 and list(lines[0].levels) == [0.5]
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == 1
    assert "steps (M)" in ax.get_xlabel() and ax.get_ylabel() == "test updates"


def test_contour_paper_compat_is_gs_style():
    x, y = np.array([0, 1e6, 2e6]), np.arange(6)
    prob = np.linspace(0.0, 1.0, 18).reshape(3, 6)
    ax = plots.contour(_ax(), x, y, prob, title="t", paper_compat=True)
    cs = ax.rlbench_mappable
    np.testing.assert_allclose(cs.levels, np.linspace(-1.01, 1.01, 50))
    assert (cs.norm.vmin, cs.norm.vmax) == (-1.0, 1.0) and cs.cmap.name == "RdBu_r"
    np.testing.assert_allclose(ax.rlbench_values, (2 * prob - 1).T)
    assert any("paper-compat" in t.get_text() for t in ax.texts)


def test_contour_with_one_checkpoint_and_nan_cells():
    ax = plots.contour(_ax(), [0.0], np.arange(6), np.array([[0.2, np.nan, 0.5, 0.6, 0.9, 1.0]]), title="t",
                       flags=np.array([[False, True, False, False, False, False]]))
    assert ax.rlbench_values.mask.tolist() == [[False], [True], [False], [False], [False], [False]]
    with pytest.raises(ValueError):
        plots.contour(_ax(), [0.0, 1.0], np.arange(6), np.zeros((6, 2)), title="t")


def test_contour_figure_draws_report_values_and_saves_png_pdf(tmp_path):
    rep = stats.compare_cells(_scores(), "drs-ppo", "promp")
    rep.loc[rep.index[3], "flags"] = "n_a<2"  # pretend degenerate: must be hatched
    for paper in (False, True):
        fig = plots.contour_figure(rep, paper_compat=paper)
        assert isinstance(fig, Figure)
        panels = [ax for ax in fig.axes if hasattr(ax, "rlbench_values")]
        assert [ax.get_title().split("\n")[0] for ax in panels] == ["A-v0", "B-v0"]
        for ax, env in zip(panels, ["rlbench/A-v0", "rlbench/B-v0"]):
            col = "gs_value" if paper else "prob"
            _, _, want = stats.grid(rep, env, col)
            np.testing.assert_allclose(ax.rlbench_values, want.T, atol=1e-12)
        assert sum(bool(p.get_hatch()) for ax in panels for p in ax.patches) == (0 if paper else 1)
        paths = plots.save_figure(fig, tmp_path / f"contour_{paper}")
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        assert all(p.stat().st_size > 1000 for p in paths)
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"


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
    t = ax.rlbench_curves[("promp", 32_000_000)]
    want = env[(env["algo"] == "promp") & (env["budget_mark"] == 32_000_000)].groupby("test_update")["score"].mean()
    np.testing.assert_allclose(t["mean"], want.to_numpy())
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
