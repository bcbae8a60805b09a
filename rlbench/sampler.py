"""The sampler: the only code in rlbench that steps environments.

One sampling round covers T tasks x E episode slots x horizon H (docs/protocol.md section 4).
With the ``steps`` unit (the authors' sampler, the default) every slot is stepped for exactly
H environment steps and reset as soon as its episode ends; every episode completed inside the
round is used and each slot's unfinished tail is dropped (or kept as a truncated segment), so
a round costs exactly T x E x H steps. With the ``episodes`` unit every slot runs exactly one
whole episode (a round costs at most T x E x H steps). All slots of a round step together: at
every time step the policy is evaluated ONCE on the observations of every live slot (with one
parameter set per task when MAML samples after adaptation), and the environments are stepped
by worker processes, each owning a contiguous block of slots. Steps are counted per single
environment. Pipelining: in the steps unit, a backend whose stepper can split its steps (the
batched MuJoCo backend with its C physics loop on 2+ threads) runs a round of at least
:data:`PIPELINE_MIN_SLOTS` slots as two halves of
the tasks in flight, the policy call and numpy of one half overlapping the other half's
physics; the policy is then evaluated once per half and step, which :meth:`Sampler._pipeline`
allows only when the halves' actions equal the whole batch's bit for bit, so the batch is the
lock-step loop's.

Determinism: every random number (reset seeds, action noise) is drawn in the main process,
either from one generator for the whole round or from one generator per task (then a task's
episodes depend only on its own stream: the evaluator uses this so that meta-test numbers do
not depend on how tasks are chunked), independently of how slots are split over workers, so a
batch is identical for any ``n_workers``.

Backends: a worker hosts a :class:`Stepper` that steps its block of slots. ``"gym"`` steps
one MetaEnv instance per slot; other backends (for example a batched MuJoCo backend) register
in :data:`STEPPERS` and are selected by name, invisible to agents.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

import envs
from envs.slots import SlotStepper
from rlbench.batch import Batch

#: Fewest slots per round for the pipelined loop (:meth:`Sampler._pipeline`). Measured on
#: HalfCheetahRandVel with 2 threads against the lock-step loop (results/bench/README.md, "The
#: pipelined sampler"): 200 slots 4% slower, 400 slots 1-2% faster, 800 slots ~4% faster; two
#: policy calls per step and the thread hand-offs cost more than they hide in small rounds.
PIPELINE_MIN_SLOTS = 400

#: ``actor(obs [T, E, obs_dim], noise [T, E, act_dim]) -> (stored actions, env actions)``.
Actor = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class SamplerError(RuntimeError):
    """A worker failed; the message carries the worker's traceback."""


