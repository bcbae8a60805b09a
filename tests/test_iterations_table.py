"""scripts/iterations_table.py prints the README's iteration and projection tables from a
bench_iterations.py JSON file (values checked against a hand-written file)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("iterations_table", ROOT / "scripts" / "iterations_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tables_from_a_hand_written_file(tmp_path, capsys):
    row = {"env": "rlbench/HalfCheetahRandVel-v0", "algo": "promp", "impl": "fused", "iteration_s": 18.115, "sampling_s": 13.659,
           "update_s": 4.456, "update_share": 0.24598, "peak_rss_mb": {"self": 1072.1, "children": 238.3}, "loadavg": [0.88, 1.26]}
    proj = {"per_run": {"rlbench/HalfCheetahRandVel-v0:promp": {"run_wall_h": 18.64, "run_core_h": 37.2, "steps_per_s_per_core": 2388.4}},
            "seeds": 5, "grid_core_h_measured_pairs": 7722, "grid_wall_h_on_64_cores": 120.7}
    f = tmp_path / "b.json"
    f.write_text(json.dumps({"command": "x", "rows": [row], "projection": proj}))
    assert _script().main([str(f), "--projection"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| HalfCheetahRandVel-v0 | promp | fused | 18.1 | 13.7 | 4.46 | 24.6% | 1072 + 238 | 0.9, 1.3 |"
    assert len(out[0].split("|")) == len(out[1].split("|")) == len(out[2].split("|"))
    assert "| HalfCheetahRandVel-v0:promp | 18.6 | 37.2 | 2388 |" in out
    assert out[-1] == "Grid (5 seeds per measured (environment, algorithm)): 7,722 core-hours, 120.7 h on 64 cores."


def test_not_a_bench_file_is_one_line_exit_2(tmp_path, capsys):
    f = tmp_path / "b.json"
    f.write_text("[1, 2]")
    assert _script().main([str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a bench_iterations.py output" in err


def test_project_metaworld_paths_replace_swaps_rows_of_the_same_env_and_algo(tmp_path, capsys):
    """--replace: the committed idle locomotion rows replace the older ones (one row per
    (env, algo), none lost), Meta-World rows are still projected, and the projection is
    bench_iterations.project of the output rows."""
    spec = importlib.util.spec_from_file_location("project_metaworld_paths", ROOT / "scripts" / "project_metaworld_paths.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bench = ROOT / "results" / "bench"
    new = json.loads((bench / "iterations_projection_locomotion_idle.json").read_text())["rows"]
    base = json.loads((bench / "iterations_projection.json").read_text())["rows"]
    out = tmp_path / "p.json"
    assert mod.main(["--iterations", str(bench / "iterations_projection.json"), "--paths",
                     str(bench / "metaworld_paths_ml1_protocol_batch.json"), str(bench / "metaworld_paths_ml10_vectorised_idle.json"),
                     "--replace", str(bench / "iterations_projection_locomotion_idle.json"), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    keys = [(r["env"], r["algo"]) for r in rows]
    assert len(keys) == len(set(keys)) == len({(r["env"], r["algo"]) for r in base} | {(r["env"], r["algo"]) for r in new})
    by_key = dict(zip(keys, rows))
    for r in new:
        assert by_key[(r["env"], r["algo"])] == r
    mw = [r for r in rows if "ML" in r["env"]]
    assert mw and all(r["backend"] == "metaworld-batched" and r["sampling_speedup"] > 1 for r in mw)
    assert json.loads(out.read_text())["projection"] == mod.project(rows, 5, 64)
    # a file that is not a bench output: one line, exit 2, nothing written
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    capsys.readouterr()
    assert mod.main(["--iterations", str(bench / "iterations_projection.json"), "--paths", str(bench / "metaworld_paths_ml1_protocol_batch.json"),
                     "--replace", str(bad), "--out", str(tmp_path / "q.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "project_metaworld_paths: error:" in err
    assert not (tmp_path / "q.json").exists()


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sampler_table_from_a_hand_written_file(tmp_path, capsys):
    """scripts/sampler_table.py: one row per sampler line with a replay ratio, values as in the
    file (the replay at the line's thread count), lines without one skipped."""
    ratios = {"c_over_replay_same_threads": 0.8561, "c_over_replay_same_threads_repeats": {"per_repeat": [0.84, 0.876], "median": 0.858},
              "c_over_replay_per_cpu_s_same_threads": 0.9171}
    env = {"a_physics_limit": {"replay_1thread": 31158.0, "replay_2threads": 59177.2},
           "c_sampler": {"mujoco-batched/2": {"steps_per_s": 50629.4}, "gym/2": {"steps_per_s": 20000.0}},
           "ratios": {"mujoco-batched/2": ratios, "gym/2": {"c_over_b_wrapped": 2.0}}}
    result = {"envs": {"rlbench/HalfCheetahRandVel-v0": env, "rlbench/ML1-Push-v0": {"batch": {}}},
              "run": {"wall_s": 130.9, "cpu_share_of_machine": 0.59, "load_average_start": [1.84, 1.7, 1.3], "load_average_end": [1.28, 1, 1]},
              "machine": {"physics_loop": "c"}}
    f = tmp_path / "s.json"
    f.write_text(json.dumps(result))
    assert _load("sampler_table").main([str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| HalfCheetahRandVel | mujoco-batched/2 | 50,629 | 59,177 | 0.856 | 0.858 [0.84 0.88] | 0.917 |"
    assert len(out) == 5 and len(out[0].split("|")) == len(out[1].split("|")) == len(out[2].split("|"))  # gym/2: no replay ratio
    assert out[4] == "Run: 131 s, this process 0.59 of the machine, load average 1.84 -> 1.28; physics loop: c."
    f.write_text(json.dumps({"envs": []}))
    assert _load("sampler_table").main([str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a readable scripts/bench_sampler.py output" in err
    # --pool: every per-repeat ratio of all the files, per (environment, line): 0.84 0.876 0.95 0.70 0.91
    ratios2 = {**ratios, "c_over_replay_same_threads_repeats": {"per_repeat": [0.95, 0.70, 0.91], "median": 0.91}}
    g = tmp_path / "t.json"
    g.write_text(json.dumps({**result, "envs": {"rlbench/HalfCheetahRandVel-v0": {**env, "ratios": {"mujoco-batched/2": ratios2}}}}))
    f.write_text(json.dumps(result))
    capsys.readouterr()
    assert _load("sampler_table").main(["--pool", str(f), str(g)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2:] == ["| HalfCheetahRandVel | mujoco-batched/2 | 5 | 0.876 | 0.700 | 0.950 |"]
    assert _load("sampler_table").main([str(f), str(g)]) == 2  # several files without --pool
    assert capsys.readouterr().err.strip() == "error: several files need --pool"


def test_update_benches_refuse_bad_arguments_in_one_line(tmp_path, monkeypatch, capsys):
    """bench_drs_trpo_fvp.py, bench_fvp_bound.py and bench_maml_update.py: an unknown --env, bad
    numbers and an iterations file without a TRPO-MAML fused row end with one line and exit
    status 2, before sampling anything; so does bench_sampler.py with an unknown --envs name."""
    for name, argv in (("bench_drs_trpo_fvp", ["--fraction", "0"]), ("bench_drs_trpo_fvp", ["--repeats", "0"]),
                       ("bench_fvp_bound", ["--threads", "0", "--iterations", "x.json"]), ("bench_drs_trpo_fvp", ["--env", "bogus"]),
                       ("bench_fvp_bound", ["--env", "bogus", "--iterations", "x.json"]), ("bench_maml_update", ["--env", "bogus"])):
        monkeypatch.setattr("sys.argv", [name, *argv])
        assert _load(name).main() == 2, (name, argv)
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    f = tmp_path / "it.json"
    f.write_text(json.dumps({"rows": [{"env": "rlbench/HalfCheetahRandVel-v0", "algo": "promp", "impl": "fused"}]}))
    monkeypatch.setattr("sys.argv", ["bench_fvp_bound", "--iterations", str(f)])
    assert _load("bench_fvp_bound").main() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no trpo-maml fused row" in err
    with pytest.raises(SystemExit) as e:
        _load("bench_sampler").main(["--envs", "HalfCheetahRandVel", "bogus"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "unknown environment 'rlbench/bogus-v0'" in err
    # an --out that cannot be written is refused before anything is measured, not after
    missing = str(tmp_path / "missing" / "o.json")
    for name, argv in (("bench_maml_update", ["--out", missing]), ("bench_drs_trpo_fvp", ["--out", str(tmp_path)]),
                       ("bench_fvp_bound", ["--iterations", "x.json", "--out", missing]), ("bench_closed_form", ["--out", missing])):
        monkeypatch.setattr("sys.argv", [name, *argv])
        assert _load(name).main() == 2, (name, argv)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--out" in err, err
    for name, argv in (("bench_sampler", ["--out", str(tmp_path)]), ("bench_step_calls", ["--out", missing])):
        with pytest.raises(SystemExit) as e:
            _load(name).main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and "--out" in err, err
    assert not (tmp_path / "missing").exists()


def test_bench_closed_form_compares_each_kernel_and_prints_its_table(tmp_path, monkeypatch, capsys):
    """bench_closed_form.py on small shapes: every kernel pair within float rounding of the
    operation it replaces (the transposed weight cotangents within 1e-5 of the values' size,
    bits not asserted: they depend on the BLAS), its file's table, and bad input one line, exit 2."""
    out = tmp_path / "k.json"
    monkeypatch.setattr("sys.argv", ["bench_closed_form", "--tasks", "2", "--rows", "300", "--repeats", "1", "--out", str(out)])
    assert _load("bench_closed_form").main() == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["kernel"] for r in rows] == ["tanh", "out_layer", "weight_cotangent_first", "weight_cotangent_second"]
    for r in rows:
        assert r["old_ms"] > 0 and r["new_ms"] > 0
        assert r["max_abs_diff"] <= 1e-5 * max(1.0, r["max_abs_value"]), r
    assert not rows[0]["same_bits"] and rows[0]["max_abs_diff"] > 0  # the fast tanh is not torch.tanh
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["bench_closed_form", "--table", str(out)])
    assert _load("bench_closed_form").main() == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| kernel |") and len(table) == 6 and table[2].startswith("| tanh | ")
    for argv in (["--table", str(tmp_path / "missing.json")], ["--repeats", "0"]):
        monkeypatch.setattr("sys.argv", ["bench_closed_form", *argv])
        assert _load("bench_closed_form").main() == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bench_maml_update_times_the_fast_and_exact_promp_on_the_same_batch(tmp_path, monkeypatch):
    """``--impls fused fused-exact``: the same recorded rounds replayed to ProMP with and without
    the fast forward path; both rows present, their losses after the update equal to float32
    rounding and not bit for bit (different operations)."""
    out = tmp_path / "u.json"
    monkeypatch.setattr("sys.argv", ["bench_maml_update", "--algos", "promp", "--impls", "fused", "fused-exact",
                                     "--fraction", "0.05", "--threads", "1", "--out", str(out)])
    assert _load("bench_maml_update").main() == 0
    result = json.loads(out.read_text())
    rows = {r["impl"]: r for r in result["rows"]}
    assert set(rows) == {"fused", "fused-exact"} and rows["fused"]["tasks"] == 2
    assert rows["fused"]["loss_after"] == pytest.approx(rows["fused-exact"]["loss_after"], rel=1e-4)
    assert rows["fused"]["loss_after"] != rows["fused-exact"]["loss_after"]
    assert set(result["summary"]["promp"]["min_update_cpu_s"]) == {"fused", "fused-exact"}


def test_bench_drs_update_compares_drs_ppo_implementations(tmp_path, monkeypatch):
    """``bench_drs_trpo_fvp.py --algo drs-ppo``: DRS-PPO's closed-form and autograd updates on the
    same recorded batch, both rows present, parameters equal to float32 rounding (Adam's
    normalised steps amplify it), not bit for bit."""
    out = tmp_path / "d.json"
    monkeypatch.setattr("sys.argv", ["bench_drs_trpo_fvp", "--algo", "drs-ppo", "--fraction", "0.05", "--threads", "1",
                                     "--repeats", "1", "--out", str(out)])
    assert _load("bench_drs_trpo_fvp").main() == 0
    result = json.loads(out.read_text())
    assert result["algo"] == "drs-ppo" and {r["impl"] for r in result["rows"]} == {"closed-form", "autograd"}
    assert 0 < result["param_max_rel_diff"] < 1e-3
    assert result["same_decision"]


@pytest.mark.parametrize("K", [1, 2])
def test_fvp_bound_counts_every_product_of_a_fisher_vector_product(K):
    """bench_fvp_bound.count_flops on the fused TRPO-MAML Fisher-vector product equals the count
    written out by hand from the closed forms (agents/closed_form.py). Per transition, with
    ``c_i = (in_i + 1) out_i`` (layer i's weights and bias) and ``w_i = in_i out_i``: a tangent
    pass costs ``sum c_i + sum_{i>0} w_i`` multiply-adds, a backward pass the same, the tangent
    of a backward pass ``sum c_i + 3 sum_{i>0} w_i``; a product is K Hessian-vector products of
    the inner losses on their rounds, the KL's on the post-adaptation round, then K more back.
    The in-place ``baddbmm_`` accumulations are two fifths of it: torch's counter alone gave 0
    for them."""
    from test_maml_fused import sampled

    agents, inner, post, T = sampled("trpo-maml", K)
    agent = agents["fused"]
    bound = _load("bench_fvp_bound")
    old, _, _, g, fvp = agent.fused_problem(inner, post, T, agent.last_chain)
    sizes = [agent.policy.obs_dim, *agent.policy.hidden_sizes, agent.policy.act_dim]
    c = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    w = sum(a * b for a, b in list(zip(sizes, sizes[1:]))[1:])
    tangent, backward, backward_tangent = c + w, c + w, c + 3 * w
    hvp, kl = tangent + backward_tangent, tangent + backward
    rows = [tb.obs.shape[0] * tb.obs.shape[1] for tb in inner]
    expected = 2 * (2 * hvp * sum(rows) + kl * post.obs.shape[0] * post.obs.shape[1])
    assert bound.count_flops(lambda: fvp(g)) == expected
    with bound.FlopCounterMode(display=False) as plain:
        fvp(g)
    assert plain.get_total_flops() < 0.7 * expected  # what the counter missed without the in-place formulas


def test_bench_iterations_times_the_fvp_subsample_beside_the_default(tmp_path, capsys):
    """bench_iterations --fvp-subsample: a TRPO learner's row records the value the run used
    (one real PointGoal iteration), iterations_table shows it beside the implementation, the
    projection keeps only the default's row, and a value outside (0, 1] is one line, exit 2,
    before anything runs."""
    mod = _load("bench_iterations")
    sub = mod.bench("rlbench/PointGoal-v0", "trpo-maml", 1, 0.2, 0, 0, "fused", 0.5)
    plain = mod.bench("rlbench/PointGoal-v0", "drs-ppo", 1, 0.2, 0, 0)
    assert sub["fvp_subsample"] == 0.5 and "fvp_subsample" not in plain
    default = {**sub, "fvp_subsample": 1.0}
    proj = mod.project([default, sub, plain], 5, 64)
    assert set(proj["per_run"]) == {"rlbench/PointGoal-v0:trpo-maml", "rlbench/PointGoal-v0:drs-ppo"}
    assert proj["per_run"]["rlbench/PointGoal-v0:trpo-maml"]["steps_per_s_per_core"] == round(default["steps_per_s"] / default["workers"])
    f = tmp_path / "b.json"
    drs = {**default, "algo": "drs-trpo", "impl": "-", "fvp_subsample": 0.25}
    f.write_text(json.dumps({"command": "x", "rows": [default, sub, drs]}))
    assert _script().main([str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| PointGoal-v0 | trpo-maml | fused | ") and out[3].startswith("| PointGoal-v0 | trpo-maml | fused, fvp_subsample 0.5 | ")
    assert out[4].startswith("| PointGoal-v0 | drs-trpo | fvp_subsample 0.25 | ")
    o = str(tmp_path / "o.json")
    for argv, needle in ((["--fvp-subsample", "1", "0"], "must lie in (0, 1]"), (["--fvp-subsample", "1", "1.5"], "must lie in (0, 1]"),
                         (["--fvp-subsample", "0.5"], "include the default 1"), (["--fvp-subsample", "1", "1"], "distinct"),
                         (["--fvp-subsample", "abc"], "invalid float value"), (["--impls", "reference", "--fvp-subsample", "1", "0.5"], "--impls reference"),
                         (["--cluster-cores", "0"], "at least 1"), (["--out", str(tmp_path / "missing" / "o.json")], "does not exist"),
                         (["--out", str(tmp_path)], "is a directory")):
        args = [*argv] if "--out" in argv else [*argv, "--out", o]
        with pytest.raises(SystemExit) if "abc" in argv else contextlib.nullcontext() as e:
            status = mod.main(["--envs", "rlbench/PointGoal-v0", *args])
        assert (e.value.code if "abc" in argv else status) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o.json").exists()
    # rlbench plan --from and bench_fvp_bound take the default row, not a subsample's, whatever the order
    from rlbench.plan import rates_from_file
    both = tmp_path / "both.json"
    fast = {**default, "fvp_subsample": 0.25, "steps_per_s": default["steps_per_s"] * 3, "update_s": 0.01}
    both.write_text(json.dumps({"rows": [fast, {**default, "impl": "reference", "steps_per_s": 1.0}, default]}))
    assert rates_from_file(both)[("rlbench/PointGoal-v0", "trpo-maml")].iteration_s == default["iteration_s"]
    bound = _load("bench_fvp_bound")
    assert bound.sampling_budget(str(both), "rlbench/PointGoal-v0")["update_s"] == default["update_s"]
    both.write_text(json.dumps({"rows": [fast]}))
    with pytest.raises(Exception, match="no row measured with the default settings"):
        rates_from_file(both)


def test_bench_fvp_subsample_compares_each_fraction_with_the_first(tmp_path, capsys):
    """bench_fvp_subsample.py on PointGoal (4 tasks): one row per fraction and
    repeat on the same recorded batch; the reference's own speedup is 1 and its cosine 1, a
    smaller fraction takes a different step (cosine below 1, another loss), the file is written;
    bad fractions end in one line, exit 2, nothing written."""
    mod = _load("bench_fvp_subsample")
    out = tmp_path / "s.json"
    for algo in ("trpo-maml", "drs-trpo"):
        assert mod.main(["--algo", algo, "--env", "rlbench/PointGoal-v0", "--fraction", "0.2", "--repeats", "1",
                         "--fvp-subsample", "0.25", "1", "--out", str(out)]) == 0
        data = json.loads(out.read_text())
        assert data["algo"] == algo and data["tasks"] == 4 and [r["fvp_subsample"] for r in data["rows"]] == [1.0, 0.25]
        assert [r["fvp_tasks"] for r in data["rows"]] == [4, 1]
        ref, sub = data["summary"]["1"], data["summary"]["0.25"]
        assert ref["median_speedup"] == 1.0 and ref["cosine_to_reference"] == pytest.approx(1.0, abs=1e-6)
        assert sub["cosine_to_reference"] is None or sub["cosine_to_reference"] < 0.9999
        assert sub["loss_after"] != ref["loss_after"]
    capsys.readouterr()
    for bad in (["--fvp-subsample", "1", "0"], ["--fvp-subsample", "2"], ["--fvp-subsample", "0.5"], ["--fvp-subsample", "1", "0.5", "0.5"],
                ["--repeats", "0"], ["--algo", "promp"], ["--out", str(tmp_path / "missing" / "s.json")]):
        out.unlink(missing_ok=True)
        try:
            status = mod.main(["--env", "rlbench/PointGoal-v0", *bad, *([] if "--out" in bad else ["--out", str(out)])])
        except SystemExit as e:  # argparse's choices
            status = e.code
        assert status == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
        assert not out.exists()


def test_training_curves_groups_runs_and_pairs_them_by_seed(tmp_path, capsys):
    """scripts/training_curves.py on four real PointGoal DRS+TRPO runs (fvp_subsample 1 and
    0.5, seeds 1 and 2, 4 iterations): the windowed means and the paired differences in the
    table are those computed here from the runs' metrics.jsonl; the plot is written; a
    directory that is not a run, an unknown key and two runs of one seed in a group end in one
    line, exit 2."""
    import numpy as np

    from rlbench import cli

    common = ["--env", "rlbench/PointGoal-v0", "--algo", "drs-trpo", "--budget", "640", "--set", "sampler.meta_batch_size=4",
              "--set", "sampler.episodes_per_task=2", "--set", "sampler.n_workers=0", "--set", "torch_threads=1", "--quiet"]
    runs = {}
    for f in ("1", "0.5"):
        for seed in (1, 2):
            d = tmp_path / f"f{f}_s{seed}"
            assert cli.main(["train", *common, "--seed", str(seed), "--set", f"algo_cfg.fvp_subsample={f}", "--out", str(d)]) == 0
            rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            assert len(rows) == 4
            runs[f, seed] = np.array([r["rollout/return_mean"] for r in rows])
    mod = _load("training_curves")
    capsys.readouterr()
    dirs = [str(tmp_path / f"f{f}_s{s}") for f in ("1", "0.5") for s in (1, 2)]
    assert mod.main([*dirs, "--by", "algo_cfg.fvp_subsample", "--at", "2", "4", "--window", "2", "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    ref = out[2].split(" | ")
    sub = out[3].split(" | ")
    assert ref[0] == "| 1.0" and sub[0] == "| 0.5" and ref[1] == sub[1] == "1, 2"
    at4 = {k: v[2:4].mean() for k, v in runs.items()}
    assert ref[4] == f"{np.mean([at4['1', 1], at4['1', 2]]):.4g} [{min(at4['1', 1], at4['1', 2]):.4g}, {max(at4['1', 1], at4['1', 2]):.4g}]"
    diff = np.mean([at4["0.5", s] - at4["1", s] for s in (1, 2)])
    assert sub[6].startswith(f"{diff:+.4g} [") and sub[6].endswith("(n=2) |") and ref[6] == "- |"
    assert (tmp_path / "c.png").stat().st_size > 1000
    (tmp_path / "nulled").mkdir()
    for name in ("config.yaml", "run.json"):
        (tmp_path / "nulled" / name).write_bytes((tmp_path / "f1_s1" / name).read_bytes())
    lines = (tmp_path / "f1_s1" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "nulled" / "metrics.jsonl").write_text("\n".join([json.dumps({**json.loads(lines[0]), "rollout/return_mean": None}), *lines[1:]]) + "\n")
    for argv, needle in (([str(tmp_path)], "is not an rlbench run directory"), ([dirs[0], "--by", "algo_cfg.nope"], "no such config key"),
                         ([dirs[0], dirs[0]], "with seed 1"), ([str(tmp_path / "nulled")], "has no number"),
                         ([dirs[0], "--plot", str(tmp_path / "missing" / "c.png")], "does not exist"),
                         ([dirs[0], "--plot", str(tmp_path / "c.xyz")], "unknown image format")):
        args = [*argv] if "--by" in argv else [*argv, "--by", "algo_cfg.fvp_subsample"]
        assert mod.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
