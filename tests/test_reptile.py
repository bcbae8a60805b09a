"""Reptile (agents/reptile.py) against oracles: its update recomputed per task with plain
torch autograd on a separate copy of the parameters and a hand-written policy density, on
scripted batches (K = 1, 2, 3); the inner gradient against central finite differences; and
the budget arithmetic of the Trainer (K sampling rounds per iteration, steps unit)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import envs
from agents.advantages import compute_advantages
from agents.core import advantage_settings
from agents.policy import GaussianMLPPolicy
from agents.reptile import Reptile
from rlbench.presets import run_config
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer

F64 = torch.float64
ENV = "rlbench/PointGoal-v0"
SMALL = {"sampler": {"meta_batch_size": 3, "episodes_per_task": 2, "horizon": 6, "n_workers": 1},
         "policy": {"hidden_sizes": [5]}}


def reptile_cfg(**algo_cfg):
    over = {**SMALL, "dtype": "float64", "algo_cfg": algo_cfg}
    return run_config(ENV, "reptile", seed=0, budget=10**6, overrides=over)


def policy_of(cfg) -> GaussianMLPPolicy:
    p = cfg.policy
    return GaussianMLPPolicy(2, 2, tuple(p.hidden_sizes), p.init_std, p.action_scale)


def theta0(policy: GaussianMLPPolicy, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p = policy.init_params(g, F64)
    with torch.no_grad():
        for v in p.values():
            v.add_(0.3 * torch.randn(v.shape, generator=g, dtype=F64))
    return p


def scripted_batches(cfg, policy, K: int):
    """K real PointGoal rounds sampled with unrelated parameters (the oracle does not care who
    sampled: the inner loss is -mean(log pi(a|s) * A) of the parameters being adapted)."""
    tasks = envs.get_task_distribution(ENV).test_tasks(cfg.sampler.meta_batch_size, np.random.default_rng(11))
    out = []
    with Sampler(ENV, horizon=cfg.sampler.horizon, n_workers=1) as sampler:
        for k in range(K):
            actor = policy.actor(theta0(policy, seed=100 + k))
            out.append(sampler.collect(tasks, cfg.sampler.episodes_per_task, actor, np.random.default_rng(k), unit="steps"))
    return tasks, out


# -- the oracle: one task, plain autograd, an independent Gaussian MLP density ------------------------------------


def oracle_logp(p: dict, obs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    h = obs
    n_layers = sum(1 for k in p if k.startswith("W"))
    for i in range(n_layers):
        h = h @ p[f"W{i}"].T + p[f"b{i}"]
        if i < n_layers - 1:
            h = torch.tanh(h)
    ls = p["log_std"]
    return (-0.5 * ((acts - h) / ls.exp()) ** 2 - ls - 0.5 * math.log(2 * math.pi)).sum(-1)


def oracle_task_loss(p: dict, batch, adv: np.ndarray, t: int) -> torch.Tensor:
    """-mean over task t's used transitions of log pi(a|s) * A."""
    m = batch.valid[t]
    obs = torch.as_tensor(batch.obs[t][m], dtype=F64)
    acts = torch.as_tensor(batch.actions[t][m], dtype=F64)
    a = torch.as_tensor(adv[t][m], dtype=F64)
    return -(oracle_logp(p, obs, acts) * a).mean()


def oracle_update(theta: dict, batches: list, cfg, lr: float, eps: float) -> tuple[dict, list[list[dict]]]:
    """theta + eps * (mean_t phi_t - theta), phi_t = K SGD steps from theta on task t's rounds.
    Also returns each task's parameters at the start of every round."""
    T = len(batches[0].tasks)
    phis, starts = [], []
    for t in range(T):
        p = {k: v.detach().clone() for k, v in theta.items()}
        seen = []
        for batch in batches:
            seen.append({k: v.clone() for k, v in p.items()})
            adv = compute_advantages(batch, advantage_settings(cfg.advantage))
            leaf = {k: v.clone().requires_grad_(True) for k, v in p.items()}
            grads = torch.autograd.grad(oracle_task_loss(leaf, batch, adv, t), tuple(leaf.values()))
            p = {k: v.detach() - lr * g for (k, v), g in zip(leaf.items(), grads)}
        phis.append(p)
        starts.append(seen)
    mean_phi = {k: sum(ph[k] for ph in phis) / T for k in theta}
    return {k: theta[k].detach() + eps * (mean_phi[k] - theta[k].detach()) for k in theta}, starts


