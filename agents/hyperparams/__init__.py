"""Per-environment hyperparameters: one YAML table per algorithm (in the spirit of RL Zoo's
``hyperparams/<algo>.yml``), read by :mod:`agents.registry`.

A table ``<algo>.yaml`` has two sections::

    family_defaults:            # family -> reference environment whose values an unlisted
      locomotion: rlbench/...   # environment of that family gets (with a logged notice)
    envs:
      rlbench/SomeEnv-v0:
        learning_rate: 1.0e-3   # fields of agents.config.AlgoConfig, typed as declared there
        source:                 # field -> where the value comes from (the authors' code)
          learning_rate: experiments/benchmark/run.py ppo_lrs[...]

Every value is checked against the field's declared type when the table is read (write floats
with a dot, ``1.0e-3``: PyYAML reads ``1e-3`` as a string, and the table refuses it).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.config import AlgoConfig, ConfigError

TABLE_DIR = Path(__file__).resolve().parent
log = logging.getLogger(__name__)
_noticed: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class HyperTable:
    """One algorithm's per-environment values and their sources."""

    path: Path
    family_defaults: dict[str, str]
    envs: dict[str, dict[str, Any]]
    sources: dict[str, dict[str, str]]

    def values(self, env_id: str, family: str) -> dict[str, Any]:
        """The AlgoConfig values for ``env_id``: its own entry, else the family default (the
        reference environment's entry) with a one-time logged notice naming env and family."""
        if env_id in self.envs:
            return dict(self.envs[env_id])
        ref = self.family_defaults.get(family)
        if ref is None:
            known = ", ".join(sorted(self.family_defaults)) or "none"
            raise ConfigError(f"{env_id}: no entry in {self.path.name} and no default for its family {family!r} "
                              f"(families with defaults: {known}); add an entry to {self.path}")
        if (str(self.path), env_id) not in _noticed:
            _noticed.add((str(self.path), env_id))
            log.warning("notice: %s has no entry for %s; using the %s family defaults (the values of %s)",
                        self.path.name, env_id, family, ref)
        return dict(self.envs[ref])


def _check_value(value: Any, tp: Any, where: str) -> Any:
    ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    check = ok.get(tp)
    if check is None:  # Literal and other types: let the run config's strict loader check them
        return value
    if not check(value):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r} (write floats with a dot, e.g. 1.0e-3)")
    return float(value) if tp is float else value


@functools.cache
def load(path: str | Path) -> HyperTable:
    """Read and check one table (cached per path)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read hyperparameter table {path}: {e}") from None
    if not isinstance(data, dict) or set(data) - {"family_defaults", "envs"} or "envs" not in data:
        raise ConfigError(f"{path}: expected the sections 'envs' and optionally 'family_defaults'")
    types = typing.get_type_hints(AlgoConfig)
    fields = {f.name for f in dataclasses.fields(AlgoConfig)}
    envs: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}
    for env_id, entry in (data["envs"] or {}).items():
        entry = dict(entry or {})
        sources[env_id] = dict(entry.pop("source", None) or {})
        for key, value in entry.items():
            if key not in fields:
                raise ConfigError(f"{path.name}: envs.{env_id}.{key} is not an AlgoConfig field")
            entry[key] = _check_value(value, types[key], f"{path.name}: envs.{env_id}.{key}")
        envs[env_id] = entry
    family_defaults = dict(data.get("family_defaults") or {})
    for family, ref in family_defaults.items():
        if ref not in envs:
            raise ConfigError(f"{path.name}: family_defaults.{family} names {ref!r}, which has no entry")
    return HyperTable(path, family_defaults, envs, sources)
