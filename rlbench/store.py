"""Run directories: atomic writes, self-describing metadata, and the files of a run.

Layout of a run directory::

    config.yaml          the resolved RunConfig (strictly reloadable)
    run.json             metadata: ids, comparability dict, versions, git commit, budget used,
                         status, wall time, evaluation steps
    state.pt             latest training state (agent, iteration, steps) for --resume
    metrics.jsonl        one line per training iteration (section/name keys, env steps)
    checkpoints/ckpt_NNN.pt   policy parameters at checkpoint marks (with exact steps)
    evaluation/ckpt_NNN.csv   meta-test results per checkpoint (resumable)
    evaluation.csv       all meta-test results (long format)

Every file is written to a temporary name in the same directory, fsynced and renamed into
place, so a crash at any moment leaves either the old or the new version, never half a file.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from rlbench import config
from rlbench.settings import RunConfig

CONFIG_FILE = "config.yaml"
META_FILE = "run.json"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
CKPT_DIR = "checkpoints"
EVAL_DIR = "evaluation"
EVAL_FILE = "evaluation.csv"

PACKAGES = ("torch", "numpy", "scipy", "gymnasium", "mujoco", "metaworld", "pandas", "matplotlib", "pyyaml", "tqdm")


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write via a temporary file + fsync + rename (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_torch(path: Path, obj: Any) -> None:
    def w(f):
        buf = io.BytesIO()
        torch.save(obj, buf)
        f.write(buf.getvalue())

    atomic_write(path, w)


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out["rlbench"] = metadata.version("rlbench") if _installed("rlbench") else "source"
    return out


def _installed(pkg: str) -> bool:
    try:
        metadata.version(pkg)
        return True
    except metadata.PackageNotFoundError:
        return False


def git_commit() -> str:
    """The source tree's commit (with "+dirty" if modified), or "unknown" outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_text(cfg: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(cfg), sort_keys=False)


def read_config(run_dir: Path) -> RunConfig:
    return config.load(RunConfig, Path(run_dir) / CONFIG_FILE)


def read_meta(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / META_FILE).read_text())


def update_meta(run_dir: Path, **changes: Any) -> dict[str, Any]:
    meta = read_meta(run_dir)
    meta.update(changes)
    write_json(Path(run_dir) / META_FILE, meta)
    return meta


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / META_FILE).is_file()


def ckpt_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"ckpt_{index:03d}.pt"


def eval_part_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / EVAL_DIR / f"ckpt_{index:03d}.csv"


def diff_dicts(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ (for "what differs" messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(key)
            else:
                out.extend(diff_dicts(a[k], b[k], key))
        return out
    return [] if a == b else [prefix or "(value)"]
