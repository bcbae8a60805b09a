"""What every agent shares: batch processing, the inner losses, the pure ``adapt`` operation,
and the PPO / TRPO outer learners written once against parameter dicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from agents import metagrad
from agents.advantages import (
    AdvantageSettings,
    TensorBatch,
    compute_advantages,
    to_tensors,
)
from agents.batch import Batch
from agents.config import AdvantageConfig, AgentConfig, AlgoConfig
from agents.policy import GaussianMLPPolicy, Params, expand_params, flat, unflat

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def advantage_settings(cfg: AdvantageConfig) -> AdvantageSettings:
    return AdvantageSettings(cfg.gamma, cfg.gae_lambda, cfg.baseline_reg, cfg.normalize, cfg.bootstrap_truncated)


def process(policy: GaussianMLPPolicy, params: Params, batch: Batch, adv: AdvantageConfig, dtype: torch.dtype) -> TensorBatch:
    """Advantages + tensors + log-probabilities under the parameters that sampled the batch.

    ``params`` are shared or stacked per task (as used by the sampler's actor)."""
    tb = to_tensors(batch, compute_advantages(batch, advantage_settings(adv)), dtype)
    with torch.no_grad():
        tb.logp_old = policy.log_prob({k: v.detach() for k, v in params.items()}, tb.obs, tb.actions)
    return tb


# -- inner losses (docs/protocol.md section 4) --------------------------------------------------------


def lr_surrogate(policy: GaussianMLPPolicy, params: Params, tb: TensorBatch) -> torch.Tensor:
    """ProMP's inner loss per task: -mean(pi_theta / pi_old * A). Its gradient at theta_old is
    the policy gradient; its Hessian is ProMP's low-variance curvature estimate. Shape [T]."""
    return lr_surrogate_of_logp(policy.log_prob(params, tb.obs, tb.actions), tb)


def lr_surrogate_of_logp(logp: torch.Tensor, tb: TensorBatch) -> torch.Tensor:
    ratio = torch.exp(logp - tb.logp_old)
    return -tb.task_mean(ratio * tb.advantages)


def loglik_loss(policy: GaussianMLPPolicy, params: Params, tb: TensorBatch) -> torch.Tensor:
    """TRPO-MAML's inner loss per task: -mean(log pi * A). Shape [T]."""
    return loglik_loss_of_logp(policy.log_prob(params, tb.obs, tb.actions), tb)


def loglik_loss_of_logp(logp: torch.Tensor, tb: TensorBatch) -> torch.Tensor:
    return -tb.task_mean(logp * tb.advantages)


#: A per-task inner loss, (policy, params, batch) -> shape [T]; each meta-learner's class names
#: its own (``inner_loss``), and its registry entry says which one adapts each algorithm at
#: meta-test time.
InnerLoss = Callable[[GaussianMLPPolicy, Params, TensorBatch], torch.Tensor]


def resolve_inner_loss(kind: str | InnerLoss) -> InnerLoss:
    """A loss function, or the registry key of the algorithm whose inner loss it is."""
    if callable(kind):
        return kind
    from agents import registry  # the registry imports this module

    return registry.inner_loss(kind)


def inner_loss_fn(kind: str | InnerLoss, policy: GaussianMLPPolicy, tb: TensorBatch) -> metagrad.Loss:
    """L(params) = sum over tasks of the per-task inner loss (so per-task gradients separate).

    ``kind``: the loss function, or an algorithm key (its registry entry's inner loss)."""
    fn = resolve_inner_loss(kind)
    return lambda p: fn(policy, p, tb).sum()


def as_stacked(params: Params, n_tasks: int) -> Params:
    """Shared params -> detached [T, ...] copies; stacked params pass through (detached)."""
    if params["W0"].dim() == 3:
        return {k: v.detach() for k, v in params.items()}
    return {k: v.detach().clone() for k, v in expand_params(params, n_tasks).items()}


def adapt(policy: GaussianMLPPolicy, params: Params, tb: TensorBatch, lr: float, kind: str | InnerLoss) -> Params:
    """One inner step per task: phi_t = params - lr * grad L_t(params). Pure: returns new
    stacked [T, ...] tensors and never modifies ``params``. This is exactly the inner update
    of MAML training and the adaptation step of meta-test evaluation for every agent."""
    start = as_stacked(params, tb.n_tasks)
    g = metagrad.grad(inner_loss_fn(kind, policy, tb), start)
    return {k: start[k] - lr * g[k] for k in start}


# -- outer learners ---------------------------------------------------------------------------------


def ppo_clip_objective(ratio: torch.Tensor, adv: torch.Tensor, clip: float) -> torch.Tensor:
    """min(r A, clip(r, 1-c, 1+c) A) elementwise (to be maximised)."""
    return torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)


