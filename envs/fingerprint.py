"""A JSON-serialisable description of exactly which environment a run used.

Results are self-describing (DESIGN.md, principle 8): every run stores the fingerprint of its
environment next to its config, so two results can be compared only when their
fingerprints agree (same model constants, same benchmark seed, same horizon, same package
versions).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
from typing import Any

import gymnasium as gym

from envs.registry import entry, get_task_distribution, make_meta_env

#: Packages whose versions change what an environment computes.
PACKAGES = ("mujoco", "gymnasium", "metaworld", "numpy")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (None when a package is not installed)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, numpy scalars/arrays -> Python values, dataclasses -> dicts (recursively)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _jsonable(value.tolist())
    return value


def protocol_choices(env: Any) -> dict[str, Any]:
    """The protocol numbers an environment embodies, taken from its own module.

    An environment may define ``protocol() -> dict`` (Meta-World does); the locomotion
    environments are described by their :class:`envs.locomotion.LocomotionSpec` plus the
    module's rand-params and termination constants. Other environments give ``{}``.
    """
    if callable(getattr(env, "protocol", None)):
        return dict(env.protocol())
    from envs import locomotion

    if isinstance(env, locomotion.LocomotionMetaEnv):
        out: dict[str, Any] = {"name": env.name, **dataclasses.asdict(env.spec_), "xml": env.model_file}
        if env.spec_.task_kind == "params":
            out["rand_param_log_scale"] = dict(locomotion.RAND_PARAM_LOG_SCALE)
            out["log_scale_limit"] = locomotion.LOG_SCALE_LIMIT
        if env.spec_.termination == "walker":
            out["healthy_height_range"] = locomotion.WALKER_HEIGHT_RANGE
            out["healthy_angle_range"] = locomotion.WALKER_ANGLE_RANGE
        elif env.spec_.termination == "hopper":
            out["healthy_min_height"] = locomotion.HOPPER_MIN_HEIGHT
            out["healthy_max_abs_angle"] = locomotion.HOPPER_MAX_ABS_ANGLE
            out["healthy_max_abs_state"] = locomotion.HOPPER_MAX_ABS_STATE
        return out
    return {}


def _non_default(env_id: str, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``env_kwargs`` without the arguments equal to the constructor's default (same environment)."""
    import inspect

    from envs.registry import _load

    params = inspect.signature(_load(entry(env_id).entry_point)).parameters
    return {k: v for k, v in env_kwargs.items() if k not in params or params[k].default != v}


def fingerprint(env_id: str, horizon: int | None = None, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that identifies the environment ``env_id`` as a run would use it.

    Keys: ``env_id``, ``family``, ``version`` (the registered ``-vN``), ``horizon`` (``horizon``
    or the registered episode length), ``obs_dim``, ``act_dim``, ``dt``, ``tasks`` and
    ``split`` (the task distribution's descriptions), ``packages`` (versions of mujoco,
    gymnasium, metaworld, numpy), ``python`` and ``protocol`` (see :func:`protocol_choices`).
    ``env_kwargs`` (constructor arguments of the run, e.g. Meta-World's
    ``reward_function_version``) are passed to the environment, so ``protocol`` shows their
    effect; the ones that differ from the constructor's defaults are also recorded under
    ``env_kwargs`` (the key is absent when there are none, so an explicit default and no
    argument give the same fingerprint).
    The result survives ``json.dumps``. Building it constructs the environment but not a
    Meta-World benchmark, so it is cheap for every id.
    """
    e = entry(env_id)
    extra = _non_default(env_id, dict(env_kwargs or {}))
    env = make_meta_env(env_id, horizon=horizon, **(env_kwargs or {}))
    try:
        dist = get_task_distribution(env_id)
        spec = gym.spec(e.env_id)
        out = {
            "env_id": env_id,
            "family": e.family,
            "version": spec.version,
            "entry_point": e.entry_point,
            "distribution": e.distribution,
            "kwargs": dict(e.kwargs),
            "horizon": int(env.horizon),
            "registered_horizon": int(e.max_episode_steps),
            "obs_dim": int(env.observation_space.shape[0]),
            "act_dim": int(env.action_space.shape[0]),
            "dt": float(env.dt),
            "tasks": dist.describe(),
            "split": dist.split_description(),
            "packages": package_versions(),
            "python": platform.python_version(),
            "protocol": protocol_choices(env),
        }
        if extra:
            out["env_kwargs"] = extra
    finally:
        env.close()
    out = _jsonable(out)
    json.dumps(out)  # fail here, not when the results are written
    return out
