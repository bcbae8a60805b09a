"""The settings agents read, and the learner constants of the study (docs/protocol.md 2-4).

Agents take a run configuration that has the sections of :class:`AgentConfig` (the harness's
``rlbench.settings.RunConfig`` holds these dataclasses); they never import the harness.
Constants shared by every algorithm are defined here once; ``rlbench/protocol.py`` re-exports
them next to the harness's tables. Per-environment values (learning rates, KL bounds, inner
step sizes, PPO steps, the ProMP penalty) live in one table per algorithm,
``agents/hyperparams/<algo>.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

# -- shared by every algorithm (docs/protocol.md sections 2-4) --------------------------------------
ACTION_SCALE = 10.0  # the Gaussian lives in units of 10 x the environment's action
INIT_STD = 1.0  # initial std in that scaled space (0.1 in environment units)
HIDDEN_SIZES = (64, 64)  # GS's locomotion network (the PolicyConfig default; families set their own)
GAMMA = 0.99
GAE_LAMBDA = 1.0
BASELINE_REG = 1e-5  # ridge regulariser of the linear feature baseline
PPO_CLIP = 0.3
CG_ITERS = 10
CG_DAMPING = 1e-5
BACKTRACK_RATIO = 0.8
MAX_BACKTRACKS = 15
HF_DELTA = 1e-4  # finite-difference radius of the Hessian-free meta-gradient (an extension, docs/protocol.md 4.4)

MetaGradient = Literal["second-order", "first-order", "hessian-free"]


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message names the dotted key.

    Defined here (the lowest layer that validates settings); ``rlbench.config.ConfigError`` is
    this class, so the command line reports it as a one-line usage error."""


def check(cond: bool, prefix: str, key: str, msg: str) -> None:
    """Raise ConfigError naming ``prefix.key`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{key}: {msg}")


@dataclass(frozen=True)
class PolicyConfig:
    """Gaussian MLP policy (docs/protocol.md sections 2-3)."""

    hidden_sizes: tuple[int, ...] = HIDDEN_SIZES  # tanh hidden layers
    init_std: float = INIT_STD  # initial std, in the scaled action space
    action_scale: float = ACTION_SCALE  # the Gaussian lives in units of action_scale x env action

    def validate(self, p: str = "") -> None:
        check(all(h > 0 for h in self.hidden_sizes), p, "hidden_sizes", "sizes must be positive")
        check(self.init_std > 0, p, "init_std", "must be positive")
        check(self.action_scale > 0, p, "action_scale", "must be positive")


@dataclass(frozen=True)
class AdvantageConfig:
    """Baseline and advantage estimation (docs/protocol.md section 3)."""

    gamma: float = GAMMA
    gae_lambda: float = GAE_LAMBDA
    baseline_reg: float = BASELINE_REG  # ridge regulariser of the linear feature baseline
    normalize: bool = True  # per-task (A - mean) / (std + 1e-8)
    # False (the authors' code): horizon-cut episodes end with value 0. True bootstraps them with
    # the linear baseline's V(s_H), which is fitted to truncated returns-to-go and so stays near 0
    # at t = H: a small change (docs/protocol.md section 9).
    bootstrap_truncated: bool = False

    def validate(self, p: str = "") -> None:
        check(0 < self.gamma <= 1, p, "gamma", "must lie in (0, 1]")
        check(0 <= self.gae_lambda <= 1, p, "gae_lambda", "must lie in [0, 1]")


@dataclass(frozen=True)
class AlgoConfig:
    """Learner settings. Each algorithm reads the fields its registry entry lists
    (``agents.registry.AlgoSpec.reads``).

    The per-environment fields (``learning_rate``, ``num_ppo_steps``, ``max_kl``, ``inner_lr``,
    ``eta``, ``adaptive_eta``, ``kl_target``) are set for every run from the algorithm's table
    ``agents/hyperparams/<algo>.yaml``, the only source a run takes them from. The constructor
    defaults below are placeholders for the fields an algorithm does not read (DRS+TRPO's
    ``learning_rate``, ...): they are written into every run's config.yaml, so they keep the
    values they had when runs were first recorded (HalfCheetahRandVel's) and a changed literal
    would stop ``--resume`` of existing runs; tests/test_registry.py keeps them equal to the tables.
    """

    # PPO outer step (DRS+PPO, ProMP)
    learning_rate: float = 1e-2  # Adam step size
    clip: float = PPO_CLIP  # PPO ratio clip
    num_ppo_steps: int = 5  # Adam steps per iteration (epochs x minibatches)
    minibatches: int = 1  # 1 = full batch (the protocol); >1 for parity with other PPOs
    # TRPO outer step (DRS+TRPO, TRPO-MAML)
    max_kl: float = 0.01  # mean KL(old || new) constraint
    cg_iters: int = CG_ITERS
    cg_damping: float = CG_DAMPING  # Fisher-vector product regulariser
    backtrack_ratio: float = BACKTRACK_RATIO
    max_backtracks: int = MAX_BACKTRACKS
    # off by default (1.0, the protocol): the conjugate gradient's Fisher-vector products on the
    # first ceil(fvp_subsample x T) of the iteration's T tasks only (docs/protocol.md section 4.4)
    fvp_subsample: float = 1.0
    # MAML inner loop (meta-learners, and meta-test adaptation of every agent)
    inner_lr: float = 1e-2
    inner_steps: int = 1  # K; each step resamples episodes from the adapted policy
    inner_lr_over_k: bool = False  # use inner_lr / K
    meta_gradient: MetaGradient = "second-order"
    hf_delta: float = HF_DELTA  # finite-difference radius of the Hessian-free estimator
    # ProMP KL penalty: eta fixed, or adapted toward kl_target after each iteration
    eta: float = 5e-4
    adaptive_eta: bool = False
    kl_target: float = 1e-2

    def validate(self, p: str = "") -> None:
        for key in ("learning_rate", "clip", "max_kl", "inner_lr", "hf_delta", "kl_target", "backtrack_ratio"):
            check(getattr(self, key) > 0, p, key, "must be positive")
        check(self.eta >= 0, p, "eta", "must be >= 0")
        check(self.backtrack_ratio < 1, p, "backtrack_ratio", "must be < 1")
        for key in ("num_ppo_steps", "minibatches", "cg_iters", "inner_steps"):
            check(getattr(self, key) >= 1, p, key, "must be >= 1")
        check(self.max_backtracks >= 0, p, "max_backtracks", "must be >= 0")
        check(0 < self.fvp_subsample <= 1, p, "fvp_subsample", "must lie in (0, 1]")
        check(self.fvp_subsample == 1 or self.meta_gradient != "hessian-free", p, "fvp_subsample",
              "must be 1 with meta_gradient hessian-free (its finite-difference radius is set by the whole batch)")

    @property
    def effective_inner_lr(self) -> float:
        return self.inner_lr / self.inner_steps if self.inner_lr_over_k else self.inner_lr


class AgentConfig(Protocol):
    """What an agent reads from its run configuration (``rlbench.settings.RunConfig`` has it)."""

    algo: str
    seed: int
    dtype: str  # "float32" | "float64"
    policy: PolicyConfig
    advantage: AdvantageConfig
    algo_cfg: AlgoConfig
