"""The sampler (rlbench/sampler.py): determinism across worker counts and backends, a
hand-rolled reference rollout as oracle for every recorded number, step counting where the
simulator steps, per-task parameters, and the worker-process lifecycle (clean close,
worker exceptions, killed workers, closed sampler).

Reference rollouts rely on one documented contract of ``Sampler.collect``: every random
number comes from the generator passed in, reset seeds first
(``rng.integers(0, 2**31 - 1, size=T * E)``), so a copy of the generator reproduces them.
Actions are taken from the batch (stored unclipped; the env gets clip(u / 10, -1, 1)).
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest
import torch

import envs
from agents.policy import GaussianMLPPolicy, stack_params
from envs.point import GoalTask
from rlbench.sampler import Sampler, SamplerError

POINT = "rlbench/PointGoal-v0"
CHEETAH = "rlbench/HalfCheetahRandVel-v0"
HOPPER = "rlbench/HopperRandParams-v0"
FIELDS = ("obs", "actions", "rewards", "valid", "lengths", "terminated", "truncated", "last_obs", "ep_time", "ep_end",
          "ep_term", "ep_success")


def policy_for(sampler: Sampler, hidden=(8,)) -> GaussianMLPPolicy:
    return GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, hidden, 1.0, 10.0)


def params_for(policy: GaussianMLPPolicy, seed: int = 0):
    return policy.init_params(torch.Generator().manual_seed(seed))


def tasks_for(env_id: str, n: int, seed: int = 0):
    return envs.get_task_distribution(env_id).sample(n, np.random.default_rng(seed))


def assert_same_batch(a, b):
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert a.env_steps == b.env_steps
    assert a.tasks == b.tasks


def collect(env_id, n_workers, tasks, E, seed, horizon=None, backend="gym", params_seed=0):
    with Sampler(env_id, horizon=horizon, n_workers=n_workers, backend=backend) as s:
        pol = policy_for(s)
        return s.collect(tasks, E, pol.actor(params_for(pol, params_seed)), np.random.default_rng(seed))


def reference_rollout(env_id: str, batch, seed: int, horizon: int):
    """Step one fresh make_meta_env copy per episode with the batch's actions; check every
    recorded observation, reward, length and termination; return the number of steps taken."""
    T, E = batch.lengths.shape
    seeds = copy.deepcopy(np.random.default_rng(seed)).integers(0, 2**31 - 1, size=T * E)
    steps = 0
    for i, task in enumerate(batch.tasks):
        for e in range(E):
            env = envs.make_meta_env(env_id, horizon=horizon)
            env.set_task(task)
            o, _ = env.reset(seed=int(seeds[i * E + e]))
            L = 0
            terminated = False
            for t in range(horizon):
                np.testing.assert_array_equal(batch.obs[i, e, t], o)
                u = batch.actions[i, e, t]
                o, r, terminated, _trunc, _info = env.step(np.clip(u / 10.0, -1.0, 1.0))
                assert batch.rewards[i, e, t] == r
                L += 1
                if terminated:
                    break
            env.close()
            steps += L
            assert batch.lengths[i, e] == L
            assert bool(batch.terminated[i, e]) == terminated
            assert bool(batch.truncated[i, e]) == (not terminated)
            np.testing.assert_array_equal(batch.last_obs[i, e], o)
            assert batch.valid[i, e, :L].all() and not batch.valid[i, e, L:].any()
            # padding is zero
            assert not batch.obs[i, e, L:].any() and not batch.actions[i, e, L:].any() and not batch.rewards[i, e, L:].any()
    return steps


# -- determinism ------------------------------------------------------------------------------------------------


def test_same_seed_same_batch_for_any_worker_count_pointgoal():
    tasks = tasks_for(POINT, 3)
    ref = collect(POINT, 1, tasks, 4, seed=7)
    for n in (2, 3):
        assert_same_batch(ref, collect(POINT, n, tasks, 4, seed=7))
    other = collect(POINT, 1, tasks, 4, seed=8)
    assert not np.array_equal(ref.rewards, other.rewards)


def test_repeated_collects_are_reproducible_on_one_sampler():
    """Env instances are pooled and reused across batches: no state may leak between batches."""
    tasks = tasks_for(POINT, 2)
    with Sampler(POINT, n_workers=2, backend="gym") as s:
        pol = policy_for(s)
        actor = pol.actor(params_for(pol))
        a = s.collect(tasks, 3, actor, np.random.default_rng(1))
        s.collect(tasks_for(POINT, 5, 9), 2, actor, np.random.default_rng(2))
        b = s.collect(tasks, 3, actor, np.random.default_rng(1))
    assert_same_batch(a, b)


def test_reference_rollout_reproduces_the_batch_pointgoal():
    tasks = tasks_for(POINT, 2, seed=3)
    for n in (1, 2):
        b = collect(POINT, n, tasks, 3, seed=11)
        steps = reference_rollout(POINT, b, 11, horizon=20)
        assert steps == b.env_steps == b.valid.sum() == 2 * 3 * 20


MUJOCO_CASES = [
    pytest.param(CHEETAH, 25, marks=pytest.mark.mujoco, id="cheetah"),
    pytest.param(HOPPER, 200, marks=pytest.mark.mujoco, id="hopper"),
]


@pytest.mark.parametrize("env_id,horizon", MUJOCO_CASES)
def test_mujoco_batches_identical_across_workers_and_backends_and_match_reference(env_id, horizon):
    tasks = tasks_for(env_id, 2, seed=1)
    ref = collect(env_id, 1, tasks, 2, seed=5, horizon=horizon, backend="gym")
    for n in (1, 2):
        for backend in ("gym", "auto"):
            if (n, backend) != (1, "gym"):
                assert_same_batch(ref, collect(env_id, n, tasks, 2, seed=5, horizon=horizon, backend=backend))
    steps = reference_rollout(env_id, ref, 5, horizon)
    assert steps == ref.env_steps == int(ref.valid.sum())
    np.testing.assert_array_equal(ref.lengths, ref.valid.sum(-1))
    if env_id == HOPPER:  # the random initial policy falls over well before the horizon
        assert ref.terminated.all() and (ref.lengths < horizon).all()
    else:  # HalfCheetah never terminates
        assert not ref.terminated.any() and (ref.lengths == horizon).all()


@pytest.mark.parametrize(
    "env_id,module,cls",
    [
        (POINT, "envs.point", "PointGoalMetaEnv"),
        pytest.param(HOPPER, "envs.locomotion", "LocomotionMetaEnv", marks=pytest.mark.mujoco),
    ],
)
def test_env_steps_count_every_real_transition_and_nothing_else(monkeypatch, env_id, module, cls):
    """Count calls to the environment's step itself (in-process gym backend): terminated
    episodes are not stepped again, and the count equals env_steps and valid.sum()."""
    import importlib

    klass = getattr(importlib.import_module(module), cls)
    calls = {"n": 0}
    orig = klass.step

    def counting_step(self, action):
        calls["n"] += 1
        return orig(self, action)

    monkeypatch.setattr(klass, "step", counting_step)
    tasks = tasks_for(env_id, 2, seed=4)
    with Sampler(env_id, n_workers=1, backend="gym") as s:
        pol = policy_for(s)
        b = s.collect(tasks, 3, pol.actor(params_for(pol)), np.random.default_rng(0))
        assert calls["n"] == b.env_steps == int(b.valid.sum()) == int(b.lengths.sum()) == s.total_steps
        b2 = s.collect(tasks, 2, pol.actor(params_for(pol)), np.random.default_rng(1))
        assert s.total_steps == b.env_steps + b2.env_steps == calls["n"]
    if env_id == HOPPER:
        assert b.env_steps < 2 * 3 * 200


# -- per-task parameters --------------------------------------------------------------------------------------------


def test_stacked_params_act_like_a_per_task_loop():
    tasks = tasks_for(POINT, 3, seed=5)
    with Sampler(POINT, n_workers=2, backend="gym") as s:
        pol = policy_for(s)
        # float64: batched (baddbmm) and per-task (linear) matmuls round differently in float32
        per_task = [pol.init_params(torch.Generator().manual_seed(k), torch.float64) for k in range(3)]
        actors = [pol.actor(p) for p in per_task]

        def loop_actor(obs, noise):
            outs = [actors[t](obs[t : t + 1], noise[t : t + 1]) for t in range(len(actors))]
            return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

        a = s.collect(tasks, 4, pol.actor(stack_params(per_task)), np.random.default_rng(3))
        b = s.collect(tasks, 4, loop_actor, np.random.default_rng(3))
        # different parameters per task really act differently
        c = s.collect(tasks, 4, actors[0], np.random.default_rng(3))
    for f in FIELDS:
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-12, atol=1e-12, err_msg=f)
    np.testing.assert_allclose(a.actions[0], c.actions[0], rtol=1e-12, atol=1e-12)
    assert not np.allclose(a.actions[1], c.actions[1])


# -- lifecycle ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def alarm():
    """Fail instead of hanging (a dead worker must never block the main process)."""

    def handler(signum, frame):
        raise TimeoutError("sampler hung")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def worker_procs(s: Sampler):
    return [w.proc for w in s._workers]


def assert_all_gone(procs):
    deadline = time.monotonic() + 10
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.is_alive() for p in procs)
    live = {c.pid for c in mp.active_children()}
    assert not live & {p.pid for p in procs}
    for p in procs:  # reaped, not zombies
        if os.path.exists(f"/proc/{p.pid}"):
            with open(f"/proc/{p.pid}/stat") as f:
                assert f.read().split()[2] != "Z"


def test_close_stops_every_worker_and_closed_sampler_refuses(alarm):
    s = Sampler(POINT, n_workers=2, backend="gym")
    procs = worker_procs(s)
    assert len(procs) == 2 and all(p.is_alive() for p in procs)
    pol = policy_for(s)
    s.collect(tasks_for(POINT, 2), 2, pol.actor(params_for(pol)), np.random.default_rng(0))
    s.close()
    assert_all_gone(procs)
    s.close()  # idempotent
    with pytest.raises(SamplerError, match="closed"):
        s.collect(tasks_for(POINT, 2), 2, pol.actor(params_for(pol)), np.random.default_rng(0))


def test_in_process_sampler_refuses_after_close():
    s = Sampler(POINT, n_workers=1, backend="gym")
    pol = policy_for(s)
    s.close()
    with pytest.raises(SamplerError, match="closed"):
        s.collect(tasks_for(POINT, 1), 1, pol.actor(params_for(pol)), np.random.default_rng(0))


@pytest.mark.parametrize("bad_slot", [0, -1], ids=["first-worker", "last-worker"])
def test_worker_exception_raises_sampler_error_and_leaves_no_workers(alarm, bad_slot):
    s = Sampler(POINT, n_workers=2, backend="gym")
    procs = worker_procs(s)
    pol = policy_for(s)
    tasks = tasks_for(POINT, 4)
    tasks[bad_slot] = GoalTask(100.0, 100.0)  # outside the task square: set_task raises in the worker
    with pytest.raises(SamplerError, match="InvalidTaskError"):
        s.collect(tasks, 2, pol.actor(params_for(pol)), np.random.default_rng(0))
    assert_all_gone(procs)
    with pytest.raises(SamplerError):
        s.collect(tasks_for(POINT, 2), 2, pol.actor(params_for(pol)), np.random.default_rng(0))


@pytest.mark.parametrize("when", ["between-collects", "mid-collect"])
def test_killed_worker_gives_sampler_error_not_a_hang(alarm, when):
    s = Sampler(POINT, n_workers=2, backend="gym")
    procs = worker_procs(s)
    pol = policy_for(s)
    inner = pol.actor(params_for(pol))
    tasks = tasks_for(POINT, 4)
    s.collect(tasks, 2, inner, np.random.default_rng(0))
    state = {"t": 0}

    def killing_actor(obs, noise):
        state["t"] += 1
        if state["t"] == 3:
            os.kill(procs[1].pid, signal.SIGKILL)
            procs[1].join(5)
        return inner(obs, noise)

    if when == "between-collects":
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].join(5)
        actor = inner
    else:
        actor = killing_actor
    with pytest.raises(SamplerError, match="died"):
        s.collect(tasks, 2, actor, np.random.default_rng(1))
    assert_all_gone(procs)
    with pytest.raises(SamplerError, match="closed"):
        s.collect(tasks, 2, inner, np.random.default_rng(1))


@pytest.fixture
def pipeline_any_size(monkeypatch):
    """Pipeline rounds of any size (the tests' rounds are smaller than PIPELINE_MIN_SLOTS)."""
    import rlbench.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "PIPELINE_MIN_SLOTS", 0)


