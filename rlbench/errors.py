"""User-facing errors: the command line prints their message on one line and exits with status 2."""

from __future__ import annotations

from envs.base import InvalidTaskError, UnknownEnvError
from envs.slot_physics import PhysicsLoopError
from rlbench.config import ConfigError


class UsageError(ValueError):
    """Bad input from the user (arguments, files, directories)."""


#: Exceptions the command line reports as one line with exit status 2 (never a traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, ConfigError, UnknownEnvError, InvalidTaskError, PhysicsLoopError)
