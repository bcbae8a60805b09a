"""Meta-World v3 meta-environments: ML1 (push, reach), ML10 and ML45 (docs/protocol.md section 2).

Three pieces:

* :class:`MetaWorldTask` -- a small, picklable, hashable handle on one goal of a benchmark:
  ``(benchmark, env_name, split, index, benchmark_seed)``. It carries no Meta-World object;
  it is resolved to the package's ``metaworld.Task`` through :func:`get_benchmark`, which
  builds each benchmark once per process (ML45 takes about 30 s to build).
* :class:`MetaWorldMetaEnv` -- a :class:`~envs.base.MetaEnv` that holds ONE inner Meta-World
  environment for the class of the current task and replaces it when ``set_task`` switches
  class (ML10/ML45 mix classes; the sampler keeps one instance per class, see
  :meth:`MetaWorldMetaEnv.task_group`).
* :class:`MetaWorldTasks` -- the benchmark's train goals for meta-training and its held-out
  goals (ML1) or held-out classes (ML10/ML45) for meta-testing.

Protocol numbers that live here and nowhere else:

* :data:`DEFAULT_HORIZON` = 150 steps. The study (GS) used the old v1 environments with 150
  steps per episode; Meta-World's own limit is 500. This is a documented deviation from
  Meta-World; pass ``horizon=500`` to get the package's behaviour.
* :data:`DEFAULT_REWARD_VERSION` = "v2", Meta-World's own default. metaworld 3.x keeps two
  reward functions per class, chosen by the constructor argument ``reward_function_version``:
  "v2" (the current ones) and "v1" (the original Meta-World rewards, which the study used and
  tuned its learning rates for; the ``paper`` preset selects "v1" through ``env_kwargs``).
  The package itself does not check the value (any string but "v2" gives the v1 rewards), so
  this module does.
* :data:`SUCCESS_CRITERION` = "v2". In metaworld 3.1.1 the success flag is computed from
  quantities the reward function returns, so under "v1" rewards it changes for about a third
  of the classes (hand-insert never succeeds); this module always reports the "v2" success
  flag, so success rates mean the same under both reward versions.
* :data:`BENCHMARK_SEED`. ``metaworld.ML1/ML10/ML45`` draw their 50 goals per class from the
  global numpy RNG unless given ``seed``; without it every process (sampler workers, the
  evaluator, a resumed run) would see DIFFERENT goals under the same task index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np

from envs.base import InvalidTaskError, MetaEnv, TaskDistribution

#: Steps per episode (docs/protocol.md section 2: GS used 150 with the v1 environments; Meta-World's
#: own ``max_path_length`` is 500). A constructor argument, so configs can change it.
DEFAULT_HORIZON = 150

#: Seed passed to ``metaworld.ML1/ML10/ML45(seed=...)``: fixes every benchmark's goal positions
#: so that all processes and all runs agree on what task ``index`` means. Changing it changes
#: the benchmark (recorded by ``envs.fingerprint``). ML1 derives its test goals from seed + 1.
BENCHMARK_SEED = 0

#: Observation and action sizes of every v3 environment (goal coordinates zeroed in the ML
#: benchmarks) -- docs/protocol.md section 2.
OBS_DIM = 39
ACT_DIM = 4

#: The values of metaworld's ``reward_function_version`` constructor argument, and its default.
REWARD_VERSIONS = ("v1", "v2")
DEFAULT_REWARD_VERSION = "v2"
RewardVersion = Literal["v1", "v2"]

#: The reward version whose ``info["success"]`` this module reports under every reward version.
SUCCESS_CRITERION = "v2"

#: The benchmarks this module knows; "ML1:<env-name>" works for any v3 environment name.
BENCHMARKS = ("ML1:<env-name>", "ML10", "ML45")

Split = Literal["train", "test"]


# --------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------


def benchmark_classes(benchmark: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train class names, test class names) of ``benchmark``, without building it (cheap).

    Raises ValueError for an unknown benchmark name.
    """
    from metaworld import env_dict

    if benchmark.startswith("ML1:"):
        name = benchmark[len("ML1:"):]
        if name not in env_dict.ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World v3 environment {name!r} in benchmark {benchmark!r}")
        return (name,), (name,)
    tables = {"ML10": getattr(env_dict, "ML10_V3", None), "ML45": getattr(env_dict, "ML45_V3", None)}
    table = tables.get(benchmark)
    if table is None:
        raise ValueError(f"unknown Meta-World benchmark {benchmark!r} (known: {', '.join(BENCHMARKS)})")
    return tuple(table["train"]), tuple(table["test"])


