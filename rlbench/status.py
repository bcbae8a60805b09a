"""Where a grid is: the state of every run, read from its files only.

Nothing here writes or locks anything, so it is safe to run against a results directory on a
shared file system while the grid trains (every run file is replaced atomically by the
runner; a line torn by a concurrent append to metrics.jsonl is skipped).

States of a run:

- ``not started``: in the experiment's grid, but no run directory yet;
- ``created``: the directory exists, no iteration finished yet (and written to recently);
- ``running``: training (run.json status "running"), written to within ``stale_after`` s;
- ``trained``: training finished, no checkpoint evaluated yet (``rlbench run`` evaluates right
  after training; a run trained alone waits for ``rlbench evaluate``), never called stale;
- ``evaluating``: training finished, some but not all checkpoints evaluated, written recently;
- ``finished``: training finished and every checkpoint evaluated;
- ``failed``: run.json status "failed", with its one-line ``error``;
- ``stale``: created/running/evaluating but no file written for ``stale_after`` seconds
  (a killed or hung run; ``rlbench run`` again resumes it from its last saved iteration).

The ETA comes from the run's own recent rate: env steps per second of its last
``RATE_WINDOW`` iterations (``time/iteration_s`` and ``env_steps`` of metrics.jsonl) for the
training left, plus the evaluation left at the rate its evaluated checkpoints took (or, before
two are done, its evaluation steps bound at the training rate).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rlbench import config, presets, store
from rlbench.errors import UsageError
from rlbench.settings import ExperimentConfig, RunConfig

RATE_WINDOW = 20  # iterations the recent rate is taken over
TAIL_BYTES = 256 * 1024  # metrics.jsonl is read from its end only (long runs have MBs)
DEFAULT_STALE_AFTER = 1800.0  # seconds without a write before a running run counts as stale
STATES = ("not started", "created", "running", "trained", "evaluating", "finished", "failed", "stale", "unreadable")


def _read_json(path: Path, retries: int = 3) -> dict[str, Any]:
    for attempt in range(retries):
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:  # a non-atomic copy on some shared file systems; try again
            if attempt == retries - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def tail_metrics(path: Path, n: int = RATE_WINDOW) -> list[dict[str, Any]]:
    """The last ``n`` complete rows of a metrics.jsonl (torn or partial lines skipped)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").split("\n")
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first line may be cut by the seek
    rows = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows[-n:]


def recent_rate(rows: list[dict[str, Any]]) -> float | None:
    """Env steps per second over ``rows`` (consecutive metrics rows), or None if unknown."""
    rows = [r for r in rows if isinstance(r.get("env_steps"), (int, float)) and isinstance(r.get("time/iteration_s"), (int, float))]
    if len(rows) < 2:
        if len(rows) == 1 and rows[0].get("time/steps_per_s"):
            return float(rows[0]["time/steps_per_s"])
        return None
    steps = rows[-1]["env_steps"] - rows[0]["env_steps"]  # the first row's own steps are before its start
    secs = sum(r["time/iteration_s"] for r in rows[1:])
    return steps / secs if secs > 0 and steps > 0 else None


def _last_write(run_dir: Path) -> float:
    paths = [run_dir / store.META_FILE, run_dir / store.METRICS_FILE, run_dir / store.STATE_FILE, run_dir / store.EVAL_FILE]
    for sub in (store.CKPT_DIR, store.EVAL_DIR):
        d = run_dir / sub
        if d.is_dir():
            paths.extend(d.iterdir())
    times = []
    for p in paths:
        try:
            times.append(p.stat().st_mtime)
        except FileNotFoundError:
            pass
    return max(times) if times else 0.0


