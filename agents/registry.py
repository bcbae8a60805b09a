"""Agents by registry key (``drs-ppo``, ``promp``, ``drs-trpo``, ``trpo-maml``)."""

from __future__ import annotations

from agents.core import DTYPES, Agent
from agents.drs import DRSPPO, DRSTRPO
from agents.maml import TRPOMAML, ProMP
from agents.policy import GaussianMLPPolicy
from agents.reptile import Reptile
from rlbench import seeding
from rlbench.settings import RunConfig

AGENTS = {"drs-ppo": DRSPPO, "promp": ProMP, "drs-trpo": DRSTRPO, "trpo-maml": TRPOMAML, "reptile": Reptile}


def make_policy(cfg: RunConfig, obs_dim: int, act_dim: int) -> GaussianMLPPolicy:
    p = cfg.policy
    return GaussianMLPPolicy(obs_dim, act_dim, tuple(p.hidden_sizes), p.init_std, p.action_scale)


def make_agent(cfg: RunConfig, obs_dim: int, act_dim: int) -> Agent:
    """The agent for ``cfg.algo`` with initial parameters drawn from (seed, "policy-init").

    Every algorithm of a seed starts from the same initial policy (checkpoint 0 is shared)."""
    policy = make_policy(cfg, obs_dim, act_dim)
    params = policy.init_params(seeding.torch_generator(cfg.seed, "policy-init"), DTYPES[cfg.dtype])
    return AGENTS[cfg.algo](cfg, policy, params)
