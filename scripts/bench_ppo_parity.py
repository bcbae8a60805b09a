"""PPO parity: rlbench's DRS+PPO learner vs stable-baselines3 PPO on one standard MuJoCo task.

With a task distribution of exactly one task (``envs.single_task``), DRS+PPO is plain PPO run
through rlbench's sampler, linear-feature-baseline + GAE pipeline and ``agents.drs.DRSPPO``.
Both learners get the same hyperparameters, the same number of environment steps per update
and in total, the same seeds, torch limited to one thread, and the same evaluation: mean
undiscounted return of ``--eval-episodes`` episodes of the standard ``gymnasium.make`` task
(TimeLimit included) from fixed reset seeds, once with the mean action (deterministic) and
once sampling from the Gaussian (stochastic). Wall-clock time counts training only.

What cannot be matched (see results/bench/README-ppo-parity.md): rlbench fits the protocol's
linear feature baseline per batch instead of training a value network; it initialises
Glorot-uniform (as ProMP/garage) instead of orthogonal with a 0.01-gain action head; it
normalises advantages per batch instead of per minibatch; Adam eps is 1e-8 instead of 1e-5.
SB3's global gradient-norm clip (0.5, on the joint policy+value loss) has no rlbench
counterpart; ``--sb3-variants`` selects SB3 with its default clip ("sb3"), without it
("sb3-noclip"), or both. ``--rlbench-variants`` adds controls: "-sb3init" starts rlbench from
the exact initial policy weights SB3 draws for the seed, "-lam1" uses GAE lambda 1.0.

Before training, the script checks on identical weights and data that rlbench's log-prob,
clipped surrogate loss and its gradient equal SB3's (printed as max abs differences).

The recorded runs (results/bench/ppo_parity.txt)::

    python scripts/bench_ppo_parity.py --env HalfCheetah-v5 --steps 200000 --seeds 0 1 2
    python scripts/bench_ppo_parity.py --env HalfCheetah-v5 --steps 200000 --seeds 3 4 5
    python scripts/bench_ppo_parity.py --steps 200000 --seeds 0 1 2 3 4 5 --no-sb3 --rlbench-variants rlbench-sb3init
    python scripts/bench_ppo_parity.py --steps 200000 --seeds 0 1 2 3 4 5 --no-sb3 --rlbench-variants rlbench-lam1
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, replace

import gymnasium as gym
import numpy as np
import torch

from agents.drs import DRSPPO
from envs.single_task import register_single_task
from rlbench import presets
from rlbench.sampler import Sampler
from rlbench.trainer import Trainer


@dataclass(frozen=True)
class Hyper:
    """Shared PPO settings (Schulman et al. 2017 MuJoCo values, batch rounded to whole episodes)."""

    learning_rate: float = 3e-4
    n_steps: int = 2000  # env steps per update (rlbench: whole episodes, n_steps / horizon of them)
    minibatch: int = 80  # samples per minibatch (n_steps / minibatch minibatches)
    epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    hidden: tuple[int, ...] = (64, 64)  # tanh
    init_std: float = 1.0  # SB3: exp(log_std_init = 0)


@dataclass
class RunResult:
    learner: str
    seed: int
    steps: int
    train_seconds: float
    det: float
    stoch: float
    curve: list[tuple[int, float]] = field(default_factory=list)  # (env steps, mean training-episode return)


# -- evaluation (identical for both learners) -----------------------------------------------------


def evaluate(gym_id: str, act, episodes: int, seed: int) -> float:
    """Mean undiscounted return of ``episodes`` episodes of ``gym.make(gym_id)``; act(obs) -> action
    in [-1, 1] (rescaled to the Box bounds here, as both learners act in [-1, 1])."""
    env = gym.make(gym_id)
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, ret = False, 0.0
        while not done:
            a = np.clip(act(obs), -1.0, 1.0)
            obs, r, term, trunc, _ = env.step(low + (a + 1.0) * 0.5 * (high - low))
            ret += float(r)
            done = term or trunc
        returns.append(ret)
    env.close()
    return float(np.mean(returns))


# -- rlbench ----------------------------------------------------------------------------------------------


def rlbench_config(gym_id: str, hp: Hyper, steps: int, seed: int):
    """The drs-ppo RunConfig on the one-task wrapper of ``gym_id`` with the shared settings."""
    env_id = register_single_task(gym_id, family="locomotion")
    horizon = int(gym.spec(gym_id).max_episode_steps)
    if hp.n_steps % horizon:
        raise SystemExit(f"n_steps {hp.n_steps} must be a multiple of the horizon {horizon} (rlbench samples whole episodes)")
    # The wrapper has no hyperparameter table entry: it gets the locomotion family defaults (a
    # logged notice), and every value that matters is overridden below.
    return presets.run_config(env_id, DRSPPO.algo, seed, budget=steps, overrides={
        "n_checkpoints": 1,
        "policy": {"hidden_sizes": list(hp.hidden), "init_std": hp.init_std, "action_scale": 1.0},
        "sampler": {"meta_batch_size": 1, "episodes_per_task": hp.n_steps // horizon, "horizon": horizon, "n_workers": 1},
        "advantage": {"gamma": hp.gamma, "gae_lambda": hp.gae_lambda, "normalize": True, "bootstrap_truncated": True},
        "algo_cfg": {"learning_rate": hp.learning_rate, "clip": hp.clip, "num_ppo_steps": hp.epochs, "minibatches": hp.n_steps // hp.minibatch},
    })


def run_rlbench(
    gym_id: str, hp: Hyper, steps: int, seed: int, eval_episodes: int, eval_seed: int, sb3_init: bool = False,
    gae_lambda: float | None = None,
) -> RunResult:
    """rlbench DRS+PPO. Controls for the investigation: ``sb3_init`` starts from the initial policy
    weights SB3 draws for the same seed (orthogonal, action head gain 0.01) instead of rlbench's
    Glorot init; ``gae_lambda`` overrides the shared lambda (1.0 is the protocol's value)."""
    cfg = rlbench_config(gym_id, replace(hp, gae_lambda=gae_lambda) if gae_lambda is not None else hp, steps, seed)
    env_id, horizon = cfg.env_id, cfg.sampler.horizon
    curve = []
    with Sampler(env_id, horizon=horizon, n_workers=1) as sampler:
        trainer = Trainer(cfg, sampler)
        if sb3_init:
            copy_sb3_policy(sb3_model(gym_id, hp, seed, clip_grad=True).policy, trainer.agent.params)
        t0 = time.perf_counter()
        while trainer.can_iterate():
            m = trainer.iterate()
            curve.append((int(m["budget/env_steps"]), float(m["rollout/return_mean"])))
        seconds = time.perf_counter() - t0
        used = trainer.budget.used
    agent = trainer.agent
    params = {k: v.detach() for k, v in agent.params.items()}
    policy = agent.policy
    rng = np.random.default_rng(eval_seed)

    @torch.no_grad()
    def mean_act(obs):
        return policy.mean(params, torch.as_tensor(obs, dtype=torch.float32)).numpy().astype(np.float64) / policy.action_scale

    std = params["log_std"].exp().numpy().astype(np.float64)

    def sample_act(obs):
        return mean_act(obs) + std * rng.standard_normal(std.shape)

    det = evaluate(gym_id, mean_act, eval_episodes, eval_seed)
    stoch = evaluate(gym_id, sample_act, eval_episodes, eval_seed)
    name = "rlbench" + ("-sb3init" if sb3_init else "") + (f"-lam{gae_lambda:g}" if gae_lambda is not None else "")
    return RunResult(name, seed, used, seconds, det, stoch, curve)


# -- stable-baselines3 ------------------------------------------------------------------------------------


def sb3_model(gym_id: str, hp: Hyper, seed: int, clip_grad: bool):
    """SB3 PPO on ``gym.make(gym_id)`` (actions rescaled to [-1, 1] if needed) with the shared settings."""
    from stable_baselines3 import PPO

    env = gym.make(gym_id)
    if not (np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)):
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)  # the same [-1, 1] parameterisation as rlbench
    return PPO(
        "MlpPolicy", env, learning_rate=hp.learning_rate, n_steps=hp.n_steps, batch_size=hp.minibatch,
        n_epochs=hp.epochs, gamma=hp.gamma, gae_lambda=hp.gae_lambda, clip_range=hp.clip, ent_coef=0.0, vf_coef=0.5,
        max_grad_norm=0.5 if clip_grad else float("inf"), normalize_advantage=True, seed=seed, device="cpu", verbose=0,
        policy_kwargs={"net_arch": {"pi": list(hp.hidden), "vf": list(hp.hidden)}, "activation_fn": torch.nn.Tanh,
                       "log_std_init": float(np.log(hp.init_std))},
    )


