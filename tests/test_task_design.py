"""Stratified meta-test tasks (``eval.task_design``), their standard error, and re-evaluating
finished runs under new evaluation settings (``scripts/reevaluate.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import envs
from rlbench import pairing, seeding, store
from rlbench.cli import main
from rlbench.evaluator import draw_test_tasks
from rlbench.grid import run_dir_for, run_experiment
from rlbench.presets import experiment_run_configs, load_experiment
from rlbench.stats import within_seed_se

ROOT = Path(__file__).resolve().parents[1]
CHEETAH = "rlbench/HalfCheetahRandVel-v0"


def test_stratified_tasks_one_per_stratum_and_reproducible():
    low, high = envs.get_task_distribution(CHEETAH).low, envs.get_task_distribution(CHEETAH).high
    n = 7
    v = np.array([t.goal_velocity for t in draw_test_tasks(CHEETAH, n, 3, "stratified")])
    edges = low + (high - low) * np.arange(n + 1) / n
    assert ((v >= edges[:-1]) & (v < edges[1:])).all(), (v, edges)
    again = [t.goal_velocity for t in draw_test_tasks(CHEETAH, n, 3, "stratified")]
    other = [t.goal_velocity for t in draw_test_tasks(CHEETAH, n, 4, "stratified")]
    assert list(v) == again and list(v) != other
    # the random design is unchanged by the option (its tasks are what earlier runs recorded)
    rng = seeding.generator(3, "test-tasks")
    assert draw_test_tasks(CHEETAH, n, 3) == envs.get_task_distribution(CHEETAH).test_tasks(n, rng)


def test_stratified_tasks_are_uniform_within_their_strata():
    """Over 400 seeds, each task's position inside its stratum is U(0, 1) (scipy's KS test),
    so the pooled design draws goal velocities uniformly, as the random design does."""
    dist = envs.get_task_distribution(CHEETAH)
    n = 5
    pos = []
    for seed in range(400):
        v = np.array([t.goal_velocity for t in draw_test_tasks(CHEETAH, n, seed, "stratified")])
        pos.append((v - dist.low) / (dist.high - dist.low) * n - np.arange(n))
    pos = np.concatenate(pos)
    assert sps.kstest(pos, "uniform").pvalue > 1e-3
    assert sps.kstest(dist.low + (dist.high - dist.low) * (pos + np.tile(np.arange(n), 400)) / n, "uniform",
                      args=(dist.low, dist.high - dist.low)).pvalue > 1e-3


def test_within_seed_se_by_hand():
    y = np.array([1.0, 2.0, 4.0, 8.0])
    assert within_seed_se(y) == pytest.approx(np.std(y, ddof=1) / 2)
    # second differences 1 - 4 + 4 = 1 and 2 - 8 + 8 = 2: sigma^2 = (1 + 4) / (6 * 2), SE^2 = sigma^2 / 4
    assert within_seed_se(y, "stratified") == pytest.approx(np.sqrt(5 / 12 / 4))
    # a purely linear trend across strata is no noise at all
    assert within_seed_se(3.0 * np.arange(10) + 1.0, "stratified") == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(within_seed_se([3.0, 4.0], "stratified")) and np.isnan(within_seed_se([3.0]))
    with pytest.raises(ValueError, match="unknown task design"):
        within_seed_se(y, "latin")


@pytest.mark.parametrize("f", [lambda v: 100 * v, lambda v: 100 * np.sin(3 * v)], ids=["linear", "curved"])
def test_stratified_se_matches_the_monte_carlo_variance(f):
    """4000 stratified samples of y = f(v) + noise (sd 1), v ~ U[0, 2] in 50 strata: the
    estimator's mean variance is within 10% of the variance of the stratified mean across the
    samples, and the random design's variance is over 50x larger."""
    rng = np.random.default_rng(0)
    n, reps = 50, 4000
    v = (np.arange(n) + rng.uniform(size=(reps, n))) / n * 2.0
    y = f(v) + rng.normal(size=(reps, n))
    true_var = y.mean(axis=1).var(ddof=1)
    est = np.mean([within_seed_se(row, "stratified") ** 2 for row in y])
    assert 0.9 * true_var <= est <= 1.1 * true_var, (est, true_var)
    v_iid = rng.uniform(0, 2, size=(reps, n))
    assert (f(v_iid) + rng.normal(size=(reps, n))).mean(axis=1).var(ddof=1) > 50 * true_var


def _one_line_error(capsys, code: int, needle: str) -> None:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and needle in err, err


