"""Aggregate across environments in the style of rliable (Agarwal et al., NeurIPS 2021).

rliable's layout: a score matrix ``[n_runs, n_tasks]`` per algorithm. Here a "run" is a
training seed and a "task" is an ENVIRONMENT (the meta-test tasks of a seed are averaged into
the seed score first, :func:`rlbench.stats.seed_scores`, so the seed stays the unit of
replication). Environments have different return scales, so scores are normalised per
environment before aggregation:

``normalised = (score - R_init) / (R_best - R_init)``

* ``R_init``: the mean seed score of the initial policy (checkpoint 0, test update 0) over
  every seed and both algorithms of the pair: 0 means "no better than the random initial
  policy" (the analogue of rliable's random-agent score);
* ``R_best``: the best cell mean (over seeds) that either algorithm of the pair reaches in
  that environment at any checkpoint and test update: 1 means "as good as the best method's
  best average in this study" (a study-internal reference; there is no human score here).

For the ``success`` metric the rate is already on [0, 1] and is used as it is.

Statistics, per pair and cell (checkpoint index k = 0..K-1 counted within each environment,
test update u): the interquartile mean (IQM: the mean of the middle 50% of all
seed x environment scores, ``scipy.stats.trim_mean(x, 0.25)`` on the flattened matrix, as
rliable's ``aggregate_iqm``) with a stratified percentile bootstrap CI (seeds resampled with
replacement within each environment, as rliable's ``StratifiedBootstrap``), and the
probability of improvement ``P(a > b)``: the mean over environments of the Mann-Whitney
``U / (n_a n_b)`` between the two algorithms' seed scores (ties count 1/2; rliable's
``probability_of_improvement``), with a CI from resampling each algorithm's seeds
independently within each environment (rliable's ``StratifiedIndependentBootstrap``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

#: Columns of the aggregate table (see :func:`aggregate_table`).
AGGREGATE_COLUMNS = [
    "algo_a", "algo_b", "metric", "checkpoint", "test_update", "n_envs", "n_seeds_a", "n_seeds_b",
    "iqm_a", "iqm_a_low", "iqm_a_high", "iqm_b", "iqm_b_low", "iqm_b_high", "poi", "poi_low", "poi_high", "flags",
]


def with_checkpoint_index(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` plus a ``checkpoint`` column: the rank (0..K-1) of ``budget_mark`` within its environment."""
    out = scores.copy()
    out["checkpoint"] = out.groupby("env_id")["budget_mark"].rank(method="dense").astype(int) - 1
    return out


def normalisation(scores: pd.DataFrame, algos: Sequence[str], metric: str) -> pd.DataFrame:
    """Per environment: ``r_init``, ``r_best`` (module docstring) from seed scores of ``algos``.

    Columns ``env_id, r_init, r_best, ok``; ``ok`` is False (the environment is left out of the
    aggregate) when ``r_best <= r_init`` (nothing improved on the initial policy) or a value is
    NaN. For ``success``: r_init 0, r_best 1.
    """
    rows = []
    sub = scores[scores["algo"].isin(algos)]
    for env_id, g in sub.groupby("env_id", sort=True):
        if metric == "success":
            rows.append((env_id, 0.0, 1.0, True))
            continue
        first = g[(g["budget_mark"] == g["budget_mark"].min()) & (g["test_update"] == 0)]
        r_init = float(first["score"].mean())
        cell_means = g.groupby(["algo", "budget_mark", "test_update"])["score"].mean()
        r_best = float(cell_means.max())
        rows.append((env_id, r_init, r_best, bool(np.isfinite(r_init) and np.isfinite(r_best) and r_best > r_init)))
    return pd.DataFrame(rows, columns=["env_id", "r_init", "r_best", "ok"])


def normalised_scores(scores: pd.DataFrame, norm: pd.DataFrame) -> pd.DataFrame:
    """Seed scores of the environments with ``ok`` normalisation, ``score`` replaced by the normalised value."""
    m = scores.merge(norm[norm["ok"]], on="env_id", how="inner")
    m["score"] = (m["score"] - m["r_init"]) / (m["r_best"] - m["r_init"])
    return m.drop(columns=["r_init", "r_best", "ok"])


def score_matrices(norm_scores: pd.DataFrame, algos: Sequence[str]) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """rliable arrays: one ``[n_seeds, n_envs]`` matrix per (algo, checkpoint index, test update).

    ``norm_scores``: :func:`normalised_scores` output with a ``checkpoint`` column. Rows are the
    algorithm's seeds in ascending order, columns the environments in sorted order (the same
    for every array of the export); a seed missing in an environment is NaN. Returns
    ``(arrays, index)``, index columns ``key, algo, checkpoint, test_update, envs, seeds`` (JSON).
    """
    envs = sorted(norm_scores["env_id"].unique())
    arrays: dict[str, np.ndarray] = {}
    index = []
    for algo in algos:
        s = norm_scores[norm_scores["algo"] == algo]
        for (k, u), g in s.groupby(["checkpoint", "test_update"], sort=True):
            wide = g.pivot(index="seed", columns="env_id", values="score").reindex(columns=envs).sort_index()
            key = f"{algo}__c{int(k)}__u{int(u)}"
            arrays[key] = wide.to_numpy(float)
            index.append({"key": key, "algo": algo, "checkpoint": int(k), "test_update": int(u),
                          "envs": json.dumps(envs), "seeds": json.dumps([int(x) for x in wide.index])})
    return arrays, pd.DataFrame(index, columns=["key", "algo", "checkpoint", "test_update", "envs", "seeds"])


