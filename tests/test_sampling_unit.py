"""The sampling unit (docs/protocol.md section 4): step-based rounds with auto-reset (the
authors' sampler) and the older whole-episode rounds.

Oracles: a hand-rolled replay of every slot on a fresh gymnasium environment with the
documented random-number order; the same advantages from a row holding several episodes and
from those episodes split into one row each; evaluation rows that do not depend on how tasks
are chunked; hand-computed budgets and per-iteration counts.
"""

from __future__ import annotations

import copy
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch

import envs
from agents.advantages import AdvantageSettings, compute_advantages
from agents.policy import GaussianMLPPolicy
from rlbench import config, presets
from rlbench.batch import Batch
from rlbench.evaluator import adaptation_rule, evaluate_params
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer

HOPPER = "rlbench/HopperRandParams-v0"
WALKER = "rlbench/Walker2DRandParams-v0"
POINT = "rlbench/PointGoal-v0"


def _actor(sampler: Sampler, seed: int = 0, std: float = 1.0):
    policy = GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, (16,), init_std=std, action_scale=10.0)
    return policy.actor(policy.init_params(torch.Generator().manual_seed(seed)))


def _collect(env_id, tasks, E, H, seed, unit="steps", keep_tails=False, backend="gym", n_workers=1):
    with Sampler(env_id, horizon=H, n_workers=n_workers, backend=backend) as s:
        return s.collect(tasks, E, _actor(s), np.random.default_rng(seed), unit=unit, keep_tails=keep_tails)


def _replay_steps_unit(env_id: str, batch: Batch, seed: int, H: int, keep_tails: bool) -> None:
    """Replay every slot on a fresh environment: reset seeds first (T*E), then per step the
    action noise (T*E x act_dim) and the auto-reset seeds (T*E). Checks every recorded number."""
    T, E = batch.lengths.shape
    n = T * E
    rng = copy.deepcopy(np.random.default_rng(seed))
    seeds0 = rng.integers(0, 2**31 - 1, size=n)
    act_dim = batch.actions.shape[-1]
    reset_seeds = []
    for _ in range(H):
        rng.standard_normal((n, act_dim))
        reset_seeds.append(rng.integers(0, 2**31 - 1, size=n))
    for i, task in enumerate(batch.tasks):
        for e in range(E):
            k = i * E + e
            env = envs.make_meta_env(env_id, horizon=H)
            env.set_task(task)
            o, _ = env.reset(seed=int(seeds0[k]))
            t_ep, seg_start, n_done = 0, 0, 0
            for t in range(H):
                np.testing.assert_array_equal(batch.obs[i, e, t], o)
                assert batch.ep_time[i, e, t] == t_ep
                o, r, term, _tr, _ = env.step(np.clip(batch.actions[i, e, t] / 10.0, -1.0, 1.0))
                assert batch.rewards[i, e, t] == r
                t_ep += 1
                ended = term or t_ep >= H
                assert bool(batch.ep_end[i, e, t]) == ended or (keep_tails and t == H - 1)
                assert bool(batch.ep_term[i, e, t]) == term
                if ended:
                    n_done += 1
                    seg_start, t_ep = t + 1, 0
                    if term:
                        o, _ = env.reset(seed=int(reset_seeds[t][k]))
            env.close()
            used = H if keep_tails else seg_start
            assert batch.valid[i, e, :used].all() and not batch.valid[i, e, used:].any()
            assert batch.lengths[i, e] == used
            assert n_done >= 1  # the first episode always completes inside the round
    assert batch.env_steps == n * H


@pytest.mark.mujoco
@pytest.mark.parametrize("keep_tails", [False, True])
def test_steps_unit_replays_on_fresh_gym_envs(keep_tails):
    tasks = envs.get_task_distribution(HOPPER).sample(2, np.random.default_rng(1))
    for backend, workers in (("gym", 1), ("mujoco-batched", 2)):
        b = _collect(HOPPER, tasks, 3, 40, seed=5, keep_tails=keep_tails, backend=backend, n_workers=workers)
        _replay_steps_unit(HOPPER, b, 5, 40, keep_tails)
        assert b.episode_counts().max() > 3  # early terminations: more than E episodes per task
        if not keep_tails:
            assert b.used_steps < b.env_steps  # some tails dropped


