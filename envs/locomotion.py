"""MuJoCo locomotion meta-environments of Gao & Sener (2020), on the official mujoco bindings.

Every number of docs/protocol.md section 2 for these four environments lives in
:data:`SPECS` (one :class:`LocomotionSpec` per environment) and in the task-range constants
below; nothing else in the project repeats them. Sources: rand_param_envs
(dennisl88/rand_param_envs) and the authors' released code (isl-org/MetaLearningTradeoffs),
ported to gymnasium's bundled model files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco import mujoco_env

from envs.base import InvalidTaskError, MetaEnv, TaskDistribution

ASSETS = os.path.join(os.path.dirname(mujoco_env.__file__), "assets")


# --------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VelocityTask:
    """Run forward at ``goal_velocity`` (m/s)."""

    goal_velocity: float


@dataclass(frozen=True)
class RandParamsTask:
    """Multipliers applied to the model's ORIGINAL physics arrays (flattened, row-major)."""

    body_mass: tuple[float, ...]
    body_inertia: tuple[float, ...]
    geom_friction: tuple[float, ...]
    dof_damping: tuple[float, ...]

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name)) for name in RAND_PARAM_LOG_SCALE}


#: Rand-params multipliers: base ** U(-LOG_SCALE_LIMIT, LOG_SCALE_LIMIT), one draw per array
#: element (rand_param_envs; docs/protocol.md section 2).
RAND_PARAM_LOG_SCALE = {"body_mass": 1.5, "body_inertia": 1.5, "geom_friction": 1.5, "dof_damping": 1.3}
LOG_SCALE_LIMIT = 3.0


# --------------------------------------------------------------------------------------
# Environment specs (docs/protocol.md section 2 table)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocomotionSpec:
    """Everything that defines one locomotion environment."""

    xml: str  # gymnasium asset file
    timestep: float  # MuJoCo physics timestep (s)
    frame_skip: int  # physics steps per environment step
    task_kind: Literal["velocity", "params"]
    goal_velocity_range: tuple[float, float]  # velocity tasks only
    alive_bonus: float  # constant reward per step
    ctrl_cost: float  # coefficient of sum(a^2)
    termination: Literal["none", "walker", "hopper"]
    obs_qvel_clip: float | None  # clip(qvel, -c, c) in observations; None: no clip
    reset_noise: Literal["cheetah", "uniform"]  # see _reset_noise
    reset_noise_scale: float
    horizon: int = 200


SPECS: dict[str, LocomotionSpec] = {
    "HalfCheetahRandVel": LocomotionSpec(
        xml="half_cheetah.xml", timestep=0.01, frame_skip=5, task_kind="velocity",
        goal_velocity_range=(0.0, 3.0), alive_bonus=0.0, ctrl_cost=0.05, termination="none",
        obs_qvel_clip=None, reset_noise="cheetah", reset_noise_scale=0.1,
    ),
    "Walker2DRandVel": LocomotionSpec(
        xml="walker2d.xml", timestep=0.002, frame_skip=8, task_kind="velocity",
        goal_velocity_range=(0.0, 10.0), alive_bonus=15.0, ctrl_cost=1e-3, termination="walker",
        obs_qvel_clip=10.0, reset_noise="uniform", reset_noise_scale=0.005,
    ),
    "HopperRandParams": LocomotionSpec(
        xml="hopper.xml", timestep=0.004, frame_skip=4, task_kind="params",
        goal_velocity_range=(0.0, 0.0), alive_bonus=1.0, ctrl_cost=1e-3, termination="hopper",
        obs_qvel_clip=10.0, reset_noise="uniform", reset_noise_scale=0.005,
    ),
    "Walker2DRandParams": LocomotionSpec(
        xml="walker2d.xml", timestep=0.004, frame_skip=4, task_kind="params",
        goal_velocity_range=(0.0, 0.0), alive_bonus=1.0, ctrl_cost=1e-3, termination="walker",
        obs_qvel_clip=10.0, reset_noise="uniform", reset_noise_scale=0.005,
    ),
}

# Healthy ranges of the termination rules (docs/protocol.md section 2).
WALKER_HEIGHT_RANGE = (0.8, 2.0)
WALKER_ANGLE_RANGE = (-1.0, 1.0)
HOPPER_MIN_HEIGHT = 0.7
HOPPER_MAX_ABS_ANGLE = 0.2
HOPPER_MAX_ABS_STATE = 100.0


#: Walker model file per foot-friction choice (docs/protocol.md section 2): "gs" is the authors'
#: walker2d.xml (rand_param_envs; gym's old file, shipped by gymnasium as walker2d.xml): right
#: foot friction 0.9, left 1.9. "v5" is gymnasium's walker2d_v5.xml, both feet 1.9. The two
#: files differ in nothing else.
WALKER_XML = {"gs": "walker2d.xml", "v5": "walker2d_v5.xml"}
FOOT_FRICTION_DEFAULT = "gs"


