"""Batched Meta-World stepping (the sampler's "metaworld-batched" backend).

:class:`BatchedMetaWorldStepper` fills the sampler's ``Stepper`` role for a block of episode
slots of any Meta-World meta-environment. Every slot keeps its package environment object
(a :class:`envs.metaworld_fast.FastMetaWorldMetaEnv`, so ``set_task`` and the cached reset are
the package's); what changes is how a step of the classes in :data:`VECTORISED` (push-v3 and
reach-v3 with the package's default reward, ``reward_function_version="v2"``) is computed:

* the mocap target and gripper control of all slots are computed in numpy with the package's
  expressions (``SawyerXYZEnv.set_xyz_action``, float32 action times ``action_scale``);
* the physics runs per slot in C on the slot's own ``MjData`` (``mj_step`` x frame_skip, then
  the ``mj_forward`` the package runs), with no Python between the two calls but row copies
  of the bodies, sites and geoms the observation and reward read;
* observation, reward and success are computed for all slots of the class at once, with the
  float operations of the package in the same order. Three numerics of the package are
  reproduced on purpose: ``np.linalg.norm`` of a 1-D vector is ``sqrt(x.dot(x))``, a BLAS dot
  that contracts to fused multiply-adds (``np.vecdot`` runs the same kernel per row);
  ``reward_utils.tolerance`` squares a numpy *scalar* with ``** 2``, i.e. libm ``pow``, which
  differs from ``x * x`` in the last bit for ~0.1% of inputs (``np.float_power`` calls ``pow``
  per element); and NumPy 2's promotion makes push's caging term float32 whenever the gripper
  action is positive and the caging score exceeds 0.97 (a python float times a float32
  scalar is float32), which this module reproduces in float32 arrays;
* the quaternion of the object comes from scipy's compiled ``from_matrix`` for all slots in
  one call (the same per-matrix routine ``Rotation.from_matrix`` runs).

Only what the sampler consumes is produced: observation, reward, success (``info["success"]``
as 0.0/1.0) and termination; the other info entries are not computed for vectorised classes.
tests/test_metaworld_batched.py checks bit-identity against the package env per slot.
Other classes, and every class under ``reward_function_version="v1"``, are stepped per slot
by the fast path (bit-identical to the package as well) inside the same stepper.

Instability: a slot whose step raised one of MuJoCo's bad qpos/qvel/qacc warnings (MuJoCo 3
then resets that ``MjData`` instead of failing) or returned a non-finite observation or reward
ends its episode (``terminated`` and ``unstable`` True): the fast path's rule.
"""

from __future__ import annotations

import warnings
from typing import Any

import mujoco
import numpy as np
from scipy.spatial.transform import _rotation_cy

from envs.metaworld_fast import (
    _BAD_WARNINGS,
    DEFAULT_REWARD_VERSION,
    FastStepper,
    check_reward_version,
    supports,
)

#: Classes whose observation, reward and success are computed batched (under reward "v2").
VECTORISED = ("push-v3", "reach-v3")

# Bodies, sites and geoms each step reads, in this order (ids resolved per class).
_BODIES = ("hand", "rightclaw", "leftclaw", "obj", "leftpad", "rightpad")
_SITES = ("rightEndEffector", "leftEndEffector")
_GEOMS = ("objGeom",)
_HAND, _RCLAW, _LCLAW, _OBJ, _LPAD, _RPAD = range(6)
_MOCAP_QUAT = np.array([1, 0, 1, 0])  # SawyerXYZEnv.set_xyz_action's mocap_quat
_NWARN = _BAD_WARNINGS[-1] - _BAD_WARNINGS[0] + 1
assert tuple(range(_BAD_WARNINGS[0], _BAD_WARNINGS[-1] + 1)) == _BAD_WARNINGS  # contiguous in mjtWarning

#: reward_utils.tolerance's default value at the margin and the long-tail scale it implies.
_VALUE_AT_MARGIN = 0.1
_LONG_TAIL_SCALE = np.sqrt(1 / _VALUE_AT_MARGIN - 1)


def _norm(x: np.ndarray) -> np.ndarray:
    """Row-wise ``np.linalg.norm`` of 1-D vectors, bit for bit (sqrt of the BLAS dot)."""
    x = np.ascontiguousarray(x)
    return np.sqrt(np.vecdot(x, x))


