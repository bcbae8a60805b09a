"""The algorithm registry: the only place that names algorithms.

Every other module asks this registry: the harness for the valid ``--algo`` values, the
display names, which algorithms are meta-learners, the sampling rounds of an iteration, the
default DRS:MAML pairs, the test-time adaptation rule and each algorithm's per-environment
hyperparameters (its table ``agents/hyperparams/<key>.yaml``).

Adding an algorithm is one module (its agent class) plus one :func:`register` call with its
:class:`AlgoSpec` and one table, e.g.::

    from agents.registry import AlgoSpec, register, meta_rounds
    register(AlgoSpec(key="my-maml", name="MyMAML", agent=MyMAML, meta_learner=True,
                      rounds=meta_rounds, reads=("learning_rate", "inner_lr", "inner_steps"),
                      partners=("drs-ppo",), gs_test_lr=lambda a: a.inner_lr,
                      table="path/to/my-maml.yaml"))

The built-in algorithms are registered at the bottom of this module. An algorithm in another
package registers itself the same way when its module is imported; to have the command line
import it, advertise the module under the entry-point group ``rlbench.algorithms`` (e.g. in
its pyproject.toml: ``[project.entry-points."rlbench.algorithms"] my-maml = "my_pkg.my_maml"``),
which :func:`load_plugins` imports when this registry is first imported.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents import hyperparams, seeding
from agents.config import AgentConfig, AlgoConfig, ConfigError
from agents.core import DTYPES, Agent, InnerLoss
from agents.drs import DRSPPO, DRSTRPO
from agents.maml import TRPOMAML, ProMP
from agents.policy import GaussianMLPPolicy
from agents.reptile import Reptile

#: Entry-point group of algorithm plugins: each entry names a module that calls register().
ENTRY_POINT_GROUP = "rlbench.algorithms"
log = logging.getLogger(__name__)


def one_round(a: AlgoConfig) -> int:
    """Sampling rounds per iteration of a DRS-style learner: one pooled batch."""
    return 1


def meta_rounds(a: AlgoConfig) -> int:
    """Sampling rounds per iteration of a MAML-style learner: K inner batches + the post-adaptation batch."""
    return a.inner_steps + 1


def inner_step_lr(a: AlgoConfig) -> float:
    """The default test-time step size rule: the effective inner step size (inner_lr, or
    inner_lr / K with ``inner_lr_over_k``); for an algorithm without an inner loop, inner_lr is
    filled from the table of the algorithm it adapts like (:func:`algo_settings`)."""
    return a.effective_inner_lr


@dataclass(frozen=True)
class AlgoSpec:
    """Everything the harness needs to know about one algorithm."""

    key: str  # registry key, used in configs, run directories and on the command line
    name: str  # display name (figures, tables)
    agent: type  # the agent class: agent(cfg, policy, params) -> agents.core.Agent
    meta_learner: bool  # trains through an inner adaptation loop (MAML family)
    reads: tuple[str, ...]  # the AlgoConfig fields the agent reads (its config section)
    rounds: Callable[[AlgoConfig], int] = one_round  # sampling rounds per training iteration
    partners: tuple[str, ...] = ()  # algorithms it is compared with (a DRS method and its MAML partner)
    # Test-time adaptation rule (docs/protocol.md section 6): the inner loss of ``adapt_like``
    # ("" = this algorithm's own, for meta-learners), with step size ``test_lr(algo_cfg)``
    # (an experiment sets both runs of a pair to the MAML partner's, rlbench.presets);
    # ``gs_test_lr``: the step size of GS's released code (the gs_adam_compat mode).
    adapt_like: str = ""
    test_lr: Callable[[AlgoConfig], float] = inner_step_lr
    gs_test_lr: Callable[[AlgoConfig], float] = inner_step_lr
    table: str | Path = ""  # per-environment hyperparameters; "" = agents/hyperparams/<key>.yaml

    @property
    def table_path(self) -> Path:
        return Path(self.table) if self.table else hyperparams.TABLE_DIR / f"{self.key}.yaml"

    @property
    def test_time_key(self) -> str:
        """The algorithm whose inner update adapts this one at meta-test time (recorded in each
        run config as ``paired_inner``)."""
        return self.adapt_like or self.key


_SPECS: dict[str, AlgoSpec] = {}


def register(spec: AlgoSpec, replace: bool = False) -> AlgoSpec:
    """Add an algorithm. Its table is read and checked now; a meta-learner's agent class must
    define ``inner_loss``. ``replace=True`` overwrites an existing key (tests, plugins)."""
    if spec.key in _SPECS and not replace:
        raise ValueError(f"algorithm {spec.key!r} is already registered")
    if spec.meta_learner and getattr(spec.agent, "inner_loss", None) is None:
        raise ValueError(f"{spec.key}: a meta-learner's agent class must define inner_loss")
    if not spec.meta_learner and not spec.adapt_like:
        raise ValueError(f"{spec.key}: an algorithm without an inner loop must name adapt_like "
                         "(the meta-learner whose inner update adapts it at meta-test time)")
    hyperparams.load(spec.table_path)
    _SPECS[spec.key] = spec
    return spec


def unregister(key: str) -> None:
    """Remove an algorithm (tests)."""
    _SPECS.pop(key, None)


def keys() -> tuple[str, ...]:
    """Registered algorithm keys, in registration order."""
    return tuple(_SPECS)


def specs() -> tuple[AlgoSpec, ...]:
    return tuple(_SPECS.values())


def get(key: str) -> AlgoSpec:
    """The entry of ``key``; ConfigError (a one-line usage error) for an unknown key."""
    try:
        return _SPECS[key]
    except KeyError:
        raise ConfigError(f"unknown algorithm {key!r} (known: {', '.join(_SPECS)})") from None


def display_name(key: str) -> str:
    """The display name of a registered algorithm, else the key itself."""
    return _SPECS[key].name if key in _SPECS else key


def default_pairs() -> tuple[tuple[str, str], ...]:
    """Every (non-meta, meta) pair named by some entry's ``partners``, DRS side first, in
    registration order."""
    out: list[tuple[str, str]] = []
    for spec in _SPECS.values():
        for other in spec.partners:
            if other not in _SPECS or _SPECS[other].meta_learner == spec.meta_learner:
                continue
            pair = (spec.key, other) if not spec.meta_learner else (other, spec.key)
            if pair not in out:
                out.append(pair)
    return tuple(out)


def inner_loss(key: str) -> InnerLoss:
    """The inner loss that adapts algorithm ``key`` at meta-test time (its own if it is a
    meta-learner, else that of the algorithm it adapts like)."""
    loss = getattr(get(get(key).test_time_key).agent, "inner_loss", None)
    if loss is None:
        raise ConfigError(f"{key}: {get(key).test_time_key} has no inner loss to adapt with")
    return loss


def algo_settings(key: str, env_id: str, family: str) -> dict[str, Any]:
    """The AlgoConfig values of ``key`` on ``env_id``: its table's entry (or its family's
    default, with a logged notice), plus, for an algorithm that adapts like another and has no
    ``inner_lr`` of its own, that algorithm's ``inner_lr`` on the environment (the test-time
    step size rule)."""
    spec = get(key)
    out = hyperparams.load(spec.table_path).values(env_id, family)
    if spec.test_time_key != key and "inner_lr" not in out:
        out["inner_lr"] = hyperparams.load(get(spec.test_time_key).table_path).values(env_id, family)["inner_lr"]
    return out


class _AgentClasses(Mapping):
    """Read-only view key -> agent class (``AGENTS[key](cfg, policy, params)``)."""

    def __getitem__(self, key: str) -> type:
        return get(key).agent

    def __iter__(self) -> Iterator[str]:
        return iter(_SPECS)

    def __len__(self) -> int:
        return len(_SPECS)


AGENTS: Mapping[str, type] = _AgentClasses()


def make_policy(cfg: AgentConfig, obs_dim: int, act_dim: int) -> GaussianMLPPolicy:
    p = cfg.policy
    return GaussianMLPPolicy(obs_dim, act_dim, tuple(p.hidden_sizes), p.init_std, p.action_scale)


def make_agent(cfg: AgentConfig, obs_dim: int, act_dim: int) -> Agent:
    """The agent for ``cfg.algo`` with initial parameters drawn from (seed, "policy-init").

    Every algorithm of a seed starts from the same initial policy (checkpoint 0 is shared)."""
    policy = make_policy(cfg, obs_dim, act_dim)
    params = policy.init_params(seeding.torch_generator(cfg.seed, "policy-init"), DTYPES[cfg.dtype])
    return get(cfg.algo).agent(cfg, policy, params)


# -- the built-in algorithms (docs/protocol.md section 4) -------------------------------------------

_PPO = ("learning_rate", "clip", "num_ppo_steps", "minibatches")
_TRPO = ("max_kl", "cg_iters", "cg_damping", "backtrack_ratio", "max_backtracks", "fvp_subsample")
_INNER = ("inner_lr", "inner_steps", "inner_lr_over_k", "meta_gradient", "hf_delta")

register(AlgoSpec(
    key=DRSPPO.algo, name="DRS+PPO", agent=DRSPPO, meta_learner=False, reads=_PPO,
    partners=(ProMP.algo,), adapt_like=ProMP.algo,
    gs_test_lr=lambda a: a.learning_rate,  # GS adapts DRS+PPO with its PPO learning rate
))
register(AlgoSpec(
    key=ProMP.algo, name="ProMP", agent=ProMP, meta_learner=True, reads=_PPO[:3] + _INNER + ("eta", "adaptive_eta", "kl_target"),
    rounds=meta_rounds, partners=(DRSPPO.algo,), gs_test_lr=lambda a: a.inner_lr,
))
register(AlgoSpec(
    key=DRSTRPO.algo, name="DRS+TRPO", agent=DRSTRPO, meta_learner=False, reads=_TRPO,
    partners=(TRPOMAML.algo,), adapt_like=TRPOMAML.algo,
    gs_test_lr=lambda a: 0.0,  # GS never adapts DRS+TRPO at meta-test time
))
register(AlgoSpec(
    key=TRPOMAML.algo, name="TRPO-MAML", agent=TRPOMAML, meta_learner=True, reads=_TRPO + _INNER,
    rounds=meta_rounds, partners=(DRSTRPO.algo,), gs_test_lr=lambda a: a.inner_lr,
))
register(AlgoSpec(  # agents/reptile.py; adapted like ProMP at test time, so drs-ppo:reptile shares DRS+PPO's rule
    key=Reptile.algo, name="Reptile", agent=Reptile, meta_learner=True, reads=("learning_rate",) + _INNER[:3],
    rounds=lambda a: a.inner_steps, partners=(DRSPPO.algo,), adapt_like=ProMP.algo, gs_test_lr=lambda a: a.inner_lr,
))


def load_plugins() -> list[str]:
    """Import every module advertised under :data:`ENTRY_POINT_GROUP` (each registers its
    algorithms on import). A plugin that fails to import is skipped with a logged warning,
    so one broken package cannot disable the harness. Returns the modules imported."""
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            importlib.import_module(ep.value.split(":")[0])
        except Exception as e:  # noqa: BLE001 - any error of third-party code
            log.warning("algorithm plugin %s (%s) could not be loaded: %s: %s", ep.name, ep.value, type(e).__name__, e)
            continue
        loaded.append(ep.value)
    return loaded



load_plugins()
