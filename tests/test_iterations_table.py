"""scripts/iterations_table.py prints the README's iteration and projection tables from a
bench_iterations.py JSON file (values checked against a hand-written file)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
