"""What an experiment will cost, before it starts: steps, evaluation, disk and projected time.

``plan_experiment(exp, rates)`` does the arithmetic from the run configs alone: per run the
budget, the sampling unit, iterations (``budget // cfg.iteration_steps``, the worst-case
iteration cost the budget charges), checkpoints, the meta-test evaluation's steps (an upper
bound: every episode at full horizon) and the disk a run directory takes. Time comes from a
measured rate per (environment, algorithm):

- :func:`calibrate` runs one warm-up and one timed training iteration at the run's real batch
  shape (through the same Trainer and Sampler as ``rlbench train``, writing no files) and
  :func:`calibrated_rates` caches the result on disk, keyed by the machine (CPU model, cores)
  and the package versions, under ``~/.cache/rlbench/calibration`` (``--cache-dir`` or
  ``RLBENCH_CACHE_DIR`` to move it), never in an experiment directory;
- :func:`rates_from_file` reads a measured projection written by
  ``scripts/bench_iterations.py`` (``rows`` with ``env``, ``algo``, ``steps_per_s``,
  ``sampling_steps_per_s``, ``workers``).

A rate is steps per second *per core* (a run measured on W cores: its steps/s / W), so a
run's core-hours are its steps divided by that rate; wall time on N cores is the grid's
core-hours / N, and never less than the longest single run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs import slot_physics
from rlbench import config, presets, store
from rlbench.errors import UsageError
from rlbench.sampler import default_workers
from rlbench.settings import ExperimentConfig, RunConfig

CALIBRATION_VERSION = 1  # bump when what calibrate() measures changes
#: metrics.jsonl bytes per iteration when no calibration measured it (a smoke-preset ProMP
#: row is about 670 bytes; this leaves room for longer numbers and more learner metrics).
METRICS_ROW_BYTES_FALLBACK = 1200
SMALL_FILES_BYTES = 4000  # config.yaml + run.json without its per-checkpoint entries ...
SMALL_FILES_PER_CKPT = 200  # ... which are about this long (checkpoint list, evaluation steps)


@dataclass(frozen=True)
class Rate:
    """Measured throughput of one (environment, algorithm) at some batch shape."""

    steps_per_core_s: float  # training env steps per second per core (sampling + update)
    sampling_steps_per_core_s: float  # sampling only (the bulk of evaluation)
    iteration_s: float  # one iteration's wall time on ``cores`` cores
    steps_per_iteration: float
    cores: int
    source: str  # "calibration (cached ...)" or the projection file
    shape: str  # tasks x episodes x horizon it was measured at
    metrics_row_bytes: int | None = None
    load: float | None = None  # 1-minute load average when measured (a busy machine measures slow)


# -- machine and cache ---------------------------------------------------------------------


#: cores this process may use (the sampler's default worker count; defined there)
available_cores = default_workers


def machine() -> dict[str, Any]:
    return {"cpu": store.cpu_model(), "cores": available_cores(), "host": platform.node()}


#: ``$RLBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/rlbench``, else ``~/.cache/rlbench``
default_cache_dir = slot_physics.cache_dir


def _shape_dict(cfg: RunConfig) -> dict[str, Any]:
    """The parts of a run config that set the cost of one iteration (not seed, budget, eval)."""
    d = config.to_dict(cfg)
    for key in ("seed", "budget", "n_checkpoints", "checkpoint_interval", "eval"):
        d.pop(key, None)
    return d


def calibration_key(cfg: RunConfig) -> dict[str, Any]:
    m = machine()
    return {"version": CALIBRATION_VERSION, "cpu": m["cpu"], "cores": m["cores"], "packages": store.versions(),
            "run": _shape_dict(cfg)}


def _cache_file(cache_dir: Path, cfg: RunConfig) -> Path:
    digest = hashlib.sha256(json.dumps(calibration_key(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache_dir) / "calibration" / f"{cfg.env_id.replace('/', '_')}_{cfg.algo}_{digest}.json"


def shape_text(cfg: RunConfig) -> str:
    s = cfg.sampler
    return f"{s.meta_batch_size}x{s.episodes_per_task}x{s.horizon}"


def sampling_unit(cfg: RunConfig) -> str:
    return getattr(cfg.sampler, "unit", "episodes")


# -- calibration ---------------------------------------------------------------------------


def calibrate(cfg: RunConfig, warmup: int = 1, iterations: int = 1) -> dict[str, Any]:
    """Time ``iterations`` training iterations (after ``warmup``) at ``cfg``'s batch shape.

    Runs the real Trainer and Sampler in this process with an unlimited budget; writes no
    files. Returns the measurement as a plain dict (what the cache stores)."""
    import torch

    from rlbench.sampler import Sampler
    from rlbench.trainer import Trainer

    start = time.perf_counter()
    cfg = config.replace(cfg, budget=10**15)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.learner_threads)
    try:
        with Sampler(cfg.env_id, horizon=cfg.sampler.horizon, n_workers=cfg.sampler.n_workers, backend=cfg.sampler.backend) as sampler:
            trainer = Trainer(cfg, sampler)
            for _ in range(warmup):
                trainer.iterate()
            sample0 = trainer.sample_seconds
            steps0 = trainer.budget.used
            t0 = time.perf_counter()
            row_bytes = 0
            for _ in range(iterations):
                metrics = trainer.iterate()
                row_bytes = len(json.dumps({"iteration": trainer.iteration, "env_steps": trainer.budget.used, **metrics,
                                            "time/iteration_s": 1.2345678901234567, "time/steps_per_s": 12345.678901234567})) + 1
            total = time.perf_counter() - t0
            sample_time = trainer.sample_seconds - sample0
            steps = trainer.budget.used - steps0
            cores = max(1, sampler.n_workers)
            backend = sampler.backend
    finally:
        torch.set_num_threads(threads)
    return {
        "env": cfg.env_id, "algo": cfg.algo, "shape": shape_text(cfg), "unit": sampling_unit(cfg), "backend": backend,
        "cores": cores, "iterations": iterations, "iteration_s": total / iterations, "steps_per_iteration": steps / iterations,
        "steps_per_s": steps / total, "sampling_steps_per_s": steps / sample_time if sample_time > 0 else steps / total,
        "metrics_row_bytes": row_bytes, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "calibration_wall_s": time.perf_counter() - start,  # including environment and worker start-up
    }


def _rate_from_measurement(m: dict[str, Any], source: str, shape: str) -> Rate:
    cores = int(m.get("cores") or m.get("workers") or 1)
    return Rate(
        steps_per_core_s=float(m["steps_per_s"]) / cores,
        sampling_steps_per_core_s=float(m.get("sampling_steps_per_s") or m["steps_per_s"]) / cores,
        iteration_s=float(m.get("iteration_s") or 0.0), steps_per_iteration=float(m.get("steps_per_iteration") or 0.0),
        cores=cores, source=source, shape=shape, metrics_row_bytes=m.get("metrics_row_bytes"), load=m.get("load_avg_1min"),
    )


def calibrated_rates(configs: list[RunConfig], cache_dir: Path | None = None, refresh: bool = False, quiet: bool = False,
                     cached_only: bool = False) -> dict[tuple[str, str], Rate]:
    """A rate per (env, algo) of ``configs``: from the cache, else by :func:`calibrate` (then cached).

    With ``cached_only`` nothing is measured; pairs without a cache entry are left out."""
    import sys

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    rates: dict[tuple[str, str], Rate] = {}
    for cfg in configs:
        key = (cfg.env_id, cfg.algo)
        if key in rates:
            continue
        path = _cache_file(cache_dir, cfg)
        m = None
        if path.exists() and not refresh:
            try:
                m = json.loads(path.read_text())
                source = f"calibration cached {m.get('measured_at', '')}".strip()
            except (OSError, json.JSONDecodeError):
                m = None
        if m is None:
            if cached_only:
                continue
            if not quiet:
                print(f"calibrating {cfg.env_id} {cfg.algo} at {shape_text(cfg)} (one warm-up + one timed iteration; "
                      f"cached in {path.parent})", file=sys.stderr)
            m = calibrate(cfg)
            try:
                store.write_json(path, {**m, "key": calibration_key(cfg)})
            except OSError as e:  # a read-only home on a cluster node: use the measurement anyway
                print(f"rlbench: could not cache the calibration in {path.parent} ({e}); use --cache-dir", file=sys.stderr)
            source = "calibration measured now"
        rates[key] = _rate_from_measurement(m, source, m.get("shape", shape_text(cfg)))
    return rates


def is_default_row(row: dict) -> bool:
    """A ``scripts/bench_iterations.py`` row measured with the defaults a run uses: not the
    ``reference`` implementation and every Fisher-vector product (``fvp_subsample`` 1). Only
    these rows project a run's cost (here, in bench_iterations.project and bench_fvp_bound)."""
    return row.get("impl") != "reference" and row.get("fvp_subsample", 1) == 1


