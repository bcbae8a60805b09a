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
Temporary files are named ``.<name>.<random>.tmp``; one left behind by a killed process is
removed by :func:`remove_stale_temp_files` when the next process takes the run's lock. Files
get the permissions ``open()`` would give (0666 minus the umask), so a group can share them.

Damaged files (a disk error, a copy cut short, a hand edit) raise :class:`CorruptFileError`
naming the file and what to do: torch files are checked against their zip CRCs and, for
checkpoints and evaluation parts, against the sha256 recorded in ``run.json`` when they were
written. A write failure (disk full, read-only file system) raises :class:`StoreError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from envs.fingerprint import PACKAGES as ENV_PACKAGES
from envs.fingerprint import package_versions
from rlbench import config
from rlbench.errors import UsageError
from rlbench.settings import RunConfig

CONFIG_FILE = "config.yaml"
META_FILE = "run.json"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
CKPT_DIR = "checkpoints"
EVAL_DIR = "evaluation"
EVAL_FILE = "evaluation.csv"
#: An experiment directory (``rlbench run``): its ExperimentConfig and the comparison's outputs,
#: next to the run directories (``<env>/<algo>/seed_<n>``).
EXPERIMENT_FILE = "experiment.yaml"
COMPARISON_DIR = "comparison"

#: Packages whose versions run.json records: the environments' (envs.fingerprint.PACKAGES,
#: also part of the comparability record) and the harness's.
PACKAGES = ("torch", *ENV_PACKAGES, "scipy", "pandas", "matplotlib", "pyyaml", "tqdm")


TMP_SUFFIX = ".tmp"


class CorruptFileError(UsageError):
    """A run file is damaged (truncated, not the expected format, or its checksum differs)."""


class StoreError(OSError):
    """Writing a file failed (disk full, read-only, no permission); nothing was overwritten."""


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it: put it straight back
    os.umask(mask)
    return mask


def _write_error(path: Path, e: OSError) -> StoreError:
    err = StoreError(e.errno, f"cannot write {path}: {e.strerror or e}; existing files were left unchanged")
    err.filename = str(path)
    return err


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write via a temporary file + fsync + rename (atomic on POSIX).

    On any failure the temporary file is removed and the old ``path`` (if any) is untouched;
    an OSError becomes a :class:`StoreError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and not isinstance(e, StoreError):
            raise _write_error(path, e) from None
        raise


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temporary files of interrupted atomic writes in ``directory`` and its
    subdirectories. Call only while holding the directory's lock (no writer is active)."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.rglob(f".*{TMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_torch(path: Path, obj: Any) -> str:
    """Save ``obj`` atomically and verify it on disk; returns the file's sha256."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))
    digest = sha256_bytes(data)
    try:
        written = sha256_file(path)
    except OSError as e:
        raise _write_error(Path(path), e) from None
    if written != digest:
        raise CorruptFileError(f"{path} differs from what was just written to it (a failing disk?); check the file system and run again")
    return digest


def _damaged(path: Path, what: str, todo: str) -> CorruptFileError:
    return CorruptFileError(f"{path} is damaged ({what}); {todo}")


def load_torch(path: Path, sha256: str | None = None, todo: str = "restore it from a backup or train the run again") -> Any:
    """Load a file written by :func:`save_torch`, checking it first: its sha256 against
    ``sha256`` when given, and always the CRC of every record of torch's zip format.
    A damaged file raises :class:`CorruptFileError` naming the file and ``todo``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing; {todo}") from None
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise _damaged(path, "its sha256 differs from the one recorded in run.json when it was written", todo)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise _damaged(path, "empty, truncated or not a torch file" if data else "empty file", todo) from None
    if bad is not None:
        raise _damaged(path, f"record {bad} fails its CRC check", todo)
    try:
        # weights_only: tensors and plain containers only (what save_torch is given), so a
        # file from elsewhere cannot run code when it is loaded
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise _damaged(path, f"cannot be loaded: {type(e).__name__}", todo) from None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    out.update({pkg: v or "not installed" for pkg, v in package_versions(PACKAGES).items()})
    out["rlbench"] = metadata.version("rlbench") if _installed("rlbench") else "source"
    return out


def cpu_model() -> str:
    """The CPU's model name. Recorded in run.json: float32 learner arithmetic can round
    differently on another CPU model (other vector kernels), so bit-identical reruns need the
    same model (docs/protocol.md, reproducibility)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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
        rev = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=False, cwd=here, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_text(cfg: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(cfg), sort_keys=False)


def read_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    try:
        return config.load(RunConfig, path)
    except config.ConfigError as e:
        msg = str(e) if str(path) in str(e) else f"{path}: {e}"
        raise config.ConfigError(f"{msg} (the run's config is damaged or from another rlbench version; restore it from a backup)") from None


def read_meta(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / META_FILE
    try:
        meta = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _damaged(path, "not valid JSON: truncated or overwritten", "restore it from a backup or train the run again") from None
    if not isinstance(meta, dict):
        raise _damaged(path, "not a JSON object", "restore it from a backup or train the run again")
    return meta


def read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) pairs of a JSON-lines log. A last line without its newline that is not
    valid JSON is the trace of a crash mid-append and is dropped; any other line that is not
    a JSON object is damage (:class:`CorruptFileError`)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    out = []
    for i, line in enumerate([*lines, torn], 1):
        if i > len(lines) and not line:
            break
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if not isinstance(row, dict):
            if i > len(lines):  # the torn last line
                break
            raise _damaged(path, f"line {i} is not a JSON object", "restore it from a backup, or delete that line (its metrics are lost)")
        out.append((line.decode(), row))
    return out


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
