"""Meta-gradient estimators (agents/metagrad.py) against oracles, in float64.

Two fixed problems, both with per-task stacked parameters and a loss that sums over tasks:

* a tiny Gaussian policy on synthetic TensorBatch data, with ProMP's and TRPO-MAML's inner
  losses (non-quadratic: exercises third derivatives);
* per-task linear regression (quadratic: the meta-gradient has a closed form in numpy).

Oracles: central finite differences of the meta-objective outer(phi_K(theta)), the closed
form, autograd through the whole chain, and Hessians from torch.autograd.functional.hessian.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from agents import metagrad
from agents.advantages import TensorBatch
from agents.core import inner_loss_fn, ppo_clip_objective
from agents.policy import GaussianMLPPolicy, expand_params, flat, stack_params, unflat

F64 = torch.float64
T = 2
POLICY = GaussianMLPPolicy(obs_dim=2, act_dim=1, hidden_sizes=(3,), init_std=1.0, action_scale=10.0)


# -- problem 1: a tiny policy ---------------------------------------------------------------------


def make_theta(seed: int = 0, policy: GaussianMLPPolicy = POLICY, n_tasks: int = T) -> dict[str, torch.Tensor]:
    """Random stacked [n_tasks, ...] float64 parameters (perturbed initialisations)."""
    g = torch.Generator().manual_seed(seed)
    ps = []
    for _ in range(n_tasks):
        p = {k: v.detach() for k, v in policy.init_params(g, F64).items()}
        for v in p.values():
            v.add_(0.3 * torch.randn(v.shape, generator=g, dtype=F64))
        ps.append(p)
    return stack_params(ps)


def make_tb(theta, seed: int, n: int = 30) -> TensorBatch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, n, 2, generator=g, dtype=F64)
    acts = POLICY.mean(theta, obs) + 1.5 * torch.randn(T, n, 1, generator=g, dtype=F64)
    adv = torch.randn(T, n, generator=g, dtype=F64)
    mask = (torch.rand(T, n, generator=g, dtype=F64) < 0.8).to(F64)  # some padding
    logp_old = POLICY.log_prob(theta, obs, acts).detach()
    return TensorBatch(obs.detach(), acts.detach(), adv, mask, logp_old)


def surrogate(tb: TensorBatch):
    """A smooth outer loss: TRPO-MAML's post-adaptation surrogate -mean(ratio * A)."""

    def loss(phi):
        ratio = torch.exp(POLICY.log_prob(phi, tb.obs, tb.actions) - tb.logp_old)
        return -tb.task_mean(ratio * tb.advantages).mean()

    return loss


def policy_problem(kind: str, K: int, seed: int = 0):
    theta = make_theta(seed)
    inner = [make_tb(theta, seed + 10 + k) for k in range(K)]
    losses = [inner_loss_fn(kind, POLICY, tb) for tb in inner]
    outer = surrogate(make_tb(theta, seed + 100))
    return theta, losses, outer


# -- problem 2: per-task linear regression ------------------------------------------------------------


def regression_data(K: int, seed: int = 0, p: int = 3, n: int = 8):
    rng = np.random.default_rng(seed)
    sets = [(rng.normal(size=(T, n, p)), rng.normal(size=(T, n))) for _ in range(K + 1)]  # K inner + outer
    theta = {"w": torch.as_tensor(rng.normal(size=(T, p))), "b": torch.as_tensor(rng.normal(size=T))}
    return theta, sets


def mse(X, y):
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)

    def loss(q):
        pred = torch.einsum("tnp,tp->tn", Xt, q["w"]) + q["b"][:, None]
        return ((pred - yt) ** 2).mean(-1).sum()

    return loss