def sb3_policy_layers(pol) -> list[torch.nn.Linear]:
    """The Linear layers of SB3's policy path: hidden layers, then the action head."""
    return [m for m in pol.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)] + [pol.action_net]


def copy_sb3_policy(pol, params: dict[str, torch.Tensor]) -> None:
    """Overwrite rlbench policy parameters (in place) with SB3's policy weights."""
    with torch.no_grad():
        for i, m in enumerate(sb3_policy_layers(pol)):
            params[f"W{i}"].copy_(m.weight)
            params[f"b{i}"].copy_(m.bias)
        params["log_std"].copy_(pol.log_std)


def run_sb3(gym_id: str, hp: Hyper, steps: int, seed: int, eval_episodes: int, eval_seed: int, clip_grad: bool) -> RunResult:
    from stable_baselines3.common.callbacks import BaseCallback

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.points: list[tuple[int, float]] = []
            self._rets: list[float] = []

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self._rets.append(float(info["episode"]["r"]))
            return True

        def _on_rollout_end(self) -> None:
            if self._rets:
                self.points.append((int(self.num_timesteps), float(np.mean(self._rets))))
            self._rets = []

    model = sb3_model(gym_id, hp, seed, clip_grad)
    cb = Curve()
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps, callback=cb)
    seconds = time.perf_counter() - t0
    torch.manual_seed(eval_seed)  # SB3's stochastic predict draws from torch's global RNG

    def mean_act(obs):
        return model.predict(obs, deterministic=True)[0]

    def sample_act(obs):
        return model.predict(obs, deterministic=False)[0]

    det = evaluate(gym_id, mean_act, eval_episodes, eval_seed)
    stoch = evaluate(gym_id, sample_act, eval_episodes, eval_seed)
    return RunResult("sb3" if clip_grad else "sb3-noclip", seed, int(model.num_timesteps), seconds, det, stoch, cb.points)