@pytest.mark.parametrize("K", [1, 2, 3])
def test_update_matches_per_task_autograd_oracle(K):
    lr, eps = 0.07, 0.6
    cfg = reptile_cfg(inner_steps=K, inner_lr=lr, learning_rate=eps)
    policy = policy_of(cfg)
    agent = Reptile(cfg, policy, theta0(policy))
    theta = {k: v.detach().clone() for k, v in agent.params.items()}
    tasks, batches = scripted_batches(cfg, policy, K)
    calls: list[dict] = []

    def collect(ts, params):
        assert ts is tasks
        calls.append({k: v.detach().clone() for k, v in params.items()})
        return batches[len(calls) - 1]

    agent.train_iteration(collect, tasks)
    assert len(calls) == K  # K sampling rounds, no post-adaptation round
    expected, starts = oracle_update(theta, batches, cfg, lr, eps)
    for k in theta:
        torch.testing.assert_close(agent.params[k].detach(), expected[k], rtol=1e-10, atol=1e-12)
        assert agent.params[k].requires_grad and agent.params[k].is_leaf
    # round 0 is sampled with the shared meta-parameters, round k with each task's phi_k
    for k, v in theta.items():
        torch.testing.assert_close(calls[0][k], v, rtol=0, atol=0)
    for r in range(1, K):
        for t in range(len(tasks)):
            for k in theta:
                torch.testing.assert_close(calls[r][k][t], starts[t][r][k], rtol=1e-10, atol=1e-12)
    # the update moved the parameters (a check that could not pass with a no-op learner)
    assert max(float((agent.params[k].detach() - theta[k]).abs().max()) for k in theta) > 1e-4


def test_inner_gradient_matches_finite_differences():
    """(theta - phi_1) / lr, the inner step's gradient, against central differences of the
    oracle loss along random directions, for every task."""
    lr = 0.05
    cfg = reptile_cfg(inner_steps=1, inner_lr=lr, learning_rate=1.0)
    policy = policy_of(cfg)
    theta = theta0(policy, seed=3)
    tasks, batches = scripted_batches(cfg, policy, 1)
    agent = Reptile(cfg, policy, {k: v.detach().clone() for k, v in theta.items()})
    phi, _ = agent.adapt_rounds(lambda ts, p: batches[0], tasks)
    adv = compute_advantages(batches[0], advantage_settings(cfg.advantage))
    g = torch.Generator().manual_seed(7)
    h = 1e-5
    for t in range(len(tasks)):
        grad = {k: (theta[k].detach() - phi[k][t]) / lr for k in theta}
        for _ in range(3):
            v = {k: torch.randn(x.shape, generator=g, dtype=F64) for k, x in theta.items()}
            with torch.no_grad():
                up = oracle_task_loss({k: theta[k] + h * v[k] for k in theta}, batches[0], adv, t)
                down = oracle_task_loss({k: theta[k] - h * v[k] for k in theta}, batches[0], adv, t)
            fd = float((up - down) / (2 * h))
            directional = float(sum((grad[k] * v[k]).sum() for k in theta))
            assert directional == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_outer_step_one_lands_on_the_mean_adapted_parameters():
    cfg = reptile_cfg(inner_steps=2, inner_lr=0.1, learning_rate=1.0)
    policy = policy_of(cfg)
    agent = Reptile(cfg, policy, theta0(policy, seed=5))
    tasks, batches = scripted_batches(cfg, policy, 2)
    phi, _ = Reptile(cfg, policy, {k: v.detach().clone() for k, v in agent.params.items()}).adapt_rounds(
        iter_collect(batches), tasks)
    agent.train_iteration(iter_collect(batches), tasks)
    for k in phi:
        torch.testing.assert_close(agent.params[k].detach(), phi[k].mean(0), rtol=1e-12, atol=1e-14)


def iter_collect(batches):
    it = iter(batches)
    return lambda tasks, params: next(it)


# -- budget ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("K", [1, 2, 3])
def test_one_iteration_charges_k_rounds(K):
    cfg = run_config(ENV, "reptile", seed=0, budget=10**6, overrides={**SMALL, "algo_cfg": {"inner_steps": K}})
    T, E, H = 3, 2, 6
    assert cfg.iteration_steps == K * T * E * H
    with Sampler(ENV, horizon=H, n_workers=1) as sampler:
        trainer = Trainer(cfg, sampler)
        for n in (1, 2):
            m = trainer.iterate()
            assert trainer.budget.used == n * K * T * E * H  # PointGoal never terminates early
            assert sampler.total_steps == trainer.budget.used
            assert m["sampling/rounds"] == K
            assert m["sampling/steps_charged"] == K * T * E * H


# -- learning on the toy ------------------------------------------------------------------------------------------


