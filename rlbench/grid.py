"""Running an experiment grid: train + evaluate every run, locally or on a Ray cluster, then compare.

A run is one job: ``run_job`` trains (resuming whatever is there) and evaluates; it is
idempotent, so rerunning an experiment skips finished work and resumes interrupted runs.
Locally the jobs go to a process pool (no server needed); with ``ray_address`` they become
Ray tasks (retried on failure) writing to the shared results directory.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import sys
from pathlib import Path
from typing import Any

import yaml

from rlbench import config, locking, presets, store
from rlbench.evaluator import evaluate_run
from rlbench.runner import check_run, train
from rlbench.sampler import default_workers
from rlbench.settings import ExperimentConfig, RunConfig


def run_dir_for(out: Path, cfg: RunConfig) -> Path:
    env_slug = cfg.env_id.replace("/", "_")
    return Path(out) / env_slug / cfg.algo / f"seed_{cfg.seed}"


def is_complete(run_dir: Path) -> bool:
    if not store.is_run_dir(run_dir) or not (run_dir / store.EVAL_FILE).exists():
        return False
    meta = store.read_meta(run_dir)
    return meta.get("status") == "finished" and all(store.eval_part_path(run_dir, c["index"]).exists() for c in meta["checkpoints"])


def run_job(cfg_dict: dict[str, Any], run_dir: str, quiet: bool = True) -> dict[str, Any]:
    """Train (resuming) and evaluate one run. Safe to call again after a crash."""
    cfg = config.from_dict(RunConfig, cfg_dict)
    path = Path(run_dir)
    with locking.claim(path, "run"):  # one lock for training and evaluation
        if not is_complete(path):
            train(cfg, path, resume=True, quiet=quiet)
            evaluate_run(path, quiet=quiet)
        meta = store.read_meta(path)
    return {"run_dir": str(path), "status": meta["status"], "budget_used": meta["budget_used"], "eval_steps": meta.get("eval_steps", 0)}


def write_experiment(exp: ExperimentConfig, out: Path) -> None:
    path = out / store.EXPERIMENT_FILE
    text = yaml.safe_dump(config.to_dict(exp), sort_keys=False)
    if path.exists():
        old = config.load(ExperimentConfig, path)
        diffs = store.diff_dicts(config.to_dict(old), config.to_dict(exp))
        if diffs:
            from rlbench.errors import UsageError

            raise UsageError(f"{out} holds a different experiment (differs in {diffs[0]}); use another --out")
        return
    store.write_text(path, text)


def run_experiment(
    exp: ExperimentConfig,
    out: Path,
    parallel: int = 1,
    ray_address: str | None = None,
    quiet: bool = False,
    compare: bool = True,
    max_retries: int = 2,
    workers_per_run: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate the grid, then write the comparison. Returns a summary dict."""
    out = Path(out)
    configs = check_experiment(exp, out)
    # Also before writing anything: an unusable Ray head is a one-line error within ~30 s.
    ray_started = _ray_connect(ray_address) if ray_address else False
    try:
        with locking.claim(out, "experiment"):
            return _run_experiment(exp, out, configs, parallel, ray_address, ray_started, quiet, compare, max_retries,
                                   workers_per_run)
    except BaseException:
        if ray_started:
            import ray

            ray.shutdown()
        raise


def check_experiment(exp: ExperimentConfig, out: Path) -> list[RunConfig]:
    """Every check of ``run_experiment`` that needs no lock and writes nothing (override keys,
    the destination, every run's config); returns the grid's run configs."""
    out = Path(out)
    presets.check_override_keys(exp)
    configs = presets.experiment_run_configs(exp)
    locking.check_out_path(out)
    if out.is_dir() and not (out / store.EXPERIMENT_FILE).exists() and any(p.name != locking.LOCK_FILE for p in out.iterdir()):
        from rlbench.errors import UsageError

        raise UsageError(f"{out} exists and holds no {store.EXPERIMENT_FILE}; choose an empty or new --out")
    for cfg in configs:  # every run is checked before anything is written
        check_run(cfg, run_dir_for(out, cfg))
    return configs


def _run_experiment(exp: ExperimentConfig, out: Path, configs: list[RunConfig], parallel: int, ray_address: str | None,
                    ray_started: bool, quiet: bool, compare: bool, max_retries: int,
                    workers_per_run: int | None) -> dict[str, Any]:
    write_experiment(exp, out)
    if workers_per_run is None:  # sampler workers of each run
        workers_per_run = 1 if ray_address else (max(1, default_workers() // parallel) if parallel > 1 else 0)
    jobs = []
    for cfg in configs:
        if cfg.sampler.n_workers == 0 and workers_per_run:
            cfg = config.replace(cfg, sampler=config.replace(cfg.sampler, n_workers=workers_per_run))
        jobs.append((config.to_dict(cfg), str(run_dir_for(out, cfg))))
    todo = [j for j in jobs if not is_complete(Path(j[1]))]
    if not quiet:
        print(f"{exp.name}: {len(jobs)} runs, {len(jobs) - len(todo)} already complete, {len(todo)} to do", file=sys.stderr)
    if ray_address:
        results = _run_ray(todo, max_retries, shutdown=ray_started)
    elif parallel > 1:
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=parallel, mp_context=ctx) as pool:
            results = list(pool.map(run_job, *zip(*[(c, d, True) for c, d in todo]))) if todo else []
    else:
        results = [run_job(c, d, quiet) for c, d in todo]
    summary: dict[str, Any] = {"runs": len(jobs), "ran": results, "out": str(out)}
    if compare:
        summary["comparison"] = compare_experiment(exp, out)
    return summary


def compare_experiment(exp: ExperimentConfig, out: Path) -> dict[str, str]:
    from rlbench.analysis import compare

    algos = set(exp.algos)
    pairs = [p for p in exp.pairs if set(p.split(":")) <= algos]
    if not pairs:
        return {}
    return compare(out, pairs, out / store.COMPARISON_DIR)


def _ray_connect(address: str) -> bool:
    from rlbench.ray_cluster import connect

    return connect(address)


def _ray_job(cfg_dict: dict[str, Any], run_dir: str, quiet: bool = True) -> dict[str, Any]:
    """``run_job`` as a Ray task: also reports the attempt (0 = first, more after a retry)."""
    from rlbench.ray_cluster import task_attempt

    return {**run_job(cfg_dict, run_dir, quiet), "attempt": task_attempt()}


def _run_ray(todo: list[tuple[dict, str]], max_retries: int, shutdown: bool) -> list[dict[str, Any]]:
    import ray

    try:
        refs = []
        for cfg_dict, run_dir in todo:
            cpus = max(cfg_dict["sampler"]["n_workers"] or 1, cfg_dict.get("torch_threads", 1))
            task = ray.remote(num_cpus=cpus, max_retries=max_retries, retry_exceptions=True)(_ray_job)
            refs.append(task.remote(cfg_dict, run_dir, True))
        results = ray.get(refs)
    finally:
        if shutdown:
            ray.shutdown()
    retried = [r for r in results if r.get("attempt")]
    if retried:
        print(f"ray: {len(retried)} of {len(results)} runs were retried after a failure "
              f"({', '.join(r['run_dir'] for r in retried)})", file=sys.stderr)
    return results
