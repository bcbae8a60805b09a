"""The outer learners of agents/core.py against oracles: conjugate gradient vs
np.linalg.solve, the PPO clip's gradient at its bounds, TRPO's constraint and line search,
and the Fisher-vector product vs torch.autograd.functional.hessian (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from agents import metagrad
from agents.core import conjugate_gradient, fvp_of_kl, ppo_clip_objective, trpo_step
from agents.policy import GaussianMLPPolicy, flat, unflat
from rlbench.settings import AlgoConfig

F64 = torch.float64
POLICY = GaussianMLPPolicy(obs_dim=2, act_dim=1, hidden_sizes=(3,), init_std=1.0, action_scale=10.0)


# -- conjugate gradient --------------------------------------------------------------------------


@pytest.mark.parametrize("n,seed", [(3, 0), (8, 1), (20, 2)])
def test_conjugate_gradient_solves_spd_systems(n, seed):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    A = M @ M.T + 0.5 * np.eye(n)  # SPD, moderately conditioned
    b = rng.normal(size=n)
    At = torch.as_tensor(A)
    x = conjugate_gradient(lambda v: At @ v, torch.as_tensor(b), iters=4 * n, tol=1e-30)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(A, b), rtol=1e-7, atol=1e-9)


def test_conjugate_gradient_is_exact_after_n_iterations_on_a_diagonal_system():
    d = torch.tensor([1.0, 2.0, 5.0, 10.0], dtype=F64)
    b = torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=F64)
    x = conjugate_gradient(lambda v: d * v, b, iters=4, tol=0.0)
    torch.testing.assert_close(x, b / d, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,cond,rtol", [(torch.float64, 1e3, 1e-12), (torch.float32, 1e5, 1e-5)])
def test_conjugate_gradient_product_is_the_matrix_times_the_solution(dtype, cond, rtol):
    """with_product: the same x (bit-identical) and A x from the loop's own products, also
    after fewer iterations than the dimension on an ill-conditioned system (TRPO's 10 steps)."""
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    A = torch.as_tensor(Q @ np.diag(np.geomspace(1.0, 1.0 / cond, 40)) @ Q.T, dtype=dtype)
    b = torch.as_tensor(rng.normal(size=40), dtype=dtype)
    for iters in (1, 5, 10):
        x0 = conjugate_gradient(lambda v: A @ v, b, iters=iters)
        x, ax = conjugate_gradient(lambda v: A @ v, b, iters=iters, with_product=True)
        assert torch.equal(x, x0)
        exact = (A.double() @ x.double())
        assert float((ax.double() - exact).norm()) <= rtol * float(exact.norm())
        assert float(x @ ax) == pytest.approx(float(x @ (A @ x)), rel=10 * rtol)


# -- PPO clip ---------------------------------------------------------------------------------------


def test_ppo_clip_values_and_gradients_at_the_bounds():
    c = 0.3
    # (ratio, advantage, expected objective, expected d objective / d ratio)
    cases = [
        (1.0, 2.0, 2.0, 2.0),  # inside the region: r A
        (0.9, -1.0, -0.9, -1.0),
        (1.5, 2.0, 1.3 * 2.0, 0.0),  # A > 0, r > 1 + c: clipped, no incentive to grow r
        (0.5, -2.0, 0.7 * -2.0, 0.0),  # A < 0, r < 1 - c: clipped, no incentive to shrink r
        (0.5, 2.0, 0.5 * 2.0, 2.0),  # A > 0, r < 1 - c: pessimistic bound is the unclipped term
        (1.5, -2.0, 1.5 * -2.0, -2.0),  # A < 0, r > 1 + c: unclipped term, gradient pushes r down
    ]
    r = torch.tensor([x[0] for x in cases], dtype=F64, requires_grad=True)
    adv = torch.tensor([x[1] for x in cases], dtype=F64)
    obj = ppo_clip_objective(r, adv, c)
    torch.testing.assert_close(obj.detach(), torch.tensor([x[2] for x in cases], dtype=F64))
    (g,) = torch.autograd.grad(obj.sum(), r)
    torch.testing.assert_close(g, torch.tensor([x[3] for x in cases], dtype=F64))


def test_ppo_clip_gradient_wrt_parameters_vanishes_when_all_samples_are_clipped():
    """Every sample already pushed past the bound in the direction its advantage favours:
    the clipped objective has zero gradient, so PPO stops moving the policy."""
    g = torch.Generator().manual_seed(0)
    p_old = POLICY.init_params(g, F64)
    obs = torch.randn(50, 2, generator=g, dtype=F64)
    acts = 3 * torch.randn(50, 1, generator=g, dtype=F64)
    p_new = {k: v.detach().clone().requires_grad_(True) for k, v in p_old.items()}
    with torch.no_grad():
        p_new["b1"].add_(2.0)  # shift the mean
    ratio = torch.exp(POLICY.log_prob(p_new, obs, acts) - POLICY.log_prob(p_old, obs, acts).detach())
    adv = torch.where(ratio > 1, 1.0, -1.0).detach()
    keep = ((ratio > 1.3) | (ratio < 0.7)).detach()
    assert keep.sum() > 5
    obj = (ppo_clip_objective(ratio, adv, 0.3) * keep).sum()
    grads = torch.autograd.grad(obj, tuple(p_new.values()), allow_unused=True)
    for gr in grads:
        assert gr is None or torch.count_nonzero(gr) == 0


# -- a tiny policy problem shared by the TRPO and Fisher tests ------------------------------------------


def policy_problem(seed: int = 0, n: int = 60):
    g = torch.Generator().manual_seed(seed)
    old = {k: v.detach() for k, v in POLICY.init_params(g, F64).items()}
    with torch.no_grad():
        for v in old.values():
            v.add_(0.3 * torch.randn(v.shape, generator=g, dtype=F64))
    obs = torch.randn(n, 2, generator=g, dtype=F64)
    acts = POLICY.mean(old, obs).detach() + torch.exp(old["log_std"]) * torch.randn(n, 1, generator=g, dtype=F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    logp_old = POLICY.log_prob(old, obs, acts).detach()

    def loss_fn(p):
        return -(torch.exp(POLICY.log_prob(p, obs, acts) - logp_old) * adv).mean()

    def kl_fn(p):
        return POLICY.kl(old, p, obs).mean()

    return old, obs, loss_fn, kl_fn


def ref_mean_kl(p0, p1, obs):
    def dist(p):
        return Independent(Normal(POLICY.mean(p, obs), p["log_std"].exp().expand(obs.shape[0], 1)), 1)

    return float(kl_divergence(dist(p0), dist(p1)).mean())


@pytest.mark.parametrize("max_kl", [1e-3, 1e-2, 0.1])
def test_trpo_step_respects_the_kl_constraint_and_lowers_the_loss(max_kl):
    old, obs, loss_fn, kl_fn = policy_problem()
    before = {k: v.clone() for k, v in old.items()}
    cfg = AlgoConfig(max_kl=max_kl, cg_iters=100)  # enough iterations to solve exactly (14 params)
    res = trpo_step(old, loss_fn, kl_fn, metagrad.grad(loss_fn, old), fvp_of_kl(kl_fn, old), cfg, max_kl)
    assert res.accepted
    for k in old:  # the input parameters are never modified
        assert torch.equal(old[k], before[k])
    kl = ref_mean_kl(old, res.params, obs)
    assert 0 < kl <= max_kl * (1 + 1e-9)
    with torch.no_grad():
        assert float(loss_fn(res.params)) < float(loss_fn(old))
    assert res.kl == pytest.approx(kl, rel=1e-9)
    # the step is along the natural gradient: the full step has quadratic-model KL = max_kl, and
    # the accepted step is that full step shrunk by backtrack_ratio ** backtracks
    n = flat(old).numel()
    Fm = torch.autograd.functional.hessian(lambda x: kl_fn(unflat(x, old)), flat(old)) + cfg.cg_damping * torch.eye(n, dtype=F64)
    gvec = flat(metagrad.grad(loss_fn, old))
    nat = -torch.linalg.solve(Fm, gvec)
    full = nat * torch.sqrt(2 * max_kl / (nat @ Fm @ nat))
    step = flat(res.params) - flat(old)
    cos = float(step @ full / (step.norm() * full.norm()))
    assert cos > 0.999
    np.testing.assert_allclose(float(step.norm()), float(full.norm()) * cfg.backtrack_ratio**res.backtracks, rtol=1e-2)


def test_trpo_step_makes_no_step_when_no_candidate_satisfies_the_constraint():
    old, _obs, loss_fn, kl_fn = policy_problem(1)
    before = {k: v.clone() for k, v in old.items()}
    cfg = AlgoConfig(max_backtracks=5)
    # KL that is never small enough
    res = trpo_step(old, loss_fn, lambda p: kl_fn(p) + 1.0, metagrad.grad(loss_fn, old), fvp_of_kl(kl_fn, old), cfg, 0.01)
    assert not res.accepted
    for k in old:
        assert torch.equal(res.params[k], before[k])
        assert torch.equal(old[k], before[k])
    # a gradient of the wrong sign: every candidate raises the loss
    wrong = {k: -v for k, v in metagrad.grad(loss_fn, old).items()}
    res = trpo_step(old, loss_fn, kl_fn, wrong, fvp_of_kl(kl_fn, old), cfg, 0.01)
    assert not res.accepted
    for k in old:
        assert torch.equal(res.params[k], before[k])
    assert res.loss_after == res.loss_before


# -- Fisher-vector products ------------------------------------------------------------------------------


def test_fvp_of_kl_equals_the_hessian_of_the_kl():
    old, _obs, _loss, kl_fn = policy_problem(2)
    n = flat(old).numel()
    H = torch.autograd.functional.hessian(lambda x: kl_fn(unflat(x, old)), flat(old))
    fvp = fvp_of_kl(kl_fn, old)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(n, generator=g, dtype=F64)
        torch.testing.assert_close(flat(fvp(unflat(v, old))), H @ v, rtol=1e-10, atol=1e-12)
    # at theta_old the Hessian of KL(old || .) is the Fisher matrix: symmetric PSD
    torch.testing.assert_close(H, H.T, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(H).min() > -1e-10
