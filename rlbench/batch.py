"""The typed result of one sampling round: whole episodes for a list of tasks, padded to the horizon."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Batch:
    """Episodes of ``T`` tasks x ``E`` episodes, padded to horizon ``H``.

    Shapes: obs [T, E, H, obs_dim]; actions [T, E, H, act_dim] (the policy's stored actions);
    rewards [T, E, H]; valid [T, E, H] (True for real transitions); lengths [T, E];
    terminated [T, E] (ended by the environment's termination rule, value 0 after);
    truncated [T, E] (cut by the horizon); last_obs [T, E, obs_dim] (observation after the
    final transition, for bootstrapping truncated episodes); success [T, E] (1 if success was
    reached at any step; NaN when the environment reports none).
    """

    tasks: list[Any]
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    valid: np.ndarray
    lengths: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    last_obs: np.ndarray
    success: np.ndarray
    env_steps: int

    @property
    def n_tasks(self) -> int:
        return self.obs.shape[0]

    @property
    def episodes_per_task(self) -> int:
        return self.obs.shape[1]

    @property
    def horizon(self) -> int:
        return self.obs.shape[2]

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode. Shape [T, E]."""
        return (self.rewards * self.valid).sum(-1)

    def task_returns(self) -> np.ndarray:
        """Mean undiscounted return over ALL episodes of each task. Shape [T]."""
        return self.episode_returns().mean(-1)

    def task_success(self) -> np.ndarray:
        """Success rate per task (NaN if not reported). Shape [T]."""
        return self.success.mean(-1)

    def stats(self) -> dict[str, float]:
        """Rollout summary with ``rollout/`` keys."""
        ret = self.episode_returns()
        out = {
            "rollout/return_mean": float(ret.mean()),
            "rollout/return_std": float(ret.std()),
            "rollout/episode_length": float(self.lengths.mean()),
            "rollout/terminated_frac": float(self.terminated.mean()),
            "rollout/env_steps": int(self.env_steps),
        }
        if not np.isnan(self.success).all():
            out["rollout/success_rate"] = float(np.nanmean(self.success))
        return out
