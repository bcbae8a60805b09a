"""End-to-end learning checks on the PointGoal toy (goal drawn around (1, 0), start at the
origin, goal unobserved) and one slow HalfCheetahRandVel run.

* DRS+PPO and DRS+TRPO must clearly improve the mean return on a FIXED set of evaluation
  tasks (same tasks and same evaluation noise before and after training, so the comparison
  is paired); the gain must exceed an absolute margin and 10 sampling standard errors.
* ProMP and TRPO-MAML must show a clear adaptation gain on meta-test tasks after a short
  training run: the return after one ``adapt`` step (the paired inner update, docs/protocol.md
  section 6.3) above the return before it, averaged over tasks, for two seeds; and the gain
  must be well above the gain of the untrained policy (training taught it to adapt).

Learner updates are run with one torch thread: on 2 busy cores the default 2 OpenMP threads
make these tiny updates ~10x slower (thread contention), which would only cost wall time.
"""

from __future__ import annotations

import numpy as np
import pytest

import envs
from agents.core import DTYPES, adapt, process
from rlbench.presets import run_config
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer

POINT = "rlbench/PointGoal-v0"
EVAL_TASKS = 20
EVAL_EPISODES = 10



def train(env_id: str, algo: str, seed: int, iterations: int, overrides: dict | None = None):
    over = {"sampler": {"n_workers": 1}}
    if overrides:
        over = {**over, **overrides, "sampler": {**over["sampler"], **overrides.get("sampler", {})}}
    cfg = run_config(env_id, algo, seed, overrides=over)
    sampler = Sampler(env_id, horizon=cfg.sampler.horizon, n_workers=cfg.sampler.n_workers)
    trainer = Trainer(cfg, sampler)
    return cfg, sampler, trainer


def eval_tasks(env_id: str, n: int = EVAL_TASKS):
    # a fixed task set, from a stream unrelated to training
    return envs.get_task_distribution(env_id).test_tasks(n, np.random.default_rng(20_240_601))


def episode_returns(sampler, trainer, params, tasks, episodes: int = EVAL_EPISODES, seed: int = 1234) -> np.ndarray:
    """Returns of every evaluation episode, [tasks, episodes]."""
    batch = sampler.collect(tasks, episodes, trainer.agent.policy.actor(params), np.random.default_rng(seed))
    return batch.first_episode_returns()


def adaptation(cfg, sampler, trainer, tasks) -> tuple[np.ndarray, np.ndarray]:
    """Per-task returns before and after one inner step of the paired MAML algorithm."""
    agent = trainer.agent
    pre = sampler.collect(tasks, EVAL_EPISODES, agent.policy.actor(agent.params), np.random.default_rng(5))
    tb = process(agent.policy, agent.params, pre, cfg.advantage, DTYPES[cfg.dtype])
    phi = adapt(agent.policy, agent.params, tb, cfg.algo_cfg.inner_lr, cfg.paired_inner)
    post = sampler.collect(tasks, EVAL_EPISODES, agent.policy.actor(phi), np.random.default_rng(6))
    return pre.first_episode_returns(), post.first_episode_returns()


