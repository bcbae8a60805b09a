"""The MAML family: one core (sampling rounds, inner chain, meta-gradient estimator) composed
with an outer learner: ProMP (PPO-clip + KL penalty, Adam) and TRPO-MAML (TRPO step with
Fisher-vector products taken through the inner steps). docs/protocol.md section 4.

Three implementations of the same update (``impl``): ``"reference"`` differentiates whole-batch
losses with autograd, exactly as written in the protocol; ``"batched"`` splits
the tasks into groups of a few MB of activations (:func:`task_chunks`), runs the groups on
as many threads as the learner has (:func:`map_groups`) and sums their per-task terms. It
also shares forward passes the maths allows (ProMP: the pre-adaptation mean feeds the inner
loss and the KL penalty, the old policy's mean is computed once for all Adam steps; TRPO-MAML:
Hessian-vector graphs built once per group for all conjugate-gradient steps, one adaptation
per line-search candidate). ``"analytic"`` is ``"batched"`` with TRPO-MAML's gradient and
Fisher-vector products written in closed form for the Gaussian tanh-MLP policy
(agents/closed_form.py; ProMP and the Hessian-free estimator run the batched code).
``"fused"`` (the default) is ``"analytic"`` without repeated work. TRPO-MAML takes its inner
steps at the old parameters from the sampling rounds (:meth:`MAMLBase.sample_rounds` computed
them to sample the post-adaptation episodes; the same tensors) and forms the step size's
``d^T F d`` from the conjugate gradient's own products (one Fisher-vector product fewer of
eleven). ProMP's exact second-order meta-gradient and the KL penalty's gradient are in closed
form too (one backward pass shared by the inner Hessian-vector product and the KL term), its
sampling rounds' inner steps use closed-form gradients, and its first Adam step (at theta =
old) starts from the inner-loss points those steps computed. ProMP's fused learner also takes
its forward passes by a faster path (``fast_forward``, :class:`MAMLBase`) and computes each
once: the pass that gives a round's ``logp_old`` is the inner step's at the same parameters,
the old policy's mean for the KL penalty and the first Adam step's on the post-adaptation
episodes. Both form the linear baseline's normal equations with torch's BLAS
(``compute_advantages(blas=True)``), one task range per learner thread.
All give the same numbers up to float rounding (tests/test_maml_batched.py,
tests/test_closed_form.py, tests/test_maml_fused.py); TRPO-MAML's fused update is
bit-identical to its analytic one.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from agents import closed_form, metagrad
from agents.advantages import TensorBatch, compute_advantages, to_tensors
from agents.config import AgentConfig
from agents.core import (
    Collect,
    LearnerBase,
    advantage_settings,
    as_stacked,
    inner_loss_fn,
    loglik_loss,
    loglik_loss_of_logp,
    lr_surrogate,
    lr_surrogate_of_logp,
    ppo_clip_active,
    ppo_clip_objective,
    process,
    trpo_step,
)
from agents.policy import GaussianMLPPolicy, Params, expand_params, torch_threads

#: The batched implementation works on groups of tasks whose largest activation tensor
#: ([tasks, transitions, hidden width]) has about this many elements (4 MB in float32). Every
#: MAML quantity is a sum of per-task terms, so grouping changes nothing but the order of
#: float additions; it keeps each temporary small enough for the allocator to reuse freed
#: memory instead of mapping fresh pages for every operation, which cost more than the
#: arithmetic at the paper's batch shape (40 tasks x 4000 transitions x 64).
CHUNK_ELEMENTS = 1 << 20

#: ``impl`` of the MAML learners: "fused" (default), "analytic", "batched", or "reference" (the
#: straightforward whole-batch autograd implementation, kept as the oracle of
#: tests/test_maml_batched.py, tests/test_closed_form.py and tests/test_maml_fused.py).
IMPLS = ("fused", "analytic", "batched", "reference")


def task_chunks(n_tasks: int, per_task: int, width: int, split: int | None = None) -> list[slice]:
    """Contiguous task ranges of about ``CHUNK_ELEMENTS / (per_task * width)`` tasks each. With
    ``split`` < ``n_tasks``, no range crosses it (the ranges of tasks [0, split) are those of
    ``split`` tasks); at ``split`` = ``n_tasks`` or None, the ranges are those without it."""
    size = max(1, CHUNK_ELEMENTS // max(1, per_task * width))
    cut = n_tasks if split is None else min(split, n_tasks)
    return [slice(i, min(i + size, cut)) for i in range(0, cut, size)] + [slice(i, min(i + size, n_tasks)) for i in range(cut, n_tasks, size)]


def fvp_tasks(n_tasks: int, fraction: float) -> int:
    """How many of an iteration's tasks the TRPO learners' Fisher-vector products use with
    ``AlgoConfig.fvp_subsample`` = ``fraction``: the first ``ceil(fraction * n_tasks)`` (at
    least one). The built-in task distributions (envs/) draw an iteration's tasks independently,
    or for Meta-World as a random draw without replacement, so in either case its first k tasks
    are a uniformly random subset of them (a plugin distribution that orders its tasks would
    need to shuffle them for this to hold)."""
    return n_tasks if fraction >= 1 else max(1, min(n_tasks, math.ceil(fraction * n_tasks - 1e-9)))  # 0.3 x 10 is 3, not 4


def subsampled_fvp(groups: list[dict], n_tasks: int, k: int, product: Callable[[dict, Params], Params],
                   scale: float) -> Callable[[Params], Params]:
    """v -> the sum over ``groups`` (each with its task range ``"c"``) of ``product(group, v)``:
    over all of them at ``k`` = ``n_tasks``; over the groups of the first ``k`` tasks times
    ``scale`` otherwise (``fvp_subsample`` < 1, the groups then split at ``k``: task_chunks)."""
    if k >= n_tasks:
        return lambda v: sum_all(map_groups(lambda grp: product(grp, v), groups))
    part = [grp for grp in groups if grp["c"].stop <= k]
    assert sum(grp["c"].stop - grp["c"].start for grp in part) == k, "the task groups must split at k (task_chunks split=k)"
    return lambda v: {key: scale * x for key, x in sum_all(map_groups(lambda grp: product(grp, v), part)).items()}


def map_groups(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """[fn(x) for x in items], with the groups spread over as many Python threads as torch
    has intra-op threads, each running torch single-threaded. Groups are independent
    autograd graphs, so the threads never wait for each other inside an operation (OpenMP
    regions on a few-MB tensor wait at a barrier for every thread, which stalls badly when
    the cores are shared). Results come back in item order, so sums over groups are taken in
    the same order for any thread count. Several groups always run on pool threads, even with
    one worker: a group computed on the main thread was seen to round differently in the last
    bit from one computed on a pool thread (TRPO-MAML's conjugate gradient amplifies such
    differences). Bit-identity across thread counts is still not guaranteed (it was seen to
    hold in a fresh process and not always after other work in the same process)."""
    if len(items) <= 1 or threading.current_thread().name.startswith(_POOL_PREFIX):  # nested: no waiting on our own pool
        return [fn(x) for x in items]
    workers = max(1, min(torch.get_num_threads(), len(items)))
    with torch_threads(1):
        return list(_pool(workers).map(fn, items))


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_PREFIX = "maml-group"
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of the parent's threads


def _pool(workers: int) -> ThreadPoolExecutor:
    """A persistent pool of ``workers`` threads, each set to one torch thread when it starts.
    A fresh pool per call cost more than a small group's work (thread start-up and each new
    thread's first torch call), and pool threads left at the default thread count ran a
    one-thread learner's products ~100x slower (tests/test_closed_form.py timing)."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix=_POOL_PREFIX, initializer=torch.set_num_threads, initargs=(1,))
    return _POOLS[workers]


