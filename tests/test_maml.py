"""The MAML agents and the shared adaptation step (agents/core.py, agents/maml.py) and the
equal-budget arithmetic of the Trainer (docs/protocol.md sections 4-5), against oracles:
independent per-task autograd, torch.distributions, and hand arithmetic of step counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from agents.advantages import TensorBatch
from agents.core import adapt, lr_surrogate, process
from agents.maml import ProMP
from agents.policy import GaussianMLPPolicy, stack_params
from rlbench.budget import BudgetExhausted
from rlbench.presets import run_config
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer

F64 = torch.float64
ENV = "rlbench/PointGoal-v0"
POLICY = GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(4,), init_std=1.0, action_scale=10.0)



def theta0(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p = POLICY.init_params(g, F64)
    with torch.no_grad():
        for v in p.values():
            v.add_(0.2 * torch.randn(v.shape, generator=g, dtype=F64))
    return p


def synthetic_tb(params, T: int = 3, n: int = 25, seed: int = 1) -> TensorBatch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, n, 2, generator=g, dtype=F64)
    with torch.no_grad():
        mu = POLICY.mean(params, obs)
    acts = mu + 2.0 * torch.randn(T, n, 2, generator=g, dtype=F64)
    adv = torch.randn(T, n, generator=g, dtype=F64)
    mask = torch.ones(T, n, dtype=F64)
    mask[1, 17:] = 0.0  # a task with padding
    with torch.no_grad():
        logp_old = POLICY.log_prob(params, obs, acts)
    return TensorBatch(obs, acts, adv, mask, logp_old)


def ref_logp(p, obs, acts):
    mu = POLICY.mean(p, obs)
    return Independent(Normal(mu, p["log_std"].exp().expand_as(mu)), 1).log_prob(acts)


def ref_task_loss(kind: str, p, tb: TensorBatch, t: int) -> torch.Tensor:
    """Task t's inner loss over its real transitions only (docs/protocol.md section 4)."""
    m = tb.mask[t] > 0
    obs, acts, adv = tb.obs[t][m], tb.actions[t][m], tb.advantages[t][m]
    lp = ref_logp(p, obs, acts)
    if kind == "promp":
        return -(torch.exp(lp - tb.logp_old[t][m]) * adv).mean()
    return -(lp * adv).mean()


# -- adapt ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["promp", "trpo-maml"])
@pytest.mark.parametrize("stacked", [False, True], ids=["shared", "stacked"])
def test_adapt_is_one_sgd_step_per_task(kind, stacked):
    T, lr = 3, 0.07
    if stacked:
        per_task = [theta0(s) for s in range(T)]
        params = {k: v.detach().clone() for k, v in stack_params(per_task).items()}
    else:
        params = theta0(0)
        per_task = [params] * T
    tb = synthetic_tb(params if not stacked else per_task[0], T)
    before = {k: v.detach().clone() for k, v in params.items()}
    phi = adapt(POLICY, params, tb, lr, kind)
    for t in range(T):
        leaf = {k: v.detach().clone().requires_grad_(True) for k, v in per_task[t].items()}
        grads = torch.autograd.grad(ref_task_loss(kind, leaf, tb, t), tuple(leaf.values()))
        for (k, v), g in zip(leaf.items(), grads):
            torch.testing.assert_close(phi[k][t], v.detach() - lr * g, rtol=1e-12, atol=1e-14)
    # pure: the meta-parameters are bit-identical and received no gradient
    for k in params:
        assert torch.equal(params[k], before[k])
        assert params[k].grad is None
        assert not phi[k].requires_grad
        assert phi[k].shape == (T, *per_task[0][k].shape)


def test_promp_inner_gradient_at_theta_old_is_the_policy_gradient():
    """grad of -mean(pi/pi_old * A) at theta = theta_old equals -mean(grad log pi * A)."""
    theta = theta0(2)
    T = 3
    tb = synthetic_tb(theta, T, seed=3)
    for t in range(T):
        leaf = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
        g_sur = torch.autograd.grad(lr_surrogate(POLICY, leaf, tb)[t], tuple(leaf.values()))
        leaf2 = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
        g_pg = torch.autograd.grad(ref_task_loss("trpo-maml", leaf2, tb, t), tuple(leaf2.values()))
        for a, b in zip(g_sur, g_pg):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    # and therefore both inner losses adapt identically from theta_old
    lr = 0.05
    pa, pb = adapt(POLICY, theta, tb, lr, "promp"), adapt(POLICY, theta, tb, lr, "trpo-maml")
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-11, atol=1e-13)


# -- helpers for runs on the toy ------------------------------------------------------------------------------

