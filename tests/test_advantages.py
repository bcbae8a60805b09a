"""Baseline, discounted returns, GAE and normalisation (agents/advantages.py) against oracles.

Every expected value is computed here independently: per-episode Python loops for GAE and
returns, a feature matrix built row by row from docs/protocol.md section 3 and solved with
``np.linalg.lstsq`` (ridge as extra rows), and a small example worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from agents.advantages import (
    AdvantageSettings,
    baseline_features,
    compute_advantages,
    discounted_returns,
    fit_linear_baseline,
    gae,
)
from rlbench.batch import Batch

# -- oracles -----------------------------------------------------------------------------------


def loop_returns(rewards: list[float], gamma: float) -> list[float]:
    out, acc = [], 0.0
    for r in reversed(rewards):
        acc = r + gamma * acc
        out.append(acc)
    return out[::-1]


def loop_gae(rewards: list[float], values: list[float], v_next: float, gamma: float, lam: float) -> list[float]:
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V_L = v_next."""
    L = len(rewards)
    v = list(values) + [v_next]
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(L)]
    return [sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, L)) for t in range(L)]


def protocol_features(o: np.ndarray, t: float) -> np.ndarray:
    """docs/protocol.md section 3: clip(obs, -10, 10), its square, t/100, (t/100)^2, (t/100)^3, 1."""
    c = np.clip(o, -10, 10)
    s = t / 100.0
    return np.concatenate([c, c**2, [s, s**2, s**3, 1.0]])


def ridge_lstsq(X: np.ndarray, y: np.ndarray, reg: float) -> np.ndarray:
    """argmin |X w - y|^2 + reg |w|^2 via lstsq on the augmented system."""
    F = X.shape[1]
    Xa = np.vstack([X, np.sqrt(reg) * np.eye(F)])
    ya = np.concatenate([y, np.zeros(F)])
    return np.linalg.lstsq(Xa, ya, rcond=None)[0]


def make_batch(rng: np.random.Generator, lengths: np.ndarray, terminated: np.ndarray, H: int, d: int = 3) -> Batch:
    T, E = lengths.shape
    obs = np.zeros((T, E, H, d))
    rew = np.zeros((T, E, H))
    valid = np.zeros((T, E, H), dtype=bool)
    last = np.zeros((T, E, d))
    for i in range(T):
        for e in range(E):
            L = lengths[i, e]
            # some observations beyond the clip range, to exercise clip(obs, -10, 10)
            obs[i, e, :L] = rng.normal(0, 4, size=(L, d))
            rew[i, e, :L] = rng.normal(i, 1.0, size=L)
            valid[i, e, :L] = True
            last[i, e] = rng.normal(0, 4, size=d)
    # garbage in the padding must never matter
    obs[~valid] = 1e6
    rew[~valid] = 0.0
    ep_end = np.arange(H) == (lengths[..., None] - 1)
    return Batch(
        tasks=list(range(T)), obs=obs, actions=np.zeros((T, E, H, 1)), rewards=rew, valid=valid,
        ep_time=np.broadcast_to(np.arange(H), (T, E, H)) * valid, ep_end=ep_end, ep_term=ep_end & terminated[..., None],
        ep_success=np.full((T, E, H), np.nan), lengths=lengths, terminated=terminated, truncated=~terminated,
        last_obs=last, env_steps=int(valid.sum()),
    )


def oracle_advantages(b: Batch, gamma: float, lam: float, reg: float, bootstrap: bool, normalize: bool) -> np.ndarray:
    T, E, H = b.rewards.shape
    out = np.zeros((T, E, H))
    for i in range(T):
        rows, targets = [], []
        for e in range(E):
            L = int(b.lengths[i, e])
            rets = loop_returns(list(b.rewards[i, e, :L]), gamma)
            for t in range(L):
                rows.append(protocol_features(b.obs[i, e, t], t))
                targets.append(rets[t])
        w = ridge_lstsq(np.array(rows), np.array(targets), reg)
        for e in range(E):
            L = int(b.lengths[i, e])
            values = [protocol_features(b.obs[i, e, t], t) @ w for t in range(L)]
            if b.terminated[i, e] or not bootstrap:
                v_next = 0.0
            else:
                v_next = protocol_features(b.last_obs[i, e], L) @ w
            out[i, e, :L] = loop_gae(list(b.rewards[i, e, :L]), values, v_next, gamma, lam)
        if normalize:
            a = out[i][b.valid[i]]
            out[i][b.valid[i]] = (a - a.mean()) / (a.std() + 1e-8)
    return out


# -- a tiny example worked by hand ------------------------------------------------------------