class Stepper(Protocol):
    """Steps a block of environment slots. One instance lives in each worker."""

    obs_dim: int
    act_dim: int

    def reset(self, tasks: list[Any], seeds: np.ndarray) -> np.ndarray:
        """Set slot i to tasks[i], reset it with seeds[i]. Returns obs [n, obs_dim]."""

    def step(
        self, actions: np.ndarray, active: np.ndarray, reset_seeds: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step active slots once. Returns next obs [n, obs_dim], rewards [n], terminated [n],
        success [n] (NaN where not reported) and unstable [n] (the simulation state became
        non-finite: such a slot is also terminated); inactive slots return zeros/False/NaN.

        Auto-reset: if ``reset_seeds`` is given, every active slot whose episode ended in this
        step is reset in the same call, keeping its task, exactly as ``env.reset(seed=
        reset_seeds[i])`` would, and its returned observation is the reset observation (the
        other outputs still describe the step that ended)."""

    def close(self) -> None: ...


#: One MetaEnv per slot, stepped in a Python loop (the ``"gym"`` backend; see envs/slots.py).
GymStepper = SlotStepper


#: Seconds between a worker's checks that its parent process is still alive.
PARENT_CHECK_S = 1.0

#: Stepper backends by name: ``factory(env_id, horizon, env_kwargs) -> Stepper``; more are
#: registered by :mod:`rlbench.backends` (imported at the end of this module).
STEPPERS: dict[str, Callable[..., Stepper]] = {"gym": GymStepper}


def resolve_backend(backend: str, env_id: str) -> str:
    """``"auto"`` picks the fastest registered backend that supports ``env_id``."""
    if backend != "auto":
        if backend not in STEPPERS:
            raise ValueError(f"unknown sampler backend {backend!r} (known: auto, {', '.join(STEPPERS)})")
        return backend
    for name, factory in STEPPERS.items():
        supports = getattr(factory, "supports", None)
        if name != "gym" and supports is not None and supports(env_id):
            return name
    return "gym"


def _worker_main(conn, parent_end, parent_pid: int, backend: str, env_id: str, horizon: int, env_kwargs: dict[str, Any]) -> None:
    # Ctrl-C is handled by the main process, which then closes the workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked child inherits the parent's end of its own pipe (and of its siblings' pipes), so
    # it would never see EOF if the parent died: close ours, and also poll the parent's pid.
    parent_end.close()
    stepper = None
    try:
        stepper = STEPPERS[backend](env_id, horizon, env_kwargs)
        conn.send(("ok", (stepper.obs_dim, stepper.act_dim)))
        while True:
            if not conn.poll(PARENT_CHECK_S):
                if os.getppid() != parent_pid:  # parent gone (e.g. SIGKILL): exit, do not linger
                    break
                continue
            try:
                cmd, payload = conn.recv()
            except EOFError:
                break
            if cmd == "close":
                break
            try:
                result = getattr(stepper, cmd)(*payload)
                conn.send(("ok", result))
            except Exception:  # reported to the main process, which raises SamplerError
                conn.send(("error", traceback.format_exc()))
    except (BrokenPipeError, EOFError, OSError):
        pass  # the parent went away
    except Exception:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if stepper is not None:
            stepper.close()
        conn.close()


class _Remote:
    """A worker process hosting one Stepper, driven through a pipe."""

    def __init__(self, ctx, backend: str, env_id: str, horizon: int, env_kwargs: dict[str, Any]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child, self.conn, os.getpid(), backend, env_id, horizon, env_kwargs), daemon=True
        )
        self.proc.start()
        child.close()

    def send(self, cmd: str, *payload: Any) -> None:
        try:
            self.conn.send((cmd, payload))
        except OSError:  # BrokenPipeError / ConnectionResetError: the worker is gone
            raise SamplerError(f"sampler worker {self.proc.pid} died (exit code {self.proc.exitcode})") from None

    def recv(self) -> Any:
        try:
            status, result = self.conn.recv()
        except (EOFError, OSError):
            raise SamplerError(f"sampler worker {self.proc.pid} died (exit code {self.proc.exitcode})") from None
        if status == "error":
            raise SamplerError(f"sampler worker failed:\n{result}")
        return result

    def close(self, timeout: float = 5.0) -> None:
        try:
            self.conn.send(("close", ()))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout)
        self.conn.close()


class _Local:
    """The same interface as _Remote, in-process (n_workers == 1, or a threaded backend)."""

    def __init__(self, backend: str, env_id: str, horizon: int, env_kwargs: dict[str, Any], **stepper_kwargs: Any):
        self.stepper = STEPPERS[backend](env_id, horizon, env_kwargs, **stepper_kwargs)
        self._result: Any = None

    def send(self, cmd: str, *payload: Any) -> None:
        self._result = getattr(self.stepper, cmd)(*payload)

    def recv(self) -> Any:
        return self._result

    def close(self, timeout: float = 5.0) -> None:
        self.stepper.close()


def _close_all(workers: list) -> None:
    for w in workers:
        try:
            w.close()
        except Exception:
            pass
    workers.clear()


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Sampler:
    """Collects whole episodes for a list of tasks. Use as a context manager or call close().

    ``n_workers``: 0 means one per core; 1 steps in-process. Workers are daemon processes,
    closed on :meth:`close`, at interpreter exit, and when the sampler is garbage collected.
    For a backend marked ``threaded`` (``"mujoco-batched"``, see :mod:`rlbench.backends`)
    ``n_workers`` is the number of physics threads of ONE in-process stepper instead.
    """

    def __init__(
        self,
        env_id: str,
        horizon: int | None = None,
        n_workers: int = 0,
        backend: str = "auto",
        env_kwargs: dict[str, Any] | None = None,
        start_method: str = "fork",
    ):
        envs.entry(env_id)  # unknown id: clear error before any process starts
        self.env_id = env_id
        probe = envs.make_meta_env(env_id, horizon=horizon, **(env_kwargs or {}))
        self.horizon = int(horizon or probe.horizon)
        # Set one task in the main process before workers fork, so per-process caches (e.g.
        # Meta-World's benchmark objects, ~30 s for ML45) are built once and inherited.
        probe.set_task(envs.get_task_distribution(env_id).sample(1, np.random.default_rng(0))[0])
        probe.close()
        self.backend = resolve_backend(backend, env_id)
        self.n_workers = int(n_workers) if n_workers > 0 else default_workers()
        self.total_steps = 0
        kwargs = dict(env_kwargs or {})
        self._workers: list = []
        # A threaded backend parallelises inside this process: n_workers = its threads.
        self.threaded = bool(getattr(STEPPERS[self.backend], "threaded", False))
        try:
            if self.threaded:
                w = _Local(self.backend, env_id, self.horizon, kwargs, threads=self.n_workers)
                self.obs_dim, self.act_dim = w.stepper.obs_dim, w.stepper.act_dim
                self._workers.append(w)
            elif self.n_workers == 1:
                w = _Local(self.backend, env_id, self.horizon, kwargs)
                self.obs_dim, self.act_dim = w.stepper.obs_dim, w.stepper.act_dim
                self._workers.append(w)
            else:
                ctx = mp.get_context(start_method)
                self._workers = [_Remote(ctx, self.backend, env_id, self.horizon, kwargs) for _ in range(self.n_workers)]
                dims = [w.recv() for w in self._workers]
                self.obs_dim, self.act_dim = dims[0]
        except BaseException:
            _close_all(self._workers)
            raise
        self._finalizer = weakref.finalize(self, _close_all, self._workers)
        atexit.register(self._finalizer)

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sampling -------------------------------------------------------------------------------
    def _blocks(self, n: int) -> list[slice]:
        bounds = np.linspace(0, n, len(self._workers) + 1).round().astype(int)
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def _call(self, cmd: str, blocks: list[slice], *arrays: Any) -> list[Any]:
        try:
            used = [(w, s) for w, s in zip(self._workers, blocks) if s.stop > s.start]
            for w, s in used:
                w.send(cmd, *(None if a is None else a[s] for a in arrays))
            return [w.recv() for w, _ in used]
        except BaseException:  # a dead or failing worker, or Ctrl-C mid-batch: shut everything down
            self.close()
            raise

    def collect(
        self,
        tasks: list[Any],
        episodes_per_task: int,
        actor: Actor,
        rng: np.random.Generator | Sequence[np.random.Generator],
        unit: str = "episodes",
        keep_tails: bool = False,
    ) -> Batch:
        """One sampling round of ``episodes_per_task`` slots for every task in ``tasks``.

        ``actor`` maps observations [T, E, obs_dim] and standard-normal noise [T, E, act_dim]
        to (stored actions, environment actions). ``rng`` supplies every random number: one
        generator, or one per task (task i's slots then draw only from ``rng[i]``). ``unit``:
        ``"steps"`` or ``"episodes"`` (see the module docstring); ``keep_tails`` (steps only)
        keeps each slot's unfinished last episode as a truncated segment.
        """
        if not self._workers:
            raise SamplerError("sampler is closed")
        if unit not in UNITS:
            raise ValueError(f"unknown sampling unit {unit!r} (known: {', '.join(UNITS)})")
        if keep_tails and unit != "steps":
            raise ValueError("keep_tails applies to the 'steps' sampling unit only")
        T, E, H = len(tasks), int(episodes_per_task), self.horizon
        if T == 0 or E <= 0:
            raise ValueError("collect needs at least one task and one episode per task")
        draw = _Draws(rng, T, E)
        n = T * E
        slot_tasks = np.empty(n, dtype=object)
        slot_tasks[:] = [t for t in tasks for _ in range(E)]
        blocks = self._blocks(n)
        obs_now = np.concatenate(self._call("reset", blocks, slot_tasks, draw.seeds()))
        steps_unit = unit == "steps"

        obs = np.zeros((n, H, self.obs_dim))
        act = np.zeros((n, H, self.act_dim))
        rew = np.zeros((n, H))
        ep_time = np.zeros((n, H), dtype=np.int64)
        ep_end = np.zeros((n, H), dtype=bool)
        ep_term = np.zeros((n, H), dtype=bool)
        ep_success = np.full((n, H), np.nan)
        last_obs = np.zeros((n, self.obs_dim))
        active = np.ones(n, dtype=bool)  # episodes unit: slots whose one episode is still running
        t_in_ep = np.zeros(n, dtype=np.int64)  # length so far of each slot's current episode
        succ_run = np.full(n, np.nan)  # running max of reported success in the current episode
        stepped = np.zeros(n, dtype=np.int64)
        unstable = 0

        def record(rows: slice, t: int, u: np.ndarray, nxt: np.ndarray, r: np.ndarray, te: np.ndarray, sc: np.ndarray,
                   unst: np.ndarray) -> np.ndarray:
            """Record step t of the slots ``rows`` (stored actions ``u``, the stepper's outputs
            for those rows) and move them on; returns which of them ended an episode."""
            nonlocal unstable
            live = active[rows]
            te = te & live
            unstable += int((unst & live).sum())
            # Record the transitions of active slots (inactive rows stay zero). Plain copies
            # when every slot is live; masked copies (no fancy-index gathers) otherwise.
            if live.all():
                obs[rows, t] = obs_now[rows]
                act[rows, t] = u
                rew[rows, t] = r
                ep_time[rows, t] = t_in_ep[rows]
                last_obs[rows] = nxt
            else:
                np.copyto(obs[rows, t], obs_now[rows], where=live[:, None])
                np.copyto(act[rows, t], u, where=live[:, None])
                np.copyto(rew[rows, t], r, where=live)
                np.copyto(ep_time[rows, t], t_in_ep[rows], where=live)
                np.copyto(last_obs[rows], nxt, where=live[:, None])
            stepped[rows] += live
            succ, t_ep = succ_run[rows], t_in_ep[rows]  # views
            reported = live & ~np.isnan(sc)
            if reported.any():
                succ[reported] = np.fmax(np.nan_to_num(succ[reported], nan=0.0), sc[reported])
            t_ep += live
            ended = te | (live & (t_ep >= H))  # termination, or the horizon
            ep_end[rows, t] = ended
            ep_term[rows, t] = te
            ep_success[rows, t][ended] = succ[ended]
            succ[ended] = np.nan
            t_ep[ended] = 0  # steps unit: the stepper has already reset these slots
            obs_now[rows] = nxt
            return ended

        halves = self._pipeline(actor, T, E, obs_now) if steps_unit else None
        if halves is not None:
            self._pipelined_steps(draw, E, obs_now, *halves, record)
        for t in range(0 if halves is None else H, H):
            ended = record(slice(0, n), t, *self._lockstep(draw, actor, blocks, obs_now.reshape(T, E, -1), active, steps_unit))
            if not steps_unit:
                active &= ~ended
                if not active.any():
                    break
        if steps_unit:
            # Each slot's unfinished last episode: dropped (the authors' sampler drops running
            # paths) or kept as a truncated segment.
            tail = t_in_ep > 0
            if keep_tails:
                ep_end[tail, H - 1] = True
                ep_success[tail, H - 1] = succ_run[tail]
                valid = np.ones((n, H), dtype=bool)
            else:
                valid = np.arange(H)[None, :] < (H - t_in_ep)[:, None]
        else:
            valid = np.arange(H)[None, :] < stepped[:, None]
        steps = int(stepped.sum())
        self.total_steps += steps
        # The row's final used episode: terminated, or cut (horizon / kept tail).
        last_end = H - 1 - np.argmax(ep_end[:, ::-1], axis=1)
        terminated = ep_term[np.arange(n), last_end]

        def shape(x: np.ndarray) -> np.ndarray:
            return x.reshape(T, E, *x.shape[1:])

        return Batch(
            tasks=list(tasks), obs=shape(obs), actions=shape(act), rewards=shape(rew), valid=shape(valid),
            ep_time=shape(ep_time), ep_end=shape(ep_end), ep_term=shape(ep_term), ep_success=shape(ep_success),
            lengths=shape(valid.sum(-1)), terminated=shape(terminated), truncated=shape(~terminated),
            last_obs=shape(last_obs), env_steps=steps, unstable=unstable,
        )

    def _lockstep(self, draw: _Draws, actor: Actor, blocks: list[slice], obs_now: np.ndarray, active: np.ndarray,
                  steps_unit: bool) -> tuple[np.ndarray, ...]:
        """One step of every slot together: the step's noise, the policy on all slots
        (observations [T, E, obs_dim]), the reset seeds (steps unit), the workers' steps.
        Returns (stored actions, next observations, rewards, terminated, success, unstable)."""
        n = obs_now.shape[0] * obs_now.shape[1]
        noise = draw.noise(self.act_dim)
        u, a_env = actor(obs_now, noise.reshape(*obs_now.shape[:2], -1))
        reset_seeds = draw.seeds() if steps_unit else None
        parts = self._call("step", blocks, a_env.reshape(n, -1), active, reset_seeds)
        if len(parts) == 1:
            return u.reshape(n, -1), *parts[0]
        return u.reshape(n, -1), *(np.concatenate([p[k] for p in parts]) for k in range(5))

    def _pipeline(self, actor: Actor, T: int, E: int, obs_now: np.ndarray):
        """(stepper, slot rows of the two task halves, their actors) when this round can run
        pipelined (:meth:`_pipelined_steps`), else None. It can when the backend's one
        in-process stepper splits its steps (the batched MuJoCo backend with the C loop on 2+
        threads), the round has 2+ tasks and at least :data:`PIPELINE_MIN_SLOTS` slots, the
        actor can be restricted to tasks (PolicyActor.tasks), and the two halves' actions equal
        the whole batch's bit for bit on this round's first observations (matrix libraries may
        pick different kernels for different row counts)."""
        stepper = getattr(self._workers[0], "stepper", None) if self.threaded else None
        if T < 2 or T * E < PIPELINE_MIN_SLOTS or not getattr(stepper, "can_split_steps", False) or not hasattr(actor, "tasks"):
            return None
        cut = T // 2
        tasks = [slice(0, cut), slice(cut, T)]
        actors = [actor.tasks(ts) for ts in tasks]
        o = obs_now.reshape(T, E, -1)
        z = np.zeros((T, E, self.act_dim))
        whole = actor(o, z)
        parts = [a(o[ts], z[ts]) for a, ts in zip(actors, tasks)]
        if not all(np.array_equal(np.concatenate([p[k] for p in parts]), whole[k]) for k in range(2)):
            return None
        return stepper, [slice(0, cut * E), slice(cut * E, T * E)], actors

    def _pipelined_steps(self, draw: _Draws, E: int, obs_now: np.ndarray, stepper, rows: list[slice], actors: list,
                         record: Callable) -> None:
        """The steps-unit round's H steps with two halves of the tasks in flight: while the
        stepper's threads step one half's physics, this thread finishes the other half's step
        (rewards, observations, resets), records it and calls the policy on it; then it joins
        the physics (the C loop's threads take slots from one counter, so a late joiner takes
        what is left). Same random numbers in the same order as the lock-step loop (per step:
        the noise, then the reset seeds), same stepper calls per slot, so the same batch."""
        H, k = self.horizon, self.act_dim

        def policy(h: int, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            r = rows[h]
            u, a = actors[h](obs_now[r].reshape(-1, E, self.obs_dim), noise[r].reshape(-1, E, k))
            return u.reshape(-1, k), a.reshape(-1, k)

        in_flight: list = []  # physics started and not yet joined

        def begin(h: int, a: np.ndarray):
            in_flight.append(stepper.step_begin(rows[h], a))
            return in_flight[-1]

        def join(job) -> None:
            in_flight.remove(job)
            stepper.step_join(job)

        try:
            noise, seeds = draw.noise(k), draw.seeds()
            u_a, a_a = policy(0, noise)
            job_a = begin(0, a_a)
            u_b, a_b = policy(1, noise)
            for t in range(H):
                seeds_t, last = seeds, t == H - 1
                join(job_a)
                job_b = begin(1, a_b)
                record(rows[0], t, u_a, *stepper.step_end(job_a, seeds_t))
                if not last:  # step t + 1's draws, in the lock-step order, before its policy calls
                    noise, seeds = draw.noise(k), draw.seeds()
                    u_a, a_a = policy(0, noise)
                join(job_b)
                if not last:
                    job_a = begin(0, a_a)
                record(rows[1], t, u_b, *stepper.step_end(job_b, seeds_t))
                if not last:
                    u_b, a_b = policy(1, noise)
        finally:  # an error (or interrupt) mid-round: no physics thread may outlive the round
            for job in list(in_flight):
                join(job)


#: Sampling units (docs/protocol.md section 4); ``sampler.unit`` in a run config.
UNITS = ("steps", "episodes")


class _Draws:
    """Every random number of one round, from one generator or from one generator per task
    (a task's E slots then draw only from its own stream, in slot order)."""

    def __init__(self, rng: np.random.Generator | Sequence[np.random.Generator], n_tasks: int, per_task: int):
        self.per_task_rngs = None if isinstance(rng, np.random.Generator) else list(rng)
        if self.per_task_rngs is not None and len(self.per_task_rngs) != n_tasks:
            raise ValueError(f"expected one generator per task ({n_tasks}), got {len(self.per_task_rngs)}")
        self.rng = rng
        self.n, self.E = n_tasks * per_task, per_task

    def seeds(self) -> np.ndarray:
        if self.per_task_rngs is None:
            return self.rng.integers(0, 2**31 - 1, size=self.n)
        return np.concatenate([r.integers(0, 2**31 - 1, size=self.E) for r in self.per_task_rngs])

    def noise(self, act_dim: int) -> np.ndarray:
        if self.per_task_rngs is None:
            return self.rng.standard_normal((self.n, act_dim))
        return np.concatenate([r.standard_normal((self.E, act_dim)) for r in self.per_task_rngs])


# Register the non-gym backends (rlbench.backends imports envs only, never this module).
from rlbench import backends as _backends  # noqa: E402 -- after STEPPERS exists (import cycle)

_backends.register(STEPPERS)
