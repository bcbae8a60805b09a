"""Environments from anywhere (envs.registry): ``package.module:EnvId`` specs, the
``rlbench.envs`` entry-point group, and one horizon per environment (its registry entry).

The user packages here are written to a temporary directory outside this repository's
packages; the entry-point package is a real (tiny) installed distribution: a ``.dist-info``
folder on ``sys.path``, found by ``importlib.metadata`` exactly as pip's would be.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from pathlib import Path

import pytest

import envs
from envs import registry
from envs.testing import unregister_meta_env
from rlbench import cli, presets
from rlbench.protocol import FamilyDefaults

USER_MODULE = '''
from envs import register_meta_env

ENV_ID = "{ns}/Point-v0"
OTHER_ID = "{ns}/PointOther-v0"
register_meta_env(ENV_ID, "envs.point:PointGoalMetaEnv", "envs.point:PointGoalTasks", max_episode_steps=20)

NOT_AN_ENV = 3


def make_other():
    register_meta_env(OTHER_ID, "envs.point:PointGoalMetaEnv", "envs.point:PointGoalTasks", max_episode_steps=20)
    return OTHER_ID


def returns_junk():
    return "nope"
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user module (unique name) on sys.path; its ids are unregistered afterwards."""
    name = f"user_envs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE.format(ns=name))
    (tmp_path / f"{name}_broken.py").write_text("raise RuntimeError('the user module is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for env_id in (f"{name}/Point-v0", f"{name}/PointOther-v0"):
        unregister_meta_env(env_id)
    for mod in (name, f"{name}_broken"):
        sys.modules.pop(mod, None)


def test_spec_imports_the_module_and_resolves_the_id(user_module):
    env_id = f"{user_module}/Point-v0"
    spec = f"{user_module}:{env_id}"
    assert env_id not in registry._REGISTRY and user_module not in sys.modules
    assert envs.resolve(spec) == env_id and envs.entry(spec).env_id == env_id
    assert env_id in envs.env_ids()
    env = envs.make(spec)
    assert env.spec.id == env_id and env.spec.max_episode_steps == 20
    assert envs.make_meta_env(spec).horizon == 20
    assert envs.fingerprint(spec)["env_id"] == spec  # what the run names, as it named it
    # a factory: a function of the module that registers an environment and returns its id
    assert envs.entry(f"{user_module}:make_other").env_id == f"{user_module}/PointOther-v0"


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module_rlbench_test:X-v0", "cannot import module 'no_such_module_rlbench_test'"),
    ("{m}:Missing-v0", "module '{m}' registers no meta-environment 'Missing-v0' and has no attribute 'Missing-v0'"),
    ("{m}:NOT_AN_ENV", "{m}.NOT_AN_ENV is not a meta-environment (a int;"),
    ("{m}:returns_junk", "{m}.returns_junk() returned 'nope', not the id of a registered meta-environment"),
    ("{m}_broken:X-v0", "importing module '{m}_broken' failed: RuntimeError: the user module is broken"),
    (":X-v0", "must be package.module:EnvId"),
])
def test_bad_specs_are_one_line_errors_with_exit_status_2(user_module, tmp_path, capsys, spec, message):
    spec, message = spec.format(m=user_module), message.format(m=user_module)
    out = tmp_path / "run"
    for argv in (["train", "--env", spec, "--algo", "drs-ppo", "--out", str(out)], ["envs", spec]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("rlbench: error: "), err
        assert message in err, err
    assert not out.exists()


def test_unknown_plain_id_names_the_spec_form():
    with pytest.raises(envs.UnknownEnvError, match=r"unknown environment 'nobody/Nothing-v0' .*package.module:EnvId"):
        envs.entry("nobody/Nothing-v0")


def _install_plugin(site: Path, dist: str, entry_points: str, package: str, code: str) -> None:
    """A minimal installed distribution: its package and a .dist-info with entry points."""
    (site / package).mkdir()
    (site / package / "__init__.py").write_text(code)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{envs.ENTRY_POINT_GROUP}]\n{entry_points}")