def model_file(spec: LocomotionSpec, foot_friction: str = FOOT_FRICTION_DEFAULT) -> str:
    """The asset file of ``spec`` under the ``foot_friction`` choice (Walker environments only)."""
    if foot_friction not in WALKER_XML:
        raise ValueError(f"foot_friction must be one of {', '.join(map(repr, WALKER_XML))}, got {foot_friction!r}")
    if spec.termination == "walker":
        return WALKER_XML[foot_friction]
    if foot_friction != FOOT_FRICTION_DEFAULT:
        raise ValueError("foot_friction applies to the Walker environments only")
    return spec.xml


def load_model(spec: LocomotionSpec, foot_friction: str = FOOT_FRICTION_DEFAULT) -> mujoco.MjModel:
    """The spec's MjModel with the protocol's physics timestep."""
    model = mujoco.MjModel.from_xml_path(os.path.join(ASSETS, model_file(spec, foot_friction)))
    model.opt.timestep = spec.timestep
    return model


def apply_params(model: mujoco.MjModel, original: dict[str, np.ndarray], task: RandParamsTask) -> None:
    """Set the model's physics arrays to ``original * multipliers`` (never compounding)."""
    for name, mult in task.arrays().items():
        target = getattr(model, name)
        target[...] = original[name] * mult.reshape(original[name].shape)


