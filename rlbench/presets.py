"""Run configs from the protocol's tables, and experiment presets.

``run_config(env, algo, seed)`` fills the config dataclasses with the study's values for that
environment and algorithm, then applies user overrides strictly: the algorithm's
per-environment values (learning rates, KL bounds, inner step sizes, PPO steps, the ProMP
penalty schedule) from its hyperparameter table through :mod:`agents.registry` (an
environment without an entry gets the family defaults, with a logged notice), and the
family's sampling unit, network, budget, checkpoints and meta-test size from
rlbench/protocol.py ``FAMILIES``.

Experiment presets (``paper``, ``quick``, ``smoke``) are YAML files next to this module,
loaded strictly into :class:`rlbench.settings.ExperimentConfig`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import envs
from agents import registry
from rlbench import config
from rlbench.config import ConfigError
from rlbench.protocol import FAMILIES, FamilyDefaults
from rlbench.settings import ExperimentConfig, RunConfig

__all__ = ["FAMILIES", "FamilyDefaults", "hyper_of", "load_experiment", "run_config"]

PRESET_DIR = Path(__file__).with_name("presets")


def family_of(env_id: str) -> str:
    return envs.entry(env_id).family


def family_defaults(env_id: str) -> FamilyDefaults:
    """The sampling unit, network, budget and checkpoints of ``env_id``'s family."""
    family = family_of(env_id)
    if family not in FAMILIES:
        raise ConfigError(f"environment {env_id} is of family '{family}', which has no defaults "
                          f"(known families: {', '.join(FAMILIES)}; register it with one of them)")
    return FAMILIES[family]


def hyper_of(env_id: str, algo: str) -> dict[str, Any]:
    """The per-environment learner values of ``algo`` on ``env_id`` (agents.registry): its
    table's entry, or the family defaults with a logged notice for an unlisted environment."""
    return registry.algo_settings(algo, env_id, family_of(env_id))


def base_run_dict(env_id: str, algo: str) -> dict[str, Any]:
    """The protocol's run settings for (env, algo) as a plain dict (before user overrides)."""
    spec = registry.get(algo)
    fam = family_defaults(env_id)
    algo_cfg = hyper_of(env_id, algo)
    paired = spec.test_time_key
    return {
        "env_id": env_id,
        "algo": algo,
        "seed": 0,
        "budget": fam.budget,
        "n_checkpoints": fam.n_checkpoints,
        "policy": {"hidden_sizes": list(fam.hidden_sizes)},
        "sampler": {"meta_batch_size": fam.meta_batch_size, "episodes_per_task": fam.episodes_per_task,
                    "horizon": envs.entry(env_id).horizon},  # the environment's own (its registry entry)
        "algo_cfg": algo_cfg,
        "eval": {"n_tasks": fam.eval_tasks, "episodes_per_task": fam.episodes_per_task},
        "paired_inner": paired,
        "torch_threads": fam.torch_threads,
    }


def run_config(env_id: str, algo: str, seed: int, budget: int | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The resolved RunConfig: protocol values, then ``overrides`` (a nested dict), strictly checked."""
    data = base_run_dict(env_id, algo)
    data["seed"] = seed
    if budget is not None:
        data["budget"] = budget
    if overrides:
        for key in ("env_id", "algo", "paired_inner"):
            if key in overrides and overrides[key] != data[key]:
                raise ConfigError(f"{key} cannot be overridden (it is fixed by --env/--algo)")
        data = config.merge(data, overrides)
    return config.from_dict(RunConfig, data)


# -- experiment presets ------------------------------------------------------------------------


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_experiment(name_or_path: str) -> ExperimentConfig:
    """A preset name (``paper``, ``quick``, ``smoke``) or a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        if name_or_path not in preset_names():
            raise ConfigError(f"unknown experiment preset '{name_or_path}' (known: {', '.join(preset_names())}; or pass a .yaml file)")
        path = PRESET_DIR / f"{name_or_path}.yaml"
    elif not path.exists():
        raise ConfigError(f"experiment file not found: {path}")
    exp = config.load(ExperimentConfig, path)
    for env_id in exp.envs:
        for algo in exp.algos:
            hyper_of(env_id, algo)
    return exp


def check_override_keys(exp: ExperimentConfig) -> None:
    """Every ``overrides`` key applies to some run of the grid (a misspelt key would be
    silently ignored otherwise)."""
    valid = {"all", *exp.algos}
    for env_id in exp.envs:
        valid |= {env_id, family_of(env_id), *(f"{env_id}:{a}" for a in exp.algos)}
    for key in exp.overrides:
        if key not in valid:
            raise ConfigError(f"overrides.{key}: matches no environment, family or algorithm of this experiment "
                              f"(valid keys: {', '.join(sorted(valid))})")


def experiment_overrides(exp: ExperimentConfig, env_id: str, algo: str) -> dict[str, Any]:
    """The experiment's run-config overrides for (env, algo): "all", then the env's family,
    the env id, the algorithm and "env_id:algo", later keys winning."""
    over: dict[str, Any] = {"n_checkpoints": exp.n_checkpoints}
    for key in ("all", family_of(env_id), env_id, algo, f"{env_id}:{algo}"):
        if key in exp.overrides:
            over = config.merge(over, exp.overrides[key])
    return over


def experiment_run_configs(exp: ExperimentConfig) -> list[RunConfig]:
    """Every run of the grid, with the experiment's overrides applied, and one test-time rule
    per pair: both runs of each (DRS, MAML) pair are adapted at meta-test time with the MAML
    run's effective inner step size (``eval.adapt_lr``), e.g. lr / K for a K-step MAML trained
    with ``inner_lr_over_k``, so a comparison never mixes two adaptation rules."""
    cfgs = {
        (env_id, algo, seed): run_config(env_id, algo, seed, exp.budget or None, experiment_overrides(exp, env_id, algo))
        for env_id in exp.envs
        for algo in exp.algos
        for seed in exp.seeds
    }
    set_by: dict[tuple[str, str, int], tuple[str, float]] = {}  # run -> (pair, test-time step size)
    for pair in exp.pairs:
        drs, maml = pair.split(":")
        for (env_id, algo, seed), cfg in list(cfgs.items()):
            partner = cfgs.get((env_id, maml, seed))
            if algo not in (drs, maml) or partner is None or (env_id, drs, seed) not in cfgs:
                continue
            lr = partner.eval.adapt_lr or partner.algo_cfg.effective_inner_lr
            earlier = set_by.setdefault((env_id, algo, seed), (pair, lr))
            if earlier[1] != lr:  # one run is evaluated once, so it can follow one test-time rule only
                raise ConfigError(f"pairs: {algo} on {env_id} is in pairs {earlier[0]} and {pair}, whose test-time "
                                  f"step sizes differ ({earlier[1]:g} vs {lr:g}); give the two MAML algorithms "
                                  f"the same inner_lr or compare them in separate experiments")
            cfgs[env_id, algo, seed] = replace(cfg, eval=replace(cfg.eval, adapt_lr=lr))
    return list(cfgs.values())