def regression_closed_form(theta, sets, lr: float) -> np.ndarray:
    """Per task z = [w; b], Z = [X, 1]: grad = 2/n Z^T (Z z - y), H = 2/n Z^T Z,
    phi_k = phi_{k-1} - lr grad_k, meta-gradient = (I - lr H_1) ... (I - lr H_K) grad_out(phi_K).
    Returns [T, p + 1]."""
    K = len(sets) - 1
    out = []
    for t in range(T):
        z = np.concatenate([theta["w"][t].numpy(), [float(theta["b"][t])]])
        Zs = [np.hstack([X[t], np.ones((X.shape[1], 1))]) for X, _ in sets]
        ys = [y[t] for _, y in sets]
        n = Zs[0].shape[0]
        Hs = [2 / n * Z.T @ Z for Z in Zs]
        for k in range(K):
            z = z - lr * 2 / n * Zs[k].T @ (Zs[k] @ z - ys[k])
        g = 2 / n * Zs[K].T @ (Zs[K] @ z - ys[K])
        for k in range(K - 1, -1, -1):
            g = g - lr * Hs[k] @ g
        out.append(g)
    return np.array(out)


def regression_problem(K: int, seed: int = 0):
    theta, sets = regression_data(K, seed)
    return theta, [mse(*s) for s in sets[:K]], mse(*sets[K]), sets


# -- oracles ---------------------------------------------------------------------------------------------


def meta_objective(theta, losses, lr, outer) -> float:
    return float(outer(metagrad.inner_chain(theta, losses, lr)[-1]))


def fd_gradient(f, theta, eps: float = 1e-4) -> torch.Tensor:
    """Central differences with one Richardson extrapolation step: (4 D(eps/2) - D(eps)) / 3
    has O(eps^4) truncation error (the log-std coordinates have large third derivatives)."""
    x0 = flat(theta).detach()
    g = torch.zeros_like(x0)
    for i in range(x0.numel()):
        d = []
        for h in (eps, eps / 2):
            e = torch.zeros_like(x0)
            e[i] = h
            d.append((f(unflat(x0 + e, theta)) - f(unflat(x0 - e, theta))) / (2 * h))
        g[i] = (4 * d[1] - d[0]) / 3
    return g


def hessian(loss, at) -> torch.Tensor:
    return torch.autograd.functional.hessian(lambda x: loss(unflat(x, at)), flat(at).detach())


LR = 0.1


# -- second order vs finite differences, closed form and autograd ----------------------------------------------


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("kind", ["promp", "trpo-maml"])
def test_second_order_matches_finite_differences_policy(kind, K):
    theta, losses, outer = policy_problem(kind, K)
    g, phis = metagrad.meta_gradient(theta, losses, LR, outer, "second-order")
    assert len(phis) == K + 1
    fd = fd_gradient(lambda th: meta_objective(th, losses, LR, outer), theta)
    torch.testing.assert_close(flat(g), fd, rtol=1e-6, atol=1e-8)
    # the adaptation is not trivial: the second-order term matters at this lr
    g_fo, _ = metagrad.meta_gradient(theta, losses, LR, outer, "first-order")
    assert float((flat(g_fo) - fd).norm()) > 1e-3 * float(fd.norm())