def memoised_problem(old: Params, groups: list[dict], one: Callable, g: Params, fvp: Callable) -> TRPOProblem:
    """The TRPO problem (old, loss, KL, gradient, fvp) whose loss and KL are the sums over task
    groups of ``one(group, theta, at_old)``, computed once per ``theta`` (the line search asks
    for both at each candidate)."""
    cache: dict[str, Any] = {}

    def evaluate(theta: Params) -> tuple[torch.Tensor, torch.Tensor]:
        if "theta" in cache and all(torch.equal(theta[k], cache["theta"][k]) for k in theta):
            return cache["value"]
        at_old = all(torch.equal(theta[k], old[k]) for k in theta)
        loss = kl = 0.0
        for loss_c, kl_c in map_groups(lambda grp: one(grp, theta, at_old), groups):
            loss = loss + loss_c
            kl = kl + kl_c
        cache["theta"], cache["value"] = {k: v.clone() for k, v in theta.items()}, (loss, kl)
        return loss, kl

    return old, lambda th: evaluate(th)[0], lambda th: evaluate(th)[1], g, fvp


def sum_all(parts: list[Params]) -> Params:
    total = None
    for g in parts:
        total = _add_into(total, g)
    return total


def _rows(params: Params, rows: slice) -> Params:
    return {k: v[rows] for k, v in params.items()}


def _add_into(acc: Params | None, g: Params) -> Params:
    if acc is None:
        return dict(g)
    return {k: acc[k] + g[k] for k in acc}


