"""rlbench.power: noncentral-t power by hand, by simulation, and the seed search."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from rlbench import power


def test_power_paired_by_hand_noncentral_t():
    n, delta, sd = 5, 20.0, 15.0
    df, nc = 4, 20.0 * np.sqrt(5) / 15.0
    want = 1 - sps.nct.cdf(sps.t.ppf(0.95, df), df, nc)
    assert power.power_paired(n, delta, sd) == pytest.approx(want, rel=1e-12)
    assert np.isnan(power.power_paired(1, delta, sd)) and np.isnan(power.power_paired(5, delta, 0.0))


def test_power_matches_simulated_rejection_rates():
    rng = np.random.default_rng(0)
    n, delta, sd, sims = 4, 10.0, 8.0, 20000
    d = rng.normal(delta, sd, (sims, n))
    sim = (sps.ttest_1samp(d, 0.0, axis=1, alternative="greater").pvalue < 0.05).mean()
    assert sim == pytest.approx(power.power_paired(n, delta, sd), abs=4 * np.sqrt(0.25 / sims))
    sa, sb = 5.0, 12.0
    a, b = rng.normal(delta, sa, (sims, n)), rng.normal(0.0, sb, (sims, n))
    sim = (sps.ttest_ind(a, b, axis=1, equal_var=False, alternative="greater").pvalue < 0.05).mean()
    # the noncentral-t power of Welch's test is an approximation (its df is estimated): within 0.02
    assert sim == pytest.approx(power.power_welch(n, delta, sa, sb), abs=0.02)


def test_seeds_needed_is_the_smallest_n_reaching_the_target():
    fn = lambda n: power.power_paired(n, 10.0, 15.0)
    n = power.seeds_needed(fn)
    assert fn(n) >= 0.8 > fn(n - 1)
    assert power.seeds_needed(lambda n: power.power_paired(n, 100.0, 1.0)) == 2
    assert power.seeds_needed(lambda n: power.power_paired(n, 1e-3, 100.0)) is None  # > N_MAX
    sm = pytest.importorskip("statsmodels.stats.power")
    want = sm.TTestPower().solve_power(effect_size=10.0 / 15.0, alpha=0.05, power=0.8, alternative="larger")
    assert n == int(np.ceil(want))
