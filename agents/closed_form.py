"""Closed-form derivatives of the Gaussian tanh-MLP policy (agents/policy.py) at a fixed point,
for the MAML learners' ``impl="analytic"`` and ``impl="fused"`` (agents/maml.py).

TRPO-MAML's conjugate gradient takes about eleven Fisher-vector products per iteration, all
at the same parameters: ``J^T F J v`` with ``J = prod_k (I - lr H_k)`` the Jacobian of the
inner steps (``H_k`` the Hessian of the k-th inner loss) and ``F`` the Hessian of the mean
KL(pi_old-adapted || pi_adapted) on the post-adaptation episodes, taken at the old adapted
policy. Autograd forms each product by double backpropagation through retained graphs.
Here the same products are written out for the policy's architecture, with everything that
does not depend on the vector computed once:

* :class:`MLPAt` keeps the forward pass (inputs, tanh outputs and their derivatives) at
  fixed stacked parameters; ``jvp`` pushes a parameter tangent to the mean (the R-operator),
  ``vjp`` pulls a cotangent on the mean back to the parameters.
* :class:`LossAt` is a loss ``sum_{t,n} w_{tn} f(log pi(a_{tn} | s_{tn}))`` with ``f(l) = l``
  (TRPO-MAML's log-likelihood inner loss, weights ``-mask A / n_t``) or
  ``f(l) = exp(l - l_old)`` (likelihood ratio: ProMP's inner loss and TRPO-MAML's
  surrogate). It keeps the backward pass too (the deltas of every layer) and gives the
  gradient and exact Hessian-vector products: tangent forward, then the tangent of the
  backward pass (second-order terms of tanh included).
* :func:`kl_fisher_vp`: the Hessian of ``sum_t c_t task_mean(KL(pi_old || pi))`` at
  ``pi = pi_old``. There the KL's gradient with respect to the mean and log-std vanishes
  (exactly, since both policies are the same tensors), so its Hessian with respect to the
  parameters is ``Jmu^T diag(kw e^{-2 s}) Jmu`` plus ``2 sum_n kw`` on the log-std: one
  tangent forward and one backward pass, no second derivatives of the network.

* :func:`kl_cotangents`: the gradient of a weighted KL(pi_old || pi) with respect to the mean
  and log-std of ``pi`` (ProMP's KL penalty; :meth:`LossAt.hvp` takes it as an extra
  cotangent, so the penalty's gradient shares the backward pass of the inner step's product).

All shapes are stacked over tasks: parameters ``W_i [T, out, in]``, ``b_i [T, out]``,
``log_std [T, act]``; data ``[T, N, ...]``. The tests (tests/test_closed_form.py) check every
product against autograd in float64 and against central finite differences.
"""

from __future__ import annotations

import torch

from agents.policy import GaussianMLPPolicy, Params


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def _with_ones(h: torch.Tensor) -> torch.Tensor:
    """[T, N, k] -> [T, N, k + 1] with a last column of ones (a layer's bias as one more weight)."""
    return torch.cat([h, torch.ones(*h.shape[:-1], 1, dtype=h.dtype)], -1)


def _wb(u: Params, i: int) -> torch.Tensor:
    """Layer i's weights and bias of a stacked parameter dict as one [T, out, in + 1] matrix."""
    return torch.cat([u[f"W{i}"], u[f"b{i}"].unsqueeze(-1)], -1)


