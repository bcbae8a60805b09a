"""Tests of studies.maml_variants (Fallah et al. 2020; Ji, Yang & Liang) and its command.

Oracles are independent of autograd: closed-form gradient and Hessian of the rank-one
factorisation loss, the closed-form MAML gradient, and the closed-form Hessian of the K-step
meta-linear-regression objective. The behavioural checks run reduced versions of the studies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import metagrad as mg
from rlbench.cli import main
from studies import maml_variants as V

# Reduced settings, same step sizes and task spreads as the defaults (keeps the file fast).
SMALL = dataclasses.replace(V.DEFAULTS, n_tasks=200, iterations=300, record_points=30)


def _closed_grad(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """grad f(x) = (x x^T - g g^T) x = |x|^2 x - (g.x) g."""
    return (x @ x) * x - (g @ x) * g


def _closed_hessian(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Hessian f(x) = |x|^2 I + 2 x x^T - g g^T."""
    return (x @ x) * np.eye(len(x)) + 2.0 * np.outer(x, x) - np.outer(g, g)


def _random_problem(t: int = 4, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t, d)), rng.standard_normal((t, d)), rng.standard_normal((t, d))


# ----------------------------------------------------------------------- factorisation oracles


def test_loss_is_the_frobenius_formula() -> None:
    x, g, _ = _random_problem()
    loss = V.factorisation_loss(torch.tensor(g))({"x": torch.tensor(x)})
    expected = sum(0.25 * np.sum((np.outer(xi, xi) - np.outer(gi, gi)) ** 2) for xi, gi in zip(x, g))
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_gradient_and_hvp_match_closed_forms() -> None:
    x, g, v = _random_problem()
    loss = V.factorisation_loss(torch.tensor(g))
    params, vec = {"x": torch.tensor(x)}, {"x": torch.tensor(v)}
    grad = mg.grad(loss, params)["x"].numpy()
    hv = mg.hvp(loss, params, vec, "second-order", 0.0)["x"].numpy()
    hv_free = mg.hvp(loss, params, vec, "hessian-free", 1e-4)["x"].numpy()
    hv_fo = mg.hvp(loss, params, vec, "first-order", 0.0)["x"].numpy()
    for i in range(len(x)):
        np.testing.assert_allclose(grad[i], _closed_grad(x[i], g[i]), rtol=1e-12, atol=1e-12)
        expected = _closed_hessian(x[i], g[i]) @ v[i]
        np.testing.assert_allclose(hv[i], expected, rtol=1e-12, atol=1e-12)
        # Central differences of a cubic gradient: error O(delta^2).
        np.testing.assert_allclose(hv_free[i], expected, rtol=1e-6, atol=1e-6)
    assert not hv_fo.any()


def test_noise_terms_shift_gradient_and_hessian_exactly() -> None:
    x, g, v = _random_problem(seed=1)
    rng = np.random.default_rng(2)
    xi = rng.standard_normal(x.shape)
    a = rng.standard_normal((len(x), x.shape[1], x.shape[1]))
    e = a + np.swapaxes(a, -1, -2)
    params, vec = {"x": torch.tensor(x)}, {"x": torch.tensor(v)}
    grad = mg.grad(V.factorisation_loss(torch.tensor(g), xi=torch.tensor(xi)), params)["x"].numpy()
    hv = mg.hvp(V.factorisation_loss(torch.tensor(g), e=torch.tensor(e)), params, vec, "second-order", 0.0)["x"].numpy()
    for i in range(len(x)):
        np.testing.assert_allclose(grad[i], _closed_grad(x[i], g[i]) + xi[i], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hv[i], (_closed_hessian(x[i], g[i]) + e[i]) @ v[i], rtol=1e-12, atol=1e-12)


