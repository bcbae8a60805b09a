"""The ``fused`` MAML learners (agents/maml.py, the default ``impl``) against the ``reference``,
``batched`` and ``analytic`` implementations on the same sampled batches, in float64.

``fused`` differs from ``analytic`` by not repeating work (TRPO-MAML: the inner steps at the
old parameters come from the sampling rounds, the step size's quadratic form from the
conjugate gradient's products; ProMP: the whole second-order meta-gradient and the KL
penalty's gradient in closed form; both: the baseline's normal equations by BLAS), so it
must give the same numbers up to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_closed_form import close
from test_maml_batched import compare, config, fresh_agent, sampled_rounds

from agents import closed_form, maml
from agents.advantages import compute_advantages
from agents.core import advantage_settings
from agents.policy import GaussianMLPPolicy, torch_threads
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


def replay_fast_and_exact(cfg, monkeypatch, group_tasks: int = 2, count: bool = False):
    """One iteration of the fused ProMP learner with its fast path (agents/closed_form.py
    MLPAt ``fast``) and one with ``fast_forward`` off (the policy's exact operations), on the
    same recorded rounds. Returns ({"fast": agent, "exact": agent}, their metrics, the number
    of task groups, and with ``count`` the number of forward passes each took: MLPAt
    constructions plus GaussianMLPPolicy.mean calls)."""
    width = max(cfg.policy.hidden_sizes)
    monkeypatch.setattr(maml, "CHUNK_ELEMENTS", group_tasks * cfg.sampler.episodes_per_task * cfg.sampler.horizon * width)
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=1) as sampler:
        trainer = Trainer(cfg, sampler)
        agents = {"fast": fresh_agent(cfg, sampler, "fused"), "exact": fresh_agent(cfg, sampler, "fused")}
        agents["exact"].fast_forward = False
        assert agents["fast"].fast and not agents["exact"].fast
        trainer.agent = agents["exact"]
        tasks = trainer.tasks.sample(cfg.sampler.meta_batch_size, seeding.generator(cfg.seed, "train-tasks", 0))
        log = []
        trainer.agent.sample_rounds(lambda tasks_, params: log.append(trainer.collect(tasks_, params)) or log[-1], tasks)
    forwards = {"n": 0}
    if count:
        mlp_init, mean = closed_form.MLPAt.__init__, GaussianMLPPolicy.mean
        monkeypatch.setattr(closed_form.MLPAt, "__init__", lambda *a, **k: forwards.__setitem__("n", forwards["n"] + 1) or mlp_init(*a, **k))
        monkeypatch.setattr(GaussianMLPPolicy, "mean", lambda *a, **k: forwards.__setitem__("n", forwards["n"] + 1) or mean(*a, **k))
    metrics, passes = {}, {}
    for name, agent in agents.items():
        forwards["n"] = 0
        replay = iter(log)
        metrics[name] = agent.train_iteration(lambda tasks_, params, replay=replay: next(replay), tasks)
        assert next(replay, None) is None
        passes[name] = forwards["n"]
    groups = len(agents["fast"].chunks(agents["fast"]._process(log[0], agents["fast"].params)))
    return agents, metrics, groups, passes


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 2e-5)])
@pytest.mark.parametrize("K", [1, 2])
def test_fused_promp_fast_path_equals_the_exact_path(dtype, rtol, K, monkeypatch):
    """The fast path (tanh as 2 sigmoid(2x) - 1, the output layer's and hidden layers' products
    in the other operand order, forward passes shared) against the fused learner with the
    policy's exact operations, on the same batches: the same update up to float rounding."""
    agents, metrics, groups, _ = replay_fast_and_exact(config("promp", K, "second-order", dtype=dtype, adaptive_eta=True), monkeypatch)
    assert groups > 1
    fast, exact = agents["fast"], agents["exact"]
    for k, v in exact.params.items():
        scale = float(v.detach().abs().max())
        torch.testing.assert_close(fast.params[k], v, rtol=0, atol=rtol * scale)
    assert not all(torch.equal(fast.params[k], exact.params[k]) for k in exact.params)  # not the same operations
    assert metrics["fast"].keys() == metrics["exact"].keys()
    for k, v in metrics["exact"].items():
        assert metrics["fast"][k] == pytest.approx(v, rel=rtol * 100, abs=rtol), k


@pytest.mark.parametrize("K", [1, 2])
def test_fused_promp_fast_path_shares_forward_passes(K, monkeypatch):
    """With the fast path each task group's forward pass that gives ``logp_old`` also serves the
    inner step at the same parameters (K rounds), the first Adam step's post-adaptation
    forward pass and the old policy's mean for the KL penalty: K + 2 forward passes fewer
    per task group than with the exact operations."""
    cfg = config("promp", K, "second-order")
    _, _, groups, passes = replay_fast_and_exact(cfg, monkeypatch, count=True)
    steps = cfg.algo_cfg.num_ppo_steps
    # fast: K + 1 rounds processed; Adam steps 2..S recompute K points and the post pass, the
    # first step the K - 1 points after the first; the values after the update: K + 1
    assert passes["fast"] == groups * ((K + 1) + (K - 1) + (steps - 1) * (K + 1) + (K + 1))
    assert passes["exact"] - passes["fast"] == groups * (K + 2)


def test_fused_advantages_by_thread_equal_one_call(monkeypatch):
    """The fused learners compute advantages in one task range per learner thread; every
    quantity is per task, so the result is bit-identical to one call over all tasks."""
    cfg = config("trpo-maml", 1, "second-order", tasks=7)
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=1) as sampler:
        trainer = Trainer(cfg, sampler)
        agent = fresh_agent(cfg, sampler, "fused")
        tasks = trainer.tasks.sample(cfg.sampler.meta_batch_size, seeding.generator(cfg.seed, "train-tasks", 0))
        batch = trainer.collect(tasks, agent.params)
    whole = compute_advantages(batch, advantage_settings(cfg.advantage), blas=True)
    for threads in (2, 3):
        with torch_threads(threads):
            split = agent._advantages(batch)
        assert np.array_equal(split, whole)
    assert batch.task_range(slice(2, 5)).n_tasks == 3 and np.array_equal(batch.task_range(slice(2, 5)).obs, batch.obs[2:5])
