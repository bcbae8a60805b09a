"""Oracle tests for studies.linreg (Gao & Sener 2020, section 4 / Figure 3; docs/protocol.md s.8).

Each closed form is checked against something computed independently: numerical minimisers
of the literal empirical objectives, Monte Carlo simulation of tasks and of adaptation, and
hand-computed moments of U([0, 2]).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from rlbench.cli import main
from studies import linreg as L


def _fixed_task(p: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A single task (Q, theta_g, sigma^2) with a non-diagonal Q."""
    v = L.haar_so(1, p, rng)[0]
    theta_g = rng.uniform(0.2, 2.0, p)
    return (v * theta_g) @ v.T, theta_g, 0.7


# ----------------------------------------------------------------------------- estimates


@pytest.mark.parametrize("p", [1, 3])
def test_drs_estimate_equals_lstsq_on_stacked_points(p: int) -> None:
    rng = np.random.default_rng(0)
    tasks = L.LinRegTasks(p=p).sample(3, 4, rng)
    n = 5
    x1, y1 = L.sample_raw(tasks, n, rng)
    x2, y2 = L.sample_raw(tasks, n, rng)
    est = L.drs_estimate(L.stats_from_data(x1, y1, x2, y2))
    for b in range(3):
        design = np.concatenate([x1[b].reshape(-1, p), x2[b].reshape(-1, p)])
        target = np.concatenate([y1[b].ravel(), y2[b].ravel()])
        np.testing.assert_allclose(est[b], np.linalg.lstsq(design, target, rcond=None)[0], rtol=1e-9, atol=1e-10)


def _maml_objective(theta: np.ndarray, alpha: float, x1, y1, x2, y2) -> float:
    """The literal MAML objective of PROTOCOL s.8, one task at a time, written without the module."""
    total = 0.0
    n = x1.shape[1]
    for j in range(x1.shape[0]):
        grad = sum(np.outer(x, x) @ theta - x * y for x, y in zip(x1[j], y1[j]))
        theta_j = theta - alpha / n * grad
        total += float(np.sum((y2[j] - x2[j] @ theta_j) ** 2))
    return total


@pytest.mark.parametrize("p", [1, 2])
def test_maml_estimate_equals_numerical_minimiser(p: int) -> None:
    rng = np.random.default_rng(1)
    alphas = np.array([0.3, 0.8])
    tasks = L.LinRegTasks(p=p).sample(2, 3, rng)
    x1, y1 = L.sample_raw(tasks, 4, rng)
    x2, y2 = L.sample_raw(tasks, 4, rng)
    est = L.maml_estimate(L.stats_from_data(x1, y1, x2, y2), alphas)
    assert est.shape == (2, 2, p)
    for i, a in enumerate(alphas):
        for b in range(2):
            res = minimize(_maml_objective, np.ones(p), args=(a, x1[b], y1[b], x2[b], y2[b]), method="BFGS", options={"gtol": 1e-10})
            np.testing.assert_allclose(est[i, b], res.x, rtol=1e-5, atol=1e-6)


def test_maml_estimate_equals_lstsq_on_explicit_design_matrix() -> None:
    # theta_j = (I - alpha G1) theta + alpha b1, so each outer point gives one linear equation.
    rng = np.random.default_rng(2)
    p, m, n, a = 3, 5, 6, 0.4
    tasks = L.LinRegTasks(p=p).sample(1, m, rng)
    x1, y1 = L.sample_raw(tasks, n, rng)
    x2, y2 = L.sample_raw(tasks, n, rng)
    rows, targets = [], []
    for j in range(m):
        g1 = sum(np.outer(x, x) for x in x1[0, j]) / n
        b1 = sum(x * y for x, y in zip(x1[0, j], y1[0, j])) / n
        for x, y in zip(x2[0, j], y2[0, j]):
            rows.append(x @ (np.eye(p) - a * g1))
            targets.append(y - a * x @ b1)
    oracle = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)[0]
    est = L.maml_estimate(L.stats_from_data(x1, y1, x2, y2), a)[0, 0]
    np.testing.assert_allclose(est, oracle, rtol=1e-9, atol=1e-10)


