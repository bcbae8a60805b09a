"""Batched Meta-World stepping (the sampler's "metaworld-batched" backend).

:class:`BatchedMetaWorldStepper` fills the sampler's ``Stepper`` role for a block of episode
slots of any Meta-World meta-environment. Every slot keeps its package environment object
(a :class:`envs.metaworld_fast.FastMetaWorldMetaEnv`, so ``set_task`` and the cached reset are
the package's); what changes is how a step of the classes in :data:`VECTORISED` (the ML10
train classes reach, push, drawer-close, button-press-topdown, window-open, sweep and
door-open, with the package's default reward, ``reward_function_version="v2"``) is computed:

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
  per element); and NumPy 2's promotion makes a reward float32 when the float32 gripper
  action enters it as a scalar (a python float times a float32 scalar is float32): push's
  caging term whenever the gripper action is positive and the caging score exceeds 0.97,
  drawer-close's whole reward whenever the gripper action is positive; this module
  reproduces those steps in float32 arrays;
* where the package computes the object's quaternion with ``Rotation.from_matrix`` (reach,
  push, door-open), scipy's compiled ``from_matrix`` runs for all slots in one call (the same
  per-matrix routine ``Rotation.from_matrix`` runs);
* each class is a :class:`_Group` subclass that names the MuJoCo rows it reads and the env
  attributes that are constant over an episode; attributes the package keeps as live views of
  ``MjData`` (sweep's ``init_left_pad``/``init_right_pad``) are read as the current rows,
  checked at every reset.

Only what the sampler consumes is produced: observation, reward, success (``info["success"]``
as 0.0/1.0) and termination; the other info entries are not computed for vectorised classes.
tests/test_metaworld_batched.py checks bit-identity against the package env per slot, for
every class in :data:`VECTORISED`. Other classes (pick-place, peg-insert-side, basketball and
the ML45 classes), and every class under ``reward_function_version="v1"``, are stepped per slot
by the fast path (bit-identical to the package as well) inside the same stepper.

Instability: a slot whose step raised one of MuJoCo's bad qpos/qvel/qacc warnings (MuJoCo 3
then resets that ``MjData`` instead of failing) or returned a non-finite observation or reward
ends its episode (``terminated`` and ``unstable`` True): the fast path's rule.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any

import mujoco
import numpy as np
from scipy.spatial.transform import _rotation_cy

from envs.metaworld_fast import (
    _BAD_WARNINGS,
    DEFAULT_REWARD_VERSION,
    FastStepper,
    _find_view,
    check_reward_version,
    supports,
)

_OBJ = mujoco.mjtObj
_NWARN = _BAD_WARNINGS[-1] - _BAD_WARNINGS[0] + 1
assert tuple(range(_BAD_WARNINGS[0], _BAD_WARNINGS[-1] + 1)) == _BAD_WARNINGS  # contiguous in mjtWarning
_MOCAP_QUAT = np.array([1, 0, 1, 0])  # SawyerXYZEnv.set_xyz_action's mocap_quat
_F32 = np.float32

#: reward_utils.tolerance's default value at the margin and the scales of its sigmoids.
_VALUE_AT_MARGIN = 0.1
_LONG_TAIL_SCALE = np.sqrt(1 / _VALUE_AT_MARGIN - 1)
_GAUSSIAN_SCALE = np.sqrt(-2 * np.log(_VALUE_AT_MARGIN))


def _norm(x: np.ndarray) -> np.ndarray:
    """Row-wise ``np.linalg.norm`` of 1-D vectors, bit for bit (sqrt of the BLAS dot)."""
    x = np.ascontiguousarray(x)
    return np.sqrt(np.vecdot(x, x))


def _tolerance(x: np.ndarray, lower: float, upper: float, margin: Any, sigmoid: str = "long_tail") -> np.ndarray:
    """``reward_utils.tolerance(x_i, bounds=(lower, upper), margin=margin_i, sigmoid=sigmoid)``
    for scalar ``x_i`` (float64 out; the package returns ``.item()`` of the same double)."""
    in_bounds = np.logical_and(lower <= x, x <= upper)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = np.where(x < lower, lower - x, x - upper) / margin
        # tolerance squares numpy scalars with `** 2`: libm pow, as float_power.
        if sigmoid == "long_tail":
            sig = 1 / (np.float_power(d * _LONG_TAIL_SCALE, 2) + 1)
        elif sigmoid == "gaussian":
            sig = np.exp(-0.5 * np.float_power(d * _GAUSSIAN_SCALE, 2))
        else:
            raise ValueError(f"sigmoid {sigmoid!r} is not reproduced")
    value = np.where(in_bounds, 1.0, sig)
    return np.where(margin == 0, np.where(in_bounds, 1.0, 0.0), value)


def _hamacher(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``reward_utils.hamacher_product`` per element (0 where the denominator is not positive)."""
    denominator = a + b - (a * b)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (a * b) / denominator
    return np.where(denominator > 0, h, 0)


