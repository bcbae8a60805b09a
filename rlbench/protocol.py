"""Every number of the study, in one place (docs/protocol.md sections 3-7).

Environment physics, rewards and horizons live with each environment (envs/locomotion.py
``SPECS``, envs/meta_world.py); the baseline's feature constants live in
agents/advantages.py. Everything an *algorithm* or the *harness* needs is here: shared
learner constants, the per-environment tuned values of the authors' code (GS), and the
per-family sampling unit, network, budget, checkpoints and meta-test size. The config
dataclasses (rlbench/settings.py) take their defaults from here and rlbench/presets.py
builds run configs from these tables; no other module states these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- shared by every algorithm (docs/protocol.md sections 2-4) --------------------------------------
ACTION_SCALE = 10.0  # the Gaussian lives in units of 10 x the environment's action
INIT_STD = 1.0  # initial std in that scaled space (0.1 in environment units)
GAMMA = 0.99
GAE_LAMBDA = 1.0
BASELINE_REG = 1e-5  # ridge regulariser of the linear feature baseline
PPO_CLIP = 0.3
CG_ITERS = 10
CG_DAMPING = 1e-5
BACKTRACK_RATIO = 0.8
MAX_BACKTRACKS = 15
ETA_FIXED = 5e-4  # ProMP KL penalty (fixed schedule)
ETA_ADAPTIVE_START = 1e-3  # ProMP KL penalty (adaptive schedule) ...
KL_TARGET = 1e-2  # ... halved below KL_TARGET / 1.5, doubled above 1.5 x KL_TARGET
TEST_UPDATES = 5  # meta-test adaptation steps (returns recorded at t = 0..5)
# Reptile (not in the study; agents/reptile.py): outer step epsilon and inner steps K. Not paper
# values: the Reptile paper's classification runs anneal epsilon linearly from 1 to 0.
REPTILE_OUTER_STEP = 1.0
REPTILE_INNER_STEPS = 2


@dataclass(frozen=True)
class EnvHyper:
    """Per-environment tuned values of GS (docs/protocol.md section 4 table)."""

    drs_ppo_lr: float
    promp_lr: float
    promp_inner_lr: float
    drs_trpo_max_kl: float
    trpo_maml_max_kl: float
    trpo_maml_inner_lr: float
    num_ppo_steps: int
    adaptive_eta: bool  # False: fixed ETA_FIXED; True: start ETA_ADAPTIVE_START, target KL_TARGET


HYPER: dict[str, EnvHyper] = {
    "rlbench/HalfCheetahRandVel-v0": EnvHyper(1e-2, 1e-4, 1e-2, 0.01, 0.001, 0.01, 5, False),
    "rlbench/Walker2DRandVel-v0": EnvHyper(1e-3, 1e-3, 1e-2, 0.01, 0.1, 0.01, 5, False),
    "rlbench/Walker2DRandParams-v0": EnvHyper(1e-3, 1e-3, 1e-2, 0.1, 0.1, 0.01, 3, True),
    "rlbench/HopperRandParams-v0": EnvHyper(1e-3, 1e-3, 1e-2, 0.1, 0.1, 0.01, 3, True),
    "rlbench/ML1-Push-v0": EnvHyper(1e-4, 1e-4, 1e-4, 0.1, 0.1, 1e-4, 5, False),
    "rlbench/ML1-Reach-v0": EnvHyper(1e-4, 1e-4, 1e-4, 0.001, 0.001, 1e-5, 5, False),
    "rlbench/ML10-v0": EnvHyper(1e-4, 1e-4, 1e-3, 0.001, 0.01, 1e-3, 5, False),
    "rlbench/ML45-v0": EnvHyper(1e-4, 1e-4, 1e-5, 0.01, 0.1, 1e-3, 5, False),
    # Not in the paper: the numpy toy used by fast tests, tuned here for a seconds-long budget.
    "rlbench/PointGoal-v0": EnvHyper(1e-2, 1e-2, 1e-1, 0.05, 0.05, 1e-1, 5, False),
}


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
    "locomotion": FamilyDefaults(40, 20, 200, (64, 64), 320_000_000, 21, 100, 2),
    # 20 x 10 x 150 = 30,000 steps per unit; 600M steps; 21 checkpoints 30M apart.
    "metaworld": FamilyDefaults(20, 10, 150, (100, 100), 600_000_000, 21, 50, 2),
    # Tiny tensors: one learner thread (OpenMP threads made such updates many times slower).
    "toy": FamilyDefaults(20, 10, 20, (32, 32), 400_000, 5, 20, 1),
}


