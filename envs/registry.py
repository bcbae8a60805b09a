"""Registration of rlbench meta-environments: one call per environment.

``register_meta_env`` registers the gymnasium id (with a *string* entry point, so
``EnvSpec.to_json()`` works) and remembers which task distribution belongs to it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from envs.base import MetaEnv, TaskDistribution, UnknownEnvError


@dataclass(frozen=True)
class MetaEnvEntry:
    env_id: str
    entry_point: str  # "module:Class" of the MetaEnv
    distribution: str  # "module:Class" of the TaskDistribution
    max_episode_steps: int
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to both constructors
    family: str = "toy"


_REGISTRY: dict[str, MetaEnvEntry] = {}


def register_meta_env(
    env_id: str,
    entry_point: str,
    distribution: str,
    max_episode_steps: int,
    kwargs: dict[str, Any] | None = None,
    family: str = "toy",
) -> None:
    """Register a meta-environment with gymnasium and with rlbench.

    ``entry_point`` and ``distribution`` are ``"module:Class"`` strings. ``kwargs`` go to
    the environment constructor and, filtered to the parameters it accepts, to the
    distribution constructor (so that both agree on e.g. a benchmark seed).
    """
    kwargs = dict(kwargs or {})
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_episode_steps, kwargs=kwargs)
    _REGISTRY[env_id] = MetaEnvEntry(env_id, entry_point, distribution, max_episode_steps, kwargs, family)


def env_ids() -> list[str]:
    """Every registered rlbench meta-environment id, in registration order."""
    return list(_REGISTRY)


def entry(env_id: str) -> MetaEnvEntry:
    try:
        return _REGISTRY[env_id]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise UnknownEnvError(f"unknown environment '{env_id}' (known: {known})") from None


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def get_task_distribution(env_id: str, **overrides: Any) -> TaskDistribution:
    """The task distribution of ``env_id`` (meta-training and meta-test tasks)."""
    e = entry(env_id)
    cls = _load(e.distribution)
    params = inspect.signature(cls).parameters
    kw = {k: v for k, v in {**e.kwargs, **overrides}.items() if k in params}
    return cls(**kw)


def make_meta_env(env_id: str, horizon: int | None = None, **overrides: Any) -> MetaEnv:
    """The bare MetaEnv for ``env_id`` (no gymnasium wrappers): what the sampler steps.

    ``horizon`` overrides the registered episode length (the sampler enforces it; for
    Meta-World it is also passed to the environment, whose own limit must not be shorter).
    """
    e = entry(env_id)
    cls = _load(e.entry_point)
    kw = {**e.kwargs, **overrides}
    if horizon is not None and "horizon" in inspect.signature(cls).parameters:
        kw["horizon"] = horizon
    env = cls(**kw)
    if horizon is not None:
        env.horizon = int(horizon)
    return env


def make(env_id: str, horizon: int | None = None, **overrides: Any) -> gym.Env:
    """``gymnasium.make`` for an rlbench id, with the TimeLimit at ``horizon`` (default: registered)."""
    entry(env_id)
    kw = dict(overrides)
    if horizon is not None:
        kw["max_episode_steps"] = int(horizon)
        if "horizon" in inspect.signature(_load(_REGISTRY[env_id].entry_point)).parameters:
            kw["horizon"] = int(horizon)
    env = gym.make(env_id, **kw)
    if horizon is not None:
        env.unwrapped.horizon = int(horizon)
    return env
