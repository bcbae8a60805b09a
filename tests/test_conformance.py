"""Every registered meta-environment passes envs.testing.check_meta_env, and the check can fail.

The second half defines deliberately broken environments (a no-op set_task, a rand-params
env that compounds its multipliers, an rng-ignoring distribution, an overlapping split, an
env that truncates before its horizon, a get_task that lies) and requires the check to
reject each one with a message naming the problem: a check that cannot fail is worthless.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import envs
from envs.locomotion import LocomotionMetaEnv, RandParamsTask, apply_params
from envs.point import GoalTask, PointGoalMetaEnv, PointGoalTasks
from envs.testing import check_meta_env, temporary_meta_env

_FAMILY_MARKS = {"locomotion": [pytest.mark.mujoco], "metaworld": [pytest.mark.metaworld]}


#: Building ML45 (50 classes x 50 goals, metaworld's own resets) takes about 30 s: its tests are
#: slow checks (python -m pytest -q -m slow); ML10 runs the same code in the fast suite.
SLOW_IDS = {"rlbench/ML45-v0"}


def _params():
    return [pytest.param(i, marks=[*_FAMILY_MARKS.get(envs.entry(i).family, []), *([pytest.mark.slow] if i in SLOW_IDS else [])],
                         id=i) for i in envs.env_ids()]


@pytest.mark.parametrize("env_id", _params())
def test_registered_env_conforms(env_id):
    check_meta_env(env_id)


def test_check_covers_every_study_environment():
    ids = set(envs.env_ids())
    study = {
        "rlbench/HalfCheetahRandVel-v0", "rlbench/Walker2DRandVel-v0", "rlbench/HopperRandParams-v0",
        "rlbench/Walker2DRandParams-v0", "rlbench/ML1-Push-v0", "rlbench/ML1-Reach-v0", "rlbench/ML10-v0",
        "rlbench/ML45-v0",
    }
    assert study <= ids


# --------------------------------------------------------------------------------------
# Broken environments: the check must catch each one.
# --------------------------------------------------------------------------------------


class NoOpTaskPoint(PointGoalMetaEnv):
    """Remembers the task but never moves the goal: every task has the same rewards."""

    def set_task(self, task) -> None:
        PointGoalTasks().validate(task)
        self._task = task


class LyingGetTaskPoint(PointGoalMetaEnv):
    def get_task(self):
        return GoalTask(0.0, 0.0)


class EarlyTruncationPoint(PointGoalMetaEnv):
    """Truncates after 3 steps whatever the horizon (e.g. an inner limit nobody set)."""

    def reset(self, *, seed=None, options=None):
        self._t = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, r, term, _, info = super().step(action)
        self._t += 1
        return obs, r, term, self._t >= 3, info


class CompoundingHopper(LocomotionMetaEnv):
    """The classic bug: multiply the model's LIVE arrays, so multipliers pile up across tasks."""

    def set_task(self, task) -> None:
        self._dist.validate(task)
        self._task = task
        for name, mult in task.arrays().items():
            arr = getattr(self.model, name)
            arr *= mult.reshape(arr.shape)


class CorrectHopper(LocomotionMetaEnv):
    """Control for CompoundingHopper: the same class, applying multipliers to the originals."""

    def set_task(self, task) -> None:
        self._dist.validate(task)
        self._task = task
        if isinstance(task, RandParamsTask):
            apply_params(self.model, self._original, task)


class GlobalRngTasks(PointGoalTasks):
    """Ignores the generator it is given."""

    def sample(self, n, rng):
        return super().sample(n, np.random.default_rng())


class OverlappingSplitTasks(PointGoalTasks):
    """Claims a train/test split but draws test tasks from the train stream."""

    has_split = True


@dataclass(frozen=True)
class Case:
    name: str
    env: str
    dist: str
    match: str
    kwargs: dict | None = None
    steps: int = 20


M = __name__
BROKEN = [
    Case("noop-set-task", f"{M}:NoOpTaskPoint", "envs.point:PointGoalTasks", "set_task has no effect"),
    Case("lying-get-task", f"{M}:LyingGetTaskPoint", "envs.point:PointGoalTasks", "get_task"),
    Case("early-truncation", f"{M}:EarlyTruncationPoint", "envs.point:PointGoalTasks", "expected truncation at step"),
    Case("global-rng", "envs.point:PointGoalMetaEnv", f"{M}:GlobalRngTasks", "same rng seed gave different tasks"),
    Case("overlapping-split", "envs.point:PointGoalMetaEnv", f"{M}:OverlappingSplitTasks", "train and test tasks overlap"),
    Case(
        "compounding-rand-params", f"{M}:CompoundingHopper", "envs.locomotion:LocomotionTasks", "compound|re-setting",
        kwargs={"name": "HopperRandParams"}, steps=200,
    ),
]


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name, marks=[pytest.mark.mujoco] if "hopper" in c.env.lower() else []) for c in BROKEN],
)
def test_check_catches_broken_env(case):
    with (
        temporary_meta_env(
            f"rlbench-test/{case.name}-v0", case.env, case.dist, max_episode_steps=case.steps, kwargs=case.kwargs,
        ) as env_id,
        pytest.raises(AssertionError, match=case.match),
    ):
        check_meta_env(env_id)
    assert env_id not in envs.env_ids()


@pytest.mark.mujoco
def test_correct_variant_of_the_compounding_env_passes():
    """The compounding case fails because of compounding, not because of the test scaffolding."""
    with temporary_meta_env(
        "rlbench-test/correct-hopper-v0", f"{M}:CorrectHopper", "envs.locomotion:LocomotionTasks",
        max_episode_steps=200, kwargs={"name": "HopperRandParams"},
    ) as env_id:
        check_meta_env(env_id)
