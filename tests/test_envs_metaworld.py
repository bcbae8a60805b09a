"""Meta-World ML1-Push, ML1-Reach, ML10, ML45 against docs/protocol.md section 2 and metaworld itself.

Oracles: the class lists of the paper/protocol written out below, metaworld's own benchmark
objects and scripted policies, and a second Python process (goals must not depend on the
process). Each benchmark is built once per test session: envs.meta_world caches it per
process, and every test here and in test_conformance.py goes through that cache.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import envs
from envs.base import InvalidTaskError
from envs.meta_world import BENCHMARK_SEED, MetaWorldTask, get_benchmark

pytestmark = pytest.mark.metaworld

ML10_TRAIN = {
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3", "button-press-topdown-v3",
    "peg-insert-side-v3", "window-open-v3", "sweep-v3", "basketball-v3",
}
ML10_TEST = {"drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3"}
ML45_TEST = {"bin-picking-v3", "box-close-v3", "hand-insert-v3", "door-lock-v3", "door-unlock-v3"}

# env id -> (metaworld benchmark class name, train classes or None, test classes, n train, n test)
EXPECTED = {
    "rlbench/ML1-Push-v0": ("ML1", {"push-v3"}, {"push-v3"}, 50, 50),
    "rlbench/ML1-Reach-v0": ("ML1", {"reach-v3"}, {"reach-v3"}, 50, 50),
    "rlbench/ML10-v0": ("ML10", ML10_TRAIN, ML10_TEST, 500, 250),
    "rlbench/ML45-v0": ("ML45", None, ML45_TEST, 2250, 250),
}
# ML45's benchmark takes about 30 s to build: its cases are slow checks (python -m pytest -q -m slow).
IDS = [pytest.param(i, marks=pytest.mark.slow, id=i) if i == "rlbench/ML45-v0" else i for i in EXPECTED]


def _bench(env_id: str):
    kw = envs.entry(env_id).kwargs
    return get_benchmark(kw["benchmark"], BENCHMARK_SEED)


def _rand_vec(mw_task) -> np.ndarray:
    return np.asarray(pickle.loads(mw_task.data)["rand_vec"])


@pytest.mark.parametrize("env_id", IDS)
def test_task_sets_equal_the_benchmarks_own(env_id):
    cls_name, train_classes, test_classes, n_train, n_test = EXPECTED[env_id]
    bench = _bench(env_id)
    assert type(bench).__name__ == cls_name
    dist = envs.get_task_distribution(env_id)
    assert dist.has_split
    train, test = dist.all_tasks("train"), dist.all_tasks("test")
    assert (len(train), len(test)) == (n_train, n_test) == (len(bench.train_tasks), len(bench.test_tasks))
    got_train = {t.env_name for t in train}
    got_test = {t.env_name for t in test}
    assert got_test == test_classes
    if train_classes is not None:
        assert got_train == train_classes
    else:
        assert len(got_train) == 45 and not got_train & ML45_TEST
    assert got_train == set(bench.train_classes) and got_test == set(bench.test_classes)
    # every task names the benchmark's own goal, 50 goals per class
    for tasks, pool in ((train, bench.train_tasks), (test, bench.test_tasks)):
        for t in tasks:
            assert pool[t.index].env_name == t.env_name
        counts = {c: sum(t.env_name == c for t in tasks) for c in {t.env_name for t in tasks}}
        assert set(counts.values()) == {50}
    if cls_name == "ML1":  # held-out goals are other goals of the same class
        train_goals = {tuple(_rand_vec(t)) for t in bench.train_tasks}
        test_goals = {tuple(_rand_vec(t)) for t in bench.test_tasks}
        assert len(train_goals) == 50 and len(test_goals) == 50 and not train_goals & test_goals
    # describe() is computed without building the benchmark: it must agree with it
    text = dist.describe()
    assert "50" in text
    if cls_name == "ML1":
        assert text.startswith(next(iter(test_classes)))
    else:
        assert f"{len(got_train)} train classes" in text and all(c in text for c in test_classes)


def test_goals_do_not_depend_on_the_process():
    """Without metaworld's seed argument every process draws different goals; with it, all agree."""
    code = (
        "import json, pickle, numpy as np; np.random.seed(12345);"
        "from envs.meta_world import get_benchmark;"
        "b = get_benchmark('ML1:reach-v3');"
        "print(json.dumps([pickle.loads(t.data)['rand_vec'].tolist() for t in (b.train_tasks[7], b.test_tasks[3])]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    other = json.loads(out)
    bench = _bench("rlbench/ML1-Reach-v0")
    np.testing.assert_array_equal(_rand_vec(bench.train_tasks[7]), other[0])
    np.testing.assert_array_equal(_rand_vec(bench.test_tasks[3]), other[1])


def test_scripted_policy_succeeds_and_success_is_reported():
    """metaworld's scripted reach policy, told the goal the benchmark assigned to the task, solves
    reach within 150 steps and info['success'] says so; with a wrong goal it does not.

    The goal is hidden from the observation (zeroed), so the oracle writes the benchmark's goal
    (the last 3 entries of the task's rand_vec) into the policy's input.
    """
    from metaworld.policies import SawyerReachV3Policy

    env = envs.make_meta_env("rlbench/ML1-Reach-v0")
    bench = _bench("rlbench/ML1-Reach-v0")
    policy = SawyerReachV3Policy()
    dist = envs.get_task_distribution("rlbench/ML1-Reach-v0")
    a_task, b_task = dist.test_tasks(2, np.random.default_rng(0))
    for task, goal_of in ((a_task, a_task), (b_task, b_task), (a_task, b_task)):
        goal = _rand_vec(bench.test_tasks[goal_of.index])[-3:]
        env.set_task(task)
        obs, _ = env.reset(seed=0)
        assert np.all(obs[-3:] == 0.0)
        successes = []
        for _ in range(env.horizon):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Constant(s) may be too high"
                action = policy.get_action(np.concatenate([obs[:-3], goal]))
            obs, r, terminated, truncated, info = env.step(action)
            assert isinstance(info["success"], float) and info["success"] in (0.0, 1.0)
            assert isinstance(r, float) and not terminated
            successes.append(info["success"])
            if truncated:
                break
        assert successes[0] == 0.0  # not trivially successful
        assert max(successes) == (1.0 if task == goal_of else 0.0)


def _run_to_end(env, max_steps: int) -> tuple[int, bool]:
    env.reset(seed=0)
    zero = np.zeros(4, dtype=np.float32)
    for t in range(1, max_steps + 1):
        _, _, terminated, truncated, info = env.step(zero)
        assert "success" in info
        if terminated or truncated:
            return t, truncated
    return max_steps, False


def test_horizon_default_150():
    env = envs.make_meta_env("rlbench/ML1-Reach-v0")
    assert env.horizon == 150 and envs.entry("rlbench/ML1-Reach-v0").max_episode_steps == 150
    env.set_task(envs.get_task_distribution("rlbench/ML1-Reach-v0").sample(1, np.random.default_rng(0))[0])
    assert _run_to_end(env, 600) == (150, True)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(4))  # the episode is over