def _split_equals_lockstep(env_id: str, T: int, E: int, stacked: bool, keep_tails: bool, actor_wrap=None) -> bool:
    """Collect one steps-unit round with 2 threads twice, through the pipelined loop (when the
    sampler takes it) and through the lock-step loop (an actor without ``tasks``); assert every
    field equal bit for bit; return whether the first one pipelined."""
    tasks = envs.get_task_distribution(env_id).sample(T, np.random.default_rng(0))
    with Sampler(env_id, horizon=50, n_workers=2, backend="mujoco-batched") as s:
        policy = policy_for(s, hidden=(16, 16))
        params = stack_params([params_for(policy, i) for i in range(T)]) if stacked else params_for(policy)
        actor = policy.actor(params) if actor_wrap is None else actor_wrap(policy.actor(params))
        pipelined = s._pipeline(actor, T, E, np.zeros((T * E, s.obs_dim))) is not None
        a = s.collect(tasks, E, actor, np.random.default_rng(3), unit="steps", keep_tails=keep_tails)
        b = s.collect(tasks, E, lambda o, n: actor(o, n), np.random.default_rng(3), unit="steps", keep_tails=keep_tails)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert a.env_steps == b.env_steps == T * E * 50 and a.unstable == b.unstable
    return pipelined


