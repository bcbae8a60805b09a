"""Print the rows of a ``scripts/bench_iterations.py`` JSON file as the markdown table used in
results/bench/README.md (so the README's numbers are this script's output, not typed by hand).

    python scripts/iterations_table.py results/bench/iterations_halfcheetah_fused.json
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
        lines.append(f"| {env} | {r['algo']} | {r.get('impl', '')} | {r['iteration_s']:.1f} | {r['sampling_s']:.1f} | "
                     f"{r['update_s']:.2f} | {r['update_share']:.1%} | {rss['self']:.0f} + {rss['children']:.0f} | {load} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    a = p.parse_args(argv)
    try:
        rows = json.loads(a.file.read_text())["rows"]
    except (OSError, ValueError, KeyError) as e:
        print(f"iterations_table: error: {a.file}: not a bench_iterations.py output ({e})", file=sys.stderr)
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