def test_entry_point_group_registers_plain_ids(tmp_path, monkeypatch):
    pkg = f"plug_{uuid.uuid4().hex[:8]}"
    code = (f"from envs import register_meta_env\n"
            f"register_meta_env('{pkg}/A-v0', 'envs.point:PointGoalMetaEnv', 'envs.point:PointGoalTasks', "
            f"max_episode_steps=20)\n"
            f"def register():\n"
            f"    register_meta_env('{pkg}/B-v0', 'envs.point:PointGoalMetaEnv', 'envs.point:PointGoalTasks', "
            f"max_episode_steps=20)\n")
    _install_plugin(tmp_path, f"{pkg}-dist", f"a = {pkg}\nb = {pkg}:register\n", pkg, code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert f"{pkg}/A-v0" not in registry._REGISTRY
        assert envs.entry(f"{pkg}/A-v0").env_id == f"{pkg}/A-v0"  # a module entry point: its import registers
        assert envs.entry(f"{pkg}/B-v0").horizon == 20  # a module:function entry point: called
        assert {f"{pkg}/A-v0", f"{pkg}/B-v0"} <= set(envs.env_ids())
    finally:
        for env_id in (f"{pkg}/A-v0", f"{pkg}/B-v0"):
            unregister_meta_env(env_id)
        sys.modules.pop(pkg, None)


def test_broken_entry_point_is_named_on_one_line(tmp_path, monkeypatch, capsys):
    pkg = f"plug_{uuid.uuid4().hex[:8]}"
    _install_plugin(tmp_path, f"{pkg}-dist", f"broken = {pkg}\n", pkg, "raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert cli.main(["envs", "nobody/Nothing-v0"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"entry point 'broken = {pkg}' of group rlbench.envs failed to load: ImportError: missing dependency xyz" in err
        assert envs.entry("rlbench/PointGoal-v0").horizon == 20  # registered ids never load the group
    finally:
        sys.modules.pop(pkg, None)


def test_experiment_file_with_a_bad_spec_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\nenvs: [no_such_module_rlbench_test:X-v0]\nalgos: [drs-ppo]\nseeds: [1]\n")
    assert cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--yes"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot import module 'no_such_module_rlbench_test'" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- one horizon per environment


def test_horizon_comes_from_the_registry_entry_only():
    """Every registered environment: the run config's horizon is its registry entry's, which
    is the environment module's own constant (docs/protocol.md section 2: 200 locomotion, 150
    Meta-World); the family table holds no horizon."""
    from envs import locomotion, meta_world, point

    assert "horizon" not in {f.name for f in dataclasses.fields(FamilyDefaults)}
    own = {"envs.locomotion:LocomotionMetaEnv": lambda e: locomotion.SPECS[e.kwargs["name"]].horizon,
           "envs.meta_world:MetaWorldMetaEnv": lambda e: meta_world.DEFAULT_HORIZON,
           "envs.point:PointGoalMetaEnv": lambda e: point.HORIZON}
    builtin = [i for i in envs.env_ids() if i.startswith("rlbench/")]
    assert len(builtin) == 9
    for env_id in builtin:
        e = envs.entry(env_id)
        assert e.horizon == own[e.entry_point](e), env_id
        for algo in ("drs-ppo", "promp"):
            assert presets.run_config(env_id, algo, 1).sampler.horizon == e.horizon


def test_a_changed_registry_horizon_reaches_the_run_config(monkeypatch):
    """The registry entry is the source: change it and the run follows, whatever the family."""
    e = envs.entry("rlbench/PointGoal-v0")
    monkeypatch.setitem(registry._REGISTRY, e.env_id, dataclasses.replace(e, max_episode_steps=7))
    cfg = presets.run_config(e.env_id, "drs-ppo", 1)
    assert cfg.sampler.horizon == 7 and cfg.sampler.unit_steps == cfg.sampler.meta_batch_size * cfg.sampler.episodes_per_task * 7


def test_unknown_family_is_a_config_error(monkeypatch):
    e = envs.entry("rlbench/PointGoal-v0")
    monkeypatch.setitem(registry._REGISTRY, e.env_id, dataclasses.replace(e, family="underwater"))
    with pytest.raises(presets.ConfigError, match="family 'underwater', which has no defaults"):
        presets.run_config(e.env_id, "drs-ppo", 1)
