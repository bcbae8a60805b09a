"""Reptile for RL (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms",
their Algorithm 2, the batched version), with policy-gradient inner steps.

One iteration, for the T tasks of the meta-batch: K adaptation steps per task, each on
episodes freshly sampled with the task's current adapted parameters (K sampling rounds, all
through the trainer's budget-charging ``collect``), each step one SGD step of size
``inner_lr`` on the vanilla policy-gradient loss -mean(log pi * A) (the shared
:func:`agents.core.adapt`, batched over tasks with stacked parameters). Then the
meta-parameters move toward the mean adapted parameters:

    theta <- theta + epsilon * (mean_i phi_i - theta)

Outer step: plain interpolation, as in the paper's Algorithm 2, with a fixed ``epsilon``
read from ``algo_cfg.learning_rate`` (no Adam on the Reptile direction, no annealing of
epsilon; the paper anneals epsilon linearly to 0 in its classification experiments and
mentions Adam as an option; the value and why: agents/hyperparams/reptile.yaml). There is
no optimiser state: the meta-parameters are the learner's whole state. With K = 1 the update
is a plain policy-gradient step of size epsilon x inner_lr on the tasks' mean loss (joint
training, as the paper notes); K >= 2 is what makes it meta-learning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.config import AgentConfig
from agents.core import (
    Collect,
    LearnerBase,
    adapt,
    loglik_loss,
    loglik_loss_of_logp,
    process,
)
from agents.policy import GaussianMLPPolicy, Params


class Reptile(LearnerBase):
    """Reptile with K policy-gradient inner steps per task and an interpolating outer step."""

    algo = "reptile"
    # The vanilla policy gradient -mean(log pi * A). Each step starts from the parameters that
    # sampled its episodes, where ProMP's likelihood-ratio surrogate has the same gradient.
    inner_loss = staticmethod(loglik_loss)
    inner_loss_of_logp = staticmethod(loglik_loss_of_logp)

    def __init__(self, cfg: AgentConfig, policy: GaussianMLPPolicy, params: Params):
        super().__init__(cfg, policy, params)
        self.inner_lr = cfg.algo_cfg.effective_inner_lr
        self.inner_steps = cfg.algo_cfg.inner_steps
        self.epsilon = cfg.algo_cfg.learning_rate  # the outer step size (agents/hyperparams/reptile.yaml)

    def adapt_rounds(self, collect: Collect, tasks: list[Any]) -> tuple[Params, list[dict[str, float]]]:
        """K rounds: sample with the current per-task parameters, take one inner step per task.
        Returns the adapted parameters phi_K (stacked [T, ...], detached) and each round's
        rollout statistics."""
        phi: Params = self.params
        stats = []
        for _ in range(self.inner_steps):
            batch = collect(tasks, phi)
            stats.append(batch.stats())
            phi = adapt(self.policy, phi, process(self.policy, phi, batch, self.cfg.advantage, self.dtype), self.inner_lr, self.inner_loss)
        return phi, stats

    def train_iteration(self, collect: Collect, tasks: list[Any], rng: np.random.Generator | None = None) -> dict[str, float]:
        phi, rounds = self.adapt_rounds(collect, tasks)
        with torch.no_grad():
            direction = {k: phi[k].mean(0) - v for k, v in self.params.items()}
            for k, v in self.params.items():
                v.add_(self.epsilon * direction[k])
        out = dict(rounds[0])  # rollout/*: the meta-parameters' own episodes, as for DRS
        if len(rounds) > 1:  # the last round was sampled after K - 1 adaptation steps
            out["train/adapted_return_mean"] = rounds[-1]["rollout/return_mean"]
            out["train/adaptation_gain"] = rounds[-1]["rollout/return_mean"] - rounds[0]["rollout/return_mean"]
        out["train/direction_norm"] = float(torch.sqrt(sum((d * d).sum() for d in direction.values())))
        out["train/std"] = float(self.params["log_std"].detach().exp().mean())
        return out
