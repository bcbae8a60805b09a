"""The README's "Adding an environment" example runs as written, so docs and code cannot drift.

The section's ```python blocks are, in order: the module (its first line names its path,
e.g. ``# envs/slider.py``), the ``register_meta_env`` call, and the ``check_meta_env`` call.
The test loads the first as that module, executes the others, then checks the registered id
itself and lists it through the command line.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

import envs
from envs.testing import check_meta_env, unregister_meta_env

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Adding an environment"


def _section_blocks(lang: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no '{SECTION}' section"
    section = text.split(SECTION, 1)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.MULTILINE)[0]
    return re.findall(rf"^```{lang}\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture
def example():
    """Load the README module and registration; undo both afterwards."""
    blocks = _section_blocks("python")
    assert len(blocks) >= 3, "expected the module, the register call and the check call as python blocks"
    module_code, register_code, check_code = blocks[0], blocks[1], blocks[2]
    first = module_code.splitlines()[0]
    match = re.fullmatch(r"# (envs/\w+)\.py", first.strip())
    assert match, f"the module block must start with '# envs/<name>.py', got {first!r}"
    module_name = match.group(1).replace("/", ".")
    ids = re.findall(r'"(rlbench/[\w-]+-v\d+)"', register_code)
    assert len(ids) == 1, f"the register block must register exactly one id, found {ids}"
    env_id = ids[0]
    assert env_id not in envs.env_ids(), f"{env_id} is already registered; the README example must be new"
    assert module_name not in sys.modules

    spec = importlib.util.spec_from_loader(module_name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        exec(compile(module_code, f"README.md:{module_name}", "exec"), module.__dict__)  # noqa: S102
        exec(compile(register_code, "README.md:register", "exec"), {"register_meta_env": envs.register_meta_env})  # noqa: S102
        yield env_id, module, check_code
    finally:
        unregister_meta_env(env_id)
        sys.modules.pop(module_name, None)


def test_readme_example_registers_a_conforming_env(example, capsys):
    env_id, module, check_code = example
    assert env_id in envs.env_ids()
    assert envs.entry(env_id).max_episode_steps == module.HORIZON  # as the README says it must
    exec(compile(check_code, "README.md:check", "exec"), {})  # noqa: S102 - the README's own check call
    check_meta_env(env_id)

    from rlbench.cli import main

    bash = _section_blocks("bash")
    assert any(f"rlbench envs {env_id}" in b for b in bash)
    assert main(["envs", env_id]) == 0
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines() if line.strip()]
    shown = [line.rstrip() for line in _section_blocks("text")[0].splitlines() if line.strip()]
    assert printed == shown, "the README's sample output of `rlbench envs` is out of date"

    fp = envs.fingerprint(env_id)
    assert fp["obs_dim"] == 2 and fp["act_dim"] == 1 and fp["horizon"] == module.HORIZON


def test_readme_example_mass_changes_dynamics(example):
    """Oracle for the example's physics: one step from rest moves x by DT^2 * F / m."""
    env_id, module, _ = example
    env = envs.make_meta_env(env_id)
    for mass in (0.5, 2.0):
        env.set_task(module.MassTask(mass))
        (x0, _), _ = env.reset(seed=0)
        (x1, v1), r, *_ = env.step([1.0])
        assert v1 == pytest.approx(module.DT / mass)
        assert x1 - x0 == pytest.approx(module.DT**2 / mass)
        assert r == pytest.approx(-abs(x1 - module.TARGET))
    with pytest.raises(envs.InvalidTaskError):
        env.set_task(module.MassTask(5.0))
