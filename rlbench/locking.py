"""One writer per run directory and per experiment directory: an OS file lock.

:func:`hold` takes an exclusive ``fcntl.flock`` on ``<dir>/.rlbench.lock`` without waiting; a
second process that wants the same directory gets :class:`LockedError` (a usage error: the
command line prints one line and exits with status 2). The kernel releases a flock when
the holder's last file descriptor closes, so a lock of a killed process never blocks a later
``--resume``.

Re-entrant within a process (``run`` trains and then evaluates the same run while holding
it). Children forked by the sampler inherit the descriptor; they close their copies at fork
(:func:`os.register_at_fork`), so a worker that outlives a killed parent for a moment does
not keep the lock. flock works on local file systems and on NFS v4 (where Linux maps it to
byte-range locks).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from rlbench import store
from rlbench.errors import UsageError

LOCK_FILE = ".rlbench.lock"

_held: dict[str, list[int]] = {}  # real path of the lock file -> [fd, depth]
_cleaned: set[str] = set()  # directories whose outermost claim is active in this process
_mutex = threading.Lock()


class LockedError(UsageError):
    """Another process holds the directory."""


def _close_inherited() -> None:
    for fd, _depth in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_inherited)


def lock_path(directory: Path) -> Path:
    return Path(directory) / LOCK_FILE


@contextlib.contextmanager
def hold(directory: Path, what: str = "run") -> Iterator[None]:
    """Hold the directory's lock for the duration of the block. ``directory`` must exist."""
    path = lock_path(directory)
    key = os.path.realpath(path)
    with _mutex:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as e:
                raise UsageError(f"cannot lock {directory}: {e.strerror} ({path})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockedError(
                        f"another process is using the {what} in {directory} (it holds {path}); wait for it to "
                        f"finish or stop it, then run again"
                    ) from None
                raise UsageError(f"cannot lock {directory}: {e.strerror} ({path})") from None
            _held[key] = [fd, 1]
    try:
        yield
    finally:
        with _mutex:
            entry = _held.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    del _held[key]
                    os.close(entry[0])


def check_out_path(directory: Path, flag: str = "--out") -> None:
    """``directory`` can hold results: not an existing file, and its nearest existing ancestor
    is a directory. Writes nothing."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{flag} {directory} is an existing file, not a directory; choose another {flag}")
    parent = directory
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{flag} {directory}: {parent} is a file, not a directory")


@contextlib.contextmanager
def claim(directory: Path, what: str = "run", flag: str = "--out") -> Iterator[None]:
    """Create ``directory`` if needed, hold its lock, and remove temporary files that a killed
    writer left there (safe: we are now its only writer). If the block fails and the
    directory was created here and holds nothing but the lock, it is removed again, so a
    refused command leaves no trace."""
    directory = Path(directory)
    check_out_path(directory, flag)
    created = []  # directories this call creates, deepest first
    d = directory
    while not d.exists() and d.parent != d:
        created.append(d)
        d = d.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {flag} {directory}: {e.strerror}") from None
    try:
        with hold(directory, what):
            key = os.path.realpath(directory)
            if key in _cleaned:  # re-entered: the outer claim already cleaned up
                yield
                return
            store.remove_stale_temp_files(directory)
            _cleaned.add(key)
            try:
                yield
            finally:
                _cleaned.discard(key)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                if [p.name for p in directory.iterdir()] == [LOCK_FILE]:
                    lock_path(directory).unlink()
                    for d in created:
                        d.rmdir()
        raise