def goals_per_class() -> int:
    """How many goals Meta-World draws per class (50 in metaworld 3.1.1); used by ``describe``."""
    import metaworld

    return int(getattr(metaworld, "_N_GOALS", 50))


def get_benchmark(benchmark: str, benchmark_seed: int = BENCHMARK_SEED) -> Any:
    """The ``metaworld.Benchmark`` for ``benchmark`` ("ML1:push-v3", "ML10", "ML45"), built once per process.

    Building draws 50 goals per class by resetting one environment per class 50 times
    (ML1 about 2 s, ML10 about 10 s, ML45 about 30 s), so the object is cached per
    (name, seed). The goals depend only on ``benchmark_seed``.
    """
    # One cache key per (name, seed) however the seed is passed: functools.cache keys on the
    # call's arguments, so get_benchmark("ML45") and get_benchmark("ML45", 42) were two builds.
    return _build_benchmark(benchmark, int(benchmark_seed))


@functools.cache
def _build_benchmark(benchmark: str, benchmark_seed: int) -> Any:
    import metaworld

    benchmark_classes(benchmark)  # validates the name with a clear message
    if benchmark.startswith("ML1:"):
        return metaworld.ML1(benchmark[len("ML1:"):], seed=int(benchmark_seed))
    return getattr(metaworld, benchmark)(seed=int(benchmark_seed))


# --------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaWorldTask:
    """One goal of a Meta-World benchmark: ``benchmark.{split}_tasks[index]`` (a ``metaworld.Task``).

    ``env_name`` is redundant with ``index`` but makes tasks readable and lets the sampler
    group tasks by class without building the benchmark. ``benchmark_seed`` is part of the
    task's identity: the same index under another seed is another goal.
    """

    benchmark: str
    env_name: str
    split: Split
    index: int
    benchmark_seed: int = BENCHMARK_SEED


def check_task(task: Any, benchmark: str, benchmark_seed: int) -> Any:
    """Validate ``task`` against (benchmark, seed) and return the ``metaworld.Task`` it names.

    Raises InvalidTaskError for a wrong type, another benchmark or seed, an unknown split,
    an out-of-range index, or an ``env_name`` that does not match the benchmark's task.
    """
    if not isinstance(task, MetaWorldTask):
        raise InvalidTaskError(f"expected a MetaWorldTask, got {type(task).__name__}")
    if task.benchmark != benchmark:
        raise InvalidTaskError(f"task of benchmark {task.benchmark!r} given to benchmark {benchmark!r}")
    if task.benchmark_seed != benchmark_seed:
        raise InvalidTaskError(
            f"task built with benchmark seed {task.benchmark_seed!r}, environment uses {benchmark_seed!r}"
        )
    if task.split not in ("train", "test"):
        raise InvalidTaskError(f"split must be 'train' or 'test', got {task.split!r}")
    if isinstance(task.index, bool) or not isinstance(task.index, (int, np.integer)):
        raise InvalidTaskError(f"index must be an int, got {type(task.index).__name__}")
    bench = get_benchmark(benchmark, benchmark_seed)
    tasks = bench.train_tasks if task.split == "train" else bench.test_tasks
    if not 0 <= int(task.index) < len(tasks):
        raise InvalidTaskError(f"{task.split} task index {task.index} out of range [0, {len(tasks)}) for {benchmark}")
    mw_task = tasks[int(task.index)]
    if mw_task.env_name != task.env_name:
        raise InvalidTaskError(
            f"{benchmark} {task.split} task {task.index} is {mw_task.env_name!r}, not {task.env_name!r}"
        )
    return mw_task


# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------


def success_flag(inner: Any, obs: np.ndarray, action: np.ndarray) -> float:
    """The :data:`SUCCESS_CRITERION` success flag of Meta-World env ``inner`` at its current state.

    ``obs`` and ``action`` are what ``inner.step`` just returned and received. Runs the
    package's own ``evaluate_state`` with the reward version switched for the call (the
    simulator state is not touched; only the ``success`` entry is used).
    """
    version = inner.reward_function_version
    inner.reward_function_version = SUCCESS_CRITERION
    try:
        _, info = inner.evaluate_state(obs, action)
    finally:
        inner.reward_function_version = version
    return float(bool(info["success"]))


