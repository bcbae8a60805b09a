"""MAML variants on supervised problems: MAML vs FO-MAML vs HF-MAML, and multi-step inner loops.

Two small studies that check what the theory of gradient-based meta-learning predicts. Both
use the project's meta-gradient estimators (:mod:`agents.metagrad`) unchanged, so they also
exercise the code the RL agents use.

**1. Rank-one matrix factorisation** (Fallah, Mokhtari & Ozdaglar, "On the Convergence Theory
of Gradient-Based Model-Agnostic Meta-Learning Algorithms", AISTATS 2020, numerical section).
Task i has the loss ::

    f_i(x) = 1/4 ||x x^T - g_i g_i^T||_F^2 = 1/4 (|x|^4 - 2 (g_i.x)^2 + |g_i|^4),   x, g_i in R^d,
    grad f_i(x) = |x|^2 x - (g_i.x) g_i,     Hessian f_i(x) = |x|^2 I + 2 x x^T - g_i g_i^T,

and the MAML objective is ``F(x) = E_i f_i(x - alpha grad f_i(x))`` with true gradient
``E_i (I - alpha H_i(x)) grad f_i(x - alpha grad f_i(x))``. The paper's result: MAML and
HF-MAML (Hessian-vector products by gradient differences) reach any accuracy in
``|grad F|``, FO-MAML (drops ``alpha H_i``) stalls at a level set by the dissimilarity of the
tasks, ``alpha |E_i H_i grad f_i(x_i')|``. We run the three estimators with

* exact gradients: the task distribution is uniform over a fixed set of ``n_tasks`` tasks and
  every iteration averages over all of them;
* stochastic gradients: each iteration samples ``batch_tasks`` tasks and, as in the paper's
  stochastic algorithms, independent noisy samples for the inner gradient (D_in), the outer
  gradient (D_o) and the Hessian (D_h). A "sample" of task i is the unbiased random loss
  ``f_i(x) + xi.x`` (gradient noise ``xi ~ N(0, grad_noise^2 I)``) for D_in and D_o, and
  ``f_i(x) + 1/2 x^T E x`` (Hessian noise, ``E`` symmetric Gaussian with off-diagonal std
  ``hessian_noise``) for D_h. The estimators receive the D_h loss for their Hessian-vector
  products (:func:`agents.metagrad.vjp`), the D_in loss for the inner step.

for similar tasks (``g_i ~ N(mu, similar_std^2 I)``) and dissimilar tasks (``dissimilar_std``),
and record the norm of the TRUE meta-gradient (exact, over the whole task set) per iteration.

*Setup choices.* The paper's text as available to us did not give its constants, so they are
ours (all in :class:`MamlVariantsConfig`): d = 10, |mu| = 1 (mu = 1/sqrt(d) * ones), tasks
differ by ``std * z`` with the same standard normal ``z`` in both similarity settings (the
settings differ only in spread), x0 ~ N(0, I/d), alpha = beta = 0.05, 1000 tasks, 100 tasks per
stochastic batch. With |g| ~ 1 the inner step is well inside the region where
``alpha |H_i| < 1``.

**2. Multi-step MAML** (Ji, Yang & Liang, "Multi-Step Model-Agnostic Meta-Learning:
Convergence and Improved Algorithms" / "Theoretical Convergence of Multi-Step
Model-Agnostic Meta-Learning", JMLR 2022). With K inner steps the meta-gradient contains
``prod_k (I - alpha H_k)``, whose norm can grow like ``(1 + alpha L)^K``; their analysis
keeps it bounded with an inner step size ``alpha = c / K`` (then ``(1 + c L / K)^K <= e^{cL}``),
which gives a meta-smoothness and an admissible outer step size independent of K. On
meta-linear regression (tasks and data drawn with :mod:`studies.linreg`: p = 5, M = 20
tasks, N = 5 points per half, so the empirical inner Hessians ``X^T X / N`` have eigenvalues
up to ~7) we meta-train the K-step MAML objective by gradient descent with one outer step
size for K = 1, 2, 5, 10, with a fixed ``alpha = c`` and with ``alpha = c / K``. Since the
objective is quadratic in theta, we also report its exact smoothness (largest eigenvalue of
its Hessian ``mean_j J_j^T G2_j J_j``, built from metagrad's jvp/hvp/vjp): gradient descent
is stable iff ``beta < 2 / L_meta``.

All randomness comes from :func:`rlbench.seeding.generator` keyed by (seed, purpose, ...).
Within a setting the three estimators see the same task set, start point and stochastic
draws (common random numbers), so their curves differ only by the estimator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from agents import metagrad as mg
from rlbench.seeding import generator
from studies.linreg import LinRegTasks, sample_raw

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    from matplotlib.figure import Figure

DTYPE = torch.float64

#: Display name -> metagrad estimator.
METHODS: dict[str, str] = {"MAML": "second-order", "FO-MAML": "first-order", "HF-MAML": "hessian-free"}
SIMILARITIES: tuple[str, ...] = ("similar", "dissimilar")
GRADIENTS: tuple[str, ...] = ("exact", "stochastic")
SCHEDULES: tuple[str, ...] = ("fixed", "c/K")


# --------------------------------------------------------------------------------------
# Defaults: the ONE place for the studies' numbers.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MamlVariantsConfig:
    """Every setting of both studies (see the module docstring for why these values)."""

    # ---- rank-one matrix factorisation (Fallah et al. 2020) ----
    #: Dimension d of x and g_i.
    dim: int = 10
    #: Size of the fixed task set; the task distribution is uniform over it, so "exact" means
    #: an average over all of these tasks.
    n_tasks: int = 1000
    #: |mu|, the norm of the common mean of the g_i (mu points along the all-ones direction).
    mean_norm: float = 1.0
    #: Per-coordinate std of g_i around mu for similar tasks (|g_i - mu| ~ 0.16).
    similar_std: float = 0.05
    #: Per-coordinate std of g_i around mu for dissimilar tasks (|g_i - mu| ~ 1.6).
    dissimilar_std: float = 0.5
    #: Inner (adaptation) step size alpha.
    inner_lr: float = 0.05
    #: Outer (meta) step size beta, constant, the same for all methods and settings.
    outer_lr: float = 0.05
    #: Tasks sampled (with replacement) per iteration in the stochastic setting.
    batch_tasks: int = 100
    #: Std of the additive gradient noise of one stochastic gradient sample (D_in, D_o).
    grad_noise: float = 0.1
    #: Off-diagonal std of the symmetric Hessian noise of one Hessian sample (D_h).
    hessian_noise: float = 0.1
    #: Finite-difference radius of HF-MAML's Hessian-vector products (metagrad's default).
    hf_delta: float = 1e-4
    #: x0 ~ N(0, init_scale^2 I / d), i.e. |x0| ~ init_scale.
    init_scale: float = 1.0
    # ---- multi-step MAML on meta-linear regression (Ji, Yang & Liang) ----
    #: Numbers of inner steps K.
    ks: tuple[int, ...] = (1, 2, 5, 10)
    #: c: the fixed inner step size, and the numerator of alpha = c / K.
    kstep_c: float = 0.5
    #: Dimension p of the regression.
    kstep_p: int = 5
    #: Meta-training tasks M.
    kstep_tasks: int = 20
    #: Points per task and half N (inner data: first half; outer data: second half).
    kstep_points: int = 5
    #: Outer step size beta of the K-step runs (the same for every K and schedule).
    kstep_outer_lr: float = 0.1
    #: A run counts as diverged once its meta-objective exceeds this (or is not finite).
    divergence_threshold: float = 1e12
    # ---- shared ----
    #: Meta-training iterations of every run (both studies).
    iterations: int = 1000
    #: About this many iterations are recorded per run (see record_iterations).
    record_points: int = 200
    #: Root seed; every stream is derived from (seed, purpose, keys) by rlbench.seeding.
    seed: int = 0

    def __post_init__(self) -> None:
        positive_ints = ("dim", "n_tasks", "batch_tasks", "kstep_p", "kstep_tasks", "kstep_points", "iterations", "record_points")
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        positive = ("mean_norm", "inner_lr", "outer_lr", "hf_delta", "init_scale", "kstep_c", "kstep_outer_lr", "divergence_threshold")
        for name in positive:
            v = float(getattr(self, name))
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {v}")
        for name in ("similar_std", "dissimilar_std", "grad_noise", "hessian_noise"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a non-negative finite number, got {v}")
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise ValueError(f"ks must be non-empty positive integers, got {self.ks}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")


DEFAULTS = MamlVariantsConfig()


def record_iterations(iterations: int, points: int) -> np.ndarray:
    """Iterations at which a run is recorded: about ``points`` of them, half on an even grid
    (for linear axes) and half on a geometric grid (for log axes), plus 0 and the last."""
    half = max(1, points // 2)
    step = max(1, -(-iterations // half))
    geometric = np.round(np.geomspace(1, max(iterations, 1), half)).astype(int)
    return np.unique(np.r_[np.arange(0, iterations + 1, step), geometric, 0, iterations])


# --------------------------------------------------------------------------------------
# Rank-one matrix factorisation: tasks and losses
# --------------------------------------------------------------------------------------


def task_mean(cfg: MamlVariantsConfig) -> np.ndarray:
    """mu = mean_norm / sqrt(d) * ones, shape [d]."""
    return np.full(cfg.dim, cfg.mean_norm / np.sqrt(cfg.dim))


def task_set(cfg: MamlVariantsConfig, similarity: str) -> torch.Tensor:
    """The fixed task set g_i = mu + std * z_i, shape [n_tasks, d].

    z is drawn from the same stream for both similarities, so the two settings differ only
    in the spread of the tasks.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    std = cfg.similar_std if similarity == "similar" else cfg.dissimilar_std
    z = generator(cfg.seed, "maml-variants/factorisation-tasks", cfg.dim).standard_normal((cfg.n_tasks, cfg.dim))
    return torch.as_tensor(task_mean(cfg) + std * z, dtype=DTYPE)


