"""Calibration of the report's analyses on synthetic studies with a known truth.

A simulated study has ``n_seeds`` seeds, each meta-tested on ``n_tasks`` tasks in
``n_cells`` cells (checkpoint x test update), for two algorithms a and b. The score of
algorithm g on task k of seed i in cell c is

``x[g, i, k, c] = mu_g + s[i] + tau[i, k] + r[g, i, c] + eps[g, i, k, c]``

* ``s[i] ~ N(0, sd_seed)``: the seed's effect (its initial policy), the same in every cell;
* ``tau[i, k] ~ N(0, sd_task)``: how hard the seed's k-th meta-test task is, the same in every cell;
* ``r[g, i, c] ~ N(0, sd_run)``: algorithm g's own training run (its noise at that checkpoint);
* ``eps ~ N(0, sd_eps)``: evaluation noise of the task's episode mean.

In the ``blocked`` design (what the runner does) both algorithms of a seed share ``s`` and
``tau``; in the ``independent`` design each algorithm draws its own (different seeds, as if
the runs were not paired). A seed score is the mean over tasks, the within-seed SE is
``std(tasks, ddof 0) / sqrt(n_tasks)`` (:func:`rlbench.stats.seed_scores`). Under the null
``mu_a = mu_b``; under the alternative ``mu_a - mu_b = effect``.

The default spreads are on the scale of the ``quick`` preset's HalfCheetahRandVel returns
(seed means spread by about 100 between seeds while the two algorithms of a seed differ by
tens): sd_seed 100, sd_task 60, sd_run 10, sd_eps 15 with 10 tasks.

Measured per analysis: the rejection rate of the one-sided test at ``alpha`` (the false
positive rate under the null, the power under the effect), the coverage of the 95% intervals
(paired t, paired percentile bootstrap, Welch), and under the complete null the rate of
studies in which any cell of the grid has BH q < alpha.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from rlbench import stats


@dataclass(frozen=True)
class Spreads:
    """Standard deviations of the generative model (module docstring)."""

    sd_seed: float = 100.0
    sd_task: float = 60.0
    sd_run: float = 10.0
    sd_eps: float = 15.0
    n_tasks: int = 10

    @property
    def sd_paired(self) -> float:
        """SD of the paired difference of seed scores in the blocked design."""
        return float(np.sqrt(2 * (self.sd_run**2 + self.sd_eps**2 / self.n_tasks)))


def simulate(rng: np.random.Generator, n_sims: int, n_seeds: int, n_cells: int, effect: float, spreads: Spreads,
             blocked: bool = True) -> dict[str, np.ndarray]:
    """Seed scores ``a, b`` and within-seed SEs ``se_a, se_b`` of shape ``[n_sims, n_cells, n_seeds]``."""
    sp = spreads
    T = sp.n_tasks
    shape_seed = (n_sims, 1, n_seeds, 1)
    shape_task = (n_sims, 1, n_seeds, T)

    def shared():
        return rng.normal(0, sp.sd_seed, shape_seed) + rng.normal(0, sp.sd_task, shape_task)

    base_a = shared()
    base_b = base_a if blocked else shared()
    out = {}
    for g, base, mu in (("a", base_a, effect), ("b", base_b, 0.0)):
        x = (mu + base + rng.normal(0, sp.sd_run, (n_sims, n_cells, n_seeds, 1))
             + rng.normal(0, sp.sd_eps, (n_sims, n_cells, n_seeds, T)))
        out[g] = x.mean(axis=-1)
        out[f"se_{g}"] = x.std(axis=-1, ddof=0) / np.sqrt(T)
    return out


def analyse(sim: dict[str, np.ndarray], effect: float, alpha: float = 0.05, n_boot: int = 999,
            boot_rng: int = 0) -> dict[str, np.ndarray]:
    """Per simulated cell: rejections and CI coverage of each analysis (bool arrays ``[n_sims, n_cells]``)."""
    a, b = sim["a"], sim["b"]
    pr = stats.paired(a, b)
    w = stats.welch(a, b)
    wlo, whi = stats.welch_ci(a, b)
    gs = stats.paper_compat(a, sim["se_a"], b, sim["se_b"])
    blo, bhi = stats.bootstrap_ci(a - b, n_resamples=n_boot, rng=boot_rng)
    p = {"paired": pr["p"], "welch": w["p"], "paper": 1.0 - gs["prob"]}
    out = {f"reject_{k}": v < alpha for k, v in p.items()}
    out["cover_paired_t"] = (pr["ci_low"] <= effect) & (effect <= pr["ci_high"])
    out["cover_paired_bootstrap"] = (blo <= effect) & (effect <= bhi)
    out["cover_welch"] = (wlo <= effect) & (effect <= whi)
    for k, v in p.items():  # any BH discovery in the grid of each study
        q = np.apply_along_axis(stats.bh_qvalues, 1, v)
        out[f"any_bh_{k}"] = (q < alpha).any(axis=1)
    return out


def run(n_sims: int = 2000, seeds: tuple[int, ...] = (3, 5, 10), effect: float = 20.0, n_cells: int = 1,
        spreads: Spreads = Spreads(), alpha: float = 0.05, rng_seed: int = 0, chunk: int = 500, n_boot: int = 999,
        progress_bar: bool = False) -> pd.DataFrame:
    """The calibration table: one row per (design, truth, n_seeds, quantity, analysis).

    Columns ``design`` (blocked / independent), ``truth`` (null / effect), ``effect``,
    ``n_seeds``, ``quantity`` (``rejection_rate``: FPR under the null, power under the effect;
    ``ci_coverage``; ``any_bh_discovery``: studies with a BH discovery in the grid), ``analysis``,
    ``value``, ``mc_se`` (binomial Monte Carlo SE; for per-cell rates with ``n_cells > 1`` the
    cells of a study are correlated in the Welch and paper analyses, so treat it as a lower
    bound there), ``n`` (simulated cells or studies).
    """
    from rlbench.progress import progress

    rng = np.random.default_rng(rng_seed)
    rows = []
    plan = [(design, truth, n) for design in ("blocked", "independent") for truth in ("null", "effect") for n in seeds]
    bar = progress(total=len(plan) * n_sims, desc="calibration", unit="study", disable=not progress_bar)
    for design, truth, n in plan:
        delta = 0.0 if truth == "null" else effect
        acc: dict[str, list[np.ndarray]] = {}
        done = 0
        while done < n_sims:
            m = min(chunk, n_sims - done)
            sim = simulate(rng, m, n, n_cells, delta, spreads, blocked=design == "blocked")
            for k, v in analyse(sim, delta, alpha, n_boot, boot_rng=int(rng.integers(2**31))).items():
                acc.setdefault(k, []).append(np.asarray(v).ravel())
            done += m
            bar.update(m)
        for k, parts in acc.items():
            v = np.concatenate(parts).astype(float)
            quantity, analysis = ("rejection_rate", k[len("reject_"):]) if k.startswith("reject_") else \
                ("ci_coverage", k[len("cover_"):]) if k.startswith("cover_") else ("any_bh_discovery", k[len("any_bh_"):])
            if quantity == "any_bh_discovery" and (truth != "null" or n_cells == 1):
                continue
            mean = float(v.mean())
            rows.append({"design": design, "truth": truth, "effect": delta, "n_seeds": n, "quantity": quantity,
                         "analysis": analysis, "value": mean, "mc_se": float(np.sqrt(mean * (1 - mean) / v.size)),
                         "n": int(v.size)})
    bar.close()
    return pd.DataFrame(rows)


def settings(n_sims: int, seeds: tuple[int, ...], effect: float, n_cells: int, spreads: Spreads, alpha: float,
             rng_seed: int, n_boot: int) -> dict:
    """JSON-able record of a calibration run's settings."""
    return {"n_sims": n_sims, "seeds": list(seeds), "effect": effect, "n_cells": n_cells, "alpha": alpha,
            "rng_seed": rng_seed, "n_boot": n_boot, "spreads": asdict(spreads),
            "sd_paired_difference": spreads.sd_paired}