def rates_from_file(path: Path) -> dict[tuple[str, str], Rate]:
    """Rates from a measured projection (``scripts/bench_iterations.py --out``): per (env, algo),
    the first row measured with the defaults (:func:`is_default_row`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"projection file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not a readable JSON projection ({e})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise UsageError(f"{path} has no 'rows' list (expected the output of scripts/bench_iterations.py --out)")
    rates = {}
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not {"env", "algo", "steps_per_s"} <= set(r):
            raise UsageError(f"{path}: row {i} lacks env, algo or steps_per_s")
        if not is_default_row(r) or (r["env"], r["algo"]) in rates:
            continue
        shape = f"{r.get('tasks_per_iteration', '?')} tasks" if "tasks_per_iteration" in r else "?"
        rates[(r["env"], r["algo"])] = _rate_from_measurement(r, str(path), shape)
    if not rates:
        raise UsageError(f"{path} has no row measured with the default settings (impl other than reference, fvp_subsample 1)")
    return rates


# -- disk ----------------------------------------------------------------------------------


def _dims(env_id: str) -> tuple[int, int]:
    import envs

    env = envs.make(env_id)
    try:
        return int(env.observation_space.shape[0]), int(env.action_space.shape[0])
    finally:
        env.close()


def _torch_bytes(obj: Any) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


def eval_csv_row_bytes(cfg: RunConfig) -> int:
    """Bytes of one evaluation.csv row, formatted by pandas as the evaluator writes it."""
    import pandas as pd

    from rlbench.evaluator import COLUMNS

    row = {"env_id": cfg.env_id, "algo": cfg.algo, "seed": cfg.seed, "checkpoint": cfg.n_checkpoints - 1,
           "budget_mark": cfg.budget, "env_steps": cfg.budget, "test_update": cfg.eval.n_updates,
           "task": cfg.eval.n_tasks - 1, "return": -1234.5678901234567, "success": 0.123456789012345,
           "episodes": cfg.eval.episodes_per_task}
    return len(pd.DataFrame([row])[COLUMNS].to_csv(index=False, header=False))


def disk_bytes(cfg: RunConfig, iterations: int, dims: tuple[int, int], metrics_row_bytes: int | None) -> dict[str, int]:
    """Bytes of one run directory: checkpoints and state (torch.save of the real parameter
    shapes), metrics.jsonl, evaluation parts + evaluation.csv, small files."""
    import torch

    from agents.registry import make_agent
    from rlbench.evaluator import COLUMNS

    agent = make_agent(cfg, *dims)
    params = {k: v.detach().clone() for k, v in agent.params.items()}
    opt = getattr(agent, "optimizer", None)
    if isinstance(opt, torch.optim.Optimizer):  # materialise its moments (a zero-gradient step) as after training
        for group in opt.param_groups:
            for q in group["params"]:
                q.grad = torch.zeros_like(q)
        opt.step()
    ckpt = _torch_bytes({"index": 0, "budget_mark": 0, "env_steps": 0, "iteration": 0, "params": params})
    # the runner's checkpoint entries (rlbench/hooks.py save_checkpoint), with a sha256 digest each
    marks = [{"index": i, "budget_mark": m, "env_steps": m, "iteration": 0, "sha256": f"{i:064x}"}
             for i, m in enumerate(cfg.checkpoint_marks)]
    state = _torch_bytes({"agent": agent.state_dict(), "iteration": 0, "env_steps": 0, "checkpoints": marks, "wall_time_s": 0.0})
    header = len(",".join(COLUMNS)) + 1
    eval_rows = cfg.n_checkpoints * cfg.eval.n_tasks * (cfg.eval.n_updates + 1)
    eval_part = eval_rows * eval_csv_row_bytes(cfg) + cfg.n_checkpoints * header
    out = {
        "checkpoints": ckpt * cfg.n_checkpoints,
        "state": state,
        "metrics": iterations * (metrics_row_bytes or METRICS_ROW_BYTES_FALLBACK),
        "evaluation": 2 * eval_part,  # per-checkpoint parts and the concatenated evaluation.csv
        "small_files": SMALL_FILES_BYTES + SMALL_FILES_PER_CKPT * cfg.n_checkpoints,
    }
    out["total"] = sum(out.values())
    return out


# -- the plan ------------------------------------------------------------------------------


def eval_steps_bound(cfg: RunConfig) -> int:
    """Meta-test steps of one run: n_checkpoints x tasks x (updates + 1) rounds x E x horizon.
    Exact for the steps unit (a round costs exactly E x horizon per task), an upper bound for
    the episodes unit (episodes ending early cost less)."""
    e = cfg.eval
    return cfg.n_checkpoints * e.n_tasks * (e.n_updates + 1) * e.episodes_per_task * cfg.sampler.horizon


def run_arithmetic(cfg: RunConfig) -> dict[str, Any]:
    """Steps, iterations and checkpoints of one run, from its config alone."""
    it_steps = cfg.iteration_steps
    iterations = cfg.budget // it_steps
    unit = sampling_unit(cfg)
    return {
        "budget": cfg.budget, "unit": unit, "iteration_steps": it_steps, "iterations": iterations,
        # "steps": every iteration costs exactly iteration_steps. "episodes": episodes ending
        # early make iterations cheaper, so there can be more of them than this.
        "iterations_exact": unit == "steps", "training_steps_max": iterations * it_steps if unit == "steps" else cfg.budget,
        "n_checkpoints": cfg.n_checkpoints, "checkpoint_marks": cfg.checkpoint_marks, "eval_steps_max": eval_steps_bound(cfg),
        "eval_steps_exact": unit == "steps",
    }


def plan_experiment(exp: ExperimentConfig, rates: dict[tuple[str, str], Rate] | None, cores: int | None = None) -> dict[str, Any]:
    """The plan as a JSON-ready dict: one group per (env, algo) (its seeds share a config) and totals.

    ``rates`` may be None or miss pairs: then time fields are None. ``cores`` adds the wall
    time of the grid on that many cores (besides this machine's)."""
    configs = presets.experiment_run_configs(exp)
    here = available_cores()
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    dims: dict[str, tuple[int, int]] = {}
    for cfg in configs:
        key = (cfg.env_id, cfg.algo)
        if key in groups:
            groups[key]["seeds"].append(cfg.seed)
            continue
        if cfg.env_id not in dims:
            dims[cfg.env_id] = _dims(cfg.env_id)
        arith = run_arithmetic(cfg)
        rate = (rates or {}).get(key)
        g: dict[str, Any] = {"env": cfg.env_id, "algo": cfg.algo, "seeds": [cfg.seed], "shape": shape_text(cfg), **arith}
        g["disk_bytes"] = disk_bytes(cfg, arith["iterations"], dims[cfg.env_id], rate.metrics_row_bytes if rate else None)
        cores_per_run = cfg.sampler.n_workers or here
        g["cores_per_run"] = cores_per_run
        if rate:
            train_core_s = arith["training_steps_max"] / rate.steps_per_core_s
            eval_core_s = arith["eval_steps_max"] / rate.sampling_steps_per_core_s
            g["rate"] = {"steps_per_s_per_core": rate.steps_per_core_s, "sampling_steps_per_s_per_core": rate.sampling_steps_per_core_s,
                         "iteration_s": rate.iteration_s, "measured_cores": rate.cores, "measured_shape": rate.shape, "source": rate.source,
                         "load_avg_1min": rate.load}
            g["run_core_h"] = (train_core_s + eval_core_s) / 3600
            g["run_train_core_h"] = train_core_s / 3600
            g["run_eval_core_h_max"] = eval_core_s / 3600
            g["run_wall_h_here"] = g["run_core_h"] / cores_per_run
        else:
            g["rate"] = None
            g["run_core_h"] = g["run_train_core_h"] = g["run_eval_core_h_max"] = g["run_wall_h_here"] = None
        groups[key] = g
    rows = list(groups.values())
    for g in rows:
        g["runs"] = len(g["seeds"])
    timed = all(g["run_core_h"] is not None for g in rows)
    totals: dict[str, Any] = {
        "runs": len(configs),
        "training_steps_max": sum(g["training_steps_max"] * g["runs"] for g in rows),
        "eval_steps_max": sum(g["eval_steps_max"] * g["runs"] for g in rows),
        "disk_bytes": sum(g["disk_bytes"]["total"] * g["runs"] for g in rows),
        "cores_here": here,
    }
    if timed:
        core_h = sum(g["run_core_h"] * g["runs"] for g in rows)
        longest = max(g["run_core_h"] / min(g["cores_per_run"], here) for g in rows)
        totals["core_h"] = core_h
        totals["wall_h_here"] = max(core_h / here, longest)
        if cores:
            longest_n = max(g["run_core_h"] / min(g["cores_per_run"], cores) for g in rows)
            totals["cores"] = cores
            totals["wall_h_on_cores"] = max(core_h / cores, longest_n)
    else:
        totals["core_h"] = totals["wall_h_here"] = None
        totals["missing_rates"] = [f"{g['env']}:{g['algo']}" for g in rows if g["run_core_h"] is None]
    plan = {"experiment": exp.name, "machine": machine(), "groups": rows, "totals": totals}
    plan["summary"] = summary_line(plan)
    return plan


# -- formatting ----------------------------------------------------------------------------


def human_steps(n: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:,.0f}{suffix}"
    return f"{n:,.0f}"


def human_bytes(n: float) -> str:
    for div, suffix in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= div:
            return f"{n / div:.3g} {suffix}"
    return f"{n:.0f} B"


def human_number(x: float | None) -> str:
    """Three significant digits below 1000, thousands separators above."""
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def human_hours(h: float | None) -> str:
    if h is None:
        return "-"
    if h < 1:
        return f"{h * 60:.1f} min" if h * 60 >= 0.1 else f"{h * 3600:.0f} s"
    return f"{h:,.1f} h" if h < 100 else f"{h:,.0f} h"


def summary_line(plan: dict[str, Any]) -> str:
    t = plan["totals"]
    bound = "" if all(g["eval_steps_exact"] for g in plan["groups"]) else "<= "
    head = (f"plan {plan['experiment']}: {t['runs']} runs, {human_steps(t['training_steps_max'])} training + "
            f"{bound}{human_steps(t['eval_steps_max'])} evaluation steps, {human_bytes(t['disk_bytes'])} on disk")
    if t["core_h"] is None:
        return head + f"; time not projected (no rate for {', '.join(t['missing_rates'])})"
    out = head + f", {human_number(t['core_h'])} core-hours = {human_hours(t['wall_h_here'])} here ({t['cores_here']} cores)"
    if "wall_h_on_cores" in t:
        out += f", {human_hours(t['wall_h_on_cores'])} on {t['cores']} cores"
    return out


def _source_lines(groups: list[dict[str, Any]], cores_here: int) -> list[str]:
    """One line per measurement source and shape (cached calibrations grouped by minute)."""
    by: dict[tuple, list[float]] = {}
    for g in groups:
        r = g["rate"]
        if not r:
            continue
        n = r["measured_cores"]
        key = (r["source"].replace("T", " ")[:35] if r["source"].startswith("calibration cached") else r["source"],
               f"at {r['measured_shape']} on {n} core{'s' if n > 1 else ''}")
        by.setdefault(key, [])
        if r.get("load_avg_1min") is not None:
            by[key].append(r["load_avg_1min"])
    out = []
    for (source, where), loads in sorted(by.items()):
        text = f"rates: {source}, {where}"
        if loads:
            text += f", load average {max(loads):.1f}"
            if max(loads) > cores_here:
                text += " (machine busy while measuring: rates are pessimistic; --recalibrate when quieter)"
        out.append(text)
    return out


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a text table (one line per environment x algorithm) plus the summary."""
    head = ["env", "algo", "runs", "unit", "shape", "budget/run", "iter steps", "iterations", "ckpts",
            "eval steps/run", "disk/run", "steps/s/core", "core-h/run", "wall/run here"]
    lines = []
    for g in plan["groups"]:
        r = g["rate"]
        lines.append([
            g["env"].removeprefix("rlbench/"), g["algo"], str(g["runs"]), g["unit"], g["shape"], human_steps(g["budget"]),
            human_steps(g["iteration_steps"]), f"{'' if g['iterations_exact'] else '>='}{g['iterations']:,}",
            str(g["n_checkpoints"]), f"{'' if g['eval_steps_exact'] else '<='}{human_steps(g['eval_steps_max'])}",
            human_bytes(g["disk_bytes"]["total"]),
            f"{r['steps_per_s_per_core']:,.0f}" if r else "-",
            human_number(g["run_core_h"]), human_hours(g["run_wall_h_here"]),
        ])
    widths = [max(len(head[i]), *(len(row[i]) for row in lines)) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(row) for row in lines]
    out.append("")
    m = plan["machine"]
    out.append(f"machine: {m['cpu']}, {m['cores']} cores")
    out.extend(_source_lines(plan["groups"], m["cores"]))
    out.append("iterations = budget // iteration steps; with sampler.unit episodes, episodes ending early make more ('>=')")
    out.append("and evaluation cheaper ('<='); time = steps / measured steps per core-second, with the cores kept busy.")
    out.append(plan["summary"])
    return "\n".join(out)