def weight_cotangent(g: torch.Tensor, h: torch.Tensor, transposed: bool, extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``g^T h`` [T, out, in + 1] (a layer's weight-and-bias cotangent from the cotangent ``g``
    [T, N, out] of its output and its input ``h`` [T, N, in + 1] with the column of ones), plus
    ``extra = (a, b)``'s ``a^T b`` [T, out, in] on the weights. ``transposed`` (the fast path's
    hidden layers, ``out`` the hidden width): formed as ``(h^T g)^T``, whose MKL kernel ran
    1.1-1.6x faster on the paper's shapes (scripts/bench_closed_form.py). It gave the same bits
    there, but not at the toy's shapes (PointGoal: TRPO-MAML's results changed), so the exact
    path keeps ``g^T h``; so does the output layer (``out`` = the action dimension), where that
    order is the faster one."""
    if not transposed:
        dw = torch.bmm(_t(g), h)
        if extra is not None:
            dw[..., :-1].baddbmm_(_t(extra[0]), extra[1])
        return dw
    dw = torch.bmm(_t(h), g)
    if extra is not None:
        dw[:, :-1].baddbmm_(_t(extra[1]), extra[0])
    return _t(dw)


def out_layer(w: torch.Tensor, h: torch.Tensor, b: torch.Tensor | None = None,
              extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``h w^T (+ b) (+ extra[1] extra[0]^T)`` [T, N, out] for a narrow output layer (out = the
    action dimension), formed as ``(w h^T)^T``: MKL's ``[N, k] x [k, 6]`` kernel ran at about a
    fifth of its ``[6, k] x [k, N]`` rate on the paper's shapes. Equal to the other order to
    float rounding, not bit for bit (the fast path of :class:`MLPAt` only)."""
    z = torch.bmm(w, _t(h)) if b is None else torch.baddbmm(b.unsqueeze(-1), w, _t(h))
    if extra is not None:
        z.baddbmm_(extra[0], _t(extra[1]))
    return _t(z).contiguous()


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """tanh in place as ``2 sigmoid(2x) - 1``: about 2.5x faster than torch.tanh on this CPU
    build (AVX2; torch.tanh is near correctly rounded and costs twice a 64 x 64 layer's product)
    with an absolute error below 2e-7 in float32 and 4e-16 in float64
    (tests/test_closed_form.py)."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


class MLPAt:
    """The policy's mean network at fixed stacked parameters on fixed observations [T, N, d]."""

    def __init__(self, policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor, fast: bool = False):
        """``fast``: the forward pass, :meth:`jvp`'s output layer and the weight cotangents of
        :meth:`vjp` and :meth:`LossAt.hvp` by the faster operations of :func:`tanh_`,
        :func:`out_layer` and :func:`weight_cotangent`, equal to the exact path's to float
        rounding; without it, the same operations as GaussianMLPPolicy.mean (bit-identical to
        them) and as before the fast path existed."""
        self.policy = policy
        self.n = policy.n_layers
        self.fast = fast
        self.W = [params[f"W{i}"].detach() for i in range(self.n)]
        self.log_std = params["log_std"].detach()
        h = obs.reshape(obs.shape[0], -1, obs.shape[-1])
        self.h = [_with_ones(h)]  # h[i]: input of layer i (h[0] the observations), with a column of ones
        self.d: list[torch.Tensor | None] = [None]  # d[i] = 1 - tanh^2 of hidden output i
        with torch.no_grad():
            for i in range(self.n):
                b = params[f"b{i}"].detach()
                if i < self.n - 1:
                    h = torch.baddbmm(b.unsqueeze(1), h, _t(self.W[i]))
                    h = tanh_(h) if fast else torch.tanh(h)
                    self.h.append(_with_ones(h))
                    self.d.append(torch.mul(h, h).neg_().add_(1))  # 1 - h^2 (the same bits, one temporary fewer)
                elif fast:
                    h = out_layer(self.W[i], h, b)
                else:
                    h = torch.baddbmm(b.unsqueeze(1), h, _t(self.W[i]))
        self.mu = h

    def hidden(self, i: int) -> torch.Tensor:
        """Output of hidden layer i (without the column of ones)."""
        return self.h[i][..., :-1]

    def jvp(self, u: Params) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Tangent of the mean for a parameter tangent ``u`` (stacked), and of each hidden
        layer's output (``dh[0] = None``: the inputs do not move)."""
        dh: list[torch.Tensor | None] = [None]
        z = None
        for i in range(self.n):
            if self.fast and i == self.n - 1:
                z = out_layer(_wb(u, i), self.h[i], None, (self.W[i], dh[i]) if i > 0 else None)
                break
            z = torch.bmm(self.h[i], _t(_wb(u, i)))
            if i > 0:
                z.baddbmm_(dh[i], _t(self.W[i]))
            if i < self.n - 1:
                dh.append(z.mul_(self.d[i + 1]))
        return z, dh

    @staticmethod
    def _split(out: Params, i: int, wb: torch.Tensor) -> None:
        out[f"W{i}"], out[f"b{i}"] = wb[..., :-1], wb[..., -1]

    def vjp(self, bar_mu: torch.Tensor, keep: bool = False) -> tuple[Params, list[torch.Tensor], list[torch.Tensor | None]]:
        """Parameter cotangent (no log_std) of a cotangent on the mean [T, N, act]. With
        ``keep``, also the deltas ``delta[i]`` (cotangent of layer i's pre-activation output,
        ``delta[n]`` = ``bar_mu``) and ``bar_h[i]`` (cotangent of hidden output i)."""
        out: Params = {}
        delta: list[torch.Tensor] = [bar_mu] * (self.n + 1)
        bar_h: list[torch.Tensor | None] = [None] * self.n
        g = bar_mu
        for i in range(self.n - 1, -1, -1):
            self._split(out, i, weight_cotangent(g, self.h[i], self.fast and i < self.n - 1))
            if i > 0:
                bh = torch.bmm(g, self.W[i])
                if keep:
                    bar_h[i] = bh
                    g = bh * self.d[i]
                    delta[i] = g
                else:
                    g = bh.mul_(self.d[i])
        return out, delta, bar_h


