"""rlbench.aggregate: hand-computed and scipy oracles, and rliable itself reading the exported arrays."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from test_compare_cmd import LOCO, MW, make_results

from rlbench import aggregate, analysis


def test_iqm_by_hand_and_batched():
    x = np.array([[1.0, 100.0], [2.0, 3.0], [4.0, -50.0], [5.0, 6.0]])  # 8 values
    # sorted: -50 1 2 3 4 5 6 100 -> middle 50%: 2 3 4 5
    assert aggregate.iqm(x) == pytest.approx(3.5)
    assert aggregate.iqm(np.stack([x, x + 1])) == pytest.approx([3.5, 4.5])
    assert np.isnan(aggregate.iqm(np.array([[np.nan, 1.0]])))


def test_probability_of_improvement_is_mean_mann_whitney_u_over_envs():
    rng = np.random.default_rng(4)
    x, y = rng.normal(0.5, 1, (5, 3)), rng.normal(0, 1, (4, 3))
    x[0, 0] = y[1, 0]  # a tie counts 1/2
    u = [sps.mannwhitneyu(x[:, j], y[:, j]).statistic / 20 for j in range(3)]
    assert aggregate.probability_of_improvement(x, y) == pytest.approx(np.mean(u), abs=1e-12)
    assert aggregate.probability_of_improvement(np.ones((2, 1)), np.zeros((3, 1))) == 1.0


def test_stratified_resample_keeps_each_env_column():
    x = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    r = aggregate.stratified_resample(x, np.random.default_rng(0), 50)
    assert r.shape == (50, 3, 2)
    assert set(np.unique(r[..., 0])) <= {1.0, 2.0, 3.0} and set(np.unique(r[..., 1])) <= {10.0, 20.0, 30.0}


def test_normalisation_is_initial_policy_zero_best_mean_one():
    rows = []
    for algo, gain in (("a", 2.0), ("b", 1.0)):
        for seed in (1, 2):
            for mark in (0, 10):
                for u in (0, 1):
                    rows.append(("e", algo, seed, mark, u, -100.0 + seed + gain * mark + u))
    sc = pd.DataFrame(rows, columns=["env_id", "algo", "seed", "budget_mark", "test_update", "score"])
    norm = aggregate.normalisation(sc, ("a", "b"), "return")
    r_init = np.mean([-99.0, -98.0])  # mark 0, update 0, both algorithms, both seeds
    r_best = np.mean([-100 + 1 + 20 + 1, -100 + 2 + 20 + 1])  # algorithm a at mark 10, update 1
    assert norm.iloc[0][["r_init", "r_best"]].tolist() == [r_init, r_best] and norm.iloc[0]["ok"]
    ns = aggregate.normalised_scores(sc, norm)
    np.testing.assert_allclose(ns["score"], (sc["score"] - r_init) / (r_best - r_init))
    flat = sc.assign(score=1.0)
    assert not aggregate.normalisation(flat, ("a", "b"), "return").iloc[0]["ok"]  # nothing improved: left out
    assert aggregate.normalisation(sc, ("a", "b"), "success").iloc[0][["r_init", "r_best"]].tolist() == [0.0, 1.0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = make_results(tmp_path_factory.mktemp("res"), envs=(LOCO, MW))
    out = tmp_path_factory.mktemp("out")
    analysis.compare(root, ["drs-ppo:promp"], out, n_boot=99)
    stem = out / "drs-ppo_vs_promp_return_"
    with np.load(f"{stem}rliable.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, pd.read_csv(f"{stem}rliable_index.csv"), pd.read_csv(f"{stem}aggregate.csv")


def test_export_layout_is_seeds_by_environments(exported):
    arrays, index, agg = exported
    assert all(json.loads(e) == sorted([LOCO, MW]) for e in index["envs"])
    assert all(arrays[k].shape == (4, 2) for k in index["key"])
    assert all(json.loads(s) == [1, 2, 3, 4] for s in index["seeds"])
    assert set(zip(agg["checkpoint"], agg["test_update"])) == set(zip(index["checkpoint"], index["test_update"]))


def _arch8_accepts_random_state(monkeypatch):
    """rliable 1.2.0 passes ``random_state=`` to arch's bootstrap; arch 8 renamed it ``seed``."""
    import arch
    import arch.bootstrap as arch_bs

    if int(arch.__version__.split(".")[0]) < 8:
        return
    orig = arch_bs.IIDBootstrap.__init__

    def init(self, *args, random_state=None, seed=None, **kwargs):
        orig(self, *args, seed=seed if seed is not None else random_state, **kwargs)

    monkeypatch.setattr(arch_bs.IIDBootstrap, "__init__", init)


def test_rliable_reproduces_the_aggregate_from_the_exported_arrays(exported, monkeypatch):
    metrics = pytest.importorskip("rliable.metrics")
    library = pytest.importorskip("rliable.library")
    _arch8_accepts_random_state(monkeypatch)
    arrays, index, agg = exported
    key = index.set_index(["algo", "checkpoint", "test_update"])["key"]
    for _, row in agg.iterrows():
        x = arrays[key[("drs-ppo", row["checkpoint"], row["test_update"])]]
        y = arrays[key[("promp", row["checkpoint"], row["test_update"])]]
        assert row["iqm_a"] == pytest.approx(metrics.aggregate_iqm(x), rel=1e-12, abs=1e-12)
        assert row["iqm_b"] == pytest.approx(metrics.aggregate_iqm(y), rel=1e-12, abs=1e-12)
        assert row["poi"] == pytest.approx(metrics.probability_of_improvement(x, y), abs=1e-12)
    # intervals: rliable's stratified bootstrap against ours, on the final checkpoint after 1 test update
    last = agg[(agg["checkpoint"] == agg["checkpoint"].max()) & (agg["test_update"] == 1)].iloc[0]
    x = arrays[key[("drs-ppo", last["checkpoint"], 1)]]
    y = arrays[key[("promp", last["checkpoint"], 1)]]
    np.random.seed(0)  # rliable draws its resampling indices from numpy's global generator
    reps = 3000
    _, iqm_ci = library.get_interval_estimates({"a": x}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps)
    _, poi_ci = library.get_interval_estimates({"ab": [x, y]}, metrics.probability_of_improvement, reps=reps)
    ours_iqm = aggregate.stratified_ci(aggregate.iqm, [x], reps=reps, rng=1)
    ours_poi = aggregate.stratified_ci(aggregate.probability_of_improvement, [x, y], reps=reps, rng=1)
    width = ours_iqm[1] - ours_iqm[0]
    np.testing.assert_allclose(np.ravel(iqm_ci["a"]), ours_iqm, atol=0.05 * width)  # Monte Carlo error only
    np.testing.assert_allclose(np.ravel(poi_ci["ab"]), ours_poi, atol=0.05)