# -- the policy loss itself -------------------------------------------------------------------------------------


def loss_parity(gym_id: str, hp: Hyper, n: int = 512, seed: int = 0) -> dict[str, float]:
    """rlbench's DRSPPO.loss vs SB3's policy loss on the SAME network weights and data.

    SB3's policy MLP and action head are copied into an rlbench parameter dict; on random
    observations, actions, (already normalised) advantages and old log-probabilities both
    compute log pi(a|s), the clipped surrogate loss and its gradient. Returns max abs diffs."""
    from agents.registry import make_agent

    model = sb3_model(gym_id, hp, seed, clip_grad=True)
    pol = model.policy
    lin = sb3_policy_layers(pol)
    obs_dim, act_dim = pol.observation_space.shape[0], pol.action_space.shape[0]
    agent = make_agent(rlbench_config(gym_id, hp, hp.n_steps, seed), obs_dim, act_dim)
    copy_sb3_policy(pol, agent.params)
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=g)
    act = torch.randn(n, act_dim, generator=g) * 1.5
    adv = torch.randn(n, generator=g)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # what SB3 does per minibatch
    with torch.no_grad():
        _, lp_sb3, _ = pol.evaluate_actions(obs, act)
    logp_old = lp_sb3 + 0.3 * torch.randn(n, generator=g)  # ratios on both sides of the clip range
    _, lp, _ = pol.evaluate_actions(obs, act)
    ratio = torch.exp(lp - logp_old)
    sb3_loss = -torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - hp.clip, 1 + hp.clip)).mean()  # SB3 PPO.train
    pol.zero_grad()
    sb3_loss.backward()
    sb3_grads = [m.weight.grad for m in lin] + [m.bias.grad for m in lin] + [pol.log_std.grad]
    ours = agent.loss(agent.params, obs, act, adv, logp_old, torch.ones(n))
    grads = torch.autograd.grad(ours, [agent.params[f"W{i}"] for i in range(3)] + [agent.params[f"b{i}"] for i in range(3)] + [agent.params["log_std"]])
    with torch.no_grad():
        lp_ours = agent.policy.log_prob(agent.params, obs, act)
    return {
        "logp": float((lp_ours - lp.detach()).abs().max()),
        "loss": abs(float(ours.detach()) - float(sb3_loss.detach())),
        "grad": max(float((a - b).abs().max()) for a, b in zip(grads, sb3_grads)),
        "clipped_frac": float(((ratio - 1).abs() > hp.clip).float().mean()),
    }


# -- report ----------------------------------------------------------------------------------------------------


def curve_at(curve: list[tuple[int, float]], frac: float, total: int) -> float:
    """Mean training-episode return of the update that ended closest below frac * total steps."""
    pts = [r for s, r in curve if s <= frac * total + 1e-9]
    return pts[-1] if pts else float("nan")