def _tolerance(x: np.ndarray, lower: float, upper: float, margin: np.ndarray) -> np.ndarray:
    """``reward_utils.tolerance(x_i, bounds=(lower, upper), margin=margin_i, sigmoid="long_tail")``
    for scalar ``x_i`` (float64 out; the package returns ``.item()`` of the same double)."""
    in_bounds = np.logical_and(lower <= x, x <= upper)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(x < lower, lower - x, x - upper) / margin
        # tolerance computes `(d * scale) ** 2` on numpy scalars: libm pow, as float_power.
        sig = 1 / (np.float_power(d * _LONG_TAIL_SCALE, 2) + 1)
    value = np.where(in_bounds, 1.0, sig)
    return np.where(margin == 0, np.where(in_bounds, 1.0, 0.0), value)


def _hamacher(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``reward_utils.hamacher_product`` per element (0 where the denominator is not positive)."""
    denominator = a + b - (a * b)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (a * b) / denominator
    return np.where(denominator > 0, h, 0)


class _Group:
    """The slots of one vectorised class: per-slot MuJoCo views and per-episode constants."""

    def __init__(self, name: str, slots: np.ndarray, envs: list[Any]):
        self.name = name
        self.slots = slots
        self.inner = [e._inner for e in envs]
        m0 = self.inner[0].model
        self.bodies = np.array([mujoco.mj_name2id(m0, mujoco.mjtObj.mjOBJ_BODY, b) for b in _BODIES])
        self.sites = np.array([mujoco.mj_name2id(m0, mujoco.mjtObj.mjOBJ_SITE, s) for s in _SITES])
        self.geom = int(mujoco.mj_name2id(m0, mujoco.mjtObj.mjOBJ_GEOM, _GEOMS[0]))
        if (self.bodies < 0).any() or (self.sites < 0).any() or self.geom < 0:
            raise ValueError(f"{name}: model lacks a body/site/geom the batched step reads")
        self.frame_skip = int(self.inner[0].frame_skip)
        self.nbody, self.nsite = int(m0.nbody), int(m0.nsite)
        self.action_scale = self.inner[0].action_scale
        self.mocap_low = self.inner[0].mocap_low
        self.mocap_high = self.inner[0].mocap_high
        n = len(slots)
        self.views = [self._views(e) for e in self.inner]
        self.mocap = np.zeros((n, 3))
        self.prev = np.zeros((n, 18))
        self.low = np.zeros((n, 39))
        self.high = np.zeros((n, 39))
        self.goal_obs = np.zeros((n, 3))
        self.target = np.zeros((n, 3))
        self.obj_init = np.zeros((n, 3))
        self.init_tcp = np.zeros((n, 3))
        self.hand_init = np.zeros((n, 3))
        self.warn = np.zeros((n, _NWARN), dtype=np.int64)
        for k in range(n):
            self.load(k)

    @staticmethod
    def _views(env: Any) -> tuple:
        d = env.data
        return (env.model, d, d.mocap_pos, d.mocap_quat, d.ctrl, d.xpos, d.site_xpos, d.geom_xmat,
                d.warning.number[_BAD_WARNINGS[0]:_BAD_WARNINGS[-1] + 1])

    def load(self, k: int) -> None:
        """Read slot k's state after a reset (the env object holds the package's reset state)."""
        env = self.inner[k]
        if env.model.nmocap != 1:
            raise ValueError(f"{self.name}: expected one mocap body")
        self.mocap[k] = env.data.mocap_pos[0]
        self.warn[k] = self.views[k][-1]
        self.prev[k] = env._prev_obs
        space = env.sawyer_observation_space
        self.low[k], self.high[k] = space.low, space.high
        self.target[k] = env._target_pos
        self.goal_obs[k] = 0.0 if env._partially_observable else env._target_pos
        if env.obj_init_pos is not None:
            self.obj_init[k] = env.obj_init_pos
        self.init_tcp[k] = env.init_tcp
        self.hand_init[k] = env.hand_init_pos

    def step(self, rows: np.ndarray, a: np.ndarray):
        """Step the group's slots ``rows`` (indices into the group) with float32 actions ``a`` [m, 4].

        Returns obs [m, 39], reward [m], success [m], unstable bool [m].
        """
        m = len(rows)
        # SawyerXYZEnv.set_xyz_action: clip (no-op after the meta-env's clip), float32 delta.
        a3 = np.clip(a[:, :3], -1, 1)
        delta = a3 * self.action_scale
        mocap = np.clip(self.mocap[rows] + delta, self.mocap_low, self.mocap_high)
        self.mocap[rows] = mocap
        ctrl = np.empty((m, 2))
        ctrl[:, 0] = a[:, 3]
        ctrl[:, 1] = -a[:, 3]
        xpos_all = np.empty((m, self.nbody, 3))
        sxpos_all = np.empty((m, self.nsite, 3))
        xm = np.empty((m, 9))
        warn = np.empty((m, _NWARN), dtype=np.int64)
        step, forward = mujoco.mj_step, mujoco.mj_forward
        geom, fs, quat = self.geom, self.frame_skip, _MOCAP_QUAT
        views = self.views
        for j, k in enumerate(rows.tolist()):
            model, data, mpos, mquat, dctrl, xpos, sxpos, gxmat, wnum = views[k]
            mpos[0] = mocap[j]
            mquat[0] = quat
            dctrl[:] = ctrl[j]
            step(model, data, fs)
            forward(model, data)
            xpos_all[j] = xpos
            sxpos_all[j] = sxpos
            xm[j] = gxmat[geom]
            warn[j] = wnum
        xb = xpos_all[:, self.bodies]
        xs = sxpos_all[:, self.sites]
        # MuJoCo's bad qpos/qvel/qacc counters moved during this step (it then resets MjData).
        warned = (warn != self.warn[rows]).any(axis=1)
        self.warn[rows] = warn
        # Observation (SawyerXYZEnv._get_curr_obs_combined_no_goal / _get_obs, then the clip in step).
        curr = np.zeros((m, 18))
        curr[:, 0:3] = xb[:, _HAND]
        curr[:, 3] = np.clip(_norm(xb[:, _RCLAW] - xb[:, _LCLAW]) / 0.1, 0.0, 1.0)
        curr[:, 4:7] = xb[:, _OBJ]
        curr[:, 7:11] = np.asarray(_rotation_cy.from_matrix(xm.reshape(m, 3, 3), assume_valid=False))
        obs = np.empty((m, 39))
        obs[:, :18] = curr
        obs[:, 18:36] = self.prev[rows]
        obs[:, 36:] = self.goal_obs[rows]
        self.prev[rows] = curr
        obs = np.clip(obs, self.low[rows], self.high[rows])
        tcp = (xs[:, 0] + xs[:, 1]) / 2.0
        if self.name == "reach-v3":
            rew, succ = self._reach(rows, tcp)
        else:
            rew, succ = self._push(rows, obs, tcp, xb, a)
        bad = warned | ~np.isfinite(obs).all(axis=1) | ~np.isfinite(rew)
        return obs, rew, succ, bad

    # -- rewards (reward_function_version "v2") ----------------------------------------------
    def _reach(self, rows: np.ndarray, tcp: np.ndarray):
        target = self.target[rows]
        tcp_to_target = _norm(tcp - target)
        in_place_margin = _norm(self.hand_init[rows] - target)
        in_place = _tolerance(tcp_to_target, 0, 0.05, in_place_margin)
        return 10 * in_place, (tcp_to_target <= 0.05).astype(np.float64)

    def _push(self, rows: np.ndarray, obs: np.ndarray, tcp: np.ndarray, xb: np.ndarray, a: np.ndarray):
        obj = obs[:, 4:7]
        tcp_opened = obs[:, 3]
        target = self.target[rows]
        obj_init = self.obj_init[rows]
        tcp_to_obj = _norm(obj - tcp)
        target_to_obj = _norm(obj - target)
        target_to_obj_init = _norm(obj_init - target)
        in_place = _tolerance(target_to_obj, 0, 0.05, target_to_obj_init)
        # SawyerXYZEnv._gripper_caging_reward(obj_radius=0.015, pad_success_thresh=0.05,
        # xz_thresh=0.005, high_density=True).
        pad_y = np.stack([xb[:, _LPAD, 1], xb[:, _RPAD, 1]], axis=1)
        pad_to_obj = np.abs(pad_y - obj[:, 1:2])
        pad_to_objinit = np.abs(pad_y - obj_init[:, 1:2])
        lr_margin = np.abs(pad_to_objinit - 0.05)
        caging_l = _tolerance(pad_to_obj[:, 0], 0.015, 0.05, lr_margin[:, 0])
        caging_r = _tolerance(pad_to_obj[:, 1], 0.015, 0.05, lr_margin[:, 1])
        caging_y = _hamacher(caging_l, caging_r)
        xz_margin = _norm(obj_init[:, [0, 2]] - self.init_tcp[rows][:, [0, 2]]) - 0.005
        caging_xz = _tolerance(_norm(tcp[:, [0, 2]] - obj[:, [0, 2]]), 0, 0.005, xz_margin)
        caging = _hamacher(caging_y, caging_xz)
        # gripper_closed = min(max(0, a3), 1.0) / 1.0: a float32 scalar when a3 > 0, else 0.0.
        a_grip = a[:, 3]
        f32 = (caging > 0.97) & (a_grip > 0)
        g64 = np.zeros(len(rows))
        # float64 branch: gripping = 0.0 (python float): hamacher(caging, 0.0), then the mean.
        cg64 = (_hamacher(caging, g64) + caging) / 2
        # float32 branch (NumPy 2: python float op float32 scalar -> float32).
        c32 = caging.astype(np.float32)
        g32 = np.where(f32, a_grip, np.float32(1)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            den32 = c32 + g32 - (c32 * g32)
            h32 = np.where(den32 > 0, (c32 * g32) / den32, np.float32(0))
            cg32 = (h32 + c32) / np.float32(2)
        # reward = 2 * object_grasped; near the object with the gripper open:
        # reward += 1.0 + reward + 5.0 * in_place (in float32 when object_grasped is float32).
        near = (tcp_to_obj < 0.02) & (tcp_opened > 0)
        r64 = 2 * cg64
        r64 = np.where(near, r64 + (1.0 + r64 + 5.0 * in_place), r64)
        r32 = np.float32(2) * cg32
        five_in_place = 5.0 * in_place  # python float in the package, then cast to float32
        r32 = np.where(near, r32 + ((np.float32(1.0) + r32) + five_in_place.astype(np.float32)), r32)
        reward = np.where(f32, r32.astype(np.float64), r64)
        reward = np.where(target_to_obj < 0.05, 10.0, reward)
        return reward, (target_to_obj <= 0.05).astype(np.float64)


class BatchedMetaWorldStepper:
    """Steps ``n`` Meta-World slots; vectorised classes batched, the others by the fast path."""

    def __init__(self, env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None):
        if not supports(env_id):
            raise ValueError(f"the metaworld-batched backend supports the Meta-World environments only, not {env_id!r}")
        self._fast = FastStepper(env_id, horizon, env_kwargs)
        self.env_id, self.horizon = env_id, int(horizon)
        self.obs_dim, self.act_dim = self._fast.obs_dim, self._fast.act_dim
        version = check_reward_version((env_kwargs or {}).get("reward_function_version", DEFAULT_REWARD_VERSION))
        self.vectorised: tuple[str, ...] = VECTORISED if version == "v2" else ()
        if version != "v2":
            warnings.warn(
                f"metaworld-batched vectorises reward_function_version 'v2' only; {version!r} steps every "
                "class by the per-slot fast path (bit-identical, slower)", stacklevel=2,
            )
        self._groups: list[_Group] = []
        self._where: dict[int, tuple[_Group, int]] = {}
        self._batched = np.zeros(0, dtype=bool)

    def reset(self, tasks: list[Any], seeds: np.ndarray) -> np.ndarray:
        obs = self._fast.reset(tasks, seeds)
        names = [t.env_name for t in tasks]
        self._groups, self._where = [], {}
        self._batched = np.zeros(len(tasks), dtype=bool)
        for name in dict.fromkeys(names):
            if name not in self.vectorised:
                continue
            slots = np.array([i for i, n in enumerate(names) if n == name])
            g = _Group(name, slots, [self._fast._slots[i] for i in slots])
            self._groups.append(g)
            for k, i in enumerate(slots.tolist()):
                self._where[i] = (g, k)
            self._batched[slots] = True
        return obs

    def step(self, actions: np.ndarray, active: np.ndarray, reset_seeds: np.ndarray | None = None):
        active = np.asarray(active, dtype=bool)
        per_slot = active & ~self._batched
        if per_slot.any():
            obs, rew, term, succ, unstable = self._fast.step(actions, per_slot, reset_seeds)
        else:
            n = len(active)
            obs, rew, term = np.zeros((n, self.obs_dim)), np.zeros(n), np.zeros(n, dtype=bool)
            succ, unstable = np.full(n, np.nan), np.zeros(n, dtype=bool)
        # The meta-env's action handling: float32, clipped to [-1, 1].
        a_all = np.clip(np.asarray(actions, dtype=np.float32).reshape(len(active), self.act_dim), -1.0, 1.0)
        for g in self._groups:
            live = active[g.slots]
            if not live.any():
                continue
            rows = np.flatnonzero(live)
            slots = g.slots[rows]
            o, r, s, bad = g.step(rows, a_all[slots])
            obs[slots], rew[slots], succ[slots] = o, r, s
            term[slots] = bad
            unstable[slots] = bad
            for i in slots[bad].tolist():
                env = self._fast._slots[i]
                env._needs_reset = True
                if reset_seeds is not None:
                    obs[i], _ = env.reset(seed=int(reset_seeds[i]))
                    g.load(self._where[i][1])
        return obs, rew, term, succ, unstable

    def close(self) -> None:
        self._fast.close()
        self._groups, self._where = [], {}


__all__ = ["VECTORISED", "BatchedMetaWorldStepper"]
