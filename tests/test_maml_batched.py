"""The batched MAML learners (agents/maml.py, ``impl="batched"``, the default) against the
whole-batch reference implementation (``impl="reference"``) on the same sampled batches.

The reference is the plain autograd implementation the other MAML tests check against finite
differences and torch.distributions (tests/test_metagrad.py, tests/test_maml.py); here the
batched one must give the same parameters, optimiser state and logged metrics up to float
rounding, over several iterations, for every meta-gradient estimator and K = 1, 2, with
the tasks split into uneven groups (one group for the Hessian-free estimator, whose
finite-difference radius depends on all tasks)."""

from __future__ import annotations

import pytest
import torch

from agents import maml
from agents.core import DTYPES
from agents.registry import AGENTS, make_policy
from rlbench import seeding
from rlbench.presets import run_config
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer

ENV = "rlbench/PointGoal-v0"
TASKS, EPISODES = 5, 3


def config(algo: str, K: int, estimator: str, env: str = ENV, dtype: str = "float64", tasks: int = TASKS,
           episodes: int = EPISODES, **algo_cfg):
    return run_config(env, algo, seed=3, budget=10**9, overrides={
        "sampler": {"meta_batch_size": tasks, "episodes_per_task": episodes, "n_workers": 1}, "dtype": dtype,
        "algo_cfg": {"inner_steps": K, "meta_gradient": estimator, **algo_cfg}})


def fresh_agent(cfg, sampler: Sampler, impl: str):
    policy = make_policy(cfg, sampler.obs_dim, sampler.act_dim)
    params = policy.init_params(seeding.torch_generator(cfg.seed, "policy-init"), DTYPES[cfg.dtype])
    return AGENTS[cfg.algo](cfg, policy, params, impl=impl)


def sampled_rounds(cfg, via: str):
    """An agent of every implementation, and one iteration's sampled rounds (inner, post) and
    task count, sampled through the ``via`` agent."""
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=1) as sampler:
        trainer = Trainer(cfg, sampler)
        agents = {impl: fresh_agent(cfg, sampler, impl) for impl in maml.IMPLS}
        trainer.agent = agents[via]
        tasks = trainer.tasks.sample(cfg.sampler.meta_batch_size, seeding.generator(cfg.seed, "train-tasks", 0))
        inner, post, _ = agents[via].sample_rounds(trainer.collect, tasks)
    return agents, inner, post, len(tasks)


