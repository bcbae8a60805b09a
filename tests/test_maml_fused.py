"""The ``fused`` MAML learners (agents/maml.py, the default ``impl``) against the ``reference``,
``batched`` and ``analytic`` implementations on the same sampled batches, in float64.

``fused`` differs from ``analytic`` by not repeating work (TRPO-MAML: the inner steps at the
old parameters come from the sampling rounds, the step size's quadratic form from the
conjugate gradient's products; ProMP: the whole second-order meta-gradient and the KL
penalty's gradient in closed form; both: the baseline's normal equations by BLAS), so it
must give the same numbers up to float rounding."""

from __future__ import annotations

import pytest
import torch
from test_closed_form import close
from test_maml_batched import compare, config, fresh_agent, sampled_rounds

from agents import maml
from rlbench import seeding
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer


@pytest.mark.parametrize("K,estimator", [(1, "second-order"), (2, "second-order"), (1, "first-order"), (1, "hessian-free")])
def test_fused_promp_training_equals_reference(K, estimator, monkeypatch):
    compare(config("promp", K, estimator, adaptive_eta=True), 3, 2, monkeypatch, rtol=1e-9, atol=1e-12, impl="fused")


@pytest.mark.parametrize("K,estimator", [(1, "second-order"), (2, "second-order"), (1, "first-order"), (1, "hessian-free")])
def test_fused_trpo_maml_training_equals_reference(K, estimator, monkeypatch):
    # damping 1.0 as in test_maml_batched (the toy's Fisher is ill-conditioned at 1e-5)
    compare(config("trpo-maml", K, estimator, cg_damping=1.0), 3, 2, monkeypatch, rtol=1e-7, atol=1e-10, impl="fused")


def sampled(algo: str, K: int = 1, **algo_cfg):
    """An agent of each implementation and one iteration's sampled rounds (PointGoal, float64)."""
    return sampled_rounds(config(algo, K, "second-order", **algo_cfg), "fused")


@pytest.mark.parametrize("K", [1, 2])
def test_fused_promp_gradient_equals_autograd_away_from_the_old_policy(K):
    """The closed-form gradient of outer loss + eta KL at parameters far enough from the old
    ones that the clipped branch of the surrogate is taken for many transitions (a training
    run's first Adam steps stay inside the clip range)."""
    agents, inner, post, T = sampled("promp", K)
    agent = agents["fused"]
    # ProMP's fused sampling rounds adapt with closed-form gradients: autograd's steps to rounding
    chain = maml.metagrad.inner_chain(maml.as_stacked(agent.params, T), agent.inner_losses(inner), agent.inner_lr)
    assert len(agent.last_chain) == K + 1
    for p_own, p_ref in zip(agent.last_chain, chain):
        close(p_own, p_ref, 1e-12)
    assert not all(torch.equal(agent.last_chain[-1][k], chain[-1][k]) for k in chain[-1])  # not the autograd tensors
    agent.eta = 0.7  # a KL term of the size of the surrogate's
    old = {k: v.detach().clone() for k, v in agent.params.items()}
    gen = torch.Generator().manual_seed(1)
    theta = {k: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in old.items()}
    mu_old = agent.policy.mean(old, inner[0].obs).detach()
    g, (kl, objective) = agent._fused_group(theta, old, mu_old, inner, post, T)
    leaf = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    g_ref = agent._group_gradient(leaf, old, mu_old, inner, post, T)
    close(g, g_ref, 1e-10)
    # the clipped branch was taken: some ratios outside the clip range with a zero gradient there
    phi = maml.metagrad.inner_chain(maml.as_stacked(theta, T), agent.inner_losses(inner), agent.inner_lr)[-1]
    ratio = torch.exp(agent.policy.log_prob(phi, post.obs, post.actions) - post.logp_old)
    clip = agent.cfg.algo_cfg.clip
    assert float(((ratio - 1).abs() > clip).double().mean()) > 0.1
    assert objective / T == pytest.approx(float(-agent.outer_loss(post)(phi)), rel=1e-12)
    assert kl / T == pytest.approx(float(inner[0].task_mean(agent.policy.kl(old, theta, inner[0].obs)).mean()), rel=1e-12)


