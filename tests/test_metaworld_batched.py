"""The "metaworld-batched" stepper against one plain package meta-env per slot (the reference).

Same style as tests/test_batched_backend.py: for the same tasks and actions, every slot's
observation, reward, termination and success must be bit-identical to
:class:`envs.meta_world.MetaWorldMetaEnv` (which steps metaworld 3.1.1 itself), with slots of
different tasks, the ``active`` mask switching slots off mid-batch, and slots reused with other
tasks across batches. Actions mix the scripted experts (so the puck is grasped and pushed to
the goal, which exercises push's float32 reward branch) with uniform noise.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import envs
from envs.meta_world import MetaWorldMetaEnv
from envs.metaworld_batched import VECTORISED, BatchedMetaWorldStepper
from envs.metaworld_fast import FastMetaWorldMetaEnv
from rlbench.backends import PATHS
from rlbench.sampler import STEPPERS, resolve_backend

pytestmark = pytest.mark.metaworld


def _same(what: str, a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
    if not np.array_equal(a, b, equal_nan=True):
        diff = np.abs(a.astype(float) - b.astype(float))
        raise AssertionError(f"{what}: differ, max abs difference {np.nanmax(diff):.3g}")


def _plain(env_id: str, horizon: int, version: str) -> MetaWorldMetaEnv:
    """The reference: the plain meta-env with that reward version (its inner env is the package
    class built with it; under "v1" its success flag follows the v2 criterion, as the project's)."""
    env = envs.make_meta_env(env_id, horizon=horizon, reward_function_version=version)
    assert type(env) is MetaWorldMetaEnv and env.reward_function_version == version
    return env


def compare(env_id: str, version: str = "v2", rounds=((3, 3, 120), (2, 2, 60)), seed: int = 3,
            env_names: tuple[str, ...] = (), counts: dict | None = None, random_every: int = 0):
    """Run the batched stepper and plain envs side by side; returns (success steps, float32 steps).

    ``env_names``: each round takes ``n_tasks`` training tasks of each of these classes (in
    turn) instead of sampling the benchmark. ``counts``: filled with success steps per class.
    ``random_every``: if > 0, every slot follows its expert except on every ``random_every``-th
    step, where it takes a uniform random action (instead of random/expert/noisy slots).
    """
    from metaworld.policies import ENV_POLICY_MAP

    dist = envs.get_task_distribution(env_id)
    pools = {c: [t for t in dist.all_tasks("train") if t.env_name == c] for c in env_names}
    rng = np.random.default_rng(seed)
    horizon = max(r[2] for r in rounds)
    kwargs = {"reward_function_version": version}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stepper = BatchedMetaWorldStepper(env_id, horizon, kwargs)
    successes = float32_steps = 0
    try:
        for n_tasks, per_task, steps in rounds:
            if env_names:
                drawn = [pools[c][i] for c in env_names for i in rng.integers(0, len(pools[c]), size=n_tasks)]
            else:
                drawn = dist.sample(n_tasks, rng)
            tasks = [t for t in drawn for _ in range(per_task)]
            n = len(tasks)
            refs = [_plain(env_id, horizon, version) for _ in tasks]
            seeds = rng.integers(0, 2**31 - 1, size=n)
            ref_obs = []
            for env, task, s in zip(refs, tasks, seeds):
                env.set_task(task)
                ref_obs.append(env.reset(seed=int(s))[0])
            ref_obs = np.stack(ref_obs)
            _same(f"{env_id} reset obs", ref_obs, stepper.reset(tasks, seeds))
            policies = [ENV_POLICY_MAP[t.env_name]() for t in tasks]
            active = np.ones(n, dtype=bool)
            for t in range(steps):
                if t == steps // 2 and not random_every:
                    active[::4] = False  # some episodes stop early: inactive slots are not stepped
                actions = rng.uniform(-1.3, 1.3, (n, 4))
                for i in range(n):
                    if (t % random_every != 0) if random_every else i % 3:  # expert (noisy on every third slot), with the hidden goal supplied
                        seen = ref_obs[i].copy()
                        seen[36:39] = refs[i]._inner._target_pos
                        actions[i] = policies[i].get_action(seen) + 0.3 * (i % 3 == 2) * rng.standard_normal(4)
                got = stepper.step(actions, active)
                want_obs, want_rew = np.zeros((n, 39)), np.zeros(n)
                want_term, want_succ = np.zeros(n, dtype=bool), np.full(n, np.nan)
                for i in np.flatnonzero(active):
                    o, r, te, _tr, info = refs[i].step(actions[i])
                    want_obs[i], want_rew[i], want_term[i], want_succ[i] = o, r, te, info["success"]
                    ref_obs[i] = o
                    float32_steps += isinstance(info.get("grasp_reward"), np.float32)
                for what, want, have in zip(("obs", "reward", "terminated", "success"),
                                            (want_obs, want_rew, want_term, want_succ), got):
                    _same(f"{env_id} {version} step {t} {what}", want, have)
                assert not got[4].any()
                successes += int(np.nansum(want_succ))
                if counts is not None:
                    for i in np.flatnonzero(want_succ == 1):
                        counts[tasks[i].env_name] = counts.get(tasks[i].env_name, 0) + 1
    finally:
        stepper.close()
    return successes, float32_steps


def test_push_bit_identical():
    successes, float32_steps = compare("rlbench/ML1-Push-v0")
    assert successes > 0 and float32_steps > 0, (successes, float32_steps)


def test_reach_bit_identical():
    successes, _ = compare("rlbench/ML1-Reach-v0", rounds=((2, 3, 80),))
    assert successes > 0


def test_v1_falls_back_to_the_fast_path_with_a_warning():
    with pytest.warns(UserWarning, match="v2"):
        stepper = BatchedMetaWorldStepper("rlbench/ML1-Push-v0", 20, {"reward_function_version": "v1"})
    assert stepper.vectorised == ()
    stepper.close()
    compare("rlbench/ML1-Push-v0", "v1", rounds=((2, 2, 40),))


def test_registration_and_paths():
    assert resolve_backend("auto", "rlbench/ML1-Push-v0") == "metaworld-batched"
    assert resolve_backend("auto", "rlbench/ML45-v0") == "metaworld-batched"
    assert resolve_backend("gym", "rlbench/ML1-Push-v0") == "gym"
    assert resolve_backend("auto", "rlbench/PointGoal-v0") == "gym"
    assert {"gym", "metaworld-batched", "metaworld-fast"} <= set(STEPPERS) <= set(PATHS)
    fast = STEPPERS["metaworld-fast"]("rlbench/ML1-Reach-v0", 10)
    try:
        tasks = envs.get_task_distribution("rlbench/ML1-Reach-v0").sample(1, np.random.default_rng(0))
        fast.reset(tasks, np.array([0]))
        assert isinstance(fast._slots[0], FastMetaWorldMetaEnv)
    finally:
        fast.close()


#: ML10 train classes vectorised beyond push and reach.
NEW_CLASSES = ("drawer-close-v3", "button-press-topdown-v3", "window-open-v3", "sweep-v3", "door-open-v3")


@pytest.mark.xdist_group("mw-benchmarks")  # the worker that builds ML10 (tests/conftest.py)
def test_vectorised_registry():
    assert set(NEW_CLASSES) | {"push-v3", "reach-v3"} == set(VECTORISED)
    stepper = BatchedMetaWorldStepper("rlbench/ML10-v0", 20)
    try:
        tasks = [next(t for t in envs.get_task_distribution("rlbench/ML10-v0").all_tasks("train") if t.env_name == c)
                 for c in ("sweep-v3", "pick-place-v3")]
        stepper.reset(tasks, np.array([0, 1]))
        assert stepper._batched.tolist() == [True, False]  # pick-place: per-slot fast path
    finally:
        stepper.close()


@pytest.mark.xdist_group("mw-benchmarks")
def test_ml10_vectorised_classes_bit_identical():
    """Every class vectorised beyond push/reach, one slot each, mixed in one stepper: expert
    actions with a uniform random action every third step (building the environments, not
    stepping them, is most of this test's time); every class reaches success, and
    drawer-close's float32 reward branch (gripper closing, a3 > 0) occurs."""
    counts: dict[str, int] = {}
    _successes, float32_steps = compare("rlbench/ML10-v0", rounds=((1, 1, 150),), seed=5,
                                        env_names=NEW_CLASSES, counts=counts, random_every=3)
    assert all(counts.get(c, 0) > 0 for c in NEW_CLASSES), counts
    assert float32_steps > 0


@pytest.mark.slow
@pytest.mark.parametrize("env_name", NEW_CLASSES)
def test_ml10_vectorised_class_long_bit_identical(env_name):
    """One vectorised class at a time, more tasks and full-length episodes."""
    counts: dict[str, int] = {}
    compare("rlbench/ML10-v0", rounds=((3, 3, 150), (2, 2, 150)), seed=6, env_names=(env_name,), counts=counts)
    assert counts.get(env_name, 0) > 0, counts


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v2", "v1"])
def test_ml10_mixed_classes_bit_identical(version):
    """ML10 batches mix vectorised classes (push, reach) with per-slot fast-path classes."""
    compare("rlbench/ML10-v0", version, rounds=((6, 2, 150), (8, 1, 150)), seed=4)


# -- through the Sampler -----------------------------------------------------------------------

FIELDS = ["obs", "actions", "rewards", "valid", "lengths", "terminated", "truncated", "last_obs", "ep_time",
          "ep_end", "ep_term", "ep_success"]


def _collect(env_id: str, backend: str, n_workers: int, horizon: int, unit: str):
    import torch

    from agents.policy import GaussianMLPPolicy
    from rlbench.sampler import Sampler

    tasks = envs.get_task_distribution(env_id).sample(2, np.random.default_rng(0))
    with Sampler(env_id, horizon=horizon, n_workers=n_workers, backend=backend) as sampler:
        policy = GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, (32, 32), init_std=1.0, action_scale=10.0)
        actor = policy.actor(policy.init_params(torch.Generator().manual_seed(0)))
        batches = [sampler.collect(tasks, 3, actor, np.random.default_rng(s), unit=unit) for s in (1, 2)]
        return batches, sampler.total_steps


