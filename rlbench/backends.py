"""Stepper backends beyond ``"gym"``, registered into :data:`rlbench.sampler.STEPPERS`.

``rlbench.sampler`` calls :func:`register` when it is imported, so every sampler sees the
same backends. A backend is a factory ``factory(env_id, horizon, env_kwargs, **kw) -> Stepper``
with optional attributes:

- ``supports(env_id) -> bool``: ``backend="auto"`` picks the first registered backend that
  supports the environment (only register backends here that are faster than ``"gym"``
  where they claim support; scripts/bench_sampler.py measures it).
- ``threaded = True``: the backend parallelises inside ONE process; the sampler then creates
  a single in-process stepper with ``threads=n_workers`` instead of ``n_workers`` worker
  processes.

Dependency direction: rlbench imports envs, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def mujoco_batched(env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None, threads: int = 1):
    """The four locomotion environments, all slots of a batch stepped together
    (:class:`envs.locomotion_batched.BatchedLocomotionStepper`); bit-identical to ``"gym"``.

    ``n_workers`` means physics threads in the sampler's own process for this backend: on
    2 cores one process with 2 threads beats 2 worker processes with 1 thread each (no
    pipe transfers, the policy and the physics share one address space; measured by
    scripts/bench_sampler.py, results/bench/README.md).
    """
    # Imported here: it imports mujoco, which samplers of other backends never need.
    from envs.locomotion_batched import BatchedLocomotionStepper

    return BatchedLocomotionStepper(env_id, horizon, env_kwargs, threads=threads)


def _supports_locomotion(env_id: str) -> bool:
    from envs.locomotion_batched import supports

    return supports(env_id)


mujoco_batched.supports = _supports_locomotion  # type: ignore[attr-defined]
mujoco_batched.threaded = True  # type: ignore[attr-defined]


def metaworld_batched(env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None):
    """Meta-World with the classes of :data:`envs.metaworld_batched.VECTORISED` (seven of the ten
    ML10 train classes) stepped batched (observation, reward and success vectorised per class)
    and every other class by the fast path
    (:class:`envs.metaworld_batched.BatchedMetaWorldStepper`); bit-identical to ``"gym"``.
    """
    from envs.metaworld_batched import BatchedMetaWorldStepper

    return BatchedMetaWorldStepper(env_id, horizon, env_kwargs)


def metaworld_fast(env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None):
    """Meta-World, one fast package environment per slot (cached ids, vectorised contact test,
    dead calls dropped) with a reset cache (:class:`envs.metaworld_fast.FastStepper`);
    bit-identical to ``"gym"``.
    """
    from envs.metaworld_fast import FastStepper

    return FastStepper(env_id, horizon, env_kwargs)


def _supports_metaworld(env_id: str) -> bool:
    from envs.metaworld_fast import supports

    return supports(env_id)


metaworld_batched.supports = _supports_metaworld  # type: ignore[attr-defined]
metaworld_fast.supports = _supports_metaworld  # type: ignore[attr-defined]

#: Which simulation code path each backend runs (run.json records it as ``sampler_path``; not a
#: comparability key, since every backend is bit-identical to "gym" by test).
PATHS = {
    "gym": "one MetaEnv per slot (Meta-World: the package's own env.step)",
    "mujoco-batched": "batched mujoco (envs.locomotion_batched)",
    "metaworld-batched": "7 ML10 classes batched, other classes fast path (envs.metaworld_batched)",
    "metaworld-fast": "fast path + reset cache (envs.metaworld_fast)",
}


def path_of(backend: str, env_id: str) -> str:
    """The code path a sampler with ``backend`` (``"auto"`` resolved) runs for ``env_id``."""
    from rlbench.sampler import resolve_backend

    name = resolve_backend(backend, env_id)
    return f"{name}: {PATHS.get(name, 'registered backend')}"


def register(steppers: dict[str, Callable[..., Any]]) -> None:
    """Add this module's backends to ``steppers`` (the sampler's STEPPERS). Order matters:
    ``backend="auto"`` takes the first that supports the environment."""
    steppers.setdefault("mujoco-batched", mujoco_batched)
    steppers.setdefault("metaworld-batched", metaworld_batched)
    steppers.setdefault("metaworld-fast", metaworld_fast)