SMALL = {"sampler": {"meta_batch_size": 2, "episodes_per_task": 2, "horizon": 5, "n_workers": 1}, "policy": {"hidden_sizes": [8]}}


def small_cfg(algo: str, budget: int = 10_000, **algo_cfg):
    over = {**SMALL, "algo_cfg": algo_cfg} if algo_cfg else dict(SMALL)
    return run_config(ENV, algo, seed=0, budget=budget, overrides=over)


def make_trainer(cfg) -> tuple[Trainer, Sampler]:
    sampler = Sampler(ENV, horizon=cfg.sampler.horizon, n_workers=cfg.sampler.n_workers)
    return Trainer(cfg, sampler), sampler


# -- ProMP's adaptive eta ---------------------------------------------------------------------------------------


def test_adaptive_eta_halves_doubles_or_keeps():
    cfg = small_cfg("promp", adaptive_eta=True, eta=1e-3, kl_target=1e-2)
    agent = ProMP(cfg, POLICY, POLICY.init_params(torch.Generator().manual_seed(0)))
    target = 1e-2
    cases = [
        (0.5 * target / 1.5, 0.5),  # below target / 1.5: halve
        (target / 1.5 * 0.999, 0.5),
        (target / 1.5 * 1.001, 1.0),  # in between: keep
        (target, 1.0),
        (1.5 * target * 0.999, 1.0),
        (1.5 * target * 1.001, 2.0),  # above 1.5 * target: double
        (10 * target, 2.0),
    ]
    for kl, factor in cases:
        agent.eta = 1e-3
        agent.update_eta(kl)
        assert agent.eta == pytest.approx(1e-3 * factor), kl
    fixed = ProMP(small_cfg("promp", adaptive_eta=False, eta=5e-4), POLICY, POLICY.init_params(torch.Generator().manual_seed(0)))
    for kl, _ in cases:
        fixed.update_eta(kl)
        assert fixed.eta == 5e-4


def test_adaptive_eta_follows_the_rule_during_training():
    """The schedule recomputed by hand from a KL measured independently of the agent: KL(pi_old
    || pi_new) with torch.distributions on the pre-adaptation observations (mean over each
    task's real steps, then over tasks); eta halves below 0.01 / 1.5 and doubles above
    1.5 x 0.01 (the paper's target, docs/protocol.md section 4)."""
    cfg = small_cfg("promp", adaptive_eta=True, eta=1e-3)
    assert cfg.algo_cfg.kl_target == 0.01  # the preset's target: the paper's
    trainer, sampler = make_trainer(cfg)
    agent = trainer.agent
    eta, changed = 1e-3, 0
    with sampler:
        for it in range(4):
            log: list = []

            def collect(tasks, params, log=log):
                log.append(trainer.collect(tasks, params))
                return log[-1]

            old = {k: v.detach().clone() for k, v in agent.params.items()}
            tasks = trainer.tasks.sample(cfg.sampler.meta_batch_size, np.random.default_rng(it))
            m = agent.train_iteration(collect, tasks)
            new = {k: v.detach().clone() for k, v in agent.params.items()}
            pre = log[0]
            kls = []
            for t in range(len(tasks)):
                obs = torch.as_tensor(pre.obs[t][pre.valid[t]], dtype=old["log_std"].dtype)
                d0 = Independent(Normal(agent.policy.mean(old, obs), old["log_std"].exp()), 1)
                d1 = Independent(Normal(agent.policy.mean(new, obs), new["log_std"].exp()), 1)
                kls.append(float(kl_divergence(d0, d1).mean()))
            kl = float(np.mean(kls))
            assert m["train/kl_pre"] == pytest.approx(kl, rel=1e-5)  # float32 learner
            assert m["train/eta"] == eta  # the eta this iteration used
            if kl < 0.01 / 1.5:
                expected = eta / 2
            elif kl > 0.01 * 1.5:
                expected = eta * 2
            else:
                expected = eta
            changed += expected != eta
            assert agent.eta == expected, (it, kl)
            eta = expected
    assert changed  # the rule acted at least once on this run


# -- TRPO-MAML's constraint, re-evaluated from the sampled batches ---------------------------------------------------