def iqm(x: np.ndarray) -> np.ndarray | float:
    """Interquartile mean over the last two axes (``scipy.stats.trim_mean(., 0.25)`` of the flattened
    ``[n_seeds, n_envs]`` matrix, as rliable's ``aggregate_iqm``); leading axes are a batch. NaN if a value is NaN."""
    x = np.asarray(x, dtype=float)
    flat = x.reshape(*x.shape[:-2], -1)
    if flat.shape[-1] == 0:
        return float("nan")
    out = np.where(np.isnan(flat).any(axis=-1), np.nan, sps.trim_mean(np.nan_to_num(flat), 0.25, axis=-1))
    return float(out) if out.ndim == 0 else out


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """P(x > y) averaged over environments (ties 1/2): per column the Mann-Whitney ``U / (n_x n_y)``.

    x: [..., n_x, n_envs], y: [..., n_y, n_envs] (leading axes: a batch). Computed as the mean
    over all seed pairs of ``1[x > y] + 1/2 1[x = y]``, which is U / (n_x n_y) exactly. NaN if a
    value is NaN.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape[-2] == 0 or y.shape[-2] == 0:
        return float("nan")
    xx, yy = x[..., :, None, :], y[..., None, :, :]
    wins = (xx > yy) + 0.5 * (xx == yy)
    out = wins.mean(axis=(-3, -2)).mean(axis=-1)
    nan = np.isnan(x).any(axis=(-2, -1)) | np.isnan(y).any(axis=(-2, -1))
    out = np.where(nan, np.nan, out)
    return float(out) if out.ndim == 0 else out


def stratified_resample(x: np.ndarray, rng: np.random.Generator, reps: int) -> np.ndarray:
    """``reps`` stratified bootstrap resamples ``[reps, n, m]``: within each column (environment), rows
    (seeds) drawn with replacement."""
    n, m = x.shape
    rows = rng.integers(0, n, size=(reps, n, m))
    return x[rows, np.arange(m)]


def stratified_ci(func: Callable[..., np.ndarray], arrays: Sequence[np.ndarray], reps: int = 2000,
                  level: float = 0.95, rng: np.random.Generator | int | None = 0) -> tuple[float, float]:
    """Percentile CI of ``func(*arrays)`` under independent stratified resampling of each array.

    ``func`` must accept a leading batch axis (as :func:`iqm` and :func:`probability_of_improvement`).
    """
    rng = np.random.default_rng(rng)
    if any(a.size == 0 or np.isnan(a).any() for a in arrays):
        return float("nan"), float("nan")
    vals = np.asarray(func(*(stratified_resample(np.asarray(a, float), rng, reps) for a in arrays)))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(vals, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def aggregate_table(arrays: dict[str, np.ndarray], index: pd.DataFrame, algo_a: str, algo_b: str, metric: str,
                    reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """IQM (with CI) of each algorithm and P(a > b) (with CI) for each (checkpoint, test update) both have.

    ``arrays``/``index``: :func:`score_matrices` output. A cell where a matrix holds a NaN (a
    seed missing in some environment) gets NaN statistics and the flag ``nan_score``; fewer
    than 2 seeds: ``n<2``.
    """
    idx = index.set_index(["algo", "checkpoint", "test_update"])["key"]
    rows = []
    cells = sorted(set(map(tuple, index[["checkpoint", "test_update"]].to_numpy().tolist())))
    for k, u in cells:
        if (algo_a, k, u) not in idx.index or (algo_b, k, u) not in idx.index:
            continue
        x, y = arrays[idx[(algo_a, k, u)]], arrays[idx[(algo_b, k, u)]]
        flags = []
        if np.isnan(x).any() or np.isnan(y).any():
            flags.append("nan_score")
        if min(x.shape[0], y.shape[0]) < 2:
            flags.append("n<2")
        row = {"algo_a": algo_a, "algo_b": algo_b, "metric": metric, "checkpoint": int(k), "test_update": int(u),
               "n_envs": x.shape[1], "n_seeds_a": x.shape[0], "n_seeds_b": y.shape[0], "flags": ";".join(flags)}
        if flags:
            row.update({c: np.nan for c in AGGREGATE_COLUMNS if c not in row})
        else:
            rng = np.random.default_rng([seed, int(k), int(u)])
            row["iqm_a"], row["iqm_b"] = iqm(x), iqm(y)
            row["iqm_a_low"], row["iqm_a_high"] = stratified_ci(iqm, [x], reps, rng=rng)
            row["iqm_b_low"], row["iqm_b_high"] = stratified_ci(iqm, [y], reps, rng=rng)
            row["poi"] = probability_of_improvement(x, y)
            row["poi_low"], row["poi_high"] = stratified_ci(probability_of_improvement, [x, y], reps, rng=rng)
        rows.append(row)
    return pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)


def save_export(arrays: dict[str, np.ndarray], index: pd.DataFrame, norm: pd.DataFrame, npz_path: Path,
                index_path: Path, norm_path: Path) -> None:
    """Write the rliable arrays (npz), their index (CSV) and the per-environment normalisation (CSV)."""
    np.savez_compressed(npz_path, **arrays)
    index.to_csv(index_path, index=False)
    norm.to_csv(norm_path, index=False)
