"""``rlbench plan`` and ``rlbench status``: arithmetic against hand-computed values, the
calibration cache, run directories in every state (including a SIGKILLed and a failed run),
and bad input as one line with exit status 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from rlbench import config, plan, presets, status, store
from rlbench.cli import main
from rlbench.evaluator import evaluate_run
from rlbench.grid import run_dir_for, run_experiment
from rlbench.runner import prepare_run_dir, train
from rlbench.store import EXPERIMENT_FILE

ROOT = Path(__file__).resolve().parents[1]
PROJECTION = ROOT / "results" / "bench" / "iterations_projection.json"
TOY = "rlbench/PointGoal-v0"


def _one_line_error(capsys, code: int, needle: str) -> None:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert needle in err, err


# -- plan arithmetic -----------------------------------------------------------------------


def test_quick_plan_arithmetic_by_hand():
    p = plan.plan_experiment(presets.load_experiment("quick"), rates=None)
    g = {x["algo"]: x for x in p["groups"]}
    # quick: 800,000 steps per run; sampling unit 20 tasks x 10 episodes x 200 steps = 40,000.
    assert g["drs-ppo"]["iteration_steps"] == 40_000 and g["drs-ppo"]["iterations"] == 20
    assert g["promp"]["iteration_steps"] == 80_000 and g["promp"]["iterations"] == 10  # 1 inner step: 2 rounds
    for x in g.values():
        assert x["budget"] == 800_000 and x["runs"] == 3 and x["seeds"] == [1, 2, 3]
        assert x["unit"] == getattr(presets.run_config(x["env"], x["algo"], 1).sampler, "unit", "episodes")
        assert x["n_checkpoints"] == 5 and x["checkpoint_marks"] == [0, 200_000, 400_000, 600_000, 800_000]
        # 5 checkpoints x 10 test tasks x (5 updates + 1) x 5 episodes x 200 steps
        assert x["eval_steps_max"] == 5 * 10 * 6 * 5 * 200 == 300_000
    t = p["totals"]
    assert t["runs"] == 6 and t["training_steps_max"] == 4_800_000 and t["eval_steps_max"] == 1_800_000
    assert t["core_h"] is None and "time not projected" in p["summary"]


def test_paper_plan_arithmetic_and_projection_by_hand():
    rows = json.loads(PROJECTION.read_text())["rows"]
    p = plan.plan_experiment(presets.load_experiment("paper"), plan.rates_from_file(PROJECTION), cores=64)
    g = {(x["env"], x["algo"]): x for x in p["groups"]}
    assert len(g) == 32 and all(x["runs"] == 5 for x in g.values())
    loco, mw = "rlbench/HalfCheetahRandVel-v0", "rlbench/ML45-v0"
    # locomotion: 40 x 20 x 200 = 160,000 per unit, 320M; Meta-World: 20 x 10 x 150 = 30,000, 600M.
    assert g[(loco, "drs-trpo")]["iterations"] == 2000 and g[(loco, "trpo-maml")]["iterations"] == 1000
    assert g[(mw, "drs-ppo")]["iterations"] == 20_000 and g[(mw, "promp")]["iterations"] == 10_000
    assert g[(loco, "promp")]["checkpoint_marks"][1] == 16_000_000 and g[(mw, "promp")]["checkpoint_marks"][1] == 30_000_000
    assert g[(loco, "promp")]["eval_steps_max"] == 21 * 100 * 6 * 20 * 200 == 50_400_000
    assert g[(mw, "promp")]["eval_steps_max"] == 21 * 50 * 6 * 10 * 150 == 9_450_000
    t = p["totals"]
    assert t["runs"] == 160
    assert t["training_steps_max"] == 5 * 4 * (4 * 320_000_000 + 4 * 600_000_000)
    assert t["eval_steps_max"] == 5 * 4 * (4 * 50_400_000 + 4 * 9_450_000)
    # Time: steps / (steps per second per core), per core = measured steps/s / measured workers.
    core_h = 0.0
    for r in rows:
        x = g[(r["env"], r["algo"])]
        run_h = (x["budget"] / (r["steps_per_s"] / r["workers"]) + x["eval_steps_max"] / (r["sampling_steps_per_s"] / r["workers"])) / 3600
        assert x["run_core_h"] == pytest.approx(run_h, rel=1e-12)
        core_h += 5 * run_h
    assert t["core_h"] == pytest.approx(core_h, rel=1e-12)
    assert t["wall_h_on_cores"] == pytest.approx(core_h / 64, rel=1e-12)  # far above the longest single run
    assert t["wall_h_here"] == pytest.approx(core_h / plan.available_cores(), rel=1e-12)
    assert "160 runs" in p["summary"] and "on 64 cores" in p["summary"]


def test_steps_unit_iterations_are_exact():
    """With ``sampler.unit: steps`` a round costs exactly T x E x H steps, so a run takes
    exactly budget // iteration_steps iterations and that many times iteration_steps steps."""
    cfg = presets.run_config("rlbench/HalfCheetahRandVel-v0", "promp", 1, budget=1_000_000)

    def with_unit(unit):  # the config with sampler.unit set (whether or not SamplerConfig has the field yet)
        class Cfg:
            sampler = SimpleNamespace(**{**asdict(cfg.sampler), "unit": unit})

            def __getattr__(self, name):
                return getattr(cfg, name)

        return Cfg()

    a = plan.run_arithmetic(with_unit("steps"))
    assert a["unit"] == "steps" and a["iterations_exact"]
    assert a["iteration_steps"] == 2 * 40 * 20 * 200 and a["iterations"] == 3  # 1,000,000 // 320,000
    assert a["training_steps_max"] == 960_000 and a["eval_steps_exact"]
    b = plan.run_arithmetic(with_unit("episodes"))
    assert b["unit"] == "episodes" and not b["iterations_exact"] and b["training_steps_max"] == 1_000_000
    assert not b["eval_steps_exact"] and b["eval_steps_max"] == a["eval_steps_max"]  # same formula, a bound here