def test_trpo_maml_step_satisfies_its_kl_constraint_on_adapted_policies():
    cfg = run_config(ENV, "trpo-maml", seed=1, budget=10**6,
                     overrides={"sampler": {"meta_batch_size": 4, "episodes_per_task": 4, "n_workers": 1}, "dtype": "float64"})
    trainer, sampler = make_trainer(cfg)
    agent = trainer.agent
    lr, max_kl = cfg.algo_cfg.inner_lr, cfg.algo_cfg.max_kl
    accepted = 0
    with sampler:
        for it in range(3):
            log: list = []

            def collect(tasks, params, log=log):
                log.append(({k: v.detach().clone() for k, v in params.items()}, trainer.collect(tasks, params)))
                return log[-1][1]

            tasks = trainer.tasks.sample(cfg.sampler.meta_batch_size, np.random.default_rng(it))
            old = {k: v.detach().clone() for k, v in agent.params.items()}
            m = agent.train_iteration(collect, tasks)
            new = {k: v.detach().clone() for k, v in agent.params.items()}
            assert len(log) == 2  # pre and post
            (_, pre), (p_post, post) = log
            pre_tb = process(agent.policy, old, pre, cfg.advantage, F64)
            phi_old = adapt(agent.policy, old, pre_tb, lr, "trpo-maml")
            for k in phi_old:  # the post-adaptation episodes were sampled with phi_old
                torch.testing.assert_close(p_post[k], phi_old[k])
            phi_new = adapt(agent.policy, new, pre_tb, lr, "trpo-maml")
            kls = []
            for t in range(len(tasks)):
                obs = torch.as_tensor(post.obs[t][post.valid[t]])
                d0 = Independent(Normal(agent.policy.mean({k: v[t] for k, v in phi_old.items()}, obs), phi_old["log_std"][t].exp()), 1)
                d1 = Independent(Normal(agent.policy.mean({k: v[t] for k, v in phi_new.items()}, obs), phi_new["log_std"][t].exp()), 1)
                kls.append(float(kl_divergence(d0, d1).mean()))
            kl = float(np.mean(kls))
            assert kl <= max_kl * (1 + 1e-9)
            if m["train/accepted"]:
                accepted += 1
                assert kl > 0
                assert kl == pytest.approx(m["train/kl"], rel=1e-6)
                # and the post-adaptation surrogate went down (it is -mean(A) = 0 at phi_old)
                post_tb = process(agent.policy, phi_old, post, cfg.advantage, F64)
                lp = agent.policy.log_prob(phi_new, post_tb.obs, post_tb.actions)
                sur = -post_tb.task_mean(torch.exp(lp - post_tb.logp_old) * post_tb.advantages).mean()
                assert float(sur) < 0
            else:
                for k, v in old.items():
                    assert torch.equal(v, new[k])
    assert accepted >= 1


# -- equal budgets --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algo,K,rounds",
    [("drs-ppo", 1, 1), ("drs-trpo", 1, 1), ("promp", 1, 2), ("promp", 2, 3), ("trpo-maml", 1, 2), ("trpo-maml", 2, 3)],
)
def test_steps_used_match_the_budget_arithmetic(algo, K, rounds):
    over = {**SMALL, "algo_cfg": {"inner_steps": K}} if algo in ("promp", "trpo-maml") else SMALL
    cfg = run_config(ENV, algo, seed=0, budget=10_000, overrides=over)
    trainer, sampler = make_trainer(cfg)
    meta_batch, episodes, horizon = 2, 2, 5
    with sampler:
        for n in (1, 2, 3):
            m = trainer.iterate()
            expected = n * meta_batch * episodes * horizon * rounds  # PointGoal never terminates early
            assert trainer.budget.used == expected
            assert sampler.total_steps == expected
            assert m["budget/env_steps"] == expected
    assert cfg.iteration_steps == meta_batch * episodes * horizon * rounds


@pytest.mark.parametrize("algo", ["drs-ppo", "promp"])
@pytest.mark.parametrize("multiple", [0.5, 2.5, 3.0])
def test_trainer_never_starts_an_iteration_it_cannot_pay_for(algo, multiple):
    cost = run_config(ENV, algo, seed=0, overrides=SMALL).iteration_steps
    budget = int(multiple * cost)
    trainer, sampler = make_trainer(run_config(ENV, algo, seed=0, budget=budget, overrides=SMALL))
    with sampler:
        while trainer.can_iterate():
            trainer.iterate()
    assert trainer.iteration == int(multiple)
    assert trainer.budget.used == int(multiple) * cost <= budget
    assert sampler.total_steps == trainer.budget.used
    assert budget - trainer.budget.used < cost


def test_iterate_refuses_without_sampling_when_the_budget_cannot_pay():
    cost = run_config(ENV, "promp", seed=0, overrides=SMALL).iteration_steps
    trainer, sampler = make_trainer(run_config(ENV, "promp", seed=0, budget=cost - 1, overrides=SMALL))
    with sampler:
        with pytest.raises(BudgetExhausted, match=rf"an iteration costs up to {cost} steps; only {cost - 1} of {cost - 1} left"):
            trainer.iterate()
        assert sampler.total_steps == 0
