"""A pure-numpy 2-D point-reaching meta-environment for fast tests (no physics engine).

The agent starts at the origin and moves by ``STEP_SIZE * clip(a, -1, 1)`` per step; the task
is a goal position drawn uniformly from the square of half-width ``GOAL_RANGE`` around
``GOAL_CENTER`` (away from the start, so a task-agnostic policy can still learn to head for
the centre: DRS has something to learn, MAML something to adapt). Reward is the negative
Euclidean distance to the goal after the move. The goal is not observed, so a policy can only
do well on a task after adapting to it: exactly the situation meta-RL is about.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from envs.base import InvalidTaskError, MetaEnv, TaskDistribution

STEP_SIZE = 0.1
GOAL_RANGE = 1.0
GOAL_CENTER = (1.0, 0.0)
HORIZON = 20
RESET_NOISE = 0.01


@dataclass(frozen=True)
class GoalTask:
    """Reach ``(x, y)``."""

    x: float
    y: float


class PointGoalMetaEnv(MetaEnv):
    metadata = {"render_modes": []}
    family = "toy"
    horizon = HORIZON

    def __init__(self, **_: object):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.dt = 1.0
        self._task = GoalTask(*GOAL_CENTER)
        self._goal = np.asarray(GOAL_CENTER, dtype=np.float64)
        self._pos = np.zeros(2)

    def set_task(self, task) -> None:
        PointGoalTasks().validate(task)
        self._task = task
        self._goal = np.array([task.x, task.y], dtype=np.float64)

    def get_task(self) -> GoalTask:
        return self._task

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-RESET_NOISE, RESET_NOISE, size=2)
        return self._pos.copy(), {}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._pos = self._pos + STEP_SIZE * a
        r = -float(np.linalg.norm(self._pos - self._goal))
        return self._pos.copy(), r, False, False, {}


class PointGoalTasks(TaskDistribution):
    def sample(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        xy = np.asarray(GOAL_CENTER) + rng.uniform(-GOAL_RANGE, GOAL_RANGE, size=(int(n), 2))
        return [GoalTask(float(x), float(y)) for x, y in xy]

    def test_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        return self.sample(n, rng)

    def describe(self) -> str:
        (cx, cy), r = GOAL_CENTER, GOAL_RANGE
        return f"goal ~ U([{cx - r:g}, {cx + r:g}] x [{cy - r:g}, {cy + r:g}])"

    def validate(self, task) -> None:
        if not isinstance(task, GoalTask):
            raise InvalidTaskError(f"expected a GoalTask, got {type(task).__name__}")
        (cx, cy), r = GOAL_CENTER, GOAL_RANGE
        if not (abs(task.x - cx) <= r and abs(task.y - cy) <= r):
            raise InvalidTaskError(f"goal ({task.x}, {task.y}) outside the task square ({self.describe()})")
