"""Domain randomized search: plain PPO or TRPO on one batch pooled over the sampled tasks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents import metagrad
from agents.advantages import TensorBatch
from agents.config import AgentConfig
from agents.core import (
    Collect,
    LearnerBase,
    fvp_of_kl,
    ppo_clip_objective,
    process,
    trpo_step,
)
from agents.policy import GaussianMLPPolicy, Params


class DRSBase(LearnerBase):
    """The DRS agents: one pooled batch per iteration, sampled with the shared parameters."""

    def _collect_processed(self, collect: Collect, tasks: list[Any]) -> tuple[TensorBatch, dict[str, float]]:
        batch = collect(tasks, self.params)
        tb = process(self.policy, self.params, batch, self.cfg.advantage, self.dtype)
        return tb, batch.stats()


class DRSPPO(DRSBase):
    """DRS+PPO: clipped surrogate (clip 0.3) on the pooled batch, Adam. By default full-batch
    for ``num_ppo_steps`` steps (the protocol); with ``minibatches > 1``, ``num_ppo_steps``
    epochs over that many shuffled minibatches (for comparison with other PPO codes)."""

    algo = "drs-ppo"

    def __init__(self, cfg: AgentConfig, policy: GaussianMLPPolicy, params: Params):
        super().__init__(cfg, policy, params)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.algo_cfg.learning_rate)

    def loss(self, params: Params, obs, actions, adv, logp_old, mask) -> torch.Tensor:
        ratio = torch.exp(self.policy.log_prob(params, obs, actions) - logp_old)
        obj = ppo_clip_objective(ratio, adv, self.cfg.algo_cfg.clip)
        return -(obj * mask).sum() / mask.sum().clamp_min(1)

    def train_iteration(self, collect: Collect, tasks: list[Any], rng: np.random.Generator | None = None) -> dict[str, float]:
        a = self.cfg.algo_cfg
        tb, stats = self._collect_processed(collect, tasks)
        # Pool every real transition of every task into one flat batch.
        keep = tb.mask.reshape(-1) > 0
        obs = tb.obs.reshape(-1, tb.obs.shape[-1])[keep]
        act = tb.actions.reshape(-1, tb.actions.shape[-1])[keep]
        adv, logp_old = tb.advantages.reshape(-1)[keep], tb.logp_old.reshape(-1)[keep]
        ones = torch.ones_like(adv)
        n = obs.shape[0]
        losses = []
        shuffle = rng if rng is not None else np.random.default_rng(0)  # one stream across epochs
        for _ in range(a.num_ppo_steps):
            if a.minibatches == 1:
                chunks = [torch.arange(n)]
            else:
                perm = torch.as_tensor(shuffle.permutation(n))
                chunks = list(torch.tensor_split(perm, a.minibatches))
            for idx in chunks:
                self.optimizer.zero_grad()
                loss = self.loss(self.params, obs[idx], act[idx], adv[idx], logp_old[idx], ones[idx])
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
        with torch.no_grad():  # sample estimate of KL(old || new) on the batch
            kl = float((logp_old - self.policy.log_prob(self.params, obs, act)).mean())
        return {**stats, "train/loss": losses[-1], "train/approx_kl": kl, "train/std": float(self.params["log_std"].detach().exp().mean())}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])


class DRSTRPO(DRSBase):
    """DRS+TRPO: surrogate -mean(ratio * A) on the pooled batch with mean KL(old || new) <= max_kl."""

    algo = "drs-trpo"

    def train_iteration(self, collect: Collect, tasks: list[Any], rng: np.random.Generator | None = None) -> dict[str, float]:
        a = self.cfg.algo_cfg
        tb, stats = self._collect_processed(collect, tasks)
        old = {k: v.detach().clone() for k, v in self.params.items()}

        def loss_fn(p: Params) -> torch.Tensor:
            ratio = torch.exp(self.policy.log_prob(p, tb.obs, tb.actions) - tb.logp_old)
            return -tb.pooled_mean(ratio * tb.advantages)

        def kl_fn(p: Params) -> torch.Tensor:
            return tb.pooled_mean(self.policy.kl(old, p, tb.obs))

        g = metagrad.grad(loss_fn, old)
        res = trpo_step(old, loss_fn, kl_fn, g, fvp_of_kl(kl_fn, old), a, a.max_kl)
        with torch.no_grad():
            for k, v in res.params.items():
                self.params[k].copy_(v)
        return {
            **stats, "train/loss": res.loss_after, "train/kl": res.kl, "train/accepted": float(res.accepted),
            "train/backtracks": float(res.backtracks), "train/std": float(self.params["log_std"].detach().exp().mean()),
        }
