"""The algorithm registry and the per-algorithm hyperparameter tables (issue 14 items 1, 3, 7).

Oracles: the table in docs/protocol.md section 4.3 (transcribed from the authors' run.py,
independently of the YAML tables), hand-written values, and the run configs themselves.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest

import envs
import envs.registry as env_registry
from agents import hyperparams, registry
from agents.config import AlgoConfig, ConfigError
from agents.drs import DRSPPO
from rlbench import evaluator, plots, presets
from rlbench.settings import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ("drs-ppo", "promp", "drs-trpo", "trpo-maml")

# docs/protocol.md 4.3 column headers -> env ids; row labels -> (algorithm, AlgoConfig field)
DOC_ENVS = {"HCVel": "HalfCheetahRandVel", "W2DVel": "Walker2DRandVel", "W2DParams": "Walker2DRandParams",
            "HopParams": "HopperRandParams", "ML1-Push": "ML1-Push", "ML1-Reach": "ML1-Reach", "ML10": "ML10", "ML45": "ML45"}
DOC_ROWS = {
    "DRS+PPO Adam learning rate": [("drs-ppo", "learning_rate")],
    "ProMP outer learning rate": [("promp", "learning_rate")],
    "ProMP inner learning rate": [("promp", "inner_lr")],
    "DRS+TRPO max KL": [("drs-trpo", "max_kl")],
    "TRPO-MAML max KL": [("trpo-maml", "max_kl")],
    "TRPO-MAML inner learning rate": [("trpo-maml", "inner_lr")],
    "num_ppo_steps (DRS+PPO, ProMP)": [("drs-ppo", "num_ppo_steps"), ("promp", "num_ppo_steps")],
    "ProMP eta": [("promp", "adaptive_eta")],
}


def doc_table() -> tuple[list[str], dict[str, list[str]]]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("### 4.3"):text.index("### 4.4")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    header, body = rows[0], rows[2:]
    return header[1:], {r[0]: r[1:] for r in body}


def table_value(algo: str, env: str, field: str):
    return hyperparams.load(registry.get(algo).table_path).envs[f"rlbench/{env}-v0"][field]


def test_tables_equal_the_protocol_document():
    header, rows = doc_table()
    assert set(rows) == set(DOC_ROWS) and [DOC_ENVS[h] for h in header]
    checked = 0
    for label, targets in DOC_ROWS.items():
        for cell, head in zip(rows[label], header):
            for algo, field in targets:
                got = table_value(algo, DOC_ENVS[head], field)
                want = (cell == "adaptive") if field == "adaptive_eta" else float(cell)
                assert got == want, (label, head, algo, got, cell)
                checked += 1
    assert checked == 8 * 9


def test_promp_penalty_follows_the_schedule():
    # docs/protocol.md 4.2: eta fixed at 5e-4, or adaptive from 1e-3 with target KL 1e-2.
    for env, entry in hyperparams.load(registry.get("promp").table_path).envs.items():
        assert entry["eta"] == (1e-3 if entry["adaptive_eta"] else 5e-4), env
        assert entry["kl_target"] == 1e-2


def test_every_table_cites_a_source_for_every_value():
    for spec in registry.specs():
        table = hyperparams.load(spec.table_path)
        assert set(table.envs) >= set(table.family_defaults.values())
        for env, values in table.envs.items():
            assert set(table.sources[env]) == set(values), (spec.key, env)
            if env != "rlbench/PointGoal-v0" and spec.key in BUILTIN:  # the study's algorithms: GS's code
                assert all(s.startswith("experiments/benchmark/") for s in table.sources[env].values()), (spec.key, env)


def test_algo_config_defaults_are_the_locomotion_family_defaults():
    a = AlgoConfig()
    hc = "HalfCheetahRandVel"
    assert a.learning_rate == table_value("drs-ppo", hc, "learning_rate")
    assert a.num_ppo_steps == table_value("drs-ppo", hc, "num_ppo_steps")
    assert a.max_kl == table_value("drs-trpo", hc, "max_kl")
    assert a.inner_lr == table_value("promp", hc, "inner_lr")
    assert (a.eta, a.adaptive_eta, a.kl_target) == tuple(table_value("promp", hc, k) for k in ("eta", "adaptive_eta", "kl_target"))


def test_builtin_entries():
    assert registry.keys()[:4] == BUILTIN
    assert [registry.display_name(k) for k in BUILTIN] == ["DRS+PPO", "ProMP", "DRS+TRPO", "TRPO-MAML"]
    assert registry.default_pairs()[:2] == (("drs-ppo", "promp"), ("drs-trpo", "trpo-maml"))
    assert ExperimentConfig("x", ("e",), ("drs-ppo",), (1,)).pairs[:2] == ("drs-ppo:promp", "drs-trpo:trpo-maml")
    assert [registry.get(k).test_time_key for k in BUILTIN] == ["promp", "promp", "trpo-maml", "trpo-maml"]
    assert registry.inner_loss("drs-ppo") is registry.inner_loss("promp") is registry.get("promp").agent.inner_loss
    assert registry.inner_loss("drs-trpo") is registry.get("trpo-maml").agent.inner_loss
    assert registry.inner_loss("promp") is not registry.inner_loss("trpo-maml")
    assert plots.algo_label("trpo-maml") == "TRPO-MAML" and plots.algo_label("unknown") == "unknown"
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'"):
        registry.get("nope")


@pytest.mark.parametrize("algo,K,rounds", [("drs-ppo", 3, 1), ("drs-trpo", 2, 1), ("promp", 1, 2), ("promp", 3, 4), ("trpo-maml", 2, 3)])
def test_sampling_rounds(algo, K, rounds):
    cfg = presets.run_config("rlbench/PointGoal-v0", algo, 0, overrides={"algo_cfg": {"inner_steps": K}})
    assert cfg.sampling_rounds == rounds
    assert cfg.iteration_steps == rounds * 20 * 10 * 20  # toy family: 20 tasks x 10 episodes x horizon 20
    assert cfg.is_maml == (algo in ("promp", "trpo-maml"))


def test_test_time_step_sizes():
    lrs = {}
    for algo in BUILTIN:
        cfg = presets.run_config("rlbench/HalfCheetahRandVel-v0", algo, 0)
        lrs[algo] = (evaluator.adaptation_lr(cfg), evaluator.gs_compat_lr(cfg))
    # docs/protocol.md 4.3 / 6.3: SGD at the paired MAML inner lr; GS: DRS+PPO its PPO lr, DRS+TRPO 0
    assert lrs == {"drs-ppo": (1e-2, 1e-2), "promp": (1e-2, 1e-2), "drs-trpo": (1e-2, 0.0), "trpo-maml": (1e-2, 1e-2)}
    ml10 = {a: evaluator.gs_compat_lr(presets.run_config("rlbench/ML10-v0", a, 0)) for a in BUILTIN}
    assert ml10 == {"drs-ppo": 1e-4, "promp": 1e-3, "drs-trpo": 0.0, "trpo-maml": 1e-3}


@pytest.fixture
def scratch_env(monkeypatch):
    """A copy of PointGoal registered at test time under a fresh id (removed afterwards)."""
    monkeypatch.setattr(env_registry, "_REGISTRY", dict(env_registry._REGISTRY))

    def make(env_id: str, family: str) -> str:
        envs.register_meta_env(env_id, "envs.point:PointGoalMetaEnv", "envs.point:PointGoalTasks",
                               max_episode_steps=20, family=family)
        return env_id
    return make


def test_unlisted_env_gets_family_defaults_with_one_notice(scratch_env, caplog):
    env_id = scratch_env("test/PointGoalNoTable-v0", "toy")
    with caplog.at_level(logging.WARNING, logger="agents.hyperparams"):
        cfgs = {a: presets.run_config(env_id, a, 0) for a in BUILTIN}
        presets.run_config(env_id, "promp", 1)  # a second lookup: no second notice
    ref = {a: presets.run_config("rlbench/PointGoal-v0", a, 0) for a in BUILTIN}
    for a in BUILTIN:
        cfgs[a].validate()
        assert cfgs[a].algo_cfg == ref[a].algo_cfg
        assert replace(cfgs[a], env_id="rlbench/PointGoal-v0") == ref[a]
    notices = [r.getMessage() for r in caplog.records if env_id in r.getMessage()]
    assert len(notices) == 4  # one per table (DRS tables also read their partner's inner_lr)
    assert all("toy family defaults" in m and "rlbench/PointGoal-v0" in m for m in notices)
    assert {m.split()[1] for m in notices} == {f"{a}.yaml" for a in BUILTIN}


def test_unlisted_env_of_a_family_without_defaults_is_a_config_error(scratch_env):
    env_id = scratch_env("test/PointGoalOddFamily-v0", "odd")
    with pytest.raises(ConfigError, match=r"test/PointGoalOddFamily-v0: no entry in drs-ppo.yaml and no default for its family 'odd'"):
        registry.algo_settings("drs-ppo", env_id, "odd")


@pytest.mark.parametrize("text,match", [
    ("envs:\n  e:\n    learning_rate: 1e-3\n", "expected float, got '1e-3'"),
    ("envs:\n  e:\n    learning_rat: 1.0e-3\n", "learning_rat is not an AlgoConfig field"),
    ("envs:\n  e:\n    num_ppo_steps: 2.5\n", "expected int"),
    ("envs:\n  e:\n    adaptive_eta: 1\n", "expected bool"),
    ("family_defaults:\n  toy: f\nenvs:\n  e:\n    max_kl: 0.1\n", "family_defaults.toy names 'f', which has no entry"),
    ("env:\n  e: {}\n", "expected the sections"),
])
def test_malformed_tables_are_refused(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        hyperparams.load(path)


class MyDRS(DRSPPO):
    algo = "test-drs"


def test_a_new_algorithm_is_one_class_and_one_register_call(tmp_path, scratch_env):
    table = tmp_path / "test-drs.yaml"
    table.write_text("family_defaults:\n  toy: rlbench/PointGoal-v0\nenvs:\n  rlbench/PointGoal-v0:\n"
                     "    learning_rate: 3.0e-3\n    num_ppo_steps: 2\n")
    registry.register(registry.AlgoSpec(key=MyDRS.algo, name="My DRS", agent=MyDRS, meta_learner=False,
                                        reads=("learning_rate", "num_ppo_steps"), partners=("trpo-maml",),
                                        adapt_like="trpo-maml", table=table))
    try:
        with pytest.raises(ValueError, match="already registered"):
            registry.register(registry.get("test-drs"))
        cfg = presets.run_config("rlbench/PointGoal-v0", "test-drs", 0)
        assert (cfg.algo_cfg.learning_rate, cfg.algo_cfg.num_ppo_steps) == (3e-3, 2)
        assert cfg.algo_cfg.inner_lr == table_value("trpo-maml", "PointGoal", "inner_lr") and cfg.paired_inner == "trpo-maml"
        assert ("test-drs", "trpo-maml") in registry.default_pairs()
        assert plots.algo_label("test-drs") == "My DRS"
        ExperimentConfig("x", ("rlbench/PointGoal-v0",), ("test-drs", "trpo-maml"), (1,)).validate()
        agent = registry.make_agent(cfg, 2, 2)
        assert isinstance(agent, MyDRS) and agent.optimizer.param_groups[0]["lr"] == 3e-3
    finally:
        registry.unregister("test-drs")
    with pytest.raises(ConfigError, match="unknown algorithm"):
        presets.run_config("rlbench/PointGoal-v0", "test-drs", 0)


def test_register_refuses_incomplete_entries():
    with pytest.raises(ValueError, match="must name adapt_like"):
        registry.register(registry.AlgoSpec(key="x", name="X", agent=MyDRS, meta_learner=False, reads=()))
    with pytest.raises(ValueError, match="must define inner_loss"):
        registry.register(registry.AlgoSpec(key="x", name="X", agent=MyDRS, meta_learner=True, reads=()))
    known = registry.keys()
    assert "x" not in known


def test_no_module_outside_the_registry_names_an_algorithm():
    """Only agents/registry.py, the agent classes' ``algo`` attributes and docstrings/comments
    may spell an algorithm key (issue 14 item 1)."""
    pattern = re.compile(r"""["'](drs-ppo|promp|drs-trpo|trpo-maml)["':]""")
    allowed = re.compile(r"^\s*algo = ")
    offenders = []
    for package in ("rlbench", "agents", "envs", "scripts"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "registry.py" and path.parent.name == "agents":
                continue
            in_doc = False
            for n, line in enumerate(path.read_text().splitlines(), 1):
                quotes = line.count('"""') + line.count("'''")
                code = line.split("#", 1)[0]
                if not in_doc and quotes != 1 and pattern.search(code) and not allowed.match(line) and '"""' not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
                if quotes % 2:
                    in_doc = not in_doc
    assert offenders == [], "\n".join(offenders)


class Recorder:
    """Forwards attribute reads to a config and records their names."""

    def __init__(self, inner):
        self._inner, self.seen = inner, set()

    def __getattr__(self, name):
        self.seen.add(name)
        return getattr(self._inner, name)


#: properties of AlgoConfig -> the fields they read
DERIVED = {"effective_inner_lr": {"inner_lr", "inner_steps", "inner_lr_over_k"}}


@pytest.mark.parametrize("algo,over", [
    ("drs-ppo", {"minibatches": 2}), ("drs-trpo", {}), ("promp", {"adaptive_eta": True}), ("trpo-maml", {}),
])
def test_agents_read_only_the_fields_their_entry_lists(algo, over):
    """One training iteration per built-in agent, with its algorithm settings behind a recorder:
    every AlgoConfig field it reads is declared in its registry entry's ``reads``."""
    from types import SimpleNamespace

    import torch

    from rlbench.sampler import Sampler
    from rlbench.trainer import Trainer

    cfg = presets.run_config("rlbench/PointGoal-v0", algo, 0, budget=10**6, overrides={
        "sampler": {"meta_batch_size": 3, "episodes_per_task": 2, "n_workers": 1}, "algo_cfg": over})
    spec = registry.get(algo)
    rec = Recorder(cfg.algo_cfg)
    view = SimpleNamespace(**{k: getattr(cfg, k) for k in ("algo", "seed", "dtype", "policy", "advantage")}, algo_cfg=rec)
    with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=1) as sampler:
        trainer = Trainer(cfg, sampler)
        policy = trainer.agent.policy
        trainer.agent = spec.agent(view, policy, policy.init_params(torch.Generator().manual_seed(0)))
        trainer.iterate()
    seen = set().union(*(DERIVED.get(name, {name}) for name in rec.seen))
    assert seen, algo
    assert seen <= set(spec.reads), sorted(seen - set(spec.reads))


def test_algorithm_plugins_register_through_the_entry_point_group(tmp_path, monkeypatch, caplog):
    from importlib import metadata

    (tmp_path / "rlb_plugin_ok.py").write_text(
        "from agents.drs import DRSPPO\nfrom agents.registry import AlgoSpec, register\n"
        "class PluginDRS(DRSPPO):\n    algo = 'plugin-drs'\n"
        f"register(AlgoSpec(key='plugin-drs', name='Plugin DRS', agent=PluginDRS, meta_learner=False, reads=(),\n"
        f"                  adapt_like='promp', table={str(registry.get('drs-ppo').table_path)!r}))\n")
    (tmp_path / "rlb_plugin_bad.py").write_text("raise RuntimeError('broken plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [metadata.EntryPoint("ok", "rlb_plugin_ok", registry.ENTRY_POINT_GROUP),
           metadata.EntryPoint("bad", "rlb_plugin_bad", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(metadata, "entry_points", lambda group: [e for e in eps if e.group == group])
    try:
        with caplog.at_level(logging.WARNING, logger="agents.registry"):
            assert registry.load_plugins() == ["rlb_plugin_ok"]
        assert registry.display_name("plugin-drs") == "Plugin DRS"
        assert presets.run_config("rlbench/PointGoal-v0", "plugin-drs", 0).paired_inner == "promp"
        assert "algorithm plugin bad (rlb_plugin_bad) could not be loaded: RuntimeError: broken plugin" in caplog.text
    finally:
        registry.unregister("plugin-drs")