def initial_point(cfg: MamlVariantsConfig) -> torch.Tensor:
    """x0 ~ N(0, init_scale^2 I / d), shape [d] (shared by every method and setting)."""
    rng = generator(cfg.seed, "maml-variants/factorisation-init", cfg.dim)
    return torch.as_tensor(rng.standard_normal(cfg.dim) * cfg.init_scale / np.sqrt(cfg.dim), dtype=DTYPE)


def factorisation_loss(g: torch.Tensor, xi: torch.Tensor | None = None, e: torch.Tensor | None = None) -> mg.Loss:
    """Sum over tasks of (possibly noisy) samples of f_i, as a metagrad loss over {"x": [T, d]}.

    g [T, d] are the task vectors, one per row of x. Optional noise: xi [T, d] adds ``xi.x``
    (gradient noise), e [T, d, d] symmetric adds ``1/2 x^T e x`` (Hessian noise). Written with
    ``|x x^T - g g^T|_F^2 = |x|^4 - 2 (g.x)^2 + |g|^4`` (O(d) instead of O(d^2) per task).
    """

    def loss(params: mg.Params) -> torch.Tensor:
        x = params["x"]
        xx = (x * x).sum(-1)
        gx = (g * x).sum(-1)
        gg = (g * g).sum(-1)
        out = 0.25 * (xx * xx - 2.0 * gx * gx + gg * gg).sum()
        if xi is not None:
            out = out + (xi * x).sum()
        if e is not None:
            out = out + 0.5 * torch.einsum("ti,tij,tj->", x, e, x)
        return out

    return loss