@pytest.mark.mujoco
def test_steps_unit_identical_for_any_worker_count_gym_processes():
    tasks = envs.get_task_distribution(HOPPER).sample(2, np.random.default_rng(2))
    ref = _collect(HOPPER, tasks, 3, 30, seed=9)
    for workers in (2, 3):
        got = _collect(HOPPER, tasks, 3, 30, seed=9, n_workers=workers)
        for f in ("obs", "actions", "rewards", "valid", "ep_time", "ep_end", "ep_term", "last_obs"):
            np.testing.assert_array_equal(getattr(ref, f), getattr(got, f), err_msg=f)


def test_a_tasks_episodes_depend_only_on_its_own_generator():
    """Per-task generators: task b's rows are the same whether it is sampled alone or with others."""
    dist = envs.get_task_distribution(POINT)
    tasks = dist.sample(3, np.random.default_rng(0))

    def gens(keys):
        return [np.random.default_rng([4, k]) for k in keys]

    with Sampler(POINT, n_workers=1) as s:
        actor = _actor(s)
        for unit in ("steps", "episodes"):
            together = s.collect(tasks, 2, actor, gens([0, 1, 2]), unit=unit)
            alone = s.collect(tasks[1:2], 2, actor, gens([1]), unit=unit)
            for f in ("obs", "actions", "rewards", "valid", "ep_end"):
                np.testing.assert_array_equal(getattr(together, f)[1], getattr(alone, f)[0], err_msg=f)
        with pytest.raises(ValueError, match="one generator per task"):
            s.collect(tasks, 2, actor, gens([0, 1]))


def _split_rows(b: Batch) -> Batch:
    """The same episodes with one episode per row (each padded to H)."""
    T, E, H = b.rewards.shape
    per_task: list[list[tuple[int, int, int, bool, bool]]] = []
    for i in range(T):
        eps = []
        for e in range(E):
            start = 0
            for t in np.flatnonzero(b.ep_end[i, e] & b.valid[i, e]):
                is_final = not b.ep_end[i, e, t + 1 :].any()
                eps.append((e, start, t + 1, bool(b.ep_term[i, e, t]), is_final))
                start = t + 1
        per_task.append(eps)
    M = max(len(x) for x in per_task)
    d, a = b.obs.shape[-1], b.actions.shape[-1]
    obs, act, rew = np.zeros((T, M, H, d)), np.zeros((T, M, H, a)), np.zeros((T, M, H))
    valid = np.zeros((T, M, H), dtype=bool)
    ep_time, ep_end, ep_term = np.zeros((T, M, H), dtype=np.int64), np.zeros((T, M, H), bool), np.zeros((T, M, H), bool)
    last, term, trunc = np.zeros((T, M, d)), np.zeros((T, M), bool), np.zeros((T, M), bool)
    for i, eps in enumerate(per_task):
        for m, (e, s0, s1, te, final) in enumerate(eps):
            L = s1 - s0
            obs[i, m, :L], act[i, m, :L], rew[i, m, :L] = b.obs[i, e, s0:s1], b.actions[i, e, s0:s1], b.rewards[i, e, s0:s1]
            valid[i, m, :L], ep_time[i, m, :L] = True, np.arange(L)
            ep_end[i, m, L - 1], ep_term[i, m, L - 1] = True, te
            term[i, m] = te
            trunc[i, m] = not te
            if final:
                last[i, m] = b.last_obs[i, e]
    return Batch(tasks=b.tasks, obs=obs, actions=act, rewards=rew, valid=valid, ep_time=ep_time, ep_end=ep_end,
                 ep_term=ep_term, ep_success=np.full((T, M, H), np.nan), lengths=valid.sum(-1), terminated=term,
                 truncated=trunc, last_obs=last, env_steps=b.env_steps)


