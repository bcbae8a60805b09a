"""The runner: equal budgets, shared checkpoint marks, determinism, crash-safe resume, bad input."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from procs import exit_with_main, run_forked, wait_exited

from rlbench import presets, store
from rlbench.cli import main
from rlbench.evaluator import PersistentAdam, evaluate_run
from rlbench.runner import train

ENV = "rlbench/PointGoal-v0"
SMALL = {
    "sampler": {"meta_batch_size": 5, "episodes_per_task": 4, "n_workers": 1},
    "n_checkpoints": 3,
    "eval": {"n_tasks": 3, "n_updates": 2, "episodes_per_task": 3},
}
UNIT = 5 * 4 * 20  # steps of one sampling unit of SMALL (PointGoal never terminates early)
SET_ARGS = [
    "--set", "sampler.meta_batch_size=5", "--set", "sampler.episodes_per_task=4", "--set", "n_checkpoints=3",
    "--set", "eval.n_tasks=3", "--set", "eval.n_updates=2", "--set", "eval.episodes_per_task=3",
]


def small_cfg(algo: str, seed: int = 1, budget: int = 12 * UNIT, **extra):
    over = {**SMALL, **extra}
    return presets.run_config(ENV, algo, seed, budget, over)


def metrics_without_time(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / store.METRICS_FILE).read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def checkpoints(run_dir: Path) -> list[dict]:
    return [store.load_torch(p) for p in sorted((run_dir / store.CKPT_DIR).glob("ckpt_*.pt"))]


@pytest.mark.parametrize("budget_units", [12, 13])
def test_budget_is_exact_and_equal_across_agents(tmp_path, budget_units):
    """DRS pays 1 unit per iteration, MAML 2: both stop where the next iteration no longer fits,
    never exceed the cap, and checkpoint at the same env-step marks."""
    budget = budget_units * UNIT
    used = {}
    for algo in ("drs-ppo", "promp", "drs-trpo", "trpo-maml"):
        meta = train(small_cfg(algo, budget=budget), tmp_path / algo, quiet=True)
        rounds = 2 if algo in ("promp", "trpo-maml") else 1
        expected_iters = budget // (rounds * UNIT)
        assert meta["iterations"] == expected_iters
        assert meta["budget_used"] == expected_iters * rounds * UNIT <= budget
        used[algo] = meta
        assert [c["budget_mark"] for c in meta["checkpoints"]] == [0, budget // 2, 2 * (budget // 2)]
        # each checkpoint is the first iteration boundary at or after its mark
        for c in meta["checkpoints"][:-1]:
            assert c["env_steps"] >= c["budget_mark"]
            assert c["env_steps"] - c["budget_mark"] < rounds * UNIT
    # checkpoint 0 is the same initial policy for every algorithm of a seed
    p0 = [checkpoints(tmp_path / a)[0]["params"] for a in used]
    for p in p0[1:]:
        assert all(torch.equal(p[k], p0[0][k]) for k in p)


def test_same_seed_same_results_whatever_the_workers(tmp_path):
    a = train(small_cfg("promp", seed=4), tmp_path / "a", quiet=True)
    cfg2 = small_cfg("promp", seed=4, sampler={**SMALL["sampler"], "n_workers": 2})
    b = train(cfg2, tmp_path / "b", quiet=True)
    assert a["budget_used"] == b["budget_used"]
    assert metrics_without_time(tmp_path / "a") == metrics_without_time(tmp_path / "b")
    for ca, cb in zip(checkpoints(tmp_path / "a"), checkpoints(tmp_path / "b")):
        assert all(torch.equal(ca["params"][k], cb["params"][k]) for k in ca["params"])
    ea = evaluate_run(tmp_path / "a", quiet=True)
    eb = evaluate_run(tmp_path / "b", n_workers=2, quiet=True)
    pd.testing.assert_frame_equal(ea, eb)


def test_evaluation_is_the_same_for_paired_agents_at_checkpoint_0(tmp_path):
    """DRS+PPO is adapted exactly like ProMP (and DRS+TRPO like TRPO-MAML): from the shared
    initial policy, on the same test tasks, their evaluation rows at checkpoint 0 coincide."""
    tables = {}
    for algo in ("drs-ppo", "promp", "drs-trpo", "trpo-maml"):
        train(small_cfg(algo, seed=2, budget=4 * UNIT), tmp_path / algo, quiet=True)
        t = evaluate_run(tmp_path / algo, quiet=True)
        tables[algo] = t[t.checkpoint == 0].drop(columns=["algo"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(tables["drs-ppo"], tables["promp"])
    pd.testing.assert_frame_equal(tables["drs-trpo"], tables["trpo-maml"])


def test_evaluation_table_layout(tmp_path):
    cfg = small_cfg("drs-ppo", seed=3, budget=4 * UNIT)
    train(cfg, tmp_path / "r", quiet=True)
    table = evaluate_run(tmp_path / "r", quiet=True)
    ev = cfg.eval
    assert len(table) == cfg.n_checkpoints * (ev.n_updates + 1) * ev.n_tasks
    assert set(table.test_update) == set(range(ev.n_updates + 1))
    meta = store.read_meta(tmp_path / "r")
    # evaluation steps are recorded separately from the training budget
    assert meta["eval_steps"] == cfg.n_checkpoints * (ev.n_updates + 1) * ev.n_tasks * ev.episodes_per_task * cfg.sampler.horizon
    assert meta["budget_used"] == 4 * UNIT
    # the CPU model is recorded (float32 results are bit-identical only on the same model)
    model = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
    assert meta["cpu"] == model[0] != ""
    # ... and the vector instruction set torch's kernels dispatch to (the model name can be generic)
    assert meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "VSX", "ZVECTOR", "AVX2", "AVX512", "SVE256")


def test_persistent_adam_matches_torch_adam():
    """GS-compat evaluation: our functional Adam with persisting moments equals torch's Adam."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64)
    ref = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.01, eps=1e-8)
    adam = PersistentAdam(0.01)
    cur = {"w": x.clone()}
    for _ in range(5):
        g = torch.randn(3, 4, dtype=torch.float64)
        ref.grad = g.clone()
        opt.step()
        cur = adam.step(cur, {"w": g})
        assert torch.allclose(cur["w"], ref.detach(), atol=1e-12)