@pytest.mark.parametrize("K", [1, 2])
def test_second_order_matches_closed_form_and_fd_regression(K):
    theta, losses, outer, sets = regression_problem(K)
    g, _ = metagrad.meta_gradient(theta, losses, LR, outer, "second-order")
    cf = regression_closed_form(theta, sets, LR)
    np.testing.assert_allclose(g["w"].numpy(), cf[:, :-1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g["b"].numpy(), cf[:, -1], rtol=1e-10, atol=1e-12)
    fd = fd_gradient(lambda th: meta_objective(th, losses, LR, outer), theta)
    torch.testing.assert_close(flat(g), fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("problem", ["policy", "regression"])
def test_second_order_equals_autograd_through_adapted_with_graph(problem, K):
    if problem == "policy":
        theta, losses, outer = policy_problem("promp", K, seed=3)
    else:
        theta, losses, outer, _ = regression_problem(K, seed=3)
    leaf = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
    phi = metagrad.adapted_with_graph(leaf, losses, LR)
    ref = torch.autograd.grad(outer(phi), tuple(leaf.values()))
    g, phis = metagrad.meta_gradient(theta, losses, LR, outer, "second-order")
    for (_k, gk), r in zip(g.items(), ref):
        torch.testing.assert_close(gk, r, rtol=1e-10, atol=1e-12)
    for k in phi:
        torch.testing.assert_close(phis[-1][k], phi[k].detach(), rtol=1e-12, atol=1e-14)


def test_shared_theta_meta_gradient_is_the_sum_over_tasks():
    """MAML meta-parameters are shared; the agents expand them to [T, ...] and sum the
    per-task meta-gradients (the adjoint of the expansion). FD on the shared objective."""
    theta, losses, outer = policy_problem("promp", 1, seed=4)
    shared = {k: v[0].clone() for k, v in theta.items()}
    g, _ = metagrad.meta_gradient({k: v.clone() for k, v in expand_params(shared, T).items()}, losses, LR, outer)
    summed = {k: v.sum(0) for k, v in g.items()}
    fd = fd_gradient(lambda th: meta_objective(expand_params(th, T), losses, LR, outer), shared)
    torch.testing.assert_close(flat(summed), fd, rtol=1e-6, atol=1e-8)


def test_clipped_promp_outer_objective_matches_finite_differences():
    """ProMP's outer loss (mean over tasks of the clipped surrogate) away from the clip kinks."""
    theta, losses, _ = policy_problem("promp", 1, seed=5)
    post = make_tb(theta, 200)

    def outer(phi):
        ratio = torch.exp(POLICY.log_prob(phi, post.obs, post.actions) - post.logp_old)
        return -post.task_mean(ppo_clip_objective(ratio, post.advantages, 0.3)).mean()

    phi1 = metagrad.inner_chain(theta, losses, LR)[-1]
    ratio = torch.exp(POLICY.log_prob(phi1, post.obs, post.actions) - post.logp_old)
    assert float((ratio - 0.7).abs().min()) > 1e-3 and float((ratio - 1.3).abs().min()) > 1e-3
    g, _ = metagrad.meta_gradient(theta, losses, LR, outer)
    fd = fd_gradient(lambda th: meta_objective(th, losses, LR, outer), theta)
    torch.testing.assert_close(flat(g), fd, rtol=1e-5, atol=1e-7)


# -- first order: exactly the dropped term --------------------------------------------------------------------


def test_first_order_drops_exactly_the_inner_jacobian_term_k1():
    theta, losses, outer = policy_problem("promp", 1, seed=6)
    # independent chain: phi_1 = theta - lr * grad L1(theta) by plain autograd
    leaf = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    g1 = torch.autograd.grad(losses[0](leaf), tuple(leaf.values()))
    phi1 = {k: (leaf[k] - LR * gi).detach().requires_grad_(True) for k, gi in zip(leaf, g1)}
    g_out = flat(dict(zip(phi1, torch.autograd.grad(outer(phi1), tuple(phi1.values())))))
    H1 = hessian(losses[0], theta)
    so, _ = metagrad.meta_gradient(theta, losses, LR, outer, "second-order")
    fo, _ = metagrad.meta_gradient(theta, losses, LR, outer, "first-order")
    torch.testing.assert_close(flat(fo), g_out, rtol=1e-12, atol=1e-14)
    dropped = -LR * H1 @ g_out
    assert float(dropped.norm()) > 1e-3 * float(g_out.norm())
    torch.testing.assert_close(flat(so) - flat(fo), dropped, rtol=1e-9, atol=1e-12)


def test_first_order_drops_exactly_the_inner_jacobian_terms_k2():
    theta, losses, outer = policy_problem("trpo-maml", 2, seed=7)
    phis = metagrad.inner_chain(theta, losses, LR)
    g_out = flat(metagrad.grad(outer, phis[2]))
    H1, H2 = hessian(losses[0], phis[0]), hessian(losses[1], phis[1])
    eye = torch.eye(H1.shape[0], dtype=F64)
    so, _ = metagrad.meta_gradient(theta, losses, LR, outer, "second-order")
    fo, _ = metagrad.meta_gradient(theta, losses, LR, outer, "first-order")
    torch.testing.assert_close(flat(fo), g_out, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(flat(so), (eye - LR * H1) @ (eye - LR * H2) @ g_out, rtol=1e-9, atol=1e-12)


# -- Hessian-free: converges to second order like delta^2 ------------------------------------------------------------


def test_hessian_free_converges_to_second_order():
    theta, losses, outer = policy_problem("promp", 1, seed=8)
    so = flat(metagrad.meta_gradient(theta, losses, LR, outer, "second-order")[0])
    deltas = [1e-1, 10**-1.5, 1e-2, 10**-2.5]
    errs = [float((flat(metagrad.meta_gradient(theta, losses, LR, outer, "hessian-free", d)[0]) - so).norm()) for d in deltas]
    assert errs[0] > 1e-8 * float(so.norm())  # the estimator is not trivially exact here
    for a, b in itertools.pairwise(errs):
        # delta / sqrt(10) each time: a delta^2 error shrinks ~10x per step
        assert 4 < a / b < 25, errs
    # a small delta (before roundoff dominates) is very accurate
    hf = flat(metagrad.meta_gradient(theta, losses, LR, outer, "hessian-free", 1e-4)[0])
    assert float((hf - so).norm()) < 1e-6 * float(so.norm())


def test_hessian_free_is_exact_on_a_quadratic_inner_loss():
    theta, losses, outer, sets = regression_problem(2, seed=9)
    cf = regression_closed_form(theta, sets, LR)
    for d in (1.0, 1e-2):
        g, _ = metagrad.meta_gradient(theta, losses, LR, outer, "hessian-free", d)
        np.testing.assert_allclose(g["w"].numpy(), cf[:, :-1], rtol=1e-7, atol=1e-9)


# -- jvp / vjp ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("K", [1, 2])
def test_jvp_and_vjp_are_adjoint_and_match_finite_differences(K):
    theta, losses, _ = policy_problem("promp", K, seed=10)
    phis = metagrad.inner_chain(theta, losses, LR)
    g = torch.Generator().manual_seed(11)
    u = unflat(torch.randn(flat(theta).numel(), generator=g, dtype=F64), theta)
    v = unflat(torch.randn(flat(theta).numel(), generator=g, dtype=F64), theta)
    for est in ("second-order", "first-order"):
        ju = metagrad.jvp(phis, losses, LR, u, est, 0.0)
        jtv = metagrad.vjp(phis, losses, LR, v, est, 0.0)
        lhs, rhs = float(metagrad.dot(ju, v)), float(metagrad.dot(u, jtv))
        assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-12)
    # J u against a finite difference of the chain itself
    eps = 1e-5
    x0, uf = flat(theta), flat(u)
    plus = flat(metagrad.inner_chain(unflat(x0 + eps * uf, theta), losses, LR)[-1])
    minus = flat(metagrad.inner_chain(unflat(x0 - eps * uf, theta), losses, LR)[-1])
    ju = flat(metagrad.jvp(phis, losses, LR, u, "second-order", 0.0))
    torch.testing.assert_close(ju, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
    # first order: J = I
    torch.testing.assert_close(flat(metagrad.jvp(phis, losses, LR, u, "first-order", 0.0)), uf)


def test_unknown_estimator_is_rejected():
    theta, losses, outer = policy_problem("promp", 1)
    with pytest.raises(ValueError, match="unknown meta-gradient estimator"):
        metagrad.meta_gradient(theta, losses, LR, outer, "third-order")


def test_cached_hvp_operator_equals_hessian_products():
    """The graph-caching operator used by TRPO-MAML's conjugate gradient gives the exact H v
    (against torch.autograd.functional.hessian) for several v at the same point."""
    torch.manual_seed(3)
    a = torch.randn(4, 4, dtype=torch.float64)
    theta = {"w": torch.randn(4, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}

    def loss(p):
        return torch.tanh(a @ p["w"]).pow(3).sum() + (p["b"] ** 4).sum() + (p["w"][:2] * p["b"]).sum() ** 2

    def flat_loss(x):
        return loss({"w": x[:4], "b": x[4:]})

    x0 = torch.cat([theta["w"], theta["b"]])
    H = torch.autograd.functional.hessian(flat_loss, x0)
    op = metagrad.hvp_operator(loss, theta, "second-order", 0.0)
    for _ in range(3):
        v = torch.randn(6, dtype=torch.float64)
        hv = op({"w": v[:4], "b": v[4:]})
        assert torch.allclose(torch.cat([hv["w"], hv["b"]]), H @ v, atol=1e-10)
