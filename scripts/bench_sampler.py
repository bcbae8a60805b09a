"""Sampler throughput against its limits, measured side by side in ONE run on one machine.

For each environment:

(a) physics limits, in environment steps/s (one env step = frame_skip physics steps):
    ``mj_step_1core``: ``mujoco.mj_step`` on one MjData in a loop, uniform random controls held
    for frame_skip steps; ``rollout_400_{1,2}thread``: ``mujoco.rollout`` over 400 copies
    (per-copy models for rand-params tasks) from realistic start states, 20 env steps per copy
    in one call (warm start carried inside the call), on the calling thread and on a
    2-thread pool. No observation, reward or policy work: the ceiling of any sampler.
    ``replay_{1,2}thread`` (locomotion): the physics of exactly the episodes the sampler
    collected in (c) -- their environment actions replayed open loop with ``mujoco.rollout``
    from the same reset states and models, each episode for its recorded length -- so it
    costs what the sampler's physics costs (the random-action lines above visit other
    states: a cheetah that flips over or a hopper lying on the floor costs more or less
    per step). In the steps unit a slot's episodes are replayed back to back, the later ones
    from the resets the round's own seed draws gave them. ``replay_*_reproduces_batch``
    checks that the replay passes through every observation the batch recorded inside each
    episode, and ends in its last observations, bit for bit.
(b) a bare single-process gymnasium loop, uniform random actions, resets included:
    ``wrapped`` through ``envs.make`` (PassiveEnvChecker, OrderEnforcing, TimeLimit),
    ``unwrapped`` on the bare MetaEnv with the horizon counted by hand.
(c) ``rlbench.sampler.Sampler.collect`` with the policy in the loop (GaussianMLPPolicy actor,
    tanh (64, 64) for locomotion, (100, 100) for Meta-World: docs/protocol.md section 3), at the
    paper's batch shape 40 tasks x 20 episodes x horizon 200 times ``--fraction`` of the
    tasks, in the sampling unit ``--unit`` ("episodes" by default: each slot runs one episode
    and idles once it ends; "steps", the run default: each slot runs the whole round, episodes
    back to back); Meta-World (gym backend only) at a stated smaller batch (--mw-tasks x
    --mw-episodes x 150). Per backend with 1 worker and with all workers; for the batched
    backend "all workers" means threads in one process (its default) and, for comparison,
    worker processes with one thread each (``mujoco-batched-processes``). The first collect
    of a gym-backend sampler is a warm-up (it builds the environment pool) and is not timed;
    the batched backend has nothing to warm up. ``--configs`` picks the lines; the optional
    ``mujoco-batched-rollout`` line (:class:`RolloutStepper`, NOT bit-identical, measurement
    only) makes the batched stepper's physics with one ``mujoco.rollout`` call per
    environment step; its episodes drift from the exact ones (no warm start out of rollout),
    so its replay ratio compares it with the physics of the exact backend's episodes. The
    optional ``mujoco-batched-mjdata`` line (:class:`envs.locomotion_batched.MjDataPerSlotStepper`,
    bit-identical, not the backend) keeps one MjData per slot alive between steps: one
    ``mj_step`` binding call per slot-step instead of the backend's three on a scratch MjData
    per thread, but a working set of the MjData of every slot instead of one per thread.
    The optional ``mujoco-batched-pyloop`` line is the backend with its physics loop in Python
    (three binding calls per slot-step) instead of in C (envs/slot_physics.py; same bits).
    The optional ``mujoco-batched-lockstep`` line is the backend with the sampler's pipelined
    loop off (rlbench/sampler.py: in the steps unit with 2+ threads the sampler overlaps one half
    of the tasks' policy call and numpy with the other half's physics; same bits). Until
    ed364bf this script had its own copy of that loop, as the ``mujoco-batched-pipelined`` line.

Per CPU second: lines that run in this process (the threaded backends, 1-worker lines, the
replay) also report ``steps_per_cpu_s`` (``*_per_cpu_s`` for the replay): env steps per
second of this process's CPU time (all its threads), which other load on the machine
changes less than wall-clock rates; ``c_over_replay_per_cpu_s_same_threads`` divides them.

Every line is measured --repeats times, all lines of an environment interleaved (a change
of background load hits them alike), and the best rate is reported; every rate is kept
under ``all``/``all_runs``.

(d) ``--metaworld-paths`` (instead of (a)-(c)): Meta-World's code paths side by side, per
    environment of ``--mw-envs`` (default ML1-Push, ML1-Reach and each ML10 train class on
    its own): ``package_loop`` = the package's own env (``ALL_V3_ENVIRONMENTS[name]``, one
    benchmark task per episode, uniform float32 actions, ``env.reset()`` every 150 steps) in a
    bare Python loop on one core; and ``Sampler.collect`` with the policy in the loop,
    ``n_workers=1`` (one core), sampling unit "steps" (the run default), for each backend of ``--mw-backends`` (``gym`` = the plain
    package path, ``metaworld-fast``, ``metaworld-batched``). ``ratios`` divide each sampler
    line by the package loop of the same environment, measured in the same repeat.

Prints ONE JSON object (also written to --out): steps/s of every line, the ratios (c)/(b)
and (c)/(a x workers), the issue targets, CPU share of this process tree during the run
(the machine may be shared: compare lines of one run, not across runs) and peak memory.

Example (the recorded run, results/bench/README.md)::

    python scripts/bench_sampler.py --out results/bench/sampler.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import sys
import time
from typing import Any

import mujoco
import numpy as np
import torch
from mujoco import rollout

import envs
from agents.policy import GaussianMLPPolicy
from envs import slot_physics
from envs.base import UnknownEnvError
from envs.locomotion import RandParamsTask, observation
from envs.locomotion_batched import STATE_SPEC, BatchedLocomotionStepper, MjDataPerSlotStepper
from rlbench import backends
from rlbench.cli import check_out
from rlbench.sampler import STEPPERS, UNITS, Sampler, _Draws, default_workers

DEFAULT_ENVS = ["HalfCheetahRandVel", "Walker2DRandVel", "HopperRandParams", "ML1-Push"]
PAPER_TASKS, PAPER_EPISODES = 40, 20  # docs/protocol.md section 4 sampling unit (locomotion)
ROLLOUT_COPIES, ROLLOUT_ENV_STEPS = 400, 20
TIME_BUDGET = 0.5  # seconds per mj_step / gym-loop measurement


def _processes_backend(env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None):
    """The batched stepper behind worker processes, one thread each (not registered outside this script)."""
    return backends.mujoco_batched(env_id, horizon, env_kwargs, threads=1)


def _mjdata_backend(env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None, threads: int = 1):
    """The ``mujoco-batched-mjdata`` line: the batched stepper with one MjData per slot."""
    return MjDataPerSlotStepper(env_id, horizon, env_kwargs, threads=threads)


_mjdata_backend.threaded = True  # type: ignore[attr-defined]


def _lockstep_backend(env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None, threads: int = 1):
    """The ``mujoco-batched-lockstep`` line: the backend with the sampler's pipelined loop off
    (every slot's policy call, physics and numpy in turn, as before; same bits)."""
    stepper = BatchedLocomotionStepper(env_id, horizon, env_kwargs, threads=threads)
    stepper.split_steps = False
    return stepper


_lockstep_backend.threaded = True  # type: ignore[attr-defined]


def _pyloop_backend(env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None, threads: int = 1):
    """The ``mujoco-batched-pyloop`` line: the batched stepper with its physics loop in Python (three
    binding calls per slot-step, as before envs/slot_physics.c; same bits as the C loop)."""
    stepper = BatchedLocomotionStepper(env_id, horizon, env_kwargs, threads=threads)
    stepper._loop = None
    return stepper


_pyloop_backend.threaded = True  # type: ignore[attr-defined]


class RolloutStepper(BatchedLocomotionStepper):
    """MEASUREMENT ONLY, NOT bit-identical: the batched stepper with its physics made by ONE
    ``mujoco.rollout`` call per environment step for all active slots (nstep = frame_skip,
    the action held for every substep, models per slot for rand-params tasks, the rollout's
    own C++ thread pool with the GIL released) instead of three binding calls per slot.

    ``mujoco.rollout`` (3.3.0, and upstream to date) takes ``initial_warmstart`` but returns
    only the full-physics state, never the final ``qacc_warmstart``; so the constraint solver
    of every step starts from zero acceleration instead of the previous step's, and the
    episodes drift away from the gym environment's (HalfCheetah: O(1) in the observations
    within 200 steps). With the warm start disabled in the models the two agree bit for bit
    (tests/test_bench_rollout_stepper.py), so the warm start is the only difference. This
    line shows what one C call per step would buy if rollout returned the warm start; the
    ``mujoco-batched`` backend does not use it. Registered by this script only.
    """

    def __init__(self, env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None, threads: int = 1):
        super().__init__(env_id, horizon, env_kwargs, threads=1)  # no Python thread pool
        self.threads = max(1, int(threads))
        nthread = self.threads if self.threads > 1 else 0
        self._rollout = rollout.Rollout(nthread=nthread)
        self._datas = [mujoco.MjData(self.model) for _ in range(max(nthread, 1))]
        # FULLPHYSICS = time, qpos, qvel, act (+ plugin state: none in these models) is the
        # leading part of the STATE_SPEC row (components are stored in bit order).
        self.nfull = mujoco.mj_stateSize(self.model, int(mujoco.mjtState.mjSTATE_FULLPHYSICS))
        assert self.nfull == 1 + self.nq + self.nv + self.model.na

    def _physics(self, idx: np.ndarray, a: np.ndarray) -> None:
        self._state[idx, self._ctrl] = a
        s = self._state[idx]
        models = [self._slot_models[i] for i in idx.tolist()]
        state0 = np.ascontiguousarray(s[:, : self.nfull])
        ctrl = np.ascontiguousarray(np.repeat(s[:, None, self._ctrl], self.frame_skip, axis=1))
        out = np.empty((idx.size, self.frame_skip, self.nfull))
        # skip_checks: shapes are right by construction; spares the wrapper's per-model checks.
        self._rollout.rollout(models, self._datas, state0, ctrl, nstep=self.frame_skip, state=out, skip_checks=True)
        self._state[idx, : self.nfull] = out[:, -1]

    def close(self) -> None:
        super().close()
        if self._rollout is not None:
            self._rollout.close()
            self._rollout = None


def _rollout_backend(env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None, threads: int = 1):
    return RolloutStepper(env_id, horizon, env_kwargs, threads=threads)


_rollout_backend.threaded = True  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------
# (a) physics limits
# --------------------------------------------------------------------------------------


def _physics_handle(env) -> tuple[mujoco.MjModel, mujoco.MjData, int]:
    """(model, data, frame_skip) of a MetaEnv (Meta-World: its inner Sawyer env)."""
    inner = getattr(env, "_inner", None) or env
    return inner.model, inner.data, int(inner.frame_skip)


def _start_states(env_id: str, n: int, rng: np.random.Generator):
    """n (model, full-physics state) pairs: a reset with task and seed, then 5 random env steps."""
    dist = envs.get_task_distribution(env_id)
    env = envs.make_meta_env(env_id)
    tasks = dist.sample(min(n, 50), rng)
    spec = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    models, states = [], []
    per_task_model = isinstance(tasks[0], RandParamsTask)  # the task changes the model
    for i in range(n):
        env.set_task(tasks[i % len(tasks)])
        env.reset(seed=int(rng.integers(2**31 - 1)))
        for _ in range(5):
            env.step(rng.uniform(-1, 1, env.action_space.shape))
        model, data, fs = _physics_handle(env)
        s = np.empty(mujoco.mj_stateSize(model, spec))
        mujoco.mj_getState(model, data, s, spec)
        states.append(s)
        models.append(copy.copy(model) if per_task_model else model)
    nu = models[0].nu
    env.close()
    return models, np.array(states), fs, nu


def physics_limits(env_id: str, rng: np.random.Generator) -> dict[str, float]:
    env = envs.make_meta_env(env_id)
    dist = envs.get_task_distribution(env_id)
    env.set_task(dist.sample(1, rng)[0])
    env.reset(seed=0)
    model, data, fs = _physics_handle(env)
    spec = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    s0 = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, s0, spec)
    out: dict[str, float] = {}
    # mj_step on one core; the state is restored every 200 env steps (an episode).
    steps, t0 = 0, time.perf_counter()
    while True:
        for _ in range(200):
            data.ctrl[:] = rng.uniform(-1, 1, model.nu)
            mujoco.mj_step(model, data, fs)
        steps += 200
        mujoco.mj_setState(model, data, s0, spec)
        if time.perf_counter() - t0 > TIME_BUDGET:
            break
    out["mj_step_1core"] = steps / (time.perf_counter() - t0)
    env.close()
    # mujoco.rollout over 400 copies.
    models, states, fs, nu = _start_states(env_id, ROLLOUT_COPIES, rng)
    ctrl = rng.uniform(-1, 1, (ROLLOUT_COPIES, ROLLOUT_ENV_STEPS, 1, nu))
    ctrl = np.ascontiguousarray(np.broadcast_to(ctrl, (ROLLOUT_COPIES, ROLLOUT_ENV_STEPS, fs, nu))).reshape(ROLLOUT_COPIES, -1, nu)
    nstep = ROLLOUT_ENV_STEPS * fs
    for nthread, key in ((0, "rollout_400_1thread"), (2, "rollout_400_2threads")):
        with rollout.Rollout(nthread=nthread) as r:
            datas = [mujoco.MjData(models[0]) for _ in range(max(nthread, 1))]
            t0 = time.perf_counter()
            r.rollout(models, datas, states, ctrl, nstep=nstep)
            out[key] = ROLLOUT_COPIES * ROLLOUT_ENV_STEPS / (time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------------------
# (b) bare gymnasium loops
# --------------------------------------------------------------------------------------


def gym_loop(env_id: str, unwrapped: bool) -> float:
    env = envs.make(env_id)
    horizon = envs.entry(env_id).max_episode_steps
    target = env.unwrapped if unwrapped else env
    env.action_space.seed(0)
    target.reset(seed=0)
    steps, t, seed, t0 = 0, 0, 0, time.perf_counter()
    while True:
        for _ in range(50):
            _, _, terminated, truncated, _ = target.step(env.action_space.sample())
            steps += 1
            t += 1
            if terminated or truncated or t >= horizon:
                seed += 1
                target.reset(seed=seed)
                t = 0
        if time.perf_counter() - t0 > TIME_BUDGET:
            break
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


# --------------------------------------------------------------------------------------
# (c) the sampler with the policy in the loop
# --------------------------------------------------------------------------------------


class _Timed:
    """One sampler configuration of (c): a live Sampler, its actor and tasks; warmed up on creation."""

    def __init__(self, env_id: str, backend: str, n_workers: int, n_tasks: int, episodes: int, unit: str = "episodes"):
        self.tasks = envs.get_task_distribution(env_id).sample(n_tasks, np.random.default_rng(0))
        self.episodes = episodes
        self.unit = unit
        hidden = (100, 100) if envs.entry(env_id).family == "metaworld" else (64, 64)
        self.sampler = Sampler(env_id, n_workers=n_workers, backend=backend)
        policy = GaussianMLPPolicy(self.sampler.obs_dim, self.sampler.act_dim, hidden, init_std=1.0, action_scale=10.0)
        self.actor = policy.actor(policy.init_params(torch.Generator().manual_seed(0)))
        self.warmup_s = 0.0
        if backend == "gym":  # the first collect builds the env pool (one env per slot): not timed
            t0 = time.perf_counter()
            self.sampler.collect(self.tasks, episodes, self.actor, np.random.default_rng(0), unit=unit)
            self.warmup_s = time.perf_counter() - t0
        self.rates: list[float] = []
        # Process CPU time covers the sampler's work only when it runs in this process (a
        # threaded backend, or one worker); worker processes' CPU is not counted, so no such line.
        self.in_process = self.sampler.threaded or n_workers == 1
        self.cpu_rates: list[float] = []
        self.steps = 0
        self.last: tuple[Any, int] | None = None  # (batch, rng seed) of the last timed collect

    def measure(self, rep: int) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        batch = self.sampler.collect(self.tasks, self.episodes, self.actor, np.random.default_rng(rep + 1), unit=self.unit)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.rates.append(batch.env_steps / wall)
        if self.in_process:
            self.cpu_rates.append(batch.env_steps / cpu)
        self.steps = batch.env_steps
        self.last = (batch, rep + 1)

    def result(self) -> dict[str, Any]:
        out = {"steps_per_s": max(self.rates), "all": self.rates, "env_steps_per_batch": self.steps, "warmup_s": self.warmup_s}
        if self.cpu_rates:
            out["steps_per_cpu_s"] = max(self.cpu_rates)
            out["all_per_cpu_s"] = self.cpu_rates
        return out


def replay_episodes(batch, rng_seed: int, unit: str) -> list[tuple[int, int, int, int]]:
    """(slot, reset seed, first step, length) of every episode the sampler stepped in ``batch``
    (collected with ``np.random.default_rng(rng_seed)``). The episodes unit: one per slot, for
    its recorded length. The steps unit: each slot's episodes back to back over the whole round
    (its unfinished last one included: it was stepped too), every later one reset with the
    seed the round drew for that slot at the step its predecessor ended; the round's random
    numbers are drawn again with the sampler's own ``_Draws`` in ``collect``'s order."""
    T, E, H = batch.obs.shape[:3]
    n = T * E
    draw = _Draws(np.random.default_rng(rng_seed), T, E)
    seeds0 = draw.seeds()
    if unit == "episodes":
        return [(i, int(seeds0[i]), 0, int(length)) for i, length in enumerate(batch.lengths.reshape(n))]
    step_seeds = []
    for _ in range(H):
        draw.noise(batch.actions.shape[-1])
        step_seeds.append(draw.seeds())
    ends = batch.ep_end.reshape(n, H)
    out = []
    for i in range(n):
        t0, seed = 0, int(seeds0[i])
        for t in np.flatnonzero(ends[i]).tolist():
            out.append((i, seed, t0, t + 1 - t0))
            t0, seed = t + 1, int(step_seeds[t][i])
        if t0 < H:
            out.append((i, seed, t0, H - t0))
    return out


def replay_limits(env_id: str, timed: _Timed, rng_seed: int, batch) -> dict[str, Any]:
    """The physics of exactly the sampler's episodes, nothing else: the batch's environment
    actions replayed open loop with ``mujoco.rollout`` from the episodes' reset states (same
    models, warm start included), each episode for exactly the steps the sampler took in it
    (:func:`replay_episodes`; one rollout call per distinct length). Also checks, bit for bit,
    that the replay passes through the batch's recorded observations inside every episode and
    ends in ``last_obs`` where the batch's last observation is the episode's own (not a reset's)."""
    T, E, H = batch.obs.shape[:3]
    n = T * E
    eps = replay_episodes(batch, rng_seed, timed.unit)
    slot = np.array([e[0] for e in eps])
    first = np.array([e[2] for e in eps])
    lengths = np.array([e[3] for e in eps])
    slot_tasks = [t for t in timed.tasks for _ in range(E)]
    stepper = BatchedLocomotionStepper(env_id, H)
    stepper.reset([slot_tasks[i] for i in slot], np.array([e[1] for e in eps]))
    models = list(stepper._slot_models)
    full = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    scratch = mujoco.MjData(stepper.model)
    state0 = np.empty((len(eps), mujoco.mj_stateSize(stepper.model, full)))
    warm0 = np.empty((len(eps), stepper.nv))
    reset_states = stepper.state()
    for j in range(len(eps)):
        mujoco.mj_setState(models[j], scratch, reset_states[j], STATE_SPEC)
        mujoco.mj_getState(models[j], scratch, state0[j], full)
        warm0[j] = scratch.qacc_warmstart
    fs = stepper.frame_skip
    env_actions = np.clip(batch.actions.reshape(n, H, -1) / timed.actor.policy.action_scale, -1.0, 1.0)
    obs = batch.obs.reshape(n, H, -1)
    last_obs = batch.last_obs.reshape(n, -1)
    # which episodes end in the batch's last observation: every one in the episodes unit; in the
    # steps unit a slot's last, unless it terminated at the round's last step (the sampler then
    # holds the observation of the reset that followed)
    if timed.unit == "steps":
        ends_round = (first + lengths == H) & ~batch.ep_term.reshape(n, H)[slot, H - 1]
    else:
        ends_round = np.ones(len(eps), dtype=bool)
    stepper.close()

    def observations(states: np.ndarray) -> np.ndarray:
        return observation(stepper.spec, states[..., 1 : 1 + stepper.nq], states[..., 1 + stepper.nq : 1 + stepper.nq + stepper.nv])

    out: dict[str, Any] = {}
    for nthread, key in ((0, "replay_1thread"), (2, "replay_2threads")):
        datas = [mujoco.MjData(stepper.model) for _ in range(max(nthread, 1))]
        exact, elapsed, cpu = True, 0.0, 0.0
        with rollout.Rollout(nthread=nthread) as r:
            for length in np.unique(lengths).tolist():
                idx = np.flatnonzero(lengths == length)
                steps = first[idx, None] + np.arange(length)
                ctrl = np.repeat(env_actions[slot[idx, None], steps], fs, axis=1)
                c0, t0 = time.process_time(), time.perf_counter()
                states, _ = r.rollout([models[j] for j in idx], datas, state0[idx], ctrl, initial_warmstart=warm0[idx], nstep=length * fs)
                elapsed += time.perf_counter() - t0
                cpu += time.process_time() - c0
                # after env step k (1 <= k < length) the sampler recorded the observation at first + k
                exact &= bool(np.array_equal(observations(states[:, fs - 1 : (length - 1) * fs : fs]), obs[slot[idx, None], steps[:, 1:]]))
                last = idx[ends_round[idx]]
                exact &= bool(np.array_equal(observations(states[ends_round[idx], -1]), last_obs[slot[last]]))
        out[key] = float(lengths.sum()) / elapsed
        out[f"{key}_per_cpu_s"] = float(lengths.sum()) / cpu
        out[f"{key}_reproduces_batch"] = exact
    out["replay_episodes"] = len(eps)
    out["replay_steps"] = int(lengths.sum())
    return out


# --------------------------------------------------------------------------------------


def _env_id(name: str) -> str:
    return name if name.startswith("rlbench/") else f"rlbench/{name}-v0"


#: (c) sampler lines, "backend/workers" ("all" = --workers); the default set is the first five.
CONFIGS = ["gym/1", "gym/all", "mujoco-batched/1", "mujoco-batched/all", "mujoco-batched-processes/all",
           "mujoco-batched-rollout/1", "mujoco-batched-rollout/all",
           "mujoco-batched-mjdata/1", "mujoco-batched-mjdata/all", "mujoco-batched-pyloop/1", "mujoco-batched-pyloop/all",
           "mujoco-batched-lockstep/all"]
DEFAULT_CONFIGS = CONFIGS[:5]
LOCOMOTION_ONLY = ("mujoco-batched", "mujoco-batched-processes", "mujoco-batched-rollout", "mujoco-batched-mjdata",
                   "mujoco-batched-pyloop", "mujoco-batched-lockstep")


def _configs(names: list[str], workers: int, locomotion: bool) -> list[tuple[str, int]]:
    """(backend, n_workers) of the --configs lines that apply to an environment, in order, no repeats."""
    out: list[tuple[str, int]] = []
    for name in names:
        backend, nw = name.split("/")
        if backend in LOCOMOTION_ONLY and not locomotion:
            continue
        cfg = (backend, workers if nw == "all" else int(nw))
        if cfg not in out:
            out.append(cfg)
    return out


def _per_repeat(line: list[float], replay: list[float]) -> dict[str, Any]:
    """Ratios of one line to the replay measured in the same repeat (right after it), and their median."""
    r = [x / y for x, y in zip(line, replay)]
    return {"per_repeat": r, "median": float(np.median(r))}


def _ratios(c: dict[str, Any], a: dict[str, Any], b: dict[str, float], a_runs: dict[str, list]) -> dict[str, Any]:
    """Every (c) line over (b) and (a); the replay ratios at the same thread count (2 threads for
    any count above one), wall clock and, for in-process lines, per CPU second: best over best,
    and per repeat (the line over the replay of the same repeat) with their median."""
    out: dict[str, Any] = {}
    for key, v in c.items():
        nw = int(key.split("/")[1])
        suffix = "2threads" if nw > 1 else "1thread"
        r = {
            "c_over_b_wrapped": v["steps_per_s"] / b["wrapped"],
            "c_over_b_unwrapped": v["steps_per_s"] / b["unwrapped"],
            "c_over_a_mj_step_x_workers": v["steps_per_s"] / (a["mj_step_1core"] * nw),
            "c_over_rollout_same_threads": v["steps_per_s"] / a[f"rollout_400_{suffix}"],
        }
        if f"replay_{suffix}" in a:
            r["c_over_replay_same_threads"] = v["steps_per_s"] / a[f"replay_{suffix}"]
            r["c_over_replay_same_threads_repeats"] = _per_repeat(v["all"], a_runs[f"replay_{suffix}"])
            if "steps_per_cpu_s" in v:
                r["c_over_replay_per_cpu_s_same_threads"] = v["steps_per_cpu_s"] / a[f"replay_{suffix}_per_cpu_s"]
                r["c_over_replay_per_cpu_s_same_threads_repeats"] = _per_repeat(
                    v["all_per_cpu_s"], a_runs[f"replay_{suffix}_per_cpu_s"])
        out[key] = r
    return out


def bench_env(env_id: str, args, workers: int, rng: np.random.Generator) -> dict[str, Any]:
    """All lines of one environment. Every line is measured --repeats times, interleaved (so a
    change of background load hits all lines alike), and the best rate is reported."""
    metaworld = envs.entry(env_id).family == "metaworld"
    if metaworld:
        n_tasks, episodes = args.mw_tasks, args.mw_episodes
    else:
        n_tasks, episodes = max(1, round(PAPER_TASKS * args.fraction)), PAPER_EPISODES
    horizon = envs.entry(env_id).max_episode_steps
    res: dict[str, Any] = {"batch": {"tasks": n_tasks, "episodes_per_task": episodes, "horizon": horizon}}
    locomotion = not metaworld and STEPPERS["mujoco-batched"].supports(env_id)
    configs = _configs(args.configs, workers, locomotion)
    print(f"[{env_id}] starting {len(configs)} samplers", file=sys.stderr, flush=True)
    timed = {f"{backend}/{nw}": _Timed(env_id, backend, nw, n_tasks, episodes, args.unit) for backend, nw in configs}
    # The replay follows the episodes of an exact batched line (all its thread counts give the same batch).
    replay_key = next((k for k in ("mujoco-batched/1", f"mujoco-batched/{workers}") if k in timed), None)
    a_runs: dict[str, list[float]] = {}
    b_runs: dict[str, list[float]] = {"wrapped": [], "unwrapped": []}
    try:
        for rep in range(args.repeats):
            print(f"[{env_id}] repeat {rep + 1}/{args.repeats}", file=sys.stderr, flush=True)
            for k, v in physics_limits(env_id, rng).items():
                a_runs.setdefault(k, []).append(v)
            b_runs["wrapped"].append(gym_loop(env_id, unwrapped=False))
            b_runs["unwrapped"].append(gym_loop(env_id, unwrapped=True))
            for t in timed.values():
                t.measure(rep)
            if replay_key is not None:  # the physics of the episodes just collected
                batch, seed = timed[replay_key].last
                for k, v in replay_limits(env_id, timed[replay_key], seed, batch).items():
                    a_runs.setdefault(k, []).append(v)
    finally:
        for t in timed.values():
            t.sampler.close()
    a = {k: (all(v) if isinstance(v[0], bool) else max(v)) for k, v in a_runs.items()}
    b = {k: max(v) for k, v in b_runs.items()}
    c = {k: t.result() for k, t in timed.items()}
    res["a_physics_limit"] = a
    res["b_gym_loop"] = b
    res["c_sampler"] = c
    res["all_runs"] = {"a": a_runs, "b": b_runs}
    res["ratios"] = _ratios(c, a, b, a_runs)
    return res


# --------------------------------------------------------------------------------------
# (d) Meta-World code paths
# --------------------------------------------------------------------------------------

MW_BACKENDS = ["gym", "metaworld-fast", "metaworld-batched"]


def _mw_targets() -> list[tuple[str, str, str]]:
    """(label, env id, class) of the default --mw-envs: ML1-Push, ML1-Reach, each ML10 train class."""
    from envs.meta_world import benchmark_classes

    out = [("ML1-Push", "rlbench/ML1-Push-v0", "push-v3"), ("ML1-Reach", "rlbench/ML1-Reach-v0", "reach-v3")]
    out += [(f"ML10:{c}", "rlbench/ML10-v0", c) for c in benchmark_classes("ML10")[0]]
    return out


def _mw_tasks(env_id: str, env_name: str, n: int) -> list[Any]:
    """The first n training tasks of class env_name in env_id's benchmark."""
    pool = [t for t in envs.get_task_distribution(env_id).all_tasks("train") if t.env_name == env_name]
    return pool[:n]


def package_loop(env_id: str, env_name: str, tasks: list[Any], horizon: int, seconds: float) -> float:
    """Steps/s of the package's own env in a bare loop: set_task + reset per episode, random actions."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    from envs.meta_world import check_task

    bench = envs.entry(env_id).kwargs["benchmark"]
    mw_tasks = [check_task(t, bench, t.benchmark_seed) for t in tasks]
    env = ALL_V3_ENVIRONMENTS[env_name]()
    env.max_path_length = horizon
    rng = np.random.default_rng(0)
    steps, ep, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or steps == 0:
        env.set_task(mw_tasks[ep % len(mw_tasks)])
        env.reset()
        actions = rng.uniform(-1, 1, (horizon, 4)).astype(np.float32)
        for k in range(horizon):
            env.step(actions[k])
        steps += horizon
        ep += 1
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


class _MWTimed:
    """One Meta-World sampler line: Sampler(n_workers=1, backend) on fixed tasks, warmed up once."""

    def __init__(self, env_id: str, backend: str, tasks: list[Any], episodes: int):
        self.tasks, self.episodes = tasks, episodes
        self.sampler = Sampler(env_id, n_workers=1, backend=backend)
        policy = GaussianMLPPolicy(self.sampler.obs_dim, self.sampler.act_dim, (100, 100), init_std=1.0, action_scale=10.0)
        self.actor = policy.actor(policy.init_params(torch.Generator().manual_seed(0)))
        self.sampler.collect(tasks, episodes, self.actor, np.random.default_rng(0), unit="steps")  # env pool, reset cache
        self.rates: list[float] = []

    def measure(self, rep: int) -> float:
        t0 = time.perf_counter()
        batch = self.sampler.collect(self.tasks, self.episodes, self.actor, np.random.default_rng(rep + 1), unit="steps")
        rate = batch.env_steps / (time.perf_counter() - t0)
        self.rates.append(rate)
        return rate


def bench_metaworld_paths(args) -> dict[str, Any]:
    targets = _mw_targets()
    if args.mw_envs:
        targets = [t for t in targets if t[0] in args.mw_envs]
    out: dict[str, Any] = {}
    for label, env_id, env_name in targets:
        print(f"[{label}] package loop vs {', '.join(args.mw_backends)}", file=sys.stderr, flush=True)
        tasks = _mw_tasks(env_id, env_name, args.mw_tasks)
        horizon = envs.entry(env_id).max_episode_steps
        lines = {b: _MWTimed(env_id, b, tasks, args.mw_episodes) for b in args.mw_backends}
        runs: dict[str, list[float]] = {"package_loop": []}
        ratio_runs: dict[str, list[float]] = {b: [] for b in lines}
        try:
            for rep in range(args.repeats):
                base = package_loop(env_id, env_name, tasks, horizon, args.mw_seconds)
                runs["package_loop"].append(base)
                for b, line in lines.items():
                    ratio_runs[b].append(line.measure(rep) / base)
        finally:
            for line in lines.values():
                line.sampler.close()
        for b, line in lines.items():
            runs[f"sampler:{b}"] = line.rates
        out[label] = {
            "env_id": env_id, "class": env_name,
            "batch": {"tasks": len(tasks), "episodes_per_task": args.mw_episodes, "horizon": horizon},
            "steps_per_s": {k: max(v) for k, v in runs.items()},
            # ratio per repeat (sampler line / package loop of the same repeat); best repeat reported
            "ratio_over_package_loop": {b: max(v) for b, v in ratio_runs.items()},
            "all_runs": runs, "all_ratios": ratio_runs,
        }
    summary: dict[str, Any] = {}
    for b in args.mw_backends:
        ml10 = [v["ratio_over_package_loop"][b] for k, v in out.items() if k.startswith("ML10:")]
        summary[b] = {
            "ML1-Push": out.get("ML1-Push", {}).get("ratio_over_package_loop", {}).get(b),
            "ML1-Reach": out.get("ML1-Reach", {}).get("ratio_over_package_loop", {}).get(b),
            "ML10_train_mean": float(np.mean(ml10)) if ml10 else None,
        }
    best = {k: max(summary[b][k] for b in summary) for k in ("ML1-Push", "ML1-Reach", "ML10_train_mean")
            if all(summary[b][k] is not None for b in summary)}
    goals = {"ML1-Push": 5.0, "ML1-Reach": 2.5, "ML10_train_mean": 2.0}  # issue targets, x the package loop
    targets_met = {f"{k} >= {goals[k]}x": v >= goals[k] for k, v in best.items()}
    return {"envs": out, "summary_ratio_over_package_loop": summary, "targets_best_backend": best, "targets_met": targets_met}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=DEFAULT_ENVS, help="names or rlbench ids")
    p.add_argument("--fraction", type=float, default=0.25, help="fraction of the paper's 40 tasks (x 20 episodes x 200)")
    p.add_argument("--mw-tasks", type=int, default=4, help="Meta-World tasks per batch (gym backend only)")
    p.add_argument("--mw-episodes", type=int, default=5, help="Meta-World episodes per task")
    p.add_argument("--unit", choices=UNITS, default="episodes",
                   help="(c) sampling unit of the sampler lines (runs use 'steps'; the replay follows either)")
    p.add_argument("--repeats", type=int, default=3, help="measurements of every line (best reported); sampler configs get one extra, untimed warm-up collect")
    p.add_argument("--workers", type=int, default=0, help="'all workers' (0: one per core)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--metaworld-paths", action="store_true", help="run (d) only: Meta-World package loop vs sampler backends")
    p.add_argument("--mw-envs", nargs="+", default=None, help="(d) labels to run (default: ML1-Push ML1-Reach and ML10:<class> for each ML10 train class)")
    p.add_argument("--mw-backends", nargs="+", default=MW_BACKENDS, help="(d) sampler backends")
    p.add_argument("--mw-seconds", type=float, default=2.0, help="(d) seconds per package-loop measurement")
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=CONFIGS, metavar="BACKEND/WORKERS",
                   help=f"(c) sampler lines, 'all' = --workers (choices: {' '.join(CONFIGS)}; default: the first five)")
    args = p.parse_args(argv)
    if check_out(args.out, makes_dirs=True):
        print(f"error: {check_out(args.out, makes_dirs=True)}", file=sys.stderr)
        sys.exit(2)
    for name in args.envs:
        try:
            envs.entry(_env_id(name))
        except UnknownEnvError as e:
            print(f"error: --envs: {e}", file=sys.stderr)
            sys.exit(2)
    workers = args.workers or default_workers()
    STEPPERS["mujoco-batched-processes"] = _processes_backend  # fork: workers inherit it
    STEPPERS["mujoco-batched-rollout"] = _rollout_backend  # measurement only: not bit-identical
    STEPPERS["mujoco-batched-mjdata"] = _mjdata_backend  # measurement only: one MjData per slot
    STEPPERS["mujoco-batched-pyloop"] = _pyloop_backend  # measurement only: the physics loop in Python
    STEPPERS["mujoco-batched-lockstep"] = _lockstep_backend  # measurement only: the sampler's pipelined loop off
    rng = np.random.default_rng(0)
    wall0, cpu0 = time.perf_counter(), os.times()
    load0 = os.getloadavg()
    result: dict[str, Any] = {
        "command": " ".join(["python", "scripts/bench_sampler.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cpus": default_workers(), "platform": platform.platform(), "python": platform.python_version(),
            "mujoco": mujoco.__version__, "numpy": np.__version__, "torch": torch.__version__,
            # the mujoco-batched backend's physics loop: "c" (envs/slot_physics.c) or why not
            "physics_loop": "c" if slot_physics.c_loop() is not None else f"python ({slot_physics.unavailable_reason()})",
        },
        "settings": {
            "fraction": args.fraction, "repeats": args.repeats, "all_workers": workers, "unit": args.unit,
            "paper_batch": f"{PAPER_TASKS} tasks x {PAPER_EPISODES} episodes x 200",
            "metaworld_batch": f"{args.mw_tasks} tasks x {args.mw_episodes} episodes x 150 (gym backend only)",
            "rollout_lines": f"{ROLLOUT_COPIES} copies x {ROLLOUT_ENV_STEPS} env steps per call",
            "configs": args.configs,
        },
        "envs": {},
    }
    if args.metaworld_paths:
        result["settings"]["metaworld_paths"] = {
            "batch": f"{args.mw_tasks} tasks x {args.mw_episodes} episodes x 150", "sampler_workers": 1,
            "backends": args.mw_backends, "package_loop_seconds": args.mw_seconds,
        }
        result["metaworld_paths"] = bench_metaworld_paths(args)
    for name in ([] if args.metaworld_paths else args.envs):
        env_id = _env_id(name)
        t0 = time.perf_counter()
        result["envs"][env_id] = bench_env(env_id, args, workers, rng)
        result["envs"][env_id]["wall_s"] = time.perf_counter() - t0
    wall = time.perf_counter() - wall0
    cpu1 = os.times()
    cpu = sum(getattr(cpu1, k) - getattr(cpu0, k) for k in ("user", "system", "children_user", "children_system"))
    result["run"] = {
        "wall_s": wall,
        "cpu_share_of_machine": cpu / (wall * default_workers()),  # < 1: idle time or other load
        "load_average_start": load0, "load_average_end": os.getloadavg(),
    }
    result["peak_rss_mb"] = {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    hc = result["envs"].get("rlbench/HalfCheetahRandVel-v0")
    if hc is not None and {f"gym/{workers}", f"mujoco-batched/{workers}"} <= hc["c_sampler"].keys():
        c, b, a = hc["c_sampler"], hc["b_gym_loop"], hc["a_physics_limit"]
        gym_all = c[f"gym/{workers}"]["steps_per_s"]
        bat_all = c[f"mujoco-batched/{workers}"]["steps_per_s"]
        result["targets"] = {
            "gym_all_workers_over_b_wrapped": {"value": gym_all / b["wrapped"], "target": 1.5, "met": gym_all >= 1.5 * b["wrapped"]},
            "batched_all_workers_steps_per_s": {"value": bat_all, "target": 66000, "met": bat_all >= 66000},
            "batched_all_workers_over_rollout_2threads": {
                "value": bat_all / a["rollout_400_2threads"], "target": 0.75,
                "met": bat_all >= 0.75 * a["rollout_400_2threads"],
                "note": "the 66,000 target is 0.75 x a 2-thread rollout limit of ~88,500 on an idle machine; "
                "this line applies the same 0.75 to the limit measured in this run",
            },
            "batched_all_workers_over_replay_2threads": {
                "value": bat_all / a["replay_2threads"], "target": 0.75,
                "met": bat_all >= 0.75 * a["replay_2threads"],
                "note": "the same 0.75, against the physics of exactly the sampler's episodes (replayed with rollout)",
            },
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