class MetaWorldMetaEnv(MetaEnv):
    """A Meta-World benchmark as one task-settable environment.

    Holds one inner Meta-World environment for the class of the current task (built lazily,
    rebuilt when ``set_task`` switches class). ``step`` returns the inner environment's
    observation (39,) and reward, ``terminated`` as the inner env reports it (always False
    in v3), ``truncated`` True at the horizon, and ``info`` with ``"success"`` as a float
    0.0/1.0. Actions are clipped to [-1, 1]^4. ``reset`` before any ``set_task`` uses the
    benchmark's first training task.

    ``reward_function_version`` ("v1" or "v2", default "v2") is passed to every inner
    Meta-World environment: it selects the reward function only. Observations and dynamics do
    not depend on it; ``info["success"]`` is always the package's "v2" flag
    (:data:`SUCCESS_CRITERION`), recomputed from the same state when the rewards are "v1"
    (the rest of ``info`` is the package's, for the chosen version).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    family = "metaworld"

    def __init__(
        self,
        benchmark: str,
        horizon: int = DEFAULT_HORIZON,
        benchmark_seed: int = BENCHMARK_SEED,
        reward_function_version: RewardVersion = DEFAULT_REWARD_VERSION,
        **_: object,
    ):
        if reward_function_version not in REWARD_VERSIONS:
            raise ValueError(
                f"reward_function_version must be one of {', '.join(REWARD_VERSIONS)}, got {reward_function_version!r}"
            )
        self.train_classes, self.test_classes = benchmark_classes(benchmark)  # cheap; no build
        self.benchmark = benchmark
        self.benchmark_seed = int(benchmark_seed)
        self.reward_function_version: str = reward_function_version
        self._horizon = 0
        self._inner: Any = None
        self._inner_name: str | None = None
        self._task: MetaWorldTask | None = None
        self._t = 0
        self._needs_reset = True
        self.horizon = horizon
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACT_DIM,), dtype=np.float32)

    # -- horizon -------------------------------------------------------------------
    @property
    def horizon(self) -> int:
        """Steps per episode; also the inner environment's ``max_path_length``."""
        return self._horizon

    @horizon.setter
    def horizon(self, value: int) -> None:
        value = int(value)
        if value < 1:
            raise ValueError(f"horizon must be >= 1, got {value}")
        self._horizon = value
        if self._inner is not None:
            self._inner.max_path_length = value

    # -- inner environment ---------------------------------------------------------
    def _ensure_inner(self, env_name: str) -> Any:
        """The inner environment for class ``env_name``, (re)built if the class changed."""
        if self._inner is None or self._inner_name != env_name:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS

            if self._inner is not None:
                self._inner.close()
            self._inner = ALL_V3_ENVIRONMENTS[env_name](reward_function_version=self.reward_function_version)
            self._inner.max_path_length = self._horizon
            self._inner_name = env_name
            self._needs_reset = True
        return self._inner

    @property
    def dt(self) -> float:
        """Seconds per environment step (physics timestep x frame_skip of the Sawyer model)."""
        inner = self._inner if self._inner is not None else self._ensure_inner(self.train_classes[0])
        return float(inner.dt)

    # -- MetaEnv -------------------------------------------------------------------
    def set_task(self, task: MetaWorldTask) -> None:
        mw_task = check_task(task, self.benchmark, self.benchmark_seed)
        self._ensure_inner(task.env_name).set_task(mw_task)
        self._task = task
        self._needs_reset = True

    def get_task(self) -> MetaWorldTask | None:
        return self._task

    def task_group(self, task: MetaWorldTask) -> str:
        """Tasks of the same class share one instance (switching class rebuilds the inner env)."""
        return task.env_name

    def protocol(self) -> dict[str, Any]:
        """The protocol choices this environment embodies (for ``envs.fingerprint``)."""
        return {
            "benchmark": self.benchmark,
            "benchmark_seed": self.benchmark_seed,
            "horizon": self.horizon,
            "default_horizon": DEFAULT_HORIZON,
            "reward_function_version": self.reward_function_version,
            "success_criterion": SUCCESS_CRITERION,
            "train_classes": list(self.train_classes),
            "test_classes": list(self.test_classes),
            "goals_per_class": goals_per_class(),
            "partially_observable": True,
        }

    # -- gymnasium -----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode of the current task (Meta-World resets are deterministic given the task)."""
        super().reset(seed=seed)
        if self._task is None:
            bench = get_benchmark(self.benchmark, self.benchmark_seed)
            self.set_task(MetaWorldTask(self.benchmark, bench.train_tasks[0].env_name, "train", 0, self.benchmark_seed))
        obs, info = self._inner.reset()
        self._t = 0
        self._needs_reset = False
        return np.array(obs, dtype=np.float64), dict(info)

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("call reset() after construction, set_task() or the end of an episode")
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(ACT_DIM), -1.0, 1.0)
        obs, reward, terminated, truncated, info = self._inner.step(a)
        self._t += 1
        truncated = bool(truncated) or self._t >= self._horizon
        info = dict(info)
        info["success"] = self._success(info, obs, a)
        terminated = self._terminated(bool(terminated), info)
        if terminated or truncated:
            self._needs_reset = True
        return np.array(obs, dtype=np.float64), float(reward), terminated, truncated, info

    def _terminated(self, terminated: bool, info: dict) -> bool:
        """Whether the step ends the episode by termination (never, in Meta-World v3)."""
        return terminated

    def _success(self, info: dict, obs: np.ndarray, a: np.ndarray) -> float:
        """The step's success flag, always by the :data:`SUCCESS_CRITERION` (the package's v1
        environments derive ``info["success"]`` from their own reward branch)."""
        if self.reward_function_version != SUCCESS_CRITERION and not self._inner._did_see_sim_exception:
            return success_flag(self._inner, obs, a)
        return float(bool(info.get("success", 0.0)))

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None
            self._inner_name = None
        super().close()


