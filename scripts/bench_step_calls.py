"""Cost of the MuJoCo calls that step the batched backend's slots, per slot and environment step.

One thread, process CPU time (robust to other load on the machine), the same slots, start
states and actions for every variant, all variants interleaved in every repeat, the
minimum over repeats reported:

``three_calls``     the ``mujoco-batched`` backend's Python loop (envs/locomotion_batched.py): per slot
                    ``mj_setState`` into a scratch MjData, ``mj_step`` x frame_skip, ``mj_getState``.
``c_loop``          the backend's loop as it runs now: the same three calls per slot, made by
                    envs/slot_physics.c in ONE ctypes call for all slots per environment step
                    (bit-identical to three_calls, warm start included: ``bit_identical_*``).
``mjdata_per_slot`` the loop of ``MjDataPerSlotStepper`` (same module, not the backend): every
                    slot has its own MjData; per slot a write to its cached ``ctrl`` view and
                    ONE ``mj_step`` call, then qpos/qvel of all slots gathered by two
                    ``np.concatenate`` of cached views (bit-identical to three_calls, warm
                    start included: ``bit_identical_*``).
``rollout_per_slot`` one ``mujoco.rollout`` binding call per slot (nbatch 1) on the slot's own
                    MjData, whose ``qacc_warmstart`` is passed back in as ``initial_warmstart``:
                    keeps the warm start (``bit_identical_*`` compare the final states and
                    warm starts with three_calls).
``rollout_batched`` ONE ``mujoco.rollout`` call over all slots per environment step (nthread 0):
                    no warm start comes back, so NOT bit-identical (``bit_identical_state``).
``three_calls_zero_warmstart`` the three calls with each slot's warm start zeroed before every
                    env step: the same physics as rollout_batched, bit for bit
                    (``rollout_batched_equals_three_calls_zero_warmstart``), so the pair
                    separates the cost of the calls from the cost of solving without a warm start.

Each variant runs twice: with frame_skip substeps (``us_per_slot_step``) and with 0 substeps
(``us_per_slot_calls_only``: the calls and argument conversion alone, no physics).

    python scripts/bench_step_calls.py --env HalfCheetahRandVel --slots 200 --steps 20 --repeats 7

``--memory-slots N`` adds ``mjdata_memory``: the memory of one MjData per slot at N slots
(the paper's batch: 800), see :func:`mjdata_memory`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import mujoco
import numpy as np
from mujoco import _rollout

import envs
from envs import slot_physics
from envs.locomotion_batched import STATE_SPEC, BatchedLocomotionStepper, supports
from rlbench.cli import check_out

FULL = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
CTRL = int(mujoco.mjtState.mjSTATE_CTRL)


class Setup:
    """n slots of one environment after reset, and fixed clipped actions for ``steps`` env steps."""

    def __init__(self, env_id: str, n: int, steps: int):
        self.st = BatchedLocomotionStepper(env_id, 200)
        tasks = envs.get_task_distribution(env_id).sample(n, np.random.default_rng(0))
        self.st.reset(tasks, np.arange(n) + 1)
        self.state0 = self.st.state()
        self.models = list(self.st._slot_models)
        self.actions = np.random.default_rng(1).uniform(-1, 1, (steps, n, self.st.act_dim))
        m = self.st.model
        self.nfull = mujoco.mj_stateSize(m, FULL)
        w = mujoco.mj_stateSize(m, STATE_SPEC & (int(mujoco.mjtState.mjSTATE_WARMSTART) - 1))
        self.warm = slice(w, w + m.nv)


def three_calls(s: Setup, nstep: int, zero_warmstart: bool = False):
    x = s.state0.copy()
    rows = list(x)
    d = mujoco.MjData(s.st.model)
    set_state, get_state, step = mujoco.mj_setState, mujoco.mj_getState, mujoco.mj_step

    def run() -> np.ndarray:
        for a in s.actions:
            x[:, s.st._ctrl] = a
            if zero_warmstart:
                x[:, s.warm] = 0.0
            for m, r in zip(s.models, rows):
                set_state(m, d, r, STATE_SPEC)
                step(m, d, nstep)
                get_state(m, d, r, STATE_SPEC)
        return x

    return run


def rollout_per_slot(s: Setup, nstep: int):
    n = len(s.models)
    r = _rollout.Rollout(nthread=0)
    datas = [[mujoco.MjData(m)] for m in s.models]
    models = [[m] for m in s.models]
    full = [np.ascontiguousarray(s.state0[i : i + 1, : s.nfull]) for i in range(n)]
    warm = []
    for i in range(n):
        datas[i][0].qacc_warmstart[:] = s.state0[i, s.warm]
        warm.append(datas[i][0].qacc_warmstart[None])  # a view: the call's own result comes back in
    out = [np.empty((1, nstep, s.nfull)) for _ in range(n)]
    ctrl = [np.empty((1, nstep, s.st.act_dim)) for _ in range(n)]

    def run() -> np.ndarray:
        for a in s.actions:
            for i in range(n):
                ctrl[i][0] = a[i]
                r.rollout(models[i], datas[i], nstep, CTRL, full[i], warm[i], ctrl[i], out[i], None, None)
                if nstep:
                    full[i][0] = out[i][0, -1]
        x = s.state0.copy()
        for i in range(n):
            x[i, : s.nfull] = full[i][0]
            x[i, s.warm] = warm[i][0]
            x[i, s.st._ctrl] = s.actions[-1, i]
        return x

    return run


def rollout_batched(s: Setup, nstep: int):
    n = len(s.models)
    r = _rollout.Rollout(nthread=0)
    datas = [mujoco.MjData(s.st.model)]
    out = np.empty((n, nstep, s.nfull))

    def run() -> np.ndarray:
        full = np.ascontiguousarray(s.state0[:, : s.nfull])
        for a in s.actions:
            ctrl = np.ascontiguousarray(np.repeat(a[:, None], nstep, axis=1))
            r.rollout(s.models, datas, nstep, CTRL, full, None, ctrl, out, None, None)
            if nstep:
                full = np.ascontiguousarray(out[:, -1])
        x = s.state0.copy()
        x[:, : s.nfull] = full
        x[:, s.st._ctrl] = s.actions[-1]
        return x

    return run


def c_loop(s: Setup, nstep: int):
    fn = slot_physics.c_loop()
    if fn is None:
        raise SystemExit(f"error: the C physics loop is unavailable: {slot_physics.unavailable_reason()}")
    x = s.state0.copy()
    loop = slot_physics.SlotLoop(fn, STATE_SPEC, nstep)
    loop.bind(x, s.models)
    d = mujoco.MjData(s.st.model)
    idx = np.arange(len(s.models))

    def run() -> np.ndarray:
        for a in s.actions:
            x[:, s.st._ctrl] = a
            loop.run(idx, [d])
        return x

    return run


def mjdata_per_slot(s: Setup, nstep: int):
    datas = [mujoco.MjData(m) for m in s.models]
    for m, d, x in zip(s.models, datas, s.state0):
        mujoco.mj_setState(m, d, x, STATE_SPEC)
    ctrls, qpos, qvel = [d.ctrl for d in datas], [d.qpos for d in datas], [d.qvel for d in datas]
    step = mujoco.mj_step

    def run() -> np.ndarray:
        for a in s.actions:
            for m, d, c, row in zip(s.models, datas, ctrls, a):
                c[:] = row
                step(m, d, nstep)
            np.concatenate(qpos), np.concatenate(qvel)  # the observation's inputs, as in the backend
        x = np.empty_like(s.state0)
        for m, d, r in zip(s.models, datas, x):
            mujoco.mj_getState(m, d, r, STATE_SPEC)
        return x

    return run


def three_calls_zero_warmstart(s: Setup, nstep: int):
    return three_calls(s, nstep, zero_warmstart=True)


VARIANTS = {"three_calls": three_calls, "c_loop": c_loop, "mjdata_per_slot": mjdata_per_slot, "rollout_per_slot": rollout_per_slot, "rollout_batched": rollout_batched,
            "three_calls_zero_warmstart": three_calls_zero_warmstart}


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def mjdata_memory(env_id: str, n: int, steps: int) -> dict:
    """Memory of one MjData per slot (MjDataPerSlotStepper) at ``n`` slots: the MjData's arrays
    (``nbuffer``) and arena reservation (``narena``, bytes), the arena and stack high-water
    marks after ``steps`` env steps with uniform random actions, and the growth of this
    process's resident memory per slot (Linux /proc) over creating and stepping the n MjData."""
    st = BatchedLocomotionStepper(env_id, 200)
    tasks = envs.get_task_distribution(env_id).sample(n, np.random.default_rng(0))
    st.reset(tasks, np.arange(n) + 1)  # the per-slot models (rand-params) exist before we measure
    models = list(st._slot_models)
    rng = np.random.default_rng(2)
    r0 = _resident_mb()
    datas = [mujoco.MjData(m) for m in models]
    r1 = _resident_mb()
    for m, d in zip(models, datas):
        mujoco.mj_forward(m, d)
        for _ in range(steps):
            d.ctrl[:] = rng.uniform(-1, 1, m.nu)
            mujoco.mj_step(m, d, st.frame_skip)
    r2 = _resident_mb()
    return {"slots": n, "env_steps": steps, "nbuffer_bytes": int(datas[0].nbuffer), "narena_bytes": int(datas[0].narena),
            "maxuse_arena_bytes": max(int(d.maxuse_arena) for d in datas),
            "maxuse_stack_bytes": max(int(d.maxuse_stack) for d in datas),
            "resident_mb_per_slot_created": (r1 - r0) / n, "resident_mb_per_slot_after_steps": (r2 - r0) / n,
            "resident_mb_all_slots": r2 - r0, "address_space_mb_all_slots": n * (datas[0].narena + datas[0].nbuffer) / 2**20}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="HalfCheetahRandVel", help="a locomotion env name or rlbench id")
    p.add_argument("--slots", type=int, default=200)
    p.add_argument("--steps", type=int, default=20, help="env steps per measurement")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None)
    p.add_argument("--memory-slots", type=int, default=0,
                   help="also report the memory of one MjData per slot at this many slots (0: skip)")
    args = p.parse_args(argv)
    env_id = args.env if args.env.startswith("rlbench/") else f"rlbench/{args.env}-v0"
    if not supports(env_id):
        print(f"error: {args.env!r} is not a locomotion environment", file=sys.stderr)
        sys.exit(2)
    if min(args.slots, args.steps, args.repeats) < 1 or args.memory_slots < 0:
        print("error: --slots, --steps and --repeats must be >= 1, --memory-slots >= 0", file=sys.stderr)
        sys.exit(2)
    if check_out(args.out):
        print(f"error: {check_out(args.out)}", file=sys.stderr)
        sys.exit(2)
    s = Setup(env_id, args.slots, args.steps)
    fs = s.st.frame_skip
    runs: dict[str, list[float]] = {f"{k}/{ns}": [] for k in VARIANTS for ns in (fs, 0)}
    finals = {}
    load0 = os.getloadavg()
    for _ in range(args.repeats):
        for key in runs:
            name, ns = key.split("/")
            run = VARIANTS[name](s, int(ns))  # set-up (MjData, buffers) not timed
            c0 = time.process_time()
            final = run()
            runs[key].append((time.process_time() - c0) / (args.slots * args.steps) * 1e6)
            if int(ns):
                finals[name] = final
    ref = finals["three_calls"]
    result = {
        "command": " ".join(["python", "scripts/bench_step_calls.py", *(argv if argv is not None else sys.argv[1:])]),
        "env": env_id, "slots": args.slots, "steps": args.steps, "frame_skip": fs, "mujoco": mujoco.__version__,
        "us_per_slot_step": {k: min(runs[f"{k}/{fs}"]) for k in VARIANTS},
        "us_per_slot_calls_only": {k: min(runs[f"{k}/0"]) for k in VARIANTS},
        # final time, qpos, qvel, act (and warm start) after --steps env steps, against three_calls
        "bit_identical_state": {k: bool(np.array_equal(v[:, : s.nfull], ref[:, : s.nfull])) for k, v in finals.items()},
        # the same physics as rollout_batched, made by the three calls: isolates the calls' cost
        "rollout_batched_equals_three_calls_zero_warmstart": bool(np.array_equal(
            finals["rollout_batched"][:, : s.nfull], finals["three_calls_zero_warmstart"][:, : s.nfull])),
        "bit_identical_warmstart": {"rollout_per_slot": bool(np.array_equal(finals["rollout_per_slot"][:, s.warm], ref[:, s.warm])),
                                    "mjdata_per_slot": bool(np.array_equal(finals["mjdata_per_slot"][:, s.warm], ref[:, s.warm])),
                                    "c_loop": bool(np.array_equal(finals["c_loop"], ref)),
                                    "rollout_batched": None},
        "all_runs_us": runs,
        "mjdata_memory": mjdata_memory(env_id, args.memory_slots, 200) if args.memory_slots else None,
        "load_average_start": load0, "load_average_end": os.getloadavg(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
