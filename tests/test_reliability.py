"""Faults a run must survive: two writers, kills mid-write, a full disk, a read-only
destination, a torn metrics line; and results that do not depend on the worker count."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from procs import exit_with_main, run_forked, start_forked, wait_exited

from rlbench import locking, presets, store
from rlbench.cli import main
from rlbench.evaluator import evaluate_run
from rlbench.runner import train

ENV = "rlbench/PointGoal-v0"
TRAIN = ["train", "--env", ENV, "--algo", "drs-ppo", "--preset", "smoke", "--seed", "1", "--quiet", "--budget", "4000"]


def _main(capsys, *argv: str) -> subprocess.CompletedProcess:
    """The CLI's ``main`` in this process, as a CompletedProcess (exit status, stdout, stderr).
    The tests below need a separate process only for the one they kill or make hold a lock;
    the interpreter start of ``python -m rlbench.cli`` is checked in tests/test_hostile.py."""
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), code, out.out, out.err)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def metrics_without_time(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / store.METRICS_FILE).read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def same_params(a: Path, b: Path) -> bool:
    pa, pb = store.load_torch(a)["agent"]["params"], store.load_torch(b)["agent"]["params"]
    return all(torch.equal(pa[k], pb[k]) for k in pa)


# -- item 1: --max-iterations ---------------------------------------------------------------------


def test_max_iterations_stops_an_unbounded_run(tmp_path, capsys):
    run = tmp_path / "r"
    args = [*TRAIN[:-1], "1e30", "--out", str(run), "--max-iterations", "2"]
    assert main(args) == 0
    assert store.read_meta(run)["iterations"] == 2
    assert main([*args, "--resume"]) == 0  # two more
    meta = store.read_meta(run)
    assert meta["iterations"] == 4 and meta["status"] == "running"
    assert [r["iteration"] for r in metrics_without_time(run)] == [1, 2, 3, 4]
    assert main([*args, "--resume", "--max-iterations", "0"]) == 0
    assert store.read_meta(run)["iterations"] == 4


# -- item 3: one writer ---------------------------------------------------------------------------


def _hold_and_train(argv: list[str], holding, go) -> None:
    """In a forked child: the CLI, which pauses once it holds its first (outermost) lock, sets
    ``holding`` and carries on when ``go`` is set."""
    real_hold = locking.hold
    paused = []

    def hold(directory, what="run"):
        cm = real_hold(directory, what)

        class Wrapped:
            def __enter__(self):
                cm.__enter__()
                if not paused:
                    paused.append(directory)
                    holding.set()
                    go.wait(300)

            def __exit__(self, *exc):
                return cm.__exit__(*exc)

        return Wrapped()

    locking.hold = hold
    exit_with_main(argv)


@pytest.mark.parametrize("command", ["train", "run"])
def test_second_writer_exits_2_while_the_first_holds_the_directory(tmp_path, capsys, command):
    """Two processes on one --out (the first forked from this one, the second this one): the
    second exits 2 naming the other process, writes nothing; the first then completes normally."""
    out = tmp_path / "out"
    if command == "train":
        argv = [*TRAIN, "--out", str(out)]
    else:
        exp = tmp_path / "e.yaml"
        exp.write_text("name: e\nenvs: [rlbench/PointGoal-v0]\nalgos: [drs-ppo]\nseeds: [1]\nbudget: 1600\nn_checkpoints: 2\n"
                       "overrides:\n  all: {sampler: {meta_batch_size: 10, episodes_per_task: 4, n_workers: 1},\n"
                       "        eval: {n_tasks: 2, n_updates: 1, episodes_per_task: 2}}\n")
        argv = ["run", str(exp), "--out", str(out), "--quiet"]
    ctx = mp.get_context("fork")
    holding, go = ctx.Event(), ctx.Event()
    first = start_forked(_hold_and_train, argv, holding, go)
    try:
        assert holding.wait(300)
        before = tree(out)
        second = _main(capsys, *argv, *(["--resume"] if command == "train" else []))
        assert second.returncode == 2, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "another process" in second.stderr, second.stderr
        assert tree(out) == before
        go.set()
        first.join(300)
        assert first.exitcode == 0
    finally:
        if first.exitcode is None:
            first.kill()
        first.join()


def test_lock_of_a_killed_process_does_not_block_resume(tmp_path, capsys):
    run = tmp_path / "r"
    assert main([*TRAIN, "--out", str(run), "--max-iterations", "1"]) == 0
    code = "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('x', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", code, str(locking.lock_path(run))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "x"
    res = _main(capsys, *TRAIN, "--out", str(run), "--resume")
    assert res.returncode == 2 and "another process" in res.stderr
    holder.kill()
    holder.wait()
    res = _main(capsys, *TRAIN, "--out", str(run), "--resume")
    assert res.returncode == 0, res.stderr
    assert store.read_meta(run)["status"] == "finished"


def _can_lock(path: Path) -> bool:
    """Whether a separate process can take the flock now."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, check=False).returncode == 0


