"""Gaussian MLP policy with functional parameters (a dict of tensors).

Parameters are never owned by a module: every function takes ``params`` explicitly, so MAML
can adapt them with differentiable steps and the sampler can act with a different parameter
set per task. A parameter dict is either *shared* (``W0: [h0, obs]``) or *stacked* over tasks
(``W0: [T, h0, obs]``); stacked parameters act on observations shaped ``[T, ..., obs]``.

Action parameterisation (docs/protocol.md section 2, "Actions"): the Gaussian's mean and std live
in units of ``action_scale`` x the environment's action. A sample ``u`` is stored (and its
log-probability taken) unclipped; the environment receives ``clip(u / action_scale, -1, 1)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class GaussianMLPPolicy:
    """tanh MLP mean, state-independent learned log-std. Shape: obs [..., obs_dim] -> [..., act_dim]."""

    obs_dim: int
    act_dim: int
    hidden_sizes: tuple[int, ...]
    init_std: float  # in the scaled action space
    action_scale: float

    @property
    def n_layers(self) -> int:
        return len(self.hidden_sizes) + 1

    def init_params(self, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        """Glorot-uniform weights, zero biases, log_std = log(init_std); leaf tensors requiring grad."""
        sizes = [self.obs_dim, *self.hidden_sizes, self.act_dim]
        params: Params = {}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            limit = math.sqrt(6.0 / (n_in + n_out))
            w = (torch.rand((n_out, n_in), generator=generator, dtype=torch.float64) * 2 - 1) * limit
            params[f"W{i}"] = w.to(dtype)
            params[f"b{i}"] = torch.zeros(n_out, dtype=dtype)
        params["log_std"] = torch.full((self.act_dim,), math.log(self.init_std), dtype=dtype)
        return {k: v.requires_grad_(True) for k, v in params.items()}

    # -- distribution ------------------------------------------------------------------
    def mean(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        """Mean action (scaled space). obs [..., obs_dim] (shared) or [T, ..., obs_dim] (stacked)."""
        stacked = params["W0"].dim() == 3
        h = obs
        if stacked:
            shape = h.shape
            h = h.reshape(shape[0], -1, shape[-1])
        for i in range(self.n_layers):
            w, b = params[f"W{i}"], params[f"b{i}"]
            if stacked:
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            else:
                h = torch.nn.functional.linear(h, w, b)
            if i < self.n_layers - 1:
                h = torch.tanh(h)
        if stacked:
            h = h.reshape(*shape[:-1], self.act_dim)
        return h

    def log_std(self, params: Params, like: torch.Tensor) -> torch.Tensor:
        """log-std broadcast to the shape of ``like`` ([..., act_dim])."""
        ls = params["log_std"]
        if ls.dim() == 2:  # stacked [T, act_dim]
            ls = ls.reshape(ls.shape[0], *([1] * (like.dim() - 2)), ls.shape[1])
        return ls.expand_as(like)

    def log_prob(self, params: Params, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) of unclipped scaled actions. Shape [...]."""
        return self.log_prob_of_mean(params, self.mean(params, obs), actions)

    def log_prob_of_mean(self, params: Params, mu: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """:meth:`log_prob` given the mean ``mu = mean(params, obs)`` (lets callers share one
        forward pass between several losses)."""
        ls = self.log_std(params, mu)
        z = (actions - mu) * torch.exp(-ls)
        return -0.5 * (z * z).sum(-1) - ls.sum(-1) - 0.5 * self.act_dim * math.log(2 * math.pi)

    def kl(self, params_old: Params, params_new: Params, obs: torch.Tensor) -> torch.Tensor:
        """KL(pi_old(.|s) || pi_new(.|s)) per observation. Shape [...]."""
        return self.kl_of_means(params_old, self.mean(params_old, obs), params_new, self.mean(params_new, obs))

    def kl_of_means(self, params_old: Params, mu0: torch.Tensor, params_new: Params, mu1: torch.Tensor) -> torch.Tensor:
        """:meth:`kl` given both means (``mu0`` can be computed once and reused)."""
        ls0 = self.log_std(params_old, mu0)
        ls1 = self.log_std(params_new, mu1)
        var0, var1 = torch.exp(2 * ls0), torch.exp(2 * ls1)
        return (ls1 - ls0 + (var0 + (mu0 - mu1) ** 2) / (2 * var1) - 0.5).sum(-1)

    def entropy(self, params: Params) -> torch.Tensor:
        ls = params["log_std"]
        return (ls + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    # -- acting -----------------------------------------------------------------------------
    def actor(self, params: Params) -> PolicyActor:
        """A sampler actor for ``params`` (shared, or stacked with one row per task)."""
        return PolicyActor(self, {k: v.detach() for k, v in params.items()})


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads. Acting on a few hundred observations per
    step is ~20x slower with 2 OpenMP threads than with 1 when the cores are busy stepping
    environments (thread spin-up and contention dominate such tiny ops)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class PolicyActor:
    """Turns observations and standard-normal noise into (stored action, environment action).

    This is the only place where the action scale meets the environment: the sampler stays
    agnostic of the policy's parameterisation.
    """

    def __init__(self, policy: GaussianMLPPolicy, params: Params):
        self.policy = policy
        self.params = params
        self.dtype = params["W0"].dtype

    @torch.no_grad()
    def __call__(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """obs [T, E, obs_dim], noise [T, E, act_dim] -> actions (scaled, unclipped), env actions."""
        with torch_threads(1):
            o = torch.as_tensor(obs, dtype=self.dtype)
            mu = self.policy.mean(self.params, o)
            std = torch.exp(self.policy.log_std(self.params, mu))
            u = mu + std * torch.as_tensor(noise, dtype=self.dtype)
        u_np = u.numpy().astype(np.float64)
        return u_np, np.clip(u_np / self.policy.action_scale, -1.0, 1.0)

    def tasks(self, rows: slice) -> PolicyActor:
        """The actor for the tasks ``rows`` of the observations it is called with (stacked
        per-task parameters are sliced; shared ones are kept). Whether its actions equal the
        whole batch's rows bit for bit depends on the matrix library (rlbench/sampler.py checks)."""
        stacked = self.params["W0"].dim() == 3
        return PolicyActor(self.policy, {k: v[rows] for k, v in self.params.items()} if stacked else self.params)


def stack_params(params_list: Iterable[Params]) -> Params:
    """[{k: t}] * T -> {k: [T, ...]}."""
    params_list = list(params_list)
    return {k: torch.stack([p[k] for p in params_list]) for k in params_list[0]}


def expand_params(params: Params, n: int) -> Params:
    """Shared params -> stacked view with ``n`` rows (differentiable; gradients sum over rows)."""
    return {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}


def flat(params: Params) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in params.values()])


def unflat(vector: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vector[i : i + n].view_as(v)
        i += n
    return out
