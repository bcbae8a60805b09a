"""The README's "Adding an environment" example runs as written, so docs and code cannot drift.

The section's ```python blocks are, in order: the module (its first line names its path in
the user's package, e.g. ``# my_envs/slider.py``), the ``register_meta_env`` call that ends
that module, and the ``check_meta_env`` call. The test writes the first two, unchanged, as
that module of a package in a temporary directory (outside this repository's packages),
registers it through the ``package.module:EnvId`` spec the README's commands use, checks it,
lists it, and trains and evaluates it with the README's own ``rlbench train`` / ``rlbench
evaluate`` lines.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import envs
from envs.testing import check_meta_env, unregister_meta_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTION = "## Adding an environment"


def _section_blocks(lang: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no '{SECTION}' section"
    section = text.split(SECTION, 1)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.MULTILINE)[0]
    return re.findall(rf"^```{lang}\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


def _write_package(root: Path) -> tuple[str, str, str, str]:
    """Write the README's module (+ its register call) under ``root``; returns
    (module name, env id, the spec naming it, the check block)."""
    blocks = _section_blocks("python")
    assert len(blocks) >= 3, "expected the module, the register call and the check call as python blocks"
    module_code, register_code, check_code = blocks[0], blocks[1], blocks[2]
    first = module_code.splitlines()[0]
    match = re.fullmatch(r"# (\w+)/(\w+)\.py", first.strip())
    assert match, f"the module block must start with '# <package>/<name>.py', got {first!r}"
    package, name = match.groups()
    assert package not in ("envs", "agents", "rlbench", "studies"), "the example must live outside this repository"
    ids = re.findall(r'"(\w+/[\w-]+-v\d+)"', register_code)
    assert len(ids) == 1, f"the register block must register exactly one id, found {ids}"
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    (root / package / f"{name}.py").write_text(module_code + "\n" + register_code)
    module_name = f"{package}.{name}"
    return module_name, ids[0], f"{module_name}:{ids[0]}", check_code


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The README module as a package in tmp_path, importable; undone afterwards."""
    module_name, env_id, spec, check_code = _write_package(tmp_path)
    package = module_name.split(".")[0]
    assert env_id not in envs.env_ids(), f"{env_id} is already registered; the README example must be new"
    assert package not in sys.modules
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield env_id, spec, check_code, tmp_path
    finally:
        unregister_meta_env(env_id)
        for mod in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[mod]


def test_readme_example_registers_a_conforming_env(example, capsys):
    env_id, spec, check_code, _ = example
    e = envs.entry(spec)  # imports the user's module, which registers the environment
    assert e.env_id == env_id and env_id in envs.env_ids()
    module = sys.modules[e.entry_point.partition(":")[0]]
    assert e.horizon == module.HORIZON == module.SliderMetaEnv.horizon
    exec(compile(check_code, "README.md:check", "exec"), {})  # noqa: S102 - the README's own check call
    check_meta_env(env_id)

    from rlbench.cli import main

    bash = _section_blocks("bash")
    assert any(f"rlbench envs {spec}" in b for b in bash)
    assert main(["envs", spec]) == 0
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines() if line.strip()]
    shown = [line.rstrip() for line in _section_blocks("text")[0].splitlines() if line.strip()]
    assert printed == shown, "the README's sample output of `rlbench envs` is out of date"

    fp = envs.fingerprint(spec)
    assert fp["obs_dim"] == 2 and fp["act_dim"] == 1 and fp["horizon"] == module.HORIZON


def test_readme_example_mass_changes_dynamics(example):
    """Oracle for the example's physics: one step from rest moves x by DT^2 * F / m."""
    _, spec, _, _ = example
    env = envs.make_meta_env(spec)
    module = sys.modules[envs.entry(spec).entry_point.partition(":")[0]]
    for mass in (0.5, 2.0):
        env.set_task(module.MassTask(mass))
        (x0, _), _ = env.reset(seed=0)
        (x1, v1), r, *_ = env.step([1.0])
        assert v1 == pytest.approx(module.DT / mass)
        assert x1 - x0 == pytest.approx(module.DT**2 / mass)
        assert r == pytest.approx(-abs(x1 - module.TARGET))
    with pytest.raises(envs.InvalidTaskError):
        env.set_task(module.MassTask(5.0))


def _readme_command(verb: str) -> list[str]:
    """The README's ``rlbench <verb> ...`` line naming the example by its spec, as argv."""
    lines = [line for b in _section_blocks("bash") for line in b.splitlines() if line.startswith(f"rlbench {verb} ")]
    assert lines, f"the section shows no `rlbench {verb}` command"
    return shlex.split(lines[0])[1:]


def _with_out(argv: list[str], out: Path) -> list[str]:
    """``argv`` with its ``--out`` (train) or run directory (evaluate) moved to ``out``."""
    if "--out" in argv:
        i = argv.index("--out")
        return [*argv[:i + 1], str(out), *argv[i + 2:]]
    return [*argv[:-1], str(out)]


def test_readme_example_trains_and_evaluates_from_outside_the_repo(tmp_path):
    """`rlbench train` (one iteration) and `rlbench evaluate` on the README's environment, named
    by its package.module:EnvId spec, in fresh processes that know it only from the spec."""
    _, env_id, spec, _ = _write_package(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    train = _with_out(_readme_command("train"), run)
    assert train[train.index("--env") + 1] == spec
    small = ["--preset", "smoke", "--budget", "2000", "--max-iterations", "1", "--quiet"]  # one iteration, small rounds
    cli = [sys.executable, "-m", "rlbench.cli"]
    done = subprocess.run([*cli, *train, *small], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert env_id in done.stderr and "default" in done.stderr.lower(), "expected a notice naming the family defaults"
    from rlbench import store

    meta = store.read_meta(run)
    cfg = store.read_config(run)
    assert meta["iterations"] == 1 and meta["env_id"] == spec and cfg.sampler.horizon == 50  # the env's own
    evaluate = _with_out(_readme_command("evaluate"), run)
    done = subprocess.run([*cli, *evaluate, "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    import pandas as pd

    table = pd.read_csv(run / store.EVAL_FILE)
    assert set(table["env_id"]) == {spec} and table["checkpoint"].nunique() == len(meta["checkpoints"]) >= 1
    assert table["return"].notna().all() and (table["return"] <= 0).all()  # reward -|x - TARGET| per step
