"""Batched physics for the four locomotion meta-environments (the sampler's "mujoco-batched" backend).

:class:`BatchedLocomotionStepper` fills the sampler's ``Stepper`` role for a block of episode
slots of HalfCheetahRandVel, Walker2DRandVel, HopperRandParams or Walker2DRandParams. It gives
exactly (bit for bit) the observations, rewards and termination flags of one
:class:`envs.locomotion.LocomotionMetaEnv` per slot, and it reuses that module's vectorised
helpers (observation, reward, is_healthy, reset_state, apply_params) for every formula.

How the physics is stepped, and why not with ``mujoco.rollout``
----------------------------------------------------------------
The state of every slot lives in ONE array ``[n, nstate]`` holding MuJoCo's
``mjSTATE_FULLPHYSICS | mjSTATE_WARMSTART | mjSTATE_CTRL`` vector (time, qpos, qvel, act,
qacc_warmstart, ctrl): everything the next step depends on (MuJoCo's ``mjSTATE_INTEGRATION``
minus the user inputs these environments never touch). An environment step loads a slot
into a scratch ``MjData`` (one per thread, so it stays in cache), runs ``mj_step`` frame_skip
times in C and stores the state back; observations, rewards and termination are then computed
for all slots at once in numpy. This is what ``mujoco.rollout`` does internally, with one
difference that matters: rollout (mujoco 3.3.0) takes ``initial_warmstart`` but never returns
the final ``qacc_warmstart``, so calling it once per environment step restarts the constraint
solver from zero acceleration at every step, unlike the gym environment whose ``MjData``
carries the warm start. The solver then converges to a slightly different point within its
tolerance, and on HalfCheetah the difference grows to O(1) in the observations within 200
steps (max |obs difference| 8.7 over 8 episodes; on the RK4 Walker/Hopper models 1e-15 to
1e-14 after one step, 1e-11 to 1e-7 after 200).
The warm start is the only difference: with it disabled in the models, one rollout call per
step gives these exact bits (tests/test_bench_rollout_stepper.py, which also checks the
drift with it on). Upstream rollout.cc (newest commit checked: 2026-08-22) still returns
only the mjSTATE_FULLPHYSICS state. (Rollout also stops stepping a trajectory after a MuJoCo
warning, where mj_step goes on.) Equal batches across backends are a design requirement
(DESIGN.md, principle 1: one sampler, the backend must be invisible to agents), so this
backend carries the warm start itself.

What one call per step would save: ``scripts/bench_step_calls.py`` (one thread, process CPU
time, 200 slots, results/bench/step_calls_*.json) puts the three binding calls at 2.3-2.4 us
per slot and step against 0.13-0.16 us inside one rollout call over all slots: ~2.2 us, i.e.
6-7% of a HalfCheetah slot-step (~33 us of CPU) and 1-3% on Walker/Hopper (75-270 us). One
rollout call per slot (nbatch 1 on the slot's own MjData, whose ``qacc_warmstart`` survives
the call) keeps the warm start and the bits but costs more than the three calls, both in
calls alone (2.6-3.2 us) and physics included. ``scripts/bench_sampler.py --configs ...
mujoco-batched-rollout/all`` runs the (not bit-identical) one-call-per-step variant in the
sampler.

Threads: ``mj_step`` releases the GIL, so ``threads > 1`` steps disjoint chunks of the
active slots in parallel, each thread with its own scratch MjData. Results do not depend on
the thread count or on how slots are chunked (each slot's step only reads its own row).

Rand-params tasks need one MjModel per task: every slot has its own model copy, whose
scaled arrays are rewritten (from the originals, never compounding) only when the slot's
task changes. Velocity tasks share one model.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mujoco
import numpy as np
from gymnasium.utils import seeding

from envs.locomotion import (
    FOOT_FRICTION_DEFAULT,
    SPECS,
    TASK_DISTRIBUTIONS,
    RandParamsTask,
    apply_params,
    is_healthy,
    load_model,
    observation,
    original_params,
    reset_state,
    reward,
)
from envs.registry import entry

_ENTRY_POINT = "envs.locomotion:LocomotionMetaEnv"
#: The per-slot state vector: everything mj_step reads from MjData in these models (no
#: mocap, equality constraints, applied forces or user data, which stay zero as in the gym env).
STATE_SPEC = int(mujoco.mjtState.mjSTATE_FULLPHYSICS | mujoco.mjtState.mjSTATE_WARMSTART | mujoco.mjtState.mjSTATE_CTRL)
_QPOS_QVEL = int(mujoco.mjtState.mjSTATE_QPOS | mujoco.mjtState.mjSTATE_QVEL)


def _env_name(env_id: str, env_kwargs: dict[str, Any] | None = None) -> str | None:
    """The SPECS key of a locomotion env id, or None if ``env_id`` is not a locomotion env."""
    try:
        e = entry(env_id)
    except KeyError:
        return None
    if e.entry_point != _ENTRY_POINT:
        return None
    name = {**e.kwargs, **(env_kwargs or {})}.get("name")
    return name if name in SPECS else None


def supports(env_id: str) -> bool:
    """True for the four locomotion environments (the ids registered on LocomotionMetaEnv)."""
    return _env_name(env_id) is not None


def _state_offset(model: mujoco.MjModel, bit: mujoco.mjtState) -> int:
    """Offset of the component ``bit`` inside a STATE_SPEC vector (components are stored in bit order)."""
    return mujoco.mj_stateSize(model, STATE_SPEC & (int(bit) - 1))


class BatchedLocomotionStepper:
    """Steps ``n`` locomotion episode slots together; the sampler's ``Stepper`` protocol.

    ``threads``: threads stepping the physics (1 = the calling thread only).
    """

    def __init__(self, env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None, threads: int = 1):
        name = _env_name(env_id, env_kwargs)
        if name is None:
            raise ValueError(f"the mujoco-batched backend supports the locomotion environments only, not {env_id!r}")
        self.env_id = env_id
        self.horizon = int(horizon)
        self.spec = SPECS[name]
        self.threads = max(1, int(threads))
        self._dist = TASK_DISTRIBUTIONS[self.spec.task_kind](name)
        self.model = load_model(self.spec, (env_kwargs or {}).get("foot_friction", FOOT_FRICTION_DEFAULT))
        self._original = original_params(self.model)
        self.frame_skip = self.spec.frame_skip
        # The gym env's dt property is model.opt.timestep * frame_skip: same expression, same float.
        self.dt = self.model.opt.timestep * self.frame_skip
        m = self.model
        self.obs_dim = (m.nq - 1) + m.nv
        self.act_dim = m.nu
        self.nq, self.nv = m.nq, m.nv
        self.nstate = mujoco.mj_stateSize(m, STATE_SPEC)
        self._qpos = slice(_state_offset(m, mujoco.mjtState.mjSTATE_QPOS), _state_offset(m, mujoco.mjtState.mjSTATE_QPOS) + m.nq)
        self._qvel = slice(_state_offset(m, mujoco.mjtState.mjSTATE_QVEL), _state_offset(m, mujoco.mjtState.mjSTATE_QVEL) + m.nv)
        c0 = _state_offset(m, mujoco.mjtState.mjSTATE_CTRL)
        self._ctrl = slice(c0, c0 + m.nu)
        # MujocoEnv.init_qpos/init_qvel: the state of a fresh MjData (qpos0, zero velocity).
        fresh = mujoco.MjData(m)
        self.init_qpos = fresh.qpos.ravel().copy()
        self.init_qvel = fresh.qvel.ravel().copy()
        self._scratch = [mujoco.MjData(m) for _ in range(self.threads)]
        self._pool = ThreadPoolExecutor(max_workers=self.threads - 1) if self.threads > 1 else None
        self._state = np.zeros((0, self.nstate))
        self._rows: list[np.ndarray] = []
        self._goal = np.zeros(0)
        self._models: list[mujoco.MjModel] = []  # rand-params: one per slot
        self._model_tasks: list[Any] = []  # the task each per-slot model currently holds

    # -- Stepper protocol -------------------------------------------------------------------
    def reset(self, tasks: list[Any], seeds: np.ndarray) -> np.ndarray:
        """Slot i gets tasks[i] and the reset of ``LocomotionMetaEnv.reset(seed=seeds[i])``. obs [n, obs_dim]."""
        n = len(tasks)
        for t in tasks:
            self._dist.validate(t)
        self._state = np.zeros((n, self.nstate))
        self._rows = list(self._state)  # row views, made once (the physics loop is per slot)
        if self.spec.task_kind == "velocity":
            self._goal = np.array([t.goal_velocity for t in tasks], dtype=np.float64)
        else:
            self._goal = np.zeros(n)
            self._set_param_models(tasks)
        self._reset_slots(np.arange(n), seeds)
        return observation(self.spec, self._state[:, self._qpos], self._state[:, self._qvel])

    def step(self, actions: np.ndarray, active: np.ndarray, reset_seeds: np.ndarray | None = None):
        """Step the active slots by one environment step (frame_skip physics steps).

        Returns obs [n, obs_dim], rewards [n], terminated [n], success [n] (NaN: not reported),
        unstable [n] (non-finite observation or reward; also terminated); inactive slots return
        zeros/False and are not stepped. With ``reset_seeds``, slots that terminated are reset
        in the same call (as ``env.reset(seed=reset_seeds[i])``) and return the reset observation.
        """
        n = self._state.shape[0]
        obs = np.zeros((n, self.obs_dim))
        rew = np.zeros(n)
        term = np.zeros(n, dtype=bool)
        succ = np.full(n, np.nan)
        unstable = np.zeros(n, dtype=bool)
        idx = np.flatnonzero(active)
        if idx.size == 0:
            return obs, rew, term, succ, unstable
        all_active = idx.size == n
        sel = slice(None) if all_active else idx
        a = np.clip(np.asarray(actions, dtype=np.float64)[sel], -1.0, 1.0)
        state = self._state
        state[sel, self._ctrl] = a
        x_before = state[sel, self._qpos.start].copy()
        self._physics(idx)
        s = state if all_active else state[idx]
        qpos, qvel = s[:, self._qpos], s[:, self._qvel]
        velocity = (qpos[:, 0] - x_before) / self.dt
        rew[sel] = reward(self.spec, velocity, a, self._goal[sel])
        term[sel] = ~is_healthy(self.spec, qpos, qvel)
        obs[sel] = observation(self.spec, qpos, qvel)
        unstable[sel] = ~(np.isfinite(obs[sel]).all(axis=1) & np.isfinite(rew[sel]))
        term |= unstable
        if reset_seeds is not None and term.any():
            ended = np.flatnonzero(term)
            self._reset_slots(ended, np.asarray(reset_seeds)[ended])
            obs[ended] = observation(self.spec, self._state[ended][:, self._qpos], self._state[ended][:, self._qvel])
        return obs, rew, term, succ, unstable

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- internals --------------------------------------------------------------------------
    def _reset_slots(self, slots: np.ndarray, seeds: np.ndarray) -> None:
        """Reset slots[j] as ``LocomotionMetaEnv.reset(seed=seeds[j])`` would (task kept)."""
        d = self._scratch[0]
        qpv = np.empty(self.nq + self.nv)
        for i, seed in zip(slots.tolist(), seeds):
            # gymnasium's Env.reset(seed=...) seeds np_random with seeding.np_random(seed);
            # MujocoEnv.reset then runs mj_resetData, reset_model (noise, set_state: mj_forward).
            rng, _ = seeding.np_random(int(seed))
            qpos, qvel = reset_state(self.spec, self.init_qpos, self.init_qvel, rng)
            m = self._models[i] if self._models else self.model
            mujoco.mj_resetData(m, d)
            qpv[: self.nq], qpv[self.nq :] = qpos, qvel
            mujoco.mj_setState(m, d, qpv, _QPOS_QVEL)
            mujoco.mj_forward(m, d)  # also sets qacc_warmstart, as in the gym env
            mujoco.mj_getState(m, d, self._state[i], STATE_SPEC)

    def _set_param_models(self, tasks: list[Any]) -> None:
        while len(self._models) < len(tasks):
            self._models.append(copy.copy(self.model))
            self._model_tasks.append(None)
        for i, task in enumerate(tasks):
            if self._model_tasks[i] != task:
                assert isinstance(task, RandParamsTask)
                apply_params(self._models[i], self._original, task)
                self._model_tasks[i] = task

    def _physics(self, idx: np.ndarray) -> None:
        if self._pool is None or idx.size < 2 * self.threads:
            self._run(idx.tolist(), self._scratch[0])
            return
        chunks = np.array_split(idx, self.threads)
        futures = [self._pool.submit(self._run, c.tolist(), d) for c, d in zip(chunks[1:], self._scratch[1:])]
        self._run(chunks[0].tolist(), self._scratch[0])
        for f in futures:
            f.result()

    def _run(self, slots: list[int], d: mujoco.MjData) -> None:
        """Load each slot into scratch data ``d``, mj_step frame_skip times (GIL released), store back."""
        set_state, get_state, step = mujoco.mj_setState, mujoco.mj_getState, mujoco.mj_step
        rows, spec, fs = self._rows, STATE_SPEC, self.frame_skip
        if self._models:
            models = self._models
            for i in slots:
                m, x = models[i], rows[i]
                set_state(m, d, x, spec)
                step(m, d, fs)
                get_state(m, d, x, spec)
        else:
            m = self.model
            for i in slots:
                x = rows[i]
                set_state(m, d, x, spec)
                step(m, d, fs)
                get_state(m, d, x, spec)


__all__ = ["STATE_SPEC", "BatchedLocomotionStepper", "supports"]