class LossAt:
    """``L = sum_{t,n} weight[t, n] f(log pi(actions | obs))`` at fixed stacked ``params``:
    ``f(l) = l`` without ``logp_old``, ``f(l) = exp(l - logp_old)`` with it. Its gradient
    (:attr:`grad`) and exact Hessian-vector products (:meth:`hvp`)."""

    def __init__(self, policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor, actions: torch.Tensor,
                 weight: torch.Tensor, logp_old: torch.Tensor | None = None, net: MLPAt | None = None,
                 second_order: bool = True, fast: bool = False):
        """``second_order=False``: the gradient only (no buffers kept for :meth:`hvp`). ``fast``:
        the forward pass of :class:`MLPAt` ``fast`` (when no ``net`` is given)."""
        self.net = net if net is not None else MLPAt(policy, params, obs, fast)
        net = self.net
        with torch.no_grad():
            self.e2s = torch.exp(-2 * net.log_std).unsqueeze(1)  # [T, 1, act]
            diff = actions.reshape(net.mu.shape) - net.mu
            self.gm = diff * self.e2s  # d log pi / d mu
            self.gs = diff * self.gm - 1  # d log pi / d log_std
            if logp_old is None:
                self.f1, self.f2 = weight.reshape(net.mu.shape[:2]), None
            else:
                logp = policy.log_prob_of_mean({"log_std": net.log_std}, net.mu, actions.reshape(net.mu.shape))
                self.f1 = weight.reshape(logp.shape) * torch.exp(logp - logp_old.reshape(logp.shape))
                self.f2 = self.f1  # f'' = f' for the ratio
            g_mu = self.f1.unsqueeze(-1) * self.gm
            grad, self.delta, bar_h = net.vjp(g_mu, keep=second_order)
            grad["log_std"] = (self.f1.unsqueeze(-1) * self.gs).sum(1)
            self.grad = {k: grad[k] for k in params}
            # d(delta_i)/d(h_i) through tanh'': e_i = -2 bar_h_i * h_i
            self.e = [None] + [torch.mul(bar_h[i], net.hidden(i)).mul_(-2) for i in range(1, net.n)] if second_order else None

    def hvp(self, u: Params, extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> Params:
        """H u, with H the Hessian of L at the fixed parameters (per task: u stacked). With
        ``extra = (c_mu, c_s)``, H u plus the parameter cotangent of a cotangent ``c_mu`` on
        the mean [T, N, act] and ``c_s`` on the log-std [T, act] (the backward pass of H u
        is linear in its cotangent on the mean, so the extra term shares it)."""
        net = self.net
        with torch.no_grad():
            dmu, dh = net.jvp(u)
            ds = u["log_std"].unsqueeze(1)  # [T, 1, act]
            # tangents of d log pi / d mu and d log pi / d log_std
            dgm = -self.e2s * dmu - 2 * self.gm * ds
            dgs = -2 * self.gm * dmu - 2 * (self.gs + 1) * ds
            f1 = self.f1.unsqueeze(-1)
            bar = f1 * dgm
            bar_s = f1 * dgs
            if self.f2 is not None:
                dl = ((self.gm * dmu).sum(-1) + (self.gs * ds).sum(-1)).unsqueeze(-1) * self.f2.unsqueeze(-1)
                bar = bar + dl * self.gm
                bar_s = bar_s + dl * self.gs
            if extra is not None:
                bar = bar + extra[0]
            out: Params = {"log_std": bar_s.sum(1) if extra is None else bar_s.sum(1) + extra[1]}
            g = bar
            for i in range(net.n - 1, -1, -1):
                net._split(out, i, weight_cotangent(g, net.h[i], net.fast and i < net.n - 1, (self.delta[i + 1], dh[i]) if i > 0 else None))
                if i > 0:
                    bh = torch.bmm(g, net.W[i]).baddbmm_(self.delta[i + 1], u[f"W{i}"])
                    g = bh.mul_(net.d[i]).addcmul_(self.e[i], dh[i])
        return {k: out[k] for k in u}  # the caller's key order (flat() concatenates in it)


def kl_fisher_vp(net: MLPAt, kl_weight: torch.Tensor, u: Params) -> Params:
    """Hessian-vector product of ``sum_{t,n} kl_weight[t, n] KL(pi_p(.|s) || pi(.|s))`` with
    respect to the parameters of ``pi`` at ``pi = pi_p`` (``net``'s parameters)."""
    with torch.no_grad():
        dmu, _ = net.jvp(u)
        e2s = torch.exp(-2 * net.log_std).unsqueeze(1)
        w = kl_weight.reshape(dmu.shape[:2])
        out, _, _ = net.vjp(w.unsqueeze(-1) * e2s * dmu)
        out["log_std"] = 2 * w.sum(1, keepdim=True) * u["log_std"]
    return {k: out[k] for k in u}


def kl_cotangents(policy: GaussianMLPPolicy, log_std_old: torch.Tensor, mu_old: torch.Tensor, log_std: torch.Tensor,
                  mu: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``sum_{t,n} weight[t, n] KL(pi_old(.|s_tn) || pi(.|s_tn))`` with respect to
    the mean of ``pi`` [T, N, act] and its log-std [T, act] (``log_std_old`` shared [act] or
    stacked [T, act])."""
    with torch.no_grad():
        ls0 = log_std_old if log_std_old.dim() == 2 else log_std_old.unsqueeze(0)
        inv_var = torch.exp(-2 * log_std).unsqueeze(1)  # [T, 1, act]
        w = weight.reshape(mu.shape[:2]).unsqueeze(-1)
        diff = mu - mu_old
        c_mu = w * diff * inv_var
        c_s = (w * (1 - (torch.exp(2 * ls0).unsqueeze(1) + diff * diff) * inv_var)).sum(1)
    return c_mu, c_s