def test_wishart_statistics_match_raw_points_in_distribution() -> None:
    # The fast sampler draws X^T X and X^T y directly; compare their first two moments with
    # those of statistics computed from explicit points of the same tasks.
    rng = np.random.default_rng(3)
    p, n, reps = 2, 3, 40_000
    q, _, s2 = _fixed_task(p, rng)
    lam, v = np.linalg.eigh(q)
    tasks = L.TaskBatch(
        theta=np.broadcast_to(lam, (reps, 1, p)),
        noise_var=np.full((reps, 1), s2),
        rotation=np.broadcast_to(v, (reps, 1, p, p)),
    )
    # theta in TaskBatch is both eigenvalues and regression weights (Q = V diag(theta) V^T), as in PROTOCOL
    feats = []
    for method in ("wishart", "raw"):
        st = L.sample_stats(tasks, n, np.random.default_rng(4), method=method).first
        feats.append(np.concatenate([st.gram.reshape(reps, -1), st.xty.reshape(reps, -1)], axis=1))
    w, r = feats
    se = np.sqrt(w.var(0) / reps + r.var(0) / reps)
    assert np.all(np.abs(w.mean(0) - r.mean(0)) < 5 * se)
    np.testing.assert_allclose(np.cov(w.T), np.cov(r.T), rtol=0.08, atol=0.02)
    np.testing.assert_allclose(w[:, : p * p].mean(0), q.ravel(), atol=5 * se[: p * p].max())


# ------------------------------------------------------------------------ moments, losses


def test_gaussian_fourth_moment_identity_p3() -> None:
    rng = np.random.default_rng(5)
    q, _, _ = _fixed_task(3, rng)
    x = rng.multivariate_normal(np.zeros(3), q, size=400_000)
    s = np.einsum("ni,ij,nj->n", x, q, x)
    mc = np.einsum("n,ni,nj->ij", s, x, x) / len(x)
    exact = 2 * np.linalg.matrix_power(q, 3) + np.trace(q @ q) * q
    np.testing.assert_allclose(mc, exact, rtol=0.03, atol=0.03 * np.abs(exact).max())


def test_exact_moments_p1_match_uniform_moments() -> None:
    mom = L.task_moments(L.LinRegTasks(p=1))
    e = {k: 2.0**k / (k + 1) for k in range(1, 7)}  # E[theta^k], theta ~ U[0, 2]
    assert mom.exact
    np.testing.assert_allclose(mom.mat[:, 0, 0], [e[1], e[2], e[3], e[3]])
    np.testing.assert_allclose(mom.vec[:, 0], [e[2], e[3], e[4], e[4]])
    np.testing.assert_allclose(mom.sca, [e[3], e[4], e[5], e[5]])
    # Hand-computed optima: 4/3, and for alpha = 1/2: (4/3 - 2 + 4/5) / (1 - 4/3 + 1/2) = 0.8.
    np.testing.assert_allclose(L.theta_drs_star(mom), [4 / 3])
    np.testing.assert_allclose(L.theta_maml_star(mom, 0.5), [0.8])
    # The optimum minimises its loss.
    coef = L.weight_coefficients("S", 0.5)
    best = L.expected_loss(np.array([0.8]), mom, coef)
    assert best < L.expected_loss(np.array([0.79]), mom, coef) and best < L.expected_loss(np.array([0.81]), mom, coef)


@pytest.mark.parametrize("rotation", ["per-task", "per-dataset"])
def test_exact_moments_match_monte_carlo_p3(rotation: str) -> None:
    rng = np.random.default_rng(6)
    dist = L.LinRegTasks(p=3, rotation=rotation)
    k = 100_000
    batch = dist.sample(1, k, rng)
    basis = L.basis_matrices(batch.q[0])  # [k, 4, p, p]
    th = batch.theta[0]
    mc_mat = basis.mean(0)
    mc_vec = np.einsum("kcij,kj->ci", basis, th) / k
    mc_sca = np.einsum("ki,kcij,kj->c", th, basis, th) / k
    mom = L.task_moments(dist, rotations=batch.dataset_rotation)
    mat, vec, sca = (mom.mat, mom.vec, mom.sca) if rotation == "per-task" else (mom.mat[0], mom.vec[0], mom.sca[0])
    scale = np.abs(sca)[:, None]
    np.testing.assert_allclose(mc_mat, mat, atol=0.02 * scale[:, :, None].max())
    np.testing.assert_allclose(mc_vec / scale, vec / scale, atol=0.02)
    np.testing.assert_allclose(mc_sca, sca, rtol=0.02)


