"""Diffusion-QL: a diffusion model as the policy of offline RL (spec family ``diffusion_ql``).

Wang, Hunt and Zhou, ICLR 2023. The policy pi_theta(a | s) is the DDPM reverse chain over
actions, conditioned on the state: eps_fn(a_k (B, da), k (B,) int, s (B, ds)) -> (B, da).
Training minimises L = L_d + L_q: a behaviour-cloning noise-prediction loss and a Q-learning
term whose weight is normalised by the critic's scale. Every piece is built from the verified
``ddpm`` clauses; noise is passed in, never drawn here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import ddpm
from ._checks import Array, DomainError, as_batch, as_betas, as_f64, as_step, require, same_shape
from .schedule import alpha_bar

#: A state-conditioned noise-prediction network eps_fn(a_k (B, da), k (B,) int, s (B, ds)) -> (B, da).
StateEpsFn = Callable[[Array, NDArray[np.int64], Array], ArrayLike]
#: A critic q_fn(s (B, ds), a (B, da)) -> (B,).
QFn = Callable[[Array, Array], ArrayLike]

#: Reverse-chain variances: "beta_tilde" (the official code's posterior variance) or "beta" (the paper).
VARIANCES = ddpm.VARIANCES


def _schedule(betas: ArrayLike, k: ArrayLike, B: int, cid: str) -> tuple[Array, NDArray[np.int64]]:
    """alpha_bar_0..K and the steps k as (B,), checked in the clause's own name."""
    beta = as_betas(betas, cid)
    a_bar = alpha_bar(beta)
    require(bool(np.all((a_bar[1:] > 0) & (a_bar[1:] < 1))), cid,
            "need 0 < alpha_bar_k < 1 in float64 for every k (alpha_bar underflows or beta_1 rounds away)")
    steps = np.broadcast_to(as_step(k, beta.size, cid, batch=B), (B,)).astype(np.int64)
    return a_bar, steps


def _states(s: ArrayLike, B: int, cid: str) -> Array:
    st = as_batch(s, cid, "s")
    require(st.shape[0] == B, cid, f"s must have {B} rows (one state per action), got shape {st.shape}")
    return st


def _call_eps(eps_fn: StateEpsFn, x: Array, steps: NDArray[np.int64], s: Array, cid: str) -> Array:
    """Evaluate the network and check its output: finite and shaped like x."""
    e = as_f64(eps_fn(x, steps.copy(), s), cid, "eps_fn output")
    require(e.shape == x.shape, cid, f"eps_fn returned shape {e.shape}, expected {x.shape}")
    return e


def _call_q(q_fn: QFn, s: Array, a: Array, name: str, cid: str) -> Array:
    q = as_f64(q_fn(s, a), cid, f"{name} output")
    require(q.shape == (a.shape[0],), cid, f"{name} returned shape {q.shape}, expected ({a.shape[0]},)")
    return q


def _noise_prediction(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike,
                      eps: ArrayLike, cid: str) -> tuple[Array, Array, NDArray[np.int64]]:
    """(eps, eps_fn(a^k, k, s), k) with a^k = ddpm.noise(a, eps): shared by the eps-matching losses."""
    a0 = as_batch(a, cid, "a")
    e = as_batch(eps, cid, "eps")
    same_shape(cid, a=a0, eps=e)
    B = a0.shape[0]
    st = _states(s, B, cid)
    _, steps = _schedule(betas, k, B, cid)
    a_k = ddpm.noise(a0, e, betas, steps)
    return e, _call_eps(eps_fn, a_k, steps, st, cid), steps


def bc_loss(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike, eps: ArrayLike) -> Array:
    """Clause ``diffusion_ql.bc_loss``: L_d = ||eps - eps_fn(sqrt(ab_k) a + sqrt(1 - ab_k) eps, k, s)||^2 per row."""
    e, eps_hat, steps = _noise_prediction(a, s, eps_fn, betas, k, eps, "diffusion_ql.bc_loss")
    return ddpm.simple_loss(e, eps_hat, betas, steps, "simple")


def _max_action(max_action: float | None, cid: str) -> float | None:
    if max_action is None:
        return None
    m = as_f64(max_action, cid, "max_action")
    require(m.ndim == 0 and float(m) > 0, cid, f"max_action must be a scalar > 0 or None, got {max_action!r}")
    return float(m)


