"""rlbench: an equal-budget benchmark harness for meta-RL (DRS vs MAML)."""

__version__ = "0.1.0"