def test_hand_worked_example():
    """rewards (1, 2, 3), values (0.5, 1.0, 1.5), gamma = lambda = 0.5, horizon 5.

    terminated: deltas 1.0, 1.75, 1.5 -> A = (1.53125, 2.125, 1.5)
    truncated with V(s_3) = 2: deltas 1.0, 1.75, 2.5 -> A = (1.59375, 2.375, 2.5)
    returns (no bootstrap): (2.75, 3.5, 3.0)
    """
    rewards = np.array([[1.0, 2.0, 3.0, 0.0, 0.0]])
    values = np.array([[0.5, 1.0, 1.5, 0.0, 0.0]])
    valid = np.array([[True, True, True, False, False]])
    term = gae(rewards, values, valid, np.array([0.0]), 0.5, 0.5)
    np.testing.assert_allclose(term, [[1.53125, 2.125, 1.5, 0.0, 0.0]], rtol=0, atol=1e-12)
    trunc = gae(rewards, values, valid, np.array([2.0]), 0.5, 0.5)
    np.testing.assert_allclose(trunc, [[1.59375, 2.375, 2.5, 0.0, 0.0]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(discounted_returns(rewards, valid, 0.5), [[2.75, 3.5, 3.0, 0.0, 0.0]], atol=1e-12)
    # a full-length episode: V(s_H) enters through the bootstrap only
    full = gae(np.array([[1.0, 1.0]]), np.array([[0.0, 0.0]]), np.ones((1, 2), bool), np.array([4.0]), 0.5, 1.0)
    np.testing.assert_allclose(full, [[1.0 + 0.5 * 1.0 + 0.25 * 4.0, 1.0 + 0.5 * 4.0]], atol=1e-12)


# -- GAE and returns vs per-episode loops -----------------------------------------------------------


@pytest.mark.parametrize("gamma,lam", [(0.99, 1.0), (0.9, 0.95), (0.5, 0.0)])
def test_gae_and_returns_match_episode_loops(gamma, lam):
    rng = np.random.default_rng(0)
    T, E, H = 3, 4, 7
    lengths = rng.integers(1, H + 1, size=(T, E))
    lengths[0, 0], lengths[1, 1] = H, 1
    rewards = rng.normal(size=(T, E, H))
    values = rng.normal(size=(T, E, H))
    valid = np.arange(H) < lengths[..., None]
    rewards_padded = np.where(valid, rewards, 123.0)  # garbage in the padding
    values_padded = np.where(valid, values, -77.0)
    boot = rng.normal(size=(T, E))
    got_adv = gae(rewards_padded, values_padded, valid, boot, gamma, lam)
    got_ret = discounted_returns(rewards_padded, valid, gamma)
    for i in range(T):
        for e in range(E):
            L = lengths[i, e]
            exp = loop_gae(list(rewards[i, e, :L]), list(values[i, e, :L]), boot[i, e], gamma, lam)
            np.testing.assert_allclose(got_adv[i, e, :L], exp, rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(got_adv[i, e, L:], 0.0)
            np.testing.assert_allclose(got_ret[i, e, :L], loop_returns(list(rewards[i, e, :L]), gamma), rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(got_ret[i, e, L:], 0.0)


# -- the whole pipeline: baseline + GAE (+ normalisation) ----------------------------------------------


@pytest.mark.parametrize("bootstrap", [True, False], ids=["bootstrap", "gs-no-bootstrap"])
@pytest.mark.parametrize("normalize", [False, True])
def test_compute_advantages_matches_oracle(bootstrap, normalize):
    rng = np.random.default_rng(1)
    H = 8
    lengths = np.array([[8, 3, 8, 5, 1], [8, 8, 2, 7, 8]])
    terminated = lengths < H  # ended early = terminated; horizon-cut = truncated
    terminated[0, 0] = False
    b = make_batch(rng, lengths, terminated, H)
    s = AdvantageSettings(gamma=0.99, gae_lambda=0.97, baseline_reg=1e-5, normalize=normalize, bootstrap_truncated=bootstrap)
    got = compute_advantages(b, s)
    exp = oracle_advantages(b, 0.99, 0.97, 1e-5, bootstrap, normalize)
    np.testing.assert_allclose(got, exp, rtol=1e-7, atol=1e-7)
    assert np.all(got[~b.valid] == 0.0)


def test_bootstrap_switch_changes_only_truncated_episodes():
    rng = np.random.default_rng(2)
    lengths = np.array([[6, 3, 6, 2]])
    terminated = np.array([[False, True, False, True]])
    b = make_batch(rng, lengths, terminated, 6)
    on = compute_advantages(b, AdvantageSettings(0.99, 1.0, 1e-5, False, True))
    off = compute_advantages(b, AdvantageSettings(0.99, 1.0, 1e-5, False, False))
    np.testing.assert_array_equal(on[0, 1], off[0, 1])
    np.testing.assert_array_equal(on[0, 3], off[0, 3])
    assert not np.allclose(on[0, 0], off[0, 0])
    assert not np.allclose(on[0, 2], off[0, 2])


# -- the linear baseline ---------------------------------------------------------------------------


def test_baseline_coefficients_match_lstsq_with_ridge():
    rng = np.random.default_rng(3)
    T, N, F = 3, 40, 7
    feats = rng.normal(size=(T, N, F))
    targets = rng.normal(size=(T, N))
    mask = rng.random((T, N)) < 0.7
    reg = 0.3  # large enough for the ridge term to matter
    got = fit_linear_baseline(feats, targets, mask.astype(float), reg)
    for i in range(T):
        X, y = feats[i][mask[i]], targets[i][mask[i]]  # padding rows simply absent
        np.testing.assert_allclose(got[i], ridge_lstsq(X, y, reg), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("blas", [False, True])
def test_baseline_coefficients_equal_the_explicit_normal_equations(blas):
    """Both ways of forming X^T X (np.einsum, or the batched BLAS product of ``blas=True``)
    give the solution of the normal equations summed transition by transition, at a
    locomotion batch's shape (features of 17-dimensional observations, 4000 transitions)."""
    rng = np.random.default_rng(4)
    T, N = 3, 4000
    obs = rng.normal(scale=3.0, size=(T, N, 17))
    feats = baseline_features(obs, np.tile(np.arange(200.0), (T, N // 200)))
    targets = rng.normal(size=(T, N)) + feats[..., :3].sum(-1)
    mask = (rng.random((T, N)) < 0.9).astype(float)
    got = fit_linear_baseline(feats, targets, mask, 1e-5, blas=blas)
    for i in range(T):
        X = feats[i] * mask[i][:, None]
        XtX = sum(np.outer(x, x) for x in X)
        expected = np.linalg.solve(XtX + 1e-5 * np.eye(X.shape[-1]), X.T @ (targets[i] * mask[i]))
        np.testing.assert_allclose(got[i], expected, rtol=1e-7, atol=1e-7 * np.abs(expected).max())


@pytest.mark.parametrize("blas", [False, True])
def test_ridge_grows_when_the_system_is_singular(blas):
    """X = [[a, a]] with a^2 = 2^40: adding 1e-5 or 1e-4 to 2^40 is lost to rounding (the
    spacing of doubles there is 2^-12), so the system is exactly singular until the
    regulariser has grown to 1e-3, where the solution is finite."""
    a = 2.0**20
    X = np.array([[[a, a]]])
    y = np.array([[1.0]])
    XtX = X[0].T @ X[0]
    for r in (1e-5, 1e-4):
        with pytest.raises(np.linalg.LinAlgError):
            np.linalg.solve(XtX + r * np.eye(2), X[0].T @ y[0])
    got = fit_linear_baseline(X, y, np.ones((1, 1)), 1e-5, blas=blas)
    reg_used = 1e-5 * 10 * 10
    expected = np.linalg.solve(XtX + reg_used * np.eye(2), X[0].T @ y[0])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0], expected, rtol=1e-6)
    # by symmetry both coefficients are equal, and the ridge solution ~ y / (2a)
    np.testing.assert_allclose(got[0], [1 / (2 * a)] * 2, rtol=1e-3)


@pytest.mark.parametrize("blas", [False, True])
def test_ridge_fallback_never_returns_non_finite(blas):
    """Hopeless systems (singular at every tried regulariser, or non-finite data) give finite
    (zero) coefficients instead of NaN values that would poison every advantage."""
    a = 2.0**40  # XtX entries 2^80: even 1e-5 * 10^5 = 1 is lost
    X = np.array([[[a, a]]])
    got = fit_linear_baseline(X, np.array([[1.0]]), np.ones((1, 1)), 1e-5, blas=blas)
    np.testing.assert_array_equal(got, 0.0)
    got = fit_linear_baseline(np.ones((1, 2, 2)), np.array([[np.inf, 1.0]]), np.ones((1, 2)), 1e-5, blas=blas)
    assert np.isfinite(got).all()
    # a task with no real transitions (all masked) and a healthy task side by side
    feats = np.random.default_rng(0).normal(size=(2, 5, 3))
    y = np.arange(10.0).reshape(2, 5)
    mask = np.array([[0.0] * 5, [1.0] * 5])
    got = fit_linear_baseline(feats, y, mask, 1e-5, blas=blas)
    np.testing.assert_allclose(got[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(got[1], ridge_lstsq(feats[1], y[1], 1e-5), rtol=1e-8)


# -- per-task normalisation ---------------------------------------------------------------------------


def test_normalisation_is_per_task_over_real_transitions():
    rng = np.random.default_rng(4)
    T, E, H = 3, 4, 6
    lengths = rng.integers(1, H + 1, size=(T, E))
    b = make_batch(rng, lengths, lengths < H, H)
    b.rewards[1] *= 100.0  # very different scales per task
    b.rewards[2] += 50.0
    adv = compute_advantages(b, AdvantageSettings(0.99, 1.0, 1e-5, True, True))
    for i in range(T):
        a = adv[i][b.valid[i]]
        assert abs(a.mean()) < 1e-10
        assert abs(a.std() - 1.0) < 1e-6  # population std (ddof 0), +1e-8 in the denominator
    assert np.all(adv[~b.valid] == 0.0)