@pytest.mark.mujoco
@pytest.mark.parametrize(("keep_tails", "bootstrap"), [(False, False), (True, True), (False, True)])
def test_advantages_of_multi_episode_rows_equal_one_row_per_episode(keep_tails, bootstrap):
    tasks = envs.get_task_distribution(HOPPER).sample(2, np.random.default_rng(3))
    b = _collect(HOPPER, tasks, 3, 40, seed=2, keep_tails=keep_tails, backend="mujoco-batched")
    assert b.ep_end.sum(-1).max() >= 2
    split = _split_rows(b)
    s = AdvantageSettings(0.99, 0.97, 1e-5, True, bootstrap)
    got, want = compute_advantages(b, s), compute_advantages(split, s)
    # Same transitions, same per-task baseline fit and normalisation; order of sums differs.
    np.testing.assert_allclose(np.sort(got[b.valid]), np.sort(want[split.valid]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.task_returns(), split.task_returns(), rtol=1e-12)
    assert np.array_equal(b.episode_counts(), split.episode_counts())


def test_first_episode_returns_and_episode_counts_by_hand():
    # One task, one slot, H = 6: episodes [r=1,2] (terminated), [r=3] (terminated), tail [4,5,6] dropped.
    H = 6
    rew = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]])
    valid = np.array([[[1, 1, 1, 0, 0, 0]]], dtype=bool)
    ep_end = np.array([[[0, 1, 1, 0, 0, 0]]], dtype=bool)
    b = Batch(tasks=[0], obs=np.zeros((1, 1, H, 1)), actions=np.zeros((1, 1, H, 1)), rewards=rew, valid=valid,
              ep_time=np.array([[[0, 1, 0, 0, 1, 2]]]), ep_end=ep_end, ep_term=ep_end.copy(),
              ep_success=np.where(ep_end, np.array([[[0, 1, 0, 0, 0, 0]]]), np.nan), lengths=np.array([[3]]),
              terminated=np.array([[True]]), truncated=np.array([[False]]), last_obs=np.zeros((1, 1, 1)), env_steps=6)
    assert b.first_episode_returns().tolist() == [[3.0]]
    assert b.task_returns().tolist() == [3.0]  # (3 + 3) / 2 episodes
    assert b.episode_counts().tolist() == [2]
    assert b.first_episode_success().tolist() == [[1.0]]
    assert b.stats()["rollout/episode_length"] == 1.5


def _run_cfg(env_id, algo, **over):
    base = {"sampler": {"meta_batch_size": 2, "episodes_per_task": 2, "horizon": 30, "n_workers": 1},
            "eval": {"n_tasks": 3, "episodes_per_task": 2, "n_updates": 1}, "torch_threads": 1}
    return presets.run_config(env_id, algo, 1, 10**6, config.merge(base, over))


@pytest.mark.mujoco
@pytest.mark.parametrize("algo", ["drs-ppo", "promp"])
def test_iteration_charges_exactly_one_unit_per_round_and_logs_the_counts(algo):
    cfg = _run_cfg(HOPPER, algo, sampler={"horizon": 80})
    assert cfg.sampler.unit == "steps"
    with Sampler(HOPPER, horizon=80, n_workers=1, backend="mujoco-batched") as s:
        tr = Trainer(cfg, s)
        m = tr.iterate()
    rounds = 2 if algo == "promp" else 1
    assert m["sampling/rounds"] == rounds
    assert m["sampling/steps_charged"] == tr.budget.used == rounds * 2 * 2 * 80 == cfg.iteration_steps
    assert 0 < m["sampling/steps_used"] <= m["sampling/steps_charged"]
    assert 2 <= m["sampling/episodes_per_task_min"] <= m["sampling/episodes_per_task_mean"] <= m["sampling/episodes_per_task_max"]
    assert m["sampling/episodes_per_task_max"] > 2  # the untrained hopper falls: more episodes than slots


@pytest.mark.mujoco
@pytest.mark.parametrize("unit", ["steps", "episodes"])
def test_evaluation_does_not_depend_on_task_chunk(unit):
    import pandas as pd

    cfg1 = _run_cfg(HOPPER, "drs-ppo", sampler={"unit": unit}, eval={"task_chunk": 1, "n_updates": 2})
    with Sampler(HOPPER, horizon=30, n_workers=1, backend="mujoco-batched") as s:
        policy = GaussianMLPPolicy(s.obs_dim, s.act_dim, cfg1.policy.hidden_sizes, 1.0, 10.0)
        params = policy.init_params(torch.Generator().manual_seed(3))
        tasks = envs.get_task_distribution(HOPPER).test_tasks(5, np.random.default_rng(0))
        tables = {}
        for chunk in (1, 2, 40):
            cfg = replace(cfg1, eval=replace(cfg1.eval, task_chunk=chunk))
            rows, steps = evaluate_params(cfg, s, params, 2, tasks)
            tables[chunk] = (pd.DataFrame(rows), steps)
    for chunk in (2, 40):  # bit-identical (DataFrame.equals treats NaN == NaN)
        assert tables[chunk][0].equals(tables[1][0]) and tables[chunk][1] == tables[1][1], chunk
    assert tables[1][0]["return"].nunique() > 5