def _kill_at_iteration(kill_at: int, pid_file: str, argv: list[str]) -> None:
    """In a forked child: the CLI, which SIGKILLs itself at a fixed point: the moment it saves
    the state of iteration ``kill_at`` (after that iteration's metrics line and checkpoints were
    written), after recording its sampler workers' pids in ``pid_file``. No polling, so no race."""
    import multiprocessing as mp
    import os

    real_save = store.save_torch

    def save_torch(path, obj):
        if str(path).endswith(store.STATE_FILE) and obj["iteration"] == kill_at:
            Path(pid_file).write_text(" ".join(str(p.pid) for p in mp.active_children()))
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(path, obj)

    store.save_torch = save_torch
    exit_with_main(argv)


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    base = ["train", "--env", ENV, "--algo", "promp", "--seed", "5", "--budget", str(16 * UNIT), "--workers", "2", "--quiet", *SET_ARGS]
    assert main([*base, "--out", str(tmp_path / "ref")]) == 0  # in this process: only the killed run needs its own
    run, pids = tmp_path / "killed", tmp_path / "pids"
    assert run_forked(_kill_at_iteration, 4, str(pids), [*base, "--out", str(run)]) == -signal.SIGKILL
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2  # the sampler's worker processes
    # orphaned workers notice their parent is gone and exit (no processes left behind)
    assert wait_exited(workers, timeout=15) == []
    meta = store.read_meta(run)
    assert meta["status"] == "running" and meta["iterations"] == 3  # really interrupted, at the chosen point
    assert len(metrics_without_time(run)) == 4  # the killed iteration's line is there; resume drops it
    assert main([*base, "--out", str(run), "--resume"]) == 0
    assert store.read_meta(run)["status"] == "finished"
    assert metrics_without_time(run) == metrics_without_time(tmp_path / "ref")
    for a, b in zip(checkpoints(run), checkpoints(tmp_path / "ref"), strict=True):
        assert a["env_steps"] == b["env_steps"]
        assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])


