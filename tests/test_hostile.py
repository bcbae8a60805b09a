"""Bad inputs and damaged files through the real command line, one subprocess per case.

Every case asserts: the exit status, exactly one line on stderr, no traceback, and that the
directory the command pointed at holds byte-identical files afterwards (sha256 of every file
before and after). The cases run concurrently in one module fixture, each in a process of its
own that runs the CLI's ``main`` on the case's argv with its own stdout and stderr files:
processes forked from a server that imported the CLI and what its commands import once
(multiprocessing's forkserver), because an interpreter start with those imports costs a few
CPU seconds per case (scripts/bench_cli_fork.py).
``test_real_command_line_agrees`` runs cases through ``python -m rlbench.cli`` as well.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rlbench import store
from rlbench.cli import main

ENV = "rlbench/PointGoal-v0"
BUDGET = 4000  # 5 DRS iterations of the smoke preset's unit (10 tasks x 4 episodes x 20 steps)
TRAIN = ["train", "--env", ENV, "--algo", "drs-ppo", "--preset", "smoke", "--seed", "1", "--quiet"]
ROOT = Path(__file__).resolve().parents[1]


def tree_hash(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path`` itself), by relative name."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@dataclass
class Case:
    id: str
    #: setup(work_dir, fixtures) -> (argv after "rlbench", the path that must stay unchanged or None)
    setup: Callable[[Path, dict[str, Path]], tuple[list[str], Path | None]]
    code: int = 2
    needle: str = ""  # a piece of the one-line message
    absent: bool = False  # the watched path must not exist afterwards (nothing created)
    result: dict = field(default_factory=dict)


def _copy(fx: dict[str, Path], name: str, work: Path) -> Path:
    dst = work / "run"
    shutil.copytree(fx[name], dst)
    return dst


def _train_args(out: Path, *extra: str) -> list[str]:
    return [*TRAIN, "--budget", str(BUDGET), "--out", str(out), *extra]


def _bad_set(*sets: str) -> Callable:
    def setup(work, fx):
        out = work / "new"
        return _train_args(out, *[a for s in sets for a in ("--set", s)]), out

    return setup


def _bad_train(*extra: str) -> Callable:
    def setup(work, fx):
        out = work / "new"
        return [*TRAIN, "--out", str(out), *extra], out

    return setup


def _damaged(name: str, rel: str, damage: Callable[[bytes], bytes], command: str = "resume") -> Callable:
    def setup(work, fx):
        run = _copy(fx, name, work)
        p = run / rel
        p.write_bytes(damage(p.read_bytes()))
        if command == "resume":
            return [*_train_args(run), "--resume"], run
        return ["evaluate", str(run), "--quiet"], run

    return setup


def _experiment(text: str, *extra: str) -> Callable:
    def setup(work, fx):
        y = work / "exp.yaml"
        y.write_text(text)
        out = work / "out"
        return ["run", str(y), "--out", str(out), "--quiet", *extra], out

    return setup


EXP_OK = "name: x\nenvs: [rlbench/PointGoal-v0]\nalgos: [drs-ppo]\nseeds: [1]\nbudget: 4000\nn_checkpoints: 2\n"


def _out_is_file(command: str) -> Callable:
    def setup(work, fx):
        f = work / "afile"
        f.write_text("keep me\n")
        if command == "train":
            return _train_args(f), f
        return ["run", "smoke", "--out", str(f), "--quiet"], f

    return setup


def _out_under_file(work, fx):
    f = work / "afile"
    f.write_text("keep me\n")
    return _train_args(f / "sub"), f


def _foreign_dir(work, fx):
    d = work / "foreign"
    d.mkdir()
    (d / "notes.txt").write_text("mine\n")
    return _train_args(d), d


def _existing_run(*extra: str) -> Callable:
    def setup(work, fx):
        run = _copy(fx, "finished", work)
        return [*_train_args(run), *extra], run

    return setup


#: Holds a flock on argv[1] until its stdin closes (the test ends it after every case ran).
HOLDER = "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()"


def _locked(work, fx):
    """Another process holds the run (a plain flock on its lock file, as a second rlbench would)."""
    run = _copy(fx, "partial", work)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run / ".rlbench.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    fx.setdefault("_holders", []).append(holder)  # type: ignore[arg-type]
    return [*_train_args(run), "--resume"], run


def _flip(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _edit_csv_value(data: bytes) -> bytes:
    lines = data.decode().splitlines(keepends=True)
    cells = lines[1].split(",")
    cells[-3] = str(float(cells[-3]) + 1.0)  # the "return" column: same shape, different number
    lines[1] = ",".join(cells)
    return "".join(lines).encode()


def _binary_line_in_metrics(data: bytes) -> bytes:
    lines = data.split(b"\n")
    lines.insert(1, b"\x00\xff\xfe garbage")
    return b"\n".join(lines)


CASES = [
    # -- arguments --------------------------------------------------------------------------------
    Case("unknown-env", lambda w, fx: (["train", "--env", "rlbench/Nope-v0", "--algo", "promp", "--out", str(w / "n")], w / "n"),
         needle="unknown environment", absent=True),
    Case("unknown-algo", lambda w, fx: (["train", "--env", ENV, "--algo", "maml", "--out", str(w / "n")], w / "n"), needle="--algo",
         absent=True),
    Case("negative-budget", _bad_train("--budget", "-5"), needle="--budget", absent=True),
    Case("fractional-budget", _bad_train("--budget", "1.5"), needle="--budget", absent=True),
    Case("infinite-budget", _bad_train("--budget", "inf"), needle="--budget", absent=True),
    Case("nan-budget", _bad_train("--budget", "nan"), needle="--budget", absent=True),
    Case("budget-below-one-iteration", _bad_train("--budget", "100"), needle="smaller than one", absent=True),
    Case("negative-max-iterations", _bad_train("--budget", "4000", "--max-iterations", "-1"), needle="--max-iterations", absent=True),
    Case("negative-workers", _bad_train("--budget", "4000", "--workers", "-1"), needle="--workers", absent=True),
    Case("negative-seed", lambda w, fx: ([*_train_args(w / "n"), "--seed", "-1"], w / "n"), needle="seed", absent=True),
    Case("zero-inner-steps", lambda w, fx: (["train", "--env", ENV, "--algo", "promp", "--preset", "smoke", "--budget", "4000",
                                             "--inner-steps", "0", "--out", str(w / "n")], w / "n"), needle="inner_steps", absent=True),
    Case("unknown-preset", _bad_train("--preset", "nope"), needle="unknown experiment preset", absent=True),
    Case("set-not-a-number", _bad_set("algo_cfg.inner_lr=fast"), needle="algo_cfg.inner_lr", absent=True),
    Case("set-unknown-key", _bad_set("algo_cfg.inner_rl=0.1"), needle="inner_rl", absent=True),
    Case("set-without-equals", _bad_set("algo_cfg.inner_lr"), needle="key=value", absent=True),
    Case("set-infinite-learning-rate", _bad_set("algo_cfg.learning_rate=inf"), needle="algo_cfg.learning_rate: must be a finite", absent=True),
    Case("set-infinite-init-std", _bad_set("policy.init_std=.inf"), needle="policy.init_std: must be a finite", absent=True),
    Case("set-nan-gamma", _bad_set("advantage.gamma=.nan"), needle="advantage.gamma: must be a finite", absent=True),
    Case("set-huge-integer-float", _bad_set("algo_cfg.clip=1e400"), needle="algo_cfg.clip", absent=True),
    Case("set-negative-learning-rate", _bad_set("algo_cfg.learning_rate=-1"), needle="algo_cfg.learning_rate", absent=True),
    Case("set-zero-fvp-subsample", lambda w, fx: ([*_train_args(w / "n", "--set", "algo_cfg.fvp_subsample=0"), "--algo", "drs-trpo"], w / "n"),
         needle="algo_cfg.fvp_subsample: must lie in (0, 1]", absent=True),
    Case("set-fvp-subsample-with-hessian-free",
         lambda w, fx: ([*_train_args(w / "n", "--set", "algo_cfg.fvp_subsample=0.5"), "--algo", "trpo-maml", "--meta-gradient", "hessian-free"], w / "n"),
         needle="algo_cfg.fvp_subsample: must be 1 with meta_gradient hessian-free", absent=True),
    Case("set-zero-torch-threads", _bad_set("torch_threads=0"), needle="torch_threads", absent=True),
    Case("set-unknown-backend", _bad_set("sampler.backend=nope"), needle="sampler.backend", absent=True),
    Case("set-unusable-backend", _bad_set("sampler.backend=mujoco-batched"), needle="does not support", absent=True),
    Case("set-env-id", _bad_set("env_id=rlbench/HalfCheetahRandVel-v0"), needle="env_id cannot be overridden", absent=True),
    # -- destinations -------------------------------------------------------------------------------
    Case("train-out-is-a-file", _out_is_file("train"), needle="is an existing file"),
    Case("run-out-is-a-file", _out_is_file("run"), needle="is an existing file"),
    Case("train-out-under-a-file", _out_under_file, needle="is a file"),
    Case("train-out-foreign-dir", _foreign_dir, needle="not an rlbench run directory"),
    Case("train-existing-run-without-resume", _existing_run(), needle="--resume"),
    Case("resume-with-other-config", _existing_run("--resume", "--set", "advantage.gamma=0.9"), needle="config differs in advantage.gamma"),
    Case("resume-with-other-threads", _existing_run("--resume", "--set", "torch_threads=2"), needle="config differs in torch_threads"),
    Case("resume-while-another-process-holds-it", _locked, needle="another process"),
    # -- damaged run files ---------------------------------------------------------------------------
    Case("truncated-run-json", _damaged("partial", "run.json", _half), needle="run.json is damaged"),
    Case("truncated-state", _damaged("partial", "state.pt", _half), needle="state.pt is damaged"),
    Case("empty-state", _damaged("partial", "state.pt", lambda d: b""), needle="state.pt is damaged"),
    Case("bit-flipped-state", _damaged("partial", "state.pt", _flip), needle="state.pt is damaged"),
    Case("binary-line-in-metrics", _damaged("partial", "metrics.jsonl", _binary_line_in_metrics), needle="metrics.jsonl is damaged"),
    Case("garbage-config", _damaged("partial", "config.yaml", lambda d: b"algo: [\n"), needle="config.yaml"),
    Case("config-unknown-key", _damaged("partial", "config.yaml", lambda d: d + b"extra_key: 1\n"), needle="extra_key"),
    Case("truncated-checkpoint", _damaged("partial", "checkpoints/ckpt_000.pt", _half, "evaluate"), needle="ckpt_000.pt is damaged"),
    Case("bit-flipped-checkpoint", _damaged("partial", "checkpoints/ckpt_000.pt", _flip, "evaluate"), needle="ckpt_000.pt is damaged"),
    Case("truncated-eval-part", _damaged("finished", "evaluation/ckpt_001.csv", _half, "evaluate"), needle="ckpt_001.csv is damaged"),
    Case("edited-eval-part", _damaged("finished", "evaluation/ckpt_001.csv", _edit_csv_value, "evaluate"), needle="ckpt_001.csv is damaged"),
    Case("empty-eval-part", _damaged("finished", "evaluation/ckpt_000.csv", lambda d: b"", "evaluate"), needle="ckpt_000.csv is damaged"),
    Case("evaluate-not-a-run", lambda w, fx: (["evaluate", str(w)], w), needle="not an rlbench run directory"),
    Case("evaluate-negative-workers", lambda w, fx: (["evaluate", str(fx["finished"]), "--workers", "-1"], fx["finished"]), needle="--workers"),
    # -- experiments ------------------------------------------------------------------------------------
    Case("run-malformed-yaml", _experiment("name: x\nenvs: [a\n"), needle="malformed YAML", absent=True),
    Case("run-budget-not-a-number", _experiment(EXP_OK.replace("budget: 4000", "budget: lots")), needle="budget", absent=True),
    Case("run-budget-too-small", _experiment(EXP_OK.replace("budget: 4000", "budget: 10")), needle="smaller than one", absent=True),
    Case("run-no-algorithms", _experiment(EXP_OK.replace("algos: [drs-ppo]", "algos: []")), needle="algos", absent=True),
    Case("run-duplicate-seeds", _experiment(EXP_OK.replace("seeds: [1]", "seeds: [1, 1]")), needle="seeds: 1 is listed twice", absent=True),
    Case("run-override-matches-nothing", _experiment(EXP_OK + "overrides:\n  drs-trpo: {seed: 3}\n"), needle="overrides.drs-trpo",
         absent=True),
    Case("run-override-infinite", _experiment(EXP_OK + "overrides:\n  all: {algo_cfg: {learning_rate: .inf}}\n"),
         needle="algo_cfg.learning_rate", absent=True),
    Case("run-unknown-backend", _experiment(EXP_OK + "overrides:\n  all: {sampler: {backend: warp}}\n"), needle="sampler.backend",
         absent=True),
    Case("run-parallel-zero", _experiment(EXP_OK, "--parallel", "0"), needle="--parallel", absent=True),
    Case("run-unknown-preset", lambda w, fx: (["run", "nope", "--out", str(w / "o")], w / "o"), needle="unknown experiment preset",
         absent=True),
]


#: What the forkserver imports once: the CLI and the modules its commands import when they run
#: (torch and pandas through them), most of a bad-input case's CPU time otherwise.
#: What the fork server imports once for every case: the CLI, what its commands import (the
#: environment families, the studies), and torch._dynamo, which torch.optim imports lazily when a
#: command builds an agent (about 2 s per process otherwise). Forked cases then import almost
#: nothing: about 0.05 s of work each instead of 0.7-3 s.
PRELOAD = ["rlbench.cli", "rlbench.runner", "rlbench.evaluator", "rlbench.grid", "rlbench.plan", "rlbench.analysis",
           *(f"rlbench.commands.{m}" for m in ("compare_cmd", "envs_cmd", "runs_cmd", "plan_cmd", "linreg_cmd", "maml_variants_cmd")),
           "envs.point", "envs.locomotion_batched", "envs.metaworld_fast", "torch._dynamo"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _cli(argv: list[str]) -> subprocess.CompletedProcess:
    """The real command line: a new interpreter running ``python -m rlbench.cli``."""
    return subprocess.run([sys.executable, "-m", "rlbench.cli", *argv], capture_output=True, text=True, timeout=300, env=_env(),
                          check=False)


def _main_in_child(argv: list[str], out: str, err: str, env: dict[str, str]) -> None:
    """What ``python -m rlbench.cli`` does, in a forked child: stdout and stderr to files,
    exit status from ``main`` (multiprocessing turns SystemExit into the exit code, and an
    uncaught exception into a traceback on stderr and exit 1, as the interpreter would)."""
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    from rlbench.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    # The status also goes to a file: multiprocessing's forkserver reports 255 when it loses
    # the race to read a child's status (popen_forkserver), which is not the CLI's answer.
    status = code if isinstance(code, int) else (0 if code is None else 1)
    Path(out).with_name("_status.txt").write_text(str(status))
    sys.exit(code)


def _cli_forked(ctx, argv: list[str], work: Path) -> subprocess.CompletedProcess:
    out, err, status = work / "_stdout.txt", work / "_stderr.txt", work / "_status.txt"
    status.unlink(missing_ok=True)
    p = ctx.Process(target=_main_in_child, args=(argv, str(out), str(err), _env()))
    p.start()
    p.join(300)
    if p.exitcode is None:
        p.kill()
        p.join()
    code = int(status.read_text()) if status.exists() else p.exitcode  # no file: an uncaught exception (exit 1)
    return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    """A finished and evaluated run, and a run stopped after 2 iterations (not evaluated)."""
    base = tmp_path_factory.mktemp("fixtures")
    finished, partial = base / "finished", base / "partial"
    assert main(_train_args(finished)) == 0
    assert main(["evaluate", str(finished), "--quiet"]) == 0
    assert main([*_train_args(partial), "--max-iterations", "2"]) == 0
    return {"finished": finished, "partial": partial}


@pytest.fixture(scope="module")
def results(fixtures, tmp_path_factory) -> dict[str, Case]:
    """Run every case concurrently (each in its own process) and record what it did."""
    fx = dict(fixtures)
    before_fixtures = {k: tree_hash(v) for k, v in fixtures.items()}
    prepared = []
    for case in CASES:
        work = tmp_path_factory.mktemp(case.id)
        argv, watched = case.setup(work, fx)
        io = tmp_path_factory.mktemp(f"{case.id}-io")  # its stdout and stderr files, outside what it may touch
        prepared.append((case, argv, watched, tree_hash(watched) if watched is not None and watched.exists() else None, work, io))
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    try:
        with cf.ThreadPoolExecutor(max_workers=4) as pool:
            done = list(pool.map(lambda p: _cli_forked(ctx, p[1], p[5]), prepared))
    finally:
        for h in fx.get("_holders", []):  # type: ignore[union-attr]
            h.kill()
            h.wait()
    for (case, argv, watched, before, work, _), proc in zip(prepared, done):
        after = tree_hash(watched) if watched is not None and watched.exists() else None
        case.result = {"argv": argv, "proc": proc, "before": before, "after": after, "watched": watched, "work": work}
    assert {k: tree_hash(v) for k, v in fixtures.items()} == before_fixtures  # cases work on copies
    return {c.id: c for c in CASES}


def test_the_table_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_input_ends_cleanly(results, case_id):
    case = results[case_id]
    proc, r = case.result["proc"], case.result
    err = proc.stderr.strip()
    assert proc.returncode == case.code, f"{r['argv']}: exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("rlbench: error:"), err
    assert case.needle in err, err
    if case.absent:
        assert not r["watched"].exists(), f"{r['watched']} was created"
    else:
        assert r["after"] == r["before"], f"{r['watched']} changed"
    # no temporary files of atomic writes are left anywhere the command could write
    if r["watched"] is not None and r["watched"].is_dir():
        assert not list(r["watched"].rglob(f".*{store.TMP_SUFFIX}"))


# one case per kind of failure: a bad argument, a damaged run file, a bad experiment grid
@pytest.mark.parametrize("case_id", ["unknown-env", "truncated-state", "run-duplicate-seeds"])
def test_real_command_line_agrees(results, fixtures, tmp_path, case_id):
    """The same case through ``python -m rlbench.cli`` in a new interpreter: same exit status
    and the same message (with each run's own work directory in it replaced)."""
    case = results[case_id]
    argv, _ = case.setup(tmp_path, dict(fixtures))
    real = _cli(argv)
    forked = case.result["proc"]
    assert real.returncode == forked.returncode == case.code, real.stderr
    assert real.stderr.replace(str(tmp_path), "WORK") == forked.stderr.replace(str(case.result["work"]), "WORK")
