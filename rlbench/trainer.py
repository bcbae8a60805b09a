"""The training loop shared by every algorithm: tasks, sampling, budget, iterations.

One Trainer drives one run. It owns the step budget and is the only route from an agent to
the sampler, so DRS and MAML pay for every environment step in the same way.
"""

from __future__ import annotations

from typing import Any

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

    def collect(self, tasks: list[Any], params: Params) -> Batch:
        """Sample through the shared sampler and charge the budget for every real step."""
        rng = seeding.generator(self.cfg.seed, "sample", self.iteration, self._round)
        self._round += 1
        batch = self.sampler.collect(tasks, self.cfg.sampler.episodes_per_task, self.agent.policy.actor(params), rng)
        self.budget.charge(batch.env_steps)
        return batch

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
        metrics = self.agent.train_iteration(self.collect, tasks, seeding.generator(self.cfg.seed, "minibatch", self.iteration))
        self.iteration += 1
        metrics["time/iteration"] = self.iteration
        metrics["budget/env_steps"] = self.budget.used
        return metrics
