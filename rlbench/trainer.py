"""The training loop shared by every algorithm: tasks, sampling, budget, iterations.

One Trainer drives one run. It owns the step budget and is the only route from an agent to
the sampler, so DRS and MAML pay for every environment step in the same way.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import envs
from agents.policy import Params
from agents.registry import make_agent
from rlbench import seeding
from rlbench.batch import Batch
from rlbench.budget import BudgetExhausted, StepBudget
from rlbench.sampler import Sampler
from rlbench.settings import RunConfig


class Trainer:
    def __init__(self, cfg: RunConfig, sampler: Sampler):
        self.cfg = cfg
        self.sampler = sampler
        self.tasks = envs.get_task_distribution(cfg.env_id)
        self.agent = make_agent(cfg, sampler.obs_dim, sampler.act_dim)
        self.budget = StepBudget(cfg.budget)
        self.iteration = 0
        self._round = 0
        self._rounds: list[Batch] = []  # this iteration's rounds (for the sampling metrics)
        self.sample_seconds = 0.0  # wall time spent sampling, over the trainer's life (benchmarks)

    def collect(self, tasks: list[Any], params: Params) -> Batch:
        """Sample through the shared sampler and charge the budget for every real step."""
        rng = seeding.generator(self.cfg.seed, "sample", self.iteration, self._round)
        self._round += 1
        s = self.cfg.sampler
        t0 = time.perf_counter()
        batch = self.sampler.collect(tasks, s.episodes_per_task, self.agent.policy.actor(params), rng,
                                     unit=s.unit, keep_tails=s.keep_tails)
        self.sample_seconds += time.perf_counter() - t0
        self.budget.charge(batch.env_steps)
        self._rounds.append(batch)
        return batch

    def sampling_metrics(self) -> dict[str, float]:
        """Steps charged and used for learning over this iteration's rounds, and used episodes
        per task per round (min / mean / max): what the sampling unit changes."""
        eps = np.concatenate([b.episode_counts() for b in self._rounds])
        return {
            "sampling/rounds": len(self._rounds),
            "sampling/steps_charged": int(sum(b.env_steps for b in self._rounds)),
            "sampling/steps_used": int(sum(b.used_steps for b in self._rounds)),
            "sampling/episodes_per_task_min": int(eps.min()),
            "sampling/episodes_per_task_mean": float(eps.mean()),
            "sampling/episodes_per_task_max": int(eps.max()),
            "sampling/unstable_episodes": int(sum(b.unstable for b in self._rounds)),
        }

    def can_iterate(self) -> bool:
        """An iteration starts only if its worst-case cost fits in the remaining budget."""
        return self.budget.can_afford(self.cfg.iteration_steps)

    def iterate(self) -> dict[str, float]:
        """One training iteration; refuses (before sampling anything) if it cannot be paid in full."""
        if not self.can_iterate():
            raise BudgetExhausted(
                f"an iteration costs up to {self.cfg.iteration_steps} steps; only {self.budget.remaining} of {self.budget.total} left"
            )
        tasks = self.tasks.sample(self.cfg.sampler.meta_batch_size, seeding.generator(self.cfg.seed, "train-tasks", self.iteration))
        self._round = 0
        self._rounds = []
        metrics = self.agent.train_iteration(self.collect, tasks, seeding.generator(self.cfg.seed, "minibatch", self.iteration))
        metrics.update(self.sampling_metrics())
        self._rounds = []
        self.iteration += 1
        metrics["time/iteration"] = self.iteration
        metrics["budget/env_steps"] = self.budget.used
        return metrics
