"""The per-slot stepper: one meta-environment instance per episode slot, stepped in a loop.

It implements the sampler's ``Stepper`` protocol (rlbench/sampler.py): ``reset`` sets each
slot's task and resets it, ``step`` steps the active slots once, auto-resets the slots whose
episode ended when given reset seeds, and reports unstable steps. The ``"gym"`` backend is this
class; faster per-slot backends subclass it (envs/metaworld_fast.py).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

import envs


class SlotStepper:
    """One MetaEnv per slot, stepped in a Python loop (no gymnasium wrappers: the sampler
    enforces the horizon and counts steps itself). Env instances are pooled by
    ``env.task_group(task)`` and reused across batches. Subclasses choose the environment
    class (:meth:`make_env`) and how an unstable step is recognised (:meth:`unstable`)."""

    def __init__(self, env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None):
        self.env_id = env_id
        self.horizon = horizon
        self.env_kwargs = dict(env_kwargs or {})
        self._probe = envs.make_meta_env(env_id, horizon=horizon, **self.env_kwargs)
        self.obs_dim = int(self._probe.observation_space.shape[0])
        self.act_dim = int(self._probe.action_space.shape[0])
        self._pool: dict[Hashable, list[envs.MetaEnv]] = {}
        self._slots: list[envs.MetaEnv] = []

    def make_env(self) -> envs.MetaEnv:
        """A fresh environment for one slot."""
        return envs.make_meta_env(self.env_id, horizon=self.horizon, **self.env_kwargs)

    def unstable(self, obs: np.ndarray, reward: float, info: dict) -> bool:
        """True when the step left the simulation unusable (non-finite observation or reward)."""
        return not (np.isfinite(obs).all() and np.isfinite(reward))

    def _envs_for(self, tasks: list[Any]) -> list[envs.MetaEnv]:
        groups = [self._probe.task_group(t) for t in tasks]
        taken: dict[Hashable, int] = {}
        out = []
        for g in groups:
            pool = self._pool.setdefault(g, [])
            i = taken.get(g, 0)
            if i == len(pool):
                pool.append(self.make_env())
            out.append(pool[i])
            taken[g] = i + 1
        return out

    def reset(self, tasks: list[Any], seeds: np.ndarray) -> np.ndarray:
        self._slots = self._envs_for(tasks)
        obs = np.empty((len(tasks), self.obs_dim))
        for i, (env, task, seed) in enumerate(zip(self._slots, tasks, seeds)):
            env.set_task(task)
            obs[i], _ = env.reset(seed=int(seed))
        return obs

    def step(self, actions: np.ndarray, active: np.ndarray, reset_seeds: np.ndarray | None = None):
        n = len(self._slots)
        obs = np.zeros((n, self.obs_dim))
        rew = np.zeros(n)
        term = np.zeros(n, dtype=bool)
        succ = np.full(n, np.nan)
        unstable = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(active):
            env = self._slots[i]
            o, r, te, _tr, info = env.step(actions[i])
            obs[i], rew[i], term[i] = o, r, te
            if self.unstable(obs[i], rew[i], info):
                unstable[i] = term[i] = True
            s = info.get("success")
            if s is not None:
                succ[i] = float(s)
            if term[i] and reset_seeds is not None:
                obs[i], _ = env.reset(seed=int(reset_seeds[i]))
        return obs, rew, term, succ, unstable

    def close(self) -> None:
        for pool in self._pool.values():
            for env in pool:
                env.close()
        self._pool.clear()
        self._probe.close()
