"""``rlbench compare`` (rlbench.analysis) on results in the runner's own run-directory format.

Every run directory here is a copy of a real run: two tiny toy runs (DRS+PPO and ProMP, seed
1) trained by :func:`rlbench.runner.train` and evaluated by :func:`rlbench.evaluator.evaluate_run`
once per session, with its ``run.json`` edited through the store's functions (another env id,
seed, pairing record or comparability entry) and its ``evaluation.csv`` rewritten on the real
grid of checkpoints, test updates and tasks with synthetic returns of known truth. So a
change of the runner's format (layout, file names, metadata keys, columns) breaks these tests.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from rlbench import analysis, cli, config, presets, stats, store
from rlbench.errors import UsageError
from rlbench.evaluator import COLUMNS, evaluate_run
from rlbench.grid import run_dir_for
from rlbench.runner import train
from rlbench.settings import ExperimentConfig

LOCO, MW = "rlbench/HalfCheetahRandVel-v0", "rlbench/ML1-Push-v0"  # labels of the copies (MW records success)
TOY = "rlbench/PointGoal-v0"  # what the template runs really are
N_CHECKPOINTS = 3
N_UPDATES = 5
SEEDS = (1, 2, 3, 4)
N_TASKS = 3
#: A smoke-sized toy experiment: 4 DRS iterations, 3 checkpoints, 3 test tasks x 6 rounds each.
TEMPLATE_EXPERIMENT = {
    "name": "compare-test", "envs": [TOY], "algos": ["drs-ppo", "promp"], "seeds": [1], "budget": 320,
    "n_checkpoints": N_CHECKPOINTS, "pairs": ["drs-ppo:promp"],
    "overrides": {"all": {"sampler": {"meta_batch_size": 2, "episodes_per_task": 2, "n_workers": 1},
                          "policy": {"hidden_sizes": [8]},
                          "eval": {"n_tasks": N_TASKS, "n_updates": N_UPDATES, "episodes_per_task": 2}}},
}


@functools.cache
def templates() -> dict[str, Path]:
    """algo -> a real, evaluated run directory (made once per test session)."""
    root = Path(tempfile.mkdtemp(prefix="rlbench_compare_templates_"))
    atexit.register(shutil.rmtree, root, True)
    exp = config.from_dict(ExperimentConfig, TEMPLATE_EXPERIMENT)
    out = {}
    for cfg in presets.experiment_run_configs(exp):
        run_dir = run_dir_for(root, cfg)
        train(cfg, run_dir, quiet=True)
        evaluate_run(run_dir, quiet=True)
        out[cfg.algo] = run_dir
    return out


def template_eval(algo: str) -> pd.DataFrame:
    df = pd.read_csv(templates()[algo] / store.EVAL_FILE)
    assert list(df.columns) == COLUMNS
    return df


def marks() -> list[int]:
    return sorted(template_eval("promp")["budget_mark"].unique().tolist())


def _merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in key by key (nested dicts merged, not replaced)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def write_run(root: Path, env_id: str, algo: str, seed: int, rows: list[dict] | None, pairing: dict | None | str = "auto",
              **comp_overrides) -> Path:
    """A copy of the real ``algo`` run as (env_id, seed) under ``root`` (the grid's layout), with
    ``rows`` as its evaluation (None: not evaluated yet). ``pairing``: "auto" keeps the real
    record (equal for both algorithms of a seed), None removes it (a run made before pairing
    records), a dict replaces it. ``comp_overrides`` are merged into the real comparability."""
    d = run_dir_for(root, SimpleNamespace(env_id=env_id, algo=algo, seed=seed))
    if d.exists():  # rewritten: replaced as a whole
        shutil.rmtree(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(templates()[algo], d)
    meta = store.read_meta(d)
    meta.update(env_id=env_id, seed=seed, comparability=_merge(meta["comparability"], comp_overrides))
    if pairing is None:
        meta.pop("pairing")
    elif pairing != "auto":
        meta["pairing"] = pairing
    store.write_json(d / store.META_FILE, meta)
    (d / store.EVAL_FILE).unlink()
    if rows is not None:
        store.write_text(d / store.EVAL_FILE, pd.DataFrame(rows)[COLUMNS].to_csv(index=False))
    return d


def real_pairing(algo: str = "promp") -> dict:
    return store.read_meta(templates()[algo])["pairing"]


def synthetic_rows(env_id: str, algo: str, seed: int, rng: np.random.Generator, seed_effect: float) -> list[dict]:
    """Evaluation rows for one run, on the real run's grid (checkpoints, marks, steps, test
    updates, tasks, episodes). Checkpoint 0 is the initial policy, which (as in the runner,
    where initial weights derive from the seed) is the same for both algorithms of a seed: the
    two algorithms are identical in distribution there, up to independent evaluation noise. At
    later checkpoints DRS is better by 20 (seed-to-seed spread about 1, task noise 1)."""
    grid = template_eval(algo).to_dict("records")
    rows = []
    run_effect = rng.normal(0.0, 1.0)
    for r in grid:
        c, u = r["checkpoint"], r["test_update"]
        if c == 0:
            ret = seed_effect + 2.0 * u + rng.normal(0.0, 0.3)
        else:
            ret = 50.0 * c + 2.0 * u + run_effect + (20.0 if algo.startswith("drs") else 0.0) + rng.normal()
        succ = float(rng.random() < (0.2 + 0.3 * c / 2 + (0.2 if algo.startswith("drs") and c else 0)))
        rows.append({**r, "env_id": env_id, "seed": seed, "return": ret, "success": succ if env_id == MW else np.nan})
    return rows


def make_results(root: Path, algos=("drs-ppo", "promp"), envs=(LOCO, MW), seeds=SEEDS) -> Path:
    rng = np.random.default_rng(123)
    for env_id in envs:
        for seed in seeds:
            seed_effect = rng.normal(0.0, 5.0)
            for algo in algos:
                write_run(root, env_id, algo, seed, synthetic_rows(env_id, algo, seed, rng, seed_effect))
    return root


def test_template_runs_are_what_the_runner_and_evaluator_wrote():
    """The copies start from real runs: finished, evaluated on the full grid, and paired."""
    for algo, d in templates().items():
        assert store.is_run_dir(d)
        meta = store.read_meta(d)
        assert meta["status"] == "finished" and len(meta["checkpoints"]) == N_CHECKPOINTS
        df = template_eval(algo)
        assert len(df) == N_CHECKPOINTS * N_TASKS * (N_UPDATES + 1) and set(df["env_id"]) == {TOY}
    assert real_pairing("drs-ppo") == real_pairing("promp")


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
    assert len(report) == 2 * N_CHECKPOINTS * 6 and list(report.columns) == stats.REPORT_COLUMNS
    with np.load(out / f"{stem}rliable.npz") as z:  # rliable layout: seeds x environments
        index = pd.read_csv(out / f"{stem}rliable_index.csv")
        assert len(index) == 2 * N_CHECKPOINTS * 6
        assert all(z[k].shape == (len(SEEDS), 2) for k in index["key"])
        assert all(json.loads(e) == sorted([LOCO, MW]) for e in index["envs"])
    agg = pd.read_csv(out / f"{stem}aggregate.csv")
    assert len(agg) == N_CHECKPOINTS * 6 and agg["flags"].isna().all()
    for name in ("study_return_contour.png", "study_return_contour.pdf", "study_return_summary.csv",
                 "study_return_summary.md"):
        assert (out / name).stat().st_size > 100


def test_synthetic_truth_is_recovered(compared):
    _, out, _, _ = compared
    r = stats.read_report(out / "drs-ppo_vs_promp_return_report.csv")
    assert (r["n_a"] == len(SEEDS)).all() and (r["n_b"] == len(SEEDS)).all()
    assert (r["welch_flags"] == "").all() and (r["paired_flags"] == "").all()
    init, later = r[r["budget_mark"] == 0], r[r["budget_mark"] > 0]
    assert (abs(init["welch_one_minus_p"] - 0.5) < 0.25).all()  # identical in distribution
    assert (later["welch_one_minus_p"] > 0.999).all() and (later["welch_q"] < 0.01).all()
    assert (later["welch_ci_low"] > 10).all() and (later["welch_ci_high"] < 30).all()  # true difference is 20
    assert (later["paired_ci_low"] > 10).all() and (later["paired_ci_high"] < 30).all()
    assert (later["paired_q"] < 0.05).all() and (later["paired_win_frac"] == 1).all()
    assert (later["a12"] == 1.0).all() and (later["hedges_g"] > 3).all()
    # GS's df is Welch's divided by n (heavier tails), so its values are less extreme
    assert (later["paper_value"] > 0.95).all() and (abs(init["paper_value"]) < 0.5).all()


def test_success_metric_uses_only_envs_that_record_it(tmp_path):
    root = make_results(tmp_path / "res", seeds=(1, 2, 3))
    warnings: list[str] = []
    written = analysis.compare(root, [("drs-ppo", "promp")], tmp_path / "out", metric="success",
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
    write_run(root, LOCO, "promp", 3, synthetic_rows(LOCO, "promp", 3, rng, 0.0), sampler={"horizon": 500})
    out = tmp_path / "out"
    out.mkdir()
    (out / "drs-ppo_vs_promp_return_report.csv").write_text("an older report")
    listing = sorted(p.name for p in out.iterdir())
    err = _refuse(["compare", str(root), "--pair", "drs-ppo:promp", "--out", str(out)], capsys)
    horizon = store.read_config(templates()["promp"]).sampler.horizon
    assert f"runs of {LOCO} differ in comparability.sampler.horizon: {horizon} vs 500" in err
    assert sorted(p.name for p in out.iterdir()) == listing
    assert (out / "drs-ppo_vs_promp_return_report.csv").read_text() == "an older report"

    nested = make_results(tmp_path / "res2", envs=(LOCO,), seeds=(1, 2))
    write_run(nested, LOCO, "promp", 3, synthetic_rows(LOCO, "promp", 3, rng, 0.0),
              eval={"n_tasks": 7})
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
        analysis.compare(tmp_path / "nowhere", ["drs-ppo:promp"], tmp_path / "o")


def test_skips_runs_without_evaluation_and_flags_missing_runs(tmp_path):
    root = make_results(tmp_path / "res", envs=(LOCO,), seeds=(1, 2, 3))
    write_run(root, LOCO, "promp", 4, None)  # not evaluated yet: skipped with a warning
    # promp seed 3 stopped after checkpoint 0: its later cells lack a seed
    csv = next(root.rglob("promp/seed_3/evaluation.csv"))
    df = pd.read_csv(csv)
    df[df["checkpoint"] == 0].to_csv(csv, index=False)
    warnings: list[str] = []
    df_all, runs = analysis.load_results(root, warn=warnings.append)
    assert len(runs) == 6 and any("seed_4" in w and "no evaluation.csv" in w for w in warnings)
    rep = stats.compare_cells(stats.seed_scores(df_all), "drs-ppo", "promp")
    later = rep[rep["budget_mark"] > 0]
    assert (later["welch_flags"] == "missing_runs_b").all() and (later["n_b"] == 2).all()
    assert later["welch_q"].isna().all() and later["welch_one_minus_p"].notna().all()
    assert (later["paired_flags"] == "missing_runs_b").all() and (later["paired_n"] == 2).all()
    assert (rep.loc[rep["budget_mark"] == 0, "welch_flags"] == "").all()


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


# --------------------------------------------------------------------------- allowed differences, pairing, power


def test_allow_difference_accepts_only_the_named_nested_key_and_captions_say_so(tmp_path, capsys):
    root = make_results(tmp_path / "res", envs=(LOCO,), seeds=(1, 2, 3))
    rng = np.random.default_rng(0)
    for seed in (4, 5):  # later runs made with a new sampler unit
        for algo in ("drs-ppo", "promp"):
            write_run(root, LOCO, algo, seed, synthetic_rows(LOCO, algo, seed, rng, 0.0),
                      sampler={"unit": "episode"})
    out = tmp_path / "out"
    err = _refuse(["compare", str(root), "--out", str(out)], capsys)
    assert 'differ in comparability.sampler.unit: "steps" vs "episode"' in err
    assert err.endswith("--allow-difference sampler.unit")
    assert not out.exists()
    status = cli.main(["compare", str(root), "--out", str(out), "--allow-difference", "sampler.unit"])
    assert status == 0
    rep = stats.read_report(out / "drs-ppo_vs_promp_return_report.csv")
    assert (rep["allowed_differences"] == f'{LOCO}: sampler.unit differs ("episode" vs "steps")').all()
    assert "sampler.unit differs" in (out / "study_return_summary.md").read_text()
    # the allowance covers only that key: another difference is still refused, by name
    write_run(root, LOCO, "promp", 6, synthetic_rows(LOCO, "promp", 6, rng, 0.0),
              sampler={"unit": "episode", "other": 1})
    err = _refuse(["compare", str(root), "--out", str(out), "--allow-difference", "comparability.sampler.unit"],
                  capsys)
    assert "differ in comparability.sampler.other: <missing> vs 1" in err


def test_check_comparable_is_generic_on_nested_dicts():
    def run(comp):
        return analysis.Run(Path("x"), "e", "a", 1, comp)

    base = {"eval": {"lr": 0.1, "steps": 1}, "budget": 5}
    other = {"eval": {"lr": 0.2, "steps": 1}, "budget": 5}
    with pytest.raises(UsageError, match=r"differ in comparability.eval.lr: 0.1 vs 0.2"):
        analysis.check_comparable([run(base), run(other)])
    assert analysis.check_comparable([run(base), run(other)], ["eval.lr"]) == [
        "e: eval.lr differs (0.1 vs 0.2)"]
    assert analysis.check_comparable([run(base), run(other)], ["eval"]) == [
        'e: eval differs ({"lr": 0.1, "steps": 1} vs {"lr": 0.2, "steps": 1})']
    assert analysis.check_comparable([run(base), run(base)], ["eval.lr"]) == []


def test_paired_needs_pairing_records(tmp_path, capsys):
    root = make_results(tmp_path / "res", envs=(LOCO,), seeds=(1, 2))
    rng = np.random.default_rng(2)
    for algo in ("drs-ppo", "promp"):  # seed 3: an old run pair without records
        write_run(root, LOCO, algo, 3, synthetic_rows(LOCO, algo, 3, rng, 0.0), pairing=None)
    out = tmp_path / "out"
    err = _refuse(["compare", str(root), "--out", str(out), "--analysis", "paired"], capsys)
    assert "not proven paired (seed 3: no pairing record" in err and not out.exists()
    assert "unknown analysis 'bayes'" in _refuse(["compare", str(root), "--out", str(out), "--analysis", "bayes"],
                                                 capsys)
    # default: falls back to the Welch figure with a notice; the report's paired columns are flagged
    assert cli.main(["compare", str(root), "--out", str(out)]) == 0
    assert "figures show the welch analysis" in capsys.readouterr().err
    assert (out / "drs-ppo_vs_promp_return_contour_welch.png").exists()
    rep = stats.read_report(out / "drs-ppo_vs_promp_return_report.csv")
    assert rep["paired_flags"].str.contains("unpaired").all() and rep["paired_p"].isna().all()
    # different initial policies for one seed: not a pair either
    write_run(root, LOCO, "promp", 3, synthetic_rows(LOCO, "promp", 3, rng, 0.0),
              pairing={**real_pairing(), "init_params_sha256": "other"})
    write_run(root, LOCO, "drs-ppo", 3, synthetic_rows(LOCO, "drs-ppo", 3, rng, 0.0))
    assert "different initial policies" in _refuse(
        ["compare", str(root), "--out", str(out), "--analysis", "paired"], capsys)


def test_power_prints_seeds_needed_per_env_and_pair(tmp_path, capsys):
    root = make_results(tmp_path / "res", envs=(LOCO,), seeds=(1, 2, 3))
    table = analysis.power_report(root, ["drs-ppo:promp"])
    assert set(table["test_update"]) == {1, 5} and (table["n_pilot"] == 3).all()
    from rlbench import power

    for _, r in table.iterrows():  # the answer is the smallest n reaching 80% power
        n = int(r["seeds_paired"])
        assert power.power_paired(n, r["effect"], r["sd_diff"]) >= 0.8
        assert n == 2 or power.power_paired(n - 1, r["effect"], r["sd_diff"]) < 0.8
    assert cli.main(["compare", str(root), "--power", "--effect", "5"]) == 0
    text = capsys.readouterr().out
    assert "a difference of 5" in text and LOCO in text and "seeds_paired" in text
    assert "--effect must be a positive" in _refuse(["compare", str(root), "--power", "--effect", "-1"], capsys)
    assert "--out is required" in _refuse(["compare", str(root)], capsys)