def test_reptile_improves_the_adapted_meta_test_return_on_pointgoal():
    """Six Reptile iterations (K = 2, 48,000 steps) on PointGoal: the meta-test return after one
    adaptation step (the evaluator's own rule: SGD with the pair's step size, ProMP's inner
    learning rate) rises over the initial policy's, on the same test tasks with the same
    evaluation streams (paired per task), by more than 1 and more than 5 standard errors."""
    from rlbench.evaluator import evaluate_params, test_tasks

    over = {"sampler": {"n_workers": 1}, "eval": {"n_tasks": 20, "n_updates": 1, "episodes_per_task": 10}}
    for seed in (0, 1):
        cfg = run_config(ENV, "reptile", seed, budget=10**6, overrides=over)
        assert cfg.algo_cfg.inner_steps == 2
        with Sampler(ENV, horizon=cfg.sampler.horizon, n_workers=1) as sampler:
            trainer = Trainer(cfg, sampler)
            tasks = test_tasks(cfg)
            before, _ = evaluate_params(cfg, sampler, trainer.agent.params, 0, tasks)
            for _ in range(6):
                trainer.iterate()
            after, _ = evaluate_params(cfg, sampler, trainer.agent.params, 0, tasks)
        gain = np.array([b["return"] - a["return"] for a, b in zip(before, after) if a["test_update"] == 1])
        se = gain.std(ddof=1) / np.sqrt(len(gain))
        assert gain.mean() > 1.0 and gain.mean() > 5 * se, (seed, gain.mean(), se)


# -- through the command line: train, evaluate, compare against DRS+PPO ----------------------------------------------

TINY_EXPERIMENT = """
name: reptile-tiny
envs: [rlbench/PointGoal-v0]
algos: [drs-ppo, reptile]
pairs: [drs-ppo:reptile]
seeds: [1, 2]
budget: 1600
n_checkpoints: 2
overrides:
  all:
    sampler: {meta_batch_size: 4, episodes_per_task: 2, n_workers: 1}
    eval: {n_tasks: 3, n_updates: 1, episodes_per_task: 2}
"""


def test_cli_run_compares_reptile_with_drs_ppo(tmp_path):
    import json

    import pandas as pd

    from rlbench.cli import main

    exp = tmp_path / "reptile-tiny.yaml"
    exp.write_text(TINY_EXPERIMENT)
    out = tmp_path / "out"
    assert main(["run", str(exp), "--out", str(out), "--quiet", "--yes"]) == 0
    runs = {algo: json.loads((out / "rlbench_PointGoal-v0" / algo / "seed_1" / "run.json").read_text()) for algo in ("drs-ppo", "reptile")}
    # equal budgets, spent in full: 10 DRS+PPO iterations of one round, 5 Reptile iterations of K = 2 rounds
    assert runs["drs-ppo"]["budget_used"] == runs["reptile"]["budget_used"] == 1600
    assert (runs["drs-ppo"]["iterations"], runs["reptile"]["iterations"]) == (10, 5)
    # one test-time rule for both sides of the pair: SGD with ProMP's inner step size on this env
    assert runs["reptile"]["comparability"]["test_time"] == runs["drs-ppo"]["comparability"]["test_time"]
    assert runs["reptile"]["comparability"]["test_time"]["lr"] == run_config(ENV, "promp", 0).algo_cfg.inner_lr
    report = pd.read_csv(out / "comparison" / "drs-ppo_vs_reptile_return_report.csv")
    cells = report[(report["algo_a"] == "drs-ppo") & (report["algo_b"] == "reptile")]
    assert sorted(zip(cells["budget_mark"], cells["test_update"])) == [(0, 0), (0, 1), (1600, 0), (1600, 1)]
    assert (cells["paired_n"] == 2).all() and cells[["mean_a", "mean_b"]].notna().all().all()
    # checkpoint 0 is the shared initial policy: identical numbers; after training they differ
    at0 = cells[cells["budget_mark"] == 0]
    assert (at0["mean_a"] == at0["mean_b"]).all()
    assert (cells[cells["budget_mark"] == 1600]["mean_a"] != cells[cells["budget_mark"] == 1600]["mean_b"]).all()
    assert "DRS+PPO vs Reptile" in (out / "comparison" / "study_return_summary.md").read_text()


