"""The study's numbers, in one place (../shared/PROTOCOL.md sections 3-6).

Environment physics, rewards and horizons live with each environment (envs/locomotion.py
SPECS, envs/meta_world.py); everything an *algorithm* or the *harness* needs per environment
lives here: sampling unit, network size, learning rates, KL bounds, inner step sizes, PPO
steps, the ProMP penalty schedule, budgets, checkpoints and the meta-test settings.

Experiment presets (``paper``, ``quick``, ``smoke``) are YAML files next to this module,
loaded strictly into :class:`rlbench.settings.ExperimentConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envs
from rlbench import config
from rlbench.config import ConfigError
from rlbench.settings import ALGOS, ExperimentConfig, RunConfig

PRESET_DIR = Path(__file__).with_name("presets")

#: DRS algorithm -> the MAML algorithm whose inner update adapts it at meta-test time
#: (PROTOCOL.md section 6.3: DRS+PPO adapts like ProMP, DRS+TRPO like TRPO-MAML).
PAIRED_INNER = {"drs-ppo": "promp", "promp": "promp", "drs-trpo": "trpo-maml", "trpo-maml": "trpo-maml"}


@dataclass(frozen=True)
class EnvHyper:
    """Per-environment tuned values of GS (PROTOCOL.md section 4 table)."""

    drs_ppo_lr: float
    promp_lr: float
    promp_inner_lr: float
    drs_trpo_max_kl: float
    trpo_maml_max_kl: float
    trpo_maml_inner_lr: float
    num_ppo_steps: int
    adaptive_eta: bool  # False: fixed ETA_FIXED; True: start ETA_ADAPTIVE_START, target KL_TARGET


ETA_FIXED = 5e-4
ETA_ADAPTIVE_START = 1e-3
KL_TARGET = 1e-2

HYPER: dict[str, EnvHyper] = {
    "rlbench/HalfCheetahRandVel-v0": EnvHyper(1e-2, 1e-4, 1e-2, 0.01, 0.001, 0.01, 5, False),
    "rlbench/Walker2DRandVel-v0": EnvHyper(1e-3, 1e-3, 1e-2, 0.01, 0.1, 0.01, 5, False),
    "rlbench/Walker2DRandParams-v0": EnvHyper(1e-3, 1e-3, 1e-2, 0.1, 0.1, 0.01, 3, True),
    "rlbench/HopperRandParams-v0": EnvHyper(1e-3, 1e-3, 1e-2, 0.1, 0.1, 0.01, 3, True),
    "rlbench/ML1-Push-v0": EnvHyper(1e-4, 1e-4, 1e-4, 0.1, 0.1, 1e-4, 5, False),
    "rlbench/ML1-Reach-v0": EnvHyper(1e-4, 1e-4, 1e-4, 0.001, 0.001, 1e-5, 5, False),
    "rlbench/ML10-v0": EnvHyper(1e-4, 1e-4, 1e-3, 0.001, 0.01, 1e-3, 5, False),
    "rlbench/ML45-v0": EnvHyper(1e-4, 1e-4, 1e-5, 0.01, 0.1, 1e-3, 5, False),
    # Not in the paper: the numpy toy used by fast tests, tuned here for a seconds-long budget.
    "rlbench/PointGoal-v0": EnvHyper(1e-2, 1e-2, 1e-1, 0.05, 0.05, 1e-1, 5, False),
}


@dataclass(frozen=True)
class FamilyDefaults:
    """Sampling unit, network, budget and checkpoints per environment family (PROTOCOL.md 4-6)."""

    meta_batch_size: int
    episodes_per_task: int
    horizon: int
    hidden_sizes: tuple[int, ...]
    budget: int  # env steps per run (equal for every algorithm)
    n_checkpoints: int  # including checkpoint 0
    eval_tasks: int  # T meta-test tasks (GS used 1000; see README "Protocol choices")
    torch_threads: int  # learner threads; 0 = as many as sampler workers


FAMILIES: dict[str, FamilyDefaults] = {
    # 40 x 20 x 200 = 160,000 steps per unit; 320M steps = 2000 DRS / 1000 MAML iterations;
    # 21 checkpoints 16M steps apart.
    "locomotion": FamilyDefaults(40, 20, 200, (64, 64), 320_000_000, 21, 100, 0),
    # 20 x 10 x 150 = 30,000 steps per unit; 600M steps; 21 checkpoints 30M apart.
    "metaworld": FamilyDefaults(20, 10, 150, (100, 100), 600_000_000, 21, 50, 0),
    # Tiny tensors: one learner thread (OpenMP threads made such updates many times slower).
    "toy": FamilyDefaults(20, 10, 20, (32, 32), 400_000, 5, 20, 1),
}


def family_of(env_id: str) -> str:
    return envs.entry(env_id).family


def hyper_of(env_id: str) -> EnvHyper:
    envs.entry(env_id)
    if env_id not in HYPER:
        raise ConfigError(f"no hyperparameter preset for {env_id} (add one to rlbench/presets.py HYPER)")
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


def experiment_overrides(exp: ExperimentConfig, env_id: str, algo: str) -> dict[str, Any]:
    """The experiment's run-config overrides for (env, algo): "all", then the env's family,
    the env id, the algorithm and "env_id:algo", later keys winning."""
    over: dict[str, Any] = {"n_checkpoints": exp.n_checkpoints}
    for key in ("all", family_of(env_id), env_id, algo, f"{env_id}:{algo}"):
        if key in exp.overrides:
            over = config.merge(over, exp.overrides[key])
    return over


def experiment_run_configs(exp: ExperimentConfig) -> list[RunConfig]:
    """Every run of the grid, with the experiment's overrides applied."""
    return [
        run_config(env_id, algo, seed, exp.budget or None, experiment_overrides(exp, env_id, algo))
        for env_id in exp.envs
        for algo in exp.algos
        for seed in exp.seeds
    ]
