"""The reduced-scale reproduction (REPRODUCTION.md): collect a finished `rlbench run` into results/,
and derive the claims table and the noise table from the committed tables alone.

    rlbench run repro-small --out runs/repro-small
    python scripts/reproduction_report.py collect runs/repro-small results/repro-small
    python scripts/reproduction_report.py report results/repro-small --update REPRODUCTION.md
    python scripts/reproduction_report.py restore results/repro-small runs/repro-small --env ENV_ID

``collect`` copies, per run, the raw tables needed to recompute every statistic without
training again (config.yaml, run.json, metrics.jsonl, evaluation.csv; not checkpoints) under
DEST/runs/, plus the experiment file and the comparison outputs under DEST/comparison/.
``report`` recomputes the per-cell paired analysis from DEST/runs/*/evaluation.csv (the same
library calls as `rlbench compare`), checks it against the committed DEST/comparison reports,
and writes DEST/claims.csv, DEST/noise.csv and the markdown tables. With ``--update FILE`` it
replaces the text between the ``<!-- reproduction:begin -->`` / ``<!-- reproduction:end -->``
markers of FILE with those tables, so REPRODUCTION.md holds no hand-typed number. The verdict of
each claim follows fixed rules, written in :data:`RULES`.

``restore`` is ``collect`` backwards, for rerunning part of a committed grid: it copies the
committed runs of the named environments into an output directory and rebuilds each run's
per-checkpoint evaluation parts from its evaluation.csv, accepting a part only if its sha256
equals the one run.json recorded when the run wrote it. `rlbench run` then counts those runs
as complete and trains only the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from rlbench import config, stats, store
from rlbench.evaluator import draw_test_tasks
from rlbench.plots import algo_label, env_label
from rlbench.settings import ExperimentConfig
from rlbench.store import COMPARISON_DIR, EXPERIMENT_FILE

RUNS_DIR = "runs"
RAW_FILES = (store.CONFIG_FILE, store.META_FILE, store.METRICS_FILE, store.EVAL_FILE)
BEGIN, END = "<!-- reproduction:begin -->", "<!-- reproduction:end -->"
Q = stats.Q_LEVEL
#: The protocol's budget per locomotion run (docs/protocol.md section 5), for the scale statement.
PAPER_LOCOMOTION_BUDGET = 320_000_000

RULES = f"""Verdict rules (fixed before looking at the results; `scripts/reproduction_report.py`):
a cell is *significant* when its paired one-sided test has Benjamini-Hochberg q < {Q:g}
(over the cells of its environment and pair), in the direction of the mean difference.
* C1 (small budgets): at the first checkpoint after 0 and test updates 1..5: *inconsistent* if MAML
  is significantly ahead in any cell; *consistent* if DRS is significantly ahead in a majority of
  them; otherwise *cannot tell* (no difference shown: with few seeds the test cannot prove equality).
