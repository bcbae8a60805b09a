"""Print the Meta-World code-path ratios of scripts/bench_sampler.py --metaworld-paths JSON files as a
markdown table (median repeat, every repeat), and the mean over ML10 train classes.

    python scripts/metaworld_paths_table.py results/bench/metaworld_paths_idle.json
"""

import json
import statistics
import sys

for path in sys.argv[1:]:
    d = json.load(open(path))
    print(f"`{path.split('/')[-1]}`: {d['command']}")
    print(f"load average start/end {d['run']['load_average_start'][0]:.1f} / {d['run']['load_average_end'][0]:.1f}, cpu share {d['run']['cpu_share_of_machine']:.2f}\n")
    print("| env | slots | gym / pkg | fast / pkg | batched / pkg |")
    print("|---|---|---|---|---|")
    ml10 = {"metaworld-fast": [], "metaworld-batched": []}
    for k, v in d["metaworld_paths"]["envs"].items():
        b = v["batch"]
        r = v["all_ratios"]
        f = lambda xs: f"{statistics.median(xs):.2f} ({', '.join(f'{x:.2f}' for x in xs)})"
        print(f"| {k} | {b['tasks']}x{b['episodes_per_task']} | {f(r['gym'])} | {f(r['metaworld-fast'])} | {f(r['metaworld-batched'])} |")
        if k.startswith("ML10:"):
            for bk in ml10:
                ml10[bk].append(statistics.median(r[bk]))
    if ml10["metaworld-fast"]:
        print(f"\nML10 train classes, mean of per-class medians: fast {statistics.mean(ml10['metaworld-fast']):.2f}, batched {statistics.mean(ml10['metaworld-batched']):.2f}")
    print()
