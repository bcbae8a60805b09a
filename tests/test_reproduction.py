"""The committed reduced-scale reproduction (results/repro-small, REPRODUCTION.md) cannot drift
from the code that made it: one cell of the comparison is re-derived by hand from the committed
evaluation tables (scipy's paired t-test as the oracle), every committed report is recomputed
by the library, and REPRODUCTION.md's generated block is regenerated and compared."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from rlbench import stats

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "results" / "repro-small"


def _script():
    spec = importlib.util.spec_from_file_location("reproduction_report", ROOT / "scripts" / "reproduction_report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _evaluations() -> pd.DataFrame:
    files = sorted((DEST / "runs").rglob("evaluation.csv"))
    assert len(files) == 24, f"expected the 24 runs of repro-small, found {len(files)}"
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def test_one_committed_cell_rederived_by_hand():
    """HalfCheetahRandVel, DRS+PPO vs ProMP, last checkpoint, 1 test update."""
    df = _evaluations()
    env, a, b = "rlbench/HalfCheetahRandVel-v0", "drs-ppo", "promp"
    last = df["budget_mark"].max()
    cell = df[(df["env_id"] == env) & (df["budget_mark"] == last) & (df["test_update"] == 1)]
    means = cell.groupby(["algo", "seed"])["return"].mean()  # a seed's score: its mean over tasks
    seeds = sorted(set(means[a].index) & set(means[b].index))
    xa, xb = means[a].loc[seeds].to_numpy(), means[b].loc[seeds].to_numpy()
    d = xa - xb
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    p = sps.ttest_rel(xa, xb, alternative="greater").pvalue

    report = stats.read_report(DEST / "comparison" / f"{a}_vs_{b}_return_report.csv")
    row = report[(report["env_id"] == env) & (report["budget_mark"] == last) & (report["test_update"] == 1)]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["paired_n"] == len(seeds) >= 3
    assert row["paired_diff"] == pytest.approx(d.mean(), rel=1e-9, abs=1e-9)
    assert row["paired_ci_low"] == pytest.approx(d.mean() - half, rel=1e-9, abs=1e-9)
    assert row["paired_ci_high"] == pytest.approx(d.mean() + half, rel=1e-9, abs=1e-9)
    assert row["paired_p"] == pytest.approx(p, rel=1e-9, abs=1e-12)
    # the q-value: Benjamini-Hochberg over the env's unflagged cells, recomputed with scipy
    env_rows = report[(report["env_id"] == env) & (report["paired_flags"].fillna("") == "")]
    q = sps.false_discovery_control(env_rows["paired_p"].to_numpy(), method="bh")
    assert row["paired_q"] == pytest.approx(q[list(env_rows.index).index(row.name)], rel=1e-9)


def test_committed_reports_and_reproduction_md_regenerate():
    mod = _script()
    md_path = ROOT / "REPRODUCTION.md"
    before = md_path.read_text()
    committed_block = before[before.index(mod.BEGIN): before.index(mod.END) + len(mod.END)]
    df = mod.load_evaluations(DEST)
    for a, b in mod.pairs_of(DEST):
        fresh = mod.recompute_report(df, a, b)
        committed = stats.read_report(DEST / "comparison" / f"{a}_vs_{b}_return_report.csv")
        cols = ["paired_diff", "paired_ci_low", "paired_ci_high", "paired_p", "paired_q", "welch_p", "paper_value"]
        np.testing.assert_allclose(fresh[cols].to_numpy(float), committed[cols].to_numpy(float), rtol=1e-9,
                                   atol=1e-9, equal_nan=True)
    out = ROOT / "results" / "repro-small"
    # regenerate into a scratch copy of the markdown, never touching the committed files
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "dest"
        shutil.copytree(out, scratch)
        md = Path(tmp) / "R.md"
        md.write_text(before)
        assert mod.report(scratch, md) == 0
        regenerated = md.read_text()
    block = regenerated[regenerated.index(mod.BEGIN): regenerated.index(mod.END) + len(mod.END)]
    # the block names the folder it was generated from; compare with that path normalised
    assert block.replace(str(scratch), "results/repro-small") == committed_block


def test_restore_rebuilds_evaluation_parts_that_match_their_checksums(tmp_path, capsys):
    """``restore`` puts committed runs back into a grid directory as complete runs; a run whose
    rows do not reproduce the checksum run.json recorded is refused, and nothing is written."""
    from rlbench import store
    from rlbench.grid import is_complete

    mod = _script()
    env = "rlbench/HopperRandParams-v0"
    out = tmp_path / "grid"
    assert mod.main(["restore", str(DEST), str(out), "--env", env]) == 0
    runs = sorted(p.parent for p in out.rglob(store.META_FILE))
    assert len(runs) == 12 and all(is_complete(r) for r in runs)
    for r in runs:  # the parts are the rows of evaluation.csv, split by checkpoint
        parts = pd.concat([pd.read_csv(p) for p in sorted((r / store.EVAL_DIR).glob("*.csv"))], ignore_index=True)
        pd.testing.assert_frame_equal(parts, pd.read_csv(r / store.EVAL_FILE))
    # one changed digit in one committed row: refused, nothing written
    bad = tmp_path / "bad"
    rel = runs[0].relative_to(out)
    (bad / "runs").mkdir(parents=True)
    shutil.copytree(DEST / "runs" / rel, bad / "runs" / rel)
    ev = bad / "runs" / rel / store.EVAL_FILE
    lines = ev.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace(lines[1].split(",")[-3], lines[1].split(",")[-3] + "1", 1)
    ev.write_text("".join(lines))
    capsys.readouterr()
    assert mod.main(["restore", str(bad), str(tmp_path / "out2"), "--env", env]) == 2
    assert "sha256 differs" in capsys.readouterr().err and not (tmp_path / "out2").exists()
    assert mod.main(["restore", str(DEST), str(tmp_path / "out3"), "--env", "rlbench/Nope-v0"]) == 2


def test_noise_decomposition_of_one_cell_by_hand():
    """The committed noise row of HalfCheetahRandVel, DRS+TRPO vs TRPO-MAML, last checkpoint:
    the per-seed differences, their within-seed variances (the stratified design's
    second-difference estimator, written out with a loop) and the goal-velocity R^2,
    recomputed from the evaluation tables and the goal velocities the stratified design draws
    (task i uniform in the i-th of n equal strata of [0, 3], from the seed's "test-tasks"
    stream; numpy's corrcoef as the R^2)."""
    from rlbench import seeding

    df = _evaluations()
    env, a, b = "rlbench/HalfCheetahRandVel-v0", "drs-trpo", "trpo-maml"
    low, high = 0.0, 3.0
    last = df["budget_mark"].max()
    cell = df[(df["env_id"] == env) & (df["budget_mark"] == last) & (df["test_update"] == 1)]
    ds, se2, r2 = [], [], []
    for seed in sorted(cell["seed"].unique()):
        ra = cell[(cell["algo"] == a) & (cell["seed"] == seed)].sort_values("task")["return"].to_numpy()
        rb = cell[(cell["algo"] == b) & (cell["seed"] == seed)].sort_values("task")["return"].to_numpy()
        y = ra - rb
        n = len(y)
        ds.append(y.mean())
        second = [(y[i - 1] - 2 * y[i] + y[i + 1]) ** 2 for i in range(1, n - 1)]
        se2.append(sum(second) / (6 * (n - 2)) / n)
        u = seeding.generator(int(seed), "test-tasks").uniform(size=n)
        v = low + (high - low) * (np.arange(n) + u) / n
        r2.append(np.corrcoef(v, y)[0, 1] ** 2)
    var_d = np.var(ds, ddof=1)
    noise = pd.read_csv(DEST / "noise.csv")
    row = noise[(noise["env_id"] == env) & (noise["pair"] == f"{a}:{b}") & (noise["budget_mark"] == last)].iloc[0]
    assert row["task_design"] == "stratified" and row["n_tasks"] == 100
    assert row["diff_between_seed_sd"] == pytest.approx(np.sqrt(var_d), rel=1e-9)
    assert row["diff_within_se_median"] == pytest.approx(np.median(np.sqrt(se2)), rel=1e-9)
    assert row["eval_share"] == pytest.approx(np.mean(se2) / var_d, rel=1e-9)
    assert row["seed_sd_beyond_eval"] == pytest.approx(np.sqrt(max(0.0, var_d - np.mean(se2))), rel=1e-9, abs=1e-12)
    assert row["task_param_r2"] == pytest.approx(np.median(r2), rel=1e-9)
    assert 0 < row["task_param_r2"] < 1
