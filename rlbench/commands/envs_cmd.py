"""``rlbench envs``: list the registered meta-environments."""

from __future__ import annotations

import argparse

import envs


def describe_envs(ids: list[str] | None = None) -> list[dict]:
    """One row per environment: id, family, obs/action sizes, horizon, tasks, split."""
    rows = []
    for env_id in ids or envs.env_ids():
        e = envs.entry(env_id)
        env = envs.make_meta_env(env_id)
        dist = envs.get_task_distribution(env_id)
        rows.append({
            "id": e.env_id,  # the registered id (also for a package.module:EnvId spec)
            "family": e.family,
            "obs": int(env.observation_space.shape[0]),
            "act": int(env.action_space.shape[0]),
            "horizon": int(env.horizon),
            "tasks": dist.describe(),
            "split": dist.split_description(),
        })
        env.close()
    return rows


def _run(args: argparse.Namespace) -> int:
    ids = args.ids or None
    if ids:
        for i in ids:
            envs.entry(i)  # unknown id -> one-line error listing the known ids
    rows = describe_envs(ids)
    cols = ["id", "family", "obs", "act", "horizon", "split", "tasks"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
    print("  ".join(c.ljust(widths[c]) for c in cols[:-1]) + "  tasks")
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols[:-1]) + "  " + r["tasks"])
    return 0


def register(sub) -> None:
    p = sub.add_parser("envs", help="list the registered meta-environments")
    p.add_argument("ids", nargs="*", help="only these environment ids (or package.module:EnvId specs)")
    p.set_defaults(func=_run)