def test_one_adaptation_rule_per_pair_with_inner_lr_over_k():
    exp = config.from_dict(presets.ExperimentConfig, {
        "name": "k", "envs": [POINT], "algos": ["drs-ppo", "promp", "drs-trpo", "trpo-maml"], "seeds": [1],
        "budget": 100000, "n_checkpoints": 2,
        "overrides": {"promp": {"algo_cfg": {"inner_steps": 3, "inner_lr_over_k": True}}},
    })
    cfgs = {c.algo: c for c in presets.experiment_run_configs(exp)}
    promp_lr = cfgs["promp"].algo_cfg.inner_lr / 3
    assert adaptation_rule(cfgs["drs-ppo"]) == adaptation_rule(cfgs["promp"])
    assert adaptation_rule(cfgs["drs-ppo"])["lr"] == pytest.approx(promp_lr)
    assert adaptation_rule(cfgs["drs-trpo"]) == adaptation_rule(cfgs["trpo-maml"])
    # Without the pairing the DRS run would have been adapted at the full inner step size.
    alone = presets.run_config(POINT, "drs-ppo", 1)
    assert adaptation_rule(alone)["lr"] == pytest.approx(cfgs["promp"].algo_cfg.inner_lr)


def test_defaults_unit_steps_and_horizon_treated_as_terminal():
    cfg = presets.run_config(HOPPER, "drs-ppo", 1)
    assert cfg.sampler.unit == "steps" and cfg.sampler.keep_tails is False
    assert cfg.advantage.bootstrap_truncated is False
    with pytest.raises(config.ConfigError, match="sampler.unit"):
        presets.run_config(HOPPER, "drs-ppo", 1, overrides={"sampler": {"unit": "slots"}})
    with pytest.raises(config.ConfigError, match="keep_tails"):
        presets.run_config(HOPPER, "drs-ppo", 1, overrides={"sampler": {"unit": "episodes", "keep_tails": True}})