def test_post_adaptation_loss_matches_simulated_adaptation_single_task() -> None:
    # One task: adapt theta on N fresh points R times, average ||theta_j - theta_g||^2_Q.
    rng = np.random.default_rng(7)
    p, n, alpha, reps = 2, 3, 0.6, 200_000
    q, theta_g, s2 = _fixed_task(p, rng)
    theta = np.array([0.3, 1.7])
    x = rng.multivariate_normal(np.zeros(p), q, size=(reps, n))
    y = x @ theta_g + np.sqrt(s2) * rng.standard_normal((reps, n))
    grad = np.einsum("rni,rn->ri", x, x @ theta - y) / n
    d = theta - alpha * grad - theta_g
    losses = np.einsum("ri,ij,rj->r", d, q, d)
    a_mat = np.einsum("c,cij->ij", L.weight_coefficients("A", alpha, n), L.basis_matrices(q))
    e = theta - theta_g
    exact = e @ a_mat @ e + alpha**2 * s2 * np.trace(q @ q) / n  # + noise term shared by all theta
    assert abs(losses.mean() - exact) < 5 * losses.std() / np.sqrt(reps)


def test_post_adaptation_loss_matches_simulation_over_tasks() -> None:
    # Noise-free tasks so that the loss has no additive constant: E_g E_data ||theta_j - theta_g||^2_Q.
    rng = np.random.default_rng(8)
    p, n, alpha, k = 2, 4, 0.5, 200_000
    dist = L.LinRegTasks(p=p, noise_var_high=0.0)
    tasks = dist.sample(1, k, rng)
    theta = np.array([0.9, 1.4])
    x, y = L.sample_raw(tasks, n, rng)
    x, y, th, q = x[0], y[0], tasks.theta[0], tasks.q[0]
    grad = np.einsum("kni,kn->ki", x, x @ theta - y) / n
    d = theta - alpha * grad - th
    losses = np.einsum("ki,kij,kj->k", d, q, d)
    mom = L.task_moments(dist)
    exact = float(L.loss_after(theta, mom, alpha, n))
    assert abs(losses.mean() - exact) < 5 * losses.std() / np.sqrt(k)
    before = np.einsum("ki,kij,kj->k", theta - th, q, theta - th)
    assert abs(before.mean() - float(L.loss_before(theta, mom))) < 5 * before.std() / np.sqrt(k)


def test_estimates_converge_to_population_optima() -> None:
    # Many tasks: DRS -> E[Q]^-1 E[Q theta]; MAML at large N -> E[S]^-1 E[S theta]; at small N it
    # converges to E[A]^-1 E[A theta] instead (alpha = 1/2, N = 2: 1.4, hand-computed).
    rng = np.random.default_rng(9)
    dist = L.LinRegTasks(p=1)
    mom = L.task_moments(dist)
    big_n = L.sample_stats(dist.sample(4, 20_000, rng), 1000, rng)
    np.testing.assert_allclose(L.drs_estimate(big_n)[:, 0], L.theta_drs_star(mom)[0], atol=0.02)
    np.testing.assert_allclose(L.maml_estimate(big_n, 0.5)[0, :, 0], L.theta_maml_star(mom, 0.5, 1000)[0], atol=0.02)
    assert abs(L.theta_maml_star(mom, 0.5, 1000)[0] - L.theta_maml_star(mom, 0.5)[0]) < 0.01
    small_n = L.sample_stats(dist.sample(4, 20_000, rng), 2, rng)
    np.testing.assert_allclose(L.theta_maml_star(mom, 0.5, 2), [1.4])
    np.testing.assert_allclose(L.maml_estimate(small_n, 0.5)[0, :, 0], 1.4, atol=0.05)
    dist3 = L.LinRegTasks(p=3)
    mom3 = L.task_moments(dist3)
    st3 = L.sample_stats(dist3.sample(2, 20_000, rng), 200, rng)
    np.testing.assert_allclose(L.drs_estimate(st3), np.broadcast_to(L.theta_drs_star(mom3), (2, 3)), atol=0.02)
    np.testing.assert_allclose(L.maml_estimate(st3, 0.5)[0], np.broadcast_to(L.theta_maml_star(mom3, 0.5, 200), (2, 3)), atol=0.02)


