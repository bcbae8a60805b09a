"""The batched locomotion backend's physics loop in C (``envs/slot_physics.c``), compiled on first use.

Why: the backend's Python loop makes three binding calls per slot and environment step
(``mj_setState``, ``mj_step``, ``mj_getState``). Each costs about 0.7 us of interpreter work
and re-takes the GIL when it returns, so two threads stepping halves of the slots wait for
each other's Python between physics calls. The C loop makes the same three MuJoCo calls for a
whole chunk of slots in one ctypes call, which releases the GIL for its whole duration.

Same bits: the C loop calls the same functions of the same library in the same order, so a
slot's state after a step is bit-identical to the Python loop's (both loops' full states are
compared with the gym envs' in tests/test_batched_backend.py, whole batches of both through the
Sampler in tests/test_bench_rollout_stepper.py). Threads take slots from one shared counter;
which thread steps a slot does not matter, since the slot's row holds everything its step reads.
The library is linked by its soname with the mujoco package's directory as run path, so the
process's already-loaded ``libmujoco`` is the one called.

How it is built: with the system C compiler (``$CC``, else ``cc``) against the headers shipped
in the mujoco wheel, into rlbench's cache directory (:func:`cache_dir`), under a name
that hashes the source, the mujoco version and the platform. The library is written to a
temporary file and renamed, so processes building it at the same time (test workers, Ray
actors) never load a half-written file.

Errors: MuJoCo's warnings (an unstable simulation, which MuJoCo handles itself) have the same
effect as in the Python loop, since the calls are the same. A MuJoCo *fatal* error
inside the C loop (``mju_error``, which the Python bindings turn into an exception) cannot
unwind through it and would abort the process; stepping these models raises none.

``RLBENCH_PHYSICS_LOOP`` chooses the loop: ``auto`` (default: C when it builds, otherwise the
Python loop, with the same results), ``python`` (always the Python loop), ``c`` (the C loop,
and an error if it cannot be built).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mujoco
import numpy as np

SOURCE = Path(__file__).with_name("slot_physics.c")
MODES = ("auto", "c", "python")
ENV_VAR = "RLBENCH_PHYSICS_LOOP"


class PhysicsLoopError(ValueError):
    """A bad ``RLBENCH_PHYSICS_LOOP``: not one of MODES, or ``c`` where the C loop cannot be
    built or loaded (the command line reports it in one line, exit status 2)."""


def mode() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise PhysicsLoopError(f"{ENV_VAR}={value!r}: expected one of {', '.join(MODES)}")
    return value


def check() -> None:
    """Validate ``RLBENCH_PHYSICS_LOOP`` before a run writes anything; with ``c``, build the loop
    now (raises PhysicsLoopError)."""
    if mode() == "c":
        c_loop()


def cache_dir() -> Path:
    """rlbench's cache directory: ``$RLBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/rlbench``, else
    ``~/.cache/rlbench`` (also where rlbench/plan.py keeps its calibrations)."""
    if os.environ.get("RLBENCH_CACHE_DIR"):
        return Path(os.environ["RLBENCH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlbench"


def _mujoco_dir() -> Path:
    return Path(mujoco.__file__).parent


def _library_path() -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + f"{mujoco.__version__}|{sys.platform}|{platform.machine()}".encode()).hexdigest()[:16]
    return cache_dir() / f"slot_physics-{key}.so"


def _build(target: Path) -> None:
    """Compile SOURCE into ``target`` (atomically). Raises PhysicsLoopError with the reason."""
    mjdir = _mujoco_dir()
    libs = sorted(mjdir.glob("libmujoco.so*"))
    include = mjdir / "include"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise PhysicsLoopError("no C compiler (cc or gcc; set CC)")
    if not libs or not (include / "mujoco" / "mujoco.h").is_file():
        raise PhysicsLoopError(f"the mujoco package at {mjdir} has no libmujoco.so or include/mujoco/mujoco.h")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, "-O2", "-shared", "-fPIC", "-I", str(include), str(SOURCE), "-o", tmp, str(libs[0]), f"-Wl,-rpath,{mjdir}"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            last = ((res.stderr or res.stdout).strip().splitlines() or ["no output"])[-1]
            raise PhysicsLoopError(f"compiling {SOURCE.name} with {compiler} failed: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load() -> tuple[ctypes._CFuncPtr | None, str]:
    """(the C function or None, why not). Built and loaded once per process."""
    try:
        path = _library_path()
        if not path.is_file():
            _build(path)
        fn = ctypes.CDLL(str(path)).rlbench_step_slots  # CDLL: the GIL is released during calls
    except (OSError, PhysicsLoopError, subprocess.SubprocessError) as e:
        return None, str(e)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong, ctypes.c_void_p, ctypes.c_longlong,
                   ctypes.c_uint, ctypes.c_int, ctypes.c_void_p, ctypes.c_longlong]
    return fn, ""


def c_loop() -> ctypes._CFuncPtr | None:
    """The C loop if ``RLBENCH_PHYSICS_LOOP`` allows it and it builds, else None (use the Python
    loop). With ``RLBENCH_PHYSICS_LOOP=c`` a failure raises PhysicsLoopError."""
    m = mode()
    if m == "python":
        return None
    fn, why = _load()
    if fn is None and m == "c":
        raise PhysicsLoopError(f"{ENV_VAR}=c but the C physics loop is unavailable: {why}")
    return fn


def unavailable_reason() -> str:
    """Why the C loop is not used ("" when it is)."""
    if mode() == "python":
        return f"{ENV_VAR}=python"
    return _load()[1]


class SlotLoop:
    """The C loop bound to one stepper's state array and slot models."""

    #: slots a thread takes from the shared counter at a time (see slot_physics.c)
    GRAB = 1

    def __init__(self, fn: ctypes._CFuncPtr, spec: int, frame_skip: int):
        self.fn, self.spec, self.frame_skip = fn, int(spec), int(frame_skip)
        self.models = np.zeros(0, dtype=np.uint64)
        self.states = np.zeros((0, 0))

    def bind(self, states: np.ndarray, models: list[mujoco.MjModel]) -> None:
        """Use ``states`` [n, nstate] (C-contiguous float64, kept alive by the caller) and one model per slot."""
        if states.dtype != np.float64 or not states.flags.c_contiguous:
            raise ValueError("the state array must be C-contiguous float64")
        self.states = states
        self.models = np.array([m._address for m in models], dtype=np.uint64)

    def run(self, idx: np.ndarray, datas: list[mujoco.MjData], pool: ThreadPoolExecutor | None = None) -> None:
        """Step slots ``idx`` frame_skip times on ``len(datas)`` threads (this one, and
        ``len(datas) - 1`` of ``pool``), each loading slots into its own scratch ``datas[j]``
        and taking slots from one shared counter until all are done."""
        self.join(self.start(idx, datas, pool))

    def start(self, idx: np.ndarray, datas: list[mujoco.MjData], pool: ThreadPoolExecutor | None = None) -> tuple:
        """Start stepping slots ``idx`` on ``len(datas) - 1`` threads of ``pool`` and return at
        once; :meth:`join` makes the calling thread take the slots still left (with
        ``datas[0]``, which only the join uses) and waits for the others. Until :meth:`join`
        returns, the caller may work (including with ``datas[0]``, e.g. resetting other slots)
        but must not touch these slots' state rows."""
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        counter = np.zeros(1, dtype=np.int64)  # kept alive with idx in the handle
        args = (self.models.ctypes.data, self.states.ctypes.data, self.states.shape[1], idx.ctypes.data, idx.size,
                self.spec, self.frame_skip, counter.ctypes.data, self.GRAB)
        futures = [pool.submit(self._call, args, d) for d in datas[1:]] if pool is not None else []
        return args, datas[0], futures, idx, counter

    def join(self, handle: tuple) -> None:
        """Finish what :meth:`start` began: step the remaining slots on this thread, then wait."""
        args, data, futures = handle[:3]
        self._call(args, data)
        for f in futures:
            f.result()

    def _call(self, args: tuple, data: mujoco.MjData) -> None:
        self.fn(args[0], data._address, *args[1:])
