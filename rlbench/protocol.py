"""The harness's numbers of the study (docs/protocol.md sections 3-7).

Environment physics, rewards and horizons live with each environment (envs/locomotion.py
``SPECS``, envs/meta_world.py); the baseline's feature constants live in
agents/advantages.py; the learner constants shared by every algorithm are defined in
agents/config.py (re-exported below); the per-environment tuned values of the authors' code
(GS) are one table per algorithm, agents/hyperparams/<algo>.yaml, read through
agents.registry. Here: the per-family sampling unit, network, budget, checkpoints and
meta-test size, and the meta-test constants. The config dataclasses (rlbench/settings.py)
take their defaults from here and rlbench/presets.py builds run configs from these tables.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- shared by every algorithm: defined with the agents (agents/config.py), re-exported here ------
from agents.config import (  # noqa: F401
    ACTION_SCALE,
    BACKTRACK_RATIO,
    BASELINE_REG,
    CG_DAMPING,
    CG_ITERS,
    GAE_LAMBDA,
    GAMMA,
    HF_DELTA,
    HIDDEN_SIZES,
    INIT_STD,
    MAX_BACKTRACKS,
    PPO_CLIP,
)

# -- meta-test and checkpoints (docs/protocol.md sections 5-6) --------------------------------------
TEST_UPDATES = 5  # meta-test adaptation steps (returns recorded at t = 0..5)
N_CHECKPOINTS = 21  # checkpoints per paper run, including checkpoint 0 (GS summary.py: 0..20)
TASK_CHUNK = 40  # meta-test tasks sampled together (speed and memory only: results do not depend on it)


@dataclass(frozen=True)
class FamilyDefaults:
    """Sampling unit, network, budget and checkpoints per environment family (docs/protocol.md 4-6)."""

    meta_batch_size: int
    episodes_per_task: int
    horizon: int
    hidden_sizes: tuple[int, ...]
    budget: int  # env steps per run (equal for every algorithm)
    n_checkpoints: int  # including checkpoint 0
    eval_tasks: int  # T meta-test tasks (GS used 1000; see README "Protocol choices")
    torch_threads: int  # learner threads, fixed per family so results never depend on --workers or cores


FAMILIES: dict[str, FamilyDefaults] = {
    # 40 x 20 x 200 = 160,000 steps per unit; 320M steps = 2000 DRS / 1000 MAML iterations;
    # 21 checkpoints 16M steps apart.
    # Learner threads: 2, fixed (results must not change with --workers or the machine; on
    # 2 cores two threads halve the update time at this batch shape, scripts/bench_iterations.py).
    "locomotion": FamilyDefaults(40, 20, 200, HIDDEN_SIZES, 320_000_000, N_CHECKPOINTS, 100, 2),
    # 20 x 10 x 150 = 30,000 steps per unit; 600M steps; 21 checkpoints 30M apart.
    "metaworld": FamilyDefaults(20, 10, 150, (100, 100), 600_000_000, N_CHECKPOINTS, 50, 2),
    # Tiny tensors: one learner thread (OpenMP threads made such updates many times slower).
    "toy": FamilyDefaults(20, 10, 20, (32, 32), 400_000, 5, 20, 1),
}


