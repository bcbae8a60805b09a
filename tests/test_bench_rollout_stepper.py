"""scripts/bench_sampler.py's measurement-only ``mujoco-batched-rollout`` line (RolloutStepper).

It steps the batched backend's slots with ONE ``mujoco.rollout`` call per environment step.
Oracle: the exact batched stepper (itself bit-identical to the gym environments, see
test_batched_backend.py). With the constraint solver's warm start disabled in the models,
the warm start that rollout cannot hand back no longer matters, so the two must agree bit for
bit (same states, models, controls, active masks, resets); with the warm start on (the real
environments) they must differ, which is why the backend does not use rollout.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mujoco
import numpy as np
import pytest
import torch

import envs
import envs.locomotion_batched as lb
import rlbench.sampler as sampler_module
from agents.policy import GaussianMLPPolicy
from envs import slot_physics
from envs.locomotion_batched import BatchedLocomotionStepper
from rlbench.sampler import STEPPERS, Sampler

pytestmark = pytest.mark.mujoco

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_sampler", ROOT / "scripts" / "bench_sampler.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

NO_WARMSTART = int(mujoco.mjtDisableBit.mjDSBL_WARMSTART)


def _pair(env_id: str, n: int, threads: int, warmstart: bool):
    exact = BatchedLocomotionStepper(env_id, 200)
    roll = bench.RolloutStepper(env_id, 200, threads=threads)
    if not warmstart:  # per-slot rand-params models are copies of .model, made at reset
        exact.model.opt.disableflags |= NO_WARMSTART
        roll.model.opt.disableflags |= NO_WARMSTART
    tasks = envs.get_task_distribution(env_id).sample(n, np.random.default_rng(0))
    seeds = np.arange(n) + 100
    np.testing.assert_array_equal(exact.reset(tasks, seeds), roll.reset(tasks, seeds))
    return exact, roll


@pytest.mark.parametrize(("name", "threads"), [("HalfCheetahRandVel", 1), ("HopperRandParams", 2),
                                               ("Walker2DRandVel", 2)])
def test_rollout_stepper_equals_exact_stepper_without_warmstart(name, threads):
    env_id = f"rlbench/{name}-v0"
    n = 12
    exact, roll = _pair(env_id, n, threads, warmstart=False)
    rng = np.random.default_rng(1)
    resets = 0
    for t in range(80):
        actions = rng.uniform(-1.5, 1.5, (n, exact.act_dim))  # some outside [-1, 1]: clipped alike
        active = rng.random(n) < 0.8
        reset_seeds = rng.integers(0, 2**31 - 1, n) if t % 2 else None  # both paths of step()
        got_exact = exact.step(actions, active, reset_seeds)
        got_roll = roll.step(actions, active, reset_seeds)
        for what, a, b in zip(("obs", "reward", "terminated", "success", "unstable"), got_exact, got_roll):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} step {t}: {what}")
        resets += int(got_exact[2].sum()) if reset_seeds is not None else 0
    # time, qpos, qvel, act and ctrl; not the warm start column, which rollout never returns
    keep = np.r_[: roll.nfull, roll._ctrl]
    np.testing.assert_array_equal(exact.state()[:, keep], roll.state()[:, keep])
    if name != "HalfCheetahRandVel":  # terminations happened and were reset through both paths
        assert resets > 0
    exact.close()
    roll.close()


def test_rollout_stepper_drifts_with_warmstart():
    """The real HalfCheetah model: rollout restarts the solver from zero acceleration at every
    environment step, and the episodes drift apart (measured O(1) within 200 steps)."""
    env_id = "rlbench/HalfCheetahRandVel-v0"
    n = 4
    exact, roll = _pair(env_id, n, 1, warmstart=True)
    rng = np.random.default_rng(1)
    diff = []
    for _ in range(200):
        a = rng.uniform(-1, 1, (n, exact.act_dim))
        diff.append(np.abs(exact.step(a, np.ones(n, bool))[0] - roll.step(a, np.ones(n, bool))[0]).max())
    assert max(diff) > 1e-3


def test_sampler_batch_with_rollout_line_equals_batched_without_warmstart(monkeypatch):
    """Through the Sampler (2 threads, episodes unit, early termination): the same Batch."""
    original = lb.load_model

    def load_model_no_warmstart(*a, **k):
        m = original(*a, **k)
        m.opt.disableflags |= NO_WARMSTART
        return m

    monkeypatch.setattr(lb, "load_model", load_model_no_warmstart)
    monkeypatch.setitem(STEPPERS, "mujoco-batched-rollout", bench._rollout_backend)
    assert_same_batches("rlbench/HopperRandParams-v0", "mujoco-batched-rollout")


def assert_same_batches(env_id: str, backend: str, check=None) -> None:
    """One 3-task, 3-slot, 30-step round with 2 threads through the backend and through
    ``backend``: equal bit for bit (and the round has a terminated episode). ``check(sampler,
    name)`` runs inside each sampler."""
    tasks = envs.get_task_distribution(env_id).sample(3, np.random.default_rng(0))
    batches = []
    for name in ("mujoco-batched", backend):
        with Sampler(env_id, horizon=30, n_workers=2, backend=name) as s:
            if check is not None:
                check(s, name)
            policy = GaussianMLPPolicy(s.obs_dim, s.act_dim, (16, 16), init_std=1.0, action_scale=10.0)
            actor = policy.actor(policy.init_params(torch.Generator().manual_seed(0)))
            batches.append(s.collect(tasks, 3, actor, np.random.default_rng(5)))
    ref, got = batches
    assert ref.terminated.any() and got.env_steps == ref.env_steps
    for f in ("obs", "actions", "rewards", "valid", "lengths", "terminated", "last_obs"):
        np.testing.assert_array_equal(getattr(ref, f), getattr(got, f), err_msg=f)


def test_configs_resolve_all_and_skip_locomotion_lines_elsewhere():
    names = ["gym/1", "gym/all", "mujoco-batched/all", "mujoco-batched-rollout/all", "mujoco-batched/2"]
    assert bench._configs(names, 2, locomotion=True) == [
        ("gym", 1), ("gym", 2), ("mujoco-batched", 2), ("mujoco-batched-rollout", 2)]
    assert bench._configs(names, 2, locomotion=False) == [("gym", 1), ("gym", 2)]


def test_bench_step_calls_per_slot_rollout_keeps_the_bits(capsys):
    spec = importlib.util.spec_from_file_location("bench_step_calls", ROOT / "scripts" / "bench_step_calls.py")
    calls = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calls)
    r = calls.main(["--env", "HopperRandParams", "--slots", "4", "--steps", "3", "--repeats", "1", "--memory-slots", "3"])
    assert r["bit_identical_state"]["rollout_per_slot"] and r["bit_identical_warmstart"]["rollout_per_slot"]
    assert r["bit_identical_state"]["mjdata_per_slot"] and r["bit_identical_warmstart"]["mjdata_per_slot"]
    assert r["bit_identical_state"]["c_loop"] and r["bit_identical_warmstart"]["c_loop"]  # the whole state row
    mem = r["mjdata_memory"]
    assert mem["slots"] == 3 and 0 < mem["maxuse_arena_bytes"] <= mem["narena_bytes"] and mem["nbuffer_bytes"] > 0
    assert r["rollout_batched_equals_three_calls_zero_warmstart"]
    assert not r["bit_identical_state"]["three_calls_zero_warmstart"]  # the warm start matters (Hopper: at once)
    assert set(r["us_per_slot_step"]) == set(r["us_per_slot_calls_only"]) == set(calls.VARIANTS)
    with pytest.raises(SystemExit) as e:
        calls.main(["--env", "PointGoal"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0  # one-line error


def test_mjdata_line_is_registered_and_equals_the_backend(monkeypatch):
    """bench_sampler.py's ``mujoco-batched-mjdata`` line builds the one-MjData-per-slot stepper,
    and through the Sampler (2 threads) its batch equals the backend's bit for bit."""
    monkeypatch.setitem(STEPPERS, "mujoco-batched-mjdata", bench._mjdata_backend)
    assert "mujoco-batched-mjdata/all" in bench.CONFIGS
    assert bench._configs(["mujoco-batched-mjdata/all"], 2, locomotion=False) == []

    def check(s, name):
        assert isinstance(s._workers[0].stepper, lb.MjDataPerSlotStepper) == (name == "mujoco-batched-mjdata")

    assert_same_batches("rlbench/Walker2DRandParams-v0", "mujoco-batched-mjdata", check)


