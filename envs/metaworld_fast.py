"""A faster, bit-identical Meta-World step and a reset cache (the sampler's "metaworld-fast" path).

metaworld 3.1.1 spends most of a step outside the physics (issue 16 profile of push-v3: physics
17%, observation 32%, reward and info 46%). This module replaces, per Meta-World class, ONLY
methods that the class inherits unchanged from the package's base classes
(``SawyerXYZEnv``, ``SawyerMocapBase``, gymnasium's ``MujocoEnv``) with versions that compute
the same floating-point operations in the same order, so observations, rewards, truncation
and the whole info dict are bit-identical to the package (proven per class by
tests/test_metaworld_fast.py against the package env objects):

* named body/site/geom lookups (``data.body(name)``, ~1.4 us each) become cached integer ids
  (views of the same ``MjData`` arrays, so callers that keep the returned array as a live
  view, e.g. ``init_left_pad``, still see it move);
* ``touching_object`` (feeds ``info["grasp_success"]`` only) iterates ``data.contact`` twice in
  the package, each loop ending on an IndexError; here it is a mask over the contact arrays,
  and the pad forces are summed by Python's ``sum`` in the same order as the package;
* the observation is assembled by slice assignment instead of ``np.split``/``np.hstack``;
* ``Rotation.from_matrix(m).as_quat()`` inside the class's own methods is served by scipy's
  compiled routine ``scipy.spatial.transform._rotation_cy.from_matrix`` (what
  ``Rotation.from_matrix`` calls after its argument checks); any other use of ``Rotation``
  falls through to scipy. The class's functions are re-bound with this stand-in in their
  globals: the package module itself is not modified.
* two calls whose output nothing reads are dropped: ``mj_rnePostConstraint`` (gymnasium calls
  it after ``mj_step``; it fills cacc/cfrc_*, recomputed by nothing downstream and read by no
  Meta-World code) and ``_set_pos_site`` (writes ``site_xpos`` of the goal, overwritten by the
  ``mj_forward`` that follows). The ``mj_forward`` after the physics is kept: in mujoco 3.3.0 it
  rewrites ``qacc_warmstart``, which the next step depends on.

Reset cache: a Meta-World reset is deterministic given the task (``_freeze_rand_vec``; no
reset_model of metaworld 3.1.1 draws random numbers) and costs 10-16 ms (50 hand-settling
steps). The first reset of a (class, reward version, task) is run by the package and
snapshotted: the MuJoCo integration state (``mjSTATE_INTEGRATION``: everything ``mj_step``
reads), the model arrays that ``reset_model`` writes (``body_pos``, ``site_pos``), the
instance attributes and the returned observation; later resets restore the snapshot. Derived
MuJoCo quantities are recomputed by ``mj_forward`` and the warm start is then put back, so the
next ``mj_step`` starts from exactly the package's state. The cache is per process, shared by
all instances of a class (attributes that are live views of ``MjData`` arrays are re-created
on the restoring instance's own data).

Simulation instability: MuJoCo 3 no longer raises on a diverging simulation (it resets
``MjData`` and counts a warning), and metaworld 3.1.1 no longer detects it. The fast step
flags ``info["unstable"] = True`` when MuJoCo raised one of its bad-qpos/qvel/qacc warnings
during the step or the observation or reward is non-finite (the plain sampler path's test);
the package's outputs are left as they are. :class:`FastMetaWorldMetaEnv` then ends the episode (``terminated``).
"""

from __future__ import annotations

import copy
import functools
import types
from typing import Any

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation, _rotation_cy

from envs.meta_world import BENCHMARK_SEED, DEFAULT_HORIZON, MetaWorldMetaEnv
from envs.slots import SlotStepper

#: Reward versions of metaworld 3.1.1 (``reward_function_version`` of every v3 class).
REWARD_VERSIONS = ("v1", "v2")
DEFAULT_REWARD_VERSION = "v2"

