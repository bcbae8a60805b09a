"""The configuration tree of a run and of an experiment (frozen dataclasses, loaded strictly).

Field defaults here are *structural* (what a field means when unset); every number of the
study comes from :mod:`rlbench.presets`, which fills these dataclasses per environment and
algorithm from docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlbench import protocol as P
from rlbench.config import ConfigError

ALGOS = ("drs-ppo", "promp", "drs-trpo", "trpo-maml", "reptile")
MetaGradient = Literal["second-order", "first-order", "hessian-free"]
SamplingUnit = Literal["steps", "episodes"]


def _check(cond: bool, prefix: str, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{key}: {msg}")


@dataclass(frozen=True)
class PolicyConfig:
    """Gaussian MLP policy (docs/protocol.md sections 2-3)."""

    hidden_sizes: tuple[int, ...] = P.FAMILIES["locomotion"].hidden_sizes  # tanh hidden layers
    init_std: float = P.INIT_STD  # initial std, in the scaled action space
    action_scale: float = P.ACTION_SCALE  # the Gaussian lives in units of action_scale x env action

    def validate(self, p: str = "") -> None:
        _check(all(h > 0 for h in self.hidden_sizes), p, "hidden_sizes", "sizes must be positive")
        _check(self.init_std > 0, p, "init_std", "must be positive")
        _check(self.action_scale > 0, p, "action_scale", "must be positive")


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
    horizon: int = P.FAMILIES["locomotion"].horizon  # max episode length (env steps)
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
class AdvantageConfig:
    """Baseline and advantage estimation (docs/protocol.md section 3)."""

    gamma: float = P.GAMMA
    gae_lambda: float = P.GAE_LAMBDA
    baseline_reg: float = P.BASELINE_REG  # ridge regulariser of the linear feature baseline
    normalize: bool = True  # per-task (A - mean) / (std + 1e-8)
    # False (the authors' code): horizon-cut episodes end with value 0. True bootstraps them with
    # the linear baseline's V(s_H), which is fitted to truncated returns-to-go and so stays near 0
    # at t = H: a small change (docs/protocol.md section 9).
    bootstrap_truncated: bool = False

    def validate(self, p: str = "") -> None:
        _check(0 < self.gamma <= 1, p, "gamma", "must lie in (0, 1]")
        _check(0 <= self.gae_lambda <= 1, p, "gae_lambda", "must lie in [0, 1]")


_HC = P.HYPER["rlbench/HalfCheetahRandVel-v0"]


@dataclass(frozen=True)
class AlgoConfig:
    """Learner settings. Each algorithm reads the fields it uses (docs/protocol.md section 4).

    Per-environment values (learning rates, KL bounds, inner step sizes, PPO steps) are set
    by rlbench.presets from rlbench.protocol.HYPER; the defaults below are HalfCheetahRandVel's.
    """

    # PPO outer step (DRS+PPO, ProMP)
    learning_rate: float = _HC.drs_ppo_lr  # Adam step size
    clip: float = P.PPO_CLIP  # PPO ratio clip
    num_ppo_steps: int = _HC.num_ppo_steps  # Adam steps per iteration (epochs x minibatches)
    minibatches: int = 1  # 1 = full batch (the protocol); >1 for parity with other PPOs
    # TRPO outer step (DRS+TRPO, TRPO-MAML)
    max_kl: float = _HC.drs_trpo_max_kl  # mean KL(old || new) constraint
    cg_iters: int = P.CG_ITERS
    cg_damping: float = P.CG_DAMPING  # Fisher-vector product regulariser
    backtrack_ratio: float = P.BACKTRACK_RATIO
    max_backtracks: int = P.MAX_BACKTRACKS
    # MAML inner loop (ProMP, TRPO-MAML, and meta-test adaptation of every agent)
    inner_lr: float = _HC.promp_inner_lr
    inner_steps: int = 1  # K; each step resamples episodes from the adapted policy
    inner_lr_over_k: bool = False  # use inner_lr / K
    meta_gradient: MetaGradient = "second-order"
    hf_delta: float = 1e-4  # finite-difference radius of the Hessian-free estimator
    # ProMP KL penalty
    eta: float = P.ETA_FIXED
    adaptive_eta: bool = False
    kl_target: float = P.KL_TARGET
    # Reptile's outer step: theta += outer_step * (mean adapted params - theta)
    outer_step: float = P.REPTILE_OUTER_STEP

    def validate(self, p: str = "") -> None:
        for key in ("learning_rate", "clip", "max_kl", "inner_lr", "hf_delta", "kl_target", "backtrack_ratio"):
            _check(getattr(self, key) > 0, p, key, "must be positive")
        _check(self.eta >= 0, p, "eta", "must be >= 0")
        _check(self.outer_step > 0, p, "outer_step", "must be positive")
        _check(self.backtrack_ratio < 1, p, "backtrack_ratio", "must be < 1")
        for key in ("num_ppo_steps", "minibatches", "cg_iters", "inner_steps"):
            _check(getattr(self, key) >= 1, p, key, "must be >= 1")
        _check(self.max_backtracks >= 0, p, "max_backtracks", "must be >= 0")

    @property
    def effective_inner_lr(self) -> float:
        return self.inner_lr / self.inner_steps if self.inner_lr_over_k else self.inner_lr


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
    task_chunk: int = 40  # tasks sampled together (speed/memory only: results do not depend on it)

    def validate(self, p: str = "") -> None:
        _check(self.n_tasks >= 1, p, "n_tasks", "must be >= 1")
        _check(self.n_updates >= 0, p, "n_updates", "must be >= 0")
        _check(self.episodes_per_task >= 1, p, "episodes_per_task", "must be >= 1")
        _check(self.task_chunk >= 1, p, "task_chunk", "must be >= 1")
        _check(self.adapt_lr >= 0, p, "adapt_lr", "must be >= 0")


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
        _check(self.algo in ALGOS, p, "algo", f"unknown algorithm {self.algo!r} (known: {', '.join(ALGOS)})")
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
        return self.algo in ("promp", "trpo-maml")

    @property
    def iteration_steps(self) -> int:
        """Worst-case env steps of one training iteration (K+1 sampling units for MAML, K for Reptile)."""
        rounds = self.algo_cfg.inner_steps + 1 if self.is_maml else self.algo_cfg.inner_steps if self.algo == "reptile" else 1
        return rounds * self.sampler.unit_steps

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
    n_checkpoints: int = 21
    pairs: tuple[str, ...] = ("drs-ppo:promp", "drs-trpo:trpo-maml")
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
            _check(a in ALGOS, p, "algos", f"unknown algorithm {a!r} (known: {', '.join(ALGOS)})")
        for pair in self.pairs:
            _check(pair.count(":") == 1, p, "pairs", f"expected first:second, got {pair!r}")
        _check(self.budget >= 0, p, "budget", "must be >= 0")