def report(results: list[RunResult], steps: int, out) -> None:
    def p(*a):
        print(*a, file=out, flush=True)

    learners = list(dict.fromkeys(r.learner for r in results))
    p("\nper run (returns: mean undiscounted return of the evaluation episodes; train@x: mean return of")
    p("the training episodes of the last update before x of the budget, stochastic policy)")
    p(f"{'learner':<20} {'seed':>4} {'steps':>7} {'train s':>8} {'det':>9} {'stoch':>9} {'train@25%':>10} {'train@50%':>10} {'train@100%':>10}")
    for r in results:
        p(f"{r.learner:<20} {r.seed:>4} {r.steps:>7} {r.train_seconds:>8.1f} {r.det:>9.1f} {r.stoch:>9.1f} "
          f"{curve_at(r.curve, .25, steps):>10.1f} {curve_at(r.curve, .5, steps):>10.1f} {curve_at(r.curve, 1.0, steps):>10.1f}")
    p("\nsummary over seeds: mean +- sample std (min .. max)")
    p(f"{'learner':<20} {'n':>2} {'det return':>28} {'stoch return':>28} {'train s/seed':>12}")
    base_time = None
    for name in learners:
        rs = [r for r in results if r.learner == name]
        n = len(rs)

        def fmt(x: np.ndarray) -> str:
            sd = x.std(ddof=1) if len(x) > 1 else float("nan")
            return f"{x.mean():8.1f} +- {sd:6.1f} ({x.min():.0f} .. {x.max():.0f})"

        t = np.mean([r.train_seconds for r in rs])
        base_time = t if name == "rlbench" else base_time
        p(f"{name:<20} {n:>2} {fmt(np.array([r.det for r in rs])):>28} {fmt(np.array([r.stoch for r in rs])):>28} {t:>12.1f}")
    if base_time:
        for name in learners:
            if name.startswith("sb3"):
                t = np.mean([r.train_seconds for r in results if r.learner == name])
                p(f"wall-clock ratio rlbench / {name}: {base_time / t:.2f} (training only, runs interleaved per seed)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="HalfCheetah-v5", help="gymnasium MuJoCo id")
    ap.add_argument("--steps", type=int, default=200_000, help="environment steps per run (both learners)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--eval-seed", type=int, default=10_000, help="reset seeds eval_seed .. eval_seed + episodes - 1")
    ap.add_argument("--sb3-variants", nargs="+", default=["sb3"], choices=["sb3", "sb3-noclip"])
    ap.add_argument("--rlbench-variants", nargs="+", default=["rlbench"], choices=["rlbench", "rlbench-sb3init", "rlbench-lam1", "rlbench-sb3init-lam1"],
                    help="controls: -sb3init starts from SB3's initial policy weights; -lam1 uses gae_lambda 1.0")
    ap.add_argument("--no-sb3", action="store_true", help="run only the rlbench variants")
    ap.add_argument("--n-steps", type=int, default=Hyper.n_steps)
    ap.add_argument("--minibatch", type=int, default=Hyper.minibatch)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both learners")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    hp = Hyper(n_steps=args.n_steps, minibatch=args.minibatch)
    print(f"PPO parity on {args.env}: {args.steps} env steps per run, seeds {args.seeds}, torch threads {args.threads}", flush=True)
    print(f"shared settings: {hp}", flush=True)
    print(f"evaluation: {args.eval_episodes} episodes of gym.make({args.env!r}), reset seeds {args.eval_seed}.., "
          "deterministic (mean action) and stochastic", flush=True)
    lp = loss_parity(args.env, hp)
    print(f"loss parity on identical weights and data (max abs diff): log-prob {lp['logp']:.1e}, clipped loss {lp['loss']:.1e}, "
          f"gradient {lp['grad']:.1e} ({lp['clipped_frac']:.0%} of ratios outside the clip range)", flush=True)
    results = []
    for seed in args.seeds:  # interleaved so that load from other processes hits both alike
        for name in [] if args.no_sb3 else args.sb3_variants:
            results.append(run_sb3(args.env, hp, args.steps, seed, args.eval_episodes, args.eval_seed, clip_grad=name == "sb3"))
            r = results[-1]
            print(f"  {r.learner} seed {seed}: {r.train_seconds:.0f}s det {r.det:.1f} stoch {r.stoch:.1f}", flush=True)
        for name in args.rlbench_variants:
            results.append(run_rlbench(args.env, hp, args.steps, seed, args.eval_episodes, args.eval_seed,
                                       sb3_init="sb3init" in name, gae_lambda=1.0 if "lam1" in name else None))
            r = results[-1]
            print(f"  {r.learner} seed {seed}: {r.train_seconds:.0f}s det {r.det:.1f} stoch {r.stoch:.1f}", flush=True)
    report(results, args.steps, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