def test_resumed_run_equals_uninterrupted(tmp_path):
    """Reptile's whole state is its parameters: a run stopped after 2 iterations and resumed
    ends bit-identical to one trained in one go (same metrics, same checkpoints)."""
    import json

    from rlbench import store
    from rlbench.cli import main

    base = ["train", "--env", ENV, "--algo", "reptile", "--seed", "3", "--budget", "4800", "--workers", "1", "--quiet",
            "--set", "sampler.meta_batch_size=3", "--set", "sampler.episodes_per_task=2", "--set", "n_checkpoints=3"]
    assert main([*base, "--out", str(tmp_path / "ref")]) == 0
    assert main([*base, "--out", str(tmp_path / "run"), "--max-iterations", "2"]) == 0
    assert store.read_meta(tmp_path / "run")["iterations"] == 2
    assert main([*base, "--out", str(tmp_path / "run"), "--resume"]) == 0

    def metrics(d):
        rows = [json.loads(line) for line in (d / store.METRICS_FILE).read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    def ckpts(d):
        return [store.load_torch(p) for p in sorted((d / store.CKPT_DIR).glob("ckpt_*.pt"))]

    assert store.read_meta(tmp_path / "ref")["iterations"] == 4800 // (2 * 3 * 2 * 20)  # K = 2 rounds of 120 steps
    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")
    ref = ckpts(tmp_path / "ref")
    assert len(ref) == 3
    for a, b in zip(ckpts(tmp_path / "run"), ref, strict=True):
        assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
    assert not all(torch.equal(ref[0]["params"][k], ref[-1]["params"][k]) for k in ref[0]["params"])


# -- the registry entry --------------------------------------------------------------------------------------------


def test_registry_entry():
    from agents import registry
    from agents.core import loglik_loss, lr_surrogate

    spec = registry.get("reptile")
    assert spec.agent is Reptile and spec.meta_learner and registry.display_name("reptile") == "Reptile"
    assert ("drs-ppo", "reptile") in registry.default_pairs()
    assert Reptile.inner_loss is loglik_loss  # trained with the vanilla policy-gradient step
    assert registry.inner_loss("reptile") is lr_surrogate is registry.inner_loss("drs-ppo")  # adapted like DRS+PPO
    for K in (1, 4):
        cfg = run_config(ENV, "reptile", 0, overrides={"algo_cfg": {"inner_steps": K}})
        assert cfg.sampling_rounds == K and cfg.iteration_steps == K * cfg.sampler.unit_steps


def test_inner_lr_is_promps_so_a_drs_run_in_two_pairs_keeps_one_test_time_rule():
    """Reptile's table lists no inner_lr: the registry takes ProMP's for every environment. An
    experiment pairing DRS+PPO with both ProMP and Reptile then sets one test-time step size on
    the DRS+PPO run whichever pair is applied last, and all three runs record one rule."""
    import yaml

    from agents.hyperparams import TABLE_DIR
    from rlbench.evaluator import adaptation_rule
    from rlbench.presets import experiment_run_configs
    from rlbench.settings import ExperimentConfig

    table = yaml.safe_load((TABLE_DIR / "reptile.yaml").read_text())["envs"]
    for env_id in table:
        assert "inner_lr" not in table[env_id]
        assert run_config(env_id, "reptile", 0).algo_cfg.inner_lr == run_config(env_id, "promp", 0).algo_cfg.inner_lr, env_id
    envs_ = ("rlbench/PointGoal-v0", "rlbench/HalfCheetahRandVel-v0")
    for pairs in (("drs-ppo:promp", "drs-ppo:reptile"), ("drs-ppo:reptile", "drs-ppo:promp")):
        exp = ExperimentConfig("two-pairs", envs_, ("drs-ppo", "promp", "reptile"), (1,), budget=10**6, pairs=pairs)
        for env_id in envs_:
            rules = {c.algo: adaptation_rule(c) for c in experiment_run_configs(exp) if c.env_id == env_id}
            assert rules["drs-ppo"] == rules["promp"] == rules["reptile"], (pairs, env_id, rules)
            assert rules["reptile"]["lr"] == table_inner_lr_of_promp(env_id)


def table_inner_lr_of_promp(env_id: str) -> float:
    import yaml

    from agents.hyperparams import TABLE_DIR

    return yaml.safe_load((TABLE_DIR / "promp.yaml").read_text())["envs"][env_id]["inner_lr"]


def test_a_drs_run_in_two_pairs_with_different_step_sizes_is_refused_before_training():
    """If the two MAML partners of one DRS run adapt with different step sizes, the DRS run
    cannot follow both rules (it is evaluated once): the grid is refused up front, naming both pairs."""
    from rlbench.config import ConfigError
    from rlbench.presets import experiment_run_configs
    from rlbench.settings import ExperimentConfig

    exp = ExperimentConfig("two-pairs", ("rlbench/PointGoal-v0",), ("drs-ppo", "promp", "reptile"), (1,),
                           budget=10**6, pairs=("drs-ppo:promp", "drs-ppo:reptile"),
                           overrides={"reptile": {"algo_cfg": {"inner_lr": 0.5}}})
    with pytest.raises(ConfigError, match=r"drs-ppo:promp and drs-ppo:reptile.*0\.1 vs 0\.5"):
        experiment_run_configs(exp)
