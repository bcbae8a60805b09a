"""Re-export: the seeding helpers live in :mod:`agents.seeding` (agents draw their initial
parameters from it and must not import the harness, issue 14 item 6)."""

from agents.seeding import (
    _purpose_key,
    generator,
    int_seed,
    seed_sequence,
    torch_generator,
)

__all__ = ["_purpose_key", "generator", "int_seed", "seed_sequence", "torch_generator"]
