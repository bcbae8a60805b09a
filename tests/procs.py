"""Process helpers shared by the tests that kill and watch processes."""

from __future__ import annotations


def wait_exited(pids: list[int], timeout: float) -> list[int]:
    """Wait (without polling) until every process in ``pids`` has exited, at most ``timeout``
    seconds in all; returns those still running. Each wait is on a pidfd, which the kernel
    makes readable when the process exits (works for processes that are not our children)."""
    import os
    import select
    import time

    deadline = time.monotonic() + timeout
    left = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone (and reaped)
        try:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
        if not ready:
            left.append(pid)
    return left


def start_forked(target, *args):
    """Start ``target(*args)`` in a child forked from this process (a separate process with
    everything this one imported: no interpreter start, which costs seconds of CPU with torch).
    ``target`` may patch modules before it calls the CLI's ``main``; the patches live in the
    child only. Returns the started ``multiprocessing.Process``."""
    import multiprocessing as mp

    proc = mp.get_context("fork").Process(target=target, args=args)
    proc.start()
    return proc


def run_forked(target, *args, timeout: float = 300) -> int:
    """:func:`start_forked` and wait: the child's exit status (negative: the signal that
    killed it)."""
    proc = start_forked(target, *args)
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise TimeoutError(f"forked {target.__name__} did not end within {timeout} s")
    return proc.exitcode


def exit_with_main(argv: list[str]) -> None:
    """In a forked child: exit with the status of the CLI's ``main(argv)``."""
    import sys

    from rlbench.cli import main

    sys.exit(main(argv))