_INTEGRATION = int(mujoco.mjtState.mjSTATE_INTEGRATION)
_WARMSTART = int(mujoco.mjtState.mjSTATE_WARMSTART)
_BAD_WARNINGS = (
    int(mujoco.mjtWarning.mjWARN_BADQPOS),
    int(mujoco.mjtWarning.mjWARN_BADQVEL),
    int(mujoco.mjtWarning.mjWARN_BADQACC),
)
assert _BAD_WARNINGS == tuple(range(_BAD_WARNINGS[0], _BAD_WARNINGS[0] + 3))  # contiguous: sliced below


# --------------------------------------------------------------------------------------
# scipy Rotation stand-in
# --------------------------------------------------------------------------------------


class _MatrixRotation:
    """What ``Rotation.from_matrix(m)`` returns, for the one call chain Meta-World uses."""

    __slots__ = ("_m",)

    def __init__(self, m: Any):
        self._m = m

    def as_quat(self, canonical: bool = False, *, scalar_first: bool = False) -> np.ndarray:
        m = self._m
        if (
            not canonical and not scalar_first and isinstance(m, np.ndarray)
            and m.dtype == np.float64 and m.shape == (3, 3)
        ):
            # Rotation.from_matrix: _promote (float64 already) -> cython from_matrix; as_quat of a
            # single rotation returns that quaternion (tests check equality with scipy).
            return np.asarray(_rotation_cy.from_matrix(m, assume_valid=False))
        return Rotation.from_matrix(m).as_quat(canonical=canonical, scalar_first=scalar_first)

    def __getattr__(self, name: str) -> Any:
        return getattr(Rotation.from_matrix(self._m), name)


