"""rlbench meta-environments: task distributions and their gymnasium environments.

Importing this package registers every environment of the study (docs/protocol.md section 2)
plus a pure-numpy toy used by fast tests. Adding an environment is one module and one
``register_meta_env`` call (README, "Adding an environment").
"""

from __future__ import annotations

from envs.base import InvalidTaskError, MetaEnv, TaskDistribution, UnknownEnvError
from envs.fingerprint import fingerprint
from envs.registry import (
    entry,
    env_ids,
    get_task_distribution,
    make,
    make_meta_env,
    register_meta_env,
)

__all__ = [
    "InvalidTaskError", "MetaEnv", "TaskDistribution", "UnknownEnvError", "entry", "env_ids", "fingerprint",
    "get_task_distribution", "make", "make_meta_env", "register_meta_env",
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
