"""The batched backend's physics loop in C (envs/slot_physics.py): built on first use, chosen by
RLBENCH_PHYSICS_LOOP, and a failed build falls back to the Python loop (or is an error when C
was asked for). That both loops give the gym envs' states bit for bit is
tests/test_batched_backend.py::test_full_state_equals_the_gym_envs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import envs
from envs import slot_physics
from envs.locomotion_batched import BatchedLocomotionStepper

pytestmark = pytest.mark.mujoco

ENV_ID = "rlbench/HalfCheetahRandVel-v0"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty cache directory and no library loaded in this process (restored afterwards)."""
    monkeypatch.setenv("RLBENCH_CACHE_DIR", str(tmp_path))
    slot_physics._load.cache_clear()
    yield tmp_path
    slot_physics._load.cache_clear()


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler on this machine")
def test_c_loop_is_built_into_the_cache_and_is_the_default(fresh_build, monkeypatch):
    monkeypatch.delenv(slot_physics.ENV_VAR, raising=False)
    stepper = BatchedLocomotionStepper(ENV_ID, 200)
    try:
        assert stepper.physics_loop == "c", slot_physics.unavailable_reason()
        assert [p.name for p in fresh_build.iterdir()] == [slot_physics._library_path().name]  # no temporary file left
    finally:
        stepper.close()


def test_python_mode_forces_the_python_loop(monkeypatch):
    monkeypatch.setenv(slot_physics.ENV_VAR, "python")
    stepper = BatchedLocomotionStepper(ENV_ID, 200)
    try:
        assert stepper.physics_loop == "python"
        assert slot_physics.unavailable_reason() == f"{slot_physics.ENV_VAR}=python"
    finally:
        stepper.close()


def test_unknown_mode_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(slot_physics.ENV_VAR, "fortran")
    with pytest.raises(slot_physics.PhysicsLoopError, match="RLBENCH_PHYSICS_LOOP='fortran'"):
        BatchedLocomotionStepper(ENV_ID, 200)


@pytest.mark.parametrize("value,needle", [("fortran", "RLBENCH_PHYSICS_LOOP='fortran': expected one of auto, c, python"),
                                          ("c", "RLBENCH_PHYSICS_LOOP=c but the C physics loop is unavailable")])
def test_command_line_refuses_a_bad_physics_loop_before_writing(tmp_path, value, needle):
    """Through the real command line: one line, exit status 2, no run directory created (for
    ``c``, the build fails: no compiler)."""
    out = tmp_path / "run"
    env = {**os.environ, slot_physics.ENV_VAR: value, "CC": str(tmp_path / "no-such-compiler"), "RLBENCH_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "rlbench.cli", "train", "--env", ENV_ID, "--algo", "drs-ppo", "--preset", "smoke",
                          "--seed", "1", "--quiet", "--budget", "16000", "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr
    assert not out.exists()


def test_failed_build_falls_back_to_python_or_raises_when_c_is_required(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_build / "no-such-compiler"))
    monkeypatch.setenv(slot_physics.ENV_VAR, "auto")
    stepper = BatchedLocomotionStepper(ENV_ID, 200)
    try:
        assert stepper.physics_loop == "python"
        assert "no-such-compiler" in slot_physics.unavailable_reason()
        tasks = envs.get_task_distribution(ENV_ID).sample(3, np.random.default_rng(0))
        stepper.reset(tasks, np.arange(3))
        obs, *_ = stepper.step(np.zeros((3, stepper.act_dim)), np.ones(3, dtype=bool))
        assert np.isfinite(obs).all()  # the Python loop steps
    finally:
        stepper.close()
    monkeypatch.setenv(slot_physics.ENV_VAR, "c")
    with pytest.raises(slot_physics.PhysicsLoopError, match="RLBENCH_PHYSICS_LOOP=c but the C physics loop is unavailable"):
        BatchedLocomotionStepper(ENV_ID, 200)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler on this machine")
def test_processes_building_at_once_all_load_the_library(tmp_path):
    """Four processes start on an empty cache together: each builds into a temporary file and
    renames it, so every one loads a complete library and one file is left."""
    code = "from envs import slot_physics; assert slot_physics.c_loop() is not None, slot_physics.unavailable_reason()"
    env = {**os.environ, "RLBENCH_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), slot_physics.ENV_VAR: "c"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert len(list(tmp_path.iterdir())) == 1
