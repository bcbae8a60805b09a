"""Meta-test trained runs again under new evaluation settings, without retraining.

Evaluation settings (``eval.*``: the number of meta-test tasks, their design, episodes per
task, test updates) do not touch training, so a finished run's checkpoints can be evaluated
again under settings an experiment changed after it was trained. This script prepares that:
for every run of ``--env`` in the experiment, it takes the config the experiment now gives
the run, checks that it differs from the trained run's config in ``eval.*`` keys only, and
writes a new run directory under DEST holding that config, the run's checkpoints, training
state and metrics, and its run.json without the old evaluation records (the pairing record
is recomputed from checkpoint 0 and the new meta-test tasks). The source is only read.

Then ``rlbench run EXPERIMENT --out DEST`` finds the training finished and evaluates:

    python scripts/reevaluate.py repro-small runs/repro-small5 runs/repro-small6 \
        --env rlbench/HalfCheetahRandVel-v0
    rlbench run repro-small --out runs/repro-small6 --yes --parallel 2

Bad input (an unfinished or missing run, a change outside ``eval.*``, an existing
destination run) is a one-line error with exit status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from rlbench import config, pairing, presets, store
from rlbench.errors import USER_ERRORS, UsageError
from rlbench.grid import check_experiment, run_dir_for, write_experiment
from rlbench.runner import SPEED_ONLY, check_run, comparability

#: run.json keys of the old evaluation, dropped from the copy (recomputed by ``rlbench evaluate``).
EVAL_KEYS = ("eval_steps_by_ckpt", "eval_sha256", pairing.KEY)
#: What a re-evaluated run copies from the trained one (``checkpoints/`` is copied as a folder).
TRAINING_FILES = (store.STATE_FILE, store.METRICS_FILE)


def plan(experiment: str, src: Path, dest: Path, env_ids: list[str]) -> list[tuple]:
    """The experiment and (config, source run, destination run) per run of ``env_ids``, all
    checked; writes nothing."""
    exp = presets.load_experiment(experiment)
    unknown = [e for e in env_ids if e not in exp.envs]
    if unknown:
        raise UsageError(f"--env {unknown[0]} is not an environment of {exp.name} ({', '.join(exp.envs)})")
    jobs = []
    for cfg in check_experiment(exp, dest):  # DEST: new, empty, or holding this experiment
        if cfg.env_id not in env_ids:
            continue
        a, b = run_dir_for(src, cfg), run_dir_for(dest, cfg)
        if not store.is_run_dir(a):
            raise UsageError(f"{a} is not an rlbench run directory: nothing to re-evaluate")
        meta = store.read_meta(a)
        if meta.get("status") != "finished":
            raise UsageError(f"{a} has not finished training (status {meta.get('status')!r}); finish it first")
        diffs = store.diff_dicts(config.to_dict(store.read_config(a)), config.to_dict(cfg))
        outside = [d for d in diffs if not d.startswith("eval.") and d not in SPEED_ONLY]
        if outside:
            raise UsageError(f"{a}: the experiment now changes {outside[0]}, a training setting; only eval.* can "
                             "change without retraining")
        if b.exists():
            raise UsageError(f"{b} exists; re-evaluation writes new run directories only")
        check_run(cfg, b)
        jobs.append((cfg, a, b))
    if not jobs:
        raise UsageError(f"{exp.name} has no run of {', '.join(env_ids)}")
    return exp, jobs


def copy_run(cfg, src: Path, dest: Path) -> None:
    meta = {k: v for k, v in store.read_meta(src).items() if k not in EVAL_KEYS}
    meta.update(eval_steps=0, comparability=comparability(cfg),
                reevaluated_from={"run_dir": str(src), "eval": config.to_dict(store.read_config(src).eval)})
    dest.mkdir(parents=True)
    shutil.copytree(src / store.CKPT_DIR, dest / store.CKPT_DIR)
    for f in TRAINING_FILES:
        if (src / f).exists():
            shutil.copyfile(src / f, dest / f)
    store.write_text(dest / store.CONFIG_FILE, store.config_text(cfg))
    store.write_json(dest / store.META_FILE, meta)
    pairing.ensure(dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", help="preset name or experiment YAML (its current settings)")
    ap.add_argument("src", type=Path, help="the experiment's output directory with the trained runs (read only)")
    ap.add_argument("dest", type=Path, help="output directory for the re-evaluated runs")
    ap.add_argument("--env", action="append", required=True, help="environment whose runs to copy (repeatable)")
    args = ap.parse_args(argv)
    try:
        exp, jobs = plan(args.experiment, args.src, args.dest, args.env)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.dest.mkdir(parents=True, exist_ok=True)
    write_experiment(exp, args.dest)
    for cfg, a, b in jobs:
        copy_run(cfg, a, b)
    print(f"prepared {len(jobs)} runs in {args.dest} for re-evaluation; now run: rlbench run {args.experiment} "
          f"--out {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