def test_horizon_500_when_asked():
    wrapped = envs.make("rlbench/ML1-Reach-v0", horizon=500)
    assert wrapped.spec.max_episode_steps == 500 and wrapped.unwrapped.horizon == 500
    assert _run_to_end(wrapped, 600) == (500, True)
    bare = envs.make_meta_env("rlbench/ML1-Reach-v0", horizon=500)
    bare.reset(seed=0)
    assert bare._inner.max_path_length == 500  # Meta-World's own limit follows the horizon


@pytest.mark.parametrize("env_id", IDS)
def test_task_sampling_is_deterministic(env_id):
    dist = envs.get_task_distribution(env_id)
    n_train = EXPECTED[env_id][3]
    for draw in (dist.sample, dist.test_tasks):
        a = draw(20, np.random.default_rng(5))
        assert a == draw(20, np.random.default_rng(5))
        assert a != draw(20, np.random.default_rng(6))
        assert len(set(a)) == 20  # without replacement
    assert {t.split for t in dist.sample(5, np.random.default_rng(0))} == {"train"}
    assert {t.split for t in dist.test_tasks(5, np.random.default_rng(0))} == {"test"}
    many = dist.sample(n_train + 10, np.random.default_rng(0))  # more than exist: with replacement
    assert len(many) == n_train + 10 and len(set(many)) < len(many)