def test_forked_children_do_not_keep_the_lock(tmp_path):
    """Sampler workers are forked while the run is locked. If they kept the inherited
    descriptor, a worker outliving a killed parent would block the next --resume: the lock
    must be free as soon as the parent lets go, while the forked child is still alive."""
    read_end, write_end = os.pipe()
    with locking.hold(tmp_path):
        pid = os.fork()
        if pid == 0:  # child: wait until the parent says stop
            os.close(write_end)
            os.read(read_end, 1)
            os._exit(0)
        os.close(read_end)
        assert not _can_lock(locking.lock_path(tmp_path))  # held by this process
    try:
        assert _can_lock(locking.lock_path(tmp_path))  # the living child does not hold it
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)


# -- items 5, 6: kills mid-write, torn metrics, full disk, read-only ------------------------------


def _kill_during_state_write(kill_at: int, pid_file: str, argv: list[str]) -> None:
    """In a forked child: the CLI, which SIGKILLs itself when its ``kill_at``-th state.pt is
    written and fsynced under its temporary name but not yet renamed, after recording its
    sampler workers' pids in ``pid_file``."""
    import multiprocessing as mp
    import signal

    real_replace = os.replace
    seen = [0]

    def replace(src, dst, *a, **k):
        if str(dst).endswith("state.pt"):
            seen[0] += 1
            if seen[0] == kill_at:
                Path(pid_file).write_text(" ".join(str(p.pid) for p in mp.active_children()))
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **k)

    os.replace = replace
    exit_with_main(argv)



def test_kill_during_an_atomic_write_then_resume_equals_uninterrupted(tmp_path, capsys):
    """SIGKILL at a fixed point (the 3rd state.pt, written but not yet renamed; the metrics
    line of that iteration already appended): the resumed run removes the temporary file,
    drops the extra metrics line, and ends identical to an uninterrupted run. The killed
    process's sampler workers exit on their own."""
    base = [*TRAIN, "--workers", "2"]
    assert main([*base, "--out", str(tmp_path / "ref")]) == 0
    run, pids = tmp_path / "killed", tmp_path / "pids"
    assert run_forked(_kill_during_state_write, 3, str(pids), [*base, "--out", str(run)]) == -9
    assert list(run.glob(f".state.pt.*{store.TMP_SUFFIX}")), "the kill should have left a temporary file"
    assert store.load_torch(run / store.STATE_FILE)["iteration"] == 2
    assert len(metrics_without_time(run)) == 3  # one line beyond the saved state
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2
    assert wait_exited(workers, timeout=15) == []
    res = _main(capsys, *base, "--out", str(run), "--resume")
    assert res.returncode == 0, res.stderr
    assert not list(run.rglob(f"*{store.TMP_SUFFIX}"))
    assert metrics_without_time(run) == metrics_without_time(tmp_path / "ref")
    assert same_params(run / store.STATE_FILE, tmp_path / "ref" / store.STATE_FILE)
    for a, b in zip(sorted((run / store.CKPT_DIR).iterdir()), sorted((tmp_path / "ref" / store.CKPT_DIR).iterdir())):
        assert a.read_bytes() == b.read_bytes()


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    run, ref = tmp_path / "r", tmp_path / "ref"
    assert main([*TRAIN, "--out", str(ref)]) == 0
    assert main([*TRAIN, "--out", str(run), "--max-iterations", "2"]) == 0
    with open(run / store.METRICS_FILE, "ab") as f:
        f.write(b'{"iteration": 3, "rollout/ret')  # a crash mid-append
    assert main([*TRAIN, "--out", str(run), "--resume"]) == 0
    assert metrics_without_time(run) == metrics_without_time(ref)


def test_new_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        store.write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        os.umask(0o002)
        store.save_torch(tmp_path / "b.pt", {"x": 1})
        assert stat.S_IMODE((tmp_path / "b.pt").stat().st_mode) == 0o664
    finally:
        os.umask(old)