# -- calibration and its cache -------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory):
    """A calibration cache holding the smoke preset's four (env, algo) pairs, measured once."""
    cache = tmp_path_factory.mktemp("cache")
    rates = plan.calibrated_rates(presets.experiment_run_configs(presets.load_experiment("smoke")), cache, quiet=True)
    return cache, rates


def test_calibration_is_cached_by_machine_and_versions(smoke_cache, monkeypatch):
    cache, rates = smoke_cache
    assert set(rates) == {(TOY, a) for a in ("drs-ppo", "promp", "drs-trpo", "trpo-maml")}
    files = sorted((cache / "calibration").glob("*.json"))
    assert len(files) == 4
    m = json.loads(files[0].read_text())
    assert m["key"]["cpu"] == store.cpu_model() and m["key"]["cores"] == plan.available_cores()
    assert m["key"]["packages"] == store.versions()
    # the smoke sampler unit is 10 x 4 x 20 = 800 steps and nothing ends early on the toy
    assert rates[(TOY, "drs-ppo")].steps_per_iteration == 800 and rates[(TOY, "promp")].steps_per_iteration == 1600
    assert rates[(TOY, "drs-ppo")].cores == 1  # smoke runs use one sampler worker

    def boom(cfg, **kw):
        raise AssertionError("calibrated although cached")

    monkeypatch.setattr(plan, "calibrate", boom)
    again = plan.calibrated_rates(presets.experiment_run_configs(presets.load_experiment("smoke")), cache, quiet=True)
    assert again[(TOY, "promp")].steps_per_core_s == rates[(TOY, "promp")].steps_per_core_s
    # another package version (or machine) is another key: measured again
    measured = []
    monkeypatch.setattr(plan, "calibrate", lambda cfg, **kw: measured.append(cfg.algo) or {
        **json.loads(files[0].read_text()), "algo": cfg.algo})
    monkeypatch.setattr(store, "versions", lambda: {"torch": "0.0-other"})
    plan.calibrated_rates(presets.experiment_run_configs(presets.load_experiment("smoke")), cache, quiet=True)
    assert sorted(measured) == ["drs-ppo", "drs-trpo", "promp", "trpo-maml"]


