"""The "mujoco-batched" sampler backend against the gym backend (the reference).

The batched backend must be invisible to agents: for the same tasks, seeds and actions it
gives bit-identical observations, rewards and termination flags to one LocomotionMetaEnv per
slot (GymStepper), including early termination, the ``active`` mask, and slots reused with
other tasks across batches; through the Sampler the whole Batch is identical for any backend
and worker/thread count, steps are counted the same way, and close() leaves nothing running.
"""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest
import torch

import envs
from agents.policy import GaussianMLPPolicy
from envs.base import InvalidTaskError
from envs.locomotion_batched import BatchedLocomotionStepper, MjDataPerSlotStepper, supports
from rlbench import backends
from rlbench.sampler import STEPPERS, GymStepper, Sampler, resolve_backend

pytestmark = pytest.mark.mujoco

LOCOMOTION = ["HalfCheetahRandVel", "Walker2DRandVel", "HopperRandParams", "Walker2DRandParams"]
EARLY_TERMINATION = {"Walker2DRandVel", "HopperRandParams", "Walker2DRandParams"}


def _same(name: str, what: str, a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, f"{name} {what}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
    if not np.array_equal(a, b, equal_nan=True):
        diff = np.abs(a.astype(float) - b.astype(float))
        raise AssertionError(f"{name} {what}: backends differ, max abs difference {np.nanmax(diff):.3g}")


@pytest.mark.parametrize("name", LOCOMOTION)
def test_stepper_matches_gym_stepper(name):
    env_id = f"rlbench/{name}-v0"
    dist = envs.get_task_distribution(env_id)
    rng = np.random.default_rng(7)
    gym, batched = GymStepper(env_id, 200), BatchedLocomotionStepper(env_id, 200, threads=2)
    try:
        assert (batched.obs_dim, batched.act_dim) == (gym.obs_dim, gym.act_dim)
        # Three rounds: slots are reset with other tasks (and slot counts) between batches.
        for n_tasks, per_task in ((3, 3), (4, 2), (2, 3)):
            tasks = [t for t in dist.sample(n_tasks, rng) for _ in range(per_task)]
            n = len(tasks)
            seeds = rng.integers(0, 2**31 - 1, size=n)
            _same(name, "reset obs", gym.reset(tasks, seeds), batched.reset(tasks, seeds))
            # Zero actions keep walkers/hoppers upright for 40+ steps, large ones make them fall.
            scale = np.resize([0.0, 0.4, 1.5], n)[:, None]
            active = np.ones(n, dtype=bool)
            ended_early = 0
            # Round 2 auto-resets ended slots inside step() (the steps sampling unit).
            auto_reset = per_task == 2
            for t in range(40):
                actions = scale * rng.standard_normal((n, gym.act_dim))
                reset_seeds = rng.integers(0, 2**31 - 1, size=n) if auto_reset else None
                g, b = gym.step(actions, active, reset_seeds), batched.step(actions, active, reset_seeds)
                for what, x, y in zip(("obs", "reward", "terminated", "success", "unstable"), g, b):
                    _same(name, f"step {t} {what}", x, y)
                ended_early += int((active & g[2]).sum())
                if not auto_reset:
                    active &= ~g[2]
                if not active.any():
                    break
            if name in EARLY_TERMINATION:
                assert 0 < ended_early, f"{name}: want some episodes to end early"
                if not auto_reset:
                    assert ended_early < n, f"{name}: want a mix of ended and running episodes, {ended_early}/{n} ended"
    finally:
        gym.close()
        batched.close()


def _python_loop(env_id: str, horizon: int, threads: int = 1) -> BatchedLocomotionStepper:
    """The backend with its physics loop in Python (the fallback when envs/slot_physics.c cannot be built)."""
    stepper = BatchedLocomotionStepper(env_id, horizon, threads=threads)
    stepper._loop = None
    return stepper


@pytest.mark.parametrize("cls", [BatchedLocomotionStepper, _python_loop, MjDataPerSlotStepper])
@pytest.mark.parametrize("name", LOCOMOTION)
def test_full_state_equals_the_gym_envs(name, cls):
    """Oracle: the gym env of the same slot. After every reset and step, every slot's whole
    STATE_SPEC vector (time, qpos, qvel, act, qacc_warmstart, ctrl) equals that env's MjData
    bit for bit, besides the outputs, for the backend (state rows) and for the one-MjData-per-
    slot stepper (its MjData kept across steps, batches and rand-params task changes): slot
    counts shrink and grow again (new MjData for new slots, reused ones get other tasks and
    models' parameters), random inactive slots, auto-resets. The backend runs both of its
    physics loops (C, the default where it builds, and Python)."""
    import mujoco

    from envs.locomotion_batched import STATE_SPEC

    env_id = f"rlbench/{name}-v0"
    dist = envs.get_task_distribution(env_id)
    rng = np.random.default_rng(11)
    gym, batched = GymStepper(env_id, 200), cls(env_id, 200, threads=2)

    def gym_state() -> np.ndarray:
        out = np.empty((len(gym._slots), batched.nstate))
        for row, env in zip(out, gym._slots):
            mujoco.mj_getState(env.model, env.data, row, STATE_SPEC)
        return out

    try:
        for n in (6, 12, 4, 9):
            tasks = dist.sample(n, rng)
            seeds = rng.integers(0, 2**31 - 1, size=n)
            _same(name, f"n={n} reset obs", gym.reset(tasks, seeds), batched.reset(tasks, seeds))
            _same(name, f"n={n} reset state", gym_state(), batched.state())
            for t in range(25):
                actions = rng.uniform(-1.5, 1.5, (n, gym.act_dim))
                active = rng.random(n) < 0.8
                reset_seeds = rng.integers(0, 2**31 - 1, size=n) if t % 2 else None
                g, b = gym.step(actions, active, reset_seeds), batched.step(actions, active, reset_seeds)
                for what, x, y in zip(("obs", "reward", "terminated", "success", "unstable"), g, b):
                    _same(name, f"n={n} step {t} {what}", x, y)
                _same(name, f"n={n} step {t} state", gym_state(), batched.state())
        if cls is MjDataPerSlotStepper:
            assert len(batched._datas) == 12  # grown once to the largest batch, then reused
    finally:
        gym.close()
        batched.close()


def _collect(env_id: str, backend: str, n_workers: int, horizon: int, unit: str = "episodes"):
    tasks = envs.get_task_distribution(env_id).sample(3, np.random.default_rng(0))
    with Sampler(env_id, horizon=horizon, n_workers=n_workers, backend=backend) as sampler:
        policy = GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, (64, 64), init_std=1.0, action_scale=10.0)
        actor = policy.actor(policy.init_params(torch.Generator().manual_seed(0)))
        batches = [sampler.collect(tasks, 3, actor, np.random.default_rng(seed), unit=unit) for seed in (1, 2)]
        total = sampler.total_steps
    return batches, total


