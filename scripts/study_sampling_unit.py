"""What the sampling unit changes (docs/protocol.md section 4): DRS+PPO on an environment that
terminates early, the same budget with ``sampler.unit: steps`` (the authors' sampler) and
``sampler.unit: episodes`` (E whole episodes per task).

Trains one run per unit with the protocol's hyperparameters at a reduced batch, then writes
``summary.csv`` (one row per unit and iteration: steps charged, steps used, episodes per task,
return), ``sampling_unit.png`` and ``README.md`` (command, wall time, machine load) to --out.
Each run directory keeps config.yaml, run.json and metrics.jsonl; ``--resume`` continues.

    python scripts/study_sampling_unit.py --out results/sampling_unit
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from agents.drs import DRSPPO  # noqa: E402
from rlbench import presets, runner, store  # noqa: E402

UNITS = ("steps", "episodes")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--env", default="rlbench/HopperRandParams-v0")
    ap.add_argument("--algo", default=DRSPPO.algo)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=10, help="iterations per run (the budget is iterations x one round)")
    ap.add_argument("--meta-batch-size", type=int, default=10, help="tasks per round (paper: 40; 10 = a quarter batch)")
    ap.add_argument("--episodes-per-task", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0, help="sampler workers/threads (0 = cores)")
    ap.add_argument("--resume", action="store_true")
    return ap.parse_args(argv)


def run_config(args: argparse.Namespace, unit: str):
    base = presets.run_config(args.env, args.algo, args.seed)
    budget = args.iterations * base.sampling_rounds * args.meta_batch_size * args.episodes_per_task * base.sampler.horizon
    over = {"n_checkpoints": 1, "sampler": {"meta_batch_size": args.meta_batch_size, "episodes_per_task": args.episodes_per_task,
                                            "unit": unit, "n_workers": args.workers}}
    return presets.run_config(args.env, args.algo, args.seed, budget, over)


def summarise(out: Path) -> pd.DataFrame:
    rows = []
    for unit in UNITS:
        for line in (out / unit / store.METRICS_FILE).read_text().splitlines():
            m = json.loads(line)
            rows.append({"unit": unit, "iteration": m["iteration"], "env_steps": m["env_steps"],
                         "steps_charged": m["sampling/steps_charged"], "steps_used": m["sampling/steps_used"],
                         "episodes_per_task_min": m["sampling/episodes_per_task_min"],
                         "episodes_per_task_mean": m["sampling/episodes_per_task_mean"],
                         "episodes_per_task_max": m["sampling/episodes_per_task_max"],
                         "episode_length": m["rollout/episode_length"], "return_mean": m["rollout/return_mean"],
                         "return_first_mean": m["rollout/return_first_mean"]})
    return pd.DataFrame(rows)


def plot(df: pd.DataFrame, title: str, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for unit, g in df.groupby("unit", sort=False):
        line = axes[0].plot(g["iteration"], g["steps_charged"] / 1e3, marker="o", label=f"{unit}: charged")[0]
        axes[0].plot(g["iteration"], g["steps_used"] / 1e3, ls="--", color=line.get_color(), label=f"{unit}: used")
        axes[1].plot(g["iteration"], g["episodes_per_task_mean"], marker="o", color=line.get_color(), label=unit)
        axes[1].fill_between(g["iteration"], g["episodes_per_task_min"], g["episodes_per_task_max"], color=line.get_color(), alpha=0.2)
        axes[2].plot(g["env_steps"] / 1e3, g["return_first_mean"], marker="o", color=line.get_color(), label=unit)
    axes[0].set(xlabel="iteration", ylabel="env steps per iteration (x1000)", title="steps charged / used for learning")
    axes[1].set(xlabel="iteration", ylabel="episodes per task (min-mean-max)", title="episodes per task per round")
    axes[2].set(xlabel="env steps charged (x1000)", ylabel="return (first episode of each slot)", title="training return over the budget")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    for unit in UNITS:
        cfg = run_config(args, unit)
        print(f"[{unit}] {cfg.env_id} {cfg.algo} seed {cfg.seed}: budget {cfg.budget:,} steps", flush=True)
        runner.train(cfg, args.out / unit, resume=args.resume)
    wall = time.perf_counter() - t0
    df = summarise(args.out)
    df.to_csv(args.out / "summary.csv", index=False)
    cfg = run_config(args, "steps")
    title = (f"{cfg.env_id}, {cfg.algo}, seed {cfg.seed}: {cfg.sampler.meta_batch_size} tasks x "
             f"{cfg.sampler.episodes_per_task} slots x H {cfg.sampler.horizon}, budget {cfg.budget:,} steps per unit")
    plot(df, title, args.out / "sampling_unit.png")
    per_unit = df.groupby("unit", sort=False).agg(
        iterations=("iteration", "max"), steps_charged=("steps_charged", "sum"), steps_used=("steps_used", "sum"),
        episodes_per_task_first=("episodes_per_task_mean", "first"), episodes_per_task_last=("episodes_per_task_mean", "last"),
        return_first=("return_first_mean", "first"), return_last=("return_first_mean", "last"))
    command = "python scripts/study_sampling_unit.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    readme = [
        "# What the sampling unit changes",
        "",
        f"{title}. Both runs use the protocol's hyperparameters for this environment and the same",
        "seed; only `sampler.unit` differs (docs/protocol.md section 4).",
        "",
        f"Command: `{command}`",
        "",
        "Training wall time per run (run.json `wall_time_s`): "
        + ", ".join(f"{u} {store.read_meta(args.out / u)['wall_time_s']:.0f} s" for u in UNITS)
        + f"; this invocation {wall:.0f} s in all; machine: "
        f"{platform.machine()}, {os.cpu_count()} cores; load average before/after: "
        f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}.",
        "",
        per_unit.to_markdown(floatfmt=".1f") if _has_tabulate() else per_unit.to_string(),
        "",
        _reading(df),
        "",
        "`summary.csv` has one row per unit and iteration; `steps/` and `episodes/` hold each run's",
        "config.yaml, run.json and metrics.jsonl (`sampling/*` keys). `sampling_unit.png`: steps",
        "charged and used per iteration, episodes per task per round, return over the budget.",
        "",
    ]
    (args.out / "README.md").write_text("\n".join(readme))
    print(per_unit.to_string())
    print(f"wrote {args.out / 'summary.csv'}, {args.out / 'sampling_unit.png'}, {args.out / 'README.md'}")
    return 0


def _reading(df: pd.DataFrame) -> str:
    """What the table shows, in words, computed from the data."""
    st, ep = (df[df.unit == u] for u in UNITS)
    first_cost = ep["steps_charged"].iloc[0]
    return (
        f"With the steps unit every iteration charges exactly {st['steps_charged'].iloc[0]:,} steps and learns from "
        f"{st['steps_used'].mean():,.0f} of them on average (unfinished tails dropped), with "
        f"{st['episodes_per_task_mean'].iloc[0]:.0f} episodes per task in the first round (episodes of "
        f"{st['episode_length'].iloc[0]:.0f} steps) and {st['episodes_per_task_mean'].iloc[-1]:.0f} in the last. "
        f"With the episodes unit the first iteration costs only {first_cost:,} steps "
        f"({first_cost / st['steps_charged'].iloc[0]:.0%} of a steps-unit round), so the same budget buys "
        f"{len(ep)} updates instead of {len(st)}, each on fewer transitions: the optimisation trade-off the study "
        "measures moves with the unit. Returns are the mean over the first episode of each slot (whole episodes "
        "from a reset, comparable across units); `return_mean` in summary.csv averages every completed episode."
    )


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
