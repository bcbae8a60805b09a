"""scripts/compare_run_dirs.py: equal numbers pass, any numeric or textual change fails,
wall-clock fields are ignored."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_run_dirs", ROOT / "scripts" / "compare_run_dirs.py")
crd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(crd)


def make(root: Path, ret: float = -1.5, wall: float = 0.25, algo: str = "a", extra: bool = False) -> Path:
    run = root / "env" / algo / "seed_1"
    run.mkdir(parents=True)
    (run / "evaluation.csv").write_text(f"algo,task,return,success\n{algo},0,{ret!r},\n{algo},1,2.0,1.0\n")
    rows = [{"iteration": 1, "train/loss": 0.5, "time/iteration_s": wall, "time/steps_per_s": 1 / wall}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if extra:
        (run / "extra.csv").write_text("x\n1\n")
    return root


def test_identical_numbers_pass_and_timing_is_ignored(tmp_path, capsys):
    a, b = make(tmp_path / "a"), make(tmp_path / "b", wall=9.0)
    assert crd.main([str(a), str(b)]) == 0
    assert "2 files compared, 0 differ" in capsys.readouterr().out


def test_a_last_bit_difference_fails(tmp_path, capsys):
    a, b = make(tmp_path / "a"), make(tmp_path / "b", ret=-1.5 + 2**-40)
    assert crd.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "DIFF  env/a/seed_1/evaluation.csv: max abs diff 9.09e-13" in out
    assert crd.main([str(a), str(b), "--tol", "1e-12"]) == 0


def test_text_and_missing_files_fail(tmp_path, capsys):
    assert crd.main([str(make(tmp_path / "a")), str(make(tmp_path / "b", extra=True))]) == 1
    assert "only in B" in capsys.readouterr().out
    a = make(tmp_path / "c")
    b = make(tmp_path / "d")
    p = b / "env" / "a" / "seed_1" / "evaluation.csv"
    p.write_text(p.read_text().replace("a,1,", "z,1,"))
    assert crd.main([str(a), str(b)]) == 1
    assert "algo: 1 non-numeric values differ" in capsys.readouterr().out


def test_bad_arguments(tmp_path):
    assert crd.main([str(tmp_path / "nope"), str(tmp_path)]) == 2
