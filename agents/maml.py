"""The MAML family: one core (sampling rounds, inner chain, meta-gradient estimator) composed
with an outer learner: ProMP (PPO-clip + KL penalty, Adam) and TRPO-MAML (TRPO step with
Fisher-vector products taken through the inner steps). docs/protocol.md section 4.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents import metagrad
from agents.advantages import TensorBatch
from agents.core import Collect, LearnerBase, as_stacked, inner_loss_fn, ppo_clip_objective, process, trpo_step
from agents.policy import GaussianMLPPolicy, Params
from rlbench.settings import RunConfig


class MAMLBase(LearnerBase):
    """K inner steps per task, each on freshly sampled episodes; both pre- and post-adaptation
    sampling rounds go through the shared sampler and are charged to the budget."""

    def __init__(self, cfg: RunConfig, policy: GaussianMLPPolicy, params: Params):
        super().__init__(cfg, policy, params)
        self.inner_lr = cfg.algo_cfg.effective_inner_lr
        self.estimator = cfg.algo_cfg.meta_gradient
        self.delta = cfg.algo_cfg.hf_delta

    def _process(self, batch, params: Params) -> TensorBatch:
        return process(self.policy, params, batch, self.cfg.advantage, self.dtype)

    def sample_rounds(self, collect: Collect, tasks: list[Any]) -> tuple[list[TensorBatch], TensorBatch, dict[str, float]]:
        """Pre-adaptation and K-1 intermediate rounds (the inner batches), then the
        post-adaptation round sampled with the adapted per-task parameters."""
        K = self.cfg.algo_cfg.inner_steps
        theta = as_stacked(self.params, len(tasks))
        pre = collect(tasks, self.params)
        inner = [self._process(pre, self.params)]
        stats = {f"pre/{k.split('/', 1)[1]}": v for k, v in pre.stats().items()}
        phi = theta
        for k in range(K):
            g = metagrad.grad(inner_loss_fn(self.algo, self.policy, inner[-1]), phi)
            phi = {n: phi[n] - self.inner_lr * g[n] for n in phi}
            if k < K - 1:
                inner.append(self._process(collect(tasks, phi), phi))
        post_batch = collect(tasks, phi)
        post = self._process(post_batch, phi)
        stats.update(post_batch.stats())
        stats["train/adaptation_gain"] = stats["rollout/return_mean"] - stats["pre/return_mean"]
        return inner, post, stats

    def inner_losses(self, inner: list[TensorBatch]) -> list[metagrad.Loss]:
        return [inner_loss_fn(self.algo, self.policy, tb) for tb in inner]


def _sum_tasks(g: Params) -> Params:
    """Adjoint of expanding shared params to [T, ...]: sum the per-task gradients."""
    return {k: v.sum(0) for k, v in g.items()}


class ProMP(MAMLBase):
    """ProMP: outer objective = mean over tasks of the clipped PPO surrogate (clip 0.3) on the
    post-adaptation episodes + eta * mean KL(pi_old || pi_theta) on the pre-adaptation
    episodes; ``num_ppo_steps`` full-batch Adam steps; eta fixed or adapted toward kl_target."""

    algo = "promp"

    def __init__(self, cfg: RunConfig, policy: GaussianMLPPolicy, params: Params):
        super().__init__(cfg, policy, params)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.algo_cfg.learning_rate)
        self.eta = cfg.algo_cfg.eta

    def outer_loss(self, post: TensorBatch) -> metagrad.Loss:
        clip = self.cfg.algo_cfg.clip

        def loss(phi: Params) -> torch.Tensor:
            ratio = torch.exp(self.policy.log_prob(phi, post.obs, post.actions) - post.logp_old)
            return -post.task_mean(ppo_clip_objective(ratio, post.advantages, clip)).mean()

        return loss

    def update_eta(self, kl: float) -> None:
        """Halve eta if KL < target / 1.5, double it if KL > 1.5 * target (docs/protocol.md 4)."""
        a = self.cfg.algo_cfg
        if not a.adaptive_eta:
            return
        if kl < a.kl_target / 1.5:
            self.eta /= 2.0
        elif kl > a.kl_target * 1.5:
            self.eta *= 2.0

    def train_iteration(self, collect: Collect, tasks: list[Any], rng: np.random.Generator | None = None) -> dict[str, float]:
        inner, post, stats = self.sample_rounds(collect, tasks)
        losses = self.inner_losses(inner)
        outer = self.outer_loss(post)
        pre = inner[0]
        old = {k: v.detach().clone() for k, v in self.params.items()}
        T = len(tasks)
        for _ in range(self.cfg.algo_cfg.num_ppo_steps):
            theta = as_stacked(self.params, T)
            g_meta, _ = metagrad.meta_gradient(theta, losses, self.inner_lr, outer, self.estimator, self.delta)
            self.optimizer.zero_grad()
            kl_term = self.eta * pre.task_mean(self.policy.kl(old, self.params, pre.obs)).mean()
            kl_term.backward()
            with torch.no_grad():
                for k, g in _sum_tasks(g_meta).items():
                    self.params[k].grad = self.params[k].grad + g if self.params[k].grad is not None else g.clone()
            self.optimizer.step()
        with torch.no_grad():
            kl = float(pre.task_mean(self.policy.kl(old, self.params, pre.obs)).mean())
            outer_after = float(outer(metagrad.inner_chain(as_stacked(self.params, T), losses, self.inner_lr)[-1]))
        eta_used = self.eta
        self.update_eta(kl)
        return {**stats, "train/outer_loss": outer_after, "train/kl_pre": kl, "train/eta": eta_used,
                "train/std": float(self.params["log_std"].detach().exp().mean())}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict(), "eta": self.eta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.eta = float(state["eta"])


class TRPOMAML(MAMLBase):
    """TRPO-MAML: TRPO step on the post-adaptation surrogate -mean(ratio * A) with the mean KL
    between old and new *adapted* policies constrained; Hessian-vector products of that KL
    are taken through the inner steps (J^T F J, with the estimator's J)."""

    algo = "trpo-maml"

    def train_iteration(self, collect: Collect, tasks: list[Any], rng: np.random.Generator | None = None) -> dict[str, float]:
        a = self.cfg.algo_cfg
        inner, post, stats = self.sample_rounds(collect, tasks)
        losses = self.inner_losses(inner)
        T = len(tasks)
        old = {k: v.detach().clone() for k, v in self.params.items()}
        phis = metagrad.inner_chain(as_stacked(old, T), losses, self.inner_lr)
        phi_old = phis[-1]

        def surrogate(phi: Params) -> torch.Tensor:
            ratio = torch.exp(self.policy.log_prob(phi, post.obs, post.actions) - post.logp_old)
            return -post.task_mean(ratio * post.advantages).mean()

        def kl_phi(phi: Params) -> torch.Tensor:
            return post.task_mean(self.policy.kl(phi_old, phi, post.obs)).mean()

        def adapted(theta: Params) -> Params:
            return metagrad.inner_chain(as_stacked(theta, T), losses, self.inner_lr)[-1]

        # Hessian-vector operators at the fixed points of this iteration, reused by every
        # conjugate-gradient step (J^T F J v needs 2K + 1 products per step).
        ops = metagrad.chain_operators(phis, losses, self.estimator, self.delta)
        kl_op = metagrad.hvp_operator(kl_phi, phi_old, "second-order", 0.0)
        g = _sum_tasks(metagrad.vjp(phis, losses, self.inner_lr, metagrad.grad(surrogate, phi_old), self.estimator, self.delta, ops))

        def fvp(v: Params) -> Params:
            u = {k: x.unsqueeze(0).expand(T, *x.shape) for k, x in v.items()}
            ju = metagrad.jvp(phis, losses, self.inner_lr, u, self.estimator, self.delta, ops)
            return _sum_tasks(metagrad.vjp(phis, losses, self.inner_lr, kl_op(ju), self.estimator, self.delta, ops))

        res = trpo_step(old, lambda th: surrogate(adapted(th)), lambda th: kl_phi(adapted(th)), g, fvp, a, a.max_kl)
        with torch.no_grad():
            for k, v in res.params.items():
                self.params[k].copy_(v)
        return {**stats, "train/loss": res.loss_after, "train/kl": res.kl, "train/accepted": float(res.accepted),
                "train/backtracks": float(res.backtracks), "train/std": float(self.params["log_std"].detach().exp().mean())}
