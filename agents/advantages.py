"""Linear feature baseline, GAE and per-task normalisation (docs/protocol.md section 3).

Everything here works on the padded arrays of :class:`agents.batch.Batch` and is vectorised
over tasks and episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.batch import Batch

#: Baseline feature constants (docs/protocol.md section 3; ProMP's LinearFeatureBaseline).
OBS_CLIP = 10.0
TIME_SCALE = 100.0
RIDGE_GROWTH = 10.0
RIDGE_RETRIES = 5


@dataclass(frozen=True)
class AdvantageSettings:
    gamma: float
    gae_lambda: float
    baseline_reg: float
    normalize: bool
    bootstrap_truncated: bool  # False reproduces GS (the horizon treated as terminal)


def baseline_features(obs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[clip(o), clip(o)^2, t/100, (t/100)^2, (t/100)^3, 1]. obs [..., d], t [...] -> [..., 2d+4]."""
    o = np.clip(obs, -OBS_CLIP, OBS_CLIP)
    ts = (t / TIME_SCALE)[..., None]
    return np.concatenate([o, o * o, ts, ts**2, ts**3, np.ones_like(ts)], axis=-1)


def fit_linear_baseline(features: np.ndarray, targets: np.ndarray, mask: np.ndarray, reg: float, blas: bool = False) -> np.ndarray:
    """Ridge regression per task. features [T, N, F], targets [T, N], mask [T, N] -> coefs [T, F].

    Solves (X^T X + reg I) w = X^T y; if the solve is not finite the regulariser grows by 10x,
    up to 5 times (ProMP's rule). ``blas``: X^T X by a batched BLAS product (torch.bmm) instead
    of ``np.einsum`` (the same matrix up to float rounding, ~20x less CPU at 40 tasks x 4000
    transitions; opt-in, since it changes the last bits of every advantage).
    """
    T, _, F = features.shape
    X = features * mask[..., None]
    if blas:  # torch's BLAS at the learner's torch thread count (numpy's threaded BLAS spun ~10x the CPU under load)
        Xt = torch.from_numpy(np.ascontiguousarray(X))
        XtX = torch.bmm(Xt.transpose(1, 2), Xt).numpy()
    else:
        XtX = np.einsum("tnf,tng->tfg", X, X)
    Xty = np.einsum("tnf,tn->tf", X, targets * mask)
    coefs = np.empty((T, F))
    eye = np.eye(F)
    for i in range(T):
        r = reg
        for _ in range(RIDGE_RETRIES + 1):
            try:
                w = np.linalg.solve(XtX[i] + r * eye, Xty[i])
            except np.linalg.LinAlgError:
                w = np.full(F, np.nan)
            if np.isfinite(w).all():
                break
            r *= RIDGE_GROWTH
        coefs[i] = np.nan_to_num(w)
    return coefs


def discounted_returns(rewards: np.ndarray, valid: np.ndarray, gamma: float, ep_end: np.ndarray | None = None) -> np.ndarray:
    """Reward-to-go sum_k gamma^k r_{t+k} within each episode (no bootstrap). [..., H] -> [..., H].

    ``ep_end`` [..., H] marks the last transition of each episode when a row holds several
    consecutive episodes (the steps sampling unit); without it a row is one episode."""
    out = np.zeros_like(rewards)
    acc = np.zeros(rewards.shape[:-1])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        if ep_end is not None:
            acc = np.where(ep_end[..., t], 0.0, acc)
        acc = (rewards[..., t] + gamma * acc) * valid[..., t]
        out[..., t] = acc
    return out


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    valid: np.ndarray,
    bootstrap: np.ndarray,
    gamma: float,
    lam: float,
    ep_end: np.ndarray | None = None,
    ep_term: np.ndarray | None = None,
) -> np.ndarray:
    """Generalised advantage estimation over padded rows of episodes.

    rewards, valid [..., H]; values [..., H] (V(s_t)); bootstrap [...]: V(s_L) after a row's last
    used transition (0 where that episode terminated). Without ``ep_end`` a row is one episode
    ending at its last valid transition; with ``ep_end``/``ep_term`` [..., H] a row may hold
    several episodes: an episode that terminated has value 0 after its end, and only the
    row's final episode may end without termination (it is then bootstrapped). Returns
    advantages [..., H] (0 on padding)."""
    H = rewards.shape[-1]
    if ep_end is None:
        lengths = valid.sum(-1)
        ep_end = np.stack([lengths == t + 1 for t in range(H)], axis=-1)
        ep_term = np.zeros_like(ep_end)
    adv = np.zeros_like(rewards)
    acc = np.zeros(rewards.shape[:-1])
    for t in range(H - 1, -1, -1):
        is_last = ep_end[..., t]
        end_v = np.where(ep_term[..., t], 0.0, bootstrap)
        next_v = np.where(is_last, end_v, values[..., t + 1] if t + 1 < H else 0.0)
        delta = rewards[..., t] + gamma * next_v - values[..., t]
        carry = np.where(is_last, 0.0, acc)
        acc = (delta + gamma * lam * carry) * valid[..., t]
        adv[..., t] = acc
    return adv


