"""Copy the headline outputs of an ``rlbench run`` into a results folder and write its README from the numbers.

Every number in the README is read from the run's comparison outputs (report, aggregate,
summary) and configs; nothing is typed by hand. Existing files in DEST are replaced only
with ``--replace``.

    rlbench run quick --out /tmp/quick_run
    python scripts/results_readme.py /tmp/quick_run results/quick --replace \
        --command "rlbench run quick --out /tmp/quick_run" --wall "wall time 9 min 10 s on 2 cores, load 3"
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

from rlbench import config, power, stats, store
from rlbench.analysis import find_run_dirs, load_results, output_stem
from rlbench.plots import algo_label, env_label
from rlbench.settings import ExperimentConfig

#: Outputs copied per pair (kind, extension) and per study (name).
PAIR_FILES = (("contour", "png"), ("learning", "png"), ("adaptation", "png"), ("report", "csv"),
              ("aggregate", "csv"))
STUDY_FILES = ("study_return_contour.png", "study_return_summary.md", "study_return_summary.csv")


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def _pair_text(report: pd.DataFrame, scores: pd.DataFrame | None) -> list[str]:
    a, b = report["algo_a"].iloc[0], report["algo_b"].iloc[0]
    la, lb = algo_label(a), algo_label(b)
    lines = []
    for env_id, r in report.groupby("env_id", sort=True):
        first, last = r["budget_mark"].min(), r["budget_mark"].max()
        init = r[(r["budget_mark"] == first) & (r["test_update"] == 0)].iloc[0]
        fin = r[(r["budget_mark"] == last) & (r["test_update"] == min(1, r["test_update"].max()))].iloc[0]
        later = r[r["budget_mark"] > first]
        counts = {an: int(stats.significant(later, an).sum()) for an in stats.ANALYSES}
        flagged = {an: int((later[f"{an}_flags"] != "").sum()) for an in stats.ANALYSES}
        init_flags = sorted({f for f in r.loc[r["budget_mark"] == first, "paired_flags"] if f})
        same = abs(init["mean_a"] - init["mean_b"]) < 1e-9
        init0 = f"{_fmt(init['mean_a'])} for both" if same else f"{la} {_fmt(init['mean_a'])}, {lb} {_fmt(init['mean_b'])}"
        flag_text = ""
        if init_flags == ["zero_var"]:
            flag_text = "; its paired cells are flagged zero_var: every seed's two scores are equal there"
        elif init_flags:
            flag_text = f"; its paired cells are flagged {', '.join(init_flags)}"
        lines += [
            (f"**{env_label(env_id)}, {la} vs {lb}.** At checkpoint 0 both start from the seed's initial "
            f"policy (mean return {init0}{flag_text}). "
            f"At the last checkpoint ({int(last):,} steps) after {int(fin['test_update'])} test update(s): "
            f"{la} {_fmt(fin['mean_a'])}, {lb} {_fmt(fin['mean_b'])}."),
            "",
            f"* paired (headline): difference {_fmt(fin['paired_diff'])}, 95% t interval "
            f"[{_fmt(fin['paired_ci_low'])}, {_fmt(fin['paired_ci_high'])}], bootstrap "
            f"[{_fmt(fin['paired_boot_low'])}, {_fmt(fin['paired_boot_high'])}], {la} ahead in "
            f"{fin['paired_win_frac'] * fin['paired_n']:g} of {int(fin['paired_n'])} seeds, q = {fin['paired_q']:.2g}. "
            f"Over the {len(later)} cells after checkpoint 0: {counts['paired']} with q < {stats.Q_LEVEL:g}"
            + (f", {flagged['paired']} flagged" if flagged["paired"] else "") + ".",
            (f"* welch: same difference, 95% interval [{_fmt(fin['welch_ci_low'])}, {_fmt(fin['welch_ci_high'])}], "
            f"q = {fin['welch_q']:.2g}; {counts['welch']} of {len(later)} cells with q < {stats.Q_LEVEL:g}."),
            (f"* paper (the authors' statistic): 2P - 1 = {fin['paper_value']:.2f} there; "
            f"{counts['paper']} of {len(later)} cells with q < {stats.Q_LEVEL:g}."),
        ]
        if scores is not None:
            pw = power.power_table(r, scores[scores["env_id"] == env_id], test_updates=(int(fin["test_update"]),))
            if len(pw):
                p = pw.iloc[0]

                def n(v):
                    return "more than 1000" if pd.isna(v) else str(int(v))
                lines.append(f"* seeds needed for 80% power to detect the observed difference at that cell "
                             f"(pilot SDs taken as true): paired {n(p['seeds_paired'])}, Welch {n(p['seeds_welch'])}.")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_out", type=Path, help="the --out of `rlbench run`")
    ap.add_argument("dest", type=Path, help="results folder to write (e.g. results/quick)")
    ap.add_argument("--command", required=True, help="the command that produced run_out (quoted in the README)")
    ap.add_argument("--wall", required=True, help="wall time and machine load, as measured (quoted)")
    ap.add_argument("--replace", action="store_true", help="replace files already in DEST")
    args = ap.parse_args(argv)
    cmp_dir = args.run_out / store.COMPARISON_DIR
    exp = config.load(ExperimentConfig, args.run_out / store.EXPERIMENT_FILE)
    runs = find_run_dirs(args.run_out)
    if not runs or not cmp_dir.is_dir():
        print(f"error: {args.run_out} holds no runs or no {store.COMPARISON_DIR}/", file=sys.stderr)
        return 2
    cfg = store.read_config(runs[0])
    pairs = [tuple(p.split(":")) for p in exp.pairs if set(p.split(":")) <= set(exp.algos)]
    sources = [output_stem(cmp_dir, pair, "return", k).with_suffix(f".{e}") for pair in pairs for k, e in PAIR_FILES]
    copies = [(src, src.name) for src in sources] + [(cmp_dir / f, f) for f in STUDY_FILES]
    missing = [str(s) for s, _ in copies if not s.exists()]
    if missing:
        print(f"error: missing outputs (run `rlbench compare` with this version first): {missing[0]}", file=sys.stderr)
        return 2
    targets = [args.dest / n for _, n in copies] + [args.dest / "README.md"]
    if not args.replace and any(t.exists() for t in targets):
        print(f"error: {args.dest} already holds these files; pass --replace to replace them", file=sys.stderr)
        return 2

    df, _ = load_results(args.run_out, warn=lambda m: None)
    scores = stats.seed_scores(df, "return")
    reports = {p: stats.read_report(output_stem(cmp_dir, p, "return", "report").with_suffix(".csv")) for p in pairs}
    body = []
    for p, rep in reports.items():
        body += _pair_text(rep, scores[scores["algo"].isin(p)])
    names = ", ".join(f"{algo_label(a)} vs {algo_label(b)}" for a, b in pairs)
    envs = ", ".join(f"`{e}`" for e in exp.envs)
    rep0 = next(iter(reports.values()))
    # per environment: its runs' budget (the largest checkpoint mark) and checkpoint marks
    schedule = "; ".join(
        f"`{env_label(e)}` {int(max(m)):,} environment steps per run, checkpoints at "
        f"{', '.join(f'{int(x):,}' for x in sorted(m))} steps"
        for e, m in ((e, g["budget_mark"].unique()) for e, g in rep0.groupby("env_id", sort=True)))
    files = "\n".join(f"| `{n}` | {desc} |" for n, desc in [
        *[(f"{a}_vs_{b}_return_contour.png", ("1 - p of the paired analysis over budget x test updates; hatched: "
           "not significant at BH q < 0.05 (or flagged)")) for a, b in pairs],
        *[(f"{a}_vs_{b}_return_learning.png", "return after one test update vs budget, mean and 95% CI over seeds")
          for a, b in pairs],
        *[(f"{a}_vs_{b}_return_adaptation.png", "return vs test updates at selected checkpoints") for a, b in pairs],
        *[(f"{a}_vs_{b}_return_report.csv", ("per cell: the paired, Welch and paper analyses side by side "
           "(`paired_*`, `welch_*`, `paper_*` columns; see `rlbench/stats.py`)")) for a, b in pairs],
        *[(f"{a}_vs_{b}_return_aggregate.csv", ("IQM of normalised scores and probability of improvement "
           "across environments (`rlbench/aggregate.py`)")) for a, b in pairs],
        ("study_return_contour.png", "the study figure: one panel per environment x pair, one colour scale"),
        ("study_return_summary.md", "verdicts at each checkpoint after 1 and the last test update, with CIs"),
    ])
    n_tasks = {store.read_config(r).env_id: store.read_config(r).eval.n_tasks for r in runs}
    tasks = (str(cfg.eval.n_tasks) if len(set(n_tasks.values())) == 1
             else ", ".join(f"`{env_label(e)}` {n}" for e, n in sorted(n_tasks.items())))
    text = f"""# Reference result: the `{exp.name}` preset

{names} on {envs}, {len(exp.seeds)} seeds; {schedule} (checkpoint 0 = the initial policy); {tasks}
meta-test tasks x {cfg.eval.episodes_per_task} episodes per seed, {cfg.eval.n_updates} test updates. Produced by:

```bash
{args.command}
```

({args.wall}; files copied here from `{cmp_dir}/` and this README written by
`python scripts/results_readme.py {args.run_out} {args.dest} --replace --command ... --wall ...`.)

| file | content |
|---|---|
{files}

## What it shows

The headline is the paired analysis: every algorithm of a seed starts from the same initial
policy and is meta-tested on the same tasks (proven by the runs' pairing records), so the
seed is a block and the test runs on the per-seed differences. 1 - p is a p-value
transform, not a posterior probability. Welch's unpaired test and the authors' statistic
are in the same report; on this blocked design they are valid but conservative
(`results/stats_calibration/`).

""" + "\n".join(body)
    args.dest.mkdir(parents=True, exist_ok=True)
    for src, name in copies:
        shutil.copyfile(src, args.dest / name)
    (args.dest / "README.md").write_text(text)
    print(f"wrote {args.dest}: {len(copies)} files and README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
