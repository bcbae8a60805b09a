"""Re-project the paper grid's cost with the Meta-World sampler speedups measured side by side.

On a shared machine absolute rates move with the load, so an iteration benchmark re-run now
would mostly measure the neighbours. This script instead combines two recorded measurements:

* ``--iterations`` (``scripts/bench_iterations.py`` output): per (env, algo) the wall time of
  one iteration split into sampling and update, measured with the ``gym`` backend for
  Meta-World;
* ``--paths`` (``scripts/bench_sampler.py --metaworld-paths`` output): the sampler's steps/s
  per backend, all lines measured side by side in one run.

For every Meta-World row, sampling time is divided by the speedup of ``--backend`` over
``gym`` (ML1-Push, ML1-Reach: that environment's ratio; ML10: the ratio of summed per-step
times over the ML10 train classes; ML45: not measured per class, the ML10 figure is used and
the row says so). Update time is kept. Other rows are copied; ``--replace FILE`` first swaps in
the rows of other bench_iterations.py outputs for the same (env, algo) (e.g. locomotion
re-measured on an idle machine). The projection is then recomputed with
``bench_iterations.project`` (same formula as the measured one).

    python scripts/project_metaworld_paths.py --paths results/bench/metaworld_paths_*.json \
        --out results/bench/iterations_projection_metaworld.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_iterations import project


def speedups(paths: list[dict], backend: str) -> dict[str, dict]:
    envs_ = {k: v for p in paths for k, v in p["metaworld_paths"]["envs"].items()}

    def ratio(labels: list[str]) -> float:
        # time per step summed over the classes (equal steps per class): a mixture's speedup
        gym = sum(1.0 / envs_[k]["steps_per_s"]["sampler:gym"] for k in labels)
        new = sum(1.0 / envs_[k]["steps_per_s"][f"sampler:{backend}"] for k in labels)
        return gym / new

    ml10 = [k for k in envs_ if k.startswith("ML10:")]
    out = {
        "rlbench/ML1-Push-v0": {"speedup": ratio(["ML1-Push"]), "from": ["ML1-Push"]},
        "rlbench/ML1-Reach-v0": {"speedup": ratio(["ML1-Reach"]), "from": ["ML1-Reach"]},
    }
    if ml10:
        out["rlbench/ML10-v0"] = {"speedup": ratio(ml10), "from": ml10}
        out["rlbench/ML45-v0"] = {"speedup": ratio(ml10), "from": ml10,
                                  "note": "ML45 classes not measured one by one: the ML10 train classes' figure"}
    return out


def _load(iterations: str, replace: list[str], paths: list[str]) -> tuple[dict, list[dict], list[dict]]:
    """The --iterations file, the rows of the --replace files, and the --paths files."""
    def read(path: str) -> dict:
        with open(path) as f:
            return json.load(f)

    it = read(iterations)
    if not isinstance(it, dict) or "rows" not in it:
        raise KeyError(f"{iterations} has no 'rows'")
    return it, [r for path in replace for r in read(path)["rows"]], [read(path) for path in paths]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", default="results/bench/iterations_projection.json")
    p.add_argument("--paths", nargs="+", required=True, help="bench_sampler.py --metaworld-paths outputs (merged)")
    p.add_argument("--backend", default="metaworld-batched")
    p.add_argument("--seeds", type=int, default=None, help="default: the iterations file's")
    p.add_argument("--cluster-cores", type=int, default=64)
    p.add_argument("--replace", nargs="+", default=[], metavar="FILE",
                   help="bench_iterations.py outputs whose rows replace the --iterations file's rows of the same "
                        "(env, algo), e.g. locomotion re-measured on an idle machine")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        it, replaced, paths = _load(a.iterations, a.replace, a.paths)
        sp = speedups(paths, a.backend)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"project_metaworld_paths: error: an input is not a bench_iterations.py / bench_sampler.py "
              f"--metaworld-paths output: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    keys = {(r["env"], r["algo"]) for r in replaced}
    it_rows = replaced + [r for r in it["rows"] if (r["env"], r["algo"]) not in keys]
    rows = []
    for r in it_rows:
        s = sp.get(r["env"])
        if s is None or r.get("backend") != "gym":
            rows.append(dict(r))
            continue
        sampling = r["sampling_s"] / s["speedup"]
        iteration = sampling + r["update_s"]
        steps = r["steps_per_iteration"]
        rows.append({
            **r, "backend": a.backend, "sampling_speedup": s["speedup"], "speedup_from": s["from"],
            **({"note": s["note"]} if "note" in s else {}),
            "measured_iteration_s": r["iteration_s"], "measured_sampling_s": r["sampling_s"],
            "iteration_s": iteration, "sampling_s": sampling, "update_share": r["update_s"] / iteration,
            "sampling_steps_per_s": steps / sampling, "steps_per_s": steps / iteration,
            "paper_iteration_s_estimate": iteration * r["paper_iteration_s_estimate"] / r["iteration_s"],
        })
    seeds = a.seeds or it["projection"]["seeds"]
    result = {
        "command": " ".join(["python", "scripts/project_metaworld_paths.py", *(argv if argv is not None else sys.argv[1:])]),
        "inputs": {"iterations": a.iterations, "iterations_command": it["command"], "replace": a.replace, "paths": a.paths,
                   "paths_commands": [q["command"] for q in paths], "backend": a.backend},
        "speedups": sp, "rows": rows, "projection": project(rows, seeds, a.cluster_cores),
        "projection_before": it["projection"],
    }
    text = json.dumps(result, indent=2)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    print(table(result))
    return 0


def table(result: dict) -> str:
    """The README table: per Meta-World environment, the speedup used and each algorithm's run
    wall hours on 2 cores (before -> after), then the whole grid."""
    before, after = result["projection_before"], result["projection"]
    algos = list(dict.fromkeys(k.rsplit(":", 1)[1] for k in after["per_run"]))  # in the recorded order
    lines = ["| env | sampler speedup | " + " | ".join(algos) + " |", "|---|---|" + "---|" * len(algos)]
    for env, s in result["speedups"].items():
        name = env.split("/")[-1].removesuffix("-v0")
        note = " (ML10's)" if "note" in s else ""
        cells = [f"{before['per_run'][f'{env}:{x}']['run_wall_h']} -> {after['per_run'][f'{env}:{x}']['run_wall_h']}"
                 for x in algos if f"{env}:{x}" in after["per_run"]]
        lines.append(f"| {name} | {s['speedup']:.2f}{note} | " + " | ".join(cells) + " |")
    cores = next(k for k in after if k.startswith("grid_wall_h_on_"))
    lines += ["", f"Whole grid ({after['seeds']} seeds): {before['grid_core_h_measured_pairs']:,} -> "
              f"{after['grid_core_h_measured_pairs']:,} core-hours, {before.get(cores, 0):g} -> {after[cores]:g} h on "
              f"{cores.removeprefix('grid_wall_h_on_').removesuffix('_cores')} cores."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
