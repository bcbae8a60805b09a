"""``RunConfig.env_kwargs``: environment constructor arguments set per run, checked strictly.

A run may pass keyword arguments to its environment's constructor (for Meta-World, the
package's ``reward_function_version``: "v1" or "v2"). They reach every environment the run
builds: the sampler's (``Sampler(..., env_kwargs=...)``, also in its worker processes and
backends), the evaluator's, and the fingerprint stored in the comparability record, so two
runs with different environment arguments are never compared silently.

The check is as strict as the rest of the configuration (:mod:`rlbench.config`): a key must
be a named parameter of the environment class's constructor, its value must fit the
parameter's annotation (a ``Literal`` lists the allowed values), and the constructor must
accept it (the environment is built once to check; its ValueError becomes the message).
Three kinds of parameters
are refused because a per-run value would contradict something else:

* ``horizon`` -- set by ``sampler.horizon``;
* the arguments registered with the environment id (e.g. Meta-World's ``benchmark``) -- they
  define the id;
* arguments the task distribution's constructor also takes (e.g. ``benchmark_seed``) -- the
  trainer and evaluator build the distribution from the id alone, so environment and tasks
  would disagree.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import envs
from envs.base import UnknownEnvError
from envs.registry import _load
from rlbench.config import ConfigError, _coerce

#: Constructor parameters set by other config keys.
SET_ELSEWHERE = {"horizon": "sampler.horizon"}

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def settable(env_id: str) -> dict[str, Any]:
    """Constructor parameters of ``env_id`` that ``env_kwargs`` may set -> their annotations."""
    e = envs.entry(env_id)
    cls = _load(e.entry_point)
    dist_params = set(inspect.signature(_load(e.distribution)).parameters)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):  # an annotation that cannot be resolved: accept any value
        hints = {}
    return {
        name: hints.get(name, Any)
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in _NAMED and name not in SET_ELSEWHERE and name not in e.kwargs and name not in dist_params
    }


def check_env_kwargs(env_id: str, kwargs: dict[str, Any], prefix: str = "env_kwargs") -> dict[str, Any]:
    """Validate ``kwargs`` for ``env_id``'s constructor; return them coerced to their annotations.

    Raises :class:`~rlbench.config.ConfigError` (one line, naming ``prefix.key``) for an unknown
    environment, an unknown or refused key, or a value outside the parameter's type.
    """
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {kwargs!r}")
    try:
        e = envs.entry(env_id)
        allowed = settable(env_id)
    except UnknownEnvError as err:
        raise ConfigError(f"env_id: {err}") from None
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        name = f"{prefix}.{key}"
        if key in SET_ELSEWHERE:
            raise ConfigError(f"{name}: set {SET_ELSEWHERE[key]} instead")
        if key in e.kwargs:
            raise ConfigError(f"{name}: fixed by the environment id {env_id} ({key}={e.kwargs[key]!r})")
        if key not in allowed and key in inspect.signature(_load(e.distribution)).parameters:
            raise ConfigError(f"{name}: also defines the task distribution of {env_id}; it cannot be set per run")
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"unknown config key '{name}' for {env_id} (settable: {known})")
        out[key] = _coerce(value, allowed[key], name)
    if out:  # values the constructor itself validates (e.g. a str that must be one of a few)
        try:
            envs.make_meta_env(env_id, **out).close()
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{prefix}: {err}") from None
    return out