def original_params(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    """Copies (not live views) of the arrays that rand-params tasks scale."""
    return {name: np.array(getattr(model, name), copy=True) for name in RAND_PARAM_LOG_SCALE}


def is_healthy(spec: LocomotionSpec, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """The protocol's "not terminated" rule, vectorised over leading dimensions of qpos/qvel."""
    if spec.termination == "none":
        return np.ones(qpos.shape[:-1], dtype=bool)
    height, angle = qpos[..., 1], qpos[..., 2]
    if spec.termination == "walker":
        lo, hi = WALKER_HEIGHT_RANGE
        alo, ahi = WALKER_ANGLE_RANGE
        return (height > lo) & (height < hi) & (angle > alo) & (angle < ahi)
    state = np.concatenate([qpos, qvel], axis=-1)
    return (
        np.isfinite(state).all(axis=-1)
        & (np.abs(state[..., 2:]) < HOPPER_MAX_ABS_STATE).all(axis=-1)
        & (height > HOPPER_MIN_HEIGHT)
        & (np.abs(angle) < HOPPER_MAX_ABS_ANGLE)
    )


def observation(spec: LocomotionSpec, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """qpos without the torso x, then (optionally clipped) qvel; vectorised."""
    if spec.obs_qvel_clip is not None:
        qvel = np.clip(qvel, -spec.obs_qvel_clip, spec.obs_qvel_clip)
    return np.concatenate([qpos[..., 1:], qvel], axis=-1)


def reward(spec: LocomotionSpec, velocity: np.ndarray, action: np.ndarray, goal_velocity) -> np.ndarray:
    """Per-step reward of docs/protocol.md section 2; vectorised over leading dimensions."""
    ctrl = spec.ctrl_cost * np.sum(np.square(action), axis=-1)
    if spec.task_kind == "velocity":
        forward = -np.abs(velocity - goal_velocity)
    else:
        forward = velocity
    return forward + spec.alive_bonus - ctrl


def reset_state(spec: LocomotionSpec, init_qpos: np.ndarray, init_qvel: np.ndarray, rng: np.random.Generator):
    """Initial (qpos, qvel) with the protocol's reset noise."""
    s = spec.reset_noise_scale
    qpos = init_qpos + rng.uniform(-s, s, size=init_qpos.shape)
    if spec.reset_noise == "cheetah":
        qvel = init_qvel + s * rng.standard_normal(size=init_qvel.shape)
    else:
        qvel = init_qvel + rng.uniform(-s, s, size=init_qvel.shape)
    return qpos, qvel


# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------


class LocomotionMetaEnv(mujoco_env.MujocoEnv, MetaEnv):
    """One of the four locomotion meta-environments, chosen by ``name`` (a key of SPECS)."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"]}
    family = "locomotion"

    def __init__(self, name: str, render_mode: str | None = None, foot_friction: str = FOOT_FRICTION_DEFAULT, **_: object):
        if name not in SPECS:
            raise ValueError(f"unknown locomotion environment {name!r} (known: {', '.join(SPECS)})")
        self.name = name
        self.spec_ = SPECS[name]
        self.horizon = self.spec_.horizon
        self.model_file = model_file(self.spec_, foot_friction)
        self.foot_friction = foot_friction
        mujoco_env.MujocoEnv.__init__(
            self, os.path.join(ASSETS, self.model_file), self.spec_.frame_skip, observation_space=None,
            render_mode=render_mode,
        )
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.dt))}
        obs_dim = (self.model.nq - 1) + self.model.nv
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float64)
        self._original = original_params(self.model)
        self._dist = TASK_DISTRIBUTIONS[self.spec_.task_kind](name)
        self._task = self._dist.default_task()

    def _initialize_simulation(self):
        model = load_model(self.spec_, self.foot_friction)
        data = mujoco.MjData(model)
        return model, data

    # -- MetaEnv -------------------------------------------------------------------
    def set_task(self, task) -> None:
        self._dist.validate(task)
        self._task = task
        if isinstance(task, RandParamsTask):
            apply_params(self.model, self._original, task)

    def get_task(self):
        return self._task

    # -- gymnasium -----------------------------------------------------------------
    def _get_obs(self) -> np.ndarray:
        return observation(self.spec_, self.data.qpos, self.data.qvel)

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        x_before = self.data.qpos[0]
        self.data.ctrl[:] = a
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        x_after = self.data.qpos[0]
        velocity = (x_after - x_before) / self.dt
        goal = self._task.goal_velocity if isinstance(self._task, VelocityTask) else 0.0
        r = float(reward(self.spec_, velocity, a, goal))
        terminated = not bool(is_healthy(self.spec_, self.data.qpos, self.data.qvel))
        info = {"x_velocity": velocity, "x_position": x_after}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), r, terminated, False, info

    def reset_model(self) -> np.ndarray:
        qpos, qvel = reset_state(self.spec_, self.init_qpos, self.init_qvel, self.np_random)
        self.set_state(qpos, qvel)
        return self._get_obs()


# --------------------------------------------------------------------------------------
# Task distributions
# --------------------------------------------------------------------------------------


class VelocityTasks(TaskDistribution):
    """Goal velocities drawn uniformly from the spec's range."""

    def __init__(self, name: str):
        self.spec = SPECS[name]
        self.low, self.high = self.spec.goal_velocity_range

    def default_task(self) -> VelocityTask:
        return VelocityTask(goal_velocity=float(self.low))

    def sample(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        return [VelocityTask(float(v)) for v in rng.uniform(self.low, self.high, size=int(n))]

    def test_tasks(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        return self.sample(n, rng)

    stratifiable = True

    def stratified_test_tasks(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        u = (np.arange(int(n)) + rng.uniform(size=int(n))) / int(n)  # task i uniform in [i/n, (i+1)/n)
        return [VelocityTask(float(v)) for v in self.low + (self.high - self.low) * u]

    def describe(self) -> str:
        return f"goal velocity ~ U[{self.low:g}, {self.high:g}] m/s"

    def validate(self, task) -> None:
        if not isinstance(task, VelocityTask):
            raise InvalidTaskError(f"expected a VelocityTask, got {type(task).__name__}")
        v = task.goal_velocity
        if not (np.isfinite(v) and self.low <= v <= self.high):
            raise InvalidTaskError(f"goal velocity {v!r} outside [{self.low:g}, {self.high:g}]")


class RandParamsTasks(TaskDistribution):
    """Independent log-uniform multipliers for each element of the scaled physics arrays."""

    def __init__(self, name: str):
        self.spec = SPECS[name]
        model = load_model(self.spec)
        self.shapes = {k: v.shape for k, v in original_params(model).items()}

    def default_task(self) -> RandParamsTask:
        return RandParamsTask(**{k: (1.0,) * int(np.prod(s)) for k, s in self.shapes.items()})

    def sample(self, n: int, rng: np.random.Generator) -> list[RandParamsTask]:
        tasks = []
        for _ in range(int(n)):
            fields = {}
            for name, base in RAND_PARAM_LOG_SCALE.items():
                size = int(np.prod(self.shapes[name]))
                exps = rng.uniform(-LOG_SCALE_LIMIT, LOG_SCALE_LIMIT, size=size)
                fields[name] = tuple(float(x) for x in np.power(base, exps))
            tasks.append(RandParamsTask(**fields))
        return tasks

    def test_tasks(self, n: int, rng: np.random.Generator) -> list[RandParamsTask]:
        return self.sample(n, rng)

    def multiplier_range(self, name: str) -> tuple[float, float]:
        base = RAND_PARAM_LOG_SCALE[name]
        return base**-LOG_SCALE_LIMIT, base**LOG_SCALE_LIMIT

    def describe(self) -> str:
        parts = [f"{k} x {b:g}^U(-{LOG_SCALE_LIMIT:g},{LOG_SCALE_LIMIT:g})" for k, b in RAND_PARAM_LOG_SCALE.items()]
        return "physics: " + ", ".join(parts)

    def validate(self, task) -> None:
        if not isinstance(task, RandParamsTask):
            raise InvalidTaskError(f"expected a RandParamsTask, got {type(task).__name__}")
        for name, shape in self.shapes.items():
            values = np.asarray(getattr(task, name), dtype=float)
            if values.size != int(np.prod(shape)):
                raise InvalidTaskError(f"{name}: expected {int(np.prod(shape))} multipliers, got {values.size}")
            lo, hi = self.multiplier_range(name)
            if not (np.isfinite(values).all() and (values >= lo * (1 - 1e-9)).all() and (values <= hi * (1 + 1e-9)).all()):
                raise InvalidTaskError(f"{name}: multipliers must lie in [{lo:.3f}, {hi:.3f}]")


TASK_DISTRIBUTIONS = {"velocity": VelocityTasks, "params": RandParamsTasks}


def LocomotionTasks(name: str) -> TaskDistribution:
    """The task distribution of locomotion environment ``name``."""
    return TASK_DISTRIBUTIONS[SPECS[name].task_kind](name)