def _stack(x: torch.Tensor, t: int) -> mg.Params:
    # One copy of the meta-parameters per task: with a loss that sums over tasks, metagrad's
    # products are then per task (see agents/metagrad.py).
    return {"x": x.detach().expand(t, x.shape[0]).clone()}


def true_meta_gradient(x: torch.Tensor, g: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    """Exact MAML gradient of F(x) = mean_i f_i(x - alpha grad f_i(x)) over the tasks g [T, d].

    Returns (gradient [d], F(x)). Uses metagrad's exact (second-order) estimator.
    """
    loss = factorisation_loss(g)
    grads, phis = mg.meta_gradient(_stack(x, g.shape[0]), [loss], alpha, loss, "second-order")
    return grads["x"].mean(0), float(loss(phis[-1])) / g.shape[0]


@dataclass(frozen=True)
class StochasticDraw:
    """One iteration's randomness in the stochastic setting.

    idx [B] task indices; xi_in, xi_out [B, d] gradient noise of D_in and D_o; e_h [B, d, d]
    symmetric Hessian noise of D_h.
    """

    idx: np.ndarray
    xi_in: torch.Tensor
    xi_out: torch.Tensor
    e_h: torch.Tensor


def draw_stochastic(cfg: MamlVariantsConfig, rng: np.random.Generator) -> StochasticDraw:
    """Tasks and noise of one stochastic iteration (the number of draws never depends on the method)."""
    b, d = cfg.batch_tasks, cfg.dim
    idx = rng.integers(0, cfg.n_tasks, b)
    xi_in = rng.standard_normal((b, d)) * cfg.grad_noise
    xi_out = rng.standard_normal((b, d)) * cfg.grad_noise
    a = rng.standard_normal((b, d, d)) * cfg.hessian_noise
    e = (a + np.swapaxes(a, -1, -2)) / np.sqrt(2.0)  # off-diagonal std hessian_noise
    return StochasticDraw(idx, torch.as_tensor(xi_in, dtype=DTYPE), torch.as_tensor(xi_out, dtype=DTYPE), torch.as_tensor(e, dtype=DTYPE))


def estimated_meta_gradient(
    x: torch.Tensor, g: torch.Tensor, method: str, cfg: MamlVariantsConfig, draw: StochasticDraw | None = None
) -> torch.Tensor:
    """The estimator's meta-gradient at x [d]: exact over all tasks g, or from one stochastic draw.

    Stochastic (Fallah et al. 2020, Algorithms 1-3): for each sampled task, the inner step uses
    a D_in sample, the outer gradient a D_o sample and the Hessian(-vector product) a D_h
    sample, all independent.
    """
    estimator = METHODS[method]
    if draw is None:
        loss = factorisation_loss(g)
        grads, _ = mg.meta_gradient(_stack(x, g.shape[0]), [loss], cfg.inner_lr, loss, estimator, cfg.hf_delta)
        return grads["x"].mean(0)
    gb = g[torch.as_tensor(draw.idx)]
    loss_in = factorisation_loss(gb, xi=draw.xi_in)
    loss_out = factorisation_loss(gb, xi=draw.xi_out)
    loss_h = factorisation_loss(gb, e=draw.e_h)
    phis = mg.inner_chain(_stack(x, gb.shape[0]), [loss_in], cfg.inner_lr)
    g_out = mg.grad(loss_out, phis[-1])
    return mg.vjp(phis, [loss_h], cfg.inner_lr, g_out, estimator, cfg.hf_delta)["x"].mean(0)


def run_factorisation(cfg: MamlVariantsConfig, similarity: str, gradients: str, method: str) -> dict[str, np.ndarray]:
    """Meta-train x with one estimator; returns recorded iteration, meta_grad_norm (true), meta_objective."""
    if gradients not in GRADIENTS:
        raise ValueError(f"gradients must be one of {GRADIENTS}, got {gradients!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    g = task_set(cfg, similarity)
    x = initial_point(cfg)
    # Common random numbers: the key does not include the method.
    rng = generator(cfg.seed, "maml-variants/factorisation-noise", SIMILARITIES.index(similarity))
    record = set(record_iterations(cfg.iterations, cfg.record_points).tolist())
    its, norms, objs = [], [], []
    for t in range(cfg.iterations + 1):
        if t in record:
            true_g, obj = true_meta_gradient(x, g, cfg.inner_lr)
            its.append(t)
            norms.append(float(true_g.norm()))
            objs.append(obj)
        if t == cfg.iterations:
            break
        draw = draw_stochastic(cfg, rng) if gradients == "stochastic" else None
        x = x - cfg.outer_lr * estimated_meta_gradient(x, g, method, cfg, draw)
    return {"iteration": np.array(its), "meta_grad_norm": np.array(norms), "meta_objective": np.array(objs)}


def factorisation_study(cfg: MamlVariantsConfig = DEFAULTS) -> pd.DataFrame:
    """All (gradients x similarity x method) runs, long format.

    Columns: gradients, similarity, method, iteration, meta_grad_norm, meta_objective.
    """
    import pandas as pd

    frames = []
    for gradients in GRADIENTS:
        for similarity in SIMILARITIES:
            for method in METHODS:
                run = run_factorisation(cfg, similarity, gradients, method)
                frames.append(pd.DataFrame({"gradients": gradients, "similarity": similarity, "method": method, **run}))
    return pd.concat(frames, ignore_index=True)


def final_norms(df: pd.DataFrame, tail: float = 0.1) -> pd.DataFrame:
    """Median true meta-gradient norm over the last ``tail`` fraction of iterations, per run.

    (A median, not the last value, so stochastic runs are summarised robustly.)
    Columns: gradients, similarity, method, final_meta_grad_norm.
    """
    last = df["iteration"].max()
    sub = df[df["iteration"] >= (1.0 - tail) * last]
    out = sub.groupby(["gradients", "similarity", "method"], sort=False)["meta_grad_norm"].median()
    return out.rename("final_meta_grad_norm").reset_index()


# --------------------------------------------------------------------------------------
# Multi-step MAML on meta-linear regression (Ji, Yang & Liang)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegressionData:
    """Inner (first-half) and outer (second-half) data of M tasks: x [M, N, p], y [M, N]."""

    x_in: torch.Tensor
    y_in: torch.Tensor
    x_out: torch.Tensor
    y_out: torch.Tensor


def kstep_data(cfg: MamlVariantsConfig) -> RegressionData:
    """M tasks of the linreg task distribution (Gao & Sener 2020, s.4) with 2N points each."""
    rng = generator(cfg.seed, "maml-variants/kstep-tasks", cfg.kstep_p, cfg.kstep_tasks, cfg.kstep_points)
    tasks = LinRegTasks(p=cfg.kstep_p).sample(1, cfg.kstep_tasks, rng)
    x1, y1 = sample_raw(tasks, cfg.kstep_points, rng)
    x2, y2 = sample_raw(tasks, cfg.kstep_points, rng)
    return RegressionData(*(torch.as_tensor(a[0], dtype=DTYPE) for a in (x1, y1, x2, y2)))


def squared_loss(x: torch.Tensor, y: torch.Tensor) -> mg.Loss:
    """Sum over tasks of 1/(2N) |y_j - X_j theta_j|^2, a metagrad loss over {"theta": [M, p]}."""
    n = x.shape[-2]

    def loss(params: mg.Params) -> torch.Tensor:
        r = y - (x @ params["theta"][..., None])[..., 0]
        return 0.5 * (r * r).sum() / n

    return loss


def inner_step_size(cfg: MamlVariantsConfig, k: int, schedule: str) -> float:
    """alpha = c (fixed) or c / K."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return cfg.kstep_c if schedule == "fixed" else cfg.kstep_c / k


def meta_smoothness(data: RegressionData, k: int, alpha: float) -> float:
    """Largest eigenvalue of the Hessian of the K-step MAML objective (quadratic in theta).

    H_meta = mean_j J_j^T G2_j J_j, J_j = (I - alpha G1_j)^K, built column by column from
    metagrad's jvp (J u), hvp (G2 J u) and vjp (J^T G2 J u). Gradient descent with outer step
    beta is stable iff beta < 2 / H_meta's largest eigenvalue.
    """
    m, _, p = data.x_in.shape
    inner = [squared_loss(data.x_in, data.y_in)] * k
    outer = squared_loss(data.x_out, data.y_out)
    phis = mg.inner_chain({"theta": torch.zeros(m, p, dtype=DTYPE)}, inner, alpha)
    cols = []
    for i in range(p):
        u = {"theta": torch.zeros(m, p, dtype=DTYPE)}
        u["theta"][:, i] = 1.0
        ju = mg.jvp(phis, inner, alpha, u, "second-order", 0.0)
        h = mg.hvp(outer, phis[-1], ju, "second-order", 0.0)
        cols.append(mg.vjp(phis, inner, alpha, h, "second-order", 0.0)["theta"].mean(0))
    hess = torch.stack(cols, 1).numpy()
    return float(np.linalg.eigvalsh(0.5 * (hess + hess.T)).max())


def inner_hessian_max_eigenvalues(data: RegressionData) -> np.ndarray:
    """lambda_max(X_j^T X_j / N) of each task's inner loss, shape [M]."""
    gram = data.x_in.transpose(-1, -2) @ data.x_in / data.x_in.shape[-2]
    return np.linalg.eigvalsh(gram.numpy()).max(-1)


def run_kstep(cfg: MamlVariantsConfig, data: RegressionData, k: int, schedule: str) -> dict[str, np.ndarray]:
    """Gradient descent on the K-step MAML objective (exact second-order meta-gradient).

    Returns recorded iteration, meta_objective (mean outer loss after K inner steps) and
    meta_grad_norm; recording stops at divergence (objective > threshold or not finite).
    """
    alpha = inner_step_size(cfg, k, schedule)
    m, _, p = data.x_in.shape
    inner = [squared_loss(data.x_in, data.y_in)] * k
    outer = squared_loss(data.x_out, data.y_out)
    theta = torch.zeros(p, dtype=DTYPE)
    record = set(record_iterations(cfg.iterations, cfg.record_points).tolist())
    its, objs, norms = [], [], []
    for t in range(cfg.iterations + 1):
        grads, phis = mg.meta_gradient({"theta": theta.expand(m, p).clone()}, inner, alpha, outer, "second-order")
        obj = float(outer(phis[-1])) / m
        meta_g = grads["theta"].mean(0)
        diverged = not np.isfinite(obj) or obj > cfg.divergence_threshold
        if t in record or diverged:
            its.append(t)
            objs.append(obj)
            norms.append(float(meta_g.norm()))
        if diverged or t == cfg.iterations:
            break
        theta = theta - cfg.kstep_outer_lr * meta_g
    return {"iteration": np.array(its), "meta_objective": np.array(objs), "meta_grad_norm": np.array(norms)}


def kstep_study(cfg: MamlVariantsConfig = DEFAULTS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All (schedule x K) runs.

    Returns (curves, summary). curves: schedule, K, alpha, iteration, meta_objective,
    meta_grad_norm. summary (one row per run): schedule, K, alpha, meta_smoothness,
    beta_stable_limit (= 2 / meta_smoothness), max_inner_step_gain
    (= max_j |1 - alpha lambda_max(G1_j)|; > 1: the inner loop expands that task's error),
    initial_objective, final_objective, final_meta_grad_norm, diverged_at (-1: never).
    """
    import pandas as pd

    data = kstep_data(cfg)
    lam = inner_hessian_max_eigenvalues(data)
    frames, rows = [], []
    for schedule in SCHEDULES:
        for k in cfg.ks:
            alpha = inner_step_size(cfg, k, schedule)
            run = run_kstep(cfg, data, k, schedule)
            obj = run["meta_objective"]
            diverged = not np.isfinite(obj[-1]) or obj[-1] > cfg.divergence_threshold
            smooth = meta_smoothness(data, k, alpha)
            frames.append(pd.DataFrame({"schedule": schedule, "K": k, "alpha": alpha, **run}))
            rows.append({
                "schedule": schedule, "K": k, "alpha": alpha,
                "meta_smoothness": smooth, "beta_stable_limit": 2.0 / smooth,
                "max_inner_step_gain": float(np.abs(1.0 - alpha * lam).max()),
                "initial_objective": float(obj[0]),
                "final_objective": float("nan") if diverged else float(obj[-1]),
                "final_meta_grad_norm": float("nan") if diverged else float(run["meta_grad_norm"][-1]),
                "diverged_at": int(run["iteration"][-1]) if diverged else -1,
            })
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------

#: Line styles: MAML and HF-MAML coincide to plotting accuracy, so HF-MAML is drawn dashed
#: on top of a wider solid MAML line to keep both visible.
_METHOD_STYLE = {
    "MAML": {"color": "tab:blue", "lw": 3.0, "ls": "-", "alpha": 0.55},
    "FO-MAML": {"color": "tab:red", "lw": 1.4, "ls": "-", "alpha": 0.9},
    "HF-MAML": {"color": "k", "lw": 1.2, "ls": (0, (4, 2)), "alpha": 0.9},
}


def plot_factorisation(df: pd.DataFrame, cfg: MamlVariantsConfig = DEFAULTS) -> Figure:
    """2 x 2 panels (rows: exact / stochastic gradients; columns: similar / dissimilar tasks)
    of the true meta-gradient norm against iterations, log y."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9.0, 6.4), sharex=True, layout="constrained", squeeze=False)
    for i, gradients in enumerate(GRADIENTS):
        for j, similarity in enumerate(SIMILARITIES):
            ax = axes[i, j]
            for method in METHODS:
                sub = df[(df["gradients"] == gradients) & (df["similarity"] == similarity) & (df["method"] == method)]
                ax.plot(sub["iteration"], sub["meta_grad_norm"], label=method, **_METHOD_STYLE[method])
            ax.set_yscale("log")
            std = cfg.similar_std if similarity == "similar" else cfg.dissimilar_std
            how = (f"exact gradients (all {cfg.n_tasks} tasks)" if gradients == "exact"
                   else f"stochastic: {cfg.batch_tasks} tasks/it., noisy gradients & Hessians")
            ax.set_title(f"{similarity} tasks (std {std:g})\n{how}", fontsize=9)
            ax.grid(True, which="major", alpha=0.3)
            if i == 1:
                ax.set_xlabel("meta-iteration")
            if j == 0:
                ax.set_ylabel("‖∇F(x)‖ (true meta-gradient)")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"Rank-one factorisation f_i(x) = ¼‖xxᵀ − g_i g_iᵀ‖²_F, d = {cfg.dim}, {cfg.n_tasks} tasks, "
        f"α = {cfg.inner_lr:g}, β = {cfg.outer_lr:g} (Fallah et al. 2020)", fontsize=10,
    )
    return fig


def plot_kstep(curves: pd.DataFrame, summary: pd.DataFrame, cfg: MamlVariantsConfig = DEFAULTS) -> Figure:
    """Three panels: meta-objective vs iteration with fixed alpha and with alpha = c/K (log-log;
    diverged runs end in an x, clipped at the divergence threshold), and the meta-objective's
    smoothness against K."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(cfg.ks)))
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.8), layout="constrained")
    for ax, schedule in zip(axes[:2], SCHEDULES):
        for color, k in zip(colors, cfg.ks):
            sub = curves[(curves["schedule"] == schedule) & (curves["K"] == k)]
            row = summary[(summary["schedule"] == schedule) & (summary["K"] == k)].iloc[0]
            y = sub["meta_objective"].to_numpy()
            x = sub["iteration"].to_numpy() + 1  # log x-axis
            label = f"K = {k} (α = {row['alpha']:.3g})"
            if row["diverged_at"] >= 0:
                label += f", diverged at it. {int(row['diverged_at'])}"
                y = np.minimum(y, cfg.divergence_threshold)
            ax.plot(x, y, color=color, lw=1.6, label=label, marker="x" if row["diverged_at"] >= 0 else None, markevery=[len(x) - 1])
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlim(1, cfg.iterations + 1)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel("meta-iteration + 1")
        title = f"fixed inner step α = c = {cfg.kstep_c:g}" if schedule == "fixed" else f"inner step α = c / K, c = {cfg.kstep_c:g}"
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7.5, loc="upper right")
    axes[0].set_ylabel("K-step MAML meta-objective (train tasks)")
    ax = axes[2]
    for schedule, marker in zip(SCHEDULES, ("o", "s")):
        sub = summary[summary["schedule"] == schedule]
        ax.plot(sub["K"], sub["meta_smoothness"], marker=marker, label=f"α = {'c' if schedule == 'fixed' else 'c / K'}")
    ax.axhline(2.0 / cfg.kstep_outer_lr, color="0.4", ls="--", lw=1, label=f"2 / β (β = {cfg.kstep_outer_lr:g}): GD stable below")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xticks(list(cfg.ks), [str(k) for k in cfg.ks])
    ax.minorticks_off()
    ax.set_xlabel("inner steps K")
    ax.set_ylabel("λ_max of meta-objective Hessian")
    ax.set_title("why: curvature of the K-step objective", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5)
    fig.suptitle(
        f"Multi-step MAML on meta-linear regression (p = {cfg.kstep_p}, M = {cfg.kstep_tasks} tasks, N = {cfg.kstep_points} "
        f"points/half; outer GD β = {cfg.kstep_outer_lr:g}) — Ji, Yang & Liang", fontsize=10,
    )
    return fig
