"""``algo_cfg.fvp_subsample`` (off by default): the TRPO learners' conjugate gradient on the
Fisher-vector products of the first ceil(fraction x T) of the iteration's T tasks. Oracles:
for TRPO-MAML, the whole-batch autograd reference problem built on those tasks alone; for
DRS+TRPO, autograd's product of the pooled mean KL over those tasks, and the autograd learner
trained side by side with the closed-form one. The gradient, loss and KL stay those of the
whole batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_closed_form import POLICY, batch, close, rand_like
from test_drs_trpo_fvp import config as drs_config
from test_drs_trpo_fvp import shared_params, side_by_side
from test_maml_fused import sampled

from agents import maml
from agents.config import ConfigError
from agents.core import fvp_of_kl
from agents.drs import DRSTRPO


def with_subsample(agent, fraction: float):
    agent.cfg = dataclasses.replace(agent.cfg, algo_cfg=dataclasses.replace(agent.cfg.algo_cfg, fvp_subsample=fraction))
    return agent


@pytest.mark.parametrize("n", range(1, 10))
def test_task_groups_split_at_the_subsample(n):
    """The groups partition the tasks in order; with ``split`` none crosses it, and the groups
    before it are those of ``split`` tasks; at ``split`` = n they are the unsplit groups."""
    for size_elements in (1, 2, 3, 4):
        per_task = maml.CHUNK_ELEMENTS // size_elements  # groups of size_elements tasks
        plain = maml.task_chunks(n, per_task, 1)
        assert maml.task_chunks(n, per_task, 1, n) == plain == maml.task_chunks(n, per_task, 1, None)
        for k in range(1, n + 1):
            groups = maml.task_chunks(n, per_task, 1, k)
            assert [i for c in groups for i in range(c.start, c.stop)] == list(range(n))
            assert all(c.stop <= k or c.start >= k for c in groups)
            assert [c for c in groups if c.stop <= k] == maml.task_chunks(k, per_task, 1)


def test_subsample_size():
    assert maml.fvp_tasks(40, 1.0) == 40
    assert maml.fvp_tasks(40, 0.25) == 10
    assert maml.fvp_tasks(10, 0.3) == 3  # 0.3 x 10 = 3.0000000000000004 in floating point
    assert maml.fvp_tasks(5, 0.5) == 3
    assert maml.fvp_tasks(5, 0.01) == 1


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("impl", ["fused", "analytic", "batched"])
def test_trpo_maml_products_are_those_of_the_first_tasks(K, impl, monkeypatch):
    """T = 5 tasks in groups of 2, fraction 0.5 -> the first 3 tasks (a group boundary that
    the split creates): the product equals the reference problem's on those 3 tasks alone
    (their mean), the gradient and the loss and KL stay the whole batch's, and at fraction 1
    the product is the whole batch's."""
    agents, inner, post, T = sampled("trpo-maml", K)
    cfg = agents["fused"].cfg
    monkeypatch.setattr(maml, "CHUNK_ELEMENTS", 2 * cfg.sampler.episodes_per_task * cfg.sampler.horizon * max(cfg.policy.hidden_sizes))
    ref = agents["reference"]
    first = slice(0, 3)
    _, _, _, _, fvp_first = ref.reference_problem([tb.tasks(first) for tb in inner], post.tasks(first), 3)
    old, loss_all, kl_all, g_all, fvp_all = ref.reference_problem(inner, post, T)
    agent = with_subsample(agents[impl], 0.5)
    chain = agent.last_chain if impl == "fused" else None
    problem = agent.fused_problem if impl == "fused" else getattr(agent, f"{impl}_problem")
    args = (inner, post, T, chain) if impl != "batched" else (inner, post, T)
    start, loss, kl, g, fvp = problem(*args)
    close(g, g_all, 1e-10)
    for seed in range(2):
        v = rand_like(old, seed)
        close(fvp(v), fvp_first(v), 1e-10)
        assert not torch.allclose(fvp(v)["W0"], fvp_all(v)["W0"], rtol=1e-3)  # a different matrix from the whole batch's
        theta = {k: x + 0.01 * v[k] for k, x in old.items()}
        assert float(loss(theta)) == pytest.approx(float(loss_all(theta)), rel=1e-10)
        assert float(kl(theta)) == pytest.approx(float(kl_all(theta)), rel=1e-9)
    full = with_subsample(agent, 1.0)
    *_, fvp_full = (full.fused_problem if impl == "fused" else getattr(full, f"{impl}_problem"))(*args)
    close(fvp_full(rand_like(old, 0)), fvp_all(rand_like(old, 0)), 1e-10)