def test_disk_estimate_matches_a_real_run_directory(smoke_cache, tmp_path):
    _, rates = smoke_cache
    smoke = presets.load_experiment("smoke")
    exp = config.replace(smoke, name="one", algos=("promp",), seeds=(1,))
    p = plan.plan_experiment(exp, rates)
    run_experiment(exp, tmp_path, quiet=True, compare=False)
    run = tmp_path / "rlbench_PointGoal-v0" / "promp" / "seed_1"
    real = {p_.relative_to(run).as_posix(): p_.stat().st_size for p_ in run.rglob("*") if p_.is_file()}
    est = p["groups"][0]["disk_bytes"]
    # checkpoints and training state: torch.save of the real shapes, so exact
    assert est["checkpoints"] == sum(v for k, v in real.items() if k.startswith("checkpoints/"))
    assert est["state"] == real["state.pt"]
    assert est["total"] == pytest.approx(sum(real.values()), rel=0.15)
    assert est["metrics"] == pytest.approx(real["metrics.jsonl"], rel=0.15)


def test_plan_command_table_and_json(smoke_cache, capsys):
    cache, _ = smoke_cache
    assert main(["plan", "smoke", "--cache-dir", str(cache), "--cores", "8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["env", "algo", "runs"]
    assert "plan smoke: 8 runs, 256k training" in out and "on 8 cores" in out
    assert main(["plan", "smoke", "--cache-dir", str(cache), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["runs"] == 8 and data["totals"]["training_steps_max"] == 8 * 32_000
    assert data["totals"]["eval_steps_max"] == 8 * 3 * 4 * 3 * 4 * 20


def test_run_prints_the_summary_and_refuses_above_the_threshold(smoke_cache, tmp_path, monkeypatch, capsys):
    cache, _ = smoke_cache
    monkeypatch.setenv("RLBENCH_CACHE_DIR", str(cache))
    out = tmp_path / "x"

    def refused(args, needle):
        assert main(args) == 2
        summary, error = capsys.readouterr().err.strip().splitlines()  # the plan's summary, then one error line
        assert summary.startswith("plan smoke: 8 runs, 256k training") and "here (" in summary
        assert error.startswith("rlbench: error: smoke is projected at") and needle in error

    refused(["run", "smoke", "--out", str(out), "--max-hours", "1e-9"], "above the 1e-09 h threshold")
    assert not out.exists()  # nothing started
    monkeypatch.setenv("RLBENCH_MAX_HOURS", "1e-9")
    refused(["run", "smoke", "--out", str(out)], "--yes")
    assert not out.exists()
    monkeypatch.delenv("RLBENCH_MAX_HOURS")
    from rlbench.commands.plan_cmd import DEFAULT_MAX_HOURS, preflight

    preflight(presets.load_experiment("smoke"), yes=False, max_hours=None)  # far below the default
    assert capsys.readouterr().err.startswith("plan smoke: 8 runs")
    assert DEFAULT_MAX_HOURS >= 24
    preflight(presets.load_experiment("smoke"), yes=True, max_hours=1e-9)  # --yes: no refusal
    capsys.readouterr()
    # --yes with nothing cached: no calibration, the summary says time is not projected
    monkeypatch.setenv("RLBENCH_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(plan, "calibrate", lambda cfg, **kw: pytest.fail("calibrated under --yes"))
    preflight(presets.load_experiment("smoke"), yes=True, max_hours=1e-9)
    assert "time not projected" in capsys.readouterr().err


def test_plan_bad_input(capsys, tmp_path):
    _one_line_error(capsys, main(["plan", "nosuch"]), "unknown experiment preset")
    _one_line_error(capsys, main(["plan", "smoke", "--from", str(tmp_path / "none.json")]), "projection file not found")
    partial = tmp_path / "p.json"
    partial.write_text(json.dumps({"rows": [{"env": TOY, "algo": "promp", "steps_per_s": 1000.0, "workers": 1}]}))
    _one_line_error(capsys, main(["plan", "smoke", "--from", str(partial)]), f"no measurement for {TOY}:drs-ppo")
    (tmp_path / "bad.json").write_text("{")
    _one_line_error(capsys, main(["plan", "smoke", "--from", str(tmp_path / "bad.json")]), "not a readable JSON")


# -- status --------------------------------------------------------------------------------


def _experiment(tmp_path: Path):
    """Toy grid: 4 algorithms x seeds 1, 2; drs-trpo gets a long budget (to be killed)."""
    data = {
        "name": "states", "envs": [TOY], "algos": ["drs-ppo", "promp", "drs-trpo", "trpo-maml"], "seeds": [1, 2], "budget": 8000,
        "n_checkpoints": 3, "pairs": [],
        "overrides": {"all": {"sampler": {"meta_batch_size": 10, "episodes_per_task": 4, "n_workers": 1},
                              "eval": {"n_tasks": 4, "n_updates": 2, "episodes_per_task": 4}},
                      "drs-trpo": {"budget": 100_000_000}},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    exp = presets.load_experiment(str(path))
    out = tmp_path / "grid"
    out.mkdir()
    (out / EXPERIMENT_FILE).write_text(yaml.safe_dump(config.to_dict(exp), sort_keys=False))
    cfgs = {(c.algo, c.seed): c for c in presets.experiment_run_configs(exp)}
    return path, out, cfgs


def _kill_mid_run(exp_path: Path, run: Path) -> None:
    """Start ``rlbench train`` on drs-trpo seed 1 and SIGKILL it after a few iterations."""
    cmd = [sys.executable, "-m", "rlbench.cli", "train", "--env", TOY, "--algo", "drs-trpo", "--seed", "1",
           "--preset", str(exp_path), "--out", str(run), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if (run / store.META_FILE).exists() and store.read_meta(run).get("iterations", 0) >= 3:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_status_of_every_state(tmp_path, capsys):
    exp_path, out, cfgs = _experiment(tmp_path)
    d = {k: run_dir_for(out, c) for k, c in cfgs.items()}
    train(cfgs[("drs-ppo", 1)], d[("drs-ppo", 1)], quiet=True)
    evaluate_run(d[("drs-ppo", 1)], quiet=True)  # finished
    train(cfgs[("drs-ppo", 2)], d[("drs-ppo", 2)], quiet=True)  # trained, not evaluated
    train(cfgs[("promp", 1)], d[("promp", 1)], quiet=True)
    # what the runner writes when an iteration produces non-finite values
    store.update_meta(d[("promp", 1)], status="failed", error="non-finite values at iteration 5: ['train/outer_loss']")
    prepare_run_dir(cfgs[("drs-trpo", 2)], d[("drs-trpo", 2)], resume=False)  # created, no iteration yet
    _kill_mid_run(exp_path, d[("drs-trpo", 1)])
    with open(d[("drs-trpo", 1)] / store.METRICS_FILE, "a") as f:
        f.write('{"iteration": 999, "env_ste')  # as if killed in the middle of appending a row
    train(cfgs[("trpo-maml", 1)], d[("trpo-maml", 1)], quiet=True)
    evaluate_run(d[("trpo-maml", 1)], quiet=True)
    # as if killed while evaluating the last checkpoint
    store.eval_part_path(d[("trpo-maml", 1)], 2).unlink()
    (d[("trpo-maml", 1)] / store.EVAL_FILE).unlink()
    # promp seed 2 and trpo-maml seed 2: never started

    now = time.time()
    res = status.experiment_status(out, now=now, stale_after=3600)
    st = {(r["algo"], r["seed"]): r for r in res["runs"]}
    assert st[("drs-ppo", 1)]["state"] == "finished" and st[("drs-ppo", 1)]["evaluated"] == 3
    assert st[("drs-ppo", 1)]["budget_used"] == 8000 and st[("drs-ppo", 1)]["checkpoints"] == 3
    assert st[("drs-ppo", 2)]["state"] == "trained" and st[("drs-ppo", 2)]["evaluated"] == 0
    assert st[("promp", 1)]["state"] == "failed" and st[("promp", 1)]["error"].startswith("non-finite values at iteration 5")
    assert st[("promp", 1)]["budget_used"] == 5 * 1600 and st[("promp", 1)]["eta_s"] is None
    assert st[("promp", 2)]["state"] == "not started" and st[("promp", 2)]["budget_used"] == 0
    assert st[("drs-trpo", 2)]["state"] == "created"
    killed = st[("drs-trpo", 1)]
    meta = store.read_meta(d[("drs-trpo", 1)])
    assert meta["status"] == "running"  # really killed, not finished
    assert killed["state"] == "running" and killed["budget_used"] == meta["budget_used"] >= 3 * 800
    assert killed["steps_per_s"] > 0 and killed["eta_s"] > 0  # rate from its complete metrics rows
    ev = st[("trpo-maml", 1)]
    assert ev["state"] == "evaluating" and ev["evaluated"] == 2 and ev["checkpoints"] == 3
    parts = [store.eval_part_path(d[("trpo-maml", 1)], i).stat().st_mtime for i in (0, 1)]
    assert ev["eta_s"] == pytest.approx(parts[1] - parts[0])  # one checkpoint left, at the pace of the last one
    assert res["summary"]["states"] == {"not started": 2, "created": 1, "running": 1, "trained": 1, "evaluating": 1,
                                        "finished": 1, "failed": 1}
    # two hours later with nothing written, the killed run (and the created one) are stale
    later = status.experiment_status(out, now=now + 7200, stale_after=3600)
    lt = {(r["algo"], r["seed"]): r for r in later["runs"]}
    assert lt[("drs-trpo", 1)]["state"] == "stale" and lt[("drs-trpo", 1)]["was"] == "running"
    assert lt[("drs-trpo", 2)]["state"] == "stale" and lt[("drs-trpo", 2)]["was"] == "created"
    assert lt[("drs-ppo", 2)]["state"] == "trained"  # waits for evaluation; not in progress by itself
    assert lt[("trpo-maml", 1)]["state"] == "stale" and lt[("trpo-maml", 1)]["was"] == "evaluating"
    assert lt[("drs-ppo", 1)]["state"] == "finished" and lt[("promp", 1)]["state"] == "failed"
    assert lt[("promp", 2)]["state"] == "not started"
    # status wrote nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["status", str(out), "--stale-after", "3600"]) == 0
    text = capsys.readouterr().out
    assert "non-finite values at iteration 5" in text and "states: 8 runs" in text
    assert main(["status", str(d[("drs-trpo", 1)]), "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["summary"]["runs"] == 1 and one["runs"][0]["algo"] == "drs-trpo"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_eta_from_the_runs_own_rate(tmp_path):
    _, out, cfgs = _experiment(tmp_path)
    cfg = cfgs[("drs-ppo", 1)]  # budget 8000, 800 steps per iteration, 3 checkpoints
    run = run_dir_for(out, cfg)
    prepare_run_dir(cfg, run, resume=False)
    store.update_meta(run, status="running", budget_used=2400, iterations=3,
                      checkpoints=[{"index": 0, "budget_mark": 0, "env_steps": 0, "iteration": 0}])
    rows = [{"iteration": i + 1, "env_steps": 800 * (i + 1), "time/iteration_s": s} for i, s in enumerate([5.0, 0.1, 0.3])]
    store.write_text(run / store.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    r = status.run_status(run, cfg)
    # rate over the window: (2400 - 800) steps in 0.1 + 0.3 s = 4000 steps/s (the first row's time is before its steps)
    assert r["steps_per_s"] == pytest.approx(4000.0)
    # training left: 5600 steps = 7 whole iterations -> 1.4 s; evaluation: 3 checkpoints x
    # 4 tasks x 3 rounds x 4 episodes x 20 steps = 3 x 960 steps at 4000 steps/s -> 0.72 s
    assert r["eta_s"] == pytest.approx(1.4 + 0.72)


def test_status_bad_input(tmp_path, capsys):
    _one_line_error(capsys, main(["status", str(tmp_path / "nope")]), "does not exist")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    _one_line_error(capsys, main(["status", str(tmp_path / "junk")]), "neither an experiment directory")
    with pytest.raises(SystemExit) as e:
        main(["status", str(tmp_path), "--stale-after", "-1"])
    assert e.value.code == 2
