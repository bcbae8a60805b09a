"""Explicit randomness: independent generators derived from (seed, purpose, ...).

No code in rlbench, agents or envs draws from a global RNG. Each consumer asks for a generator
for its purpose ("train-tasks", "test-tasks", "sampler", "policy-init", ...) and any further integer
keys (iteration, slot). Different purposes give statistically independent streams, the
same arguments give the same stream in any process, so results do not depend on which
worker computes what.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _purpose_key(purpose: str) -> int:
    # A stable 64-bit integer for a purpose string (Python's hash() is salted per process).
    return int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")


def seed_sequence(seed: int, purpose: str, *keys: int) -> np.random.SeedSequence:
    """The SeedSequence for (seed, purpose, *keys)."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.SeedSequence([int(seed), _purpose_key(purpose), *(int(k) for k in keys)])


def generator(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy Generator for (seed, purpose, *keys)."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, purpose, *keys)))


def int_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 32-bit integer seed for APIs that take an int (gymnasium reset, torch)."""
    return int(seed_sequence(seed, purpose, *keys).generate_state(1, np.uint32)[0])


def torch_generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    """A torch CPU Generator for (seed, purpose, *keys)."""
    g = torch.Generator()
    g.manual_seed(int(seed_sequence(seed, purpose, *keys).generate_state(1, np.uint64)[0] >> 1))
    return g