def compute_advantages(batch: Batch, s: AdvantageSettings, blas: bool = False) -> np.ndarray:
    """Advantages [T, E, H] of a batch: baseline fitted per task to reward-to-go, then GAE,
    then per-task normalisation over the transitions used for learning. Works on rows holding
    one episode or several (the steps sampling unit): time features restart with each episode,
    and each task's baseline and normalisation use however many episodes it has. ``blas``: see
    :func:`fit_linear_baseline`."""
    T, E, H = batch.rewards.shape
    feats = baseline_features(batch.obs, batch.ep_time.astype(float))  # [T, E, H, F]
    returns = discounted_returns(batch.rewards, batch.valid, s.gamma, batch.ep_end)
    coefs = fit_linear_baseline(feats.reshape(T, E * H, -1), returns.reshape(T, -1), batch.valid.reshape(T, -1), s.baseline_reg, blas)
    values = np.einsum("tehf,tf->teh", feats, coefs) * batch.valid
    if s.bootstrap_truncated:
        # Time index after the row's final used transition: its episode's length.
        last = H - 1 - np.argmax(batch.ep_end[..., ::-1], axis=-1)
        final_len = np.take_along_axis(batch.ep_time, last[..., None], axis=-1)[..., 0] + 1
        last_feats = baseline_features(batch.last_obs, final_len.astype(float))  # [T, E, F]
        boot = np.einsum("tef,tf->te", last_feats, coefs) * batch.truncated
    else:
        boot = np.zeros((T, E))
    adv = gae(batch.rewards, values, batch.valid, boot, s.gamma, s.gae_lambda, batch.ep_end, batch.ep_term)
    if s.normalize:
        m = batch.valid.reshape(T, -1)
        a = adv.reshape(T, -1)
        n = m.sum(-1)
        mean = (a * m).sum(-1) / np.maximum(n, 1)
        var = (((a - mean[:, None]) * m) ** 2).sum(-1) / np.maximum(n, 1)
        adv = ((a - mean[:, None]) / (np.sqrt(var)[:, None] + 1e-8) * m).reshape(T, E, H)
    return adv


@dataclass
class TensorBatch:
    """A processed batch as tensors, flattened per task. Shapes: obs [T, N, d], actions
    [T, N, a], advantages [T, N], mask [T, N] (1 for real transitions), logp_old [T, N]
    (log-prob under the parameters that sampled it)."""

    obs: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    logp_old: torch.Tensor

    @property
    def n_tasks(self) -> int:
        return self.obs.shape[0]

    def task_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over each task's real transitions. x [T, N] -> [T]."""
        return (x * self.mask).sum(-1) / self.mask.sum(-1).clamp_min(1)

    def tasks(self, rows: slice) -> TensorBatch:
        """The batch of a contiguous range of tasks (views, no copy)."""
        return TensorBatch(self.obs[rows], self.actions[rows], self.advantages[rows], self.mask[rows], self.logp_old[rows])

    def pooled_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over all real transitions of the batch (DRS pools tasks). x [T, N] -> []."""
        return (x * self.mask).sum() / self.mask.sum().clamp_min(1)


def to_tensors(batch: Batch, advantages: np.ndarray, dtype: torch.dtype = torch.float32) -> TensorBatch:
    """Flatten [T, E, H, ...] to [T, E*H, ...]; logp_old is filled in by the agent."""
    T = batch.n_tasks

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x.reshape(T, -1, *x.shape[3:])), dtype=dtype)

    mask = t(batch.valid.astype(np.float64))
    return TensorBatch(t(batch.obs), t(batch.actions), t(advantages), mask, torch.zeros_like(mask))