def difference(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """Difference of the mean return over the fixed tasks, and its sampling standard error.

    The tasks are the same on both sides, so the noise is the episode-to-episode spread
    within each task: Var(mean over tasks) = sum_t var_t / E / T^2 per side (the two sides
    are treated as independent, which is conservative)."""
    T, E = before.shape

    def var(x: np.ndarray) -> float:
        return float(x.var(axis=1, ddof=1).sum() / E / T**2)

    return float(after.mean() - before.mean()), float(np.sqrt(var(before) + var(after)))


@pytest.mark.parametrize("algo,iterations,margin", [("drs-ppo", 10, 2.0), ("drs-trpo", 10, 1.5)])
def test_drs_improves_the_return_on_fixed_tasks(algo, iterations, margin):
    _cfg, sampler, trainer = train(POINT, algo, seed=0, iterations=iterations)
    tasks = eval_tasks(POINT)
    with sampler:
        before = episode_returns(sampler, trainer, trainer.agent.params, tasks)
        for _ in range(iterations):
            trainer.iterate()
        after = episode_returns(sampler, trainer, trainer.agent.params, tasks)
    gain, se = difference(before, after)
    assert gain > margin and gain > 10 * se, (before.mean(), after.mean(), se)


@pytest.mark.parametrize("algo,iterations", [("promp", 5), ("trpo-maml", 5)])
def test_maml_learns_to_adapt(algo, iterations):
    tasks = eval_tasks(POINT)
    for seed in (0, 1):
        cfg, sampler, trainer = train(POINT, algo, seed=seed, iterations=iterations)
        with sampler:
            pre0, post0 = adaptation(cfg, sampler, trainer, tasks)
            for _ in range(iterations):
                trainer.iterate()
            pre, post = adaptation(cfg, sampler, trainer, tasks)
        gain, se = difference(pre, post)
        gain0, se0 = difference(pre0, post0)
        assert gain > 1.0 and gain > 10 * se, (algo, seed, pre.mean(), post.mean(), se)
        # the trained policy adapts far better than the untrained one
        assert gain > 3 * gain0 and gain - gain0 > 5 * np.hypot(se, se0), (algo, seed, gain, gain0)


@pytest.mark.slow
@pytest.mark.mujoco
def test_drs_ppo_halfcheetah_return_rises():
    """A short DRS+PPO run on HalfCheetahRandVel (protocol learning rate, 10 tasks x 2 episodes
    x 200 steps per iteration instead of 40 x 20): the return on fixed tasks rises."""
    env = "rlbench/HalfCheetahRandVel-v0"
    _cfg, sampler, trainer = train(env, "drs-ppo", seed=0, iterations=30,
                                  overrides={"sampler": {"meta_batch_size": 10, "episodes_per_task": 2, "n_workers": 2}})
    tasks = eval_tasks(env, 10)
    with sampler:
        before = episode_returns(sampler, trainer, trainer.agent.params, tasks, episodes=4)
        for _ in range(30):
            trainer.iterate()
        after = episode_returns(sampler, trainer, trainer.agent.params, tasks, episodes=4)
    gain, se = difference(before, after)
    assert gain > 50 and gain > 3 * se, (before.mean(), after.mean(), se)


@pytest.mark.slow
@pytest.mark.mujoco
@pytest.mark.parametrize("algo", ["promp", "trpo-maml"])
def test_maml_adaptation_gain_on_halfcheetah(algo):
    """After a short MAML run on HalfCheetahRandVel, one adaptation step raises the meta-test
    return clearly (paired over test tasks, > 3 standard errors).

    The protocol's inner learning rate (1e-2, SGD in the x10 action space) moves returns by
    less than one unit per step this early (scripts/bench notes); this check uses inner_lr 1.0
    so that the adaptation machinery's effect is visible in seconds, not its tuned size.
    """
    from rlbench.evaluator import evaluate_params, test_tasks

    env = "rlbench/HalfCheetahRandVel-v0"
    over = {"sampler": {"meta_batch_size": 10, "episodes_per_task": 10, "n_workers": 2}, "algo_cfg": {"inner_lr": 1.0},
            "eval": {"n_tasks": 10, "n_updates": 1, "episodes_per_task": 10, "task_chunk": 10}, "torch_threads": 1}
    cfg = run_config(env, algo, seed=1, budget=10**9, overrides=over)
    with Sampler(env, n_workers=2) as sampler:
        trainer = Trainer(cfg, sampler)
        for _ in range(3):
            trainer.iterate()
        rows, _ = evaluate_params(cfg, sampler, trainer.agent.params, 1, test_tasks(cfg))
    ret = np.array([[r["return"] for r in rows if r["test_update"] == t] for t in (0, 1)])
    gain = ret[1] - ret[0]
    se = gain.std(ddof=1) / np.sqrt(len(gain))
    assert gain.mean() > 1.0 and gain.mean() > 3 * se, (gain.mean(), se)