def compare(cfg, iterations: int, group_tasks: int, monkeypatch, rtol: float, atol: float, impl: str = "batched") -> None:
    """Train the reference for ``iterations`` recording every batch, replay the same batches
    to the ``impl`` agent (default the batched one), and compare after every iteration."""
    width = max(cfg.policy.hidden_sizes)
    monkeypatch.setattr(maml, "CHUNK_ELEMENTS", group_tasks * cfg.sampler.episodes_per_task * cfg.sampler.horizon * width)
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=1, backend=cfg.sampler.backend) as sampler:
        trainer = Trainer(cfg, sampler)
        ref, new = fresh_agent(cfg, sampler, "reference"), fresh_agent(cfg, sampler, impl)
        trainer.agent = ref
        for it in range(iterations):
            tasks = trainer.tasks.sample(cfg.sampler.meta_batch_size, seeding.generator(cfg.seed, "train-tasks", it))
            log: list = []

            def record(tasks_, params, log=log):
                log.append(trainer.collect(tasks_, params))
                return log[-1]

            m_ref = ref.train_iteration(record, tasks)
            replay = iter(log)
            m_new = new.train_iteration(lambda tasks_, params, replay=replay: next(replay), tasks)
            assert next(replay, None) is None  # the batched agent asked for exactly the same rounds
            groups = new.chunks(new._process(log[0], new.params))
            expected = 1 if cfg.algo_cfg.meta_gradient == "hessian-free" else -(-cfg.sampler.meta_batch_size // group_tasks)
            assert len(groups) == expected
            for k, v in ref.params.items():
                torch.testing.assert_close(new.params[k], v, rtol=rtol, atol=atol, msg=lambda s, k=k, it=it: f"{k} it {it}: {s}")
            assert m_new.keys() == m_ref.keys()
            for k, v in m_ref.items():
                assert m_new[k] == pytest.approx(v, rel=rtol, abs=atol), (k, it)
        if cfg.algo == "promp":
            s_ref, s_new = ref.optimizer.state_dict()["state"], new.optimizer.state_dict()["state"]
            for i in s_ref:
                for key in ("exp_avg", "exp_avg_sq"):
                    torch.testing.assert_close(s_new[i][key], s_ref[i][key], rtol=rtol, atol=atol)


CASES = [(1, "second-order"), (2, "second-order"), (1, "first-order"), (1, "hessian-free"), (2, "hessian-free")]


@pytest.mark.parametrize("K,estimator", CASES)
def test_batched_promp_equals_reference(K, estimator, monkeypatch):
    compare(config("promp", K, estimator, adaptive_eta=True), 3, 2, monkeypatch, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("K,estimator", CASES)
def test_batched_trpo_maml_equals_reference(K, estimator, monkeypatch):
    # Damping 1.0: with the protocol's 1e-5 (or 0.1) the toy's Fisher is so ill-conditioned
    # that ten conjugate-gradient steps amplify float64 rounding to 1e-4 (1e-5) in the step.
    # The test below checks the TRPO problem itself, at the protocol's damping, to 1e-10.
    compare(config("trpo-maml", K, estimator, cg_damping=1.0), 3, 2, monkeypatch, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("K,estimator", CASES)
def test_batched_trpo_maml_problem_equals_reference(K, estimator, monkeypatch):
    """Gradient, Fisher-vector products, loss and KL of the TRPO step (protocol damping)."""
    cfg = config("trpo-maml", K, estimator)
    monkeypatch.setattr(maml, "CHUNK_ELEMENTS", 2 * cfg.sampler.episodes_per_task * cfg.sampler.horizon * max(cfg.policy.hidden_sizes))
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=1) as sampler:
        trainer = Trainer(cfg, sampler)
        ref, new = fresh_agent(cfg, sampler, "reference"), fresh_agent(cfg, sampler, "batched")
        trainer.agent = ref
        tasks = trainer.tasks.sample(TASKS, seeding.generator(cfg.seed, "train-tasks", 0))
        inner, post, _ = ref.sample_rounds(trainer.collect, tasks)
        old_r, loss_r, kl_r, g_r, fvp_r = ref.reference_problem(inner, post, TASKS)
        old_b, loss_b, kl_b, g_b, fvp_b = new.batched_problem(inner, post, TASKS)
        gen = torch.Generator().manual_seed(5)
        for k in old_r:
            assert torch.equal(old_r[k], old_b[k])
            torch.testing.assert_close(g_b[k], g_r[k], rtol=1e-10, atol=1e-14)
        for _ in range(3):
            v = {k: torch.randn(x.shape, generator=gen, dtype=x.dtype) for k, x in old_r.items()}
            fr, fb = fvp_r(v), fvp_b(v)
            for k in v:
                torch.testing.assert_close(fb[k], fr[k], rtol=1e-10, atol=1e-14)
            th = {k: x + 0.01 * v[k] for k, x in old_r.items()}
            for point in (th, old_r, th):  # the second visit of th is served from the batched cache
                assert float(loss_b(point)) == pytest.approx(float(loss_r(point)), rel=1e-12, abs=1e-15)
                assert float(kl_b(point)) == pytest.approx(float(kl_r(point)), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("algo", ["promp", "trpo-maml"])
def test_batched_on_two_threads_equals_reference(algo, monkeypatch):
    """Groups spread over two threads (agents.maml.map_groups): same results."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # what map_groups reads; the pool's own threads run torch on 1
    extra = {"cg_damping": 1.0} if algo == "trpo-maml" else {}
    compare(config(algo, 1, "second-order", **extra), 2, 2, monkeypatch, rtol=1e-7 if extra else 1e-9, atol=1e-10 if extra else 1e-12)


def test_map_groups_keeps_order_and_uses_threads(monkeypatch):
    import threading

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    seen = []
    out = maml.map_groups(lambda x: seen.append(threading.get_ident()) or x * x, list(range(9)))
    assert out == [x * x for x in range(9)]
    assert threading.get_ident() not in seen


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["promp", "trpo-maml"])
def test_batched_equals_reference_halfcheetah_float32(algo, monkeypatch):
    """The paper's network and dtype on HalfCheetahRandVel, 6 tasks x 2 episodes x 200 steps
    in groups of 4 and 2: equal up to float32 rounding."""
    cfg = config(algo, 1, "second-order", env="rlbench/HalfCheetahRandVel-v0", dtype="float32", tasks=6, episodes=2)
    compare(cfg, 1, 4, monkeypatch, rtol=2e-4, atol=1e-6)


def test_task_groups_partition_the_tasks():
    for n_tasks, per_task, width in [(40, 4000, 64), (7, 1, 1), (1, 10**7, 64), (20, 1500, 100)]:
        groups = maml.task_chunks(n_tasks, per_task, width)
        covered = [t for g in groups for t in range(n_tasks)[g]]
        assert covered == list(range(n_tasks))
        sizes = {g.stop - g.start for g in groups[:-1]}
        assert len(sizes) <= 1 and all(s * per_task * width <= max(maml.CHUNK_ELEMENTS, per_task * width) for s in sizes)


def test_unknown_implementation_is_rejected():
    cfg = config("promp", 1, "second-order")
    policy = make_policy(cfg, 2, 2)
    with pytest.raises(ValueError, match="unknown MAML implementation"):
        AGENTS["promp"](cfg, policy, policy.init_params(torch.Generator().manual_seed(0)), impl="fast")


def test_map_groups_nested_in_a_group_runs_inline(monkeypatch):
    """The pool is persistent (agents.maml._pool): a group that maps groups itself must not
    wait for a pool thread it occupies (one worker: that would never return)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    out = maml.map_groups(lambda x: sum(maml.map_groups(lambda y: y * x, [1, 2])), [1, 2, 3])
    assert out == [3, 6, 9]