class _Payload:
    """Unpickling this would run code (os.system here: a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_files_are_loaded_with_weights_only(tmp_path):
    """A well-formed torch file holding a pickled object is refused as damaged, and loading it
    runs nothing; tensors and plain containers load."""
    marker = tmp_path / "ran"
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(store.CorruptFileError, match="evil.pt is damaged .cannot be loaded: UnpicklingError"):
        store.load_torch(tmp_path / "evil.pt")
    assert not marker.exists()
    store.save_torch(tmp_path / "ok.pt", {"t": torch.arange(3), "n": [1, 2.5, "s", None, (True,)]})
    loaded = store.load_torch(tmp_path / "ok.pt")
    assert torch.equal(loaded["t"], torch.arange(3)) and loaded["n"] == [1, 2.5, "s", None, (True,)]


def test_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """In-process ENOSPC (no mount needed): the old file survives, no temporary file remains,
    and the error names the file."""
    path = tmp_path / "run.json"
    store.write_text(path, "old\n")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(store.StoreError, match="cannot write .*run.json: No space left on device"):
        store.write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)):
        pytest.skip("needs root to mount a small tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_ends_with_one_line_and_intact_files(tmp_path, small_tmpfs, capsys):
    """A run resumed on a nearly full file system: exit 1, one line naming the file, every
    file still loadable, no temporary files; after space is freed the resume completes and
    equals an uninterrupted run."""
    ref = tmp_path / "ref"
    assert main([*TRAIN, "--out", str(ref)]) == 0
    run = small_tmpfs / "r"
    assert main([*TRAIN, "--out", str(run), "--max-iterations", "1"]) == 0
    free = shutil.disk_usage(small_tmpfs).free
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (free - 4096))  # less room than one more state.pt + checkpoint
    res = _main(capsys, *TRAIN, "--out", str(run), "--resume")
    assert res.returncode == 1, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "No space left on device" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not list(run.rglob(f"*{store.TMP_SUFFIX}"))
    store.read_meta(run)
    store.load_torch(run / store.STATE_FILE)
    store.read_jsonl(run / store.METRICS_FILE)
    filler.unlink()
    res = _main(capsys, *TRAIN, "--out", str(run), "--resume")
    assert res.returncode == 0, res.stderr
    assert metrics_without_time(run) == metrics_without_time(ref)
    assert same_params(run / store.STATE_FILE, ref / store.STATE_FILE)


def test_read_only_destination_ends_with_one_line(tmp_path, capsys):
    """A finished run on a read-only bind mount: evaluate and resume exit 2 with one line and
    change nothing; a new run under it fails the same way."""
    src = tmp_path / "src"
    assert main([*TRAIN, "--out", str(src / "r")]) == 0
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or not _mount("--bind", str(src), str(ro)):
        pytest.skip("needs root for a read-only bind mount")
    try:
        assert _mount("-o", "remount,bind,ro", str(ro))
        before = tree(src)
        for argv in (["evaluate", str(ro / "r"), "--quiet"], [*TRAIN, "--out", str(ro / "r"), "--resume"],
                     [*TRAIN, "--out", str(ro / "new")]):
            res = _main(capsys, *argv)
            assert res.returncode in (1, 2), res.stderr
            assert len(res.stderr.strip().splitlines()) == 1 and "Read-only file system" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr
        assert tree(src) == before
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


# -- item 2: results independent of the worker count, on a locomotion environment ---------------


@pytest.mark.mujoco
def test_locomotion_results_do_not_depend_on_workers(tmp_path):
    """HalfCheetahRandVel, DRS+PPO: --workers 1 and --workers 2 give bit-identical metrics,
    states, checkpoints and evaluation; a run resumed with a different --workers continues
    the same run. (Before the learner's thread count was fixed, the returns of iteration 2
    already differed in the 8th digit.)"""
    env = "rlbench/HalfCheetahRandVel-v0"
    over = {"sampler": {"meta_batch_size": 2, "episodes_per_task": 2, "horizon": 20}, "n_checkpoints": 2,
            "eval": {"n_tasks": 2, "n_updates": 1, "episodes_per_task": 2}}

    def cfg(workers):
        return presets.run_config(env, "drs-ppo", 3, 3 * 80, {**over, "sampler": {**over["sampler"], "n_workers": workers}})

    assert cfg(1).torch_threads == cfg(2).torch_threads == 2  # fixed by the protocol, not by --workers
    train(cfg(1), tmp_path / "w1", quiet=True)
    train(cfg(2), tmp_path / "w2", quiet=True)
    train(cfg(2), tmp_path / "mixed", quiet=True, max_iterations=1)
    train(cfg(1), tmp_path / "mixed", quiet=True, resume=True)
    ref = metrics_without_time(tmp_path / "w1")
    assert len(ref) == 3
    for other in ("w2", "mixed"):
        assert metrics_without_time(tmp_path / other) == ref
        assert same_params(tmp_path / other / store.STATE_FILE, tmp_path / "w1" / store.STATE_FILE)
    e1 = evaluate_run(tmp_path / "w1", n_workers=1, quiet=True)
    e2 = evaluate_run(tmp_path / "w2", n_workers=2, quiet=True)
    pd.testing.assert_frame_equal(e1, e2)
