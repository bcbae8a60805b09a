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

The loop over slots runs in C (envs/slot_physics.c, compiled on first use by
envs/slot_physics.py): one ctypes call per thread and environment step makes each slot's
``mj_setState``, ``mj_step`` x frame_skip and ``mj_getState``, the same calls on the same
library as the Python loop it replaced (kept as the fallback where no C compiler is found,
and forced with ``RLBENCH_PHYSICS_LOOP=python``), so the bits are the same; the GIL is
released for the whole chunk instead of re-taken after every call.

What the Python loop's calls cost: ``scripts/bench_step_calls.py`` (one thread, process CPU
time, 200 slots, results/bench/step_calls_*.json) puts its three binding calls at 2.3-2.4 us
per slot and step against 0.13-0.16 us inside one rollout call over all slots: ~2.2 us, i.e.
6-7% of a HalfCheetah slot-step (~33 us of CPU) and 1-3% on Walker/Hopper (75-270 us). One
rollout call per slot (nbatch 1 on the slot's own MjData, whose ``qacc_warmstart`` survives
the call) keeps the warm start and the bits but costs more than the three calls, both in
calls alone (2.6-3.2 us) and physics included. ``scripts/bench_sampler.py --configs ...
mujoco-batched-rollout/all`` runs the (not bit-identical) one-call-per-step variant in the
sampler.

One MjData per slot, kept alive between steps as in the gym envs (:class:`MjDataPerSlotStepper`,
bit-identical, full MjData state included), also makes a slot-step one binding call; it is
not the backend because its working set is every slot's MjData instead of one per thread,
which costs more than the calls save at the sampler's slot counts (see its docstring).