class MAMLBase(LearnerBase):
    """K inner steps per task, each on freshly sampled episodes; both pre- and post-adaptation
    sampling rounds go through the shared sampler and are charged to the budget.

    ``closed_form_sampling_steps``: whether the ``fused`` implementation takes the sampling
    rounds' inner steps with closed-form gradients (equal to autograd's up to rounding) or with
    autograd like the other implementations. TRPO-MAML keeps autograd: its fused update then
    starts from bit-identically the same inner steps, gradient and Fisher-vector products as
    ``analytic``. TRPO's first line-search candidate lies on the KL boundary up to the KL's
    cubic term (a relative margin of ~1e-5 was measured at the paper's batch shape), and the
    conjugate gradient amplifies float32 rounding of the problem to about that size, so a
    problem that differed in rounding flipped that candidate's accept decision.

    ``fast_forward``: whether the ``fused`` implementation with the exact second-order
    estimator takes its forward passes by :class:`closed_form.MLPAt`'s ``fast`` path (tanh as
    2 sigmoid(2x) - 1, narrow products in MKL's faster operand order: equal to the policy's
    forward to float rounding) and shares each between ``logp_old``, the inner step at the same
    parameters and the update's first Adam step: 22% less CPU time for ProMP's update at the
    paper's batch shape (results/bench/README.md, "ProMP's fast forward path"). ProMP's Adam steps are smooth in rounding; TRPO-MAML keeps the policy's
    exact operations for the reason above (its update is bit-identical to ``analytic``'s)."""

    closed_form_sampling_steps = False
    fast_forward = False

    def __init__(self, cfg: AgentConfig, policy: GaussianMLPPolicy, params: Params, impl: str = IMPLS[0]):
        super().__init__(cfg, policy, params)
        if impl not in IMPLS:
            raise ValueError(f"unknown MAML implementation {impl!r} (known: {', '.join(IMPLS)})")
        self.impl = impl
        #: fused ProMP: (theta, the first inner loss's points at theta per task group) from the
        #: sampling rounds, for the first Adam step (see ProMP._fused_iteration)
        #: and with self.fast, the post-adaptation round's forward passes at the adapted parameters
        self.sampling_points: tuple[Params, list[closed_form.LossAt], list[closed_form.MLPAt] | None] | None = None
        self.inner_lr = cfg.algo_cfg.effective_inner_lr
        self.estimator = cfg.algo_cfg.meta_gradient
        self.delta = cfg.algo_cfg.hf_delta

    @property
    def fast(self) -> bool:
        """Whether this learner's forward passes take :class:`closed_form.MLPAt`'s ``fast`` path
        and are shared between the sampling rounds and the update (see ``fast_forward``)."""
        return self.impl == "fused" and self.fast_forward and self.estimator == "second-order"

    def _process(self, batch, params: Params) -> TensorBatch:
        """The batch as tensors with advantages and ``logp_old`` at ``params``."""
        return self._process_nets(batch, params)[0]

    def _advantages(self, batch) -> np.ndarray:
        """compute_advantages; ``fused``: with the baseline's normal equations by BLAS, and in as
        many contiguous task ranges as the learner has threads, one per thread (every quantity is
        per task: the same bits as one call, tests/test_maml_fused.py)."""
        settings = advantage_settings(self.cfg.advantage)
        if self.impl != "fused":
            return compute_advantages(batch, settings)
        size = -(-batch.n_tasks // max(1, torch.get_num_threads()))
        ranges = [slice(i, min(i + size, batch.n_tasks)) for i in range(0, batch.n_tasks, size)]
        return np.concatenate(map_groups(lambda rows: compute_advantages(batch.task_range(rows), settings, blas=True), ranges))

    def _process_nets(self, batch, params: Params) -> tuple[TensorBatch, list[closed_form.MLPAt] | None]:
        """:meth:`_process`, and with :attr:`fast` each task group's forward pass
        (closed_form.MLPAt, fast) that gave ``logp_old``, for the inner step or the update at
        the same parameters to reuse."""
        if self.impl == "reference":
            return process(self.policy, params, batch, self.cfg.advantage, self.dtype), None
        # agents.core.process with the log-probabilities taken by task groups
        tb = to_tensors(batch, self._advantages(batch), self.dtype)
        p = {k: v.detach() for k, v in params.items()}
        stacked = p["W0"].dim() == 3
        chunks = self.chunks(tb)
        if self.fast:
            def forward(c: slice) -> closed_form.MLPAt:
                rows = _rows(p, c) if stacked else expand_params(p, c.stop - c.start)
                return closed_form.MLPAt(self.policy, rows, tb.obs[c], fast=True)

            nets = map_groups(forward, chunks)
            with torch.no_grad():
                tb.logp_old = torch.cat([self.policy.log_prob_of_mean({"log_std": net.log_std}, net.mu, tb.actions[c])
                                         for c, net in zip(chunks, nets)])
            return tb, nets

        def logp(c: slice) -> torch.Tensor:
            with torch.no_grad():
                return self.policy.log_prob(_rows(p, c) if stacked else p, tb.obs[c], tb.actions[c])

        tb.logp_old = torch.cat(map_groups(logp, chunks))
        return tb, None

    def sample_rounds(self, collect: Collect, tasks: list[Any]) -> tuple[list[TensorBatch], TensorBatch, dict[str, float]]:
        """Pre-adaptation and K-1 intermediate rounds (the inner batches), then the
        post-adaptation round sampled with the adapted per-task parameters."""
        K = self.cfg.algo_cfg.inner_steps
        theta = as_stacked(self.params, len(tasks))
        pre = collect(tasks, self.params)
        tb, nets = self._process_nets(pre, self.params)
        inner = [tb]
        stats = {f"pre/{k.split('/', 1)[1]}": v for k, v in pre.stats().items()}
        phi = theta
        self.last_chain = [theta]
        for k in range(K):
            if self.impl == "reference":
                g = metagrad.grad(inner_loss_fn(self.inner_loss, self.policy, inner[-1]), phi)
            elif self.impl == "fused" and self.closed_form_sampling_steps:  # closed-form inner gradients (agents/closed_form.py)
                # the first step's points (at theta) keep their backward pass for the update's first product
                keep = k == 0 and self.estimator == "second-order"
                chunks = self.chunks(inner[-1])
                points = map_groups(lambda cn, phi=phi, keep=keep, tb=inner[-1]: self.inner_point(
                    _rows(phi, cn[0]), tb.tasks(cn[0]), second_order=keep, net=cn[1]), list(zip(chunks, nets or [None] * len(chunks))))
                if keep:
                    self.sampling_points = ({n: v.detach().clone() for n, v in self.params.items()}, points, None)
                g = {n: torch.cat([p.grad[n] for p in points]) for n in phi}
            else:
                parts = map_groups(lambda c, phi=phi: metagrad.grad(inner_loss_fn(self.inner_loss, self.policy, inner[-1].tasks(c)), _rows(phi, c)),
                                   self.chunks(inner[-1]))
                g = {n: torch.cat([p[n] for p in parts]) for n in phi}
            phi = {n: phi[n] - self.inner_lr * g[n] for n in phi}
            self.last_chain.append(phi)
            if k < K - 1:
                tb, nets = self._process_nets(collect(tasks, phi), phi)
                inner.append(tb)
        post_batch = collect(tasks, phi)
        post, nets = self._process_nets(post_batch, phi)
        if nets is not None and self.sampling_points is not None:  # the post-adaptation forward passes at the update's first phi
            self.sampling_points = (*self.sampling_points[:2], nets)
        stats.update(post_batch.stats())
        stats["train/adaptation_gain"] = stats["rollout/return_mean"] - stats["pre/return_mean"]
        return inner, post, stats

    def inner_losses(self, inner: list[TensorBatch]) -> list[metagrad.Loss]:
        return [inner_loss_fn(self.inner_loss, self.policy, tb) for tb in inner]

    def inner_point(self, phi: Params, tb: TensorBatch, second_order: bool = True,
                    net: closed_form.MLPAt | None = None) -> closed_form.LossAt:
        """The inner loss on ``tb`` at stacked ``phi`` in closed form (its gradient and exact
        Hessian-vector products): the same loss as :meth:`inner_losses`, -task_mean(f(log pi) A)
        with f the identity (log-likelihood) or the likelihood ratio. ``net``: the forward pass
        at ``phi`` on ``tb``, if already computed; else computed (fast with :attr:`fast`)."""
        weight = -tb.mask * tb.advantages / tb.mask.sum(-1, keepdim=True).clamp_min(1)
        return closed_form.LossAt(self.policy, phi, tb.obs, tb.actions, weight, tb.logp_old if self.inner_is_ratio else None,
                                  net=net, second_order=second_order, fast=self.fast)

    def chunks(self, tb: TensorBatch, split: int | None = None) -> list[slice]:
        """Task groups of the batched implementation (none crossing ``split``: task_chunks). One
        group for the Hessian-free estimator: its finite-difference radius is set by the norm of
        the vector over *all* tasks, so grouping would change the estimate, not only the rounding."""
        if self.estimator == "hessian-free":
            return [slice(0, tb.n_tasks)]
        return task_chunks(tb.n_tasks, tb.obs.shape[1], max(self.policy.hidden_sizes, default=tb.obs.shape[-1]), split)


#: What a TRPO step needs: (start parameters, loss, mean KL, gradient, Fisher-vector product).
TRPOProblem = tuple[Params, Callable[[Params], torch.Tensor], Callable[[Params], torch.Tensor], Params, Callable[[Params], Params]]


def sum_tasks(g: Params) -> Params:
    """Adjoint of expanding shared params to [T, ...]: sum the per-task gradients."""
    return {k: v.sum(0) for k, v in g.items()}


class ProMP(MAMLBase):
    """ProMP: outer objective = mean over tasks of the clipped PPO surrogate (clip 0.3) on the
    post-adaptation episodes + eta * mean KL(pi_old || pi_theta) on the pre-adaptation
    episodes; ``num_ppo_steps`` full-batch Adam steps; eta fixed or adapted toward kl_target."""

    algo = "promp"
    closed_form_sampling_steps = True  # see MAMLBase
    fast_forward = True  # see MAMLBase
    inner_loss = staticmethod(lr_surrogate)  # -mean(pi / pi_old * A): ProMP's likelihood-ratio inner loss
    inner_loss_of_logp = staticmethod(lr_surrogate_of_logp)
    inner_is_ratio = True

    def __init__(self, cfg: AgentConfig, policy: GaussianMLPPolicy, params: Params, impl: str = IMPLS[0]):
        super().__init__(cfg, policy, params, impl)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.algo_cfg.learning_rate)
        self.eta = cfg.algo_cfg.eta

    def outer_terms(self, post: TensorBatch, phi: Params) -> torch.Tensor:
        """Per-task clipped surrogate (to be maximised) of adapted parameters. Shape [T]."""
        ratio = torch.exp(self.policy.log_prob(phi, post.obs, post.actions) - post.logp_old)
        return post.task_mean(ppo_clip_objective(ratio, post.advantages, self.cfg.algo_cfg.clip))

    def outer_loss(self, post: TensorBatch, n_tasks: int | None = None) -> metagrad.Loss:
        """-mean over tasks of the clipped surrogate; with ``n_tasks``, the part of that mean
        contributed by the tasks of ``post`` (a group of ``n_tasks`` in all)."""
        if n_tasks is None:
            return lambda phi: -self.outer_terms(post, phi).mean()
        return lambda phi: -self.outer_terms(post, phi).sum() / n_tasks

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
        if self.impl == "reference":
            return self._reference_iteration(inner, post, stats, len(tasks))
        if self.impl == "fused" and self.estimator == "second-order":
            return self._fused_iteration(inner, post, stats, len(tasks))
        return self._batched_iteration(inner, post, stats, len(tasks))

    def _batched_iteration(self, inner: list[TensorBatch], post: TensorBatch, stats: dict[str, float], T: int) -> dict[str, float]:
        """The same update as :meth:`_reference_iteration`, by groups of tasks, with the
        outer loss and the KL penalty differentiated in one pass: the policy's mean on the
        pre-adaptation episodes feeds both the first inner loss and the KL term, and the old
        policy's mean there is computed once for all Adam steps."""
        pre = inner[0]
        old = {k: v.detach().clone() for k, v in self.params.items()}
        chunks = self.chunks(pre)
        with torch.no_grad():
            mu_old = [self.policy.mean(old, pre.obs[c]) for c in chunks]
        for _ in range(self.cfg.algo_cfg.num_ppo_steps):
            theta = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
            total = sum_all(map_groups(
                lambda i, theta=theta: self._group_gradient(theta, old, mu_old[i], [tb.tasks(chunks[i]) for tb in inner], post.tasks(chunks[i]), T),
                list(range(len(chunks)))))
            self.optimizer.zero_grad()
            for k, g in total.items():
                self.params[k].grad = g
            self.optimizer.step()
        new = {k: v.detach() for k, v in self.params.items()}

        def after(i: int) -> tuple[float, float]:
            pre_c = pre.tasks(chunks[i])
            with torch.no_grad():
                kl_c = float(pre_c.task_mean(self.policy.kl_of_means(old, mu_old[i], new, self.policy.mean(new, pre_c.obs))).sum())
            losses = self.inner_losses([tb.tasks(chunks[i]) for tb in inner])
            phi = metagrad.inner_chain(as_stacked(new, pre_c.n_tasks), losses, self.inner_lr)[-1]
            with torch.no_grad():
                return kl_c, float(self.outer_terms(post.tasks(chunks[i]), phi).sum())

        kl_sum = outer_sum = 0.0
        for kl_c, outer_c in map_groups(after, list(range(len(chunks)))):
            kl_sum += kl_c
            outer_sum += outer_c
        kl, outer_after = kl_sum / T, -outer_sum / T
        return {**stats, **self._finish(kl, outer_after)}

    def _fused_iteration(self, inner: list[TensorBatch], post: TensorBatch, stats: dict[str, float], T: int) -> dict[str, float]:
        """:meth:`_batched_iteration` (exact second order) with the meta-gradient in closed form
        (agents/closed_form.py): per group, the inner losses' forward and backward passes give
        the inner steps, the clipped surrogate's gradient at the adapted parameters is pulled
        back through them by exact Hessian-vector products, and the KL penalty's gradient
        shares the backward pass of the first product (both at theta on the pre-adaptation
        episodes). The logged KL and loss after the update are taken the same way."""
        pre = inner[0]
        old = {k: v.detach().clone() for k, v in self.params.items()}
        chunks = self.chunks(pre)
        # the sampling rounds' inner-loss points at theta = old (and, with self.fast, their forward
        # passes on the post-adaptation episodes at the adapted phi) serve the first Adam step
        start, first, first_post = self.sampling_points or (None, None, None)
        self.sampling_points = None
        if start is None or len(first) != len(chunks) or not all(torch.equal(start[k], old[k]) for k in old):
            first, first_post = [None] * len(chunks), None
        if first_post is None or len(first_post) != len(chunks):
            first_post = [None] * len(chunks)
        with torch.no_grad():  # the old policy's mean on the pre-adaptation episodes (the first points' forward pass with self.fast)
            mu_old = [f.net.mu if f is not None and self.fast else self.policy.mean(old, pre.obs[c]) for f, c in zip(first, chunks)]
        for _ in range(self.cfg.algo_cfg.num_ppo_steps):
            theta = {k: v.detach() for k, v in self.params.items()}
            total = sum_all(map_groups(
                lambda i, theta=theta, first=first, first_post=first_post: self._fused_group(
                    theta, old, mu_old[i], [tb.tasks(chunks[i]) for tb in inner], post.tasks(chunks[i]), T,
                    first=first[i], first_post=first_post[i])[0],
                list(range(len(chunks)))))
            first = first_post = [None] * len(chunks)  # only the first step is at theta = old; release them
            self.optimizer.zero_grad()
            for k, g in total.items():
                self.params[k].grad = g
            self.optimizer.step()
        new = {k: v.detach() for k, v in self.params.items()}
        kl = outer = 0.0
        for kl_c, outer_c in map_groups(lambda i: self._fused_group(new, old, mu_old[i], [tb.tasks(chunks[i]) for tb in inner],
                                                                    post.tasks(chunks[i]), T, values_only=True)[1],
                                        list(range(len(chunks)))):
            kl += kl_c
            outer += outer_c
        return {**stats, **self._finish(kl / T, -outer / T)}

    def _fused_group(self, theta: Params, old: Params, mu_old: torch.Tensor, inner: list[TensorBatch], post: TensorBatch,
                     T: int, values_only: bool = False, first: closed_form.LossAt | None = None,
                     first_post: closed_form.MLPAt | None = None) -> tuple[Params | None, tuple[float, float]]:
        """One group's part of the gradient w.r.t. the shared ``theta`` of the outer loss plus
        eta x KL(pi_old || pi_theta) (None with ``values_only``), and the sums over its tasks
        of the KL's task mean and of the clipped surrogate's (to be maximised). ``first``: the
        first inner loss's point at ``theta``, if already computed; ``first_post``: then also the
        forward pass at the adapted parameters on ``post``, if already computed."""
        n = post.n_tasks
        lr = self.inner_lr
        phi = expand_params(theta, n)
        points = []
        for tb in inner:
            points.append(first if first is not None and not points else self.inner_point(phi, tb, second_order=not values_only))
            phi = {k: phi[k] - lr * points[-1].grad[k] for k in phi}
        pre, net0 = inner[0], points[0].net
        kw = pre.mask / pre.mask.sum(-1, keepdim=True).clamp_min(1) / T
        with torch.no_grad():
            kl = float(pre.task_mean(self.policy.kl_of_means(old, mu_old, {"log_std": net0.log_std}, net0.mu)).sum())
            net = first_post if first_post is not None else closed_form.MLPAt(self.policy, phi, post.obs, fast=self.fast)
            mu = net.mu
            ratio = torch.exp(self.policy.log_prob_of_mean(phi, mu, post.actions) - post.logp_old)
            objective = float(post.task_mean(ppo_clip_objective(ratio, post.advantages, self.cfg.algo_cfg.clip)).sum())
        if values_only:
            return None, (kl, objective)
        a = post.advantages
        active = ppo_clip_active(ratio, a, self.cfg.algo_cfg.clip)  # d min(r A, clip(r) A) / dr = A there, else 0
        weight = -post.mask / post.mask.sum(-1, keepdim=True).clamp_min(1) / T * a * active
        g = closed_form.LossAt(self.policy, phi, post.obs, post.actions, weight, post.logp_old, net=net, second_order=False).grad
        extra = closed_form.kl_cotangents(self.policy, old["log_std"], mu_old, net0.log_std, net0.mu, self.eta * kw)
        for k in range(len(points) - 1, -1, -1):
            hv = points[k].hvp({name: -lr * x for name, x in g.items()}, extra if k == 0 else None)
            g = {name: g[name] + hv[name] for name in g}
        return sum_tasks(g), (kl, objective)

    def _group_gradient(self, theta: Params, old: Params, mu_old: torch.Tensor, inner: list[TensorBatch], post: TensorBatch,
                        T: int) -> Params:
        """Gradient w.r.t. the shared ``theta`` of this group's part of the outer loss plus
        eta x KL(pi_old || pi_theta) on its pre-adaptation episodes."""
        n = post.n_tasks
        pre = inner[0]
        with torch.enable_grad():
            stacked = expand_params(theta, n)
            mu = self.policy.mean(stacked, pre.obs)
            kl = pre.task_mean(self.policy.kl_of_means(old, mu_old, stacked, mu)).sum() / T
            if self.estimator != "second-order":
                g_kl = torch.autograd.grad(self.eta * kl, tuple(theta.values()))
                losses = self.inner_losses(inner)
                g_meta, _ = metagrad.meta_gradient(as_stacked(theta, n), losses, self.inner_lr, self.outer_loss(post, T),
                                                   self.estimator, self.delta)
                return {k: g_meta[k].sum(0) + gk for k, gk in zip(theta, g_kl)}
            phi = stacked
            loss = self.inner_loss_of_logp(self.policy.log_prob_of_mean(stacked, mu, pre.actions), pre).sum()
            for k, tb in enumerate(inner):
                if k > 0:
                    loss = inner_loss_fn(self.inner_loss, self.policy, tb)(phi)
                g = torch.autograd.grad(loss, tuple(phi.values()), create_graph=True)
                phi = {name: v - self.inner_lr * gi for (name, v), gi in zip(phi.items(), g)}
            total = self.outer_loss(post, T)(phi) + self.eta * kl
            grads = torch.autograd.grad(total, tuple(theta.values()))
        return dict(zip(theta, grads))

    def _finish(self, kl: float, outer_after: float) -> dict[str, float]:
        eta_used = self.eta
        self.update_eta(kl)
        return {"train/outer_loss": outer_after, "train/kl_pre": kl, "train/eta": eta_used,
                "train/std": float(self.params["log_std"].detach().exp().mean())}

    def _reference_iteration(self, inner: list[TensorBatch], post: TensorBatch, stats: dict[str, float], T: int) -> dict[str, float]:
        """Whole-batch autograd: the meta-gradient, then the KL penalty in a second pass."""
        losses = self.inner_losses(inner)
        outer = self.outer_loss(post)
        pre = inner[0]
        old = {k: v.detach().clone() for k, v in self.params.items()}
        for _ in range(self.cfg.algo_cfg.num_ppo_steps):
            theta = as_stacked(self.params, T)
            g_meta, _ = metagrad.meta_gradient(theta, losses, self.inner_lr, outer, self.estimator, self.delta)
            self.optimizer.zero_grad()
            kl_term = self.eta * pre.task_mean(self.policy.kl(old, self.params, pre.obs)).mean()
            kl_term.backward()
            with torch.no_grad():
                for k, g in sum_tasks(g_meta).items():
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
    closed_form_sampling_steps = False  # see MAMLBase
    fast_forward = False  # see MAMLBase
    inner_loss = staticmethod(loglik_loss)  # -mean(log pi * A): the log-likelihood inner loss
    inner_loss_of_logp = staticmethod(loglik_loss_of_logp)
    inner_is_ratio = False

    def train_iteration(self, collect: Collect, tasks: list[Any], rng: np.random.Generator | None = None) -> dict[str, float]:
        inner, post, stats = self.sample_rounds(collect, tasks)
        if self.impl == "fused":
            problem = self.fused_problem(inner, post, len(tasks), self.last_chain)
        else:
            problem = {"reference": self.reference_problem, "batched": self.batched_problem, "analytic": self.analytic_problem}[self.impl](
                inner, post, len(tasks))
        a = self.cfg.algo_cfg
        # the step size's d^T F d from the conjugate gradient's products needs a linear F
        # (the Hessian-free estimator's finite differences are linear only to first order)
        res = trpo_step(*problem, a, a.max_kl, product_from_cg=self.impl == "fused" and self.estimator != "hessian-free")
        with torch.no_grad():
            for k, v in res.params.items():
                self.params[k].copy_(v)
        return {**stats, "train/loss": res.loss_after, "train/kl": res.kl, "train/accepted": float(res.accepted),
                "train/backtracks": float(res.backtracks), "train/std": float(self.params["log_std"].detach().exp().mean())}

    def _surrogate(self, post: TensorBatch, T: int) -> metagrad.Loss:
        """-sum over the tasks of ``post`` of mean(ratio * A), divided by the number of tasks T."""
        def loss(phi: Params) -> torch.Tensor:
            ratio = torch.exp(self.policy.log_prob(phi, post.obs, post.actions) - post.logp_old)
            return -post.task_mean(ratio * post.advantages).sum() / T
        return loss

    def _kl(self, post: TensorBatch, phi_old: Params, T: int) -> metagrad.Loss:
        return lambda phi: post.task_mean(self.policy.kl(phi_old, phi, post.obs)).sum() / T

    def batched_problem(self, inner: list[TensorBatch], post: TensorBatch, T: int) -> TRPOProblem:
        """The same TRPO problem as :meth:`reference_problem`, by groups of tasks: each group
        keeps its inner-step and KL Hessian-vector graphs for all conjugate-gradient steps,
        and the line search adapts each candidate once for both its loss and its KL."""
        old = {k: v.detach().clone() for k, v in self.params.items()}
        k_fvp = fvp_tasks(T, self.cfg.algo_cfg.fvp_subsample)

        def build(c: slice) -> dict[str, Any]:
            losses = self.inner_losses([tb.tasks(c) for tb in inner])
            post_c = post.tasks(c)
            phis = metagrad.inner_chain(as_stacked(old, post_c.n_tasks), losses, self.inner_lr)
            kl_fn = self._kl(post_c, phis[-1], T)
            return {
                "c": c, "losses": losses, "phis": phis, "surrogate": self._surrogate(post_c, T), "kl": kl_fn, "n": post_c.n_tasks,
                "ops": metagrad.chain_operators(phis, losses, self.estimator, self.delta),
                "kl_op": metagrad.hvp_operator(kl_fn, phis[-1], "second-order", 0.0) if c.stop <= k_fvp else None,  # only products use it
            }

        groups = map_groups(build, self.chunks(post, k_fvp))

        def pull(grp: dict, v: Params) -> Params:
            return sum_tasks(metagrad.vjp(grp["phis"], grp["losses"], self.inner_lr, v, self.estimator, self.delta, grp["ops"]))

        g = sum_all(map_groups(lambda grp: pull(grp, metagrad.grad(grp["surrogate"], grp["phis"][-1])), groups))

        def product(grp: dict, v: Params) -> Params:
            u = {k: x.unsqueeze(0).expand(grp["n"], *x.shape) for k, x in v.items()}
            ju = metagrad.jvp(grp["phis"], grp["losses"], self.inner_lr, u, self.estimator, self.delta, grp["ops"])
            return pull(grp, grp["kl_op"](ju))

        fvp = subsampled_fvp(groups, T, k_fvp, product, T / k_fvp)

        def one(grp: dict, theta: Params, at_old: bool) -> tuple[torch.Tensor, torch.Tensor]:
            """(surrogate, KL) of one group's policies adapted from ``theta`` (one adaptation for both)."""
            phi = grp["phis"][-1] if at_old else metagrad.inner_chain(as_stacked(theta, grp["n"]), grp["losses"], self.inner_lr)[-1]
            with torch.no_grad():
                return grp["surrogate"](phi), grp["kl"](phi)

        return memoised_problem(old, groups, one, g, fvp)

    def fused_problem(self, inner: list[TensorBatch], post: TensorBatch, T: int, chain: list[Params] | None = None) -> TRPOProblem:
        """:meth:`analytic_problem` without recomputing the inner steps at the old parameters:
        they are ``chain`` (the stacked [theta, phi_1, ..., phi_K] that
        :meth:`MAMLBase.sample_rounds` computed to sample the later rounds, bit-identical to
        the recomputation; recomputed when None)."""
        return self.analytic_problem(inner, post, T, chain=chain)

    def analytic_problem(self, inner: list[TensorBatch], post: TensorBatch, T: int, chain: list[Params] | None = None) -> TRPOProblem:
        """The same TRPO problem as :meth:`batched_problem`, with the derivatives the conjugate
        gradient repeats written in closed form (agents/closed_form.py): each group keeps the
        forward and backward passes of its inner losses at the fixed inner-step points and the
        forward pass of the old adapted policy on its post-adaptation episodes; a Fisher-vector
        product is then a tangent pass through the inner steps (exact Hessian-vector products),
        the KL's Hessian at the old adapted policy (Gauss-Newton form, exact there: the KL's
        gradient vanishes) and the transposed pass back. The line search shares one forward pass
        between a candidate's loss and KL and the old adapted policy's mean across candidates.
        The Hessian-free estimator (whose radius is set by the whole batch) uses
        :meth:`batched_problem`."""
        if self.estimator == "hessian-free":
            return self.batched_problem(inner, post, T)
        old = {k: v.detach().clone() for k, v in self.params.items()}
        exact = self.estimator == "second-order"
        k_fvp = fvp_tasks(T, self.cfg.algo_cfg.fvp_subsample)

        def build(c: slice) -> dict[str, Any]:
            inner_c = [tb.tasks(c) for tb in inner]
            losses = self.inner_losses(inner_c)
            post_c = post.tasks(c)
            if chain is None:
                phis = metagrad.inner_chain(as_stacked(old, post_c.n_tasks), losses, self.inner_lr)
            else:
                phis = [_rows(p, c) for p in chain]
            points = [self.inner_point(phis[k], tb) for k, tb in enumerate(inner_c)] if exact else None
            net = closed_form.MLPAt(self.policy, phis[-1], post_c.obs)
            per_task = post_c.mask / post_c.mask.sum(-1, keepdim=True).clamp_min(1) / T
            surrogate = closed_form.LossAt(self.policy, phis[-1], post_c.obs, post_c.actions, -per_task * post_c.advantages,
                                           post_c.logp_old, net=net, second_order=False)
            return {"c": c, "losses": losses, "phis": phis, "post": post_c, "n": post_c.n_tasks, "net": net, "kl_weight": per_task,
                    "g_out": surrogate.grad, "ops": [p.hvp for p in points] if exact else None}

        groups = map_groups(build, self.chunks(post, k_fvp))

        def pull(grp: dict, v: Params) -> Params:
            return sum_tasks(metagrad.vjp(grp["phis"], grp["losses"], self.inner_lr, v, self.estimator, self.delta, grp["ops"]))

        g = sum_all(map_groups(lambda grp: pull(grp, grp["g_out"]), groups))

        def product(grp: dict, v: Params) -> Params:
            u = {k: x.unsqueeze(0).expand(grp["n"], *x.shape) for k, x in v.items()}
            ju = metagrad.jvp(grp["phis"], grp["losses"], self.inner_lr, u, self.estimator, self.delta, grp["ops"])
            return pull(grp, closed_form.kl_fisher_vp(grp["net"], grp["kl_weight"], ju))

        fvp = subsampled_fvp(groups, T, k_fvp, product, T / k_fvp)

        def one(grp: dict, theta: Params, at_old: bool) -> tuple[torch.Tensor, torch.Tensor]:
            """(surrogate, KL) of one group's policies adapted from ``theta`` (one adaptation and one forward pass for both)."""
            phi = grp["phis"][-1] if at_old else metagrad.inner_chain(as_stacked(theta, grp["n"]), grp["losses"], self.inner_lr)[-1]
            p, net = grp["post"], grp["net"]
            with torch.no_grad():
                mu = net.mu if at_old else self.policy.mean(phi, p.obs)
                ratio = torch.exp(self.policy.log_prob_of_mean(phi, mu, p.actions) - p.logp_old)
                loss = -p.task_mean(ratio * p.advantages).sum() / T
                kl = p.task_mean(self.policy.kl_of_means(grp["phis"][-1], net.mu, phi, mu)).sum() / T
            return loss, kl

        return memoised_problem(old, groups, one, g, fvp)

    def reference_problem(self, inner: list[TensorBatch], post: TensorBatch, T: int) -> TRPOProblem:
        """Whole-batch autograd (the oracle of the batched implementation). Exact products only
        (``fvp_subsample`` 1): tests build the oracle of a subsample on the subsample's tasks."""
        if self.cfg.algo_cfg.fvp_subsample != 1:
            raise ValueError("the reference implementation has no fvp_subsample: use impl fused, analytic or batched")
        losses = self.inner_losses(inner)
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
        g = sum_tasks(metagrad.vjp(phis, losses, self.inner_lr, metagrad.grad(surrogate, phi_old), self.estimator, self.delta, ops))

        def fvp(v: Params) -> Params:
            u = {k: x.unsqueeze(0).expand(T, *x.shape) for k, x in v.items()}
            ju = metagrad.jvp(phis, losses, self.inner_lr, u, self.estimator, self.delta, ops)
            return sum_tasks(metagrad.vjp(phis, losses, self.inner_lr, kl_op(ju), self.estimator, self.delta, ops))

        return old, lambda th: surrogate(adapted(th)), lambda th: kl_phi(adapted(th)), g, fvp
