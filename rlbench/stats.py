"""Statistics for the DRS-vs-MAML comparison, with the training seed as the unit of replication.

rliable style: small pure functions over arrays whose LAST axis is the seed axis
(``a: [..., n_a]``, ``b: [..., n_b]``), no global RNG, no hidden state. Tasks and episodes
are never treated as replicates (DESIGN.md principle 6): a seed's score in a cell is the mean
over its meta-test tasks (:func:`seed_scores`), and every test below runs over those seed
scores.

Three analyses, side by side in the report (:func:`compare_cells`; docs/protocol.md section 7):

* ``paired`` (the headline): the runner's design is blocked by seed (every algorithm of a seed
  starts from the same initial policy and is meta-tested on the same tasks, proven per run by
  :mod:`rlbench.pairing`), so the test runs on the per-seed differences: exactly
  ``scipy.stats.ttest_rel(a, b, alternative="greater")``, with its two-sided t interval, a
  percentile bootstrap interval over seeds (``scipy.stats.bootstrap``) and the fraction of
  seeds the first method wins;
* ``welch``: ``1 - p`` of the one-sided Welch t-test over seed means (exactly
  ``scipy.stats.ttest_ind(a, b, equal_var=False, alternative="greater")``) and its 95% CI;
  valid for unpaired runs, conservative on the blocked design (results/stats_calibration);
* ``paper`` (the authors' ``experiments/benchmark/summary.py``, "GS"):
  per-method spread ``sqrt(var(seed means, ddof 0) + mean(within-seed SE^2)) / sqrt(n)`` and a
  degrees-of-freedom formula with ``s^4 / (n (n - 1))`` denominator terms (the Welch df divided
  by n), reported as ``2 P - 1 = 2 F_nu(d / se) - 1`` in [-1, 1].

Each has Benjamini-Hochberg q-values over the grid; Hedges' g and A12 are common columns.
``1 - p`` is a monotone transform of a p-value, not a posterior probability that the first
method is better.

Degenerate cells (fewer than two seeds in a group, zero variance in both groups, NaN scores,
missing runs) are FLAGGED with a reason string and their probability is NaN; nothing is ever
silently filled with 0 (GS filled missing seeds with 0).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as sps

#: Keys of one evaluation cell; a seed score is one row per key.
CELL_KEYS = ("env_id", "algo", "seed", "budget_mark", "test_update")

#: Flag reasons (joined with ";" in the ``flags`` column). A flagged cell is excluded from the
#: Benjamini-Hochberg family and hatched in the figures.
FLAG_N_A = "n_a<2"
FLAG_N_B = "n_b<2"
FLAG_NAN = "nan_score"  # not "nan": CSV readers would parse that as a missing value
FLAG_ZERO_VAR = "zero_var"
FLAG_MISSING_A = "missing_runs_a"
FLAG_MISSING_B = "missing_runs_b"
FLAG_TASKS = "task_count_mismatch"
FLAG_PAIRS = "n_pairs<2"
FLAG_UNPAIRED = "unpaired"  # runs of the env are not proven paired (rlbench.pairing)


# --------------------------------------------------------------------------- seed scores


def seed_scores(df: pd.DataFrame, metric: str = "return") -> pd.DataFrame:
    """Per (env_id, algo, seed, budget_mark, test_update): the mean of ``metric`` over tasks.

    ``df`` is the long evaluation table (one row per checkpoint x test_update x task). Returns
    columns ``CELL_KEYS + [score, within_se, n_tasks, env_steps]`` where ``score`` is the task
    mean (NaN if any task's value is NaN: a NaN is a problem to flag, not a value to skip),
    ``within_se`` is the within-seed standard error ``std(tasks, ddof=0) / sqrt(n_tasks)``
    (ddof 0 as in GS's summary.py, which used ``np.std``; only the paper-compatible mode uses
    it) and ``env_steps`` the exact steps of that checkpoint (mean over rows; the runner
    writes one value per checkpoint).
    """
    missing = [c for c in (*CELL_KEYS, "task", metric) if c not in df.columns]
    if missing:
        raise KeyError(f"evaluation table lacks column(s) {missing}")
    keys = list(CELL_KEYS)
    work = df[[*keys, "task", metric] + (["env_steps"] if "env_steps" in df.columns else [])].copy()
    work[metric] = work[metric].astype(float)
    work["_nan"] = work[metric].isna()
    g = work.groupby(keys, sort=True)
    size = g.size()
    out = pd.DataFrame({
        # skipna then re-poison: a NaN task value makes the seed score NaN (flagged downstream)
        "score": g[metric].mean().where(~g["_nan"].any()),
        "within_se": (g[metric].std(ddof=0) / np.sqrt(size)).where(~g["_nan"].any()),
        "n_tasks": g["task"].nunique(),
    })
    out["env_steps"] = g["env_steps"].mean() if "env_steps" in work.columns else np.nan
    return out.reset_index()


def within_seed_se(values: np.ndarray | Iterable[float], design: str = "random") -> float:
    """Standard error of the mean over a seed's meta-test tasks, for its ``eval.task_design``.

    ``random``: ``std(ddof=1) / sqrt(n)``. ``stratified`` (one task per stratum, ``values`` in
    stratum order = task order; docs/protocol.md section 6.1): the variance of a stratified
    mean is ``sum_i sigma_i^2 / n^2``, where sigma_i^2 is the spread within stratum i. With one
    task per stratum it is estimated from second differences of neighbouring strata,
    ``sigma^2 = sum_i (y_{i-1} - 2 y_i + y_{i+1})^2 / (6 (n - 2))``, which cancels any linear
    trend of the stratum means (with equal spreads, E (y_{i-1} - 2 y_i + y_{i+1})^2 = 6 sigma^2;
    curvature across three strata only adds to it). Plain pairs of neighbours (the
    collapsed-strata estimator) would count the trend between them as noise, several times
    over when the task parameter explains most of the spread. Needs n >= 3 (NaN below)."""
    y = _as_float(values)
    n = y.size
    if design == "random":
        return float(np.std(y, ddof=1) / np.sqrt(n)) if n >= 2 else float("nan")
    if design != "stratified":
        raise ValueError(f"unknown task design {design!r} (random or stratified)")
    if n < 3:
        return float("nan")
    sigma2 = float(np.sum((y[:-2] - 2 * y[1:-1] + y[2:]) ** 2) / (6 * (n - 2)))
    return float(np.sqrt(sigma2 / n))


# --------------------------------------------------------------------------- Welch t-test


def _as_float(x: np.ndarray | Iterable[float]) -> np.ndarray:
    return np.asarray(x, dtype=float)


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n, mean, unbiased variance along the last axis (NaN where undefined, no warnings)."""
    n = np.full(x.shape[:-1], x.shape[-1], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = x.mean(axis=-1) if x.shape[-1] else np.full(x.shape[:-1], np.nan)
        var = x.var(axis=-1, ddof=1) if x.shape[-1] > 1 else np.full(x.shape[:-1], np.nan)
    return n, mean, var


def degeneracy_flags(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reasons a Welch comparison of ``a: [..., n_a]`` with ``b: [..., n_b]`` is undefined.

    Returns a string array of shape ``broadcast(a.shape[:-1], b.shape[:-1])``; ``""`` means the
    cell is fine, otherwise reasons joined by ``";"``: ``n_a<2``/``n_b<2`` (no variance
    estimate), ``nan_score`` (a NaN seed score), ``zero_var`` (every seed of both groups has exactly
    the same score, so the t statistic is 0/0 or +-inf rather than a probability).
    """
    a, b = _as_float(a), _as_float(b)
    shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    reasons: list[tuple[str, np.ndarray]] = []
    reasons.append((FLAG_N_A, np.full(shape, a.shape[-1] < 2)))
    reasons.append((FLAG_N_B, np.full(shape, b.shape[-1] < 2)))
    nan = np.broadcast_to(np.isnan(a).any(axis=-1), shape) | np.broadcast_to(np.isnan(b).any(axis=-1), shape)
    reasons.append((FLAG_NAN, nan))
    if a.shape[-1] >= 1 and b.shape[-1] >= 1:
        with np.errstate(invalid="ignore"):
            zero = np.broadcast_to(np.ptp(a, axis=-1) == 0, shape) & np.broadcast_to(np.ptp(b, axis=-1) == 0, shape)
        # only meaningful when both groups have a variance estimate (n >= 2); n < 2 is its own flag
        reasons.append((FLAG_ZERO_VAR, zero & ~nan & (a.shape[-1] >= 2) & (b.shape[-1] >= 2)))
    return _join_reasons(shape, reasons)


def _join_reasons(shape: tuple[int, ...], reasons: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Object array of ``shape``: the names whose mask is True at each position, joined by ";"."""
    out = np.full(shape, "", dtype=object)
    for name, mask in reasons:
        mask = np.broadcast_to(np.asarray(mask, dtype=bool), shape)
        added = np.where(out == "", name, out + ";" + name)
        out = np.where(mask, added, out).astype(object)
    return out


def welch(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Welch's unequal-variance t-test of ``a: [..., n_a]`` against ``b: [..., n_b]`` (seed axis last).

    Returns arrays over the leading (broadcast) shape: ``n_a, n_b, mean_a, mean_b, var_a, var_b``
    (ddof 1), ``diff = mean_a - mean_b``, ``se = sqrt(var_a/n_a + var_b/n_b)``, the
    Welch-Satterthwaite ``df``, ``t``, ``p`` (one-sided, H1: mean a > mean b), ``prob = 1 - p``
    and ``flags`` (:func:`degeneracy_flags`). ``t, p, prob`` are NaN in flagged cells.
    """
    a, b = _as_float(a), _as_float(b)
    flags = degeneracy_flags(a, b)
    shape = flags.shape
    n_a, m_a, v_a = (np.broadcast_to(x, shape) for x in _moments(a))
    n_b, m_b, v_b = (np.broadcast_to(x, shape) for x in _moments(b))
    bad = flags != ""
    with np.errstate(invalid="ignore", divide="ignore"):
        ea, eb = v_a / n_a, v_b / n_b
        se2 = ea + eb
        df = se2**2 / (ea**2 / (n_a - 1) + eb**2 / (n_b - 1))
        t = (m_a - m_b) / np.sqrt(se2)
    t = np.where(bad, np.nan, t)
    df = np.where(bad, np.nan, df)
    p = sps.t.sf(t, df)
    # 1 - p computed as the CDF (same number up to rounding, accurate when p is tiny)
    prob = sps.t.cdf(t, df)
    return {
        "n_a": np.asarray(n_a), "n_b": np.asarray(n_b), "mean_a": np.asarray(m_a), "mean_b": np.asarray(m_b),
        "var_a": np.asarray(v_a), "var_b": np.asarray(v_b), "diff": np.asarray(m_a - m_b),
        "se": np.sqrt(se2), "df": df, "t": t, "p": p, "prob": prob, "one_minus_p": prob, "flags": flags,
    }


def p_first_better(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(mean a > mean b) = 1 - p of the one-sided Welch t-test, over the seed (last) axis.

    a: [..., n_a], b: [..., n_b] seed scores -> [...]. Equals
    ``1 - scipy.stats.ttest_ind(a, b, axis=-1, equal_var=False, alternative="greater").pvalue``;
    NaN in degenerate cells (see :func:`degeneracy_flags` for the reasons).
    """
    return welch(a, b)["prob"]


def welch_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Welch CI of ``mean a - mean b``: ``diff +- t_{df, (1+level)/2} * se``. NaN if degenerate."""
    w = welch(a, b)
    half = sps.t.ppf(0.5 + level / 2.0, w["df"]) * w["se"]
    return w["diff"] - half, w["diff"] + half


def hedges_g(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hedges' g of ``a - b``: Cohen's d with the pooled SD, times the exact small-sample factor.

    ``J(m) = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2))`` with ``m = n_a + n_b - 2`` (Hedges 1981;
    the familiar ``1 - 3/(4m - 1)`` is its approximation). With 5 seeds per group the bias of
    Cohen's d is about 10%, which is why the correction matters here. NaN when the pooled SD is
    0 or undefined.
    """
    a, b = _as_float(a), _as_float(b)
    n_a, m_a, v_a = _moments(a)
    n_b, m_b, v_b = _moments(b)
    m = n_a + n_b - 2
    with np.errstate(invalid="ignore", divide="ignore"):
        sp = np.sqrt(((n_a - 1) * v_a + (n_b - 1) * v_b) / m)
        d = (m_a - m_b) / sp
        j = np.exp(special.gammaln(m / 2) - special.gammaln((m - 1) / 2)) / np.sqrt(m / 2)
        g = j * d
    # needs a variance estimate from both groups, like every other statistic here
    ok = np.isfinite(g) & (n_a >= 2) & (n_b >= 2)
    return np.where(ok, g, np.nan)


def a12(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Vargha-Delaney A12: P(a random seed of ``a`` beats a random seed of ``b``), ties count 1/2.

    a: [..., n_a], b: [..., n_b] -> [...]; NaN if a group is empty or holds a NaN.
    """
    a, b = _as_float(a), _as_float(b)
    if a.shape[-1] == 0 or b.shape[-1] == 0:
        return np.full(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]), np.nan)
    x, y = a[..., :, None], b[..., None, :]
    wins = (x > y).astype(float) + 0.5 * (x == y)
    out = wins.mean(axis=(-2, -1))
    nan = np.isnan(a).any(axis=-1) | np.isnan(b).any(axis=-1)
    return np.where(nan, np.nan, out)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values; NaN entries (flagged cells) are left out of the family.

    ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the m non-NaN p-values sorted ascending;
    same shape as ``p``, NaN where ``p`` is NaN.
    """
    p = _as_float(p)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    vals = p[ok]
    m = vals.size
    if m == 0:
        return q
    order = np.argsort(vals, kind="stable")
    ranked = vals[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


# --------------------------------------------------------------------------- paper-compatible mode


def gs_spread(means: np.ndarray, within_se: np.ndarray) -> np.ndarray:
    """GS per-method spread ``s = sqrt(var(means, ddof 0) + mean(within_se^2))`` over the seed axis.

    GS's standard error of the method mean is ``s / sqrt(n)``; GS then fed ``s`` to its Welch
    formula as if it were a sample standard deviation.
    """
    means, within_se = _as_float(means), _as_float(within_se)
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.var(means, axis=-1, ddof=0) + np.mean(within_se**2, axis=-1))


def paper_compat(
    means_a: np.ndarray, se_a: np.ndarray, means_b: np.ndarray, se_b: np.ndarray
) -> dict[str, np.ndarray]:
    """GS's statistic (docs/protocol.md section 7): ``value = 2 F_nu(d / se) - 1`` in [-1, 1].

    means_*: [..., n] seed means, se_*: [..., n] within-seed standard errors (same shape).
    ``s_i = gs_spread(...)``, ``se = sqrt(s_a^2/n_a + s_b^2/n_b)``, ``d = mean_a - mean_b`` and
    ``nu = se^4 / (s_a^4/(n_a (n_a-1)) + s_b^4/(n_b (n_b-1)))`` (Welch's df divided by n when
    n_a = n_b = n). GS wrote the same number as ``sign(d) (1 - 2 * 0.5 I_{nu/(t^2+nu)}(nu/2, 1/2))``.
    Returns ``prob = F_nu(d/se)``, ``value = 2 prob - 1``, ``se``, ``df``, ``flags`` (``n_a<2``,
    ``n_b<2``, ``nan_score``, ``zero_var`` when both spreads are 0); prob/value NaN in flagged cells.
    """
    with warnings.catch_warnings():  # empty groups: NaN results, flagged below
        warnings.simplefilter("ignore", RuntimeWarning)
        return _paper_compat(*map(_as_float, (means_a, se_a, means_b, se_b)))


def _paper_compat(means_a: np.ndarray, se_a: np.ndarray, means_b: np.ndarray, se_b: np.ndarray) -> dict:
    shape = np.broadcast_shapes(means_a.shape[:-1], means_b.shape[:-1])
    n_a, n_b = float(means_a.shape[-1]), float(means_b.shape[-1])
    s_a, s_b = gs_spread(means_a, se_a), gs_spread(means_b, se_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.mean(means_a, axis=-1) - np.mean(means_b, axis=-1) if n_a and n_b else np.full(shape, np.nan)
        se2 = s_a**2 / n_a + s_b**2 / n_b
        nu = se2**2 / (s_a**4 / (n_a * (n_a - 1)) + s_b**4 / (n_b * (n_b - 1)))
        z = d / np.sqrt(se2)
    nan = (np.isnan(means_a).any(-1) | np.isnan(se_a).any(-1)) | (np.isnan(means_b).any(-1) | np.isnan(se_b).any(-1))
    nan = np.broadcast_to(nan, shape)
    zero = np.broadcast_to((s_a == 0) & (s_b == 0), shape) & ~nan
    flags = _join_reasons(shape, [
        (FLAG_N_A, np.full(shape, n_a < 2)), (FLAG_N_B, np.full(shape, n_b < 2)),
        (FLAG_NAN, nan), (FLAG_ZERO_VAR, zero),
    ])
    bad = flags != ""
    prob = np.where(bad, np.nan, sps.t.cdf(np.where(bad, 0.0, z), np.where(bad, 1.0, nu)))
    return {"prob": prob, "value": 2.0 * prob - 1.0, "se": np.sqrt(se2), "df": np.where(bad, np.nan, nu),
            "flags": flags}


# --------------------------------------------------------------------------- paired (seed-blocked) test


def paired_flags(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reasons a paired comparison of ``a: [..., n]`` with ``b: [..., n]`` (seed-aligned) is undefined.

    ``n_pairs<2`` (no variance estimate), ``nan_score`` (a NaN seed score), ``zero_var`` (every
    paired difference is the same, e.g. the shared initial policy before any update: the t
    statistic is 0/0 or +-inf, not a probability). ``""`` means the cell is fine.
    """
    a, b = _as_float(a), _as_float(b)
    d = a - b
    shape = d.shape[:-1]
    nan = np.isnan(d).any(axis=-1)
    with np.errstate(invalid="ignore"):
        zero = (np.ptp(d, axis=-1) == 0) if d.shape[-1] else np.zeros(shape, bool)
    return _join_reasons(shape, [(FLAG_PAIRS, np.full(shape, d.shape[-1] < 2)), (FLAG_NAN, nan),
                                 (FLAG_ZERO_VAR, zero & ~nan & (d.shape[-1] >= 2))])


def paired(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """Paired t-test of ``a`` against ``b`` over seed-aligned last axes (``a[..., i]`` and ``b[..., i]``: seed i).

    The seed is the block: the test runs on ``d = a - b``. Returns arrays over the leading
    shape: ``n`` (pairs), ``diff = mean(d)``, ``sd = std(d, ddof 1)``, ``t``, ``df = n - 1``,
    ``p`` (one-sided, H1: mean d > 0; exactly ``scipy.stats.ttest_rel(a, b, alternative="greater")``),
    ``one_minus_p`` (the t CDF, accurate when p is tiny), the two-sided ``level`` t interval
    ``ci_low, ci_high`` (scipy's ``confidence_interval``), ``win_frac`` (fraction of seeds with
    d > 0, ties count 1/2) and ``flags`` (:func:`paired_flags`); t, p, CI NaN in flagged cells.
    """
    a, b = np.broadcast_arrays(_as_float(a), _as_float(b))
    flags = paired_flags(a, b)
    bad = flags != ""
    d = a - b
    n = d.shape[-1]
    with warnings.catch_warnings():  # degenerate cells: NaN/inf from scipy, masked below
        warnings.simplefilter("ignore", RuntimeWarning)
        diff = d.mean(axis=-1) if n else np.full(flags.shape, np.nan)
        sd = d.std(axis=-1, ddof=1) if n > 1 else np.full(flags.shape, np.nan)
        if n >= 2:
            res = sps.ttest_rel(a, b, axis=-1, alternative="two-sided")
            t = np.asarray(res.statistic, dtype=float)
            ci = res.confidence_interval(level)
            lo, hi = np.asarray(ci.low, dtype=float), np.asarray(ci.high, dtype=float)
        else:
            t = lo = hi = np.full(flags.shape, np.nan)
    df = np.full(flags.shape, float(n - 1))
    t, lo, hi, df = (np.where(bad, np.nan, x) for x in (t, lo, hi, df))
    win = ((d > 0) + 0.5 * (d == 0)).mean(axis=-1) if n else np.full(flags.shape, np.nan)
    win = np.where(np.isnan(d).any(axis=-1) if n else True, np.nan, win)
    return {"n": np.full(flags.shape, n), "diff": np.asarray(diff), "sd": np.asarray(sd), "t": t, "df": df,
            "p": sps.t.sf(t, df), "one_minus_p": sps.t.cdf(t, df), "ci_low": lo, "ci_high": hi,
            "win_frac": np.asarray(win), "flags": flags}


def bootstrap_ci(d: np.ndarray, level: float = 0.95, n_resamples: int = 9999,
                 rng: np.random.Generator | int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of ``mean(d)`` over the seed (last) axis, ``scipy.stats.bootstrap``.

    Seeds are resampled with replacement. NaN where there are fewer than two seeds or a NaN.
    With n seeds there are only C(2n-1, n) distinct resamples (10 for n = 3), so the interval
    is coarse and too narrow for small n (see results/stats_calibration for its coverage); the
    t interval of :func:`paired` is the calibrated one.
    """
    d = _as_float(d)
    shape = d.shape[:-1]
    if d.shape[-1] < 2:
        return np.full(shape, np.nan), np.full(shape, np.nan)
    nan = np.isnan(d).any(axis=-1)
    with warnings.catch_warnings():  # constant data: scipy warns and returns the constant
        warnings.simplefilter("ignore")
        batch = max(1, min(n_resamples, 4_000_000 // max(1, d.size)))  # bounds memory for large batches of cells
        res = sps.bootstrap((np.where(nan[..., None], 0.0, d),), np.mean, n_resamples=n_resamples,
                            confidence_level=level, method="percentile", axis=-1, vectorized=True,
                            batch=batch, rng=np.random.default_rng(rng))
    lo, hi = np.asarray(res.confidence_interval.low, float), np.asarray(res.confidence_interval.high, float)
    return np.where(nan, np.nan, lo), np.where(nan, np.nan, hi)


# --------------------------------------------------------------------------- per-cell report

#: The analyses of the report (column prefixes); ``paired`` is the headline.
ANALYSES = ("paired", "welch", "paper")
#: Significance level of the figures' hatching and the summary verdicts (BH q-value threshold).
Q_LEVEL = 0.05

#: Columns of the per-cell report, in order (see :func:`compare_cells`).
REPORT_COLUMNS = [
    "env_id", "budget_mark", "test_update", "algo_a", "algo_b", "metric",
    "n_a", "n_b", "mean_a", "mean_b", "diff", "hedges_g", "a12", "env_steps_a", "env_steps_b",
    "paired_n", "paired_diff", "paired_sd", "paired_ci_low", "paired_ci_high", "paired_boot_low",
    "paired_boot_high", "paired_p", "paired_one_minus_p", "paired_q", "paired_win_frac", "paired_flags",
    "welch_ci_low", "welch_ci_high", "welch_p", "welch_one_minus_p", "welch_q", "welch_flags",
    "paper_value", "paper_one_minus_p", "paper_p", "paper_q", "paper_flags",
    "prob", "allowed_differences",
]
#: Columns holding flag strings (read back as "" rather than NaN).
FLAG_COLUMNS = tuple(f"{a}_flags" for a in ANALYSES)


def compare_cells(scores: pd.DataFrame, algo_a: str, algo_b: str, metric: str = "return", *,
                  unpaired: Mapping[str, str] | None = None, allowed_differences: str = "",
                  n_boot: int = 9999) -> pd.DataFrame:
    """Per-cell report of ``algo_a`` (DRS) against ``algo_b`` (MAML) from :func:`seed_scores` output.

    One row per (env_id, budget_mark, test_update) present for either algorithm, with three
    analyses side by side (:data:`REPORT_COLUMNS`, prefixes :data:`ANALYSES`):

    * ``paired_*`` (the headline): seed as the block, over the seeds both algorithms have in
      the cell: mean paired difference, its SD, the two-sided 95% t interval, the 95%
      percentile bootstrap interval over seeds, the one-sided paired ``p`` (H1: a better),
      ``one_minus_p = 1 - p``, BH ``q``, the fraction of seeds a wins, and flags.
      ``unpaired`` maps env ids whose runs are not proven paired (see :mod:`rlbench.pairing`)
      to the reason: their paired columns are NaN, flagged ``unpaired``.
    * ``welch_*``: Welch's unpaired t-test over seed means (95% CI, one-sided p, 1 - p, q).
    * ``paper_*``: the authors' statistic (:func:`paper_compat`): ``paper_one_minus_p`` is GS's
      ``F_nu(d/se)``, ``paper_value = 2 F - 1`` (what their figures show), ``paper_p = 1 - F``.

    ``1 - p`` is a monotone transform of a p-value, NOT a posterior probability that a is
    better. ``prob`` is a deprecated alias of ``welch_one_minus_p`` (the old report's column),
    kept for one release. Common columns: seed counts, group means, ``diff = mean_a - mean_b``,
    Hedges' g, A12, env steps. q-values: Benjamini-Hochberg over the cells of each env, per
    analysis, leaving out cells flagged in that analysis. Data problems flag every analysis:
    ``missing_runs_a/b`` (a seed the algorithm has elsewhere in the env is missing in the
    cell), ``task_count_mismatch``.
    """
    unpaired = dict(unpaired or {})
    sub = scores[scores["algo"].isin([algo_a, algo_b])]
    rows: list[dict] = []
    for env_id, env_df in sub.groupby("env_id", sort=True):
        seeds_all = {alg: set(env_df.loc[env_df["algo"] == alg, "seed"]) for alg in (algo_a, algo_b)}
        cells = env_df[["budget_mark", "test_update"]].drop_duplicates().sort_values(["budget_mark", "test_update"])
        by_cell = {k: g for k, g in env_df.groupby(["budget_mark", "test_update"])}
        env_rows = []
        for mark, upd in cells.itertuples(index=False):
            g = by_cell[(mark, upd)]
            ga, gb = g[g["algo"] == algo_a].sort_values("seed"), g[g["algo"] == algo_b].sort_values("seed")
            xa, xb = ga["score"].to_numpy(float), gb["score"].to_numpy(float)
            w = welch(xa, xb)
            lo, hi = welch_ci(xa, xb)
            gs = paper_compat(xa, ga["within_se"].to_numpy(float), xb, gb["within_se"].to_numpy(float))
            both = sorted(set(ga["seed"]) & set(gb["seed"]))
            pa = ga.set_index("seed").loc[both, "score"].to_numpy(float)
            pb = gb.set_index("seed").loc[both, "score"].to_numpy(float)
            pr = paired(pa, pb)
            blo, bhi = bootstrap_ci(pa - pb, n_resamples=n_boot, rng=0)
            data = []  # data problems of the cell: they flag every analysis alike
            if set(ga["seed"]) != seeds_all[algo_a] or not seeds_all[algo_a]:
                data.append(FLAG_MISSING_A)
            if set(gb["seed"]) != seeds_all[algo_b] or not seeds_all[algo_b]:
                data.append(FLAG_MISSING_B)
            if g["n_tasks"].nunique() > 1:
                data.append(FLAG_TASKS)

            p_flags = _flags_text(pr, [FLAG_UNPAIRED] if env_id in unpaired else [], data)
            pv = {k: (np.nan if env_id in unpaired else float(pr[k]))
                  for k in ("diff", "sd", "ci_low", "ci_high", "p", "one_minus_p", "win_frac")}
            if env_id in unpaired:
                blo = bhi = np.nan
            env_rows.append({
                "env_id": env_id, "budget_mark": int(mark), "test_update": int(upd),
                "algo_a": algo_a, "algo_b": algo_b, "metric": metric,
                "n_a": len(xa), "n_b": len(xb), "mean_a": float(w["mean_a"]), "mean_b": float(w["mean_b"]),
                "diff": float(w["diff"]), "hedges_g": float(hedges_g(xa, xb)), "a12": float(a12(xa, xb)),
                "env_steps_a": float(ga["env_steps"].mean()) if len(ga) else np.nan,
                "env_steps_b": float(gb["env_steps"].mean()) if len(gb) else np.nan,
                "paired_n": len(both), "paired_diff": pv["diff"], "paired_sd": pv["sd"],
                "paired_ci_low": pv["ci_low"], "paired_ci_high": pv["ci_high"],
                "paired_boot_low": float(blo), "paired_boot_high": float(bhi), "paired_p": pv["p"],
                "paired_one_minus_p": pv["one_minus_p"], "paired_q": np.nan, "paired_win_frac": pv["win_frac"],
                "paired_flags": p_flags,
                "welch_ci_low": float(lo), "welch_ci_high": float(hi), "welch_p": float(w["p"]),
                "welch_one_minus_p": float(w["prob"]), "welch_q": np.nan, "welch_flags": _flags_text(w, [], data),
                "paper_value": float(gs["value"]), "paper_one_minus_p": float(gs["prob"]),
                "paper_p": float(1.0 - gs["prob"]), "paper_q": np.nan, "paper_flags": _flags_text(gs, [], data),
                "prob": float(w["prob"]), "allowed_differences": allowed_differences,
            })
        for analysis in ANALYSES:
            p = np.array([r[f"{analysis}_p"] if not r[f"{analysis}_flags"] else np.nan for r in env_rows])
            for r, q in zip(env_rows, bh_qvalues(p)):
                r[f"{analysis}_q"] = float(q)
        rows.extend(env_rows)
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def _flags_text(result: dict, extra: Iterable[str], data: Iterable[str]) -> str:
    """A test's flags (``result["flags"]``, one cell) plus ``extra`` and the cell's data flags, joined by ";"."""
    return ";".join([f for f in str(result["flags"].item()).split(";") if f] + list(extra) + list(data))


def check_analysis(analysis: str) -> str:
    """``analysis`` if it is one of :data:`ANALYSES`, else UsageError naming the choices."""
    from rlbench.errors import UsageError

    if analysis not in ANALYSES:
        raise UsageError(f"unknown analysis {analysis!r}; choose one of {', '.join(ANALYSES)}")
    return analysis


def significant(report: pd.DataFrame, analysis: str, q_level: float = Q_LEVEL) -> pd.Series:
    """Bool per report row: the cell's BH q-value in ``analysis`` is below ``q_level`` (flagged cells: False)."""
    check_analysis(analysis)
    q = report[f"{analysis}_q"].astype(float)
    return (q < q_level) & (report[f"{analysis}_flags"].fillna("") == "")


def read_report(path: Path | str) -> pd.DataFrame:
    """Read a report CSV written from :func:`compare_cells` output (empty flags stay ``""``, not NaN)."""
    report = pd.read_csv(path, dtype={c: str for c in (*FLAG_COLUMNS, "allowed_differences")})
    for col in (*FLAG_COLUMNS, "allowed_differences"):
        if col in report.columns:
            report[col] = report[col].fillna("")
    return report


def grid(report: pd.DataFrame, env_id: str, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(budget_marks [C], test_updates [U], values [C, U]) of one report column for one env.

    Cells absent from the report are NaN (a string column gives ``""`` there).
    """
    r = report[report["env_id"] == env_id]
    marks = np.array(sorted(r["budget_mark"].unique()), dtype=np.int64)
    upds = np.array(sorted(r["test_update"].unique()), dtype=np.int64)
    piv = r.pivot(index="budget_mark", columns="test_update", values=column).reindex(index=marks, columns=upds)
    vals = piv.to_numpy()
    if vals.dtype == object:
        vals = np.where(pd.isna(vals), "", vals).astype(object)
    else:
        vals = vals.astype(float)
    return marks, upds, vals
