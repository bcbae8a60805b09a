"""DRS-PPO's closed-form update (agents/drs.py ``grad_impl="closed-form"``, the default: by task
groups, the fast forward path and the clipped surrogate's gradient in closed form) against
autograd on the whole pooled batch (``grad_impl="autograd"``): the gradient on a padded pooled
batch at parameters far enough from the old ones that the clip is active for many
transitions, whole training iterations on the same sampled batches in float64 and float32,
and the minibatch path (always autograd)."""

from __future__ import annotations

import pytest
import torch
from test_closed_form import POLICY, batch, close, rand_like
from test_drs_trpo_fvp import shared_params, side_by_side

from agents import maml, metagrad
from agents.config import AlgoConfig
from agents.drs import DRSPPO
from rlbench.presets import run_config


class _Cfg:
    algo_cfg = AlgoConfig(num_ppo_steps=1, learning_rate=1.0)


@pytest.mark.parametrize("group_tasks", [1, 2, 3])
def test_closed_form_step_equals_autograd_with_the_clip_active(group_tasks, monkeypatch):
    """One Adam step from parameters 0.3 away from those that sampled the batch (so the clip is
    active for many transitions), on three padded tasks in groups of 1, 2 or 3: the gradient
    the closed-form path hands to Adam equals autograd's of the pooled clipped loss, and the
    logged loss and sample KL are the pooled means."""
    monkeypatch.setattr(maml, "CHUNK_ELEMENTS", group_tasks * 20 * max(POLICY.hidden_sizes))
    old = shared_params(0)
    tb = batch(old, seed=1)
    assert tb.mask[-1].sum() == 0
    theta = {k: v + 0.3 * rand_like(old, 7)[k] for k, v in old.items()}
    agent = DRSPPO.__new__(DRSPPO)  # the policy, the config and an optimiser that records the gradient
    agent.policy, agent.cfg = POLICY, _Cfg()
    agent.params = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    seen = {}

    class Record:
        """Stands in for Adam: keeps the gradient each step hands it and leaves the parameters
        at theta (so the logged loss and KL are taken there too)."""

        def zero_grad(self):
            for v in agent.params.values():
                v.grad = None

        def step(self):
            seen.update({k: v.grad.clone() for k, v in agent.params.items()})

    agent.optimizer = Record()
    metrics = agent._closed_form_steps(tb)
    leaf = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    ref_loss = DRSPPO.loss(agent, leaf, tb.obs, tb.actions, tb.advantages, tb.logp_old, tb.mask)
    close(seen, metagrad.grad(lambda p: DRSPPO.loss(agent, p, tb.obs, tb.actions, tb.advantages, tb.logp_old, tb.mask), leaf), 1e-10)
    assert metrics["train/loss"] == pytest.approx(float(ref_loss.detach()), rel=1e-12)
    ratio = torch.exp(POLICY.log_prob(theta, tb.obs, tb.actions) - tb.logp_old)
    assert float((((ratio - 1).abs() > 0.3).double() * tb.mask).sum() / tb.mask.sum()) > 0.1  # the clip is taken
    kl = tb.pooled_mean(tb.logp_old - POLICY.log_prob(theta, tb.obs, tb.actions))
    assert metrics["train/approx_kl"] == pytest.approx(float(kl), rel=1e-10)


def config(dtype: str, minibatches: int = 1):
    return run_config("rlbench/PointGoal-v0", "drs-ppo", seed=3, budget=10**9, overrides={
        "sampler": {"meta_batch_size": 5, "episodes_per_task": 3, "n_workers": 1}, "dtype": dtype,
        "algo_cfg": {"minibatches": minibatches}})


@pytest.mark.parametrize("dtype,rtol,atol,minibatches", [("float64", 1e-9, 1e-12, 1), ("float32", 2e-5, 1e-6, 1), ("float64", 0, 0, 2)])
def test_drs_ppo_training_equals_autograd(dtype, rtol, atol, minibatches, monkeypatch):
    """Three iterations on PointGoal (5 tasks in groups of 2, 2, 1): the closed-form learner,
    replayed the autograd learner's batches, ends every iteration with the same parameters,
    Adam state and logged values up to float rounding; with minibatches both take the
    autograd path (bit-identical)."""
    agents = None
    for it, agents, m_ref, m_new in side_by_side(config(dtype, minibatches), "grad_impl", 3, monkeypatch):
        for k, v in agents["autograd"].params.items():
            torch.testing.assert_close(agents["closed-form"].params[k], v, rtol=rtol, atol=atol, msg=lambda s, k=k, it=it: f"{k} it {it}: {s}")
        assert m_new.keys() == m_ref.keys()
        for key, v in m_ref.items():
            assert m_new[key] == pytest.approx(v, rel=max(rtol, 1e-12) * 100, abs=atol), (key, it)
    if minibatches == 1:
        assert not all(torch.equal(agents["closed-form"].params[k], v) for k, v in agents["autograd"].params.items())
    s_ref, s_new = agents["autograd"].optimizer.state_dict()["state"], agents["closed-form"].optimizer.state_dict()["state"]
    for i in s_ref:
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(s_new[i][key], s_ref[i][key], rtol=rtol * 100, atol=atol * 100)
