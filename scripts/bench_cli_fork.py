"""CPU cost of a bad-input CLI case: a new interpreter (``python -m rlbench.cli``) against a
child forked from a server that imported the CLI and its commands' modules once (what tests/test_hostile.py does).

CPU time (user + sys), not wall time, so the ratio holds on a busy machine. The real CLI is
measured as this process's reaped children; a forked child measures itself (RUSAGE_SELF at its
end, written to a file); the server's one-time import is measured as a separate interpreter
that only imports those modules.

    nice -n 19 python scripts/bench_cli_fork.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from agents.drs import DRSPPO
from agents.maml import ProMP

ENV = "rlbench/PointGoal-v0"
TRAIN = ["train", "--env", ENV, "--algo", DRSPPO.algo, "--preset", "smoke", "--seed", "1", "--quiet", "--budget", "4000"]
CASES = [
    ["train", "--env", "rlbench/Nope-v0", "--algo", ProMP.algo],
    [*TRAIN, "--set", "algo_cfg.inner_lr=fast"],
    [*TRAIN, "--set", "advantage.gamma=.nan"],
    [*TRAIN, "--set", "sampler.backend=nope"],
    [*TRAIN[:-1], "100"],
    [*TRAIN, "--preset", "nope"],
    ["run", "nope"],
    ["evaluate", "/nonexistent-run-dir"],
]


#: as in tests/test_hostile.py: the CLI and the modules its commands import when they run
PRELOAD = ["rlbench.cli", "rlbench.runner", "rlbench.evaluator", "rlbench.grid", "rlbench.plan"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _child(argv: list[str], cpu_file: str) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    from rlbench.cli import main

    try:
        main(argv)
    except SystemExit:
        pass
    finally:
        r = resource.getrusage(resource.RUSAGE_SELF)
        Path(cpu_file).write_text(str(r.ru_utime + r.ru_stime))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = [[*a, "--out", f"{tmp}/o{i}"] if a[0] != "evaluate" else a for i, a in enumerate(CASES)]
        t0 = _children_cpu()
        subprocess.run([sys.executable, "-c", "import " + ", ".join(PRELOAD)], check=True)
        import_cpu = _children_cpu() - t0
        real = []
        for argv in out:
            t0 = _children_cpu()
            p = subprocess.run([sys.executable, "-m", "rlbench.cli", *argv], capture_output=True, text=True, check=False)
            assert p.returncode == 2, p.stderr
            real.append(_children_cpu() - t0)
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        forked = []
        for i, argv in enumerate(out):
            f = f"{tmp}/cpu{i}"
            p = ctx.Process(target=_child, args=(argv, f))
            p.start()
            p.join()
            forked.append(float(Path(f).read_text()))
    n = len(CASES)
    print(f"cases: {n}; CPU seconds (user + sys)")
    print(f"  importing {', '.join(PRELOAD)} in a new interpreter (the server's one-time cost): {import_cpu:.2f}")
    print(f"  real CLI, per case: mean {sum(real) / n:.2f} (min {min(real):.2f}, max {max(real):.2f})")
    print(f"  forked child, per case: mean {sum(forked) / n:.3f} (min {min(forked):.3f}, max {max(forked):.3f})")
    print(f"  ratio real / forked per case: {sum(real) / sum(forked):.1f}x; "
          f"for {n} cases incl. one server import: {sum(real) / (sum(forked) + import_cpu):.1f}x")


if __name__ == "__main__":
    main()