@pytest.mark.parametrize(("env_id", "T", "stacked", "keep_tails"),
                         [(HOPPER, 5, False, False), (HOPPER, 4, True, True), ("rlbench/Walker2DRandVel-v0", 3, True, False),
                          (CHEETAH, 2, False, True)])
def test_pipelined_steps_unit_equals_the_lockstep_loop(pipeline_any_size, env_id, T, stacked, keep_tails):
    """With 2 threads in the steps unit the batched backend's rounds run pipelined (two task
    halves, one half's policy call and numpy while the other half's physics runs): the batch
    equals the lock-step loop's in every field, with shared or per-task parameters, odd task
    counts, in-round terminations and resets, and kept tails."""
    from envs import slot_physics

    pipelined = _split_equals_lockstep(env_id, T, 3, stacked, keep_tails)
    assert pipelined == (slot_physics.c_loop() is not None)


def test_pipeline_refused_when_the_halves_actions_differ_from_the_whole_batch(pipeline_any_size):
    """The sampler pipelines only if the two halves' actions equal the whole batch's bit for bit
    (matrix libraries may pick other kernels for other row counts): an actor whose halves round
    differently is stepped lock-step, and its batch is the lock-step batch."""

    class Halves:
        """The policy's actor; its per-half actors add ``half_bump`` to the stored actions."""

        def __init__(self, actor, half_bump: float, bump: float = 0.0):
            self.actor, self.half_bump, self.bump = actor, half_bump, bump

        def __call__(self, obs, noise):
            u, a = self.actor(obs, noise)
            return u + self.bump, a

        def tasks(self, rows):
            return Halves(self.actor.tasks(rows), self.half_bump, bump=self.half_bump)

    from envs import slot_physics

    assert _split_equals_lockstep(HOPPER, 4, 3, False, False, actor_wrap=lambda a: Halves(a, 1e-7)) is False
    # the control: halves that agree with the whole batch are pipelined
    assert _split_equals_lockstep(HOPPER, 4, 3, False, False, actor_wrap=lambda a: Halves(a, 0.0)) == (slot_physics.c_loop() is not None)