def test_true_meta_gradient_matches_closed_form_and_finite_differences() -> None:
    _, g, _ = _random_problem(t=7, d=5, seed=3)
    x = np.random.default_rng(4).standard_normal(5) * 0.7
    alpha = 0.05

    def objective(z: np.ndarray) -> float:
        return float(np.mean([0.25 * np.sum((np.outer(y, y) - np.outer(gi, gi)) ** 2)
                              for gi in g for y in [z - alpha * _closed_grad(z, gi)]]))

    expected = np.mean([(np.eye(5) - alpha * _closed_hessian(x, gi)) @ _closed_grad(x - alpha * _closed_grad(x, gi), gi) for gi in g], axis=0)
    got, obj = V.true_meta_gradient(torch.tensor(x), torch.tensor(g), alpha)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert obj == pytest.approx(objective(x), rel=1e-12)
    h = 1e-6
    fd = np.array([(objective(x + h * e) - objective(x - h * e)) / (2 * h) for e in np.eye(5)])
    np.testing.assert_allclose(expected, fd, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------- factorisation behaviour


def _final(cfg: V.MamlVariantsConfig, similarity: str, gradients: str) -> dict[str, float]:
    out = {}
    for method in V.METHODS:
        run = V.run_factorisation(cfg, similarity, gradients, method)
        tail = run["iteration"] >= 0.9 * cfg.iterations
        out[method] = float(np.median(run["meta_grad_norm"][tail]))
    return out


def test_dissimilar_exact_fo_maml_stalls_while_maml_and_hf_converge() -> None:
    dis = _final(SMALL, "dissimilar", "exact")
    assert dis["FO-MAML"] > 0.05  # stalls at alpha |E H_i grad f_i(x_i')|
    assert dis["FO-MAML"] > 1e3 * dis["MAML"]
    assert dis["FO-MAML"] > 1e3 * dis["HF-MAML"]
    assert dis["HF-MAML"] < 1e-6 and dis["MAML"] < 1e-6
    # With similar tasks, FO-MAML's bias is far smaller (it scales like the task spread squared).
    sim = _final(SMALL, "similar", "exact")
    assert sim["FO-MAML"] < dis["FO-MAML"] / 30


def test_similar_stochastic_three_methods_are_close() -> None:
    cfg = dataclasses.replace(SMALL, iterations=200, record_points=20)
    sim = _final(cfg, "similar", "stochastic")
    values = np.array(list(sim.values()))
    assert values.max() / values.min() < 1.5, sim


def test_stochastic_runs_are_deterministic_per_seed() -> None:
    cfg = dataclasses.replace(SMALL, n_tasks=50, iterations=5, record_points=5, batch_tasks=8)
    a = V.run_factorisation(cfg, "dissimilar", "stochastic", "HF-MAML")
    b = V.run_factorisation(cfg, "dissimilar", "stochastic", "HF-MAML")
    c = V.run_factorisation(dataclasses.replace(cfg, seed=1), "dissimilar", "stochastic", "HF-MAML")
    np.testing.assert_array_equal(a["meta_grad_norm"], b["meta_grad_norm"])
    assert not np.array_equal(a["meta_grad_norm"], c["meta_grad_norm"])


# ----------------------------------------------------------------------- multi-step MAML


def test_meta_smoothness_matches_closed_form_hessian() -> None:
    data = V.kstep_data(V.DEFAULTS)
    x1, x2 = data.x_in.numpy(), data.x_out.numpy()
    n, p = x1.shape[1], x1.shape[2]
    for k, alpha in [(1, 0.5), (3, 0.2), (10, 0.05)]:
        hess = np.zeros((p, p))
        for a1, a2 in zip(x1, x2):
            jac = np.linalg.matrix_power(np.eye(p) - alpha * a1.T @ a1 / n, k)
            hess += jac.T @ (a2.T @ a2 / n) @ jac / len(x1)
        assert V.meta_smoothness(data, k, alpha) == pytest.approx(np.linalg.eigvalsh(hess).max(), rel=1e-10)


def test_fixed_inner_step_is_unstable_for_many_steps_while_c_over_k_is_stable() -> None:
    cfg = dataclasses.replace(V.DEFAULTS, iterations=60, record_points=60)
    _, summary = V.kstep_study(cfg)
    fixed = summary[summary["schedule"] == "fixed"].set_index("K")
    scaled = summary[summary["schedule"] == "c/K"].set_index("K")
    # Fixed alpha: K = 1, 2 train; K = 5, 10 diverge within a few iterations at the same beta,
    # because the meta-objective's curvature grows exponentially in K.
    assert (fixed.loc[[1, 2], "diverged_at"] == -1).all()
    assert (fixed.loc[[5, 10], "diverged_at"].between(0, 10)).all()
    assert fixed.loc[10, "meta_smoothness"] > 1e4 * fixed.loc[1, "meta_smoothness"]
    assert fixed.loc[10, "beta_stable_limit"] < cfg.kstep_outer_lr < fixed.loc[2, "beta_stable_limit"]
    # alpha = c / K: bounded curvature for every K, no divergence, and more steps do not hurt.
    assert (scaled["diverged_at"] == -1).all()
    assert (scaled["meta_smoothness"] < 2.0 / cfg.kstep_outer_lr).all()
    assert (scaled["meta_smoothness"] <= scaled.loc[1, "meta_smoothness"]).all()  # does not grow with K
    assert scaled.loc[10, "final_objective"] < scaled.loc[1, "final_objective"]


# ----------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--iterations", "0"], "--iterations must be >= 1"),
        (["--iterations", "ten"], "--iterations expects an integer"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--seed", "1.5"], "--seed expects an integer"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(["maml-variants", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_refuses_to_overwrite_and_rejects_file_as_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "factorisation.csv").write_text("keep me\n")
    assert main(["maml-variants", "--out", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "factorisation.csv").read_text() == "keep me\n"
    f = tmp_path / "a_file"
    f.write_text("")
    assert main(["maml-variants", "--out", str(f)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: missing --out
        main(["maml-variants"])
    assert e.value.code == 2