def test_pyloop_line_is_registered_and_equals_the_backend(monkeypatch):
    """bench_sampler.py's ``mujoco-batched-pyloop`` line is the backend with the Python physics
    loop, and through the Sampler (2 threads) its batch equals the backend's (C loop) bit for bit."""
    monkeypatch.setitem(STEPPERS, "mujoco-batched-pyloop", bench._pyloop_backend)
    assert "mujoco-batched-pyloop/all" in bench.CONFIGS

    def check(s, name):
        default = "c" if slot_physics.c_loop() is not None else "python"
        assert s._workers[0].stepper.physics_loop == ("python" if name == "mujoco-batched-pyloop" else default)

    assert_same_batches("rlbench/HopperRandParams-v0", "mujoco-batched-pyloop", check)


@pytest.mark.parametrize("unit", ["episodes", "steps"])
def test_replay_passes_through_the_batch_in_both_units(unit):
    """bench_sampler's replay (the denominator of the sampler-vs-physics ratios) reproduces the
    recorded observations of every episode bit for bit on HopperRandParams, whose episodes end
    early: one per slot in the episodes unit, several back to back (reset with the round's
    later seed draws) in the steps unit, for exactly the batch's env steps; with the round's
    random numbers drawn from another seed it does not."""
    timed = bench._Timed("rlbench/HopperRandParams-v0", "mujoco-batched", 1, 2, 3, unit)
    try:
        timed.measure(0)
        batch, seed = timed.last
        r = bench.replay_limits("rlbench/HopperRandParams-v0", timed, seed, batch)
        assert r["replay_1thread_reproduces_batch"] and r["replay_2threads_reproduces_batch"]
        assert r["replay_steps"] == batch.env_steps
        assert r["replay_episodes"] == (6 if unit == "episodes" else 6 + int(batch.ep_end.sum()) - int(batch.ep_end[..., -1].sum()))
        if unit == "steps":
            assert r["replay_episodes"] > 12  # slots really ran several episodes
        wrong = bench.replay_limits("rlbench/HopperRandParams-v0", timed, seed + 1, batch)
        assert not wrong["replay_1thread_reproduces_batch"]
    finally:
        timed.sampler.close()