@pytest.mark.parametrize("K", [1, 2])
def test_fused_trpo_maml_problem_reuses_the_sampling_chain_exactly(K, monkeypatch):
    """The chain of inner steps the fused sample_rounds computed is bit-identical to the one
    the analytic problem recomputes, and with it the fused problem's gradient, Fisher-vector
    products and line-search losses and KLs are bit-identical to the analytic problem's."""
    agents, inner, post, T = sampled("trpo-maml", K)
    cfg = agents["fused"].cfg
    monkeypatch.setattr(maml, "CHUNK_ELEMENTS", 2 * cfg.sampler.episodes_per_task * cfg.sampler.horizon * max(cfg.policy.hidden_sizes))
    assert len(agents["fused"].chunks(post)) > 1
    analytic = agents["analytic"]
    chain = maml.metagrad.inner_chain(maml.as_stacked(analytic.params, T), analytic.inner_losses(inner), analytic.inner_lr)
    own = agents["fused"].last_chain
    assert len(own) == K + 1
    for p_own, p_ref in zip(own, chain):
        assert all(torch.equal(p_own[k], p_ref[k]) for k in p_ref)
    chain = own
    old_a, loss_a, kl_a, g_a, fvp_a = analytic.analytic_problem(inner, post, T)
    old_f, loss_f, kl_f, g_f, fvp_f = agents["fused"].fused_problem(inner, post, T, chain)
    for k in old_a:
        assert torch.equal(old_a[k], old_f[k])
        assert torch.equal(g_a[k], g_f[k])
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        v = {k: torch.randn(x.shape, generator=gen, dtype=x.dtype) for k, x in old_a.items()}
        fa, ff = fvp_a(v), fvp_f(v)
        assert all(torch.equal(fa[k], ff[k]) for k in v)
        th = {k: x + 0.01 * v[k] for k, x in old_a.items()}
        for point in (th, old_a):
            assert float(loss_f(point)) == float(loss_a(point))
            assert float(kl_f(point)) == float(kl_a(point))
    assert float(kl_f(old_f)) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["promp", "trpo-maml"])
def test_fused_equals_reference_halfcheetah_float32(algo, monkeypatch):
    """The paper's network and dtype on HalfCheetahRandVel, 6 tasks x 2 episodes x 200 steps
    in groups of 4 and 2: one iteration equal up to float32 rounding."""
    cfg = config(algo, 1, "second-order", env="rlbench/HalfCheetahRandVel-v0", dtype="float32", tasks=6, episodes=2)
    compare(cfg, 1, 4, monkeypatch, rtol=2e-4, atol=1e-6, impl="fused")


def test_fused_promp_first_step_reuses_the_sampling_points(monkeypatch):
    """ProMP's first Adam step starts from the inner-loss points the sampling rounds computed
    at theta = old (forward and backward passes kept): the same update as recomputing them."""
    cfg = config("promp", 1, "second-order")
    monkeypatch.setattr(maml, "CHUNK_ELEMENTS", 2 * cfg.sampler.episodes_per_task * cfg.sampler.horizon * max(cfg.policy.hidden_sizes))
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=1) as sampler:
        trainer = Trainer(cfg, sampler)
        reuse, fresh = fresh_agent(cfg, sampler, "fused"), fresh_agent(cfg, sampler, "fused")
        trainer.agent = reuse
        tasks = trainer.tasks.sample(cfg.sampler.meta_batch_size, seeding.generator(cfg.seed, "train-tasks", 0))
        log: list = []

        def record(tasks_, params):
            log.append(trainer.collect(tasks_, params))
            return log[-1]

        seen = []
        original = reuse._fused_group
        monkeypatch.setattr(reuse, "_fused_group", lambda *a, **k: seen.append(k.get("first") is not None) or original(*a, **k))
        m_reuse = reuse.train_iteration(record, tasks)
        assert sum(seen) == len(reuse.chunks(reuse._process(log[0], reuse.params))) > 1  # every group of the first step
        sample_rounds = fresh.sample_rounds

        def without_points(*a):
            out = sample_rounds(*a)
            fresh.sampling_points = None
            return out

        monkeypatch.setattr(fresh, "sample_rounds", without_points)
        replay = iter(log)
        m_fresh = fresh.train_iteration(lambda tasks_, params: next(replay), tasks)
    for k, v in fresh.params.items():
        torch.testing.assert_close(reuse.params[k], v, rtol=1e-12, atol=1e-15)
    assert m_reuse == pytest.approx(m_fresh, rel=1e-12, abs=1e-15)