def _cli(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI's ``main`` in this process (tests/test_hostile.py checks that a new interpreter
    gives the same exit status and message)."""
    from rlbench import cli

    capsys.readouterr()
    code = cli.main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


@pytest.mark.parametrize(("setting", "key"), [("sampler.unit=slots", "sampler.unit"),
                                              ("sampler.keep_tails=true", "keep_tails")])
def test_bad_unit_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, setting, key):
    out = tmp_path / "run"
    over = [] if key == "sampler.unit" else ["--set", "sampler.unit=episodes"]
    p = _cli(capsys, "train", "--env", POINT, "--algo", "drs-ppo", "--seed", "1", "--budget", "20000", "--out", str(out),
             "--set", setting, *over)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and key in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


def test_compare_refuses_runs_with_different_units(tmp_path, capsys):
    from rlbench import cli

    common = ["--env", POINT, "--seed", "1", "--budget", "3200", "--set", "sampler.meta_batch_size=4",
              "--set", "sampler.episodes_per_task=2", "--set", "sampler.n_workers=0", "--set", "n_checkpoints=2",
              "--set", "eval.n_tasks=2", "--set", "eval.n_updates=1", "--set", "torch_threads=1"]
    for algo, unit in (("drs-ppo", "steps"), ("promp", "episodes")):
        d = tmp_path / "runs" / algo
        assert cli.main(["train", "--algo", algo, *common, "--set", f"sampler.unit={unit}", "--out", str(d), "--quiet"]) == 0
        assert cli.main(["evaluate", str(d), "--quiet"]) == 0
    p = _cli(capsys, "compare", str(tmp_path / "runs"), "--pair", "drs-ppo:promp", "--out", str(tmp_path / "cmp"))
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "sampler.unit" in p.stderr


@pytest.mark.mujoco
def test_walker_foot_friction_default_is_the_authors_and_v5_is_a_switch():
    import mujoco

    for env_id in (WALKER, "rlbench/Walker2DRandVel-v0"):
        gs = envs.make_meta_env(env_id)
        v5 = envs.make_meta_env(env_id, foot_friction="v5")
        for env, want in ((gs, 0.9), (v5, 1.9)):
            m = env.unwrapped.model if hasattr(env, "unwrapped") else env.model
            right = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "foot_geom")
            left = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "foot_left_geom")
            assert m.geom_friction[right, 0] == want and m.geom_friction[left, 0] == 1.9
        assert envs.fingerprint(env_id)["protocol"]["xml"] == "walker2d.xml"
    with pytest.raises(ValueError, match="Walker environments only"):
        envs.make_meta_env(HOPPER, foot_friction="v5")
    # The batched backend honours the switch bit for bit.
    from envs.locomotion_batched import BatchedLocomotionStepper
    from rlbench.sampler import GymStepper

    tasks = envs.get_task_distribution(WALKER).sample(2, np.random.default_rng(0))
    seeds = np.array([3, 4])
    for ff in ("gs", "v5"):
        g, bt = GymStepper(WALKER, 50, {"foot_friction": ff}), BatchedLocomotionStepper(WALKER, 50, {"foot_friction": ff})
        np.testing.assert_array_equal(g.reset(tasks, seeds), bt.reset(tasks, seeds))
        rng = np.random.default_rng(1)
        for _ in range(30):
            a = rng.uniform(-1, 1, size=(2, g.act_dim))
            for x, y in zip(g.step(a, np.ones(2, bool)), bt.step(a, np.ones(2, bool))):
                np.testing.assert_array_equal(x, y)
        g.close()
        bt.close()


def test_test_time_rule_is_compared_within_each_pair_only():
    from pathlib import Path

    from rlbench.analysis import Run, check_comparable
    from rlbench.errors import UsageError

    def run(algo, loss, lr, unit="steps"):
        comp = {"sampler": {"unit": unit}, "test_time": {"optimizer": "sgd", "loss": loss, "lr": lr, "updates": 5}}
        return Run(Path(algo), POINT, algo, 1, comp)

    grid = [run("drs-ppo", "promp", 0.1), run("promp", "promp", 0.1), run("drs-trpo", "trpo-maml", 0.1),
            run("trpo-maml", "trpo-maml", 0.1)]
    pairs = [("drs-ppo", "promp"), ("drs-trpo", "trpo-maml")]
    assert check_comparable(grid, (), pairs) == []  # two rules, one per pair: fine
    bad = grid[:1] + [run("promp", "promp", 0.05)] + grid[2:]
    with pytest.raises(UsageError, match=r"pair drs-ppo:promp differ in comparability\.test_time\.lr"):
        check_comparable(bad, (), pairs)
    assert check_comparable(bad, (), pairs[1:]) == []  # that pair is not compared
    notes = check_comparable(bad, ("test_time.lr",), pairs)
    assert notes == ['rlbench/PointGoal-v0: test_time.lr differs (0.05 vs 0.1)']
    # The simulation code path is recorded but never has to match (paths are bit-identical by test).
    mixed = [Run(r.path, r.env_id, r.algo, r.seed, {**r.comparability, "sampler_path": p})
             for r, p in zip(grid, ("gym", "metaworld-batched", "gym", "metaworld-fast"))]
    assert check_comparable(mixed, (), pairs) == []
    with pytest.raises(UsageError, match=r"comparability\.sampler\.unit"):  # env-wide keys stay env-wide
        check_comparable(grid[:3] + [run("trpo-maml", "trpo-maml", 0.1, "episodes")], (), pairs)


def test_foot_friction_is_a_strict_run_setting():
    cfg = presets.run_config(WALKER, "drs-ppo", 1, overrides={"env_kwargs": {"foot_friction": "v5"}})
    assert cfg.env_kwargs == {"foot_friction": "v5"}
    with pytest.raises(config.ConfigError, match="env_kwargs"):
        presets.run_config(HOPPER, "drs-ppo", 1, overrides={"env_kwargs": {"foot_friction": "v5"}})
    with pytest.raises(config.ConfigError, match="foot_friction"):
        presets.run_config(WALKER, "drs-ppo", 1, overrides={"env_kwargs": {"foot_friction": "v4"}})
