"""Print the rows of a ``scripts/bench_iterations.py`` JSON file as the markdown table used in
results/bench/README.md (so the README's numbers are this script's output, not typed by hand),
and with ``--projection`` the paper-grid projection the file holds.

    python scripts/iterations_table.py results/bench/iterations_halfcheetah_fused.json
    python scripts/iterations_table.py results/bench/iterations_projection_locomotion.json --projection
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEAD = ("| env | algo | impl | iteration s | sampling s | update s | update share | peak RSS MB (self + workers) "
        "| load avg (before, after) |")


def table(rows: list[dict]) -> str:
    lines = [HEAD, "|" + "---|" * HEAD.count(" | ") + "---|"]
    for r in rows:
        env = r["env"].split("/")[-1]
        rss = r["peak_rss_mb"]
        load = ", ".join(f"{x:.1f}" for x in r["loadavg"])
        impl = r.get("impl", "")
        if r.get("fvp_subsample", 1) != 1:
            impl = (f"{impl}, " if impl not in ("", "-") else "") + f"fvp_subsample {r['fvp_subsample']:g}"
        lines.append(f"| {env} | {r['algo']} | {impl} | {r['iteration_s']:.1f} | {r['sampling_s']:.1f} | "
                     f"{r['update_s']:.2f} | {r['update_share']:.1%} | {rss['self']:.0f} + {rss['children']:.0f} | {load} |")
    return "\n".join(lines)


def projection_table(proj: dict) -> str:
    """The file's ``projection``: per (env, algo) run at the paper's budget, and the grid total."""
    lines = ["| run | wall h | core h | steps/s per core |", "|---|---|---|---|"]
    for run, r in proj["per_run"].items():
        lines.append(f"| {run.split('/')[-1]} | {r['run_wall_h']:.1f} | {r['run_core_h']:.1f} | {r['steps_per_s_per_core']:.0f} |")
    lines += ["", f"Grid ({proj['seeds']} seeds per measured (environment, algorithm)): {proj['grid_core_h_measured_pairs']:,} "
              f"core-hours, {proj['grid_wall_h_on_64_cores']:,} h on 64 cores."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--projection", action="store_true", help="also print the paper-grid projection the file holds")
    a = p.parse_args(argv)
    try:
        data = json.loads(a.file.read_text())
        rows = data["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"iterations_table: error: {a.file}: not a bench_iterations.py output ({e})", file=sys.stderr)
        return 2
    print(table(rows))
    if a.projection:
        print()
        print(projection_table(data["projection"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
