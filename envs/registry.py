"""Registration of rlbench meta-environments: one call per environment.

``register_meta_env`` registers the gymnasium id (with a *string* entry point, so
``EnvSpec.to_json()`` works) and remembers which task distribution belongs to it. The
registered ``max_episode_steps`` is the environment's horizon: the harness's single source
for it (presets put it into every run's ``sampler.horizon``).

Environments from anywhere: an environment registered by a user's own package is found in
two ways, without editing this repository.

* **Entry points**: a package declares entry points in the group :data:`ENTRY_POINT_GROUP`
  (``rlbench.envs``); loading one imports its module, which registers its environments (if
  the loaded object is callable, it is called too, so it may be a ``register()`` function).
  They are loaded the first time an id is not found, and by :func:`env_ids`.
* **Import specs** ``"package.module:EnvId"`` (gymnasium's ``module:id`` convention): the
  module is imported (its import registers the environment, or it exposes a factory) and
  ``EnvId`` is resolved: a registered id, or the name of a callable of the module that
  registers a meta-environment and returns its id. A run that names its environment this way
  keeps the spec as its ``env_id``, so every process (sampler workers, a later
  ``rlbench evaluate``) can resolve it again.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from importlib import metadata
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

    @property
    def horizon(self) -> int:
        """The environment's episode length: its registered ``max_episode_steps``."""
        return self.max_episode_steps


#: Entry-point group of packages that register meta-environments (see the module docstring).
ENTRY_POINT_GROUP = "rlbench.envs"

_REGISTRY: dict[str, MetaEnvEntry] = {}
#: Import specs ("module:EnvId") resolved in this process -> the registered id.
_SPECS: dict[str, str] = {}
_plugins_loaded = False


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
    """Every registered rlbench meta-environment id, in registration order (entry-point
    packages included)."""
    load_entry_points()
    return list(_REGISTRY)


def load_entry_points() -> None:
    """Load every entry point of :data:`ENTRY_POINT_GROUP` (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.isclass(obj):
                obj()
        except Exception as e:  # noqa: BLE001 - a broken plugin is named, on one line
            _plugins_loaded = False
            raise UnknownEnvError(f"entry point '{ep.name} = {ep.value}' of group {ENTRY_POINT_GROUP} "
                                  f"failed to load: {type(e).__name__}: {e}") from None


def _unknown(env_id: str) -> UnknownEnvError:
    known = ", ".join(_REGISTRY)
    return UnknownEnvError(f"unknown environment '{env_id}' (known: {known}; or name one as "
                           "package.module:EnvId)")


def _import_spec(spec: str) -> str:
    """Resolve ``"package.module:EnvId"`` to a registered id (see the module docstring)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise UnknownEnvError(f"environment spec '{spec}' must be package.module:EnvId")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UnknownEnvError(f"environment spec '{spec}': cannot import module '{module_name}' ({e})") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed on import: name it, one line
        raise UnknownEnvError(f"environment spec '{spec}': importing module '{module_name}' failed: "
                              f"{type(e).__name__}: {e}") from None
    if name in _REGISTRY:
        return name
    factory = getattr(module, name, None)
    if factory is None:
        raise UnknownEnvError(f"environment spec '{spec}': module '{module_name}' registers no meta-environment "
                              f"'{name}' and has no attribute '{name}'")
    if not callable(factory) or inspect.isclass(factory):
        raise UnknownEnvError(f"environment spec '{spec}': {module_name}.{name} is not a meta-environment "
                              f"(a {type(factory).__name__}; expected a registered id or a function that "
                              "registers one and returns its id)")
    try:
        env_id = factory()
    except Exception as e:  # noqa: BLE001
        raise UnknownEnvError(f"environment spec '{spec}': {module_name}.{name}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(env_id, str) or env_id not in _REGISTRY:
        raise UnknownEnvError(f"environment spec '{spec}': {module_name}.{name}() returned {env_id!r}, "
                              "not the id of a registered meta-environment")
    return env_id


def resolve(env_id: str) -> str:
    """The registered id that ``env_id`` names: itself, the id behind an import spec, or an id
    registered by an entry-point package."""
    if env_id in _REGISTRY:
        return env_id
    if env_id in _SPECS:
        return _SPECS[env_id]
    if ":" in env_id:
        _SPECS[env_id] = _import_spec(env_id)
        return _SPECS[env_id]
    load_entry_points()
    if env_id in _REGISTRY:
        return env_id
    raise _unknown(env_id)


def entry(env_id: str) -> MetaEnvEntry:
    """The registry entry of ``env_id`` (a registered id, or an import spec, see :func:`resolve`)."""
    return _REGISTRY[resolve(env_id)]


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
    e = entry(env_id)
    kw = dict(overrides)
    if horizon is not None:
        kw["max_episode_steps"] = int(horizon)
        if "horizon" in inspect.signature(_load(e.entry_point)).parameters:
            kw["horizon"] = int(horizon)
    env = gym.make(e.env_id, **kw)
    if horizon is not None:
        env.unwrapped.horizon = int(horizon)
    return env