Threads: the C loop (and, in the Python loop, ``mj_step``) releases the GIL, so ``threads > 1``
steps the active slots in parallel, each thread with its own scratch MjData: the C loop's
threads take slots one at a time from a shared counter, the Python loop splits them into fixed
chunks. Results do not depend on the thread count or on which thread steps a slot (each
slot's step only reads its own row).

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

from envs import slot_physics
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
        # Layout of a STATE_SPEC vector (what :meth:`state` returns, one row per slot).
        self.nstate = mujoco.mj_stateSize(m, STATE_SPEC)
        self._qpos = slice(_state_offset(m, mujoco.mjtState.mjSTATE_QPOS), _state_offset(m, mujoco.mjtState.mjSTATE_QPOS) + m.nq)
        self._qvel = slice(_state_offset(m, mujoco.mjtState.mjSTATE_QVEL), _state_offset(m, mujoco.mjtState.mjSTATE_QVEL) + m.nv)
        c0 = _state_offset(m, mujoco.mjtState.mjSTATE_CTRL)
        self._ctrl = slice(c0, c0 + m.nu)
        # MujocoEnv.init_qpos/init_qvel: the state of a fresh MjData (qpos0, zero velocity).
        fresh = mujoco.MjData(m)
        self.init_qpos = fresh.qpos.ravel().copy()
        self.init_qvel = fresh.qvel.ravel().copy()
        self._pool = ThreadPoolExecutor(max_workers=self.threads - 1) if self.threads > 1 else None
        # The physics loop: in C when it builds (envs/slot_physics.py; same bits), else in Python.
        fn = slot_physics.c_loop()
        self._loop = slot_physics.SlotLoop(fn, STATE_SPEC, self.frame_skip) if fn is not None else None
        self._n = 0
        self._goal = np.zeros(0)
        self._models: list[mujoco.MjModel] = []  # rand-params: one per slot
        self._model_tasks: list[Any] = []  # the task each per-slot model currently holds
        self._slot_models: list[mujoco.MjModel] = []  # the model of each current slot
        self._scratch: list[mujoco.MjData] = []  # one per thread, made at the first reset
        self._state = np.zeros((0, self.nstate))
        self._rows: list[np.ndarray] = []
        #: False: the sampler steps all slots together even where it could pipeline (scripts/bench_sampler.py's lock-step line)
        self.split_steps = True

    # -- Stepper protocol -------------------------------------------------------------------
    def reset(self, tasks: list[Any], seeds: np.ndarray) -> np.ndarray:
        """Slot i gets tasks[i] and the reset of ``LocomotionMetaEnv.reset(seed=seeds[i])``. obs [n, obs_dim]."""
        n = len(tasks)
        for t in tasks:
            self._dist.validate(t)
        self._n = n
        if self.spec.task_kind == "velocity":
            self._goal = np.array([t.goal_velocity for t in tasks], dtype=np.float64)
        else:
            self._goal = np.zeros(n)
            self._set_param_models(tasks)
        self._alloc(n)
        slots = np.arange(n)
        self._reset_slots(slots, seeds)
        return self._observe(slots)

    def step(self, actions: np.ndarray, active: np.ndarray, reset_seeds: np.ndarray | None = None):
        """Step the active slots by one environment step (frame_skip physics steps).

        Returns obs [n, obs_dim], rewards [n], terminated [n], success [n] (NaN: not reported),
        unstable [n] (non-finite observation or reward; also terminated); inactive slots return
        zeros/False and are not stepped. With ``reset_seeds``, slots that terminated are reset
        in the same call (as ``env.reset(seed=reset_seeds[i])``) and return the reset observation.
        """
        n = self._n
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
        x_before = self._torso_x(sel)
        self._physics(idx, a)
        obs[sel], rew[sel], term[sel], unstable[sel] = self._after_physics(idx, sel, all_active, a, x_before, reset_seeds)
        return obs, rew, term, succ, unstable

    def _after_physics(self, idx: np.ndarray, sel: slice | np.ndarray, all_active: bool, a: np.ndarray, x_before: np.ndarray,
                       reset_seeds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Observations, rewards, terminations and instability of the slots ``idx`` (rows ``sel``)
        just stepped with clipped actions ``a`` from torso x ``x_before``; with ``reset_seeds``
        (indexed by slot), the ones that terminated are reset and return their reset observation."""
        qpos, qvel = self._gather(idx, all_active)
        velocity = (qpos[:, 0] - x_before) / self.dt
        rew = reward(self.spec, velocity, a, self._goal[sel])
        term = ~is_healthy(self.spec, qpos, qvel)
        obs = observation(self.spec, qpos, qvel)
        unstable = ~(np.isfinite(obs).all(axis=1) & np.isfinite(rew))
        term |= unstable
        if reset_seeds is not None and term.any():
            ended = idx[term]
            self._reset_slots(ended, np.asarray(reset_seeds)[ended])
            obs[term] = self._observe(ended)
        return obs, rew, term, unstable

    # -- the same step in two parts, for a loop that works while the physics runs -------------
    @property
    def can_split_steps(self) -> bool:
        """Whether :meth:`step_begin` / :meth:`step_end` are available: the C physics loop on
        at least two threads (the sampler's pipelined loop, rlbench/sampler.py)."""
        return (self.split_steps and self._loop is not None and self._pool is not None
                and type(self)._physics is BatchedLocomotionStepper._physics)

    def step_begin(self, rows: slice, actions: np.ndarray) -> tuple:
        """Start one environment step of the (all active) slots ``rows`` with ``actions``
        [rows, act_dim] on the pool's threads and return at once. Until :meth:`step_join`, the
        caller must not touch these slots or begin another step, but may finish (:meth:`step_end`,
        resets included) and read the other slots' previous step."""
        idx = np.arange(rows.start, rows.stop)
        a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
        x_before = self._torso_x(rows)
        self._state[rows, self._ctrl] = a
        return rows, idx, a, x_before, self._loop.start(idx, self._scratch, self._pool)

    def step_join(self, handle: tuple) -> None:
        """Help the pool's threads finish the physics :meth:`step_begin` started, and wait for them."""
        self._loop.join(handle[4])

    def step_end(self, handle: tuple, reset_seeds: np.ndarray | None = None):
        """After :meth:`step_join`: what :meth:`step` returns, for the slots of ``handle`` only
        (``reset_seeds`` indexed by slot over all slots)."""
        rows, idx, a, x_before, _ = handle
        obs, rew, term, unstable = self._after_physics(idx, rows, False, a, x_before, reset_seeds)
        return obs, rew, term, np.full(idx.size, np.nan), unstable

    def state(self) -> np.ndarray:
        """[n, nstate]: every current slot's STATE_SPEC vector (time, qpos, qvel, act,
        qacc_warmstart, ctrl), a copy."""
        return self._state.copy()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- internals (the hooks :class:`MjDataPerSlotStepper` overrides) ------------------------
    def _alloc(self, n: int) -> None:
        """Storage for ``n`` slots: one STATE_SPEC row each, and the scratch MjData per thread."""
        if not self._scratch:
            self._scratch = [mujoco.MjData(self.model) for _ in range(self.threads)]
        self._slot_models = self._models[:n] if self._models else [self.model] * n
        self._state = np.zeros((n, self.nstate))
        self._rows = list(self._state)  # row views, made once (the Python physics loop is per slot)
        if self._loop is not None:
            self._loop.bind(self._state, self._slot_models)

    def _reset_slots(self, slots: np.ndarray, seeds: np.ndarray) -> None:
        """Reset slots[j] as ``LocomotionMetaEnv.reset(seed=seeds[j])`` would (task kept)."""
        d = self._scratch[0]
        qpv = np.empty(self.nq + self.nv)
        for i, seed in zip(slots.tolist(), seeds):
            # gymnasium's Env.reset(seed=...) seeds np_random with seeding.np_random(seed);
            # MujocoEnv.reset then runs mj_resetData, reset_model (noise, set_state: mj_forward).
            rng, _ = seeding.np_random(int(seed))
            qpos, qvel = reset_state(self.spec, self.init_qpos, self.init_qvel, rng)
            m = self._slot_models[i]
            mujoco.mj_resetData(m, d)
            qpv[: self.nq], qpv[self.nq :] = qpos, qvel
            mujoco.mj_setState(m, d, qpv, _QPOS_QVEL)
            mujoco.mj_forward(m, d)  # also sets qacc_warmstart, as in the gym env
            mujoco.mj_getState(m, d, self._state[i], STATE_SPEC)

    def _observe(self, slots: np.ndarray) -> np.ndarray:
        """Observations of ``slots`` from their current state."""
        s = self._state[slots]
        return observation(self.spec, s[:, self._qpos], s[:, self._qvel])

    def _torso_x(self, sel: slice | np.ndarray) -> np.ndarray:
        """The torso x of the selected slots before the step (a copy)."""
        return self._state[sel, self._qpos.start].copy()

    def _gather(self, idx: np.ndarray, all_active: bool) -> tuple[np.ndarray, np.ndarray]:
        """qpos [k, nq], qvel [k, nv] of the slots ``idx`` just stepped."""
        s = self._state if all_active else self._state[idx]
        return s[:, self._qpos], s[:, self._qvel]

    def _set_param_models(self, tasks: list[Any]) -> None:
        while len(self._models) < len(tasks):
            self._models.append(copy.copy(self.model))
            self._model_tasks.append(None)
        for i, task in enumerate(tasks):
            if self._model_tasks[i] != task:
                assert isinstance(task, RandParamsTask)
                apply_params(self._models[i], self._original, task)
                self._model_tasks[i] = task

    def _physics(self, idx: np.ndarray, a: np.ndarray) -> None:
        """Step slots ``idx`` with clipped actions ``a`` (row j for slot idx[j]), in threads."""
        self._state[idx, self._ctrl] = a
        threaded = self._pool is not None and idx.size >= 2 * self.threads
        if self._loop is not None:  # the threads share the slots dynamically (envs/slot_physics.c)
            self._loop.run(idx, self._scratch if threaded else self._scratch[:1], self._pool if threaded else None)
            return
        if not threaded:
            self._run(idx, self._scratch[0])
            return
        chunks = np.array_split(idx, self.threads)
        futures = [self._pool.submit(self._run, c, d) for c, d in zip(chunks[1:], self._scratch[1:])]
        self._run(chunks[0], self._scratch[0])
        for f in futures:
            f.result()

    @property
    def physics_loop(self) -> str:
        """Which loop steps the physics: "c" (envs/slot_physics.c) or "python"."""
        return "python" if self._loop is None else "c"

    def _run(self, slots: np.ndarray, d: mujoco.MjData) -> None:
        """Load each slot into scratch data ``d``, mj_step frame_skip times (GIL released), store back."""
        set_state, get_state, step = mujoco.mj_setState, mujoco.mj_getState, mujoco.mj_step
        rows, models, spec, fs = self._rows, self._slot_models, STATE_SPEC, self.frame_skip
        for i in slots.tolist():
            m, x = models[i], rows[i]
            set_state(m, d, x, spec)
            step(m, d, fs)
            get_state(m, d, x, spec)


class MjDataPerSlotStepper(BatchedLocomotionStepper):
    """The same stepper with ONE MjData PER SLOT, kept alive between steps and batches, instead
    of state rows and a scratch MjData per thread: a slot-step is a write to the slot's cached
    ``ctrl`` view and one binding call (``mj_step``), and qpos/qvel of the stepped slots are
    copied out with two ``np.concatenate`` of cached views. Bit-identical to the backend and
    to the gym envs, full MjData state included (tests/test_batched_backend.py); the
    persistent MjData is what each gym env has.

    Not the backend, because of the working set (the comparisons below are with the backend's
    Python loop, before envs/slot_physics.c). The one call saves ~0.3-1 us of the ~2.4 us
    of binding calls per slot-step (``scripts/bench_step_calls.py``, ``us_per_slot_calls_only``:
    the ctrl write and the gather are not free), but every slot-step now runs in the slot's
    own MjData (15 KB of arrays, ~31-35 KB of arena and 2.5-4 KB of stack in use in these
    models) instead of in one scratch MjData per thread that stays in L1/L2 while only a
    ~200-270-byte state row per slot moves. HalfCheetah, one thread, process CPU
    time, load ~4 on 2 cores: per slot-step it was 0.2-6 us cheaper at 2-128 slots (all
    MjData fit in the last-level cache) and 23 us dearer at 512 slots (~28 MB of MjData);
    in the sampler at 10 tasks x 20 slots it ran at ~0.85 of the backend's steps per CPU
    second with 2 threads and 0.88-0.97 with one (per-repeat medians of two runs of
    ``scripts/bench_sampler.py --configs mujoco-batched/1
    mujoco-batched/all mujoco-batched-mjdata/1 mujoco-batched-mjdata/all``), and at the
    paper's 40 x 20 slots (``--fraction 1.0``; ~45 MB of MjData, beyond the 32 MB
    last-level cache) at 0.74 with 2 threads and 0.82 with one (3 repeats, each below 0.93).
    Memory (``scripts/bench_step_calls.py --memory-slots 800``): ~0.45 MB resident per slot,
    360-370 MB at 800 slots for each of the four environments, plus an untouched arena
    reservation (model ``narena``: 6 MB HalfCheetah, 13 MB the others) of address space per
    MjData (4.8-10.4 GB at 800 slots; not resident).
    """

    def __init__(self, env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None, threads: int = 1):
        super().__init__(env_id, horizon, env_kwargs, threads)
        self._loop = None  # its own per-slot loop (_physics below), never the state-row C loop
        # One MjData per slot, kept from batch to batch (grown when a batch has more slots),
        # with numpy views of its ctrl, qpos and qvel made once.
        self._datas: list[mujoco.MjData] = []
        self._ctrl_views: list[np.ndarray] = []
        self._qpos_views: list[np.ndarray] = []
        self._qvel_views: list[np.ndarray] = []
        self._slot_qpos: list[np.ndarray] = []  # the current slots' views
        self._slot_qvel: list[np.ndarray] = []
        # Copies of every current slot's qpos/qvel (the torso x before a step, reset observations).
        self._q = np.zeros((0, self.nq))
        self._v = np.zeros((0, self.nv))

    def state(self) -> np.ndarray:
        """[n, nstate]: the STATE_SPEC vectors, read from the slots' MjData (tools and tests only)."""
        out = np.empty((self._n, self.nstate))
        for i in range(self._n):
            mujoco.mj_getState(self._slot_models[i], self._datas[i], out[i], STATE_SPEC)
        return out

    def _alloc(self, n: int) -> None:
        """Per-slot MjData (and views) for ``n`` slots. An MjData depends on its model's sizes
        only, which a task never changes (apply_params rewrites parameter arrays in place, read
        at every step), so a slot's MjData stays valid across tasks and batches; every reset
        overwrites its whole state (mj_resetData)."""
        models = self._models[:n] if self._models else [self.model] * n
        for i in range(len(self._datas), n):
            d = mujoco.MjData(models[i])
            self._datas.append(d)
            self._ctrl_views.append(d.ctrl)
            self._qpos_views.append(d.qpos)
            self._qvel_views.append(d.qvel)
        self._slot_models = models
        self._slot_qpos, self._slot_qvel = self._qpos_views[:n], self._qvel_views[:n]
        self._q = np.zeros((n, self.nq))
        self._v = np.zeros((n, self.nv))

    def _reset_slots(self, slots: np.ndarray, seeds: np.ndarray) -> None:
        """Reset slots[j] as ``LocomotionMetaEnv.reset(seed=seeds[j])`` would (task kept)."""
        qpv = np.empty(self.nq + self.nv)
        for i, seed in zip(slots.tolist(), seeds):
            # gymnasium's Env.reset(seed=...) seeds np_random with seeding.np_random(seed);
            # MujocoEnv.reset then runs mj_resetData, reset_model (noise, set_state: mj_forward).
            rng, _ = seeding.np_random(int(seed))
            qpos, qvel = reset_state(self.spec, self.init_qpos, self.init_qvel, rng)
            m, d = self._slot_models[i], self._datas[i]
            mujoco.mj_resetData(m, d)
            qpv[: self.nq], qpv[self.nq :] = qpos, qvel
            mujoco.mj_setState(m, d, qpv, _QPOS_QVEL)
            mujoco.mj_forward(m, d)  # also sets qacc_warmstart, as in the gym env
            self._q[i] = self._qpos_views[i]
            self._v[i] = self._qvel_views[i]

    def _observe(self, slots: np.ndarray) -> np.ndarray:
        return observation(self.spec, self._q[slots], self._v[slots])

    def _torso_x(self, sel: slice | np.ndarray) -> np.ndarray:
        """The torso x of the selected slots before the step (a copy)."""
        return self._q[sel, 0].copy()

    def _gather(self, idx: np.ndarray, all_active: bool) -> tuple[np.ndarray, np.ndarray]:
        """qpos [k, nq], qvel [k, nv] of the slots ``idx`` just stepped, copied out of their MjData."""
        if all_active:
            q = np.concatenate(self._slot_qpos).reshape(-1, self.nq)
            v = np.concatenate(self._slot_qvel).reshape(-1, self.nv)
            self._q, self._v = q, v
            return q, v
        ids = idx.tolist()
        qv, vv = self._qpos_views, self._qvel_views
        q = np.concatenate([qv[i] for i in ids]).reshape(-1, self.nq)
        v = np.concatenate([vv[i] for i in ids]).reshape(-1, self.nv)
        self._q[idx], self._v[idx] = q, v
        return q, v

    def _physics(self, idx: np.ndarray, a: np.ndarray) -> None:
        """Step slots ``idx`` with clipped actions ``a`` (row j for slot idx[j]), in threads."""
        if self._pool is None or idx.size < 2 * self.threads:
            self._run(idx.tolist(), a)
            return
        parts = np.array_split(np.arange(idx.size), self.threads)
        futures = [self._pool.submit(self._run, idx[p].tolist(), a[p]) for p in parts[1:]]
        self._run(idx[parts[0]].tolist(), a[parts[0]])
        for f in futures:
            f.result()

    def _run(self, slots: list[int], a: np.ndarray) -> None:  # type: ignore[override]
        """Per slot: write its ctrl, then ONE binding call, mj_step frame_skip times (GIL released)."""
        step, fs = mujoco.mj_step, self.frame_skip
        models, datas, ctrls = self._slot_models, self._datas, self._ctrl_views
        for i, row in zip(slots, a):
            ctrls[i][:] = row
            step(models[i], datas[i], fs)


__all__ = ["STATE_SPEC", "BatchedLocomotionStepper", "MjDataPerSlotStepper", "supports"]
