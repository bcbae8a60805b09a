"""The environment-step budget: a hard cap shared by every agent of a comparison.

Steps are counted where the simulator steps (the sampler reports every real transition of
every single environment). An iteration declares its worst-case cost before it starts; if
the remaining budget cannot pay it in full, it is not started (docs/protocol.md section 5).
"""

from __future__ import annotations

from dataclasses import dataclass


class BudgetExhausted(RuntimeError):
    """Raised when a charge would exceed the cap (a bug: callers check ``can_afford`` first)."""


@dataclass
class StepBudget:
    total: int
    used: int = 0

    def __post_init__(self) -> None:
        if self.total < 0:
            raise ValueError(f"budget must be non-negative, got {self.total}")

    @property
    def remaining(self) -> int:
        return self.total - self.used

    def can_afford(self, steps: int) -> bool:
        return steps <= self.remaining

    def charge(self, steps: int) -> None:
        if steps > self.remaining:
            raise BudgetExhausted(f"charging {steps} steps with only {self.remaining} left of {self.total}")
        self.used += int(steps)
