"""``rlbench compare`` on synthetic results written in the runner's exact run-directory format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlbench import cli, stats
from rlbench.commands import compare_cmd
from rlbench.errors import UsageError

LOCO, MW = "rlbench/HalfCheetahRandVel-v0", "rlbench/ML1-Push-v0"
MARKS = (0, 1000, 2000)
SEEDS = (1, 2, 3, 4)
N_TASKS = 3


def comparability(env_id: str) -> dict:
    return {"env_fingerprint": f"sha256:{env_id}", "horizon": 150 if env_id == MW else 200,
            "eval": {"n_tasks": N_TASKS, "episodes_per_task": 2, "test_updates": 5},
            "budget": MARKS[-1], "checkpoint_marks": list(MARKS)}


def write_run(root: Path, env_id: str, algo: str, seed: int, rows: list[dict] | None, **comp_overrides) -> Path:
    """One run directory: run.json (+ evaluation.csv unless rows is None)."""
    d = root / env_id.replace("/", "_") / algo / f"seed_{seed}"
    d.mkdir(parents=True, exist_ok=True)
    comp = comparability(env_id) | comp_overrides
    (d / "run.json").write_text(json.dumps({"env_id": env_id, "algo": algo, "seed": seed, "comparability": comp,
                                            "git_commit": "deadbeef", "versions": {"numpy": np.__version__}}))
    if rows is not None:
        pd.DataFrame(rows).to_csv(d / "evaluation.csv", index=False)
    return d


def synthetic_rows(env_id: str, algo: str, seed: int, rng: np.random.Generator, seed_effect: float) -> list[dict]:
    """Evaluation rows for one run. Checkpoint 0 is the initial policy, which (as in the runner,
    where initial weights derive from the seed) is the same for both algorithms of a seed: the
    two algorithms are identical in distribution there, up to independent evaluation noise. At
    later checkpoints DRS is better by 20 (seed-to-seed spread about 1, task noise 1)."""
    rows = []
    run_effect = rng.normal(0.0, 1.0)
    for c, mark in enumerate(MARKS):
        for u in range(6):
            for task in range(N_TASKS):
                if c == 0:
                    ret = seed_effect + 2.0 * u + rng.normal(0.0, 0.3)
                else:
                    ret = 50.0 * c + 2.0 * u + run_effect + (20.0 if algo.startswith("drs") else 0.0) + rng.normal()
                succ = float(rng.random() < (0.2 + 0.3 * c / 2 + (0.2 if algo.startswith("drs") and c else 0)))
                rows.append({"env_id": env_id, "algo": algo, "seed": seed, "checkpoint": c, "budget_mark": mark,
                             "env_steps": mark + (37 if c else 0), "test_update": u, "task": task, "return": ret,
                             "success": succ if env_id == MW else np.nan, "episodes": 2})
    return rows


def make_results(root: Path, algos=("drs-ppo", "promp"), envs=(LOCO, MW), seeds=SEEDS) -> Path:
    rng = np.random.default_rng(123)
    for env_id in envs:
        for seed in seeds:
            seed_effect = rng.normal(0.0, 5.0)
            for algo in algos:
                write_run(root, env_id, algo, seed, synthetic_rows(env_id, algo, seed, rng, seed_effect))
    return root


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One full CLI run (figures included) shared by the checks below."""
    root = make_results(tmp_path_factory.mktemp("results"))
    write_run(root, LOCO, "drs-ppo", 99, None)  # a run still training: no evaluation.csv yet
    out = tmp_path_factory.mktemp("out")
    (out / "notes.txt").write_text("mine")
    before = os.stat(out / "notes.txt").st_mtime_ns
    status = cli.main(["compare", str(root), "--pair", "drs-ppo:promp", "--out", str(out)])
    return root, out, status, before


def test_compare_cli_writes_every_output_and_keeps_other_files(compared, capsys):
    _, out, status, before = compared
    assert status == 0
    assert (out / "notes.txt").read_text() == "mine" and os.stat(out / "notes.txt").st_mtime_ns == before
    stem = "drs-ppo_vs_promp_return_"
    for kind in ("contour", "learning", "adaptation"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}{kind}.{ext}").stat().st_size > 1000
    for kind in ("learning", "adaptation"):  # Meta-World records success: success versions too
        assert (out / f"drs-ppo_vs_promp_success_{kind}.png").exists()
    report = stats.read_report(out / f"{stem}report.csv")
    assert len(report) == 2 * len(MARKS) * 6 and list(report.columns) == stats.REPORT_COLUMNS
    with np.load(out / f"{stem}rliable.npz") as z:
        index = pd.read_csv(out / f"{stem}rliable_index.csv")
        assert len(index) == 2 * 2 * len(MARKS) * 6
        assert all(z[k].shape == (len(SEEDS), N_TASKS) for k in index["key"])


def test_synthetic_truth_is_recovered(compared):
    _, out, _, _ = compared
    r = stats.read_report(out / "drs-ppo_vs_promp_return_report.csv")
    assert (r["n_a"] == len(SEEDS)).all() and (r["n_b"] == len(SEEDS)).all() and (r["flags"] == "").all()
    init, later = r[r["budget_mark"] == 0], r[r["budget_mark"] > 0]
    assert (abs(init["prob"] - 0.5) < 0.25).all(), init["prob"].tolist()  # identical in distribution
    assert (later["prob"] > 0.999).all() and (later["q"] < 0.01).all()
    assert (later["ci_low"] > 10).all() and (later["ci_high"] < 30).all()  # true difference is 20
    assert (later["a12"] == 1.0).all() and (later["hedges_g"] > 3).all()
    # GS's df is Welch's divided by n (heavier tails), so its values are less extreme
    assert (later["gs_value"] > 0.95).all() and (abs(init["gs_value"]) < 0.5).all()