def run_status(run_dir: Path, cfg: RunConfig | None = None, now: float | None = None,
               stale_after: float = DEFAULT_STALE_AFTER) -> dict[str, Any]:
    """The state of one run (``cfg`` is its expected config; read from the directory if None)."""
    run_dir = Path(run_dir)
    now = time.time() if now is None else now
    out: dict[str, Any] = {"run_dir": str(run_dir)}
    if cfg is not None:
        out.update(env=cfg.env_id, algo=cfg.algo, seed=cfg.seed)
    if not store.is_run_dir(run_dir):
        out.update(state="not started", budget_used=0, budget=cfg.budget if cfg else None, checkpoints=0,
                   n_checkpoints=cfg.n_checkpoints if cfg else None, evaluated=0, eta_s=None)
        return out
    if cfg is None:
        cfg = store.read_config(run_dir)
        out.update(env=cfg.env_id, algo=cfg.algo, seed=cfg.seed)
    try:
        meta = _read_json(run_dir / store.META_FILE)
    except (OSError, json.JSONDecodeError) as e:
        out.update(state="unreadable", error=f"{store.META_FILE}: {e}", budget_used=0, budget=cfg.budget, checkpoints=0,
                   n_checkpoints=cfg.n_checkpoints, evaluated=0, eta_s=None)
        return out
    ckpts = meta.get("checkpoints", [])
    evaluated = sum(store.eval_part_path(run_dir, c["index"]).exists() for c in ckpts)
    used, budget = int(meta.get("budget_used", 0)), int(meta.get("budget", cfg.budget))
    last = _last_write(run_dir)
    rows = tail_metrics(run_dir / store.METRICS_FILE)
    rate = recent_rate(rows)
    out.update(budget_used=used, budget=budget, iterations=int(meta.get("iterations", 0)), checkpoints=len(ckpts),
               n_checkpoints=cfg.n_checkpoints, evaluated=evaluated, eval_steps=int(meta.get("eval_steps", 0)),
               wall_time_s=float(meta.get("wall_time_s", 0.0)), steps_per_s=rate, last_write_age_s=max(0.0, now - last))
    status = meta.get("status")
    if status == "failed":
        error = str(meta.get("error") or "no error recorded").strip().splitlines()
        out.update(state="failed", error=error[0] if error else "no error recorded", eta_s=None)
        return out
    complete = status == "finished" and evaluated == len(ckpts) and (run_dir / store.EVAL_FILE).exists()
    if complete:
        out.update(state="finished", eta_s=0.0)
        return out
    state = {"created": "created", "running": "running", "finished": "evaluating" if evaluated else "trained"}.get(
        status, f"unknown ({status})")
    if state != "trained" and now - last > stale_after:
        out.update(state="stale", stale_for_s=now - last, was=state, eta_s=None)
        return out
    out["state"] = state
    out["eta_s"] = _eta(cfg, used, budget, rate, run_dir, ckpts, evaluated)
    return out


def _eta(cfg: RunConfig, used: int, budget: int, rate: float | None, run_dir: Path, ckpts: list[dict], evaluated: int) -> float | None:
    it = cfg.iteration_steps
    left = budget - used
    # Only whole iterations are taken: the run stops when less than one (worst case) is left.
    train_left = max(0, left - left % it) if left >= it else 0
    n_eval_left = cfg.n_checkpoints - evaluated
    per_ckpt_eval_s = None
    parts = sorted(p.stat().st_mtime for c in ckpts if (p := store.eval_part_path(run_dir, c["index"])).exists())
    if len(parts) >= 2:
        per_ckpt_eval_s = (parts[-1] - parts[0]) / (len(parts) - 1)
    elif rate:
        e = cfg.eval
        per_ckpt_eval_s = e.n_tasks * (e.n_updates + 1) * e.episodes_per_task * cfg.sampler.horizon / rate
    if train_left and not rate:
        return None
    train_s = train_left / rate if train_left else 0.0
    return train_s + (n_eval_left * per_ckpt_eval_s if n_eval_left and per_ckpt_eval_s is not None else 0.0)


# -- experiment directories ----------------------------------------------------------------


def is_experiment_dir(path: Path) -> bool:

    return (Path(path) / store.EXPERIMENT_FILE).is_file()


