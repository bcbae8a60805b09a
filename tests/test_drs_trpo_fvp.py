"""DRS-TRPO's closed-form update (agents/drs.py ``fvp_impl="closed-form"``, the default: by task
groups, closed-form gradient and Fisher-vector products) against autograd on the whole pooled
batch (``fvp_impl="autograd"``: agents/core.py ``fvp_of_kl``), in float64: the TRPO problem
(gradient, products, surrogate and KL) on a padded pooled batch split into several task
groups, and whole training iterations on the same sampled batches."""

from __future__ import annotations

import pytest
import torch
from test_closed_form import POLICY, batch, close, rand_like

from agents import maml, metagrad
from agents.core import DTYPES, fvp_of_kl
from agents.drs import DRSTRPO
from agents.registry import AGENTS, make_policy
from rlbench import seeding
from rlbench.presets import run_config
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer


def shared_params(seed: int) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in POLICY.init_params(torch.Generator().manual_seed(seed), torch.float64).items()}


@pytest.mark.parametrize("group_tasks", [1, 2, 3])
def test_closed_form_problem_equals_autograd_on_a_padded_pooled_batch(group_tasks, monkeypatch):
    """Three tasks with padding (one task has no transitions at all), log-std away from 0,
    in groups of 1, 2 or 3 tasks: the same gradient of the pooled surrogate, the same
    Hessian-vector products of the pooled mean KL, and the same surrogate and KL at the old
    and at other parameters, as autograd on the whole pooled batch."""
    monkeypatch.setattr(maml, "CHUNK_ELEMENTS", group_tasks * 20 * max(POLICY.hidden_sizes))
    old = shared_params(0)
    old["log_std"] = torch.tensor([0.3, -0.4], dtype=torch.float64)
    tb = batch(old, seed=1)
    assert tb.mask[-1].sum() == 0 and 0 < tb.mask[0].sum() < tb.mask.shape[1]
    agent = DRSTRPO.__new__(DRSTRPO)  # only the policy and the algorithm's settings are used
    agent.policy = POLICY
    agent.cfg = config()
    start, loss, kl, g, fvp = agent.closed_form_problem(tb, old)

    def loss_ref(p):
        return -tb.pooled_mean(torch.exp(POLICY.log_prob(p, tb.obs, tb.actions) - tb.logp_old) * tb.advantages)

    def kl_ref(p):
        return tb.pooled_mean(POLICY.kl(old, p, tb.obs))

    assert start is old
    close(g, metagrad.grad(loss_ref, old), rtol=1e-12)
    auto = fvp_of_kl(kl_ref, old)
    for seed in range(3):
        v = rand_like(old, seed)
        close(fvp(v), auto(v), rtol=1e-12)
        theta = {k: old[k] + 0.1 * v[k] for k in old}
        for p in (old, theta):
            assert float(loss(p)) == pytest.approx(float(loss_ref(p)), rel=1e-12)
            assert float(kl(p)) == pytest.approx(float(kl_ref(p)), rel=1e-12, abs=1e-15)
        assert float(kl(theta)) > 1e-4  # the KL away from the old policy is not trivially zero


def config():
    # damping 1.0 as in tests/test_maml_batched.py: at the protocol's 1e-5 the toy's Fisher is so
    # ill-conditioned that the conjugate gradient amplifies rounding of the products far above it
    return run_config("rlbench/PointGoal-v0", "drs-trpo", seed=3, budget=10**9, overrides={
        "sampler": {"meta_batch_size": 5, "episodes_per_task": 3, "n_workers": 1}, "dtype": "float64",
        "algo_cfg": {"cg_damping": 1.0}})


def side_by_side(cfg, attribute: str, iterations: int, monkeypatch):
    """A DRS learner of each implementation (``attribute`` = "autograd" / "closed-form") from the
    same initial parameters, 5 tasks in groups of 2, 2, 1: the autograd one trains on sampled
    batches, the closed-form one is replayed them. Yields (iteration, agents, autograd's
    metrics, closed form's metrics) after each iteration."""
    monkeypatch.setattr(maml, "CHUNK_ELEMENTS", 2 * cfg.sampler.episodes_per_task * cfg.sampler.horizon * max(cfg.policy.hidden_sizes))
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=1) as sampler:
        trainer = Trainer(cfg, sampler)
        agents = {}
        for impl in ("autograd", "closed-form"):
            policy = make_policy(cfg, sampler.obs_dim, sampler.act_dim)
            agents[impl] = AGENTS[cfg.algo](cfg, policy, policy.init_params(seeding.torch_generator(cfg.seed, "policy-init"), DTYPES[cfg.dtype]))
            setattr(agents[impl], attribute, impl)
        trainer.agent = agents["autograd"]
        for it in range(iterations):
            tasks = trainer.tasks.sample(cfg.sampler.meta_batch_size, seeding.generator(cfg.seed, "train-tasks", it))
            log: list = []

            def record(tasks_, params, log=log):
                log.append(trainer.collect(tasks_, params))
                return log[-1]

            m_ref = agents["autograd"].train_iteration(record, tasks)
            replay = iter(log)
            m_new = agents["closed-form"].train_iteration(lambda tasks_, params, replay=replay: next(replay), tasks)
            assert next(replay, None) is None
            yield it, agents, m_ref, m_new


def test_drs_trpo_training_equals_the_autograd_products(monkeypatch):
    """Three iterations on PointGoal (5 tasks in groups of 2, 2, 1): the closed-form learner,
    replayed the autograd learner's batches, ends every iteration with the same parameters
    and logged values up to float64 rounding, and accepted the same steps."""
    accepted = 0
    for it, agents, m_ref, m_new in side_by_side(config(), "fvp_impl", 3, monkeypatch):
        for k, v in agents["autograd"].params.items():
            torch.testing.assert_close(agents["closed-form"].params[k], v, rtol=1e-9, atol=1e-12, msg=lambda s, k=k, it=it: f"{k} it {it}: {s}")
        for key in ("train/loss", "train/kl", "train/accepted", "train/backtracks"):
            assert m_new[key] == pytest.approx(m_ref[key], rel=1e-8, abs=1e-12), (key, it)
        accepted += int(m_ref["train/accepted"])
    assert accepted >= 2  # the comparison covers real steps, not only rejected ones
