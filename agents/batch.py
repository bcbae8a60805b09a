"""The typed result of one sampling round: the transitions of T tasks x E slots, padded to H.

Layout (docs/protocol.md section 4). Each of the ``E`` slots of a task is one row of at most
``H`` transitions. With the ``episodes`` sampling unit a row holds exactly one whole episode.
With the ``steps`` unit a row is a slot's stream over the round: the slot is reset as soon as
its episode ends, so a row may hold several consecutive episodes; every episode that completed
inside the round is used, and the slot's unfinished last episode (its *tail*) is masked out
(``valid`` False), unless tails are kept as truncated segments.

Episode structure inside a row is given by ``ep_time`` (step index within its episode) and
``ep_end`` (True on the last used transition of each episode); ``ep_term`` marks the
``ep_end`` positions where the episode ended by the environment's termination rule (value 0
after). Only a row's final used episode can end without termination (cut by the horizon, or
a kept tail); ``last_obs`` is the observation after that row's final used transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Batch:
    """Transitions of ``T`` tasks x ``E`` slots, padded to horizon ``H``.

    Shapes: obs [T, E, H, obs_dim]; actions [T, E, H, act_dim] (the policy's stored actions);
    rewards [T, E, H]; valid [T, E, H] (True for transitions used for learning); ep_time,
    ep_end, ep_term [T, E, H] (see the module docstring); ep_success [T, E, H] (at ``ep_end``
    positions: 1 if the episode reached success at any step, 0 if not, NaN when the environment
    reports none; NaN elsewhere); lengths [T, E] (used transitions per row); terminated [T, E]
    (the row's final used episode ended by termination); truncated [T, E] (it was cut: horizon
    or kept tail); last_obs [T, E, obs_dim]; env_steps (steps taken and charged, including
    dropped tails); unstable (episodes ended because the simulation state became non-finite).
    """

    tasks: list[Any]
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    valid: np.ndarray
    ep_time: np.ndarray
    ep_end: np.ndarray
    ep_term: np.ndarray
    ep_success: np.ndarray
    lengths: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    last_obs: np.ndarray
    env_steps: int
    unstable: int = 0

    @property
    def n_tasks(self) -> int:
        return self.obs.shape[0]

    @property
    def slots_per_task(self) -> int:
        return self.obs.shape[1]

    @property
    def horizon(self) -> int:
        return self.obs.shape[2]

    def task(self, i: int) -> Batch:
        """Task ``i`` alone, as a one-task batch of fresh copies (``env_steps`` is the task's share)."""
        def one(x: np.ndarray) -> np.ndarray:
            return np.array(x[i : i + 1])

        return Batch(
            tasks=[self.tasks[i]], obs=one(self.obs), actions=one(self.actions), rewards=one(self.rewards),
            valid=one(self.valid), ep_time=one(self.ep_time), ep_end=one(self.ep_end), ep_term=one(self.ep_term),
            ep_success=one(self.ep_success), lengths=one(self.lengths), terminated=one(self.terminated),
            truncated=one(self.truncated), last_obs=one(self.last_obs), env_steps=self.env_steps // self.n_tasks,
        )

    def task_range(self, rows: slice) -> Batch:
        """The tasks ``rows`` (a contiguous range) as a batch of views (``env_steps`` their share)."""
        n = len(range(*rows.indices(self.n_tasks)))
        return Batch(
            tasks=self.tasks[rows], obs=self.obs[rows], actions=self.actions[rows], rewards=self.rewards[rows],
            valid=self.valid[rows], ep_time=self.ep_time[rows], ep_end=self.ep_end[rows], ep_term=self.ep_term[rows],
            ep_success=self.ep_success[rows], lengths=self.lengths[rows], terminated=self.terminated[rows],
            truncated=self.truncated[rows], last_obs=self.last_obs[rows], env_steps=self.env_steps * n // max(1, self.n_tasks),
        )

    @property
    def used_steps(self) -> int:
        """Transitions used for learning (``env_steps`` minus dropped tails)."""
        return int(self.valid.sum())

    def episode_counts(self) -> np.ndarray:
        """Used episodes per task. Shape [T]."""
        return self.ep_end.sum(axis=(1, 2))

    def _episode_return_at_end(self) -> np.ndarray:
        """[T, E, H]: at each ``ep_end`` position, the undiscounted return of that episode."""
        r = np.where(self.valid, self.rewards, 0.0)
        cum = np.cumsum(r, axis=-1)
        # Cumulative reward at the end of the previous episode of the row (0 for the first).
        at_end = np.where(self.ep_end, cum, 0.0)
        prev = np.maximum.accumulate(np.where(self.ep_end, np.arange(self.horizon), -1), axis=-1)
        prev_end = np.concatenate([np.full(prev.shape[:-1] + (1,), -1), prev[..., :-1]], axis=-1)
        base = np.where(prev_end >= 0, np.take_along_axis(cum, np.maximum(prev_end, 0), axis=-1), 0.0)
        return np.where(self.ep_end, at_end - base, 0.0)

    def task_returns(self) -> np.ndarray:
        """Mean undiscounted return over every used episode of each task (the training log). [T]."""
        ret = self._episode_return_at_end().sum(axis=(1, 2))
        return ret / np.maximum(self.episode_counts(), 1)

    def first_episode_returns(self) -> np.ndarray:
        """Return of each slot's FIRST episode. Shape [T, E].

        Every slot's first episode starts with the round and always completes inside it (it
        ends by termination or at the horizon), so these are E unbiased whole episodes per task
        under either unit; the mean over all completed episodes over-weights short episodes."""
        first = self.ep_end & (np.cumsum(self.ep_end, axis=-1) == 1)
        return np.where(first, self._episode_return_at_end(), 0.0).sum(-1)

    def first_episode_success(self) -> np.ndarray:
        """Success (0/1, NaN if not reported) of each slot's first episode. Shape [T, E]."""
        first = self.ep_end & (np.cumsum(self.ep_end, axis=-1) == 1)
        return np.where(first, self.ep_success, 0.0).sum(-1)  # NaN propagates where not reported

    def stats(self) -> dict[str, float]:
        """Rollout summary with ``rollout/`` keys (over every used episode)."""
        ends = self.ep_end
        n_ep = int(ends.sum())
        ret = self._episode_return_at_end()[ends]
        lengths = (self.ep_time + 1)[ends]
        out = {
            "rollout/return_mean": float(ret.mean()) if n_ep else float("nan"),
            "rollout/return_std": float(ret.std()) if n_ep else float("nan"),
            # Each slot's first episode: E unbiased whole episodes per task under either unit
            # (the mean over all completed episodes over-weights short ones).
            "rollout/return_first_mean": float(self.first_episode_returns().mean()),
            "rollout/episode_length": float(lengths.mean()) if n_ep else float("nan"),
            "rollout/terminated_frac": float(self.ep_term[ends].mean()) if n_ep else float("nan"),
            "rollout/episodes": n_ep,
            "rollout/env_steps": int(self.env_steps),
        }
        succ = self.ep_success[ends]
        if n_ep and not np.isnan(succ).all():
            out["rollout/success_rate"] = float(np.nanmean(succ))
        if self.unstable:
            out["rollout/unstable_episodes"] = int(self.unstable)
        return out
