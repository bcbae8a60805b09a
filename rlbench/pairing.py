"""Proof that two runs of one seed form a pair: same initial policy, same meta-test tasks.

The paired analysis of ``rlbench compare`` treats the seed as a block: for a seed, every
algorithm starts from the same initial policy and is meta-tested on the same tasks. That is
true by construction of the runner (initial weights and test tasks derive from the seed
alone), but a comparison of runs made by different versions of the code, with different
settings, or copied from elsewhere must not rely on it. So every run records in ``run.json``
a small ``pairing`` record, written when checkpoint 0 (the initial policy) is saved:

``{"version": 1, "init_params_sha256": ..., "test_tasks_sha256": ...}``

``init_params_sha256`` hashes checkpoint 0's parameters (names, dtypes, shapes and bytes, in
sorted name order); ``test_tasks_sha256`` hashes ``repr`` of :func:`rlbench.evaluator.test_tasks`
for the run's config. Two runs of one seed are paired iff both records exist and are equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Format version of the record (bumped if what is hashed changes).
VERSION = 1
#: run.json key of the record.
KEY = "pairing"


def params_sha256(params: Mapping[str, Any]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor/array, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(params):
        v = params[name]
        arr = v.detach().cpu().contiguous().numpy() if hasattr(v, "detach") else np.ascontiguousarray(v)
        h.update(f"{name}|{arr.dtype.str}|{tuple(arr.shape)}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def tasks_sha256(tasks: list[Any]) -> str:
    """sha256 of ``repr(tasks)`` (the task parameters as the evaluator receives them)."""
    return hashlib.sha256(repr(tasks).encode()).hexdigest()


def record(cfg, init_params: Mapping[str, Any]) -> dict[str, Any]:
    """The pairing record of a run with config ``cfg`` whose checkpoint-0 parameters are ``init_params``."""
    from rlbench.evaluator import test_tasks

    return {"version": VERSION, "init_params_sha256": params_sha256(init_params),
            "test_tasks_sha256": tasks_sha256(test_tasks(cfg))}


def record_for_run(run_dir: Path | str) -> dict[str, Any]:
    """The pairing record of an existing run directory (from its config and ``checkpoints/ckpt_000.pt``).

    Used to add the record to runs made before it existed (see :func:`ensure`).
    """
    from rlbench import store

    run_dir = Path(run_dir)
    state = store.load_torch(store.ckpt_path(run_dir, 0))
    return record(store.read_config(run_dir), state["params"])


def ensure(run_dir: Path | str) -> dict[str, Any] | None:
    """Write the record into ``run.json`` if it is missing and checkpoint 0 exists; returns the record.

    Returns None (and writes nothing) when there is no checkpoint 0 yet.
    """
    from rlbench import store

    run_dir = Path(run_dir)
    meta = store.read_meta(run_dir)
    if isinstance(meta.get(KEY), dict):
        return meta[KEY]
    if not store.ckpt_path(run_dir, 0).exists():
        return None
    rec = record_for_run(run_dir)
    store.update_meta(run_dir, **{KEY: rec})
    return rec


def paired(rec_a: object, rec_b: object) -> tuple[bool, str]:
    """(True, "") if two records prove a pair, else (False, the reason in a few words)."""
    if not isinstance(rec_a, dict) or not isinstance(rec_b, dict):
        return False, "no pairing record in run.json (run made before pairing records existed)"
    if rec_a.get("version") != rec_b.get("version"):
        return False, f"pairing record versions differ ({rec_a.get('version')} vs {rec_b.get('version')})"
    for key, what in (("init_params_sha256", "initial policies"), ("test_tasks_sha256", "meta-test tasks")):
        if rec_a.get(key) is None or rec_a.get(key) != rec_b.get(key):
            return False, f"different {what}"
    return True, ""
