"""Re-export: the sampling-round container lives in :mod:`agents.batch` (agents consume it and
must not import the harness, issue 14 item 6)."""

from agents.batch import Batch

__all__ = ["Batch"]