def experiment_status(path: Path, now: float | None = None, stale_after: float = DEFAULT_STALE_AFTER) -> dict[str, Any]:
    """Status of every run of an experiment directory (``rlbench run --out``) or of one run directory."""
    from rlbench.grid import run_dir_for

    path = Path(path)
    now = time.time() if now is None else now
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if is_experiment_dir(path):
        exp = config.load(ExperimentConfig, path / store.EXPERIMENT_FILE)
        runs = [run_status(run_dir_for(path, cfg), cfg, now, stale_after) for cfg in presets.experiment_run_configs(exp)]
        name = exp.name
    elif store.is_run_dir(path):
        runs = [run_status(path, None, now, stale_after)]
        name = str(path)
    else:
        raise UsageError(f"{path} is neither an experiment directory (no {store.EXPERIMENT_FILE}) nor a run directory "
                         f"(no {store.CONFIG_FILE} and {store.META_FILE})")
    seen = [r["state"] for r in runs]
    order = list(STATES) + sorted(set(seen) - set(STATES))
    counts = {s: seen.count(s) for s in order if s in seen}
    budget = sum(r["budget"] or 0 for r in runs)
    etas = [r["eta_s"] for r in runs if r["state"] in ("created", "running", "evaluating", "trained")]
    summary = {
        "experiment": name, "runs": len(runs), "states": counts,
        "budget_used": sum(r["budget_used"] for r in runs), "budget": budget,
        "checkpoints_evaluated": sum(r["evaluated"] for r in runs),
        "checkpoints_total": sum(r["n_checkpoints"] or 0 for r in runs),
        "eta_running_max_s": max((e for e in etas if e is not None), default=None) if etas else None,
        "stale_after_s": stale_after,
    }
    return {"runs": runs, "summary": summary}


# -- formatting ----------------------------------------------------------------------------


def human_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def summary_text(summary: dict[str, Any]) -> str:
    from rlbench.plan import human_steps

    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items())
    pct = 100 * summary["budget_used"] / summary["budget"] if summary["budget"] else 0.0
    text = (f"{summary['experiment']}: {summary['runs']} runs ({states}); training steps {human_steps(summary['budget_used'])} "
            f"/ {human_steps(summary['budget'])} ({pct:.1f}%); checkpoints evaluated {summary['checkpoints_evaluated']}"
            f"/{summary['checkpoints_total']}")
    if summary["eta_running_max_s"] is not None:
        text += f"; running runs done in {human_duration(summary['eta_running_max_s'])} (slowest)"
    return text


def format_status(result: dict[str, Any]) -> str:
    from rlbench.plan import human_steps

    head = ["env", "algo", "seed", "state", "steps used / budget", "ckpts", "evaluated", "steps/s", "last write", "ETA", "note"]
    lines = []
    for r in result["runs"]:
        used = f"{human_steps(r['budget_used'])} / {human_steps(r['budget'])}" if r.get("budget") else "-"
        if r.get("budget"):
            used += f" ({100 * r['budget_used'] / r['budget']:.0f}%)"
        note = r.get("error", "")
        if r["state"] == "stale":
            note = f"{r['was']}, nothing written for {human_duration(r['stale_for_s'])}; rerun to resume"
        lines.append([
            str(r.get("env", "?")).removeprefix("rlbench/"), str(r.get("algo", "?")), str(r.get("seed", "?")), r["state"], used,
            f"{r['checkpoints']}/{r['n_checkpoints']}", f"{r['evaluated']}/{r['n_checkpoints']}",
            f"{r['steps_per_s']:,.0f}" if r.get("steps_per_s") else "-",
            f"{human_duration(r['last_write_age_s'])} ago" if "last_write_age_s" in r else "-",
            human_duration(r["eta_s"]) if r["state"] != "finished" else "done", note,
        ])
    widths = [max(len(head[i]), *(len(row[i]) for row in lines)) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(row) for row in lines] + ["", summary_text(result["summary"])])