class _RotationStandIn:
    """``Rotation`` with ``from_matrix`` deferred to :class:`_MatrixRotation`; all else is scipy's."""

    @staticmethod
    def from_matrix(matrix: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return Rotation.from_matrix(matrix, *args, **kwargs)
        return _MatrixRotation(matrix)

    def __getattr__(self, name: str) -> Any:
        return getattr(Rotation, name)


_ROTATION = _RotationStandIn()


def _rebind(fn: types.FunctionType) -> types.FunctionType:
    """``fn`` with the same code, defaults and closure, but ``Rotation`` -> the stand-in in its globals."""
    g = dict(fn.__globals__)
    g["Rotation"] = _ROTATION
    new = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = copy.copy(fn.__kwdefaults__)
    new.__qualname__, new.__doc__, new.__dict__ = fn.__qualname__, fn.__doc__, dict(fn.__dict__)
    return new


# --------------------------------------------------------------------------------------
# The fast methods (replacing base-class methods only)
# --------------------------------------------------------------------------------------


def _ids(env: Any, kind: int, table: dict[str, int], name: str) -> int:
    i = table.get(name)
    if i is None:
        i = mujoco.mj_name2id(env.model, kind, name)
        if i < 0:
            raise KeyError(f"Invalid name '{name}'")
        table[name] = i
    return i


class _FastSawyer:
    """Mixin placed before the Meta-World class; only its methods that the class inherits
    unchanged from the package's base classes are used (see :func:`fast_class`)."""

    # Filled per fast class by fast_class(): name -> id for this class's model.
    _BODY: dict[str, int]
    _SITE: dict[str, int]
    _GEOM: dict[str, int]

    # -- lookups -------------------------------------------------------------------------
    def get_body_com(self, body_name: str) -> np.ndarray:
        return self.data.xpos[_ids(self, mujoco.mjtObj.mjOBJ_BODY, self._BODY, body_name)]

    def get_endeff_pos(self) -> np.ndarray:
        return self.data.xpos[_ids(self, mujoco.mjtObj.mjOBJ_BODY, self._BODY, "hand")]

    @property
    def tcp_center(self) -> np.ndarray:
        sx = self.data.site_xpos
        r = _ids(self, mujoco.mjtObj.mjOBJ_SITE, self._SITE, "rightEndEffector")
        left = _ids(self, mujoco.mjtObj.mjOBJ_SITE, self._SITE, "leftEndEffector")
        return (sx[r] + sx[left]) / 2.0

    def _get_site_pos(self, site_name: str) -> np.ndarray:
        return self.data.site_xpos[_ids(self, mujoco.mjtObj.mjOBJ_SITE, self._SITE, site_name)].copy()

    def touching_object(self, object_geom_id: int) -> bool:
        geom = self._GEOM
        lp = _ids(self, mujoco.mjtObj.mjOBJ_GEOM, geom, "leftpad_geom")
        rp = _ids(self, mujoco.mjtObj.mjOBJ_GEOM, geom, "rightpad_geom")
        d = self.data
        if d.ncon == 0:
            return False  # the package: 0 < sum([]) is 0 < 0
        c = d.contact
        g1, g2 = c.geom1, c.geom2
        with_obj = (g1 == object_geom_id) | (g2 == object_geom_id)
        addr = c.efc_address
        efc = d.efc_force
        # The package sums efc_force[x.efc_address] over the matching contacts in contact order
        # with Python's sum (start 0): same here, over the same float64 values.
        left = sum(efc[addr[with_obj & ((g1 == lp) | (g2 == lp))]].tolist())
        if not 0 < left:
            return False
        right = sum(efc[addr[with_obj & ((g1 == rp) | (g2 == rp))]].tolist())
        return 0 < right

    # -- observation ---------------------------------------------------------------------
    def _get_curr_obs_combined_no_goal(self) -> np.ndarray:
        pos_hand = self.get_endeff_pos()
        xpos = self.data.xpos
        rc = _ids(self, mujoco.mjtObj.mjOBJ_BODY, self._BODY, "rightclaw")
        lc = _ids(self, mujoco.mjtObj.mjOBJ_BODY, self._BODY, "leftclaw")
        gripper_distance_apart = np.linalg.norm(xpos[rc] - xpos[lc])
        gripper_distance_apart = np.clip(gripper_distance_apart / 0.1, 0.0, 1.0)
        obj_pos = self._get_pos_objects()
        obj_quat = self._get_quat_objects()
        n_pos, n_quat = len(obj_pos), len(obj_quat)
        assert n_pos % 3 == 0 and n_quat % 4 == 0
        if n_pos // 3 != n_quat // 4 or n_pos + n_quat > self._obs_obj_max_len:
            return super()._get_curr_obs_combined_no_goal()  # the package's own error/behaviour
        out = np.zeros(4 + self._obs_obj_max_len)
        out[0:3] = pos_hand
        out[3] = gripper_distance_apart
        for k in range(n_pos // 3):
            o = 4 + 7 * k
            out[o:o + 3] = obj_pos[3 * k:3 * k + 3]
            out[o + 3:o + 7] = obj_quat[4 * k:4 * k + 4]
        return out

    def _get_obs(self) -> np.ndarray:
        pos_goal = self._get_pos_goal()
        curr_obs = self._get_curr_obs_combined_no_goal()
        prev = self._prev_obs
        if len(curr_obs) != 18 or len(prev) != 18 or len(pos_goal) != 3:
            return super()._get_obs()
        obs = np.empty(39)
        obs[:18] = curr_obs
        obs[18:36] = prev
        if self._partially_observable:
            obs[36:] = 0.0
        else:
            obs[36:] = pos_goal
        self._prev_obs = curr_obs
        return obs

    # -- step ----------------------------------------------------------------------------
    def step(self, action):
        if not self._set_task_called:
            raise RuntimeError("You must call env.set_task before using env.step")
        assert len(action) == 4, f"Actions should be size 4, got {len(action)}"
        self.set_xyz_action(action[:3])
        if self.curr_path_length >= self.max_path_length:
            raise ValueError("You must reset the env manually once truncate==True")
        model, data = self.model, self.data
        warn = data.warning.number[_BAD_WARNINGS[0]:_BAD_WARNINGS[-1] + 1]  # a view
        before = warn.copy()
        # gymnasium MujocoEnv.do_simulation / _step_mujoco_simulation, minus mj_rnePostConstraint.
        data.ctrl[:] = [action[-1], -action[-1]]
        mujoco.mj_step(model, data, nstep=self.frame_skip)
        self.curr_path_length += 1
        # (the package's _set_pos_site of the goal sites is overwritten by mj_forward below)
        if self._did_see_sim_exception:  # never set by metaworld 3.1.1; the package's branch
            return self._last_stable_obs, 0.0, False, False, {
                "success": False, "near_object": 0.0, "grasp_success": False, "grasp_reward": 0.0,
                "in_place_reward": 0.0, "obj_to_target": 0.0, "unscaled_reward": 0.0,
            }
        mujoco.mj_forward(model, data)
        space = self.sawyer_observation_space
        obs = np.clip(self._get_obs(), a_max=space.high, a_min=space.low, dtype=np.float64)
        self._last_stable_obs = obs
        reward, info = self.evaluate_state(obs, action)
        unstable = bool((warn != before).any()) or not (np.isfinite(obs).all() and np.isfinite(reward))
        if unstable:
            info["unstable"] = True
        truncate = self.curr_path_length == self.max_path_length
        return np.array(obs, dtype=np.float64), reward, False, truncate, info

    # -- reset cache ---------------------------------------------------------------------
    def set_task(self, task: Any) -> None:
        super().set_task(task)
        self._fast_key = (type(self), getattr(self, "reward_function_version", None), task.data)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        key = getattr(self, "_fast_key", None)
        snap = _RESET_CACHE.get(key) if key is not None and self._fast_cacheable else None
        if snap is None:
            obs, info = super().reset(seed=seed, options=options)
            if key is not None and self._fast_cacheable:
                snap = _snapshot(self, obs, info)
                if snap is None:
                    type(self)._fast_cacheable = False
                else:
                    _RESET_CACHE[key] = snap
            return obs, info
        return _restore(self, snap)


# --------------------------------------------------------------------------------------
# Reset snapshots
# --------------------------------------------------------------------------------------

#: (fast class, reward version, task.data) -> snapshot; per process.
_RESET_CACHE: dict[tuple, dict[str, Any]] = {}

#: Attributes a snapshot never restores: set by set_task / the caller, or not plain state.
_NOT_RESTORED = frozenset({
    "data", "model", "max_path_length", "_last_rand_vec", "_freeze_rand_vec", "_partially_observable",
    "_set_task_called", "_fast_key", "reward_function_version", "np_random", "_np_random",
    "mujoco_renderer", "observation_space", "action_space", "goal_space", "_random_reset_space",
    "discrete_goal_space", "sawyer_observation_space", "_ezpickle_args", "_ezpickle_kwargs",
    "render_mode", "camera_id", "camera_name", "width", "height", "fullpath", "frame_skip",
})

#: MjData / MjModel arrays whose rows an attribute may be a live view of.
_DATA_FIELDS = ("xpos", "xquat", "xmat", "xipos", "ximat", "site_xpos", "site_xmat", "geom_xpos", "geom_xmat",
                "qpos", "qvel", "mocap_pos", "mocap_quat", "subtree_com")
_MODEL_FIELDS = ("body_pos", "body_quat", "site_pos", "geom_pos", "geom_size", "site_size")


def _find_view(env: Any, arr: np.ndarray) -> tuple[str, str, int] | None | bool:
    """("data"|"model", field, row) when ``arr`` is exactly ``field[row]`` of env's MjData/MjModel;
    None when it shares no memory with them; False when it does but in another pattern."""
    for owner_name, owner, fields in (("data", env.data, _DATA_FIELDS), ("model", env.model, _MODEL_FIELDS)):
        for f in fields:
            base = getattr(owner, f)
            if base.size == 0 or not np.shares_memory(arr, base):
                continue
            if base.ndim != 2 or arr.shape != base.shape[1:] or arr.dtype != base.dtype:
                return False
            off = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]
            row, rem = divmod(off, base.strides[0])
            if rem or not 0 <= row < base.shape[0] or arr.strides != base.strides[1:]:
                return False
            return owner_name, f, int(row)
    return None


def _snapshot(env: Any, obs: np.ndarray, info: dict) -> dict[str, Any] | None:
    """The state after a package reset, or None if some attribute cannot be restored safely."""
    m, d = env.model, env.data
    state = np.empty(mujoco.mj_stateSize(m, _INTEGRATION))
    mujoco.mj_getState(m, d, state, _INTEGRATION)
    attrs: dict[str, tuple[str, Any]] = {}
    for k, v in vars(env).items():
        if k in _NOT_RESTORED:
            continue
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                return None
            view = _find_view(env, v) if v.base is not None else None
            if view is False:
                return None  # a view of MuJoCo memory this snapshot cannot re-create
            attrs[k] = ("view", view) if view else ("array", v.copy())
        elif v is None or isinstance(v, (bool, int, float, str, bytes, np.generic, tuple)):
            attrs[k] = ("value", copy.deepcopy(v))
        elif isinstance(v, (list, dict)):
            attrs[k] = ("deep", copy.deepcopy(v))
        # other objects (spaces, renderers, ...) are configuration, not reset state
    return {
        "state": state,
        "body_pos": m.body_pos.copy(),
        "site_pos": m.site_pos.copy(),
        "attrs": attrs,
        "obs": obs.copy(),
        "info": copy.deepcopy(info),
    }


def _restore(env: Any, snap: dict[str, Any]):
    m, d = env.model, env.data
    m.body_pos[:] = snap["body_pos"]
    m.site_pos[:] = snap["site_pos"]
    mujoco.mj_resetData(m, d)
    mujoco.mj_setState(m, d, snap["state"], _INTEGRATION)
    mujoco.mj_forward(m, d)  # derived quantities (kinematics, contacts) ...
    mujoco.mj_setState(m, d, snap["state"], _INTEGRATION)  # ... and the package's warm start back
    for k, (kind, v) in snap["attrs"].items():
        if kind == "array":
            setattr(env, k, v.copy())
        elif kind == "view":
            owner, field, row = v
            setattr(env, k, getattr(d if owner == "data" else m, field)[row])
        elif kind == "deep":
            setattr(env, k, copy.deepcopy(v))
        else:
            setattr(env, k, v)
    return snap["obs"].copy(), copy.deepcopy(snap["info"])


def clear_reset_cache() -> None:
    """Forget every reset snapshot of this process (tests)."""
    _RESET_CACHE.clear()


# --------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------

_MIXIN_METHODS = ("get_body_com", "get_endeff_pos", "tcp_center", "_get_site_pos", "touching_object",
                  "_get_curr_obs_combined_no_goal", "_get_obs", "step")


@functools.cache
def fast_class(cls: type) -> type:
    """The fast subclass of Meta-World class ``cls`` (cached).

    A mixin method replaces ``cls``'s only where ``cls`` inherits that method unchanged from the
    package's base classes; methods ``cls`` (or a Meta-World parent) defines itself are kept,
    re-bound so that ``Rotation.from_matrix(...).as_quat()`` uses scipy's compiled routine.
    """
    from gymnasium.envs.mujoco import MujocoEnv
    from metaworld.sawyer_xyz_env import SawyerMocapBase, SawyerXYZEnv

    bases = (SawyerXYZEnv, SawyerMocapBase, MujocoEnv)
    ns: dict[str, Any] = {"_BODY": {}, "_SITE": {}, "_GEOM": {}, "_fast_cacheable": True}
    for name in _MIXIN_METHODS:
        owner = next(k for k in cls.__mro__ if name in vars(k))
        if owner not in bases:
            ns[name] = vars(owner)[name]  # the class's own version wins over the mixin
    for klass in reversed(cls.__mro__):
        if klass in bases or not klass.__module__.startswith("metaworld."):
            continue
        for name, fn in vars(klass).items():
            if isinstance(fn, types.FunctionType) and fn.__globals__.get("Rotation") is Rotation and name not in ns:
                ns[name] = _rebind(fn)
    ns["__module__"] = __name__
    ns["__qualname__"] = f"Fast{cls.__name__}"
    return type(f"Fast{cls.__name__}", (_FastSawyer, cls), ns)


def make_fast_env(env_name: str, reward_function_version: str = DEFAULT_REWARD_VERSION) -> Any:
    """A fast instance of the Meta-World v3 class ``env_name``."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    check_reward_version(reward_function_version)
    return fast_class(ALL_V3_ENVIRONMENTS[env_name])(reward_function_version=reward_function_version)


def check_reward_version(version: Any) -> str:
    if version not in REWARD_VERSIONS:
        raise ValueError(f"reward_function_version must be one of {', '.join(REWARD_VERSIONS)}, got {version!r}")
    return version


# --------------------------------------------------------------------------------------
# The meta-environment
# --------------------------------------------------------------------------------------


class FastMetaWorldMetaEnv(MetaWorldMetaEnv):
    """:class:`~envs.meta_world.MetaWorldMetaEnv` whose inner environments are fast classes.

    Same observations, rewards, truncation and info as the plain meta-env (tests), plus: an
    unstable step (``info["unstable"]``) ends the episode with ``terminated=True``.
    """

    def __init__(
        self,
        benchmark: str,
        horizon: int = DEFAULT_HORIZON,
        benchmark_seed: int = BENCHMARK_SEED,
        reward_function_version: str = DEFAULT_REWARD_VERSION,
        **kwargs: object,
    ):
        self.reward_function_version = check_reward_version(reward_function_version)
        super().__init__(benchmark, horizon=horizon, benchmark_seed=benchmark_seed,
                         reward_function_version=reward_function_version, **kwargs)

    def _ensure_inner(self, env_name: str) -> Any:
        if self._inner is None or self._inner_name != env_name:
            if self._inner is not None:
                self._inner.close()
            self._inner = make_fast_env(env_name, self.reward_function_version)
            self._inner.max_path_length = self._horizon
            self._inner_name = env_name
            self._needs_reset = True
        return self._inner

    def _terminated(self, terminated: bool, info: dict) -> bool:
        """An unstable step (MuJoCo reset a bad state, or non-finite values) ends the episode."""
        return terminated or bool(info.get("unstable", False))




# --------------------------------------------------------------------------------------
# The sampler's stepper
# --------------------------------------------------------------------------------------

_ENTRY_POINT = "envs.meta_world:MetaWorldMetaEnv"


def supports(env_id: str) -> bool:
    """True for the Meta-World meta-environments (the ids registered on MetaWorldMetaEnv)."""
    from envs.registry import entry

    try:
        return entry(env_id).entry_point == _ENTRY_POINT
    except KeyError:
        return False


class FastStepper(SlotStepper):
    """One :class:`FastMetaWorldMetaEnv` per slot (pooled by class, reused across batches): the
    per-slot stepper of envs/slots.py with the fast environment, whose steps report MuJoCo's
    silent bad-state resets as ``info["unstable"]``."""

    def __init__(self, env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None):
        from envs.registry import entry

        if not supports(env_id):
            raise ValueError(f"the metaworld-fast backend supports the Meta-World environments only, not {env_id!r}")
        check_reward_version((env_kwargs or {}).get("reward_function_version", DEFAULT_REWARD_VERSION))
        super().__init__(env_id, horizon, env_kwargs)
        self.kwargs = {**entry(env_id).kwargs, **self.env_kwargs, "horizon": self.horizon}

    def make_env(self) -> FastMetaWorldMetaEnv:
        return FastMetaWorldMetaEnv(**self.kwargs)

    def unstable(self, obs: np.ndarray, reward: float, info: dict) -> bool:
        return bool(info.get("unstable", False)) or super().unstable(obs, reward, info)


__all__ = [
    "DEFAULT_REWARD_VERSION", "REWARD_VERSIONS", "FastMetaWorldMetaEnv", "FastStepper", "check_reward_version",
    "clear_reset_cache", "fast_class", "make_fast_env", "supports",
]
