"""Meta-gradient estimators over K differentiable inner steps, generic over parameter dicts.

The adapted parameters are ``phi_0 = theta`` and ``phi_k = phi_{k-1} - lr * grad L_k(phi_{k-1})``
for k = 1..K, where each inner loss ``L_k`` is a function of the parameters only (its data,
including any "old" log-probabilities, are constants). The Jacobian of the chain is
``J = prod_k (I - lr * H_k)`` with ``H_k`` the Hessian of ``L_k`` at ``phi_{k-1}``, so

* the meta-gradient of an outer loss ``L(phi_K)`` is ``J^T grad L(phi_K)`` (:func:`vjp`),
* a perturbation of theta moves phi_K by ``J u`` (:func:`jvp`; used for TRPO-MAML's
  Fisher-vector products through the inner steps).

The estimators differ only in how ``H_k v`` is formed (docs/protocol.md section 4):

* ``second-order``: exact Hessian-vector products by double backpropagation;
* ``first-order``: ``H_k v = 0`` (FO-MAML drops the inner step's Jacobian);
* ``hessian-free``: ``(grad L_k(phi + d u) - grad L_k(phi - d u)) / (2 d) * |v|`` with
  ``u = v / |v|`` and radius ``d = delta`` (HF-MAML, Fallah et al. 2020).

The functions work on any dict of tensors, so the supervised studies (the ``studies`` package) and
the RL agents share them. With stacked per-task parameters ``[T, ...]`` and a loss that is a
sum over tasks, every product is per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from agents.policy import Params  # the one definition of the alias

Loss = Callable[[Params], torch.Tensor]
ESTIMATORS = ("second-order", "first-order", "hessian-free")


def _leaf(params: Params) -> Params:
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def grad(loss: Loss, params: Params, create_graph: bool = False) -> Params:
    """grad L(params) as a dict (zeros for parameters the loss does not use)."""
    p = params if create_graph else _leaf(params)
    with torch.enable_grad():  # inner steps are needed even where the caller disabled autograd
        out = torch.autograd.grad(loss(p), tuple(p.values()), create_graph=create_graph, allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(v)) for (k, v), g in zip(p.items(), out)}


def dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def norm(a: Params) -> torch.Tensor:
    return torch.sqrt(dot(a, a))


def axpy(alpha: float | torch.Tensor, x: Params, y: Params) -> Params:
    """alpha * x + y."""
    return {k: alpha * x[k] + y[k] for k in y}


def hvp(loss: Loss, params: Params, v: Params, estimator: str, delta: float) -> Params:
    """The estimator's H v, with H the Hessian of ``loss`` at ``params``."""
    if estimator == "first-order":
        return {k: torch.zeros_like(x) for k, x in v.items()}
    if estimator == "second-order":
        p = _leaf(params)
        with torch.enable_grad():
            g = torch.autograd.grad(loss(p), tuple(p.values()), create_graph=True)
            out = torch.autograd.grad(sum((gi * v[k]).sum() for gi, k in zip(g, p)), tuple(p.values()), allow_unused=True)
        return {k: (o.detach() if o is not None else torch.zeros_like(x)) for (k, x), o in zip(p.items(), out)}
    if estimator == "hessian-free":
        n = norm(v)
        if float(n) == 0.0:
            return {k: torch.zeros_like(x) for k, x in v.items()}
        u = {k: x / n for k, x in v.items()}
        gp = grad(loss, axpy(delta, u, {k: x.detach() for k, x in params.items()}))
        gm = grad(loss, axpy(-delta, u, {k: x.detach() for k, x in params.items()}))
        return {k: (gp[k] - gm[k]) * (n / (2 * delta)) for k in gp}
    raise ValueError(f"unknown meta-gradient estimator {estimator!r} (known: {', '.join(ESTIMATORS)})")


def inner_chain(theta: Params, inner_losses: Sequence[Loss], lr: float) -> list[Params]:
    """[phi_0 = theta, phi_1, ..., phi_K] (detached values)."""
    phis = [{k: v.detach() for k, v in theta.items()}]
    for loss in inner_losses:
        g = grad(loss, phis[-1])
        phis.append({k: phis[-1][k] - lr * g[k] for k in g})
    return phis