def test_trpo_maml_reference_has_no_subsample():
    agents, inner, post, T = sampled("trpo-maml", 1)
    with pytest.raises(ValueError, match="fvp_subsample"):
        with_subsample(agents["reference"], 0.5).reference_problem(inner, post, T)


@pytest.mark.parametrize("fraction,k,order", [(0.3, 1, [0, 1, 2]), (0.5, 2, [2, 0, 1])])
def test_drs_trpo_products_are_those_of_the_first_tasks(fraction, k, order, monkeypatch):
    """Three tasks with padding (one has no transitions, placed so that a task with
    transitions is always left out) in groups of one: the product is autograd's of the pooled
    mean KL over the first k tasks alone (pooled over their own transitions), not the whole
    batch's; the gradient is the whole batch's."""
    monkeypatch.setattr(maml, "CHUNK_ELEMENTS", 20 * max(POLICY.hidden_sizes))
    old = shared_params(0)
    old["log_std"] = torch.tensor([0.3, -0.4], dtype=torch.float64)
    full = batch(old, seed=1)
    tb = type(full)(*(getattr(full, f)[order] for f in ("obs", "actions", "advantages", "mask", "logp_old")))
    assert tb.mask[k:].sum() > 0 and tb.mask[:k].sum() > 0
    agent = DRSTRPO.__new__(DRSTRPO)
    agent.policy = POLICY
    agent.cfg = drs_config()
    _, _, _, g_all, fvp_all = agent.closed_form_problem(tb, old)
    with_subsample(agent, fraction)
    _, _, _, g, fvp = agent.closed_form_problem(tb, old)
    sub = tb.tasks(slice(0, k))
    auto = fvp_of_kl(lambda p: sub.pooled_mean(POLICY.kl(old, p, sub.obs)), old)
    close(g, g_all, 1e-12)
    for seed in range(3):
        v = rand_like(old, seed)
        close(fvp(v), auto(v), 1e-12)
        assert not torch.allclose(fvp(v)["W0"], fvp_all(v)["W0"], rtol=1e-3)


def test_drs_trpo_training_with_a_subsample_equals_autograd(monkeypatch):
    """Three iterations on PointGoal (5 tasks, fraction 0.5 -> 3): the closed-form learner
    replayed the autograd learner's batches ends each iteration with the same parameters, and
    both differ from a learner with all the tasks' products."""
    cfg = drs_config()
    cfg = dataclasses.replace(cfg, algo_cfg=dataclasses.replace(cfg.algo_cfg, fvp_subsample=0.5))
    last = None
    for _it, agents, m_ref, m_new in side_by_side(cfg, "fvp_impl", 3, monkeypatch):
        for key, v in agents["autograd"].params.items():
            torch.testing.assert_close(agents["closed-form"].params[key], v, rtol=1e-9, atol=1e-12)
        assert m_new["train/kl"] == pytest.approx(m_ref["train/kl"], rel=1e-8, abs=1e-12)
        last = agents["closed-form"].params
    whole = None
    for _it, agents, _, _ in side_by_side(drs_config(), "fvp_impl", 3, monkeypatch):
        whole = agents["closed-form"].params
    assert not torch.allclose(last["W0"], whole["W0"], rtol=1e-6)


def test_config_checks():
    cfg = drs_config().algo_cfg
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match=r"algo_cfg.fvp_subsample: must lie in \(0, 1\]"):
            dataclasses.replace(cfg, fvp_subsample=bad).validate("algo_cfg")
    with pytest.raises(ConfigError, match="hessian-free"):
        dataclasses.replace(cfg, fvp_subsample=0.5, meta_gradient="hessian-free").validate("algo_cfg")
    dataclasses.replace(cfg, fvp_subsample=0.5).validate("algo_cfg")
    assert cfg.fvp_subsample == 1.0  # off by default


def test_runs_with_a_subsample_are_not_comparable_with_default_runs():
    """rlbench compare refuses pairs whose comparability records differ: a run with a subsample
    records it, a default run records nothing (so runs made before the option stay comparable)."""
    from rlbench.presets import run_config
    from rlbench.runner import comparability
    from rlbench.store import diff_dicts

    env = "rlbench/HalfCheetahRandVel-v0"
    default = comparability(run_config(env, "drs-trpo", 1))
    sub = comparability(run_config(env, "trpo-maml", 1, overrides={"algo_cfg": {"fvp_subsample": 0.25}}))
    assert "fvp_subsample" not in default and sub["fvp_subsample"] == 0.25
    assert diff_dicts(default, sub) == ["fvp_subsample"]
    assert comparability(run_config(env, "trpo-maml", 1)) == default

