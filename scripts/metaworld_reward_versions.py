"""What Meta-World's reward version ("v1" / "v2") changes: reward scale, success flag, DRS+PPO's first iterations.

Two measurements, both written to ``--out`` as CSV plus ``run_info.json`` (command, wall
times, machine load):

* ``scripted_classes.csv`` -- for every Meta-World v3 class: one 150-step episode of the
  package's scripted policy (plus noise every third step) on the class's first MT1 goal,
  stepped with the same actions in the package's env under "v1" and "v2". Columns: returns
  and reward ranges per version, the number of steps flagged successful by the package under
  each version and by ``envs.meta_world.success_flag`` (what rlbench reports under "v1"),
  and whether the observations were identical.
* ``train_curve.csv`` -- DRS+PPO on rlbench/ML1-Push-v0 with the protocol's settings
  (rlbench/protocol.py; ``--tasks`` can reduce the tasks per iteration), the same seed under
  both versions: per iteration the mean episode return, reward range, success rate (the same
  "v2" criterion under both), approximate KL and policy std.

    python scripts/metaworld_reward_versions.py --out results/metaworld_reward_versions
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from agents.drs import DRSPPO
from envs.fingerprint import package_versions
from envs.meta_world import BENCHMARK_SEED, benchmark_classes, success_flag
from rlbench import presets
from rlbench.progress import progress
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer

ENV_ID = "rlbench/ML1-Push-v0"
VERSIONS = ("v1", "v2")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _memberships() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for bench in ("ML10", "ML45"):
        train, test = benchmark_classes(bench)
        for c in train:
            out.setdefault(c, []).append(f"{bench}-train")
        for c in test:
            out.setdefault(c, []).append(f"{bench}-test")
    out.setdefault("push-v3", []).insert(0, "ML1-Push")
    out.setdefault("reach-v3", []).insert(0, "ML1-Reach")
    return out


def _policy(env_name: str):
    from metaworld import policies

    name = "Sawyer" + "".join(w.capitalize() for w in env_name[: -len("-v3")].split("-")) + "V3Policy"
    cls = getattr(policies, name, None)
    return cls() if cls is not None else None


def scan_classes(classes: list[str], horizon: int, quiet: bool) -> pd.DataFrame:
    """One scripted episode per class under both reward versions (same actions)."""
    import metaworld
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    member = _memberships()
    rows = []
    bar = progress(total=len(classes), desc="scripted episodes", unit="class", disable=quiet)
    for name in classes:
        task = metaworld.MT1(name, seed=BENCHMARK_SEED).train_tasks[0]
        env = {}
        for v in VERSIONS:
            env[v] = ALL_V3_ENVIRONMENTS[name](reward_function_version=v)
            env[v].set_task(task)
            env[v].max_path_length = horizon
        obs = {v: env[v].reset()[0] for v in VERSIONS}
        policy = _policy(name)
        rng = np.random.default_rng(0)
        rew = {v: [] for v in VERSIONS}
        succ = {v: [] for v in VERSIONS}
        ours_v1 = []
        same_obs = bool(np.array_equal(obs["v1"], obs["v2"]))
        for t in range(horizon):
            if policy is None:
                a = rng.uniform(-1.0, 1.0, 4)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    a = policy.get_action(np.concatenate([obs["v2"][:-3], env["v2"]._target_pos]))
            if t % 3 == 0:
                a = a + rng.normal(0.0, 0.1, 4)
            a = np.clip(a, -1.0, 1.0).astype(np.float32)
            for v in VERSIONS:
                obs[v], r, _, _, info = env[v].step(a)
                rew[v].append(float(r))
                succ[v].append(float(bool(info["success"])))
            ours_v1.append(success_flag(env["v1"], obs["v1"], a))
            same_obs &= bool(np.array_equal(obs["v1"], obs["v2"]))
        row = {"class": name, "benchmarks": " ".join(member.get(name, [])), "scripted_policy": policy is not None}
        for v in VERSIONS:
            r = np.asarray(rew[v])
            row.update({f"return_{v}": r.sum(), f"reward_min_{v}": r.min(), f"reward_max_{v}": r.max()})
        row.update({
            "success_steps_package_v1": int(sum(succ["v1"])), "success_steps_package_v2": int(sum(succ["v2"])),
            "success_steps_rlbench_v1": int(sum(ours_v1)),
            "package_success_differs": succ["v1"] != succ["v2"], "rlbench_v1_equals_package_v2": ours_v1 == succ["v2"],
            "observations_identical": same_obs,
        })
        rows.append(row)
        for v in VERSIONS:
            env[v].close()
        bar.update(1)
    bar.close()
    return pd.DataFrame(rows)


def train_curve(iterations: int, tasks: int | None, workers: int, seed: int, quiet: bool) -> tuple[pd.DataFrame, dict]:
    """DRS+PPO iterations on ML1-Push under each reward version, same seed."""
    rows = []
    shapes = {}
    bar = progress(total=iterations * len(VERSIONS), desc="DRS+PPO iterations", unit="it", disable=quiet)
    for v in VERSIONS:
        over: dict = {"env_kwargs": {"reward_function_version": v}, "sampler": {"n_workers": workers}}
        if tasks:
            over["sampler"]["meta_batch_size"] = tasks
        cfg = presets.run_config(ENV_ID, DRSPPO.algo, seed, budget=10**12, overrides=over)
        shapes[v] = {"meta_batch_size": cfg.sampler.meta_batch_size, "episodes_per_task": cfg.sampler.episodes_per_task,
                     "horizon": cfg.sampler.horizon, "learning_rate": cfg.algo_cfg.learning_rate,
                     "num_ppo_steps": cfg.algo_cfg.num_ppo_steps, "clip": cfg.algo_cfg.clip, "env_kwargs": cfg.env_kwargs}
        torch.set_num_threads(cfg.learner_threads)
        with Sampler(ENV_ID, horizon=cfg.sampler.horizon, n_workers=cfg.sampler.n_workers, backend=cfg.sampler.backend,
                     env_kwargs=cfg.env_kwargs) as sampler:
            trainer = Trainer(cfg, sampler)
            seen = []
            collect = trainer.collect

            def keep(tasks_, params, _collect=collect, _seen=seen):
                b = _collect(tasks_, params)
                _seen.append(b)
                return b

            trainer.collect = keep
            for i in range(iterations):
                t0 = time.perf_counter()
                m = trainer.iterate()
                wall = time.perf_counter() - t0
                b = seen[-1]
                r = b.rewards[b.valid]
                rows.append({
                    "reward_version": v, "iteration": i, "env_steps": trainer.budget.used,
                    "return_mean": m["rollout/return_mean"], "return_std": m["rollout/return_std"],
                    "reward_min": float(r.min()), "reward_max": float(r.max()), "reward_mean": float(r.mean()),
                    "success_rate": m.get("rollout/success_rate", float("nan")),
                    "approx_kl": m["train/approx_kl"], "policy_std": m["train/std"], "iteration_s": wall,
                    "backend": sampler.backend, "workers": sampler.n_workers,
                })
                bar.update(1)
    bar.close()
    return pd.DataFrame(rows), shapes


def main() -> int:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory (must not hold results of a previous run)")
    p.add_argument("--iterations", type=int, default=6, help="DRS+PPO iterations per reward version")
    p.add_argument("--tasks", type=int, default=0, help="tasks per iteration (0 = the protocol's 20)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--classes", nargs="*", help="classes to scan (default: all 50); pass none with --skip-scan")
    p.add_argument("--skip-scan", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    targets = [out / "scripted_classes.csv", out / "train_curve.csv", out / "run_info.json"]
    if any(t.exists() for t in targets):
        print(f"metaworld_reward_versions: error: {out} already holds results; choose a new --out", file=sys.stderr)
        return 2
    unknown = [c for c in (a.classes or []) if c not in ALL_V3_ENVIRONMENTS]
    if unknown:
        print(f"metaworld_reward_versions: error: unknown Meta-World v3 class {unknown[0]!r}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"command": " ".join(["python"] + sys.argv), "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                  "uptime_before": _uptime(), "cpus": os.cpu_count(), "packages": package_versions(),
                  "torch": torch.__version__}
    if not a.skip_scan:
        t0 = time.perf_counter()
        df = scan_classes(a.classes or list(ALL_V3_ENVIRONMENTS), 150, a.quiet)
        info["scan_wall_s"] = round(time.perf_counter() - t0, 1)
        info["uptime_after_scan"] = _uptime()
        df.to_csv(out / "scripted_classes.csv", index=False, float_format="%.6g")
        print(df.to_string(index=False), file=sys.stderr)
    if not a.skip_train:
        t0 = time.perf_counter()
        curve, shapes = train_curve(a.iterations, a.tasks or None, a.workers, a.seed, a.quiet)
        info["train_wall_s"] = round(time.perf_counter() - t0, 1)
        info["train_settings"] = shapes
        info["uptime_after_train"] = _uptime()
        curve.to_csv(out / "train_curve.csv", index=False, float_format="%.6g")
        print(curve.to_string(index=False), file=sys.stderr)
    info["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    (out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
