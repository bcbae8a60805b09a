"""GaussianMLPPolicy and PolicyActor (agents/policy.py) against torch.distributions and
docs/protocol.md section 2 ("Actions": mean and std in units of 10 x the env action, samples
divided by 10 and clipped before the env, log-probabilities of the unclipped sample, std 1.0
in the scaled space at initialisation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from agents.policy import GaussianMLPPolicy, expand_params, stack_params
from agents.registry import make_policy
from rlbench.presets import run_config

D, A = 3, 2
POLICY = GaussianMLPPolicy(obs_dim=D, act_dim=A, hidden_sizes=(5, 4), init_std=1.0, action_scale=10.0)


def params(seed: int, dtype=torch.float64, jitter: float = 0.0):
    p = POLICY.init_params(torch.Generator().manual_seed(seed), dtype)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for v in p.values():  # non-zero biases and log-std, so every term is exercised
            v.add_(jitter * torch.randn(v.shape, generator=g, dtype=dtype))
    return p


def ref_mean(p, obs):
    """The MLP written out: tanh hidden layers, linear output."""
    h = obs
    for i in range(3):
        h = h @ p[f"W{i}"].T + p[f"b{i}"]
        if i < 2:
            h = torch.tanh(h)
    return h


def ref_dist(p, obs):
    return Independent(Normal(ref_mean(p, obs), p["log_std"].exp().expand(*obs.shape[:-1], A)), 1)


def test_log_prob_matches_torch_normal():
    p = params(0, jitter=0.3)
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(6, 4, D, generator=g, dtype=torch.float64)
    # unclipped scaled actions, well outside [-10, 10] for some entries
    acts = 15 * torch.randn(6, 4, A, generator=g, dtype=torch.float64)
    got = POLICY.log_prob(p, obs, acts)
    assert got.shape == (6, 4)
    torch.testing.assert_close(got, ref_dist(p, obs).log_prob(acts), rtol=1e-12, atol=1e-12)


def test_kl_matches_torch_kl_divergence():
    p0, p1 = params(0, jitter=0.3), params(1, jitter=0.3)
    obs = torch.randn(7, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = POLICY.kl(p0, p1, obs)
    torch.testing.assert_close(got, kl_divergence(ref_dist(p0, obs), ref_dist(p1, obs)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(POLICY.kl(p0, p0, obs), torch.zeros(7, dtype=torch.float64), rtol=0, atol=1e-14)


def test_entropy_matches_torch_normal():
    p = params(0, jitter=0.3)
    torch.testing.assert_close(POLICY.entropy(p), ref_dist(p, torch.zeros(1, D, dtype=torch.float64)).entropy()[0])


@pytest.mark.parametrize("extra_dims", [(5,), (2, 3)], ids=["[T,N,d]", "[T,E,H,d]"])
def test_stacked_params_equal_per_task_shared_evaluation(extra_dims):
    T = 3
    per_task = [params(s, jitter=0.3) for s in range(T)]
    other = [params(s + 10, jitter=0.3) for s in range(T)]
    stacked, stacked_other = stack_params(per_task), stack_params(other)
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(T, *extra_dims, D, generator=g, dtype=torch.float64)
    acts = torch.randn(T, *extra_dims, A, generator=g, dtype=torch.float64)
    mu, lp, kl = POLICY.mean(stacked, obs), POLICY.log_prob(stacked, obs, acts), POLICY.kl(stacked, stacked_other, obs)
    for t in range(T):
        torch.testing.assert_close(mu[t], ref_mean(per_task[t], obs[t]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lp[t], ref_dist(per_task[t], obs[t]).log_prob(acts[t]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            kl[t], kl_divergence(ref_dist(per_task[t], obs[t]), ref_dist(other[t], obs[t])), rtol=1e-12, atol=1e-12
        )


def test_expanded_shared_params_act_like_shared_and_sum_gradients():
    p = params(0, jitter=0.3)
    T = 3
    obs = torch.randn(T, 4, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ex = expand_params(p, T)
    torch.testing.assert_close(POLICY.mean(ex, obs), ref_mean(p, obs))
    # gradient through the expanded view = sum of per-task gradients
    g_ex = torch.autograd.grad(POLICY.mean(ex, obs).sum(), p["W0"])[0]
    g_ref = sum(torch.autograd.grad(ref_mean(p, obs[t]).sum(), p["W0"])[0] for t in range(T))
    torch.testing.assert_close(g_ex, g_ref)


def test_actor_scales_clips_and_stores_unclipped_actions():
    p = params(0, jitter=0.3)
    with torch.no_grad():
        p["log_std"].fill_(math.log(8.0))  # big noise: many samples beyond +-10 (env +-1)
    actor = POLICY.actor(p)
    rng = np.random.default_rng(5)
    obs = rng.normal(size=(2, 50, D))
    noise = rng.standard_normal((2, 50, A))
    u, a_env = actor(obs, noise)
    mu = ref_mean(p, torch.as_tensor(obs)).detach().numpy()
    np.testing.assert_allclose(u, mu + 8.0 * noise, rtol=1e-12, atol=1e-12)  # stored: unclipped, scaled space
    np.testing.assert_allclose(a_env, np.clip(u / 10.0, -1.0, 1.0), rtol=0, atol=0)
    assert (np.abs(u) > 10).any() and (np.abs(a_env) <= 1).all()
    assert (np.abs(a_env) == 1).any()


def test_actor_with_stacked_params_matches_per_task_actors():
    T = 3
    per_task = [params(s, jitter=0.3) for s in range(T)]
    rng = np.random.default_rng(6)
    obs, noise = rng.normal(size=(T, 4, D)), rng.standard_normal((T, 4, A))
    u, a = POLICY.actor(stack_params(per_task))(obs, noise)
    for t in range(T):
        ut, at = POLICY.actor(per_task[t])(obs[t : t + 1], noise[t : t + 1])
        np.testing.assert_allclose(u[t], ut[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a[t], at[0], rtol=1e-12, atol=1e-12)


def test_initial_std_is_one_in_the_scaled_space():
    cfg = run_config("rlbench/HalfCheetahRandVel-v0", "drs-ppo", seed=0)
    pol = make_policy(cfg, 17, 6)
    assert pol.action_scale == 10.0
    assert pol.hidden_sizes == (64, 64)
    p = pol.init_params(torch.Generator().manual_seed(0))
    torch.testing.assert_close(p["log_std"].exp(), torch.ones(6))
    # the actor's sample minus its mean is exactly the noise (std 1.0, scaled space), i.e.
    # 0.1 in environment units
    rng = np.random.default_rng(7)
    obs, noise = rng.normal(size=(1, 4, 17)), 0.01 * rng.standard_normal((1, 4, 6))
    u, a = pol.actor(p)(obs, noise)
    u0, a0 = pol.actor(p)(obs, np.zeros_like(noise))
    np.testing.assert_allclose(u - u0, noise, atol=1e-6)
    np.testing.assert_allclose(a - a0, noise / 10.0, atol=1e-6)
    assert all(v.requires_grad and v.is_leaf for v in p.values())
