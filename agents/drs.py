"""Domain randomized search: plain PPO or TRPO on one batch pooled over the sampled tasks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents import closed_form, metagrad
from agents.advantages import TensorBatch
from agents.config import AgentConfig
from agents.core import (
    Collect,
    LearnerBase,
    fvp_of_kl,
    ppo_clip_active,
    ppo_clip_objective,
    process,
    trpo_step,
)
from agents.maml import TRPOProblem, fvp_tasks, map_groups, memoised_problem, subsampled_fvp, sum_all, sum_tasks, task_chunks
from agents.policy import GaussianMLPPolicy, Params, expand_params


class DRSBase(LearnerBase):
    """The DRS agents: one pooled batch per iteration, sampled with the shared parameters."""

    def _collect_processed(self, collect: Collect, tasks: list[Any]) -> tuple[TensorBatch, dict[str, float]]:
        batch = collect(tasks, self.params)
        tb = process(self.policy, self.params, batch, self.cfg.advantage, self.dtype)
        return tb, batch.stats()


class DRSPPO(DRSBase):
    """DRS+PPO: clipped surrogate (clip 0.3) on the pooled batch, Adam. By default full-batch
    for ``num_ppo_steps`` steps (the protocol); with ``minibatches > 1``, ``num_ppo_steps``
    epochs over that many shuffled minibatches (for comparison with other PPO codes).

    ``grad_impl``: how a full-batch step's gradient is computed. ``"closed-form"`` (default):
    by task groups on the learner's threads (:func:`agents.maml.map_groups`), each group's
    forward pass by :class:`agents.closed_form.MLPAt`'s fast path and the clipped surrogate's
    gradient in closed form (:class:`agents.closed_form.LossAt`, weighted by the clip's active
    set, :func:`agents.core.ppo_clip_active`). ``"autograd"``: autograd on the pooled batch
    (the oracle of tests/test_drs_ppo_closed_form.py, and the minibatch path). The two give the
    same update up to float rounding."""

    algo = "drs-ppo"
    grad_impl = "closed-form"

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
        if a.minibatches == 1 and self.grad_impl == "closed-form":
            return {**stats, **self._closed_form_steps(tb)}
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

    def _closed_form_steps(self, tb: TensorBatch) -> dict[str, float]:
        """``num_ppo_steps`` full-batch Adam steps with the gradient in closed form by task
        groups (``grad_impl="closed-form"``); the same logged values as the autograd path."""
        clip = self.cfg.algo_cfg.clip
        weight = tb.mask / tb.mask.sum().clamp_min(1)  # pooled-mean weight of every transition
        chunks = task_chunks(tb.n_tasks, tb.obs.shape[1], max(self.policy.hidden_sizes, default=tb.obs.shape[-1]))

        def group(c: slice, theta: Params, gradient: bool) -> tuple[Params | None, float, float]:
            """(gradient of the pooled loss's part on the tasks ``c``, that part, and its part
            of the sample KL(old || theta)) at shared ``theta``."""
            th = expand_params(theta, c.stop - c.start)
            net = closed_form.MLPAt(self.policy, th, tb.obs[c], fast=True)
            with torch.no_grad():
                logp = self.policy.log_prob_of_mean(th, net.mu, tb.actions[c])
                ratio = torch.exp(logp - tb.logp_old[c])
                adv, w = tb.advantages[c], weight[c]
                loss = float(-(ppo_clip_objective(ratio, adv, clip) * w).sum())
                kl = float(((tb.logp_old[c] - logp) * w).sum())
            if not gradient:
                return None, loss, kl
            point = closed_form.LossAt(self.policy, th, tb.obs[c], tb.actions[c], -w * adv * ppo_clip_active(ratio, adv, clip),
                                       tb.logp_old[c], net=net, second_order=False)
            return sum_tasks(point.grad), loss, kl

        loss = 0.0
        for _ in range(self.cfg.algo_cfg.num_ppo_steps):
            theta = {k: v.detach() for k, v in self.params.items()}
            parts = map_groups(lambda c, theta=theta: group(c, theta, True), chunks)
            loss = sum(p[1] for p in parts)
            self.optimizer.zero_grad()
            for k, g in sum_all([p[0] for p in parts]).items():
                self.params[k].grad = g
            self.optimizer.step()
        new = {k: v.detach() for k, v in self.params.items()}
        kl = sum(p[2] for p in map_groups(lambda c: group(c, new, False), chunks))  # sample estimate of KL(old || new)
        return {"train/loss": loss, "train/approx_kl": kl, "train/std": float(self.params["log_std"].detach().exp().mean())}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])


class DRSTRPO(DRSBase):
    """DRS+TRPO: surrogate -mean(ratio * A) on the pooled batch with mean KL(old || new) <= max_kl.

    ``fvp_impl``: how the update is computed. ``"closed-form"`` (default): by task groups on
    the learner's threads (:func:`agents.maml.map_groups`), with the old policy's forward pass
    on each group kept for the whole update: the surrogate's gradient in closed form
    (:class:`agents.closed_form.LossAt`), the conjugate gradient's Fisher-vector products as
    the Hessian of the pooled mean KL at the old policy written out for the Gaussian tanh-MLP
    (:func:`agents.closed_form.kl_fisher_vp`: the KL's gradient vanishes there, so the Hessian
    is its Gauss-Newton form, exactly), the step size's ``s^T H s`` from the conjugate
    gradient's own products, and one forward pass per line-search candidate for both its loss
    and its KL. ``"autograd"``: the same update by autograd on the whole pooled batch, double
    backpropagation through the pooled KL at every product (:func:`agents.core.fvp_of_kl`; the
    oracle of tests/test_drs_trpo_fvp.py). Both give the same numbers up to float rounding."""

    algo = "drs-trpo"
    fvp_impl = "closed-form"

    def train_iteration(self, collect: Collect, tasks: list[Any], rng: np.random.Generator | None = None) -> dict[str, float]:
        a = self.cfg.algo_cfg
        tb, stats = self._collect_processed(collect, tasks)
        old = {k: v.detach().clone() for k, v in self.params.items()}
        if self.fvp_impl == "closed-form":
            res = trpo_step(*self.closed_form_problem(tb, old), a, a.max_kl, product_from_cg=True)
        else:
            def loss_fn(p: Params) -> torch.Tensor:
                ratio = torch.exp(self.policy.log_prob(p, tb.obs, tb.actions) - tb.logp_old)
                return -tb.pooled_mean(ratio * tb.advantages)

            def kl_fn(p: Params) -> torch.Tensor:
                return tb.pooled_mean(self.policy.kl(old, p, tb.obs))

            sub = tb.tasks(slice(0, fvp_tasks(tb.n_tasks, a.fvp_subsample)))  # all tasks by default

            def kl_fvp(p: Params) -> torch.Tensor:
                return sub.pooled_mean(self.policy.kl(old, p, sub.obs))

            res = trpo_step(old, loss_fn, kl_fn, metagrad.grad(loss_fn, old), fvp_of_kl(kl_fn if sub.n_tasks == tb.n_tasks else kl_fvp, old),
                            a, a.max_kl)
        with torch.no_grad():
            for k, v in res.params.items():
                self.params[k].copy_(v)
        return {
            **stats, "train/loss": res.loss_after, "train/kl": res.kl, "train/accepted": float(res.accepted),
            "train/backtracks": float(res.backtracks), "train/std": float(self.params["log_std"].detach().exp().mean()),
        }

    def closed_form_problem(self, tb: TensorBatch, old: Params) -> TRPOProblem:
        """The TRPO problem (old, loss, KL, gradient, Fisher-vector product) of the pooled batch,
        by task groups (:func:`agents.maml.task_chunks`), each holding the old policy's forward
        pass on its transitions with the shared parameters expanded over its tasks. The
        surrogate and the KL are pooled means, so every group contributes its sums weighted by
        ``mask / (all real transitions)``; the parameters' gradients and products are the sums
        over all tasks of the per-task ones. With ``fvp_subsample`` < 1 the products are those of
        the pooled mean KL over the first :func:`agents.maml.fvp_tasks` tasks."""
        weight = tb.mask / tb.mask.sum().clamp_min(1)  # pooled-mean weight of every transition
        k = fvp_tasks(tb.n_tasks, self.cfg.algo_cfg.fvp_subsample)
        chunks = task_chunks(tb.n_tasks, tb.obs.shape[1], max(self.policy.hidden_sizes, default=tb.obs.shape[-1]), k)

        def build(c: slice) -> dict[str, Any]:
            n = c.stop - c.start
            net = closed_form.MLPAt(self.policy, expand_params(old, n), tb.obs[c])
            surrogate = closed_form.LossAt(self.policy, expand_params(old, n), tb.obs[c], tb.actions[c], -weight[c] * tb.advantages[c],
                                           tb.logp_old[c], net=net, second_order=False)
            return {"c": c, "n": n, "net": net, "g": sum_tasks(surrogate.grad)}

        groups = map_groups(build, chunks)

        def product(grp: dict, v: Params) -> Params:
            return sum_tasks(closed_form.kl_fisher_vp(grp["net"], weight[grp["c"]], expand_params(v, grp["n"])))

        fvp = subsampled_fvp(groups, tb.n_tasks, k, product, float(tb.mask.sum().clamp_min(1) / tb.mask[:k].sum().clamp_min(1)))

        def one(grp: dict, theta: Params, at_old: bool) -> tuple[torch.Tensor, torch.Tensor]:
            """(surrogate, KL) sums of one group at shared ``theta`` (one forward pass for both)."""
            c, net, w = grp["c"], grp["net"], weight[grp["c"]]
            th, th_old = expand_params(theta, grp["n"]), expand_params(old, grp["n"])
            with torch.no_grad():
                mu = net.mu if at_old else self.policy.mean(th, tb.obs[c])
                ratio = torch.exp(self.policy.log_prob_of_mean(th, mu, tb.actions[c]) - tb.logp_old[c])
                return -(ratio * tb.advantages[c] * w).sum(), (self.policy.kl_of_means(th_old, net.mu, th, mu) * w).sum()

        return memoised_problem(old, groups, one, sum_all([grp["g"] for grp in groups]), fvp)