@pytest.mark.parametrize("env_id", ["rlbench/ML1-Push-v0", "rlbench/ML10-v0"])
def test_tasks_pickle_round_trip_and_resolve_in_a_fresh_env(env_id):
    dist = envs.get_task_distribution(env_id)
    tasks = dist.sample(2, np.random.default_rng(0)) + dist.test_tasks(2, np.random.default_rng(0))
    back = pickle.loads(pickle.dumps(tasks))
    assert back == tasks and [hash(t) for t in back] == [hash(t) for t in tasks]
    assert len(pickle.dumps(tasks[0])) < 300  # a handle, not the benchmark's pickled goal data
    env = envs.make_meta_env(env_id)
    for t in back:
        env.set_task(t)
        assert env.get_task() == t
        assert env.task_group(t) == t.env_name
        assert type(env._inner).__name__.lower().startswith("sawyer")
        obs, _ = env.reset(seed=0)
        assert obs.shape == (39,) and np.all(obs[-3:] == 0.0)  # goal hidden in ML benchmarks


def test_invalid_tasks_raise():
    env = envs.make_meta_env("rlbench/ML1-Push-v0")
    good = envs.get_task_distribution("rlbench/ML1-Push-v0").sample(1, np.random.default_rng(0))[0]
    bad = [
        MetaWorldTask("ML1:reach-v3", "reach-v3", "train", 0),  # another benchmark
        MetaWorldTask("ML1:push-v3", "push-v3", "train", 50),  # out of range
        MetaWorldTask("ML1:push-v3", "push-v3", "train", -1),
        MetaWorldTask("ML1:push-v3", "push-v3", "valid", 0),  # unknown split
        MetaWorldTask("ML1:push-v3", "reach-v3", "train", 0),  # wrong class for that index
        MetaWorldTask("ML1:push-v3", "push-v3", "train", 0, benchmark_seed=BENCHMARK_SEED + 1),  # other goals
        MetaWorldTask("ML1:push-v3", "push-v3", "train", 1.0),  # not an int
        "push-v3",
    ]
    dist = envs.get_task_distribution("rlbench/ML1-Push-v0")
    env.set_task(good)
    for task in bad:
        with pytest.raises(InvalidTaskError):
            env.set_task(task)
        with pytest.raises(InvalidTaskError):
            dist.validate(task)
    assert env.get_task() == good


def test_class_switch_rebuilds_inner_env():
    env_id = "rlbench/ML10-v0"
    dist = envs.get_task_distribution(env_id)
    tasks = dist.all_tasks("train")
    reach = next(t for t in tasks if t.env_name == "reach-v3")
    push = next(t for t in tasks if t.env_name == "push-v3")
    env = envs.make_meta_env(env_id)
    env.set_task(reach)
    inner_reach = env._inner
    env.set_task(push)
    assert env._inner is not inner_reach and "Push" in type(env._inner).__name__
    env.set_task(tasks[tasks.index(push) + 1])  # same class: the instance is kept
    assert "Push" in type(env._inner).__name__


def test_fingerprint_records_benchmark_seed_and_horizon():
    fp = envs.fingerprint("rlbench/ML10-v0", horizon=500)
    json.dumps(fp)
    assert fp["family"] == "metaworld" and fp["obs_dim"] == 39 and fp["act_dim"] == 4
    assert fp["horizon"] == 500 and fp["registered_horizon"] == 150
    assert fp["protocol"]["benchmark"] == "ML10" and fp["protocol"]["benchmark_seed"] == BENCHMARK_SEED
    assert fp["packages"]["metaworld"] == "3.1.1" and fp["packages"]["mujoco"] == "3.3.0"
    assert fp["dt"] == pytest.approx(0.0125)


def test_benchmark_is_built_once_however_the_seed_is_passed():
    """ML45 takes ~30 s to build: the per-process cache must not key on how the seed was passed."""
    a = get_benchmark("ML1:push-v3")
    assert get_benchmark("ML1:push-v3", BENCHMARK_SEED) is a and get_benchmark("ML1:push-v3", np.int64(BENCHMARK_SEED)) is a
    assert get_benchmark("ML1:push-v3", BENCHMARK_SEED + 1) is not a
