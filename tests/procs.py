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
