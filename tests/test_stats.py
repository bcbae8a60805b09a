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
    assert first["welch_flags"] == "" and np.isfinite(first["welch_q"]) and first["n_a"] == 3 == first["n_b"]
    assert set(last["welch_flags"].split(";")) == {"n_b<2", "missing_runs_b"}
    assert np.isnan(last["welch_one_minus_p"]) and np.isnan(last["welch_q"]) and last["n_b"] == 1
    assert set(last["paired_flags"].split(";")) == {"n_pairs<2", "missing_runs_b"} and last["paired_n"] == 1
    assert np.isnan(last["paired_one_minus_p"]) and np.isnan(last["paired_q"]) and np.isnan(last["paired_ci_low"])
    assert "missing_runs_b" in last["paper_flags"] and np.isnan(last["paper_q"])
    # an algorithm with no runs at all in an env: every cell flagged, in every analysis
    only_a = stats.compare_cells(_scores([r for r in rows if r[1] == "A"]), "A", "B")
    for a in stats.ANALYSES:
        assert all("missing_runs_b" in f for f in only_a[f"{a}_flags"])
        assert only_a[f"{a}_one_minus_p"].isna().all()


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
    rng = np.random.default_rng(7)  # scipy >= 1.11 (the declared minimum) has the BH adjustment
    pr = rng.uniform(0, 0.2, 37)
    np.testing.assert_allclose(stats.bh_qvalues(pr), sps.false_discovery_control(pr), atol=1e-12)
    assert np.isnan(stats.bh_qvalues(np.array([np.nan]))).all()


# --------------------------------------------------------------------------- seed scores


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


# --------------------------------------------------------------------------- paired analysis


@pytest.mark.parametrize("shape", [(3,), (5,), (10,), (4, 6, 5)])
def test_paired_equals_scipy_ttest_rel(shape):
    rng = np.random.default_rng(sum(shape))
    block = rng.normal(0, 50, shape)  # shared seed effect: cancels in the paired test
    a, b = block + rng.normal(0.5, 1, shape), block + rng.normal(0, 1, shape)
    got = stats.paired(a, b)
    ref = sps.ttest_rel(a, b, axis=-1, alternative="greater")
    np.testing.assert_allclose(got["p"], ref.pvalue, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(got["one_minus_p"], 1 - ref.pvalue, atol=1e-12)
    np.testing.assert_allclose(got["t"], ref.statistic, rtol=1e-12)
    ci = sps.ttest_rel(a, b, axis=-1).confidence_interval(0.95)
    np.testing.assert_allclose(got["ci_low"], ci.low, rtol=1e-12)
    np.testing.assert_allclose(got["ci_high"], ci.high, rtol=1e-12)
    assert (got["flags"] == "").all()


def test_paired_by_hand():
    a, b = np.array([10.0, 20.0, 33.0]), np.array([8.0, 19.0, 30.0])  # d = 2, 1, 3
    sd = 1.0  # var of (2, 1, 3) with ddof 1
    t = 2.0 / (sd / math.sqrt(3))
    got = stats.paired(a, b)
    assert got["diff"] == pytest.approx(2.0) and got["sd"] == pytest.approx(sd) and got["df"] == 2
    assert got["t"] == pytest.approx(t, rel=1e-12)
    assert got["p"] == pytest.approx(sps.t.sf(t, 2), rel=1e-12)
    half = sps.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert got["win_frac"] == pytest.approx(1.0)
    assert stats.paired(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 2.0, 4.0, 3.0]))["win_frac"] == 0.625


def test_paired_degenerate_cells_are_flagged():
    one = stats.paired(np.array([1.0]), np.array([0.0]))
    assert str(one["flags"].item()) == "n_pairs<2" and np.isnan(one["p"]) and np.isnan(one["ci_low"])
    same = stats.paired(np.array([1.0, 5.0, 2.0]), np.array([1.0, 5.0, 2.0]))  # shared initial policy
    assert str(same["flags"].item()) == "zero_var" and np.isnan(same["one_minus_p"])
    nan = stats.paired(np.array([1.0, np.nan, 2.0]), np.array([0.0, 1.0, 1.0]))
    assert str(nan["flags"].item()) == "nan_score" and np.isnan(nan["p"]) and np.isnan(nan["win_frac"])


def test_bootstrap_ci_equals_scipy_percentile_bootstrap():
    d = np.array([1.0, 4.0, 2.5, 3.0, 7.0])
    lo, hi = stats.bootstrap_ci(d, n_resamples=2000, rng=5)
    ref = sps.bootstrap((d,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(5))
    assert (float(lo), float(hi)) == (ref.confidence_interval.low, ref.confidence_interval.high)
    assert d.min() <= lo < d.mean() < hi <= d.max()
    lo1, hi1 = stats.bootstrap_ci(np.array([1.0]))
    assert np.isnan(lo1) and np.isnan(hi1)


def test_compare_cells_paired_uses_seed_blocks_and_unpaired_envs_are_flagged():
    rows = []
    rng = np.random.default_rng(11)
    for seed in (1, 2, 3):
        block = rng.normal(0, 100)  # huge seed effect shared by both algorithms
        for algo, off in (("A", 1.0), ("B", 0.0)):
            for env in ("e1", "e2"):
                rows.append((env, algo, seed, 10, 1, block + off + rng.normal(0, 0.01), 0.1, 4, 10))
    sc = _scores(rows)
    rep = stats.compare_cells(sc, "A", "B", unpaired={"e2": "no pairing record"}, allowed_differences="x: 1 vs 2")
    e1, e2 = rep[rep["env_id"] == "e1"].iloc[0], rep[rep["env_id"] == "e2"].iloc[0]
    a = sc[(sc["env_id"] == "e1") & (sc["algo"] == "A")].sort_values("seed")["score"].to_numpy()
    b = sc[(sc["env_id"] == "e1") & (sc["algo"] == "B")].sort_values("seed")["score"].to_numpy()
    assert e1["paired_p"] == pytest.approx(sps.ttest_rel(a, b, alternative="greater").pvalue, rel=1e-10)
    assert e1["paired_p"] < 1e-3 and e1["welch_p"] > 0.2  # the block is what makes the difference visible
    assert e1["paired_win_frac"] == 1.0 and e1["paired_n"] == 3
    assert e1["prob"] == e1["welch_one_minus_p"]  # deprecated alias
    assert e2["paired_flags"] == "unpaired" and np.isnan(e2["paired_p"]) and np.isnan(e2["paired_boot_low"])
    assert e2["welch_flags"] == "" and np.isfinite(e2["welch_p"])
    assert (rep["allowed_differences"] == "x: 1 vs 2").all()
    assert e1["paper_p"] == pytest.approx(1 - e1["paper_one_minus_p"])
    assert e1["paper_value"] == pytest.approx(2 * e1["paper_one_minus_p"] - 1)


def test_check_analysis_and_significant():
    from rlbench.errors import UsageError

    with pytest.raises(UsageError, match="unknown analysis 'bayes'"):
        stats.check_analysis("bayes")
    rep = pd.DataFrame({"paired_q": [0.01, 0.2, np.nan, 0.01], "paired_flags": ["", "", "n_pairs<2", "zero_var"]})
    assert stats.significant(rep, "paired").tolist() == [True, False, False, False]