def sample_action(
    s: ArrayLike,
    eps_fn: StateEpsFn,
    betas: ArrayLike,
    a_K: ArrayLike,
    noises: ArrayLike,
    max_action: float | None = 1.0,
    variance: str = "beta_tilde",
) -> Array:
    """Clause ``diffusion_ql.sample_action``: a^0 from the reverse chain k = K..1, x_0 clipped to +-max_action.

    Each step is ddpm.reverse_step; where the reconstruction x0_hat(a_k, eps_hat) lies outside
    [-max_action, max_action] the step uses the noise implied by the clipped x0, so its mean is
    the posterior mean mu_tilde(clip(x0_hat), a_k) (the official code's clip_denoised). The
    result is clipped once more. max_action=None gives the plain chain.
    """
    cid = "diffusion_ql.sample_action"
    x = as_batch(a_K, cid, "a_K")
    B, d = x.shape
    st = _states(s, B, cid)
    beta = as_betas(betas, cid)
    K = beta.size
    a_bar, _ = _schedule(beta, 1, B, cid)
    z = as_f64(noises, cid, "noises")
    require(z.shape == (K, B, d), cid, f"noises must have shape (K, B, da) = {(K, B, d)}, got {z.shape}")
    m = _max_action(max_action, cid)
    require(variance in VARIANCES, cid, f"variance must be one of {VARIANCES}, got {variance!r}")
    for k in range(K, 0, -1):
        steps = np.full(B, k, dtype=np.int64)
        eps_hat = _call_eps(eps_fn, x, steps, st, cid)
        if m is not None:
            x0_hat = ddpm.x0_from_eps(x, eps_hat, beta, k)
            x0_clipped = np.clip(x0_hat, -m, m)
            implied = (x - np.sqrt(a_bar[k]) * x0_clipped) / np.sqrt(1.0 - a_bar[k])
            eps_hat = np.where(x0_clipped != x0_hat, implied, eps_hat)
        x = ddpm.reverse_step(x, eps_hat, beta, k, z[k - 1], variance)
    return x if m is None else np.clip(x, -m, m)


def _q_values(q: ArrayLike, q_norm: ArrayLike, cid: str) -> tuple[Array, Array]:
    qq = as_f64(q, cid, "q")
    qn = as_f64(q_norm, cid, "q_norm")
    require(qq.ndim == 1 and qq.size >= 1, cid, f"q must have shape (B,) with B >= 1, got {qq.shape}")
    require(qn.ndim == 1 and qn.size >= 1, cid, f"q_norm must have shape (M,) with M >= 1, got {qn.shape}")
    require(bool(np.mean(np.abs(qn)) > 0), cid, "the normaliser E|Q| = mean(|q_norm|) must be > 0")
    return qq, qn


def _eta(eta: float, cid: str) -> float:
    e = as_f64(eta, cid, "eta")
    require(e.ndim == 0 and float(e) >= 0, cid, f"eta must be a scalar >= 0, got {eta!r}")
    return float(e)


def q_loss(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> Array:
    """Clause ``diffusion_ql.q_loss``: L_q = -alpha Q(s, a^0) per row, alpha = eta / mean|q_norm| (a constant)."""
    cid = "diffusion_ql.q_loss"
    qq, qn = _q_values(q, q_norm, cid)
    alpha = _eta(eta, cid) / np.mean(np.abs(qn))
    return np.asarray(-alpha * qq, dtype=np.float64)


def q_loss_grad(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> tuple[Array, Array]:
    """Clause ``diffusion_ql.q_loss_grad``: gradients of mean_i L_q,i w.r.t. q and q_norm (the latter 0)."""
    cid = "diffusion_ql.q_loss_grad"
    qq, qn = _q_values(q, q_norm, cid)
    alpha = _eta(eta, cid) / np.mean(np.abs(qn))
    # The normaliser is a stop-gradient constant: no gradient reaches q_norm.
    return np.full(qq.shape, -alpha / qq.size), np.zeros(qn.shape)


def loss(
    a: ArrayLike,
    s: ArrayLike,
    eps_fn: StateEpsFn,
    betas: ArrayLike,
    k: ArrayLike,
    eps: ArrayLike,
    a_K: ArrayLike,
    noises: ArrayLike,
    q_fn: QFn,
    q_norm_fn: QFn,
    eta: float = 1.0,
    max_action: float | None = 1.0,
    variance: str = "beta_tilde",
) -> Array:
    """Clause ``diffusion_ql.loss``: L = L_d + L_q per row, L_q at a^0 = sample_action(s) (the policy's own action)."""
    cid = "diffusion_ql.loss"
    try:
        l_d = bc_loss(a, s, eps_fn, betas, k, eps)
        a0 = sample_action(s, eps_fn, betas, a_K, noises, max_action, variance)
        st = as_batch(s, cid, "s")
        l_q = q_loss(_call_q(q_fn, st, a0, "q_fn", cid), _call_q(q_norm_fn, st, a0, "q_norm_fn", cid), eta)
    except DomainError as exc:
        raise DomainError(cid, str(exc)) from None
    require(l_q.shape == l_d.shape, cid, f"a_K has {l_q.size} rows but a has {l_d.size}")
    return np.asarray(l_d + l_q, dtype=np.float64)
