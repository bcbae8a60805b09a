"""Meta-linear regression: DRS vs MAML estimates, reproducing Figure 3 of Gao & Sener (2020).

Gao & Sener, "Modeling and Optimization Trade-off in Meta-learning", NeurIPS 2020, section 4;
the model and the quantities below are specified in docs/protocol.md section 8.

Task model (one task g)::

    y = theta_g^T x + eps,   eps ~ N(0, sigma_g^2),   x ~ N(0, Q_g),
    theta_g ~ U([0, 2]^p),   sigma_g^2 ~ U([0, 2]),   Q_g = V diag(theta_g) V^T,  V ~ Haar(SO(p)).

A dataset has M tasks with 2N points each. The DRS estimate is least squares over all M * 2N
points; the MAML estimate (step size alpha) minimises the squared error on points N+1..2N of
each task of the parameters after one gradient step on points 1..N. Both are linear least
squares problems, solved here in closed form from per-task sufficient statistics.

Each estimate is scored by its expected loss on a fresh task, computed exactly (not by
simulation): before adaptation ``E_g ||theta - theta_g||^2_{Q_g}``; after one adaptation step
on N fresh points ``E_g ||theta - theta_g||^2_{A_g}`` with
``A = S + alpha^2 (E[x x^T Q x x^T] - Q^3) / N = S + alpha^2 (Q^3 + tr(Q^2) Q) / N``,
``S = (I - alpha Q) Q (I - alpha Q)`` (the Gaussian fourth moment
``E[x x^T Q x x^T] = 2 Q^3 + tr(Q^2) Q``). Constants shared by both estimators (the noise
variance terms) are dropped: they do not change which estimator is better.

Design choices (why):

* **Sufficient statistics instead of raw points.** Only ``X^T X`` and ``X^T y`` of each half of
  each task enter either estimate. ``X^T X ~ Wishart_p(N, Q)`` is drawn with the Bartlett
  decomposition and ``X^T y = X^T X theta + sigma C A z`` (``C A`` a square root of
  ``X^T X``), which is exact in distribution and costs O(p^3) per task instead of O(N p).
  The grid's cost then does not grow with N. ``sample_raw``/``stats_from_data`` give the same
  statistics from explicit points (used when N < p, where the Wishart is singular, and by the
  tests to check the closed forms against independently built design matrices).
* **Expectations over tasks are exact.** Every weight matrix (``Q``, ``S``, ``A``) is a linear
  combination of the basis ``Q, Q^2, Q^3, tr(Q^2) Q``, each of the form ``V f(D) V^T`` with
  ``D = diag(theta_g)``. With one rotation per task, ``E_V[V F V^T] = tr(F)/p I`` (Haar), and
  what is left are polynomials of degree <= 5 per coordinate of ``theta_g``, integrated
  exactly by a tensor Gauss-Legendre rule (3 nodes per coordinate). Only when that rule
  would exceed ``MomentSettings.max_quadrature_nodes`` nodes (p >= 13) do we fall back to a
  Monte Carlo sample of ``MomentSettings.mc_tasks`` task parameters.
* **Rotation per task (default) or per dataset.** PROTOCOL section 8 writes ``Q_g = V
  diag(theta_g) V^T`` without saying whether V varies with g. We default to one V per task,
  which is what the authors' released code does (it draws a new orthogonal matrix in every
  call that samples a task) and what the subscript on ``Q_g`` suggests. ``rotation=
  "per-dataset"`` draws one V per simulated dataset, shared by its tasks and by the task
  distribution on which that dataset's estimates are scored. For p = 1, the setting of
  Figure 3, SO(1) = {1} and the two options coincide.
* **Common random numbers.** In a grid cell the same datasets serve every alpha, and the
  generator of a cell is keyed by (seed, M, N), so a cell's numbers do not depend on the rest
  of the grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from rlbench.seeding import generator

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.contour import QuadContourSet
    from matplotlib.figure import Figure

Rotation = Literal["per-task", "per-dataset"]
ROTATIONS: tuple[str, ...] = ("per-task", "per-dataset")

#: Names of the basis weight matrices; order of the second-to-last axis of TaskMoments.
BASIS: tuple[str, ...] = ("Q", "Q^2", "Q^3", "tr(Q^2) Q")


# --------------------------------------------------------------------------------------
# Defaults: the ONE place for the study's numbers.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure3Defaults:
    """Default settings of the Figure 3 study (Gao & Sener 2020, section 4; docs/protocol.md s.8).

    The paper's text and PROTOCOL do not list the grid; the ranges follow the authors'
    released code (isl-org/MetaLearningTradeoffs, ``linear_regression/algorithms.py``:
    M in 2..400, N in 1..400, 1000 datasets per cell, alpha on a grid in (0, 1]), made
    geometric here (12 x 12, as in the authors' code) so the ranges are evenly covered on log axes.
    """

    #: Inner step sizes, one figure panel each. alpha * max eigenvalue(Q) = 2 alpha <= 2
    #: keeps the population adaptation step stable; alpha = 1 is the edge of that range.
    alphas: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    #: Dimension of x and theta; Figure 3 of the paper uses p = 1.
    p: int = 1
    #: Number of meta-training tasks M: round(np.geomspace(2, 400, 12)).
    grid_m: tuple[int, ...] = (2, 3, 5, 8, 14, 22, 36, 58, 94, 153, 247, 400)
    #: Points per task and per half N (meta-test adaptation also uses N points):
    #: round(np.geomspace(1, 400, 12)).
    grid_n: tuple[int, ...] = (1, 2, 3, 5, 9, 15, 26, 45, 78, 135, 232, 400)
    #: Simulated datasets per grid cell (as in the authors' code); binomial standard
    #: error <= 0.016 per cell.
    datasets: int = 1000
    #: Root seed; every stream is derived from (seed, purpose, keys) by rlbench.seeding.
    seed: int = 0
    #: One rotation V per task (authors' code) or per dataset; see the module docstring.
    rotation: Rotation = "per-task"


DEFAULTS = Figure3Defaults()


@dataclass(frozen=True)
class MomentSettings:
    """How expectations over the task distribution are computed (see module docstring)."""

    #: Largest tensor Gauss-Legendre rule used for exact moments (3**p nodes); p <= 12.
    max_quadrature_nodes: int = 3**12
    #: Monte Carlo sample of theta_g when the exact rule is too large (p >= 13).
    mc_tasks: int = 200_000


MOMENTS = MomentSettings()


# --------------------------------------------------------------------------------------
# Task distribution
# --------------------------------------------------------------------------------------


def haar_so(n: int, p: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` independent Haar-distributed rotations in SO(p).

    Shape: [n, p, p]. QR of a Gaussian matrix with the signs of R's diagonal moved into Q
    gives Haar on O(p) (Mezzadri 2007); flipping the first column where det = -1 maps it to
    Haar on SO(p) (right multiplication by a fixed reflection preserves Haar measure).
    """
    if p == 1:
        return np.ones((n, 1, 1))
    z = rng.standard_normal((n, p, p))
    q, r = np.linalg.qr(z)
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    flip = np.linalg.det(q) < 0
    q[flip, :, 0] *= -1.0
    return q


@dataclass(frozen=True)
class LinRegTasks:
    """The task distribution of docs/protocol.md section 8 (paper section 4)."""

    p: int = 1
    #: theta_g ~ U([0, theta_high]^p); its coordinates are also the eigenvalues of Q_g.
    theta_high: float = 2.0
    #: sigma_g^2 ~ U([0, noise_var_high]).
    noise_var_high: float = 2.0
    rotation: Rotation = "per-task"

    def __post_init__(self) -> None:
        if self.p < 1:
            raise ValueError(f"p must be >= 1, got {self.p}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {self.rotation!r}")

    def sample(self, batch: int, m: int, rng: np.random.Generator) -> TaskBatch:
        """``m`` tasks for each of ``batch`` datasets (rotation per task or per dataset)."""
        theta = rng.uniform(0.0, self.theta_high, (batch, m, self.p))
        noise_var = rng.uniform(0.0, self.noise_var_high, (batch, m))
        if self.rotation == "per-task":
            v = haar_so(batch * m, self.p, rng).reshape(batch, m, self.p, self.p)
        else:
            v = np.broadcast_to(haar_so(batch, self.p, rng)[:, None], (batch, m, self.p, self.p))
        return TaskBatch(theta=theta, noise_var=noise_var, rotation=v)


@dataclass(frozen=True)
class TaskBatch:
    """Tasks of a batch of datasets.

    Shapes: theta [B, M, p], noise_var [B, M], rotation [B, M, p, p] (V; Q = V diag(theta) V^T).
    """

    theta: np.ndarray
    noise_var: np.ndarray
    rotation: np.ndarray

    @property
    def q(self) -> np.ndarray:
        """Input covariances Q_g, shape [B, M, p, p]."""
        return (self.rotation * self.theta[..., None, :]) @ np.swapaxes(self.rotation, -1, -2)

    @property
    def q_sqrt(self) -> np.ndarray:
        """A square root C of Q (C C^T = Q): V diag(sqrt(theta)). Shape [B, M, p, p]."""
        return self.rotation * np.sqrt(self.theta)[..., None, :]

    @property
    def dataset_rotation(self) -> np.ndarray:
        """The per-dataset V, shape [B, p, p] (meaningful when rotation == "per-dataset")."""
        return self.rotation[:, 0]


# --------------------------------------------------------------------------------------
# Data: sufficient statistics of each half of each task
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HalfStats:
    """Normalised statistics of one half (N points) of every task.

    gram = X^T X / N  [B, M, p, p];  xty = X^T y / N  [B, M, p].
    """

    gram: np.ndarray
    xty: np.ndarray


@dataclass(frozen=True)
class DatasetStats:
    """Statistics of points 1..N (``first``, the inner/adaptation half) and N+1..2N (``second``)."""

    first: HalfStats
    second: HalfStats
    n: int


def _half_stats_wishart(tasks: TaskBatch, n: int, rng: np.random.Generator) -> HalfStats:
    # Bartlett: Z^T Z = A A^T for Z [n, p] standard normal, A lower triangular with
    # A_ii^2 ~ chi2(n - i), A_ij ~ N(0, 1) below the diagonal. X = Z C^T, so
    # X^T X = C A A^T C^T and, given X, X^T eps ~ N(0, sigma^2 X^T X) = sigma C A z.
    b, m, p = tasks.theta.shape
    a = np.tril(rng.standard_normal((b, m, p, p)), -1)
    diag = np.sqrt(rng.chisquare(n - np.arange(p), (b, m, p)))
    a[..., np.arange(p), np.arange(p)] = diag
    ca = tasks.q_sqrt @ a
    gram = ca @ np.swapaxes(ca, -1, -2)
    z = rng.standard_normal((b, m, p, 1))
    noise = np.sqrt(tasks.noise_var)[..., None] * (ca @ z)[..., 0]
    xty = (gram @ tasks.theta[..., None])[..., 0] + noise
    return HalfStats(gram=gram / n, xty=xty / n)


def sample_raw(tasks: TaskBatch, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Explicit points for every task: X [B, M, n, p] with rows ~ N(0, Q), y [B, M, n]."""
    b, m, p = tasks.theta.shape
    x = rng.standard_normal((b, m, n, p)) @ np.swapaxes(tasks.q_sqrt, -1, -2)
    eps = rng.standard_normal((b, m, n)) * np.sqrt(tasks.noise_var)[..., None]
    y = (x @ tasks.theta[..., None])[..., 0] + eps
    return x, y


def half_stats_from_data(x: np.ndarray, y: np.ndarray) -> HalfStats:
    """Statistics of explicit points: x [B, M, n, p], y [B, M, n]."""
    n = x.shape[-2]
    xt = np.swapaxes(x, -1, -2)
    return HalfStats(gram=xt @ x / n, xty=(xt @ y[..., None])[..., 0] / n)


def stats_from_data(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> DatasetStats:
    """DatasetStats from explicit points of the two halves (shapes as in half_stats_from_data)."""
    return DatasetStats(first=half_stats_from_data(x1, y1), second=half_stats_from_data(x2, y2), n=x1.shape[-2])


def sample_stats(
    tasks: TaskBatch, n: int, rng: np.random.Generator, method: Literal["auto", "wishart", "raw"] = "auto"
) -> DatasetStats:
    """Sufficient statistics of 2n points per task. ``auto``: Wishart when n >= p, else raw."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    p = tasks.theta.shape[-1]
    if method == "auto":
        method = "wishart" if n >= p else "raw"
    if method == "wishart":
        if n < p:
            raise ValueError(f"the Wishart sampler needs n >= p (n={n}, p={p})")
        return DatasetStats(first=_half_stats_wishart(tasks, n, rng), second=_half_stats_wishart(tasks, n, rng), n=n)
    if method == "raw":
        x1, y1 = sample_raw(tasks, n, rng)
        x2, y2 = sample_raw(tasks, n, rng)
        return stats_from_data(x1, y1, x2, y2)
    raise ValueError(f"unknown method {method!r}")


# --------------------------------------------------------------------------------------
# Closed-form estimates
# --------------------------------------------------------------------------------------


def _solve(h: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Batched h^-1 r (h [..., p, p], r [..., p]); minimum-norm solution if some h is singular."""
    try:
        return np.linalg.solve(h, r[..., None])[..., 0]
    except np.linalg.LinAlgError:  # e.g. M * N < p: the least-squares problem is underdetermined
        return (np.linalg.pinv(h) @ r[..., None])[..., 0]


def drs_estimate(stats: DatasetStats) -> np.ndarray:
    """DRS: least squares over all M * 2N points of a dataset. Returns [B, p].

    minimises sum_j sum_i (y_ji - x_ji^T theta)^2  =>  (sum_j X_j^T X_j) theta = sum_j X_j^T y_j.
    """
    h = (stats.first.gram + stats.second.gram).sum(axis=1)
    r = (stats.first.xty + stats.second.xty).sum(axis=1)
    return _solve(h, r)


def maml_estimate(stats: DatasetStats, alphas: np.ndarray | float) -> np.ndarray:
    """MAML with one inner step of size alpha (docs/protocol.md s.8). Returns [len(alphas), B, p].

    With G1, b1 (G2, b2) the normalised statistics of the first (second) half of task j, the
    adapted parameters are theta_j = P_j theta + alpha b1_j, P_j = I - alpha G1_j, and the
    second-half squared error is minimised by
    (sum_j P_j G2_j P_j) theta = sum_j P_j (b2_j - alpha G2_j b1_j).
    """
    alphas = np.atleast_1d(np.asarray(alphas, dtype=float))
    g1, b1, g2, b2 = stats.first.gram, stats.first.xty, stats.second.gram, stats.second.xty
    p = g1.shape[-1]
    a = alphas[:, None, None, None, None]
    proj = np.eye(p) - a * g1  # [A, B, M, p, p]
    h = (proj @ g2 @ proj).sum(axis=2)
    g2b1 = (g2 @ b1[..., None])[..., 0]
    r = (proj @ (b2 - alphas[:, None, None, None] * g2b1)[..., None])[..., 0].sum(axis=2)
    return _solve(h, r)


# --------------------------------------------------------------------------------------
# Expectations over tasks and expected losses
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskMoments:
    """Expectations over g of the basis weights B_k in BASIS = (Q, Q^2, Q^3, tr(Q^2) Q).

    mat [..., 4, p, p] = E[B_k];  vec [..., 4, p] = E[B_k theta_g];  sca [..., 4] = E[theta_g^T B_k theta_g].
    Leading axes (if any) index datasets (rotation "per-dataset"). ``exact`` says whether they
    were integrated exactly or by Monte Carlo (``samples`` task parameters).
    """

    mat: np.ndarray
    vec: np.ndarray
    sca: np.ndarray
    exact: bool
    samples: int


def weight_coefficients(kind: Literal["before", "S", "A"], alpha: float = 0.0, n: int | None = None) -> np.ndarray:
    """Coefficients c of a weight W = sum_k c_k B_k over BASIS.

    before: W = Q (loss before adaptation).
    S:      (I - alpha Q) Q (I - alpha Q) = Q - 2 alpha Q^2 + alpha^2 Q^3 (N -> infinity).
    A:      S + alpha^2 (E[x x^T Q x x^T] - Q^3) / N = S + alpha^2 (Q^3 + tr(Q^2) Q) / N.
    """
    if kind == "before":
        return np.array([1.0, 0.0, 0.0, 0.0])
    if kind == "S":
        return np.array([1.0, -2.0 * alpha, alpha**2, 0.0])
    if kind == "A":
        if n is None or n < 1:
            raise ValueError("the post-adaptation weight A needs n >= 1")
        return np.array([1.0, -2.0 * alpha, alpha**2 * (1.0 + 1.0 / n), alpha**2 / n])
    raise ValueError(f"unknown weight kind {kind!r}")


def _quadrature(p: int, high: float, settings: MomentSettings, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Nodes [K, p] and weights [K] (sum 1) for E over theta ~ U([0, high]^p)."""
    if 3**p <= settings.max_quadrature_nodes:
        # 3-point Gauss-Legendre is exact up to degree 5 in each coordinate, the highest that
        # occurs (theta_i^2 * theta_i * theta_i^2 in E[tr(Q^2) theta^T Q theta]).
        x, w = np.polynomial.legendre.leggauss(3)
        x, w = (x + 1.0) * high / 2.0, w / 2.0
        nodes = np.array(list(itertools.product(x, repeat=p)))
        weights = np.prod(np.array(list(itertools.product(w, repeat=p))), axis=1)
        return nodes, weights, True
    if rng is None:
        raise ValueError(f"p={p} needs Monte Carlo moments: pass an rng")
    k = settings.mc_tasks
    return rng.uniform(0.0, high, (k, p)), np.full(k, 1.0 / k), False


def basis_matrices(q: np.ndarray) -> np.ndarray:
    """The basis weights of one or more covariances: q [..., p, p] -> [..., 4, p, p] (order BASIS)."""
    q2 = q @ q
    q3 = q2 @ q
    tr_q2 = np.trace(q2, axis1=-2, axis2=-1)[..., None, None]
    return np.stack([q, q2, q3, tr_q2 * q], axis=-3)


def _diag_basis(theta: np.ndarray) -> np.ndarray:
    """f_k(D) for the basis, as diagonals: [..., 4, p] = (theta, theta^2, theta^3, |theta|^2 theta)."""
    t2 = theta**2
    return np.stack([theta, t2, t2 * theta, t2.sum(-1, keepdims=True) * theta], axis=-2)


def task_moments(
    tasks: LinRegTasks,
    rotations: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    settings: MomentSettings = MOMENTS,
) -> TaskMoments:
    """Exact (or, for large p, Monte Carlo) expectations over the task distribution.

    rotation "per-task": the Haar average E_V[V F V^T] = tr(F)/p I removes V, no argument needed.
    rotation "per-dataset": pass ``rotations`` [B, p, p]; the result has a leading B axis.
    ``rng`` is only used for the Monte Carlo fallback (p >= 13).
    """
    p = tasks.p
    nodes, w, exact = _quadrature(p, tasks.theta_high, settings, rng)
    f = _diag_basis(nodes)  # [K, 4, p]
    if tasks.rotation == "per-task":
        t = f.sum(-1) / p  # [K, 4]  tr f_k(D) / p
        mat = np.einsum("k,kb->b", w, t)[:, None, None] * np.eye(p)
        vec = np.einsum("k,kb,ki->bi", w, t, nodes)
        sca = np.einsum("k,kb,k->b", w, t, (nodes**2).sum(-1))
        return TaskMoments(mat=mat, vec=vec, sca=sca, exact=exact, samples=len(w))
    if rotations is None:
        raise ValueError('rotation "per-dataset" needs the datasets\' rotations')
    ef = np.einsum("k,kci->ci", w, f)  # E f_k(D)  [4, p]
    mats, vecs, scas = [], [], []
    step = max(1, _CHUNK_ELEMENTS // (len(w) * p))  # bounds the [B, K, p] array u
    for start in range(0, len(rotations), step):
        v = rotations[start : start + step]  # [B, p, p]
        u = np.einsum("bji,kj->bki", v, nodes)  # V^T theta  [B, K, p]
        mats.append(np.einsum("bij,cj,blj->bcil", v, ef, v))
        vecs.append(np.einsum("bij,bcj->bci", v, np.einsum("k,kcj,bkj->bcj", w, f, u)))
        scas.append(np.einsum("k,kcj,bkj->bc", w, f, u**2))
    return TaskMoments(mat=np.concatenate(mats), vec=np.concatenate(vecs), sca=np.concatenate(scas), exact=exact, samples=len(w))


def expected_loss(theta: np.ndarray, moments: TaskMoments, coef: np.ndarray) -> np.ndarray:
    """E_g ||theta - theta_g||^2_{W_g} for W = sum_k coef_k B_k (up to shared constants).

    theta [..., B, p] (B matching moments' leading axis, if any) -> [..., B].
    """
    mat = np.einsum("c,...cij->...ij", coef, moments.mat)
    vec = np.einsum("c,...ci->...i", coef, moments.vec)
    sca = np.einsum("c,...c->...", coef, moments.sca)
    quad = np.einsum("...i,...ij,...j->...", theta, mat, theta)
    return quad - 2.0 * np.einsum("...i,...i->...", theta, vec) + sca


def loss_before(theta: np.ndarray, moments: TaskMoments) -> np.ndarray:
    """Expected loss before adaptation, E_g ||theta - theta_g||^2_{Q_g}."""
    return expected_loss(theta, moments, weight_coefficients("before"))


def loss_after(theta: np.ndarray, moments: TaskMoments, alpha: float, n: int) -> np.ndarray:
    """Expected loss after one step of size alpha on n fresh points, E_g ||theta - theta_g||^2_{A_g}."""
    return expected_loss(theta, moments, weight_coefficients("A", alpha, n))


def population_optimum(moments: TaskMoments, coef: np.ndarray) -> np.ndarray:
    """argmin_theta E_g ||theta - theta_g||^2_W = E[W]^-1 E[W theta_g]. Returns [..., p]."""
    mat = np.einsum("c,...cij->...ij", coef, moments.mat)
    vec = np.einsum("c,...ci->...i", coef, moments.vec)
    return _solve(mat, vec)


def theta_drs_star(moments: TaskMoments) -> np.ndarray:
    """theta_drs* = E[Q]^-1 E[Q theta_g] (docs/protocol.md s.8)."""
    return population_optimum(moments, weight_coefficients("before"))


def theta_maml_star(moments: TaskMoments, alpha: float, n: int | None = None) -> np.ndarray:
    """theta_maml*(alpha) = E[S]^-1 E[S theta_g] (docs/protocol.md s.8, the N -> infinity limit).

    With ``n`` given: E[A]^-1 E[A theta_g], the limit of the MAML estimate as M -> infinity at
    fixed N (the empirical MAML objective averages to E_g ||theta - theta_g||^2_{A_g}), which
    is also the minimiser of the post-adaptation loss at that N.
    """
    coef = weight_coefficients("S", alpha) if n is None else weight_coefficients("A", alpha, n)
    return population_optimum(moments, coef)


# --------------------------------------------------------------------------------------
# Figure 3
# --------------------------------------------------------------------------------------

#: Upper bound on elements of one [alphas, datasets, M, p, p] work array (memory ~ 8x bytes).
_CHUNK_ELEMENTS = 1 << 23


def cell_comparison(
    alphas: np.ndarray,
    tasks: LinRegTasks,
    m: int,
    n: int,
    datasets: int,
    rng: np.random.Generator,
    moments: TaskMoments | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For one (M, N): per alpha, the number of datasets where MAML beats DRS before/after.

    Returns two int arrays of shape [len(alphas)]. ``moments`` (per-task rotation) is
    computed once by the caller; with per-dataset rotation it is computed here per dataset.
    """
    alphas = np.asarray(alphas, dtype=float)
    chunk = max(1, _CHUNK_ELEMENTS // (len(alphas) * m * tasks.p * tasks.p))
    wins_before = np.zeros(len(alphas), dtype=np.int64)
    wins_after = np.zeros(len(alphas), dtype=np.int64)
    done = 0
    while done < datasets:
        b = min(chunk, datasets - done)
        batch = tasks.sample(b, m, rng)
        stats = sample_stats(batch, n, rng)
        mom = moments if tasks.rotation == "per-task" else task_moments(tasks, batch.dataset_rotation, rng)
        assert mom is not None
        drs = drs_estimate(stats)  # [B, p]
        maml = maml_estimate(stats, alphas)  # [A, B, p]
        wins_before += (loss_before(maml, mom) < loss_before(drs, mom)[None]).sum(axis=1)
        for i, a in enumerate(alphas):
            wins_after[i] += int((loss_after(maml[i], mom, a, n) < loss_after(drs, mom, a, n)).sum())
        done += b
    return wins_before, wins_after


def figure3(
    alphas: tuple[float, ...] | list[float] = DEFAULTS.alphas,
    p: int = DEFAULTS.p,
    grid_m: tuple[int, ...] | list[int] = DEFAULTS.grid_m,
    grid_n: tuple[int, ...] | list[int] = DEFAULTS.grid_n,
    datasets: int = DEFAULTS.datasets,
    seed: int = DEFAULTS.seed,
    *,
    rotation: Rotation = DEFAULTS.rotation,
) -> pd.DataFrame:
    """P(MAML estimate has lower expected loss than DRS), before and after adaptation.

    Gao & Sener (2020), Figure 3. One row per (alpha, M, N); columns alpha, M, N,
    p_maml_better_before, p_maml_better_after, datasets. Cell (M, N) uses the generator
    (seed, "linreg/datasets", M, N, p) for all alphas.
    """
    import pandas as pd

    alphas_arr = np.asarray(alphas, dtype=float)
    if alphas_arr.ndim != 1 or len(alphas_arr) == 0 or np.any(alphas_arr <= 0):
        raise ValueError(f"alphas must be a non-empty list of positive numbers, got {alphas}")
    if not grid_m or not grid_n or min(grid_m) < 1 or min(grid_n) < 1:
        raise ValueError("grid_m and grid_n must be non-empty lists of integers >= 1")
    if datasets < 1:
        raise ValueError(f"datasets must be >= 1, got {datasets}")
    tasks = LinRegTasks(p=p, rotation=rotation)
    moments = task_moments(tasks, rng=generator(seed, "linreg/moments", p)) if rotation == "per-task" else None
    rows = []
    for m in grid_m:
        for n in grid_n:
            rng = generator(seed, "linreg/datasets", int(m), int(n), p)
            before, after = cell_comparison(alphas_arr, tasks, int(m), int(n), datasets, rng, moments)
            for a, wb, wa in zip(alphas_arr, before, after):
                rows.append({
                    "alpha": float(a),
                    "M": int(m),
                    "N": int(n),
                    "p_maml_better_before": wb / datasets,
                    "p_maml_better_after": wa / datasets,
                    "datasets": int(datasets),
                })
    return pd.DataFrame(rows).sort_values(["alpha", "M", "N"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def is_geometric(grid: np.ndarray | list[int] | tuple[int, ...]) -> bool:
    """True if the grid is more evenly spaced in log than in linear scale (and positive)."""
    g = np.sort(np.asarray(grid, dtype=float))
    if len(g) < 3 or g[0] <= 0:
        return len(g) == 2 and g[0] > 0 and g[1] / g[0] >= 10

    def unevenness(d: np.ndarray) -> float:
        return float(np.std(d) / np.mean(d))

    return unevenness(np.diff(np.log(g))) < unevenness(np.diff(g))


@dataclass(frozen=True)
class PlotStyle:
    """Figure layout and colours (one place)."""

    panel_size: tuple[float, float] = (2.6, 2.3)
    levels: tuple[float, ...] = field(default_factory=lambda: tuple(np.linspace(0.0, 1.0, 11)))
    cmap: str = "RdBu_r"  # red: MAML better, blue: DRS better (as in the paper)


STYLE = PlotStyle()


def contour_panel(
    ax: Axes, grid_n: np.ndarray, grid_m: np.ndarray, prob: np.ndarray, *, title: str, style: PlotStyle = STYLE
) -> QuadContourSet:
    """Filled contours of prob [len(grid_m), len(grid_n)] over N (x) and M (y), 0.5 contour in black.

    Returns the filled-contour set (for a colorbar). Axes are log-scaled where the grid is geometric.
    """
    cs = ax.contourf(grid_n, grid_m, prob, levels=list(style.levels), cmap=style.cmap, vmin=0.0, vmax=1.0, extend="neither")
    if prob.min() < 0.5 < prob.max():
        line = ax.contour(grid_n, grid_m, prob, levels=[0.5], colors="k", linewidths=1.4)
        ax.clabel(line, fmt={0.5: "0.5"}, fontsize=7)
    gn, gm = np.meshgrid(grid_n, grid_m)
    ax.plot(gn.ravel(), gm.ravel(), ".", color="0.25", markersize=1.5)
    if is_geometric(grid_n):
        ax.set_xscale("log")
    if is_geometric(grid_m):
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    return cs


def plot_figure3(df: pd.DataFrame, *, p: int | None = None, style: PlotStyle = STYLE) -> Figure:
    """Figure 3 layout: one column per alpha, rows before / after adaptation, shared colorbar."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter, NullFormatter

    alphas = sorted(df["alpha"].unique())
    grid_m = np.array(sorted(df["M"].unique()))
    grid_n = np.array(sorted(df["N"].unique()))
    if len(grid_m) < 2 or len(grid_n) < 2:
        raise ValueError("a contour plot needs at least two values of M and of N")
    ncol = len(alphas)
    fig, axes = plt.subplots(
        2, ncol, figsize=(style.panel_size[0] * ncol + 1.2, style.panel_size[1] * 2 + 0.7),
        sharex=True, sharey=True, squeeze=False, layout="constrained",
    )
    cs = None
    for j, a in enumerate(alphas):
        sub = df[df["alpha"] == a]
        for i, (col, when) in enumerate([("p_maml_better_before", "before"), ("p_maml_better_after", "after")]):
            prob = sub.pivot(index="M", columns="N", values=col).reindex(index=grid_m, columns=grid_n).to_numpy()
            cs = contour_panel(axes[i, j], grid_n, grid_m, prob, title=f"α = {a:g}, {when} adaptation", style=style)
    for ax in axes.ravel():
        for axis, grid in ((ax.xaxis, grid_n), (ax.yaxis, grid_m)):
            if is_geometric(grid):
                axis.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
                axis.set_minor_formatter(NullFormatter())
    for ax in axes[-1]:
        ax.set_xlabel("N (points per task)")
    for ax in axes[:, 0]:
        ax.set_ylabel("M (tasks)")
    cb = fig.colorbar(cs, ax=axes, shrink=0.9, ticks=np.linspace(0, 1, 6))
    cb.set_label("P(MAML has lower expected loss than DRS)")
    n_ds = int(df["datasets"].iloc[0])
    dim = f"p = {p}, " if p is not None else ""
    fig.suptitle(f"Meta-linear regression (Gao & Sener 2020, Fig. 3): {dim}{n_ds} datasets per cell; black: 0.5 contour", fontsize=10)
    return fig
