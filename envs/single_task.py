"""Any standard gymnasium task as a one-task meta-environment (for sanity checks and parity runs).

A task distribution with exactly one task turns DRS into plain single-task RL, so the same
sampler, advantage pipeline and learners that the meta-RL study uses can be compared with a
reference implementation (``scripts/bench_ppo_parity.py`` compares DRS+PPO with
stable-baselines3 PPO). ``register_single_task("HalfCheetah-v5")`` registers
``rlbench/Single-HalfCheetah-v5``.

The wrapped environment is the bare ``gymnasium.make(gym_id).unwrapped`` (the sampler enforces
the horizon, which defaults to the gymnasium spec's ``max_episode_steps``); episodes end by the
environment's termination rule or by the horizon. The policy's actions live in ``[-1, 1]``; a
task whose Box bounds differ is rescaled linearly (as ``gymnasium.wrappers.RescaleAction``
does), so a reference learner run on the same task should use that wrapper too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.base import InvalidTaskError, MetaEnv, TaskDistribution
from envs.registry import register_meta_env

PREFIX = "rlbench/Single-"


@dataclass(frozen=True)
class SingleTask:
    """The one task: the gymnasium id of the wrapped environment."""

    gym_id: str


class SingleTaskMetaEnv(MetaEnv):
    """``gym_id`` with actions in ``[-1, 1]`` and a no-op ``set_task``."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, gym_id: str, family: str = "toy", **make_kwargs: Any):
        self._env = gym.make(gym_id, **make_kwargs).unwrapped
        self._task = SingleTask(gym_id)
        self.family = family
        spec = gym.spec(gym_id)
        self.horizon = int(spec.max_episode_steps or 1000)
        self.dt = float(getattr(self._env, "dt", 1.0))
        self.observation_space = self._env.observation_space
        space = self._env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"{gym_id}: rlbench policies need a Box action space, got {space}")
        self._low = space.low.astype(np.float64)
        self._high = space.high.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=space.shape, dtype=np.float32)

    def set_task(self, task: Any) -> None:
        SingleTasks(self._task.gym_id).validate(task)

    def get_task(self) -> SingleTask:
        return self._task

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self._env.reset(seed=seed, options=options)

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        return self._env.step(self._low + (a + 1.0) * 0.5 * (self._high - self._low))

    def close(self) -> None:
        self._env.close()


class SingleTasks(TaskDistribution):
    """Exactly one task, for training and for testing."""

    def __init__(self, gym_id: str):
        self.task = SingleTask(gym_id)

    def sample(self, n: int, rng: np.random.Generator) -> list[SingleTask]:
        return [self.task] * int(n)

    def test_tasks(self, n: int, rng: np.random.Generator) -> list[SingleTask]:
        return [self.task] * int(n)

    def describe(self) -> str:
        return f"one task: {self.task.gym_id}"

    def validate(self, task: Any) -> None:
        if task != self.task:
            raise InvalidTaskError(f"expected {self.task}, got {task!r}")


def register_single_task(gym_id: str, family: str = "toy") -> str:
    """Register ``rlbench/Single-<gym_id>`` (idempotent) and return its id.

    Registration happens in the calling process; sampler workers started with ``fork`` (the
    default) inherit it."""
    env_id = f"{PREFIX}{gym_id}"
    horizon = int(gym.spec(gym_id).max_episode_steps or 1000)
    register_meta_env(
        env_id, "envs.single_task:SingleTaskMetaEnv", "envs.single_task:SingleTasks",
        max_episode_steps=horizon, kwargs={"gym_id": gym_id, "family": family}, family=family,
    )
    return env_id
