"""The two roles every meta-environment family fills: a task distribution and a task-settable env.

A *task* is a small, picklable, hashable value (a frozen dataclass). A
:class:`TaskDistribution` draws tasks with an explicit ``numpy.random.Generator``; a
:class:`MetaEnv` is a ``gymnasium.Env`` whose task is switched with ``set_task``.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable
from typing import Any

import gymnasium as gym
import numpy as np


class InvalidTaskError(ValueError):
    """A task value does not belong to the environment's task family."""


class UnknownEnvError(KeyError):
    """An environment id is not registered with rlbench."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


class MetaEnv(gym.Env, abc.ABC):
    """A gymnasium environment whose task can be switched.

    Subclasses expose the physical action space (for MuJoCo tasks ``[-1, 1]^n``), a
    ``dt`` (seconds per environment step) and a default ``horizon``. ``reset`` keeps the
    current task; switching tasks never changes the environment's construction-time
    constants (no compounding of multiplicative parameters).
    """

    #: Default maximal episode length (the sampler's horizon unless the config overrides it).
    horizon: int = 200
    #: Environment family, used by presets and the fingerprint: "locomotion", "metaworld", "toy".
    family: str = "toy"

    @abc.abstractmethod
    def set_task(self, task: Any) -> None:
        """Switch to ``task``; raise InvalidTaskError if it is not a task of this family."""

    @abc.abstractmethod
    def get_task(self) -> Any:
        """The current task value."""

    def task_group(self, task: Any) -> Hashable:
        """Tasks in the same group can share one env instance (only ``set_task`` between them).

        Meta-World's ML10/ML45 mix environment classes; one instance serves one class.
        """
        return None


class TaskDistribution(abc.ABC):
    """Where tasks come from: meta-training tasks and meta-test tasks."""

    #: True when the benchmark defines a train/test split (Meta-World); False when test tasks
    #: are fresh draws from the same distribution (locomotion).
    has_split: bool = False

    @abc.abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> list[Any]:
        """``n`` meta-training tasks drawn with ``rng``."""

    @abc.abstractmethod
    def test_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        """``n`` meta-test tasks drawn with ``rng``.

        Without a split these are fresh draws from the training distribution; the harness
        passes a generator from a seed stream disjoint from training ("test-tasks").
        """

    #: True when :meth:`stratified_test_tasks` is defined (tasks with one scalar parameter).
    stratifiable: bool = False

    def stratified_test_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        """``n`` meta-test tasks, task i drawn uniformly within the i-th of ``n`` equal-probability
        strata of the task's scalar parameter (``eval.task_design: stratified``, docs/protocol.md
        section 6.1). Only distributions with ``stratifiable = True`` define it."""
        raise NotImplementedError(f"{type(self).__name__} has no stratified meta-test design")

    @abc.abstractmethod
    def describe(self) -> str:
        """One line: what varies between tasks."""

    def split_description(self) -> str:
        return "held-out split" if self.has_split else "fresh draws (no split)"

    def validate(self, task: Any) -> None:
        """Raise InvalidTaskError if ``task`` is not a task of this distribution."""