def _hamacher32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`_hamacher` in float32 (NumPy 2: a python float with a float32 scalar is float32)."""
    denominator = a + b - (a * b)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (a * b) / denominator
    return np.where(denominator > 0, h, _F32(0))


def _drop_y(v: np.ndarray) -> np.ndarray:
    """``v + np.array([0.0, -v[1], 0.0])`` per row (sweep's x-z projection)."""
    off = np.zeros_like(v)
    off[:, 1] = -v[:, 1]
    return v + off


_READ_FIELDS = {"xquat": (_OBJ.mjOBJ_BODY, 4), "geom_xpos": (_OBJ.mjOBJ_GEOM, 3),
                "geom_xmat": (_OBJ.mjOBJ_GEOM, 9), "qpos": (_OBJ.mjOBJ_JOINT, 1)}


class _Group(abc.ABC):
    """The slots of one vectorised class: per-slot MuJoCo views and per-episode constants.

    Subclasses name what a step reads (``BODIES``/``SITES``: rows of ``xpos``/``site_xpos``;
    ``READS``: (key, MjData field, name) rows of other arrays) and which env attributes are
    per-episode constants (``ATTRS``), and implement the class's object pose (``obj``) and
    reward/success (``reward``) with the package's float operations.
    """

    BODIES: tuple[str, ...] = ()
    SITES: tuple[str, ...] = ()
    READS: tuple[tuple[str, str, str], ...] = ()
    ATTRS: tuple[str, ...] = ()

    def __init__(self, name: str, slots: np.ndarray, envs: list[Any]):
        self.name = name
        self.slots = slots
        self.inner = [e._inner for e in envs]
        e0 = self.inner[0]
        m0 = e0.model
        self.body = {b: self._id(m0, _OBJ.mjOBJ_BODY, b) for b in ("hand", "rightclaw", "leftclaw", *self.BODIES)}
        self.site = {s: self._id(m0, _OBJ.mjOBJ_SITE, s) for s in ("rightEndEffector", "leftEndEffector", *self.SITES)}
        self.read_idx = []
        for key, field, obj_name in self.READS:
            kind, width = _READ_FIELDS[field]
            i = self._id(m0, kind, obj_name)
            self.read_idx.append((key, field, int(m0.jnt_qposadr[i]) if field == "qpos" else i, width))
        self.frame_skip = int(e0.frame_skip)
        self.nbody, self.nsite = int(m0.nbody), int(m0.nsite)
        self.action_scale = e0.action_scale
        self.mocap_low = e0.mocap_low
        self.mocap_high = e0.mocap_high
        n = len(slots)
        self.views = [self._views(e) for e in self.inner]
        self.mocap = np.zeros((n, 3))
        self.prev = np.zeros((n, 18))
        self.low = np.zeros((n, 39))
        self.high = np.zeros((n, 39))
        self.goal_obs = np.zeros((n, 3))
        self.ep = {a: np.zeros((n, *np.shape(getattr(e0, a)))) for a in self.ATTRS}
        self.warn = np.zeros((n, _NWARN), dtype=np.int64)
        self.setup(e0)
        for k in range(n):
            self.load(k)

    def _id(self, model: Any, kind: Any, name: str) -> int:
        i = int(mujoco.mj_name2id(model, kind, name))
        if i < 0:
            raise ValueError(f"{self.name}: model lacks {name!r}, which the batched step reads")
        return i

    def setup(self, env: Any) -> None:
        """Per-class constants read from the first slot's env (class attributes)."""

    def _views(self, env: Any) -> tuple:
        d = env.data
        reads = tuple((getattr(d, field), i) for _key, field, i, _w in self.read_idx)
        return (env.model, d, d.mocap_pos, d.mocap_quat, d.ctrl, d.xpos, d.site_xpos,
                d.warning.number[_BAD_WARNINGS[0]:_BAD_WARNINGS[-1] + 1], reads)

    def load(self, k: int) -> None:
        """Read slot k's state after a reset (the env object holds the package's reset state)."""
        env = self.inner[k]
        if env.model.nmocap != 1:
            raise ValueError(f"{self.name}: expected one mocap body")
        self.mocap[k] = env.data.mocap_pos[0]
        self.warn[k] = self.views[k][-2]
        self.prev[k] = env._prev_obs
        space = env.sawyer_observation_space
        self.low[k], self.high[k] = space.low, space.high
        self.goal_obs[k] = 0.0 if env._partially_observable else env._target_pos
        for a, arr in self.ep.items():
            arr[k] = getattr(env, a)

    def xb(self, name: str) -> np.ndarray:
        """This step's ``xpos`` of body ``name`` for the stepped rows [m, 3]."""
        return self._xpos[:, self.body[name]]

    def xs(self, name: str) -> np.ndarray:
        """This step's ``site_xpos`` of site ``name`` for the stepped rows [m, 3]."""
        return self._sxpos[:, self.site[name]]

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
        bufs = [np.empty((m, w) if w > 1 else m) for _key, _f, _i, w in self.read_idx]
        warn = np.empty((m, _NWARN), dtype=np.int64)
        step, forward = mujoco.mj_step, mujoco.mj_forward
        fs, quat = self.frame_skip, _MOCAP_QUAT
        views = self.views
        for j, k in enumerate(rows.tolist()):
            model, data, mpos, mquat, dctrl, xpos, sxpos, wnum, reads = views[k]
            mpos[0] = mocap[j]
            mquat[0] = quat
            dctrl[:] = ctrl[j]
            step(model, data, fs)
            forward(model, data)
            xpos_all[j] = xpos
            sxpos_all[j] = sxpos
            for buf, (src, i) in zip(bufs, reads):
                buf[j] = src[i]
            warn[j] = wnum
        self._xpos, self._sxpos = xpos_all, sxpos_all
        self.r = {key: buf for (key, _f, _i, _w), buf in zip(self.read_idx, bufs)}
        # MuJoCo's bad qpos/qvel/qacc counters moved during this step (it then resets MjData).
        warned = (warn != self.warn[rows]).any(axis=1)
        self.warn[rows] = warn
        # Observation (SawyerXYZEnv._get_curr_obs_combined_no_goal / _get_obs, then the clip in step).
        curr = np.zeros((m, 18))
        curr[:, 0:3] = self.xb("hand")
        curr[:, 3] = np.clip(_norm(self.xb("rightclaw") - self.xb("leftclaw")) / 0.1, 0.0, 1.0)
        pos, q = self.obj(m)
        curr[:, 4:7] = pos
        curr[:, 7:11] = q
        obs = np.empty((m, 39))
        obs[:, :18] = curr
        obs[:, 18:36] = self.prev[rows]
        obs[:, 36:] = self.goal_obs[rows]
        self.prev[rows] = curr
        obs = np.clip(obs, self.low[rows], self.high[rows])
        tcp = (self.xs("rightEndEffector") + self.xs("leftEndEffector")) / 2.0
        ep = {name: arr[rows] for name, arr in self.ep.items()}
        rew, succ = self.reward(ep, obs, tcp, a)
        bad = warned | ~np.isfinite(obs).all(axis=1) | ~np.isfinite(rew)
        return obs, rew, succ, bad

    # -- per class ------------------------------------------------------------------------------
    @abc.abstractmethod
    def obj(self, m: int) -> tuple[np.ndarray, Any]:
        """``_get_pos_objects()`` [m, 3] and ``_get_quat_objects()`` [m, 4] (or a scalar)."""

    @abc.abstractmethod
    def reward(self, ep: dict[str, np.ndarray], obs: np.ndarray, tcp: np.ndarray, a: np.ndarray):
        """(reward [m] float64, success [m] 0.0/1.0) of ``compute_reward``/``evaluate_state`` (v2)."""

    def _quat_of(self, key: str, m: int) -> np.ndarray:
        """``Rotation.from_matrix(xmat.reshape(3, 3)).as_quat()`` per row (scipy's compiled routine)."""
        return np.asarray(_rotation_cy.from_matrix(self.r[key].reshape(m, 3, 3), assume_valid=False))


class _Reach(_Group):
    BODIES = ("obj",)
    READS = (("objq", "geom_xmat", "objGeom"),)
    ATTRS = ("_target_pos", "hand_init_pos")

    def obj(self, m):
        return self.xb("obj"), self._quat_of("objq", m)

    def reward(self, ep, obs, tcp, a):
        target = ep["_target_pos"]
        tcp_to_target = _norm(tcp - target)
        in_place_margin = _norm(ep["hand_init_pos"] - target)
        in_place = _tolerance(tcp_to_target, 0, 0.05, in_place_margin)
        return 10 * in_place, (tcp_to_target <= 0.05).astype(np.float64)


class _Push(_Group):
    BODIES = ("obj", "leftpad", "rightpad")
    READS = (("objq", "geom_xmat", "objGeom"),)
    ATTRS = ("_target_pos", "obj_init_pos", "init_tcp")

    def obj(self, m):
        return self.xb("obj"), self._quat_of("objq", m)

    def reward(self, ep, obs, tcp, a):
        obj = obs[:, 4:7]
        tcp_opened = obs[:, 3]
        target = ep["_target_pos"]
        obj_init = ep["obj_init_pos"]
        tcp_to_obj = _norm(obj - tcp)
        target_to_obj = _norm(obj - target)
        target_to_obj_init = _norm(obj_init - target)
        in_place = _tolerance(target_to_obj, 0, 0.05, target_to_obj_init)
        # SawyerXYZEnv._gripper_caging_reward(obj_radius=0.015, pad_success_thresh=0.05,
        # xz_thresh=0.005, high_density=True).
        pad_y = np.stack([self.xb("leftpad")[:, 1], self.xb("rightpad")[:, 1]], axis=1)
        pad_to_obj = np.abs(pad_y - obj[:, 1:2])
        pad_to_objinit = np.abs(pad_y - obj_init[:, 1:2])
        lr_margin = np.abs(pad_to_objinit - 0.05)
        caging_l = _tolerance(pad_to_obj[:, 0], 0.015, 0.05, lr_margin[:, 0])
        caging_r = _tolerance(pad_to_obj[:, 1], 0.015, 0.05, lr_margin[:, 1])
        caging_y = _hamacher(caging_l, caging_r)
        xz_margin = _norm(obj_init[:, [0, 2]] - ep["init_tcp"][:, [0, 2]]) - 0.005
        caging_xz = _tolerance(_norm(tcp[:, [0, 2]] - obj[:, [0, 2]]), 0, 0.005, xz_margin)
        caging = _hamacher(caging_y, caging_xz)
        # gripper_closed = min(max(0, a3), 1.0) / 1.0: a float32 scalar when a3 > 0, else 0.0.
        a_grip = a[:, 3]
        f32 = (caging > 0.97) & (a_grip > 0)
        g64 = np.zeros(len(obs))
        # float64 branch: gripping = 0.0 (python float): hamacher(caging, 0.0), then the mean.
        cg64 = (_hamacher(caging, g64) + caging) / 2
        # float32 branch (NumPy 2: python float op float32 scalar -> float32).
        c32 = caging.astype(_F32)
        g32 = np.where(f32, a_grip, _F32(1)).astype(_F32)
        cg32 = (_hamacher32(c32, g32) + c32) / _F32(2)
        # reward = 2 * object_grasped; near the object with the gripper open:
        # reward += 1.0 + reward + 5.0 * in_place (in float32 when object_grasped is float32).
        near = (tcp_to_obj < 0.02) & (tcp_opened > 0)
        r64 = 2 * cg64
        r64 = np.where(near, r64 + (1.0 + r64 + 5.0 * in_place), r64)
        r32 = _F32(2) * cg32
        five_in_place = 5.0 * in_place  # python float in the package, then cast to float32
        r32 = np.where(near, r32 + ((_F32(1.0) + r32) + five_in_place.astype(_F32)), r32)
        reward = np.where(f32, r32.astype(np.float64), r64)
        reward = np.where(target_to_obj < 0.05, 10.0, reward)
        return reward, (target_to_obj <= 0.05).astype(np.float64)


class _DrawerClose(_Group):
    BODIES = ("drawer_link",)
    ATTRS = ("_target_pos", "obj_init_pos", "init_tcp")

    def setup(self, env):
        self.radius = float(env.TARGET_RADIUS)

    def obj(self, m):
        return self.xb("drawer_link") + np.array([0.0, -0.16, 0.05]), 0.0

    def reward(self, ep, obs, tcp, a):
        obj = obs[:, 4:7]
        target, obj_init = ep["_target_pos"], ep["obj_init_pos"]
        radius = self.radius
        target_to_obj = _norm(obj - target)
        target_to_obj_init = _norm(obj_init - target)
        in_place = _tolerance(target_to_obj, 0, radius, np.abs(target_to_obj_init - radius))
        tcp_to_obj = _norm(obj - tcp)
        tcp_to_obj_init = _norm(obj_init - ep["init_tcp"])
        reach = _tolerance(tcp_to_obj, 0, 0.005, np.abs(tcp_to_obj_init - 0.005), "gaussian")
        # gripper_closed = min(max(0, a3), 1): the float32 a3 when a3 > 0, else the int 0, which
        # makes both hamacher products 0. With a float32 a3 both products run in float32, and
        # so does the final `reward *= 10`.
        grip = a[:, 3]
        reach32 = _hamacher32(reach.astype(_F32), grip)
        r32 = _hamacher32(reach32, in_place.astype(_F32)) * _F32(10)
        success = target_to_obj <= radius + 0.015
        reward = np.where(success, 10.0, np.where(grip > 0, r32.astype(np.float64), 0.0))
        return reward, success.astype(np.float64)


class _ButtonPressTopdown(_Group):
    BODIES = ("button",)
    READS = (("quat", "xquat", "button"),)
    ATTRS = ("_target_pos", "init_tcp", "_obj_to_target_init")

    def obj(self, m):
        return self.xb("button") + np.array([0.0, 0.0, 0.193]), self.r["quat"]

    def reward(self, ep, obs, tcp, a):
        obj = obs[:, 4:7]
        tcp_to_obj = _norm(obj - tcp)
        tcp_to_obj_init = _norm(obj - ep["init_tcp"])
        obj_to_target = np.abs(ep["_target_pos"][:, 2] - obj[:, 2])
        tcp_closed = 1 - obs[:, 3]
        near_button = _tolerance(tcp_to_obj, 0, 0.01, tcp_to_obj_init)
        button_pressed = _tolerance(obj_to_target, 0, 0.005, ep["_obj_to_target_init"])
        reward = 5 * _hamacher(tcp_closed, near_button)
        reward = np.where(tcp_to_obj <= 0.03, reward + 5 * button_pressed, reward)
        return reward, (obj_to_target <= 0.024).astype(np.float64)


class _WindowOpen(_Group):
    SITES = ("handleOpenStart",)
    ATTRS = ("_target_pos", "obj_init_pos", "window_handle_pos_init", "init_tcp")

    def setup(self, env):
        self.radius = float(env.TARGET_RADIUS)

    def obj(self, m):
        return self.xs("handleOpenStart"), 0.0

    def reward(self, ep, obs, tcp, a):
        obj = self.xs("handleOpenStart")  # _get_pos_objects(), not the clipped observation
        target, radius = ep["_target_pos"], self.radius
        # np.linalg.norm of a scalar difference: sqrt of its one-element dot
        target_to_obj = _norm((obj[:, 0] - target[:, 0])[:, None])
        target_to_obj_init = _norm((ep["obj_init_pos"][:, 0] - target[:, 0])[:, None])
        in_place = _tolerance(target_to_obj, 0, radius, np.abs(target_to_obj_init - radius))
        tcp_to_obj = _norm(obj - tcp)
        tcp_to_obj_init = _norm(ep["window_handle_pos_init"] - ep["init_tcp"])
        reach = _tolerance(tcp_to_obj, 0, 0.02, np.abs(tcp_to_obj_init - 0.02))
        reward = 10 * _hamacher(reach, in_place)
        return reward, (target_to_obj <= radius).astype(np.float64)


class _Sweep(_Group):
    BODIES = ("obj", "leftpad", "rightpad")
    READS = (("quat", "xquat", "obj"),)
    ATTRS = ("_target_pos", "obj_init_pos", "init_tcp")

    def setup(self, env):
        self.obj_radius = float(env.OBJ_RADIUS)

    def load(self, k):
        super().load(k)
        # The sweep caging margins read init_left_pad / init_right_pad, which the package sets
        # once to get_body_com(...): live views of the pads' xpos, i.e. the current pads.
        env = self.inner[k]
        for attr, body in (("init_left_pad", "leftpad"), ("init_right_pad", "rightpad")):
            if _find_view(env, getattr(env, attr)) != ("data", "xpos", self.body[body]):
                raise ValueError(f"{self.name}: {attr} is not the live xpos row of {body!r}")

    def obj(self, m):
        return self.xb("obj"), self.r["quat"]

    def _caging(self, ep, obj, tcp):
        """SawyerSweepEnvV3._gripper_caging_reward (the action does not enter it)."""
        obj_radius = self.obj_radius
        pad_margin, grip_margin, xz_margin = 0.05, obj_radius + 0.01, 0.005
        left_pad, right_pad = self.xb("leftpad"), self.xb("rightpad")
        dy_left = left_pad[:, 1] - obj[:, 1]
        dy_right = obj[:, 1] - right_pad[:, 1]
        right_margin = np.abs(np.abs(obj[:, 1] - right_pad[:, 1]) - pad_margin)
        left_margin = np.abs(np.abs(obj[:, 1] - left_pad[:, 1]) - pad_margin)
        right_caging = _tolerance(dy_right, obj_radius, pad_margin, right_margin)
        left_caging = _tolerance(dy_left, obj_radius, pad_margin, left_margin)
        right_gripping = _tolerance(dy_right, obj_radius, grip_margin, right_margin)
        left_gripping = _tolerance(dy_left, obj_radius, grip_margin, left_margin)
        y_caging = _hamacher(right_caging, left_caging)
        y_gripping = _hamacher(right_gripping, left_gripping)
        tcp_obj_xz = _norm(_drop_y(tcp) - _drop_y(obj))
        margin = _norm(_drop_y(ep["obj_init_pos"]) - _drop_y(ep["init_tcp"])) - xz_margin
        x_z_caging = _tolerance(tcp_obj_xz, 0, xz_margin, margin)
        caging = _hamacher(y_caging, x_z_caging)
        gripping = np.where(caging > 0.95, y_gripping, 0.0)
        return (caging + gripping) / 2

    def reward(self, ep, obs, tcp, a):
        obj = obs[:, 4:7]
        target = ep["_target_pos"]
        obj_to_target = _norm(obj - target)
        in_place = _tolerance(obj_to_target, 0, 0.05, _norm(ep["obj_init_pos"] - target))
        grasped = self._caging(ep, obj, tcp)
        reward = (2 * grasped) + (6 * _hamacher(grasped, in_place))
        reward = np.where(obj_to_target < 0.05, 10.0, reward)
        return reward, (obj_to_target <= 0.05).astype(np.float64)


class _DoorOpen(_Group):
    READS = (("pos", "geom_xpos", "handle"), ("mat", "geom_xmat", "handle"), ("theta", "qpos", "doorjoint"))
    ATTRS = ("_target_pos",)

    def obj(self, m):
        return self.r["pos"], self._quat_of("mat", m)

    def reward(self, ep, obs, tcp, a):
        theta = self.r["theta"]
        # _reward_grab_effort: float((np.clip(a3, -1, 1) + 1.0) / 2.0), in float32.
        grab = ((np.clip(a[:, 3], -1, 1) + _F32(1.0)) / _F32(2.0)).astype(np.float64)
        # _reward_pos
        hand = obs[:, :3]
        door = obs[:, 4:7] + np.array([-0.05, 0, 0])
        threshold = 0.12
        radius = _norm(hand[:, :2] - door[:, :2])
        with np.errstate(divide="ignore", invalid="ignore"):
            floor = np.where(radius <= threshold, 0.0, 0.04 * np.log(radius - threshold) + 0.4)
        above_floor = np.where(hand[:, 2] >= floor, 1.0,
                               _tolerance(floor - hand[:, 2], 0.0, 0.01, floor / 2.0))
        in_place = _tolerance(_norm(hand - door - np.array([0.05, 0.03, -0.01])), 0, threshold / 2.0, 0.5)
        ready_to_open = _hamacher(above_floor, in_place)
        opened = 0.2 * (theta < -np.pi / 90.0).astype(np.float64) + 0.8 * _tolerance(
            np.pi / 2.0 + np.pi / 6 - (-theta), 0, 0.5, np.pi / 3.0)
        reward = 0 + 2.0 * _hamacher(ready_to_open, grab) + 8.0 * opened  # sum((x, y))
        success = np.abs(obs[:, 4] - ep["_target_pos"][:, 0]) <= 0.08
        return np.where(success, 10.0, reward), success.astype(np.float64)


#: Classes whose observation, reward and success are computed batched (under reward "v2").
_GROUPS: dict[str, type[_Group]] = {
    "reach-v3": _Reach,
    "push-v3": _Push,
    "drawer-close-v3": _DrawerClose,
    "button-press-topdown-v3": _ButtonPressTopdown,
    "window-open-v3": _WindowOpen,
    "sweep-v3": _Sweep,
    "door-open-v3": _DoorOpen,
}
VECTORISED = tuple(_GROUPS)


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
            g = _GROUPS[name](name, slots, [self._fast._slots[i] for i in slots])
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