HvpOp = Callable[[Params], Params]


def hvp_operator(loss: Loss, params: Params, estimator: str, delta: float) -> HvpOp:
    """v -> the estimator's H v at fixed ``params``, for many v.

    For the exact estimator the first backward pass (with its graph) is built once and every
    product is one more backward pass through it: TRPO-MAML's conjugate gradient takes many
    products at the same points."""
    if estimator != "second-order":
        return lambda v: hvp(loss, params, v, estimator, delta)
    p = _leaf(params)
    with torch.enable_grad():
        g = torch.autograd.grad(loss(p), tuple(p.values()), create_graph=True)

    def op(v: Params) -> Params:
        with torch.enable_grad():
            dot_gv = sum((gi * v[k]).sum() for gi, k in zip(g, p))
            out = torch.autograd.grad(dot_gv, tuple(p.values()), retain_graph=True, allow_unused=True)
        return {k: (o.detach() if o is not None else torch.zeros_like(x)) for (k, x), o in zip(p.items(), out)}

    return op


def chain_operators(phis: Sequence[Params], inner_losses: Sequence[Loss], estimator: str, delta: float) -> list[HvpOp]:
    """One H_k operator per inner step, at phi_{k-1}."""
    return [hvp_operator(loss, phis[k], estimator, delta) for k, loss in enumerate(inner_losses)]


def vjp(phis: Sequence[Params], inner_losses: Sequence[Loss], lr: float, v: Params, estimator: str, delta: float,
        ops: Sequence[HvpOp] | None = None) -> Params:
    """J^T v: pull a vector at phi_K back to theta (phi_0) through the inner steps."""
    for k in range(len(inner_losses) - 1, -1, -1):
        hv = ops[k](v) if ops is not None else hvp(inner_losses[k], phis[k], v, estimator, delta)
        v = {name: v[name] - lr * hv[name] for name in v}
    return v


def jvp(phis: Sequence[Params], inner_losses: Sequence[Loss], lr: float, u: Params, estimator: str, delta: float,
        ops: Sequence[HvpOp] | None = None) -> Params:
    """J u: push a perturbation of theta forward to phi_K (H_k symmetric: the same products)."""
    for k in range(len(inner_losses)):
        hu = ops[k](u) if ops is not None else hvp(inner_losses[k], phis[k], u, estimator, delta)
        u = {name: u[name] - lr * hu[name] for name in u}
    return u


def meta_gradient(
    theta: Params, inner_losses: Sequence[Loss], lr: float, outer_loss: Loss, estimator: str = "second-order",
    delta: float = 1e-4,
) -> tuple[Params, list[Params]]:
    """The estimator's gradient of ``outer_loss(phi_K(theta))`` w.r.t. theta, and the chain.

    For the exact estimator this is one autograd pass through the differentiable inner steps
    (the same quantity as the J^T recursion, one forward and one backward cheaper per call)."""
    if estimator == "second-order":
        p = _leaf(theta)
        phis = [{k: v.detach() for k, v in p.items()}]
        with torch.enable_grad():
            phi = p
            for loss in inner_losses:
                gk = torch.autograd.grad(loss(phi), tuple(phi.values()), create_graph=True)
                phi = {k: v - lr * gi for (k, v), gi in zip(phi.items(), gk)}
                phis.append({k: v.detach() for k, v in phi.items()})
            g = torch.autograd.grad(outer_loss(phi), tuple(p.values()), allow_unused=True)
        return {k: (gi.detach() if gi is not None else torch.zeros_like(v)) for (k, v), gi in zip(p.items(), g)}, phis
    phis = inner_chain(theta, inner_losses, lr)
    g_out = grad(outer_loss, phis[-1])
    return vjp(phis, inner_losses, lr, g_out, estimator, delta), phis


def adapted_with_graph(theta: Params, inner_losses: Sequence[Loss], lr: float) -> Params:
    """phi_K(theta) with the full autograd graph (exact second order): a reference for tests
    and a convenient way to differentiate simple objectives end to end."""
    phi = theta
    for loss in inner_losses:
        g = torch.autograd.grad(loss(phi), tuple(phi.values()), create_graph=True)
        phi = {k: v - lr * gi for (k, v), gi in zip(phi.items(), g)}
    return phi