def test_pipeline_only_from_the_minimum_round_size():
    """Rounds below PIPELINE_MIN_SLOTS slots (where the measured pipelined loop was slower) step
    lock-step; from that size on, and with 2 threads and the C loop, they pipeline."""
    from envs import slot_physics
    from rlbench.sampler import PIPELINE_MIN_SLOTS

    with Sampler(CHEETAH, horizon=20, n_workers=2, backend="mujoco-batched") as s:
        actor = policy_for(s).actor(params_for(policy_for(s)))
        E = 10
        small, enough = PIPELINE_MIN_SLOTS // E - 1, PIPELINE_MIN_SLOTS // E
        assert s._pipeline(actor, small, E, np.zeros((small * E, s.obs_dim))) is None
        got = s._pipeline(actor, enough, E, np.zeros((enough * E, s.obs_dim)))
        assert (got is not None) == (slot_physics.c_loop() is not None)
    with Sampler(CHEETAH, horizon=20, n_workers=1, backend="mujoco-batched") as s:  # one thread: nothing to overlap
        assert s._pipeline(actor, enough, E, np.zeros((enough * E, s.obs_dim))) is None


def test_error_mid_pipelined_round_leaves_no_physics_running(pipeline_any_size):
    """A policy error in the middle of a pipelined round (the other half's physics in flight)
    propagates after that physics is joined, and the same sampler's next round equals a lock-step
    round bit for bit."""

    class FailsLater:
        def __init__(self, actor, calls: list[int]):
            self.actor, self.calls = actor, calls

        def __call__(self, obs, noise):
            self.calls[0] += 1
            if self.calls[0] == 7:  # half A's policy for step 3, with half B's step-2 physics in flight
                raise RuntimeError("policy failed")
            return self.actor(obs, noise)

        def tasks(self, rows):
            return FailsLater(self.actor.tasks(rows), self.calls)

    tasks = envs.get_task_distribution(HOPPER).sample(4, np.random.default_rng(0))
    with Sampler(HOPPER, horizon=30, n_workers=2, backend="mujoco-batched") as s:
        actor = policy_for(s).actor(params_for(policy_for(s)))
        with pytest.raises(RuntimeError, match="policy failed"):
            s.collect(tasks, 3, FailsLater(actor, [-3]), np.random.default_rng(1), unit="steps")  # -3: the check's 3 calls
        again = s.collect(tasks, 3, actor, np.random.default_rng(2), unit="steps")
        ref = s.collect(tasks, 3, lambda o, n: actor(o, n), np.random.default_rng(2), unit="steps")
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(again, f), getattr(ref, f), err_msg=f)
