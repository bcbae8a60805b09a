"""Oracle tests of rlbench.stats: scipy for the Welch test, hand arithmetic for everything else."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special
from scipy import stats as sps

from rlbench import stats

# --------------------------------------------------------------------------- Welch probability


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [((5,), (5,)), ((7,), (4,)), ((2,), (3,)), ((3, 4, 5), (3, 4, 8)), ((6, 2), (6, 9))],
)
def test_p_first_better_equals_one_minus_scipy_welch_p(shape_a, shape_b):
    rng = np.random.default_rng(sum(shape_a) * 100 + sum(shape_b))
    a = rng.normal(0.3, 1.0, shape_a)
    b = rng.normal(0.0, 2.5, shape_b)
    ref = 1.0 - sps.ttest_ind(a, b, axis=-1, equal_var=False, alternative="greater").pvalue
    got = stats.p_first_better(a, b)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    w = stats.welch(a, b)
    np.testing.assert_allclose(w["p"], 1.0 - ref, rtol=0, atol=1e-12)
    assert (w["flags"] == "").all()


def test_welch_df_matches_welch_satterthwaite_by_hand():
    a, b = np.array([1.0, 2.0, 4.0]), np.array([0.0, 0.5, 0.5, 3.0])
    va = ((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2
    vb = ((0 - 1) ** 2 + (0.5 - 1) ** 2 + (0.5 - 1) ** 2 + (3 - 1) ** 2) / 3
    df = (va / 3 + vb / 4) ** 2 / ((va / 3) ** 2 / 2 + (vb / 4) ** 2 / 3)
    w = stats.welch(a, b)
    assert w["df"] == pytest.approx(df, rel=1e-12)
    assert w["t"] == pytest.approx((7 / 3 - 1) / math.sqrt(va / 3 + vb / 4), rel=1e-12)


# --------------------------------------------------------------------------- degenerate cells


def test_degenerate_cells_are_flagged_not_zero():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
    b = np.array([[0.0, 1.0, 2.0], [2.0, 2.0, 2.0], [0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    w = stats.welch(a, b)
    assert w["flags"].tolist() == ["", "zero_var", "nan_score", ""]  # one zero-variance group is fine
    assert np.isnan(w["prob"][[1, 2]]).all()
    assert np.isfinite(w["prob"][[0, 3]]).all()
    single = stats.welch(np.array([1.0]), np.array([0.0, 1.0, 2.0]))
    assert str(single["flags"].item()) == "n_a<2" and np.isnan(single["prob"])
    none = stats.welch(np.array([]), np.array([1.0]))
    assert str(none["flags"].item()) == "n_a<2;n_b<2" and np.isnan(none["prob"])
    gs = stats.paper_compat(np.array([1.0]), np.array([0.1]), np.array([0.0, 1.0]), np.array([0.1, 0.1]))
    assert str(gs["flags"].item()) == "n_a<2" and np.isnan(gs["value"])
    gs0 = stats.paper_compat(np.ones(3), np.zeros(3), np.zeros(3), np.zeros(3))
    assert str(gs0["flags"].item()) == "zero_var" and np.isnan(gs0["value"])


def _scores(rows):
    return pd.DataFrame(rows, columns=["env_id", "algo", "seed", "budget_mark", "test_update", "score",
                                       "within_se", "n_tasks", "env_steps"])


def test_compare_cells_flags_missing_runs_and_excludes_flagged_from_bh():
    rows = []
    for algo, off in (("A", 1.0), ("B", 0.0)):
        for seed in (1, 2, 3):
            for mark in (0, 10):
                if algo == "B" and mark == 10 and seed > 1:  # runs of B stopped before mark 10
                    continue
                rows.append(("env", algo, seed, mark, 0, off + 0.1 * seed * (1 + mark), 0.1, 4, mark))
    rep = stats.compare_cells(_scores(rows), "A", "B")
    assert list(rep.columns) == stats.REPORT_COLUMNS
    first, last = rep.iloc[0], rep.iloc[1]
    assert first["flags"] == "" and np.isfinite(first["q"]) and first["n_a"] == 3 == first["n_b"]
    assert set(last["flags"].split(";")) == {"n_b<2", "missing_runs_b"}
    assert np.isnan(last["prob"]) and np.isnan(last["q"]) and last["n_b"] == 1
    # an algorithm with no runs at all in an env: every cell flagged
    only_a = stats.compare_cells(_scores([r for r in rows if r[1] == "A"]), "A", "B")
    assert all("missing_runs_b" in f and "n_b<2" in f for f in only_a["flags"])


# --------------------------------------------------------------------------- paper-compatible mode


def test_paper_compat_matches_hand_worked_gs_formula():
    ma, sa = [1.0, 2.0, 3.0], [0.1, 0.2, 0.3]
    mb, sb = [0.0, 1.0, 1.0], [0.2, 0.2, 0.2]
    # by hand: var of seed means with ddof 0, plus mean within-seed SE^2
    s2a = ((1 - 2) ** 2 + (2 - 2) ** 2 + (3 - 2) ** 2) / 3 + (0.01 + 0.04 + 0.09) / 3  # 2.14 / 3
    mean_b = 2 / 3
    s2b = ((0 - mean_b) ** 2 + (1 - mean_b) ** 2 + (1 - mean_b) ** 2) / 3 + (0.04 + 0.04 + 0.04) / 3
    n = 3
    se2 = s2a / n + s2b / n
    nu = se2**2 / (s2a**2 / (n * (n - 1)) + s2b**2 / (n * (n - 1)))  # GS: s^4/(n(n-1)), not s^4/(n^2(n-1))
    d = 2.0 - mean_b
    tstat = d / math.sqrt(se2)
    # GS's own expression: fin = 0.5 * I_{nu/(t^2+nu)}(nu/2, 1/2); value = sign(d) * (1 - 2 fin)
    fin = 0.5 * special.betainc(nu / 2, 0.5, nu / (tstat**2 + nu))
    value_gs = (1.0 if d > 0 else -1.0) * (1.0 - 2.0 * fin)
    got = stats.paper_compat(ma, sa, mb, sb)
    assert got["value"] == pytest.approx(value_gs, abs=1e-12)
    assert got["df"] == pytest.approx(nu, rel=1e-12)
    # identity value = 2 F_nu(d/se) - 1, and its df is Welch's df (with s as the SD) divided by n
    assert got["value"] == pytest.approx(2 * sps.t.cdf(tstat, nu) - 1, abs=1e-12)
    welch_df = se2**2 / (s2a**2 / (n**2 * (n - 1)) + s2b**2 / (n**2 * (n - 1)))
    assert got["df"] == pytest.approx(welch_df / n, rel=1e-12)
    assert -1 <= got["value"] <= 1


def test_paper_compat_vectorised_and_sign():
    rng = np.random.default_rng(3)
    ma, mb = rng.normal(1, 1, (4, 6, 5)), rng.normal(0, 1, (4, 6, 5))
    sa, sb = rng.uniform(0.1, 0.3, (4, 6, 5)), rng.uniform(0.1, 0.3, (4, 6, 5))
    out = stats.paper_compat(ma, sa, mb, sb)
    one = stats.paper_compat(ma[2, 3], sa[2, 3], mb[2, 3], sb[2, 3])
    assert out["value"][2, 3] == pytest.approx(float(one["value"]), abs=1e-14)
    swapped = stats.paper_compat(mb, sb, ma, sa)
    np.testing.assert_allclose(swapped["value"], -out["value"], atol=1e-12)


# --------------------------------------------------------------------------- CI, Hedges' g, A12, BH


def test_welch_ci_by_hand_and_against_scipy():
    a, b = np.array([1.0, 2.0, 4.0, 3.5]), np.array([0.0, 0.5, 0.5, 3.0, 1.0])
    va, vb = a.var(ddof=1), b.var(ddof=1)
    se = math.sqrt(va / 4 + vb / 5)
    df = (va / 4 + vb / 5) ** 2 / ((va / 4) ** 2 / 3 + (vb / 5) ** 2 / 4)
    half = sps.t.ppf(0.975, df) * se
    d = a.mean() - b.mean()
    lo, hi = stats.welch_ci(a, b)
    assert (lo, hi) == (pytest.approx(d - half, abs=1e-12), pytest.approx(d + half, abs=1e-12))
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == (pytest.approx(ci.low, abs=1e-10), pytest.approx(ci.high, abs=1e-10))


def test_hedges_g_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.0, 2.0, 3.0]
    va = ((1 - 2.5) ** 2 + (2 - 2.5) ** 2 + (3 - 2.5) ** 2 + (4 - 2.5) ** 2) / 3
    vb = ((0 - 1.4) ** 2 + 2 * (1 - 1.4) ** 2 + (2 - 1.4) ** 2 + (3 - 1.4) ** 2) / 4
    sp = math.sqrt((3 * va + 4 * vb) / 7)
    m = 7
    j = math.gamma(m / 2) / (math.sqrt(m / 2) * math.gamma((m - 1) / 2))
    assert stats.hedges_g(a, b) == pytest.approx(j * (2.5 - 1.4) / sp, rel=1e-12)
    assert j == pytest.approx(1 - 3 / (4 * m - 1), abs=2e-3)  # the textbook approximation
    assert np.isnan(stats.hedges_g([1.0], [0.0, 1.0]))


def test_a12_by_hand():
    # 3 vs (1, 3, 5): win, tie, loss; 4 vs (1, 3, 5): win, win, loss -> (3 + 0.5) / 6
    assert stats.a12([3.0, 4.0], [1.0, 3.0, 5.0]) == pytest.approx(3.5 / 6)
    assert stats.a12([2.0, 2.0], [2.0]) == pytest.approx(0.5)
    batched = stats.a12(np.array([[3.0, 4.0], [0.0, 0.0]]), np.array([[1.0, 3.0, 5.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(batched, [3.5 / 6, 0.0])
    assert np.isnan(stats.a12([np.nan, 1.0], [0.0]))


def test_bh_qvalues_by_hand_and_against_scipy():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.20])
    # family of 4 (NaN excluded): sorted .01 .03 .04 .20 -> m p / rank = .04 .06 .0533 .20
    # -> running min from the top: .04 .0533 .0533 .20
    q = stats.bh_qvalues(p)
    np.testing.assert_allclose(q[[0, 3, 1, 4]], [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.20], atol=1e-12)
    assert np.isnan(q[2])
    if hasattr(sps, "false_discovery_control"):
        rng = np.random.default_rng(7)
        pr = rng.uniform(0, 0.2, 37)
        np.testing.assert_allclose(stats.bh_qvalues(pr), sps.false_discovery_control(pr), atol=1e-12)
    assert np.isnan(stats.bh_qvalues(np.array([np.nan]))).all()


# --------------------------------------------------------------------------- seed scores and rliable export


def _long_table():
    rows = []
    for algo in ("A", "B"):
        for seed in (1, 2):
            for task in range(3):
                val = 10.0 * seed + task + (100.0 if algo == "B" else 0.0)
                rows.append({"env_id": "e", "algo": algo, "seed": seed, "checkpoint": 0, "budget_mark": 0,
                             "env_steps": 0, "test_update": 0, "task": task, "return": val,
                             "success": np.nan, "episodes": 2})
    return pd.DataFrame(rows)


def test_seed_scores_mean_over_tasks_and_within_se_ddof0():
    df = _long_table()
    s = stats.seed_scores(df, "return").set_index(["algo", "seed"])
    assert s.loc[("A", 2), "score"] == pytest.approx((20 + 21 + 22) / 3)
    # std over tasks with ddof 0: sqrt(((-1)^2 + 0 + 1^2) / 3) / sqrt(3)
    assert s.loc[("A", 2), "within_se"] == pytest.approx(math.sqrt(2 / 3) / math.sqrt(3))
    assert s.loc[("A", 2), "n_tasks"] == 3
    df.loc[0, "return"] = np.nan  # a NaN task poisons its seed score (and so flags the cell)
    assert np.isnan(stats.seed_scores(df, "return").iloc[0]["score"])
    assert np.isnan(stats.seed_scores(df, "success")["score"]).all()


def test_rliable_arrays_are_seeds_by_tasks(tmp_path):
    df = _long_table()
    arrays, index = stats.rliable_arrays(df, "return")
    assert len(arrays) == 2 and list(index["algo"]) == ["A", "B"]
    key = index.loc[index["algo"] == "B", "key"].item()
    np.testing.assert_array_equal(arrays[key], [[110, 111, 112], [120, 121, 122]])
    stats.save_rliable(arrays, index, tmp_path / "x.npz", tmp_path / "x.csv")
    with np.load(tmp_path / "x.npz") as z:
        np.testing.assert_array_equal(z[key], arrays[key])
    idx = pd.read_csv(tmp_path / "x.csv")
    assert idx.loc[idx["key"] == key, "seeds"].item() == "[1, 2]"