def ppo_clip_active(ratio: torch.Tensor, adv: torch.Tensor, clip: float) -> torch.Tensor:
    """Where :func:`ppo_clip_objective`'s derivative with respect to r is A (elsewhere 0): where
    r A < clip(r) A, or r lies in the clip range (ties inside it split autograd's gradient
    between two branches that both pass A)."""
    return (ratio * adv < ratio.clamp(1.0 - clip, 1.0 + clip) * adv) | ((ratio >= 1.0 - clip) & (ratio <= 1.0 + clip))


def conjugate_gradient(mvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int, tol: float = 1e-10,
                       with_product: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Solve A x = b for symmetric positive definite A given only x -> A x. With
    ``with_product``, also A x formed from the products already taken (x = sum_i alpha_i p_i,
    so A x = sum_i alpha_i A p_i: the same vector up to float rounding, one product fewer)."""
    x = torch.zeros_like(b)
    ax = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= tol:
            break
        Ap = mvp(p)
        alpha = rr / (p @ Ap)
        x = x + alpha * p
        ax = ax + alpha * Ap
        r = r - alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return (x, ax) if with_product else x


@dataclass
class TRPOResult:
    params: Params
    accepted: bool
    backtracks: int
    kl: float
    loss_before: float
    loss_after: float


def trpo_step(
    params: Params,
    loss_fn: Callable[[Params], torch.Tensor],
    kl_fn: Callable[[Params], torch.Tensor],
    gradient: Params,
    fvp: Callable[[Params], Params],
    cfg: AlgoConfig,
    max_kl: float,
    product_from_cg: bool = False,
) -> TRPOResult:
    """One TRPO update: natural direction by conjugate gradient on the Fisher-vector product
    (plus ``cg_damping``), scaled to the KL radius, then a backtracking line search
    (ratio ``backtrack_ratio``, at most ``max_backtracks`` steps) that accepts the first
    candidate that lowers the loss and satisfies mean KL <= max_kl; otherwise no step.
    ``product_from_cg``: the step size's ``d^T (F + damping) d`` from the conjugate gradient's
    own products (:func:`conjugate_gradient` ``with_product``) instead of one more product;
    equal up to float rounding."""
    theta = {k: v.detach() for k, v in params.items()}
    g = flat(gradient)

    def mvp(v: torch.Tensor) -> torch.Tensor:
        return flat(fvp(unflat(v, theta))) + cfg.cg_damping * v

    if product_from_cg:
        direction, product = conjugate_gradient(mvp, -g, cfg.cg_iters, with_product=True)
    else:
        direction = conjugate_gradient(mvp, -g, cfg.cg_iters)
        product = mvp(direction)
    shs = float(direction @ product)
    with torch.no_grad():
        loss0 = float(loss_fn(theta))
    if not math.isfinite(shs) or shs <= 0:
        return TRPOResult(theta, False, 0, 0.0, loss0, loss0)
    full = direction * math.sqrt(2.0 * max_kl / shs)
    base = flat(theta)
    for i in range(cfg.max_backtracks + 1):
        cand = unflat(base + (cfg.backtrack_ratio**i) * full, theta)
        with torch.no_grad():
            loss, kl = float(loss_fn(cand)), float(kl_fn(cand))
        if math.isfinite(loss) and loss < loss0 and kl <= max_kl:
            return TRPOResult({k: v.clone() for k, v in cand.items()}, True, i, kl, loss0, loss)
    return TRPOResult(theta, False, cfg.max_backtracks, 0.0, loss0, loss0)


def fvp_of_kl(kl_fn: Callable[[Params], torch.Tensor], params: Params) -> Callable[[Params], Params]:
    """v -> (Hessian of mean KL at ``params``) v, by double backpropagation."""
    return lambda v: metagrad.hvp(kl_fn, params, v, "second-order", 0.0)


Collect = Callable[[list[Any], Params], Batch]


class LearnerBase:
    """State every agent has: the run config, the policy, the meta-parameters (leaf tensors),
    and checkpointing of those parameters. Subclasses add optimiser state."""

    algo = ""  # the registry key (agents/registry.py registers each class under it)
    #: Meta-learners: their per-task inner loss (and the same as a function of log pi, for
    #: callers that already hold the policy's mean); None for agents without an inner loop.
    inner_loss: InnerLoss | None = None
    inner_loss_of_logp: Callable[[torch.Tensor, TensorBatch], torch.Tensor] | None = None

    def __init__(self, cfg: AgentConfig, policy: GaussianMLPPolicy, params: Params):
        self.cfg = cfg
        self.policy = policy
        self.params = params
        self.dtype = DTYPES[cfg.dtype]

    def state_dict(self) -> dict[str, Any]:
        return {"params": {k: v.detach().clone() for k, v in self.params.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)


class Agent(Protocol):
    """The role every learner fills for the runner and the evaluator.

    ``collect(tasks, params)`` samples episodes through the shared sampler (and charges the
    shared budget); ``params`` are shared or stacked per task. Agents never step environments.
    """

    algo: str
    policy: GaussianMLPPolicy
    params: Params

    def train_iteration(self, collect: Collect, tasks: list[Any]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
