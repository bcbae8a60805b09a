"""Run configs from the protocol's tables (rlbench/protocol.py), and experiment presets.

``run_config(env, algo, seed)`` fills the config dataclasses with the study's values for that
environment and algorithm (learning rates, KL bounds, inner step sizes, PPO steps, the ProMP
penalty schedule, sampling unit, network, budget, checkpoints, meta-test size), then applies
user overrides strictly.

Experiment presets (``paper``, ``quick``, ``smoke``) are YAML files next to this module,
loaded strictly into :class:`rlbench.settings.ExperimentConfig`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import envs
from rlbench import config
from rlbench.config import ConfigError
from rlbench.protocol import ETA_ADAPTIVE_START, ETA_FIXED, FAMILIES, HYPER, KL_TARGET, EnvHyper, FamilyDefaults
from rlbench.settings import ALGOS, ExperimentConfig, RunConfig

__all__ = ["FAMILIES", "HYPER", "EnvHyper", "FamilyDefaults", "PAIRED_INNER", "run_config", "load_experiment"]

PRESET_DIR = Path(__file__).with_name("presets")

#: DRS algorithm -> the MAML algorithm whose inner update adapts it at meta-test time
#: (docs/protocol.md section 6.3: DRS+PPO adapts like ProMP, DRS+TRPO like TRPO-MAML).
PAIRED_INNER = {"drs-ppo": "promp", "promp": "promp", "drs-trpo": "trpo-maml", "trpo-maml": "trpo-maml"}


def family_of(env_id: str) -> str:
    return envs.entry(env_id).family


def hyper_of(env_id: str) -> EnvHyper:
    envs.entry(env_id)
    if env_id not in HYPER:
        raise ConfigError(f"no hyperparameter preset for {env_id} (add one to rlbench/protocol.py HYPER)")
    return HYPER[env_id]


def base_run_dict(env_id: str, algo: str) -> dict[str, Any]:
    """The protocol's run settings for (env, algo) as a plain dict (before user overrides)."""
    if algo not in ALGOS:
        raise ConfigError(f"unknown algorithm '{algo}' (known: {', '.join(ALGOS)})")
    fam = FAMILIES[family_of(env_id)]
    h = hyper_of(env_id)
    paired = PAIRED_INNER[algo]
    inner_lr = h.promp_inner_lr if paired == "promp" else h.trpo_maml_inner_lr
    algo_cfg: dict[str, Any] = {"inner_lr": inner_lr, "num_ppo_steps": h.num_ppo_steps}
    if algo == "drs-ppo":
        algo_cfg["learning_rate"] = h.drs_ppo_lr
    elif algo == "promp":
        algo_cfg["learning_rate"] = h.promp_lr
        algo_cfg["adaptive_eta"] = h.adaptive_eta
        algo_cfg["eta"] = ETA_ADAPTIVE_START if h.adaptive_eta else ETA_FIXED
        algo_cfg["kl_target"] = KL_TARGET
    elif algo == "drs-trpo":
        algo_cfg["max_kl"] = h.drs_trpo_max_kl
    else:
        algo_cfg["max_kl"] = h.trpo_maml_max_kl
    return {
        "env_id": env_id,
        "algo": algo,
        "seed": 0,
        "budget": fam.budget,
        "n_checkpoints": fam.n_checkpoints,
        "policy": {"hidden_sizes": list(fam.hidden_sizes)},
        "sampler": {"meta_batch_size": fam.meta_batch_size, "episodes_per_task": fam.episodes_per_task, "horizon": fam.horizon},
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
        hyper_of(env_id)
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
    for pair in exp.pairs:
        drs, maml = pair.split(":")
        for (env_id, algo, seed), cfg in list(cfgs.items()):
            partner = cfgs.get((env_id, maml, seed))
            if algo not in (drs, maml) or partner is None or (env_id, drs, seed) not in cfgs:
                continue
            lr = partner.eval.adapt_lr or partner.algo_cfg.effective_inner_lr
            cfgs[env_id, algo, seed] = replace(cfg, eval=replace(cfg.eval, adapt_lr=lr))
    return list(cfgs.values())