def _assert_one_line_error(capsys, code: int, needle: str) -> None:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert needle in err, err


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    out = str(tmp_path / "r")
    common = ["--seed", "1", "--out", out, "--quiet"]
    _assert_one_line_error(capsys, main(["train", "--env", "rlbench/Nope-v0", "--algo", "promp", *common]), "unknown environment")
    with pytest.raises(SystemExit) as e:
        main(["train", "--env", ENV, "--algo", "maml", *common])
    assert e.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train", "--env", ENV, "--algo", "promp", "--budget", "-5", *common])
    assert e.value.code == 2
    capsys.readouterr()
    _assert_one_line_error(capsys, main(["train", "--env", ENV, "--algo", "promp", "--budget", "100", *common]), "smaller than one")
    _assert_one_line_error(capsys, main(["train", "--env", ENV, "--algo", "promp", "--set", "algo_cfg.inner_lr=fast", *common]), "algo_cfg.inner_lr")
    _assert_one_line_error(capsys, main(["train", "--env", ENV, "--algo", "promp", "--set", "algo_cfg.inner_rl=0.1", *common]), "inner_rl")
    _assert_one_line_error(capsys, main(["evaluate", str(tmp_path)]), "not an rlbench run directory")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nenvs: [a\n")
    _assert_one_line_error(capsys, main(["run", str(bad), "--out", str(tmp_path / "x")]), "malformed YAML")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("name: x\nenvs: [rlbench/PointGoal-v0]\nalgos: [drs-ppo]\nseeds: [1]\nbudget: lots\n")
    _assert_one_line_error(capsys, main(["run", str(wrong), "--out", str(tmp_path / "x")]), "budget")
    assert not (tmp_path / "x").exists() and not Path(out).exists()


def test_existing_results_are_never_overwritten(tmp_path, capsys):
    run = tmp_path / "r"
    args = ["train", "--env", ENV, "--algo", "drs-ppo", "--seed", "1", "--budget", str(4 * UNIT), "--out", str(run), "--quiet", *SET_ARGS]
    assert main(args) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _assert_one_line_error(capsys, main(args), "--resume")
    _assert_one_line_error(capsys, main([*args, "--resume", "--set", "algo_cfg.learning_rate=0.5"]), "algo_cfg.learning_rate")
    _assert_one_line_error(capsys, main([*args, "--resume", "--set", "advantage.gamma=0.9"]), "config differs in advantage.gamma")
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.parametrize("where", ["parameters", "metrics train/loss"])
def test_non_finite_run_stops_and_keeps_last_good_state(tmp_path, capsys, monkeypatch, where):
    """A NaN injected at iteration 3 (into the parameters, or one metric): the run stops with
    exit 1, and the saved state, metrics and checkpoints are exactly those of iteration 2."""
    from rlbench.trainer import Trainer

    real_iterate = Trainer.iterate

    def iterate(self):
        metrics = real_iterate(self)
        if self.iteration == 3:
            if where == "parameters":
                with torch.no_grad():
                    next(iter(self.agent.params.values())).view(-1)[0] = float("nan")
            else:
                assert isinstance(metrics["train/loss"], float)
                metrics["train/loss"] = float("nan")
        return metrics

    monkeypatch.setattr(Trainer, "iterate", iterate)
    def args(out):  # a checkpoint mark at every sampling unit (= every DRS iteration)
        return ["train", "--env", ENV, "--algo", "drs-ppo", "--seed", "1", "--budget", str(12 * UNIT), "--out", str(out), "--quiet",
                *SET_ARGS, "--set", "n_checkpoints=13"]

    run = tmp_path / "r"
    code = main(args(run))
    assert code == 1
    err = capsys.readouterr().err
    assert err.strip().endswith(f"non-finite {where} at iteration 3; kept the last good state (iteration 2)"), err
    meta = store.read_meta(run)
    assert meta["status"] == "failed"
    assert meta["error"] == f"non-finite values at iteration 3: {['train/loss'] if 'metrics' in where else 'parameters'}"
    assert meta["iterations"] == 2
    state = store.load_torch(run / store.STATE_FILE)
    assert state["iteration"] == 2
    assert all(bool(v.isfinite().all()) for v in state["agent"]["params"].values())
    assert [r["iteration"] for r in metrics_without_time(run)] == [1, 2]
    saved = checkpoints(run)
    assert [c["iteration"] for c in saved] == [0, 1, 2]  # one checkpoint per unit; none of iteration 3
    for c in saved:
        assert all(bool(v.isfinite().all()) for v in c["params"].values())
    # without the fault, the same run goes on from the kept state to the same iterations
    monkeypatch.setattr(Trainer, "iterate", real_iterate)
    ref = tmp_path / "ref"
    assert main([*args(ref), "--max-iterations", "2"]) == 0
    assert metrics_without_time(ref) == metrics_without_time(run)


def test_run_grid_skips_finished_work(tmp_path):
    from rlbench.grid import run_experiment
    from rlbench.settings import ExperimentConfig

    exp = ExperimentConfig(name="t", envs=(ENV,), algos=("drs-ppo", "promp"), seeds=(1, 2), budget=4 * UNIT, n_checkpoints=3,
                           pairs=("drs-ppo:promp",), overrides={"all": SMALL})
    s1 = run_experiment(exp, tmp_path, quiet=True)
    assert len(s1["ran"]) == 4
    assert any(k.endswith("contour_png") for k in s1["comparison"])
    s2 = run_experiment(exp, tmp_path, quiet=True)
    assert s2["ran"] == []


@pytest.mark.ray
def test_ray_grid_matches_local(tmp_path, monkeypatch, request):
    pytest.importorskip("ray")
    import secrets
    import shutil
    import tempfile

    # A local Ray instance turns token authentication on (setting RAY_AUTH_MODE itself) and would
    # write ~/.ray/auth_token and /tmp/ray: give it a token in the environment and a temp dir of
    # its own (short path: Ray's sockets live there), all undone after the test.
    monkeypatch.setenv("RAY_AUTH_MODE", "")
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    ray_tmp = tempfile.mkdtemp(prefix="rlray")
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    from rlbench.grid import run_experiment
    from rlbench.settings import ExperimentConfig

    exp = ExperimentConfig(name="t", envs=(ENV,), algos=("drs-ppo", "promp"), seeds=(1,), budget=4 * UNIT, n_checkpoints=3,
                           pairs=("drs-ppo:promp",), overrides={"all": SMALL})
    run_experiment(exp, tmp_path / "local", quiet=True, compare=False)
    run_experiment(exp, tmp_path / "ray", ray_address="local", quiet=True, compare=False)
    for algo in exp.algos:
        a = pd.read_csv(tmp_path / "local" / "rlbench_PointGoal-v0" / algo / "seed_1" / store.EVAL_FILE)
        b = pd.read_csv(tmp_path / "ray" / "rlbench_PointGoal-v0" / algo / "seed_1" / store.EVAL_FILE)
        pd.testing.assert_frame_equal(a, b)