@pytest.fixture
def process_batched():
    """The batched stepper behind worker processes (one thread each), as a registered backend."""

    def factory(env_id, horizon, env_kwargs=None):
        return BatchedLocomotionStepper(env_id, horizon, env_kwargs, threads=1)

    def mjdata(env_id, horizon, env_kwargs=None, threads=1):
        return MjDataPerSlotStepper(env_id, horizon, env_kwargs, threads=threads)

    mjdata.threaded = True
    STEPPERS["test-batched-processes"] = factory
    STEPPERS["test-batched-mjdata"] = mjdata
    yield "test-batched-processes"
    del STEPPERS["test-batched-processes"], STEPPERS["test-batched-mjdata"]


@pytest.mark.parametrize(("name", "horizon", "unit"), [
    ("HopperRandParams", 20, "episodes"), ("HalfCheetahRandVel", 40, "episodes"),
    ("HopperRandParams", 40, "steps"), ("Walker2DRandParams", 40, "steps"),
])
def test_sampler_batches_identical_across_backends_and_workers(name, horizon, unit, process_batched):
    # Hopper at horizon 20: some episodes terminate, others are cut by the horizon. With the
    # steps unit, slots auto-reset inside the round, so rows hold several episodes.
    env_id = f"rlbench/{name}-v0"
    reference, ref_total = _collect(env_id, "gym", 1, horizon, unit)
    fields = ["obs", "actions", "rewards", "valid", "lengths", "terminated", "truncated", "last_obs", "ep_time",
              "ep_end", "ep_term", "ep_success"]
    for backend, n_workers in (("mujoco-batched", 1), ("mujoco-batched", 2), (process_batched, 2),
                               ("test-batched-mjdata", 1), ("test-batched-mjdata", 2)):
        batches, total = _collect(env_id, backend, n_workers, horizon, unit)
        assert total == ref_total
        if unit == "episodes":
            assert total == sum(int(b.valid.sum()) for b in batches)
        for ref, got in zip(reference, batches):
            assert got.env_steps == ref.env_steps
            assert ref.env_steps == (int(ref.valid.sum()) if unit == "episodes" else 3 * 3 * horizon)
            assert got.tasks == ref.tasks
            for f in fields:
                _same(f"{name} {backend} x{n_workers}", f, getattr(ref, f), getattr(got, f))
    if name == "HopperRandParams" and unit == "episodes":
        ended = np.concatenate([b.terminated.ravel() for b in reference])
        assert ended.any() and not ended.all()
    if unit == "steps":  # some slots really ran several episodes in one round
        assert max(int(b.ep_end.sum(-1).max()) for b in reference) >= 2


