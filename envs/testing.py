"""Conformance check for rlbench meta-environments: what every registered id must satisfy.

``check_meta_env(env_id)`` raises AssertionError (with a message naming the env and the
failed property) unless the environment and its task distribution behave as the harness
assumes. It is cheap (short rollouts, a handful of tasks) so CI runs it for every id,
including ML45. The properties, and why the harness needs them:

1. gymnasium's ``check_env`` passes on the bare environment (API, spaces, seeding).
2. Tasks are values: picklable, hashable, equal after a pickle round-trip, accepted by
   ``validate``; an object of another type is rejected with InvalidTaskError.
3. The same generator seed gives the same tasks (train and test); another seed gives others.
4. With a train/test split (``has_split``), train and test tasks are disjoint -- both as
   values and as behaviour (no test task reproduces a train task's rollout).
5. ``set_task`` matters: under the same reset seed and actions, different tasks give
   different rewards or observations (a no-op ``set_task`` fails here).
6. ``set_task`` does not compound: A, then B, then A gives exactly the rollout of A set once
   on a fresh environment, and re-setting A after other episodes gives it again.
7. ``get_task`` returns the task that was set.
8. Through ``envs.make`` episodes end by TimeLimit truncation at the horizon, and the
   registered TimeLimit equals the environment's own ``horizon``.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from envs import registry
from envs.base import InvalidTaskError, MetaEnv, TaskDistribution
from envs.registry import (
    entry,
    get_task_distribution,
    make,
    make_meta_env,
    register_meta_env,
)

#: Episode length used for the TimeLimit check when ``horizon`` is not given: short, so the
#: check stays cheap and no locomotion env can fall over under zero actions before it ends.
SHORT_HORIZON = 5

#: check_env warnings that are not failures (substrings of the message).
_ALLOWED_WARNINGS = ("minimum value is -infinity", "maximum value is infinity")

#: Seeds of the check (any fixed values do).
_TASK_SEED = 1234
_ROLLOUT_SEED = 7


class _Rollout:
    """Observations, rewards and end flags of one short episode under fixed actions."""

    def __init__(self, obs: list[np.ndarray], rewards: list[float], ends: list[tuple[bool, bool]]):
        self.obs = np.asarray(obs, dtype=np.float64)
        self.rewards = np.asarray(rewards, dtype=np.float64)
        self.ends = ends

    def identical(self, other: _Rollout) -> bool:
        """Bit-for-bit the same (what determinism and non-compounding require)."""
        return (
            self.obs.shape == other.obs.shape
            and np.array_equal(self.obs, other.obs, equal_nan=True)
            and np.array_equal(self.rewards, other.rewards, equal_nan=True)
            and self.ends == other.ends
        )

    def close_to(self, other: _Rollout) -> bool:
        """Indistinguishable up to float noise (what "the task changed nothing" means)."""
        return (
            self.obs.shape == other.obs.shape
            and np.allclose(self.obs, other.obs, rtol=1e-7, atol=1e-9, equal_nan=True)
            and np.allclose(self.rewards, other.rewards, rtol=1e-7, atol=1e-9, equal_nan=True)
        )

    def diff(self, other: _Rollout) -> str:
        if self.obs.shape != other.obs.shape:
            return f"lengths {len(self.rewards)} vs {len(other.rewards)}"
        return (
            f"max |obs diff| {np.nanmax(np.abs(self.obs - other.obs), initial=0.0):.3g}, "
            f"max |reward diff| {np.nanmax(np.abs(self.rewards - other.rewards), initial=0.0):.3g}"
        )


def _actions(env: gym.Env, n_steps: int) -> np.ndarray:
    """A fixed action sequence inside the action space (same for every rollout of a check)."""
    space = env.action_space
    rng = np.random.default_rng(_ROLLOUT_SEED)
    low, high = np.broadcast_to(space.low, space.shape), np.broadcast_to(space.high, space.shape)
    return rng.uniform(low, high, size=(n_steps, *space.shape)).astype(space.dtype)


def _rollout(env: MetaEnv, task: Any, actions: np.ndarray, *, set_task: bool = True) -> _Rollout:
    if set_task:
        env.set_task(task)
    obs, _ = env.reset(seed=_ROLLOUT_SEED)
    observations, rewards, ends = [np.array(obs, dtype=np.float64, copy=True)], [], []
    for a in actions:
        obs, r, terminated, truncated, _ = env.step(a)
        observations.append(np.array(obs, dtype=np.float64, copy=True))
        rewards.append(float(r))
        ends.append((bool(terminated), bool(truncated)))
        if terminated or truncated:
            break
    return _Rollout(observations, rewards, ends)


def _check(cond: bool, env_id: str, message: str) -> None:
    if not cond:
        raise AssertionError(f"{env_id}: {message}")


def _check_task_values(env_id: str, dist: TaskDistribution, tasks: list[Any]) -> None:
    for t in tasks:
        try:
            back = pickle.loads(pickle.dumps(t))
        except Exception as e:  # any failure to pickle is the finding
            raise AssertionError(f"{env_id}: task {t!r} does not pickle: {e}") from e
        _check(back == t, env_id, f"task {t!r} is not equal to itself after a pickle round-trip")
        try:
            hash(t)
        except TypeError as e:
            raise AssertionError(f"{env_id}: task {t!r} is not hashable (use a frozen dataclass)") from e
        try:
            dist.validate(t)
        except InvalidTaskError as e:
            raise AssertionError(f"{env_id}: the distribution rejects its own task {t!r}: {e}") from e


def _check_sampling(env_id: str, dist: TaskDistribution, n_tasks: int) -> tuple[list[Any], list[Any]]:
    """Determinism and (for split distributions) disjointness of sampled tasks."""
    draw = {
        "sample": lambda seed: dist.sample(n_tasks, np.random.default_rng(seed)),
        "test_tasks": lambda seed: dist.test_tasks(n_tasks, np.random.default_rng(seed)),
    }
    out = {}
    for name, f in draw.items():
        a, b, c = f(_TASK_SEED), f(_TASK_SEED), f(_TASK_SEED + 1)
        _check(len(a) == n_tasks, env_id, f"{name}({n_tasks}, rng) returned {len(a)} tasks")
        _check(a == b, env_id, f"{name} with the same rng seed gave different tasks: {a!r} vs {b!r}")
        _check(a != c, env_id, f"{name} with different rng seeds gave the same tasks {a!r} (rng ignored?)")
        out[name] = a
    train, test = out["sample"], out["test_tasks"]
    if dist.has_split:
        common = set(train) & set(test)
        _check(not common, env_id, f"train and test tasks overlap: {sorted(map(repr, common))}")
    return train, test


def check_meta_env(env_id: str, *, n_tasks: int = 3, n_steps: int = 8, horizon: int | None = None) -> None:
    """Raise AssertionError unless ``env_id`` satisfies the meta-environment contract (module docstring).

    ``n_tasks`` train (and as many test) tasks are drawn, each rolled out for ``n_steps``
    steps. ``horizon`` is the episode length checked through ``envs.make`` (default
    :data:`SHORT_HORIZON`; it also sets the environment's horizon for the other checks).
    """
    _check(n_tasks >= 2, env_id, "check_meta_env needs n_tasks >= 2")
    e = entry(env_id)  # UnknownEnvError for an unknown id
    dist = get_task_distribution(env_id)

    # 2-4: task values, determinism, split.
    train, test = _check_sampling(env_id, dist, n_tasks)
    _check_task_values(env_id, dist, train + test)

    env = make_meta_env(env_id, horizon=horizon)
    try:
        _check(isinstance(env, MetaEnv), env_id, f"{type(env).__name__} is not an envs.base.MetaEnv")
        _check(float(env.dt) > 0, env_id, f"dt must be positive, got {env.dt!r}")
        try:
            env.set_task(object())
        except InvalidTaskError:
            pass
        else:
            raise AssertionError(f"{env_id}: set_task(object()) did not raise InvalidTaskError")

        # 5: every sampled task behaves differently; with a split, no test task copies a train task.
        n = min(n_steps, int(env.horizon))
        actions = _actions(env, n)
        tasks = train + (test if dist.has_split else [])
        rolls = []
        for t in tasks:
            rolls.append(_rollout(env, t, actions))
            # 7: get_task returns what was set.
            _check(env.get_task() == t, env_id, f"get_task() returned {env.get_task()!r} after set_task({t!r})")
        for i in range(len(tasks)):
            for j in range(i + 1, len(tasks)):
                if tasks[i] == tasks[j]:
                    continue
                _check(
                    not rolls[i].close_to(rolls[j]), env_id,
                    f"tasks {tasks[i]!r} and {tasks[j]!r} give the same rewards and observations under the "
                    "same seed and actions: set_task has no effect",
                )

        # 6: no compounding, no state leaking from earlier episodes.
        a_task, b_task = train[0], train[1]
        again = _rollout(env, a_task, actions)
        _check(
            again.identical(rolls[0]), env_id,
            f"re-setting task {a_task!r} after other tasks changed its rollout ({again.diff(rolls[0])})",
        )
        fresh = make_meta_env(env_id, horizon=horizon)
        try:
            fresh.set_task(a_task)
            fresh.set_task(b_task)
            fresh.set_task(a_task)
            aba = _rollout(fresh, a_task, actions, set_task=False)
            _check(fresh.get_task() == a_task, env_id, "get_task() is not the last task set")
        finally:
            fresh.close()
        _check(
            aba.identical(rolls[0]), env_id,
            f"set_task A, B, A gives another rollout than A set once: set_task compounds ({aba.diff(rolls[0])})",
        )
        rep = _rollout(env, a_task, actions)
        _check(rep.identical(rolls[0]), env_id, f"same task, seed and actions gave another rollout ({rep.diff(rolls[0])})")
    finally:
        env.close()

    # 8: TimeLimit truncation at the horizon through envs.make, and registered limit == env horizon.
    default = make(env_id)
    try:
        _check(
            default.spec.max_episode_steps == e.max_episode_steps == int(default.unwrapped.horizon), env_id,
            f"registered TimeLimit {default.spec.max_episode_steps} != environment horizon {default.unwrapped.horizon}",
        )
    finally:
        default.close()
    h = int(horizon) if horizon is not None else SHORT_HORIZON
    limited = make(env_id, horizon=h)
    try:
        limited.unwrapped.set_task(train[0])
        limited.reset(seed=_ROLLOUT_SEED)
        zero = np.zeros(limited.action_space.shape, dtype=limited.action_space.dtype)
        steps, terminated, truncated = 0, False, False
        while not (terminated or truncated) and steps <= h:
            _, _, terminated, truncated, _ = limited.step(zero)
            steps += 1
        _check(
            steps == h and truncated and not terminated, env_id,
            f"with horizon {h} and zero actions the episode ended after {steps} steps "
            f"(terminated={terminated}, truncated={truncated}); expected truncation at step {h}",
        )
    finally:
        limited.close()

    # 1: gymnasium's own API check, on the bare env (with its spec, so determinism is checked too).
    checked = make(env_id, horizon=max(h, 2))
    try:
        bare = checked.unwrapped
        bare.set_task(train[0])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                check_env(bare, skip_render_check=True)
            except AssertionError as err:
                raise AssertionError(f"{env_id}: gymnasium check_env failed: {err}") from err
        # check_env reports many problems (observation outside its space, wrong dtypes, a
        # non-bool flag) only as warnings; treat them as failures, except unbounded Box
        # limits, which are the truth for joint velocities and Meta-World's object slots.
        problems = [
            str(w.message) for w in caught
            if issubclass(w.category, UserWarning) and not any(s in str(w.message) for s in _ALLOWED_WARNINGS)
        ]
        _check(not problems, env_id, "gymnasium check_env warned: " + " | ".join(problems))
    finally:
        checked.close()


def unregister_meta_env(env_id: str) -> None:
    """Remove ``env_id`` from rlbench's and gymnasium's registries (tests register throwaway envs)."""
    registry._REGISTRY.pop(env_id, None)
    for spec in [s for s, target in registry._SPECS.items() if target == env_id]:
        del registry._SPECS[spec]
    gym.registry.pop(env_id, None)


@contextlib.contextmanager
def temporary_meta_env(env_id: str, entry_point: str, distribution: str, max_episode_steps: int, **kw: Any) -> Iterator[str]:
    """Register a meta-environment for the duration of a ``with`` block (then unregister it).

    Arguments as :func:`envs.registry.register_meta_env`. An existing registration of
    ``env_id`` is an error: a test must not shadow a real environment.
    """
    if env_id in registry.env_ids() or env_id in gym.registry:
        raise ValueError(f"{env_id} is already registered")
    register_meta_env(env_id, entry_point, distribution, max_episode_steps, **kw)
    try:
        yield env_id
    finally:
        unregister_meta_env(env_id)
