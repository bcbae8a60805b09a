"""The configuration tree of a run and of an experiment (frozen dataclasses, loaded strictly).

Field defaults here are *structural* (what a field means when unset); every number of the
study comes from :mod:`rlbench.presets`, which fills these dataclasses per environment and
algorithm from rlbench/protocol.py (per family) and the algorithm's hyperparameter table
(agents/hyperparams/, through agents.registry). Algorithms are known only to the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import envs

# The agents' own settings (policy, advantage estimation, learner) are defined with the agents
# and held here by RunConfig; they are re-exported from this module for existing imports.
from agents.config import AdvantageConfig, AlgoConfig, MetaGradient, PolicyConfig
from agents.config import check as _check
from rlbench import protocol as P

__all__ = ["AdvantageConfig", "AlgoConfig", "EvalConfig", "ExperimentConfig", "MetaGradient", "PolicyConfig",
           "RunConfig", "SamplerConfig", "SamplingUnit", "algo_keys"]

SamplingUnit = Literal["steps", "episodes"]
TaskDesign = Literal["random", "stratified"]


def algo_keys() -> tuple[str, ...]:
    """The registered algorithms (agents.registry; imported on use, it loads torch)."""
    from agents import registry

    return registry.keys()


def _default_pairs() -> tuple[str, ...]:
    from agents import registry

    return tuple(f"{a}:{b}" for a, b in registry.default_pairs())


@dataclass(frozen=True)
class SamplerConfig:
    """One sampling round: meta_batch_size tasks x episodes_per_task slots x horizon steps.

    ``unit`` (docs/protocol.md section 4): ``"steps"`` (the authors' sampler, default) steps
    every slot for exactly ``horizon`` environment steps, resetting a slot as soon as its
    episode ends, and learns from every episode completed inside the round (each slot's
    unfinished tail is dropped, or kept as a truncated segment with ``keep_tails``), so a round
    costs exactly T x E x H steps; ``"episodes"`` collects exactly E whole episodes per task
    (a round costs at most T x E x H steps, far fewer on environments that terminate early).
    """

    meta_batch_size: int = P.FAMILIES["locomotion"].meta_batch_size  # tasks per iteration
    episodes_per_task: int = P.FAMILIES["locomotion"].episodes_per_task  # episodes per task per sampling round
    horizon: int = envs.entry("rlbench/HalfCheetahRandVel-v0").horizon  # max episode length; presets: the env's own
    n_workers: int = 0  # worker processes; 0 = one per core, 1 = in-process
    backend: str = "auto"  # stepper backend: auto | gym | any registered in rlbench.sampler.STEPPERS
    unit: SamplingUnit = "steps"  # steps (the authors' sampler) | episodes (E whole episodes per task)
    keep_tails: bool = False  # steps unit: keep each slot's unfinished last episode as a truncated segment

    def validate(self, p: str = "") -> None:
        _check(self.unit == "steps" or not self.keep_tails, p, "keep_tails", "applies to sampler.unit 'steps' only")
        _check(self.meta_batch_size >= 1, p, "meta_batch_size", "must be >= 1")
        _check(self.episodes_per_task >= 1, p, "episodes_per_task", "must be >= 1")
        _check(self.horizon >= 1, p, "horizon", "must be >= 1")
        _check(self.n_workers >= 0, p, "n_workers", "must be >= 0")

    @property
    def unit_steps(self) -> int:
        """Environment steps of one sampling round: exact for the steps unit, an upper bound
        for the episodes unit (episodes that end early cost less)."""
        return self.meta_batch_size * self.episodes_per_task * self.horizon


@dataclass(frozen=True)
class EvalConfig:
    """Meta-test protocol (docs/protocol.md section 6)."""

    n_tasks: int = P.FAMILIES["locomotion"].eval_tasks  # T meta-test tasks per checkpoint (GS: 1000)
    n_updates: int = P.TEST_UPDATES  # adaptation steps; returns recorded at t = 0..n_updates
    episodes_per_task: int = P.FAMILIES["locomotion"].episodes_per_task  # episodes sampled per task at each t
    gs_adam_compat: bool = False  # GS's test-time behaviour (one persistent Adam, GS learning rates)
    # Step size of the test-time SGD step; 0 = this run's own effective inner step size. An
    # experiment sets it on BOTH runs of a pair from the MAML partner (rlbench.presets), so both
    # sides of a comparison are adapted by the same rule.
    adapt_lr: float = 0.0
    task_chunk: int = P.TASK_CHUNK  # tasks sampled together (speed/memory only: results do not depend on it)
    # How a seed's meta-test tasks are drawn (docs/protocol.md section 6.1): random = independent
    # draws; stratified = task i drawn uniformly within the i-th of n equal-probability strata of
    # the task parameter (distributions with one scalar parameter only).
    task_design: TaskDesign = "random"

    def validate(self, p: str = "") -> None:
        _check(self.n_tasks >= 1, p, "n_tasks", "must be >= 1")
        _check(self.n_updates >= 0, p, "n_updates", "must be >= 0")
        _check(self.episodes_per_task >= 1, p, "episodes_per_task", "must be >= 1")
        _check(self.task_chunk >= 1, p, "task_chunk", "must be >= 1")
        _check(self.adapt_lr >= 0, p, "adapt_lr", "must be >= 0")
        _check(self.task_design in ("random", "stratified"), p, "task_design", "must be 'random' or 'stratified'")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run."""

    env_id: str
    algo: str
    seed: int
    budget: int  # environment steps, hard cap
    n_checkpoints: int = P.FAMILIES["locomotion"].n_checkpoints  # including checkpoint 0 (the initial policy)
    checkpoint_interval: int = 0  # env steps between marks; 0 = budget / (n_checkpoints - 1)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    algo_cfg: AlgoConfig = field(default_factory=AlgoConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paired_inner: str = ""  # the MAML algorithm whose inner update evaluates this run (set by presets)
    dtype: Literal["float32", "float64"] = "float32"
    torch_threads: int = 1  # learner intra-op threads: fixed per run (part of its results), never from workers/cores
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # environment constructor arguments (rlbench/env_kwargs.py)

    def validate(self, p: str = "") -> None:
        _check(self.torch_threads >= 1, p, "torch_threads",
               "must be >= 1 (a fixed thread count keeps results independent of --workers and of the machine)")
        if self.env_kwargs:
            from rlbench.env_kwargs import check_env_kwargs

            check_env_kwargs(self.env_id, self.env_kwargs, f"{p + '.' if p else ''}env_kwargs")
        _check(self.algo in algo_keys(), p, "algo", f"unknown algorithm {self.algo!r} (known: {', '.join(algo_keys())})")
        _check(self.seed >= 0, p, "seed", "must be >= 0")
        _check(self.budget >= 0, p, "budget", "must be >= 0")
        _check(self.n_checkpoints >= 1, p, "n_checkpoints", "must be >= 1")
        _check(self.checkpoint_interval >= 0, p, "checkpoint_interval", "must be >= 0")

    @property
    def learner_threads(self) -> int:
        """Torch threads of the learner (and of evaluation's adaptation steps). Float reductions
        split over threads round differently, so this is a fixed setting of the run, recorded
        in its config: never derived from the sampler's workers or the machine's cores."""
        return self.torch_threads

    @property
    def is_maml(self) -> bool:
        """The algorithm is a meta-learner (its registry entry says so)."""
        from agents import registry

        return registry.get(self.algo).meta_learner

    @property
    def sampling_rounds(self) -> int:
        """Sampling rounds per training iteration (the registry entry's rule, e.g. K + 1 for MAML)."""
        from agents import registry

        return registry.get(self.algo).rounds(self.algo_cfg)

    @property
    def iteration_steps(self) -> int:
        """Worst-case env steps of one training iteration (``sampling_rounds`` sampling units)."""
        return self.sampling_rounds * self.sampler.unit_steps

    @property
    def checkpoint_marks(self) -> list[int]:
        """Env-step marks of checkpoints 0..n-1 (mark 0 = the initial policy)."""
        if self.n_checkpoints == 1:
            return [0]
        step = self.checkpoint_interval or self.budget // (self.n_checkpoints - 1)
        return [i * step for i in range(self.n_checkpoints)]


@dataclass(frozen=True)
class ExperimentConfig:
    """A grid of runs: environments x algorithms x seeds, then evaluation and comparison."""

    name: str
    envs: tuple[str, ...]
    algos: tuple[str, ...]
    seeds: tuple[int, ...]
    budget: int = 0  # env steps per run; 0 = the protocol budget of each environment
    n_checkpoints: int = P.N_CHECKPOINTS
    pairs: tuple[str, ...] = field(default_factory=_default_pairs)  # DRS:MAML; default: every registered pair
    overrides: dict[str, dict] = field(default_factory=dict)  # run-config overrides by family or env id ("all" applies to every run)

    def validate(self, p: str = "") -> None:
        _check(len(self.envs) > 0, p, "envs", "at least one environment")
        _check(len(self.seeds) > 0, p, "seeds", "at least one seed")
        _check(len(self.algos) > 0, p, "algos", "at least one algorithm")
        for key in ("envs", "algos", "seeds"):
            values = getattr(self, key)
            dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
            _check(dup is None, p, key, f"{dup!r} is listed twice")
        for a in self.algos:
            _check(a in algo_keys(), p, "algos", f"unknown algorithm {a!r} (known: {', '.join(algo_keys())})")
        for pair in self.pairs:
            _check(pair.count(":") == 1, p, "pairs", f"expected first:second, got {pair!r}")
        _check(self.budget >= 0, p, "budget", "must be >= 0")