def test_only_active_slots_are_stepped_and_counted(monkeypatch):
    """Count the slots the batched stepper actually steps: equal to env_steps and valid.sum()."""
    stepped = {"n": 0}
    orig = BatchedLocomotionStepper._physics

    def counting_physics(self, idx, a):  # the slots handed to either physics loop
        stepped["n"] += len(idx)
        return orig(self, idx, a)

    monkeypatch.setattr(BatchedLocomotionStepper, "_physics", counting_physics)
    (batch, batch2), total = _collect("rlbench/HopperRandParams-v0", "mujoco-batched", 2, 30)
    assert stepped["n"] == total == batch.env_steps + batch2.env_steps == int(batch.valid.sum() + batch2.valid.sum())
    assert batch.env_steps < batch.valid.size  # some episodes ended early and were not stepped on


def test_auto_picks_batched_for_locomotion_only():
    for name in LOCOMOTION:
        assert supports(f"rlbench/{name}-v0")
        assert resolve_backend("auto", f"rlbench/{name}-v0") == "mujoco-batched"
    for env_id in ("rlbench/PointGoal-v0", "rlbench/ML1-Push-v0", "rlbench/NoSuchEnv-v0"):
        assert not supports(env_id)
    assert resolve_backend("auto", "rlbench/PointGoal-v0") == "gym"
    assert STEPPERS["mujoco-batched"] is backends.mujoco_batched
    with pytest.raises(ValueError, match="locomotion"):
        BatchedLocomotionStepper("rlbench/PointGoal-v0", 20)


def test_rejects_tasks_of_another_family():
    stepper = BatchedLocomotionStepper("rlbench/HopperRandParams-v0", 200)
    vel_task = envs.get_task_distribution("rlbench/HalfCheetahRandVel-v0").sample(1, np.random.default_rng(0))[0]
    with pytest.raises(InvalidTaskError):
        stepper.reset([vel_task], np.array([0]))
    stepper.close()


def test_close_leaves_no_processes_or_threads(process_batched):
    threads_before = threading.active_count()
    for backend, n_workers in (("mujoco-batched", 2), (process_batched, 2)):
        sampler = Sampler("rlbench/HalfCheetahRandVel-v0", horizon=5, n_workers=n_workers, backend=backend)
        tasks = envs.get_task_distribution("rlbench/HalfCheetahRandVel-v0").sample(2, np.random.default_rng(0))
        sampler.collect(tasks, 2, lambda o, z: (z, np.clip(z, -1, 1)), np.random.default_rng(0))
        sampler.close()
        assert mp.active_children() == []
        assert threading.active_count() == threads_before
