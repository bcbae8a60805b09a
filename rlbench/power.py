"""Seeds needed for a given power: paired and Welch one-sided t-tests (noncentral t, scipy).

``rlbench compare RESULTS_DIR --power`` reads pilot runs and prints, per environment and
pair, the number of seeds (per algorithm) for which the one-sided test at level ``alpha``
detects the observed (or a given) difference with probability ``power``, assuming the pilot's
standard deviations are the true ones (a pilot of 3 seeds estimates them roughly; treat the
answer as an order of magnitude).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
from scipy import stats as sps

#: Largest seed count searched; beyond it the answer is reported as "> N_MAX".
N_MAX = 1000


def power_paired(n: int, delta: float, sd_diff: float, alpha: float = 0.05) -> float:
    """Power of the one-sided paired t-test with ``n`` seeds: ``P(T > t_{1-alpha, n-1})``, T ~ nct(n-1, delta sqrt(n)/sd)."""
    if n < 2 or not sd_diff > 0:
        return float("nan")
    df = n - 1
    return float(sps.nct.sf(sps.t.ppf(1 - alpha, df), df, delta * np.sqrt(n) / sd_diff))


def welch_df(n: int, sd_a: float, sd_b: float) -> float:
    """Welch-Satterthwaite degrees of freedom with ``n`` seeds per group."""
    va, vb = sd_a**2 / n, sd_b**2 / n
    return (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1))


def power_welch(n: int, delta: float, sd_a: float, sd_b: float, alpha: float = 0.05) -> float:
    """Power of the one-sided Welch test with ``n`` seeds per algorithm (noncentral t with the Welch df)."""
    if n < 2 or not (sd_a**2 + sd_b**2) > 0:
        return float("nan")
    df = welch_df(n, sd_a, sd_b)
    return float(sps.nct.sf(sps.t.ppf(1 - alpha, df), df, delta / np.sqrt((sd_a**2 + sd_b**2) / n)))


def seeds_needed(power_fn, target: float = 0.8, n_max: int = N_MAX) -> int | None:
    """Smallest n in 2..n_max with ``power_fn(n) >= target`` (power increases with n); None if none."""
    lo_ok = power_fn(2)
    if not np.isfinite(lo_ok):
        return None
    if lo_ok >= target:
        return 2
    if power_fn(n_max) < target:
        return None
    lo, hi = 2, n_max  # power(lo) < target <= power(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if power_fn(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def power_table(report: pd.DataFrame, scores: pd.DataFrame, effect: float | None = None, target: float = 0.8,
                alpha: float = 0.05, test_updates: tuple[int, ...] | None = None) -> pd.DataFrame:
    """Per (env, pair) at the final checkpoint: seeds needed for ``target`` power, paired and Welch.

    ``report``: :func:`rlbench.stats.compare_cells` output of ONE pair; ``scores``: the seed
    scores it came from. ``effect``: the difference to detect (default: the observed
    ``|mean_a - mean_b|``; the test is one-sided in the observed direction). ``test_updates``:
    which test updates to show at the final checkpoint (default: 1 and the last). Columns:
    ``env_id, algo_a, algo_b, budget_mark, test_update, n_pilot, diff, effect, sd_diff, sd_a,
    sd_b, seeds_paired, seeds_welch, note``; a seed count is NaN where it cannot be computed
    (``note`` says why) or exceeds :data:`N_MAX`.
    """
    rows: list[dict] = []
    if report.empty:
        return pd.DataFrame(rows)
    a, b = report["algo_a"].iloc[0], report["algo_b"].iloc[0]
    for env_id, r in report.groupby("env_id", sort=True):
        last = r["budget_mark"].max()
        ups = sorted(r["test_update"].unique())
        want = test_updates if test_updates is not None else tuple(sorted({min(1, ups[-1]), ups[-1]}))
        for u in want:
            cell = r[(r["budget_mark"] == last) & (r["test_update"] == u)]
            if cell.empty:
                continue
            c = cell.iloc[0]
            s = scores[(scores["env_id"] == env_id) & (scores["budget_mark"] == last) & (scores["test_update"] == u)]
            xa = s[s["algo"] == a].set_index("seed")["score"]
            xb = s[s["algo"] == b].set_index("seed")["score"]
            sd_a = float(xa.std(ddof=1)) if len(xa) > 1 else np.nan
            sd_b = float(xb.std(ddof=1)) if len(xb) > 1 else np.nan
            diff = float(c["diff"])
            eff = abs(diff) if effect is None else float(effect)
            notes = []
            unpaired = "unpaired" in str(c["paired_flags"])
            sd_diff = np.nan if unpaired else float(c["paired_sd"])
            if unpaired:
                notes.append("runs not proven paired: no paired answer")
            if not eff > 0:
                notes.append("zero effect")
            n_p = n_w = None
            if eff > 0:
                n_p = seeds_needed(partial(power_paired, delta=eff, sd_diff=sd_diff, alpha=alpha), target)
                n_w = seeds_needed(partial(power_welch, delta=eff, sd_a=sd_a, sd_b=sd_b, alpha=alpha), target)
            if eff > 0 and n_w is None and np.isfinite(sd_a) and np.isfinite(sd_b):
                notes.append(f"Welch > {N_MAX}")
            if eff > 0 and n_p is None and np.isfinite(sd_diff) and sd_diff > 0:
                notes.append(f"paired > {N_MAX}")
            rows.append({"env_id": env_id, "algo_a": a, "algo_b": b, "budget_mark": int(last), "test_update": int(u),
                         "n_pilot": int(min(len(xa), len(xb))), "diff": diff, "effect": eff, "sd_diff": sd_diff,
                         "sd_a": sd_a, "sd_b": sd_b, "seeds_paired": np.nan if n_p is None else n_p,
                         "seeds_welch": np.nan if n_w is None else n_w, "note": "; ".join(notes)})
    return pd.DataFrame(rows)