@pytest.mark.parametrize(("env_id", "unit"), [("rlbench/ML1-Push-v0", "episodes"), ("rlbench/ML1-Reach-v0", "steps")])
def test_sampler_batches_identical_across_metaworld_backends(env_id, unit):
    """The whole Batch is the same for the plain package path and both fast backends, with one
    in-process stepper and with two worker processes."""
    reference, ref_total = _collect(env_id, "gym", 1, 30, unit)
    for backend, n_workers in (("metaworld-batched", 1), ("metaworld-fast", 1), ("metaworld-batched", 2)):
        batches, total = _collect(env_id, backend, n_workers, 30, unit)
        assert total == ref_total
        for ref, got in zip(reference, batches):
            assert got.env_steps == ref.env_steps and got.unstable == ref.unstable == 0
            for f in FIELDS:
                _same(f"{env_id} {backend} x{n_workers} {f}", getattr(ref, f), getattr(got, f))


def test_unstable_slot_ends_and_auto_resets(tmp_path, monkeypatch):
    """A diverged slot (MuJoCo's bad-qvel check fires and it resets MjData) is reported as
    unstable and terminated, auto-reset to its task, and the other slots are unaffected."""
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT on the warning
    env_id = "rlbench/ML1-Push-v0"
    tasks = envs.get_task_distribution(env_id).sample(3, np.random.default_rng(0))
    stepper = BatchedMetaWorldStepper(env_id, 20)
    plain = [_plain(env_id, 20, "v2") for _ in tasks]
    try:
        obs0 = stepper.reset(tasks, np.arange(3))
        for env, task in zip(plain, tasks):
            env.set_task(task)
            env.reset(seed=0)
        stepper._fast._slots[1]._inner.data.qvel[:] = 1e12
        actions = np.random.default_rng(1).uniform(-1, 1, (3, 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs, _rew, term, _succ, unstable = stepper.step(actions, np.ones(3, bool), np.array([5, 6, 7]))
        assert unstable.tolist() == [False, True, False] and term.tolist() == [False, True, False]
        _same("auto-reset obs", obs0[1], obs[1])
        for i in (0, 2):
            _same(f"slot {i}", plain[i].step(actions[i])[0], obs[i])
    finally:
        stepper.close()