# --------------------------------------------------------------------- rotations, seeding


def test_rotations_are_in_so_p() -> None:
    rng = np.random.default_rng(10)
    for p in (1, 2, 4):
        v = L.haar_so(5000, p, rng)
        np.testing.assert_allclose(v @ np.swapaxes(v, -1, -2), np.broadcast_to(np.eye(p), v.shape), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(v), 1.0, atol=1e-12)
        if p > 1:  # Haar: entries have mean 0 and variance 1/p
            np.testing.assert_allclose(v.mean(0), 0.0, atol=0.05)
            np.testing.assert_allclose((v**2).mean(0), 1.0 / p, atol=0.03)
    per_task = L.LinRegTasks(p=3).sample(2, 4, rng).rotation
    per_ds = L.LinRegTasks(p=3, rotation="per-dataset").sample(2, 4, rng).rotation
    assert not np.allclose(per_task[:, 0], per_task[:, 1])
    np.testing.assert_array_equal(per_ds[:, 0], per_ds[:, 3])


def test_figure3_is_deterministic_and_cells_do_not_depend_on_grid() -> None:
    kw = {"alphas": (0.5, 1.0), "p": 1, "datasets": 50}
    a = L.figure3(grid_m=(2, 8), grid_n=(1, 4), seed=3, **kw)
    b = L.figure3(grid_m=(2, 8), grid_n=(1, 4), seed=3, **kw)
    pd.testing.assert_frame_equal(a, b)
    c = L.figure3(grid_m=(8,), grid_n=(4,), seed=3, **kw)
    pd.testing.assert_frame_equal(a[(a.M == 8) & (a.N == 4)].reset_index(drop=True), c)
    d = L.figure3(grid_m=(2, 8), grid_n=(1, 4), seed=4, **kw)
    assert not a.equals(d)
    assert list(a.columns) == ["alpha", "M", "N", "p_maml_better_before", "p_maml_better_after", "datasets"]


# ------------------------------------------------------------------------------ Figure 3


def test_figure3_asymptotics() -> None:
    df = L.figure3(alphas=(0.25, 0.5, 1.0), p=1, grid_m=(2, 400), grid_n=(1, 400), datasets=400, seed=0)
    big = df[(df.M == 400) & (df.N == 400)]
    assert (big.p_maml_better_before < 0.05).all()  # DRS is the pre-adaptation optimum
    assert (big.p_maml_better_after > 0.95).all()  # MAML targets the post-adaptation optimum
    small = df[(df.M == 2) & (df.N == 1)]
    assert (small.p_maml_better_after < 0.4).all()  # MAML's extra variance dominates


# ----------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--alpha", "0"], "--alpha"),
        (["--alpha", "-1"], "--alpha"),
        (["--alpha", "abc"], "--alpha"),
        (["--p", "0"], "--p"),
        (["--p", "1.5"], "--p"),
        (["--grid-m"], "empty grid"),
        (["--grid-n", "1", "x"], "--grid-n"),
        (["--grid-n", "0", "2"], "--grid-n"),
        (["--datasets", "2.5"], "--datasets"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, capsys, argv: list[str], fragment: str) -> None:
    assert main(["linreg", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and err.startswith("rlbench: error:")
    assert not (tmp_path / "o").exists()


def test_cli_writes_outputs_and_refuses_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "o"
    argv = ["linreg", "--alpha", "0.5", "--grid-m", "2", "8", "--grid-n", "1", "4", "--datasets", "20", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    for name in ("linreg.csv", "linreg.png", "linreg.pdf", "linreg.json"):
        assert str(out / name) in printed and (out / name).stat().st_size > 0
    df = pd.read_csv(out / "linreg.csv")
    assert len(df) == 4 and set(df.alpha) == {0.5}
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
