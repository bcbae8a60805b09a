"""Print the sampler lines of a ``scripts/bench_sampler.py`` JSON file against the same-episode
replay as the markdown table used in results/bench/README.md (the README's numbers are this
script's output, not typed by hand).

Per environment and sampler line: the best rate, the best over the best replay at the same
thread count (2 threads for any count above one), the per-repeat ratios (the line over the
replay measured right after it in the same repeat) with their median, and the ratio per CPU
second of this process (in-process lines).

    python scripts/sampler_table.py results/bench/sampler_cloop_locomotion.json

With several files (runs of the same lines at the same batch), ``--pool`` prints instead, per
environment and line, every per-repeat ratio to the replay of all the runs together: their
count, median and range (a machine whose speed drifts between and within runs makes one
run's best/best a poor summary).

    python scripts/sampler_table.py --pool results/bench/sampler_paper_shape_*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HEAD = "| env | line | steps/s (best) | replay steps/s (best) | best/best | per repeat: median [values] | per CPU s |"


def table(result: dict) -> str:
    lines = [HEAD, "|" + "---|" * HEAD.count(" | ") + "---|"]
    for env_id, e in result["envs"].items():
        if "ratios" not in e:
            continue
        env = env_id.split("/")[-1].removesuffix("-v0")
        for key, c in e["c_sampler"].items():
            r = e["ratios"][key]
            if "c_over_replay_same_threads" not in r:
                continue
            suffix = "2threads" if int(key.split("/")[1]) > 1 else "1thread"
            reps = r["c_over_replay_same_threads_repeats"]
            values = " ".join(f"{x:.2f}" for x in reps["per_repeat"])
            cpu = r.get("c_over_replay_per_cpu_s_same_threads")
            lines.append(f"| {env} | {key} | {c['steps_per_s']:,.0f} | {e['a_physics_limit'][f'replay_{suffix}']:,.0f} | "
                         f"{r['c_over_replay_same_threads']:.3f} | {reps['median']:.3f} [{values}] | "
                         f"{'-' if cpu is None else f'{cpu:.3f}'} |")
    return "\n".join(lines)


def pooled(results: list[dict]) -> str:
    """Per (environment, line): the per-repeat ratios to the replay of all ``results`` together."""
    ratios: dict[tuple[str, str], list[float]] = {}
    for result in results:
        for env_id, e in result["envs"].items():
            for key, r in e.get("ratios", {}).items():
                if "c_over_replay_same_threads_repeats" in r:
                    ratios.setdefault((env_id.split("/")[-1].removesuffix("-v0"), key), []).extend(
                        r["c_over_replay_same_threads_repeats"]["per_repeat"])
    lines = ["| env | line | repeats | per repeat: median | min | max |", "|---|---|---|---|---|---|"]
    for (env, key), v in ratios.items():
        lines.append(f"| {env} | {key} | {len(v)} | {statistics.median(v):.3f} | {min(v):.3f} | {max(v):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="scripts/bench_sampler.py JSON outputs (one, or several with --pool)")
    p.add_argument("--pool", action="store_true", help="pool the per-repeat ratios of all the files")
    a = p.parse_args(argv)
    if len(a.paths) > 1 and not a.pool:
        print("error: several files need --pool", file=sys.stderr)
        return 2
    results = []
    for path in a.paths:
        try:
            result = json.loads(Path(path).read_text())
            text = pooled([result]) if a.pool else table(result)
            run = result["run"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            print(f"error: {path} is not a readable scripts/bench_sampler.py output ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
        results.append(result)
    if a.pool:
        print(pooled(results))
        return 0
    print(text)
    print(f"\nRun: {run['wall_s']:.0f} s, this process {run['cpu_share_of_machine']:.2f} of the machine, load average "
          f"{run['load_average_start'][0]:.2f} -> {run['load_average_end'][0]:.2f}; physics loop: "
          f"{result['machine'].get('physics_loop', 'python (before envs/slot_physics.c)')}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