# --------------------------------------------------------------------------------------
# Task distribution
# --------------------------------------------------------------------------------------


class MetaWorldTasks(TaskDistribution):
    """Train goals for meta-training, the benchmark's held-out goals/classes for meta-testing.

    Sampling is uniform over the benchmark's task list of the split (for ML10/ML45 that is
    uniform over classes too: every class has the same number of goals), without
    replacement when ``n`` does not exceed the list, with replacement otherwise.
    """

    has_split = True

    def __init__(self, benchmark: str, benchmark_seed: int = BENCHMARK_SEED):
        self.train_classes, self.test_classes = benchmark_classes(benchmark)
        self.benchmark = benchmark
        self.benchmark_seed = int(benchmark_seed)

    def _draw(self, split: Split, n: int, rng: np.random.Generator) -> list[MetaWorldTask]:
        bench = get_benchmark(self.benchmark, self.benchmark_seed)
        pool = bench.train_tasks if split == "train" else bench.test_tasks
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        idx = rng.choice(len(pool), size=n, replace=n > len(pool))
        return [
            MetaWorldTask(self.benchmark, pool[int(i)].env_name, split, int(i), self.benchmark_seed) for i in idx
        ]

    def sample(self, n: int, rng: np.random.Generator) -> list[MetaWorldTask]:
        return self._draw("train", n, rng)

    def test_tasks(self, n: int, rng: np.random.Generator) -> list[MetaWorldTask]:
        return self._draw("test", n, rng)

    def all_tasks(self, split: Split) -> list[MetaWorldTask]:
        """Every task of ``split``, in the benchmark's order."""
        bench = get_benchmark(self.benchmark, self.benchmark_seed)
        pool = bench.train_tasks if split == "train" else bench.test_tasks
        return [MetaWorldTask(self.benchmark, t.env_name, split, i, self.benchmark_seed) for i, t in enumerate(pool)]

    def describe(self) -> str:
        """What varies, computed from the class tables (does not build the benchmark)."""
        g = goals_per_class()
        if self.benchmark.startswith("ML1:"):
            return f"{self.train_classes[0]}: {g} train goals / {g} held-out goals"
        return (
            f"{len(self.train_classes)} train classes x {g} goals / {len(self.test_classes)} held-out classes x {g} goals: "
            + ", ".join(self.test_classes)
        )

    def split_description(self) -> str:
        return "held-out goals" if self.benchmark.startswith("ML1:") else "held-out classes"

    def validate(self, task: Any) -> None:
        check_task(task, self.benchmark, self.benchmark_seed)
