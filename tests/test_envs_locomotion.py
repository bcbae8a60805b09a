"""The four MuJoCo locomotion meta-environments against docs/protocol.md section 2.

Every expected number and formula below is written out from the protocol text, not read
from envs.locomotion: the tests are oracles for that module, so they must not share its
constants.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import gymnasium
import mujoco
import numpy as np
import pytest

import envs
from envs.base import InvalidTaskError, UnknownEnvError
from envs.locomotion import RandParamsTask, VelocityTask

pytestmark = pytest.mark.mujoco

ASSETS = Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets"

# docs/protocol.md section 2, written out.
PROTOCOL = {
    "HalfCheetahRandVel": {"xml": "half_cheetah.xml", "timestep": 0.01, "frame_skip": 5, "dt": 0.05, "obs": 17, "clip": None},
    "Walker2DRandVel": {"xml": "walker2d.xml", "timestep": 0.002, "frame_skip": 8, "dt": 0.016, "obs": 17, "clip": 10.0},
    "HopperRandParams": {"xml": "hopper.xml", "timestep": 0.004, "frame_skip": 4, "dt": 0.016, "obs": 11, "clip": 10.0},
    "Walker2DRandParams": {"xml": "walker2d.xml", "timestep": 0.004, "frame_skip": 4, "dt": 0.016, "obs": 17, "clip": 10.0},
}
NAMES = list(PROTOCOL)


def protocol_reward(name: str, v: float, a: np.ndarray, goal: float | None) -> float:
    """Reward per step, docs/protocol.md section 2 table."""
    if name == "HalfCheetahRandVel":
        return -abs(v - goal) - 0.05 * float(a @ a)
    if name == "Walker2DRandVel":
        return -abs(v - goal) + 15.0 - 1e-3 * float(a @ a)
    return v + 1.0 - 1e-3 * float(a @ a)  # HopperRandParams, Walker2DRandParams


def protocol_terminated(name: str, qpos: np.ndarray, qvel: np.ndarray) -> bool:
    """Episode end rule, docs/protocol.md section 2 table (qpos = [rootx, rootz, rooty, ...])."""
    height, angle = qpos[1], qpos[2]
    if name == "HalfCheetahRandVel":
        return False
    if name.startswith("Walker2D"):
        return not (0.8 < height < 2.0 and -1.0 < angle < 1.0)
    s = np.concatenate([qpos, qvel])
    return not (np.isfinite(s).all() and (np.abs(s[2:]) < 100).all() and height > 0.7 and abs(angle) < 0.2)


def env_id(name: str) -> str:
    return f"rlbench/{name}-v0"


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


def make(name: str):
    return envs.make_meta_env(env_id(name))


def some_task(name: str, seed: int = 0):
    return envs.get_task_distribution(env_id(name)).sample(1, np.random.default_rng(seed))[0]


def test_timing_constants_match_protocol(name):
    env = make(name)
    p = PROTOCOL[name]
    assert env.model.opt.timestep == pytest.approx(p["timestep"], abs=1e-12)
    assert env.frame_skip == p["frame_skip"]
    assert env.dt == pytest.approx(p["dt"], abs=1e-12)
    assert env.horizon == 200
    assert envs.entry(env_id(name)).max_episode_steps == 200
    assert env.observation_space.shape == (p["obs"],)
    assert env.action_space.shape == (env.model.nu,)
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)


def test_reward_matches_protocol_formula(name):
    env = make(name)
    task = some_task(name)
    env.set_task(task)
    env.reset(seed=3)
    rng = np.random.default_rng(4)
    goal = task.goal_velocity if isinstance(task, VelocityTask) else None
    dt = PROTOCOL[name]["dt"]
    for _ in range(20):
        a = rng.uniform(-1.0, 1.0, size=env.action_space.shape)
        x_before = float(env.data.qpos[0])
        _, r, terminated, _, _ = env.step(a)
        v = (float(env.data.qpos[0]) - x_before) / dt
        assert r == pytest.approx(protocol_reward(name, v, a, goal), rel=1e-9, abs=1e-9)
        if terminated:
            break


def test_goal_velocity_changes_reward_only():
    """Rand-vel: same state, two goals -> rewards differ by exactly the |v - g| terms."""
    env = make("HalfCheetahRandVel")
    a = np.full(env.action_space.shape, 0.3)
    out = []
    for g in (0.5, 2.5):
        env.set_task(VelocityTask(g))
        env.reset(seed=1)
        x0 = float(env.data.qpos[0])
        obs, r, *_ = env.step(a)
        out.append((obs, r, (float(env.data.qpos[0]) - x0) / 0.05))
    (o1, r1, v1), (o2, r2, v2) = out
    np.testing.assert_array_equal(o1, o2)
    assert v1 == v2
    assert r1 - r2 == pytest.approx(-abs(v1 - 0.5) + abs(v1 - 2.5), abs=1e-9)


# (name, qpos overrides {index: value}, qvel overrides, expected terminated from the protocol)
UNHEALTHY_CASES = [
    ("HalfCheetahRandVel", {1: -0.5, 2: 2.0}, {}, False),
    ("Walker2DRandVel", {1: 0.5}, {}, True),
    ("Walker2DRandVel", {1: 2.5}, {}, True),
    ("Walker2DRandVel", {2: 1.5}, {}, True),
    ("Walker2DRandParams", {1: 0.5}, {}, True),
    ("Walker2DRandParams", {2: -1.5}, {}, True),
    ("HopperRandParams", {1: 0.5}, {}, True),
    ("HopperRandParams", {2: 0.5}, {}, True),
    ("HopperRandParams", {}, {3: 500.0}, True),
    ("Walker2DRandVel", {}, {}, False),
    ("HopperRandParams", {}, {}, False),
]


@pytest.mark.parametrize("name,qpos_set,qvel_set,expected", UNHEALTHY_CASES)
def test_termination_matches_protocol_rule(name, qpos_set, qvel_set, expected):
    env = make(name)
    env.set_task(some_task(name))
    env.reset(seed=0)
    qpos, qvel = env.data.qpos.copy(), env.data.qvel.copy()
    for i, v in qpos_set.items():
        qpos[i] = v
    for i, v in qvel_set.items():
        qvel[i] = v
    env.set_state(qpos, qvel)
    _, _, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape))
    oracle = protocol_terminated(name, env.data.qpos.copy(), env.data.qvel.copy())
    assert oracle == expected  # the case drives the env where we meant it to
    assert terminated == oracle
    assert truncated is False


def test_observation_layout(name):
    env = make(name)
    env.set_task(some_task(name))
    env.reset(seed=0)
    qvel = env.data.qvel.copy()
    qvel[:] = np.linspace(-40.0, 40.0, qvel.size)  # well outside the +-10 clip
    env.set_state(env.data.qpos.copy(), qvel)
    obs, *_ = env.step(np.zeros(env.action_space.shape))
    qpos, qvel = env.data.qpos.copy(), env.data.qvel.copy()
    clip = PROTOCOL[name]["clip"]
    expected_vel = qvel if clip is None else np.clip(qvel, -clip, clip)
    np.testing.assert_array_equal(obs, np.concatenate([qpos[1:], expected_vel]))
    assert obs.shape == (PROTOCOL[name]["obs"],)
    if clip is not None:
        assert np.abs(qvel).max() > clip  # the clip was exercised


def test_reset_noise_bounds(name):
    env = make(name)
    env.set_task(some_task(name))
    fresh = mujoco.MjModel.from_xml_path(str(ASSETS / PROTOCOL[name]["xml"]))
    dq, dv = [], []
    for seed in range(40):
        env.reset(seed=seed)
        dq.append(env.data.qpos - fresh.qpos0)
        dv.append(env.data.qvel.copy())  # initial velocity is zero in these models
    dq, dv = np.array(dq), np.array(dv)
    if name == "HalfCheetahRandVel":  # qpos + U(-0.1, 0.1), qvel + 0.1 * N(0, 1)
        assert np.abs(dq).max() <= 0.1 and np.abs(dq).max() > 0.05
        assert 0.08 < dv.std() < 0.12
        assert np.abs(dv).max() > 0.1  # Gaussian, not uniform in [-0.1, 0.1]
    else:  # qpos and qvel + U(-0.005, 0.005)
        assert np.abs(dq).max() <= 0.005 and np.abs(dq).max() > 0.004
        assert np.abs(dv).max() <= 0.005 and np.abs(dv).max() > 0.004
    env.reset(seed=5)
    a = env.data.qpos.copy()
    env.reset(seed=5)
    np.testing.assert_array_equal(a, env.data.qpos)


RAND_PARAMS = ["HopperRandParams", "Walker2DRandParams"]
# base ** U(-3, 3) per element (docs/protocol.md section 2)
BOUNDS = {"body_mass": 1.5**3, "body_inertia": 1.5**3, "geom_friction": 1.5**3, "dof_damping": 1.3**3}


@pytest.mark.parametrize("name", RAND_PARAMS)
def test_rand_params_multipliers_in_range_and_spread(name):
    tasks = envs.get_task_distribution(env_id(name)).sample(20, np.random.default_rng(0))
    for field, hi in BOUNDS.items():
        m = np.concatenate([np.asarray(getattr(t, field)) for t in tasks])
        assert m.min() >= 1.0 / hi - 1e-12 and m.max() <= hi + 1e-12, field
        # log-uniform over the whole range: both ends are reached in 20 x n draws
        assert m.min() < 1.0 / hi * 1.3 and m.max() > hi / 1.3, field
        assert np.isclose(np.log(m).mean(), 0.0, atol=0.3 * np.log(hi)), field


@pytest.mark.parametrize("name", RAND_PARAMS)
def test_rand_params_apply_to_original_values_without_compounding(name):
    env = make(name)
    fresh = mujoco.MjModel.from_xml_path(str(ASSETS / PROTOCOL[name]["xml"]))
    a_task, b_task = envs.get_task_distribution(env_id(name)).sample(2, np.random.default_rng(1))
    for task in (a_task, b_task, a_task, a_task):
        env.set_task(task)
    for field in BOUNDS:
        original = getattr(fresh, field)
        expected = original * np.asarray(getattr(a_task, field)).reshape(original.shape)
        np.testing.assert_allclose(getattr(env.model, field), expected, rtol=1e-12, atol=0, err_msg=field)
    # the timestep is not a task parameter and stays at the protocol value
    assert env.model.opt.timestep == PROTOCOL[name]["timestep"]


def test_task_sampling_is_deterministic_given_rng(name):
    dist = envs.get_task_distribution(env_id(name))
    a = dist.sample(4, np.random.default_rng(11))
    assert a == dist.sample(4, np.random.default_rng(11))
    assert a != dist.sample(4, np.random.default_rng(12))
    assert dist.test_tasks(4, np.random.default_rng(11)) == a  # no split: same distribution
    assert not dist.has_split
    assert pickle.loads(pickle.dumps(a)) == a


@pytest.mark.parametrize("name,low,high", [("HalfCheetahRandVel", 0.0, 3.0), ("Walker2DRandVel", 0.0, 10.0)])
def test_goal_velocity_range(name, low, high):
    goals = np.array([t.goal_velocity for t in envs.get_task_distribution(env_id(name)).sample(500, np.random.default_rng(0))])
    assert goals.min() >= low and goals.max() <= high
    assert goals.min() < low + 0.05 * (high - low) and goals.max() > high - 0.05 * (high - low)


def test_invalid_tasks_raise():
    cheetah = make("HalfCheetahRandVel")
    with pytest.raises(InvalidTaskError):
        cheetah.set_task(VelocityTask(99.0))
    with pytest.raises(InvalidTaskError):
        cheetah.set_task(VelocityTask(float("nan")))
    with pytest.raises(InvalidTaskError):
        cheetah.set_task("fast")
    hopper = make("HopperRandParams")
    good = some_task("HopperRandParams")
    hopper.set_task(good)
    mass = hopper.model.body_mass.copy()
    with pytest.raises(InvalidTaskError):
        hopper.set_task(VelocityTask(1.0))
    with pytest.raises(InvalidTaskError):
        hopper.set_task(RandParamsTask(good.body_mass[:-1], good.body_inertia, good.geom_friction, good.dof_damping))
    with pytest.raises(InvalidTaskError):
        hopper.set_task(RandParamsTask((10.0,) * len(good.body_mass), good.body_inertia, good.geom_friction, good.dof_damping))
    # a rejected task changes nothing
    assert hopper.get_task() == good
    np.testing.assert_array_equal(hopper.model.body_mass, mass)


def test_unknown_env_id_lists_known_ids():
    with pytest.raises(UnknownEnvError) as err:
        envs.make_meta_env("rlbench/Bogus-v0")
    message = str(err.value)
    assert "rlbench/Bogus-v0" in message
    for known in envs.env_ids():
        assert known in message
    with pytest.raises(UnknownEnvError):
        envs.get_task_distribution("rlbench/Bogus-v0")


def test_cli_unknown_env_exits_2_with_one_line(capsys):
    from rlbench.cli import main

    assert main(["envs", "bogus"]) == 2  # in this process; tests/test_hostile.py runs an unknown env through a new interpreter
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("rlbench: error:") and "bogus" in lines[0]
    assert "rlbench/HalfCheetahRandVel-v0" in lines[0]
    assert out.out == ""


def test_cli_lists_locomotion_envs(capsys):
    from rlbench.cli import main

    ids = [env_id(n) for n in NAMES]
    assert main(["envs", *ids]) == 0
    out = capsys.readouterr().out
    for i, n in zip(ids, NAMES):
        line = next(row for row in out.splitlines() if row.startswith(i))
        assert str(PROTOCOL[n]["obs"]) in line.split() and "200" in line.split()


def test_fingerprint_records_protocol_numbers(name):
    import json

    fp = envs.fingerprint(env_id(name))
    assert json.loads(json.dumps(fp)) == fp
    p = PROTOCOL[name]
    assert fp["env_id"] == env_id(name) and fp["family"] == "locomotion" and fp["version"] == 0
    assert fp["dt"] == pytest.approx(p["dt"]) and fp["obs_dim"] == p["obs"] and fp["horizon"] == 200
    assert fp["protocol"]["timestep"] == p["timestep"] and fp["protocol"]["frame_skip"] == p["frame_skip"]
    assert fp["protocol"]["xml"] == p["xml"] and fp["protocol"]["obs_qvel_clip"] == p["clip"]
    assert set(fp["packages"]) >= {"mujoco", "gymnasium", "metaworld", "numpy"}
    assert fp["packages"]["mujoco"] == mujoco.__version__
    assert envs.fingerprint(env_id(name), horizon=300)["horizon"] == 300