* C2 (MAML needs larger budgets): *consistent* if MAML is significantly ahead in some cell
  at the last checkpoint; otherwise *cannot tell at this scale* (our largest budget is a small
  fraction of the paper's), with the trend of the difference over checkpoints reported.
* C3 (more test updates favour MAML): the per-seed change of the DRS - MAML difference from 1 to
  the last test update at the last checkpoint, a t interval over seeds: *consistent* if the
  interval lies below 0, *inconsistent* if above 0, *cannot tell* otherwise.
* C4 (the answer depends on the environment): *consistent* if, for some pair, the significant
  verdicts at the last checkpoint after 1 test update differ between the environments;
  otherwise *cannot tell at this scale*."""


# ----------------------------------------------------------------------------- collect


def collect(run_out: Path, dest: Path, replace: bool) -> int:
    runs = sorted(p.parent for p in run_out.rglob(store.META_FILE) if store.CKPT_DIR not in p.parts)
    cmp_dir = run_out / COMPARISON_DIR
    if not runs or not cmp_dir.is_dir() or not (run_out / EXPERIMENT_FILE).exists():
        print(f"error: {run_out} holds no finished experiment (runs, {EXPERIMENT_FILE} and {COMPARISON_DIR}/)",
              file=sys.stderr)
        return 2
    missing = [r / f for r in runs for f in RAW_FILES if not (r / f).exists()]
    if missing:
        print(f"error: run not finished or not evaluated: {missing[0]} is missing", file=sys.stderr)
        return 2
    if dest.exists() and any(dest.iterdir()) and not replace:
        print(f"error: {dest} is not empty; pass --replace to replace its files", file=sys.stderr)
        return 2
    for r in runs:
        target = dest / RUNS_DIR / r.relative_to(run_out)
        target.mkdir(parents=True, exist_ok=True)
        for f in RAW_FILES:
            shutil.copyfile(r / f, target / f)
    shutil.copyfile(run_out / EXPERIMENT_FILE, dest / EXPERIMENT_FILE)
    shutil.copytree(cmp_dir, dest / COMPARISON_DIR, dirs_exist_ok=True)
    print(f"collected {len(runs)} runs ({', '.join(RAW_FILES)}) and {COMPARISON_DIR}/ into {dest}")
    return 0


def restore(dest: Path, run_out: Path, env_ids: list[str]) -> int:
    slugs = {e.replace("/", "_") for e in env_ids}
    runs = sorted(p.parent for p in (dest / RUNS_DIR).rglob(store.META_FILE)
                  if p.parent.relative_to(dest / RUNS_DIR).parts[0] in slugs)
    if not runs:
        print(f"error: {dest / RUNS_DIR} holds no run of {', '.join(env_ids)}", file=sys.stderr)
        return 2
    plans = []
    for r in runs:
        meta = store.read_meta(r)
        lines = (r / store.EVAL_FILE).read_text().splitlines(keepends=True)
        col = lines[0].rstrip("\n").split(",").index("checkpoint")
        parts = {}
        for c in meta["checkpoints"]:
            text = lines[0] + "".join(ln for ln in lines[1:] if ln.split(",")[col] == str(c["index"]))
            if store.sha256_bytes(text.encode()) != meta.get("eval_sha256", {}).get(str(c["index"])):
                print(f"error: {r}: checkpoint {c['index']}'s rows do not reproduce the evaluation part run.json "
                      "recorded (sha256 differs); this run cannot be restored", file=sys.stderr)
                return 2
            parts[c["index"]] = text
        target = run_out / r.relative_to(dest / RUNS_DIR)
        if target.exists():
            print(f"error: {target} exists; restore writes into new run directories only", file=sys.stderr)
            return 2
        plans.append((r, target, parts))
    for r, target, parts in plans:
        target.mkdir(parents=True)
        for f in RAW_FILES:
            shutil.copyfile(r / f, target / f)
        for index, text in parts.items():
            store.write_text(store.eval_part_path(target, index), text)
    print(f"restored {len(plans)} runs of {', '.join(env_ids)} into {run_out} (evaluation parts checked by sha256)")
    return 0


# ----------------------------------------------------------------------------- recompute


def load_evaluations(dest: Path) -> pd.DataFrame:
    files = sorted((dest / RUNS_DIR).rglob(store.EVAL_FILE))
    if not files:
        raise FileNotFoundError(f"no {store.EVAL_FILE} under {dest / RUNS_DIR}")
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def pairs_of(dest: Path) -> list[tuple[str, str]]:
    exp = config.load(ExperimentConfig, dest / EXPERIMENT_FILE)
    return [tuple(p.split(":")) for p in exp.pairs if set(p.split(":")) <= set(exp.algos)]


def recompute_report(df: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """The per-cell report of pair (a, b), recomputed from the evaluation rows (the runs'
    pairing was proven when the experiment ran; the committed reports carry no unpaired flag)."""
    return stats.compare_cells(stats.seed_scores(df, "return"), a, b, "return")


def per_seed_differences(df: pd.DataFrame, a: str, b: str, designs: dict[str, str] | None = None) -> pd.DataFrame:
    """Per (env, seed, mark, update): the seed's DRS - MAML difference d_s (mean over tasks)
    and its within-seed standard error over the seed's per-task differences (every algorithm
    of a seed meets the same tasks), for the environment's meta-test task design
    (``designs[env_id]``, default random; :func:`rlbench.stats.within_seed_se`)."""
    keys = ["env_id", "seed", "budget_mark", "test_update", "task"]
    wa = df[df["algo"] == a].set_index(keys)["return"]
    wb = df[df["algo"] == b].set_index(keys)["return"]
    d = (wa - wb).dropna().rename("d").reset_index().sort_values(keys)
    return per_seed_means(d, ["env_id", "seed", "budget_mark", "test_update"], "d", designs)


def per_seed_means(df: pd.DataFrame, keys: list[str], value: str, designs: dict[str, str] | None) -> pd.DataFrame:
    """Per ``keys`` group (tasks in task order): the mean of ``value``, its within-seed SE for
    the environment's task design, and the number of tasks."""
    rows = []
    for key, g in df.sort_values([*keys, "task"]).groupby(keys, sort=True):
        design = (designs or {}).get(g["env_id"].iloc[0], "random")
        y = g[value].to_numpy(float)
        rows.append({**dict(zip(keys, key)), value: y.mean(), "se": stats.within_seed_se(y, design), "n_tasks": y.size})
    return pd.DataFrame(rows)