@pytest.mark.skipif(slot_physics.c_loop() is None, reason="the sampler pipelines with the C physics loop only")
def test_lockstep_line_is_registered_and_equals_the_pipelined_backend(monkeypatch):
    """bench_sampler.py's ``mujoco-batched-lockstep`` line is the backend with the sampler's
    pipelined loop off; in the steps unit with 2 threads the backend pipelines, the line does
    not, and their batches are the same bits (terminations and in-round resets included)."""
    monkeypatch.setitem(STEPPERS, "mujoco-batched-lockstep", bench._lockstep_backend)
    monkeypatch.setattr(sampler_module, "PIPELINE_MIN_SLOTS", 0)  # a small round
    assert "mujoco-batched-lockstep/all" in bench.CONFIGS
    env_id = "rlbench/HopperRandParams-v0"
    tasks = envs.get_task_distribution(env_id).sample(4, np.random.default_rng(0))
    batches, pipelined = [], []
    for name in ("mujoco-batched", "mujoco-batched-lockstep"):
        with Sampler(env_id, horizon=60, n_workers=2, backend=name) as s:
            policy = GaussianMLPPolicy(s.obs_dim, s.act_dim, (16, 16), init_std=1.0, action_scale=10.0)
            actor = policy.actor(policy.init_params(torch.Generator().manual_seed(0)))
            pipelined.append(s._pipeline(actor, 4, 3, np.zeros((12, s.obs_dim))) is not None)
            batches.append(s.collect(tasks, 3, actor, np.random.default_rng(5), unit="steps"))
    assert pipelined == [True, False]
    ref, got = batches
    assert int(ref.ep_end[..., :-1].sum()) > 0  # episodes ended and slots were reset inside the round
    for f in ("obs", "actions", "rewards", "valid", "ep_time", "ep_end", "ep_term", "lengths", "terminated", "last_obs"):
        np.testing.assert_array_equal(getattr(ref, f), getattr(got, f), err_msg=f)