def test_stratified_design_needs_one_scalar_task_parameter(tmp_path, capsys):
    common = ["--seed", "1", "--quiet", "--budget", "16000", "--set", "sampler.horizon=20"]
    out = tmp_path / "hopper"
    _one_line_error(capsys, main(["train", "--env", "rlbench/HopperRandParams-v0", "--algo", "drs-ppo", "--out", str(out),
                                  "--set", "eval.task_design=stratified", *common]), "eval.task_design")
    _one_line_error(capsys, main(["train", "--env", CHEETAH, "--algo", "drs-ppo", "--out", str(out),
                                  "--set", "eval.task_design=latin", *common]), "task_design")
    assert not out.exists()


def _reevaluate():
    spec = importlib.util.spec_from_file_location("reevaluate", ROOT / "scripts" / "reevaluate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


EXP = """name: t
envs: [rlbench/HalfCheetahRandVel-v0]
algos: [drs-ppo, promp]
seeds: [1]
budget: {budget}
n_checkpoints: 2
pairs: [drs-ppo:promp]
overrides:
  all:
    sampler: {{meta_batch_size: 2, episodes_per_task: 2, horizon: 10, n_workers: 1}}
    eval: {{n_tasks: {n_tasks}, n_updates: 1, episodes_per_task: 2{design}}}
"""


def _exp(tmp_path: Path, name: str, budget: int = 160, n_tasks: int = 3, design: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(EXP.format(budget=budget, n_tasks=n_tasks, design=f", task_design: {design}" if design else ""))
    return path


def test_reevaluate_equals_training_with_the_new_settings(tmp_path, capsys):
    """Runs trained with 3 random tasks, re-evaluated with 4 stratified ones, give exactly the
    evaluation tables (and pairing records) of runs trained from scratch with the new settings;
    bad input is a one-line error with exit status 2 that writes nothing."""
    mod = _reevaluate()
    old, new = _exp(tmp_path, "old"), _exp(tmp_path, "new", n_tasks=4, design="stratified")
    run_experiment(load_experiment(str(old)), tmp_path / "a", quiet=True, compare=False)
    assert mod.main([str(new), str(tmp_path / "a"), str(tmp_path / "b"), "--env", CHEETAH]) == 0
    run_experiment(load_experiment(str(new)), tmp_path / "b", quiet=True, compare=False)
    run_experiment(load_experiment(str(new)), tmp_path / "fresh", quiet=True, compare=False)
    for cfg in experiment_run_configs(load_experiment(str(new))):
        b, fresh = run_dir_for(tmp_path / "b", cfg), run_dir_for(tmp_path / "fresh", cfg)
        tb, tf = pd.read_csv(b / store.EVAL_FILE), pd.read_csv(fresh / store.EVAL_FILE)
        assert tb["task"].nunique() == 4
        pd.testing.assert_frame_equal(tb, tf)
        mb, mf = store.read_meta(b), store.read_meta(fresh)
        assert mb[pairing.KEY] == mf[pairing.KEY] and mb["comparability"] == mf["comparability"]
        assert mb["reevaluated_from"]["eval"]["n_tasks"] == 3
        assert (run_dir_for(tmp_path / "a", cfg) / store.EVAL_FILE).exists()  # the source is untouched
    capsys.readouterr()
    # bad input: an existing destination run, a training setting changed, an unfinished run
    _one_line_error(capsys, mod.main([str(new), str(tmp_path / "a"), str(tmp_path / "b"), "--env", CHEETAH]), "exists")
    other = _exp(tmp_path, "other", budget=240, n_tasks=4)
    _one_line_error(capsys, mod.main([str(other), str(tmp_path / "a"), str(tmp_path / "c"), "--env", CHEETAH]), "budget")
    cfg = experiment_run_configs(load_experiment(str(old)))[0]
    store.update_meta(run_dir_for(tmp_path / "a", cfg), status="running")  # as a run killed mid-training
    _one_line_error(capsys, mod.main([str(new), str(tmp_path / "a"), str(tmp_path / "e"), "--env", CHEETAH]),
                    "has not finished")
    _one_line_error(capsys, mod.main([str(new), str(tmp_path / "a"), str(tmp_path / "e"), "--env", "rlbench/Nope-v0"]),
                    "not an environment")
    assert not (tmp_path / "c").exists() and not (tmp_path / "e").exists()


def test_task_design_is_in_the_comparability_record_only_when_stratified():
    """Runs made before the option existed (random tasks, no key) stay comparable with new
    random-design runs; a stratified run never compares equal to a random one."""
    from rlbench.presets import run_config
    from rlbench.runner import comparability

    rnd = comparability(run_config(CHEETAH, "drs-ppo", 1))
    strat = comparability(run_config(CHEETAH, "drs-ppo", 1, overrides={"eval": {"task_design": "stratified"}}))
    assert "task_design" not in rnd["eval"] and strat["eval"]["task_design"] == "stratified"
    assert {k: v for k, v in strat["eval"].items() if k != "task_design"} == rnd["eval"]