def test_success_metric_uses_only_envs_that_record_it(tmp_path):
    root = make_results(tmp_path / "res", seeds=(1, 2, 3))
    warnings: list[str] = []
    written = compare_cmd.compare(root, [("drs-ppo", "promp")], tmp_path / "out", metric="success",
                                  warn=warnings.append)
    report = pd.read_csv(written["drs-ppo:promp/report_csv"])
    assert set(report["env_id"]) == {MW} and (report["metric"] == "success").all()
    assert any(LOCO in w for w in warnings)
    assert all(Path(p).exists() for p in written.values())


def _refuse(argv: list[str], capsys) -> str:
    status = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith("rlbench: error: ")
    return err


def test_refuses_mismatched_comparability_and_leaves_out_untouched(tmp_path, capsys):
    root = make_results(tmp_path / "res", envs=(LOCO,), seeds=(1, 2))
    rng = np.random.default_rng(0)
    write_run(root, LOCO, "promp", 3, synthetic_rows(LOCO, "promp", 3, rng, 0.0), horizon=500)
    out = tmp_path / "out"
    out.mkdir()
    (out / "drs-ppo_vs_promp_return_report.csv").write_text("an older report")
    listing = sorted(p.name for p in out.iterdir())
    err = _refuse(["compare", str(root), "--pair", "drs-ppo:promp", "--out", str(out)], capsys)
    assert f"runs of {LOCO} differ in comparability.horizon: 200 vs 500" in err
    assert sorted(p.name for p in out.iterdir()) == listing
    assert (out / "drs-ppo_vs_promp_return_report.csv").read_text() == "an older report"

    nested = make_results(tmp_path / "res2", envs=(LOCO,), seeds=(1, 2))
    write_run(nested, LOCO, "promp", 3, synthetic_rows(LOCO, "promp", 3, rng, 0.0),
              eval={"n_tasks": 7, "episodes_per_task": 2, "test_updates": 5})
    fresh = tmp_path / "not_created"
    err = _refuse(["compare", str(nested), "--pair", "drs-ppo:promp", "--out", str(fresh)], capsys)
    assert "differ in comparability.eval.n_tasks: 3 vs 7" in err
    assert not fresh.exists()


def test_refuses_empty_dir_missing_pair_and_bad_pair(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no runs" in _refuse(["compare", str(empty), "--out", str(tmp_path / "o")], capsys)
    root = make_results(tmp_path / "res", envs=(LOCO,), seeds=(1, 2))
    err = _refuse(["compare", str(root), "--pair", "drs-trpo:trpo-maml", "--out", str(tmp_path / "o")], capsys)
    assert "no runs of drs-trpo" in err
    assert "FIRST:SECOND" in _refuse(["compare", str(root), "--pair", "drs-ppo", "--out", str(tmp_path / "o")],
                                     capsys)
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError, match="does not exist"):
        compare_cmd.compare(tmp_path / "nowhere", ["drs-ppo:promp"], tmp_path / "o")


def test_skips_runs_without_evaluation_and_flags_missing_runs(tmp_path):
    root = make_results(tmp_path / "res", envs=(LOCO,), seeds=(1, 2, 3))
    write_run(root, LOCO, "promp", 4, None)  # not evaluated yet: skipped with a warning
    # promp seed 3 stopped after checkpoint 0: its later cells lack a seed
    csv = next(root.rglob("promp/seed_3/evaluation.csv"))
    df = pd.read_csv(csv)
    df[df["checkpoint"] == 0].to_csv(csv, index=False)
    warnings: list[str] = []
    df_all, runs = compare_cmd.load_results(root, warn=warnings.append)
    assert len(runs) == 6 and any("seed_4" in w and "no evaluation.csv" in w for w in warnings)
    rep = stats.compare_cells(stats.seed_scores(df_all), "drs-ppo", "promp")
    later = rep[rep["budget_mark"] > 0]
    assert (later["flags"] == "missing_runs_b").all() and (later["n_b"] == 2).all()
    assert later["q"].isna().all() and later["prob"].notna().all()
    assert (rep.loc[rep["budget_mark"] == 0, "flags"] == "").all()


def test_refuses_malformed_and_duplicate_runs(tmp_path, capsys):
    root = make_results(tmp_path / "res", envs=(LOCO,), seeds=(1, 2))
    csv = next(root.rglob("promp/seed_2/evaluation.csv"))
    df = pd.read_csv(csv)
    df["return"] = df["return"].astype(object)
    df.loc[0, "return"] = "oops"
    df.to_csv(csv, index=False)
    err = _refuse(["compare", str(root), "--out", str(tmp_path / "o")], capsys)
    assert "bad value in column return" in err
    dup = make_results(tmp_path / "dup", envs=(LOCO,), seeds=(1, 2))
    rng = np.random.default_rng(1)
    extra = write_run(dup / "again", LOCO, "promp", 2, synthetic_rows(LOCO, "promp", 2, rng, 0.0))
    assert extra.exists()
    assert "two runs of" in _refuse(["compare", str(dup), "--out", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()