def task_designs(dest: Path) -> dict[str, str]:
    """Each environment's ``eval.task_design``, from its runs' configs (one per environment:
    ``rlbench compare`` refuses runs that differ in it)."""
    out = {}
    for path in sorted((dest / RUNS_DIR).rglob(store.CONFIG_FILE)):
        cfg = config.load_yaml(path)
        out[cfg["env_id"]] = cfg.get("eval", {}).get("task_design", "random")
    return out


def _t_interval(x: np.ndarray) -> tuple[float, float, float]:
    x = np.asarray(x, float)
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    h = float(sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - h, m + h


def _sig(row: pd.Series) -> int:
    """+1 DRS significantly ahead, -1 MAML significantly ahead, 0 neither (or flagged)."""
    if row["paired_flags"] or not row["paired_q"] < Q:
        return 0
    return 1 if row["paired_diff"] > 0 else -1


def _cell(row: pd.Series) -> str:
    return (f"{row['paired_diff']:+.3g} [{row['paired_ci_low']:.3g}, {row['paired_ci_high']:.3g}], "
            f"q={row['paired_q']:.2g}")


@dataclass
class Claim:
    key: str
    text: str
    where: str


CLAIMS = (
    Claim("C1", "DRS is as good as or better than MAML at small meta-training budgets.",
          "Sec. 5, Figs. 1-2 (left part of each panel: small budgets)"),
    Claim("C2", "Where MAML is ahead, its advantage appears only with larger meta-training budgets, "
          "and only on some environments.", "Sec. 5, Figs. 1-2 (right part of the panels)"),
    Claim("C3", "More test-time updates favour MAML (it is trained for post-adaptation return).",
          "Sec. 3 (the trade-off) and the y axis of Figs. 1-2"),
    Claim("C4", "Which method is better depends on the environment.", "Sec. 5, Figs. 1-2 (panels differ)"),
)


def evaluate_claims(reports: dict, diffs: dict) -> pd.DataFrame:
    rows = []
    for (env_id, a, b), rep in sorted(reports.items()):
        marks = sorted(rep["budget_mark"].unique())
        ups = sorted(u for u in rep["test_update"].unique() if u >= 1)
        first, last, t_last = marks[1], marks[-1], ups[-1]
        label = f"{env_label(env_id)}, {algo_label(a)} vs {algo_label(b)}"
        cell = rep.set_index(["budget_mark", "test_update"])
        # C1
        sig1 = [_sig(cell.loc[(first, u)]) for u in ups]
        v1 = "inconsistent" if -1 in sig1 else "consistent" if sig1.count(1) * 2 > len(sig1) else "cannot tell"
        rows.append({"claim": "C1", "where": label, "verdict": v1,
                     "evidence": (f"at {first:,} steps, DRS - MAML after 1 / {t_last} updates: "
                                  f"{_cell(cell.loc[(first, 1)])} / {_cell(cell.loc[(first, t_last)])}; "
                                  f"DRS ahead in {sig1.count(1)}, MAML in {sig1.count(-1)} of {len(sig1)} cells")})
        # C2
        sig2 = [_sig(cell.loc[(last, u)]) for u in ups]
        d = diffs[(a, b)]
        d = d[(d["env_id"] == env_id) & (d["test_update"] == 1) & (d["budget_mark"] > 0)]
        slopes = [np.polyfit(g["budget_mark"] / 1e6, g["d"], 1)[0] for _, g in d.groupby("seed")]
        s, slo, shi = _t_interval(np.array(slopes))
        v2 = "consistent" if -1 in sig2 else "cannot tell at this scale"
        rows.append({"claim": "C2", "where": label, "verdict": v2,
                     "evidence": (f"at {last:,} steps after 1 update: {_cell(cell.loc[(last, 1)])}; MAML ahead in "
                                  f"{sig2.count(-1)} of {len(sig2)} cells there; trend of DRS - MAML per million "
                                  f"steps {s:+.3g} [{slo:.3g}, {shi:.3g}] over seeds")})
        # C3
        dd = diffs[(a, b)]
        dd = dd[(dd["env_id"] == env_id) & (dd["budget_mark"] == last)].pivot(index="seed", columns="test_update", values="d")
        m, lo, hi = _t_interval((dd[t_last] - dd[1]).to_numpy())
        v3 = "consistent" if hi < 0 else "inconsistent" if lo > 0 else "cannot tell"
        rows.append({"claim": "C3", "where": label, "verdict": v3,
                     "evidence": (f"at {last:,} steps, change of DRS - MAML from 1 to {t_last} updates: "
                                  f"{m:+.3g} [{lo:.3g}, {hi:.3g}] (t interval over {len(dd)} seeds)")})
    # C4: per pair, across environments
    by_pair: dict[tuple[str, str], dict[str, int]] = {}
    for (env_id, a, b), rep in reports.items():
        last = rep["budget_mark"].max()
        by_pair.setdefault((a, b), {})[env_id] = _sig(rep.set_index(["budget_mark", "test_update"]).loc[(last, 1)])
    word = {1: "DRS ahead", -1: "MAML ahead", 0: "no difference shown"}
    for (a, b), verdicts in sorted(by_pair.items()):
        v4 = "consistent" if len(set(verdicts.values())) > 1 else "cannot tell at this scale"
        rows.append({"claim": "C4", "where": f"{algo_label(a)} vs {algo_label(b)}", "verdict": v4,
                     "evidence": "at the last checkpoint after 1 update: " + "; ".join(
                         f"{env_label(e)} {word[v]}" for e, v in sorted(verdicts.items()))})
    return pd.DataFrame(rows)


def counts_table(reports: dict) -> pd.DataFrame:
    """Per environment and pair, over the cells after checkpoint 0 (checkpoint x test update):
    how many favour DRS in the mean, and how many are significant either way."""
    rows = []
    for (env_id, a, b), rep in sorted(reports.items()):
        later = rep[rep["budget_mark"] > 0]
        sig = later.apply(_sig, axis=1)
        rows.append({"env_id": env_id, "pair": f"{a}:{b}", "cells": len(later),
                     "drs_mean_ahead": int((later["paired_diff"] > 0).sum()),
                     "drs_significant": int((sig == 1).sum()), "maml_significant": int((sig == -1).sum())})
    return pd.DataFrame(rows)


def task_covariate(env_id: str, seed: int, n_tasks: int, design: str = "random") -> np.ndarray | None:
    """The meta-test tasks' one scalar parameter (e.g. the goal velocity), recomputed from the
    seed as the evaluator draws them; None when a task has more or fewer than one float field."""
    tasks = draw_test_tasks(env_id, n_tasks, seed, design)
    fields = [f.name for f in dataclasses.fields(tasks[0])] if dataclasses.is_dataclass(tasks[0]) else []
    if len(fields) != 1 or not isinstance(getattr(tasks[0], fields[0]), float):
        return None
    return np.array([getattr(t, fields[0]) for t in tasks])


def _covariate_r2(df: pd.DataFrame, env_id: str, a: str, b: str, mark: int, design: str) -> float:
    """Median over seeds of the share of the per-task DRS - MAML differences' variance (after 1
    test update) that a straight line in the task's scalar parameter explains; NaN without one."""
    keys = ["seed", "task"]
    sel = df[(df["env_id"] == env_id) & (df["budget_mark"] == mark) & (df["test_update"] == 1)]
    d = (sel[sel["algo"] == a].set_index(keys)["return"] - sel[sel["algo"] == b].set_index(keys)["return"]).dropna()
    r2 = []
    for seed, ds in d.groupby(level="seed"):
        ds = ds.droplevel("seed").sort_index()
        x = task_covariate(env_id, int(seed), int(ds.index.max()) + 1, design)
        if x is None:
            return float("nan")
        r2.append(sps.pearsonr(x[ds.index.to_numpy()], ds.to_numpy()).statistic ** 2)
    return float(np.median(r2))


def noise_table(reports: dict, diffs: dict, df: pd.DataFrame, designs: dict[str, str] | None = None) -> pd.DataFrame:
    """Within-seed standard error against seed-to-seed spread, after 1 test update, per checkpoint.

    The observed variance across seeds of a seed's difference d_s is the variance of the seeds'
    true differences plus the mean within-seed variance SE_s^2 (each seed draws its own meta-test
    tasks), so ``eval_share`` = mean(SE^2) / var(d_s) is the share of the observed spread that
    the task sample alone accounts for, and ``seed_sd_beyond_eval`` = sqrt(max(0, var(d_s) -
    mean(SE^2))) the moment estimate of the spread between seeds' true differences. Every SE
    is the one of the environment's task design (``task_design``; stratified designs remove
    the task parameter's share of the task-to-task spread from it)."""
    designs = designs or {}
    first = df[df["test_update"] == 1]
    scores = per_seed_means(first, ["env_id", "algo", "seed", "budget_mark"], "return", designs)
    rows = []
    for (env_id, a, b), rep in sorted(reports.items()):
        d = diffs[(a, b)]
        for mark in sorted(m for m in rep["budget_mark"].unique() if m > 0):
            c = d[(d["env_id"] == env_id) & (d["budget_mark"] == mark) & (d["test_update"] == 1)]
            sc = scores[(scores["env_id"] == env_id) & (scores["budget_mark"] == mark)]
            var_d, mean_se2 = float(c["d"].var(ddof=1)), float((c["se"] ** 2).mean())
            rows.append({
                "env_id": env_id, "pair": f"{a}:{b}", "budget_mark": int(mark),
                "n_tasks": int(c["n_tasks"].min()), "task_design": designs.get(env_id, "random"),
                "n_seeds": int(c["seed"].nunique()),
                "diff_within_se_median": float(c["se"].median()),
                "diff_between_seed_sd": float(np.sqrt(var_d)),
                "eval_share": mean_se2 / var_d if var_d > 0 else float("inf"),
                "seed_sd_beyond_eval": float(np.sqrt(max(0.0, var_d - mean_se2))),
                "task_param_r2": _covariate_r2(df, env_id, a, b, int(mark), designs.get(env_id, "random")),
                "score_within_se_median": float(sc[sc["algo"].isin([a, b])]["se"].median()),
                "score_between_seed_sd_mean": float(sc[sc["algo"].isin([a, b])].groupby("algo")["return"]
                                                    .std(ddof=1).mean()),
            })
    return pd.DataFrame(rows)


def run_budgets(dest: Path) -> dict[str, int]:
    """Budget per run of each environment, from the runs' own configs (one value per environment)."""
    out: dict[str, set[int]] = {}
    for path in sorted((dest / RUNS_DIR).rglob(store.CONFIG_FILE)):
        cfg = config.load_yaml(path)
        out.setdefault(cfg["env_id"], set()).add(int(cfg["budget"]))
    return {e: b.pop() if len(b) == 1 else max(b) for e, b in sorted(out.items())}


def rates_table(dest: Path) -> pd.DataFrame:
    """Measured training throughput of each (env, algo) in this grid (metrics.jsonl
    ``time/iteration_s``, summed over iterations; evaluation not included), and the wall-clock
    hours of one run at the paper's budget at that rate. The rates are as measured on the
    machine the grid shared with other work (REPRODUCTION.md says how), not a benchmark."""
    rows = []
    for path in sorted((dest / RUNS_DIR).rglob(store.METRICS_FILE)):
        m = pd.read_json(path, lines=True)
        cfg = config.load_yaml(path.parent / store.CONFIG_FILE)
        rows.append({"env_id": cfg["env_id"], "algo": cfg["algo"], "steps": int(m["env_steps"].max()),
                     "train_s": float(m["time/iteration_s"].sum())})
    df = pd.DataFrame(rows).groupby(["env_id", "algo"], sort=False).sum().reset_index()
    df["steps_per_s"] = df["steps"] / df["train_s"]
    df["paper_run_hours"] = PAPER_LOCOMOTION_BUDGET / df["steps_per_s"] / 3600
    return df


def _md_table(df: pd.DataFrame, cols: list[str], heads: list[str]) -> str:
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


def markdown(dest: Path, claims: pd.DataFrame, noise: pd.DataFrame, rates: pd.DataFrame, counts: pd.DataFrame,
             exp: ExperimentConfig, n_tasks: dict[str, int]) -> str:
    text = {c.key: c for c in CLAIMS}
    claims = claims.assign(claim_text=[f"**{k}** {text[k].text}" for k in claims["claim"]],
                           paper=[text[k].where for k in claims["claim"]])
    nz = noise.assign(
        checkpoint=[f"{m:,}" for m in noise["budget_mark"]],
        pair_label=[f"{env_label(e)}, {' vs '.join(algo_label(x) for x in p.split(':'))}"
                    for e, p in zip(noise["env_id"], noise["pair"])],
        within=[f"{x:.3g}" for x in noise["diff_within_se_median"]],
        between=[f"{x:.3g}" for x in noise["diff_between_seed_sd"]],
        ratio=[f"{w / b:.2f}" if b > 0 else "n/a" for w, b in
               zip(noise["diff_within_se_median"], noise["diff_between_seed_sd"])],
        share=[f"{x:.2f}" for x in noise["eval_share"]],
        beyond=[f"{x:.3g}" for x in noise["seed_sd_beyond_eval"]],
        r2=["n/a" if np.isnan(x) else f"{x:.2f}" for x in noise["task_param_r2"]],
    )
    budgets = run_budgets(dest)
    scale = "; ".join(f"{env_label(e)} {b:,} environment steps per run = {b / PAPER_LOCOMOTION_BUDGET:.3%} of the "
                      f"paper's {PAPER_LOCOMOTION_BUDGET:,}" for e, b in budgets.items())
    return "\n".join([
        BEGIN,
        f"Scale: {scale}; {len(exp.seeds)} seeds; meta-test tasks per seed: "
        f"{', '.join(f'{env_label(e)} {n}' for e, n in n_tasks.items())}. "
        f"Generated from `{dest}` by `python scripts/reproduction_report.py report {dest} --update REPRODUCTION.md`.",
        "",
        "### Over the whole grid",
        "",
        ("Cells after checkpoint 0 (checkpoint x test update) per environment and pair: how many favour DRS in "
         f"the mean, and how many are significant (paired, BH q < {Q:g}) for either method."),
        "",
        _md_table(counts.assign(label=[f"{env_label(e)}, {' vs '.join(algo_label(x) for x in p.split(':'))}"
                                       for e, p in zip(counts["env_id"], counts["pair"])]),
                  ["label", "cells", "drs_mean_ahead", "drs_significant", "maml_significant"],
                  ["environment, pair", "cells", "DRS ahead in the mean", "DRS significantly ahead",
                   "MAML significantly ahead"]),
        "",
        "### Claims",
        "",
        _md_table(claims, ["claim_text", "paper", "where", "evidence", "verdict"],
                  ["claim", "where in the paper", "environment / pair", "our result (paired analysis, 95% CI)",
                   "verdict"]),
        "",
        RULES,
        "",
        "### Noise: within-seed standard error against seed-to-seed spread",
        "",
        ("The DRS - MAML difference after 1 test update: the median over seeds of its within-seed standard "
         "error (over the seed's meta-test tasks) and its standard deviation across seeds. Each seed draws its "
         "own meta-test tasks, so the observed seed-to-seed variance is the true seeds' variance plus the mean "
         "within-seed variance: *evaluation share* = mean(SE^2) / (seed-to-seed SD)^2 is the part of the "
         "observed spread that the task sample alone accounts for (1 or more: the seeds differ no more than "
         "their task samples do), and *beyond evaluation* = sqrt(max(0, SD^2 - mean(SE^2))) estimates the "
         "spread of the seeds' true differences. *R^2, task parameter*: the median over seeds of the share of "
         "the per-task differences' variance explained by a straight line in the task's one scalar parameter "
         "(the goal velocity; n/a when a task has several). *Design*: how each seed's tasks were drawn "
         "(`eval.task_design`, docs/protocol.md section 6.1): *random* = independent draws, SE = SD over tasks "
         "/ sqrt(n); *stratified* = one goal velocity in each of n equal strata, SE from second differences of "
         "neighbouring strata "
         "(`rlbench.stats.within_seed_se`), which leaves out the part of the task-to-task spread that the "
         "goal velocity explains."),
        "",
        _md_table(nz, ["pair_label", "checkpoint", "n_tasks", "task_design", "within", "between", "ratio", "share",
                       "beyond", "r2"],
                  ["environment, pair", "checkpoint (steps)", "meta-test tasks", "design", "within-seed SE",
                   "seed-to-seed SD",
                   "ratio", "evaluation share", "seed SD beyond evaluation", "R^2, task parameter"]),
        "",
        "### Measured training rates, and one run at the paper's budget at that rate",
        "",
        ("Training only (metrics.jsonl `time/iteration_s`, summed over the seeds' iterations; evaluation "
         "excluded), on this grid's sampling unit, as measured while the machine was shared (see How it ran): "
         "for comparing algorithms within the grid, not a benchmark (`results/bench/` has those)."),
        "",
        _md_table(rates.assign(env=[env_label(e) for e in rates["env_id"]], alg=[algo_label(a) for a in rates["algo"]],
                               sps=[f"{x:,.0f}" for x in rates["steps_per_s"]],
                               hours=[f"{x:.1f}" for x in rates["paper_run_hours"]]),
                  ["env", "alg", "sps", "hours"],
                  ["environment", "algorithm", "env steps/s",
                   f"hours per {PAPER_LOCOMOTION_BUDGET // 1_000_000}M-step run at that rate"]),
        END,
    ])


def report(dest: Path, update: Path | None) -> int:
    df = load_evaluations(dest)
    exp = config.load(ExperimentConfig, dest / EXPERIMENT_FILE)
    designs = task_designs(dest)
    reports, diffs = {}, {}
    for a, b in pairs_of(dest):
        fresh = recompute_report(df, a, b)
        committed = stats.read_report(dest / COMPARISON_DIR / f"{a}_vs_{b}_return_report.csv")
        cols = ["paired_diff", "paired_ci_low", "paired_ci_high", "paired_q", "welch_q", "paper_value"]
        if len(fresh) != len(committed) or not np.allclose(fresh[cols].to_numpy(float), committed[cols].to_numpy(float),
                                                            rtol=1e-9, atol=1e-9, equal_nan=True):
            print(f"error: the committed {a}_vs_{b} report differs from the one recomputed from the evaluation tables",
                  file=sys.stderr)
            return 1
        for env_id, rep in fresh.groupby("env_id"):
            reports[(env_id, a, b)] = rep.reset_index(drop=True)
        diffs[(a, b)] = per_seed_differences(df, a, b, designs)
    claims = evaluate_claims(reports, diffs)
    noise = noise_table(reports, diffs, df, designs)
    claims.to_csv(dest / "claims.csv", index=False)
    noise.to_csv(dest / "noise.csv", index=False)
    rates = rates_table(dest)
    rates.to_csv(dest / "rates.csv", index=False)
    counts = counts_table(reports)
    counts.to_csv(dest / "counts.csv", index=False)
    n_tasks = df.groupby(["env_id", "algo", "seed", "budget_mark", "test_update"])["task"].nunique().groupby("env_id").min()
    md = markdown(dest, claims, noise, rates, counts, exp, {e: int(n) for e, n in n_tasks.items()})
    (dest / "claims.md").write_text(md + "\n")
    if update is not None:
        text = update.read_text()
        if BEGIN not in text or END not in text:
            print(f"error: {update} lacks the {BEGIN} / {END} markers", file=sys.stderr)
            return 2
        head, rest = text.split(BEGIN, 1)
        update.write_text(head + md + rest.split(END, 1)[1])
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="copy a finished run's raw tables and comparison into a results folder")
    c.add_argument("run_out", type=Path)
    c.add_argument("dest", type=Path)
    c.add_argument("--replace", action="store_true")
    r = sub.add_parser("report", help="claims and noise tables from a collected results folder")
    r.add_argument("dest", type=Path)
    r.add_argument("--update", type=Path, help="replace the marked block of this markdown file")
    s = sub.add_parser("restore", help="copy committed runs back into an output directory, ready to resume the grid")
    s.add_argument("dest", type=Path)
    s.add_argument("run_out", type=Path)
    s.add_argument("--env", action="append", required=True, help="an environment id whose runs to restore (repeatable)")
    args = ap.parse_args(argv)
    if args.cmd == "restore":
        return restore(args.dest, args.run_out, args.env)
    if args.cmd == "collect":
        return collect(args.run_out, args.dest, args.replace)
    return report(args.dest, args.update)


if __name__ == "__main__":
    sys.exit(main())
