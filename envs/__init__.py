"""rlbench meta-environments: task distributions and their gymnasium environments.

Importing this package registers every environment of the study (docs/protocol.md section 2)
plus a pure-numpy toy used by fast tests. Adding an environment is one module and one
``register_meta_env`` call (README, "Adding an environment"), in this package or in the
user's own (found through the ``rlbench.envs`` entry-point group or a
``package.module:EnvId`` spec, :mod:`envs.registry`). Each registration's
``max_episode_steps`` is that environment's horizon, for the whole harness.
"""

from __future__ import annotations

from envs.base import InvalidTaskError, MetaEnv, TaskDistribution, UnknownEnvError
from envs.fingerprint import fingerprint
from envs.registry import (
    ENTRY_POINT_GROUP,
    entry,
    env_ids,
    get_task_distribution,
    load_entry_points,
    make,
    make_meta_env,
    register_meta_env,
    resolve,
)

__all__ = [
    "ENTRY_POINT_GROUP", "InvalidTaskError", "MetaEnv", "TaskDistribution", "UnknownEnvError", "entry", "env_ids",
    "fingerprint", "get_task_distribution", "load_entry_points", "make", "make_meta_env", "register_meta_env",
    "resolve",
]

for _name in ("HalfCheetahRandVel", "Walker2DRandVel", "HopperRandParams", "Walker2DRandParams"):
    register_meta_env(
        f"rlbench/{_name}-v0", "envs.locomotion:LocomotionMetaEnv", "envs.locomotion:LocomotionTasks",
        max_episode_steps=200, kwargs={"name": _name}, family="locomotion",
    )

for _name, _bench in (("ML1-Push", "ML1:push-v3"), ("ML1-Reach", "ML1:reach-v3"), ("ML10", "ML10"), ("ML45", "ML45")):
    register_meta_env(
        f"rlbench/{_name}-v0", "envs.meta_world:MetaWorldMetaEnv", "envs.meta_world:MetaWorldTasks",
        max_episode_steps=150, kwargs={"benchmark": _bench}, family="metaworld",
    )

register_meta_env(
    "rlbench/PointGoal-v0", "envs.point:PointGoalMetaEnv", "envs.point:PointGoalTasks",
    max_episode_steps=20, family="toy",
)
