"""The report's analyses are calibrated on synthetic studies with a known truth (rlbench.calibration).

2000 simulated cells per setting: the Monte Carlo SE of a rate near 0.05 is 0.005 and of a
coverage near 0.95 also 0.005, so the bands [0.03, 0.07] and [0.93, 0.97] are 4 SEs wide on
each side: a calibrated analysis passes, one off by 0.03 or more fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlbench import calibration, stats


def _value(t, design, truth, n, quantity, analysis):
    s = t[(t["design"] == design) & (t["truth"] == truth) & (t["n_seeds"] == n) & (t["quantity"] == quantity)
          & (t["analysis"] == analysis)]
    assert len(s) == 1
    return float(s["value"].iloc[0])


def test_fpr_coverage_and_power_bands():
    t = calibration.run(n_sims=2000, seeds=(3, 5), effect=20.0, n_cells=1, rng_seed=1, n_boot=199)
    for n in (3, 5):
        # paired: the runner's blocked design; Welch: independent runs (its assumption)
        assert 0.03 <= _value(t, "blocked", "null", n, "rejection_rate", "paired") <= 0.07
        assert 0.03 <= _value(t, "independent", "null", n, "rejection_rate", "welch") <= 0.07
        assert 0.93 <= _value(t, "blocked", "null", n, "ci_coverage", "paired_t") <= 0.97
        assert 0.93 <= _value(t, "independent", "null", n, "ci_coverage", "welch") <= 0.97
        assert 0.93 <= _value(t, "blocked", "effect", n, "ci_coverage", "paired_t") <= 0.97
        # on the blocked design Welch and the paper's statistic are conservative (shared effects count as noise)
        assert _value(t, "blocked", "null", n, "rejection_rate", "welch") < 0.01
        assert _value(t, "blocked", "null", n, "rejection_rate", "paper") < 0.01
        assert _value(t, "independent", "null", n, "rejection_rate", "paper") < 0.03
    # power of the paired test at the simulated effect matches the noncentral t (exact for this model)
    from rlbench import power

    sp = calibration.Spreads()
    for n in (3, 5):
        want = power.power_paired(n, 20.0, sp.sd_paired)
        assert abs(_value(t, "blocked", "effect", n, "rejection_rate", "paired") - want) < 0.04
    assert _value(t, "blocked", "effect", 5, "rejection_rate", "welch") < 0.05


def test_simulated_scores_have_the_stated_spreads():
    rng = np.random.default_rng(0)
    sp = calibration.Spreads()
    sim = calibration.simulate(rng, 4000, 3, 2, 0.0, sp, blocked=True)
    d = sim["a"] - sim["b"]
    assert np.std(d) == pytest.approx(sp.sd_paired, rel=0.03)
    seed_sd = np.sqrt(sp.sd_seed**2 + sp.sd_task**2 / sp.n_tasks + sp.sd_run**2 + sp.sd_eps**2 / sp.n_tasks)
    assert np.std(sim["a"]) == pytest.approx(seed_sd, rel=0.03)
    # paired test on these arrays is scipy's
    p = stats.paired(sim["a"][:5], sim["b"][:5])["p"]
    from scipy import stats as sps

    np.testing.assert_allclose(p, sps.ttest_rel(sim["a"][:5], sim["b"][:5], axis=-1, alternative="greater").pvalue,
                               rtol=1e-10)
