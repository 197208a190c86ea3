"""Diffusion Spectral Representation, Diff-SR (spec family ``diffsr``).

Shribak, Gao, Li, Xiao and Dai, NeurIPS 2024 (arXiv 2406.16121). The transition is an
energy-based model P(s' | s, a) = exp(psi(s, a)^T nu(s') - log Z(s, a)); a Gaussian-kernel
identity and random Fourier features turn it into a spectral factorisation <phi_omega, mu_omega>;
psi and nu are learned by denoising score matching on perturbed next states
s~' = sqrt(1 - beta) s' + sqrt(beta) eps, and a double critic on the features drives an
actor-critic loop. Randomness (omegas, phases, eps, noise levels) is always an argument.

Conventions: batches are rows; ``psi`` has shape (B, m) (one row per (s, a)), ``nu`` (N, m) (one
row per next state), the Jacobian of nu with respect to s~' is passed as ``grad_nu`` of shape
(B, m, ds) with grad_nu[b, l, :] = d nu_l / d s~' at (s~'_b, beta_b). ``beta`` is the paper's
perturbation variance (D6, D7), a scalar or one per row, strictly inside (0, 1). Critic values
are stacked as (n_critics, B).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from . import ddpm
from ._checks import Array, as_batch, as_betas, as_f64, as_step, require
from .schedule import alpha_bar

#: psi_fn(s (B, ds), a (B, da)) -> psi (B, m): the state-action feature network.
PsiFn = Callable[[Array, Array], ArrayLike]
#: grad_nu_fn(s_tilde (B, ds), beta (B,)) -> (B, m, ds): Jacobian of nu(s~'; beta) in s~'.
GradNuFn = Callable[[Array, Array], ArrayLike]


# ---- helpers ---------------------------------------------------------------------------


def _pairwise(psi: ArrayLike, nu: ArrayLike, cid: str) -> tuple[Array, Array]:
    p = as_batch(psi, cid, "psi")
    n = as_batch(nu, cid, "nu")
    require(p.shape[1] == n.shape[1], cid, f"psi and nu must have the same dimension m, got {p.shape} and {n.shape}")
    return p, n


def _vector(x: ArrayLike, n: int, cid: str, name: str) -> Array:
    v = as_f64(x, cid, name)
    require(v.shape == (n,), cid, f"{name} must have shape ({n},), got {v.shape}")
    return v


def _beta(beta: ArrayLike, B: int, cid: str) -> Array:
    """The perturbation variance as a (B, 1) column, each value strictly inside (0, 1)."""
    b = as_f64(beta, cid, "beta")
    require(b.ndim == 0 or b.shape == (B,), cid, f"beta must be a scalar or shape ({B},), got {b.shape}")
    require(bool(np.all((b > 0) & (b < 1))), cid, "beta must lie in (0, 1)")
    return np.broadcast_to(b, (B,))[:, None].astype(np.float64)


def _gamma(gamma: float, cid: str) -> float:
    g = as_f64(gamma, cid, "gamma")
    require(g.ndim == 0 and 0.0 <= float(g) < 1.0, cid, f"gamma must be a scalar in [0, 1), got {gamma!r}")
    return float(g)


def _critics(q: ArrayLike, cid: str, name: str) -> Array:
    """Critic values stacked as (n_critics, B), n_critics >= 1."""
    v = as_f64(q, cid, name)
    require(v.ndim == 2 and v.shape[0] >= 1, cid, f"{name} must have shape (n_critics, B), got {v.shape}")
    return v


def _entropy(alpha: float, log_pi: ArrayLike | None, B: int, cid: str, name: str) -> Array:
    """alpha log pi as a (B,) vector; zero when alpha = 0 and log_pi is omitted."""
    a = as_f64(alpha, cid, "alpha")
    require(a.ndim == 0 and float(a) >= 0.0, cid, f"alpha must be a scalar >= 0, got {alpha!r}")
    if log_pi is None:
        require(float(a) == 0.0, cid, f"{name} is required when alpha > 0")
        return np.zeros(B)
    lp = _vector(log_pi, B, cid, name)
    return float(a) * lp


def _logsumexp(x: Array) -> Array:
    """log sum_j exp(x_ij) per row, with the row maximum subtracted first (no overflow)."""
    mx = np.max(x, axis=1, keepdims=True)
    return np.asarray(mx[:, 0] + np.log(np.sum(np.exp(x - mx), axis=1)), dtype=np.float64)


# ---- energy-based transition and its kernel form ----------------------------------------


def ebm_transition(psi: ArrayLike, nu: ArrayLike) -> tuple[Array, Array]:
    """Clause ``diffsr.ebm_transition``: P(s'_j | s_i, a_i) = exp(psi_i^T nu_j - log Z_i), and log Z."""
    p, n = _pairwise(psi, nu, "diffsr.ebm_transition")
    energy = p @ n.T
    log_z = _logsumexp(energy)
    return np.exp(energy - log_z[:, None]), log_z


def ebm_identity(psi: ArrayLike, nu: ArrayLike) -> tuple[Array, Array, Array]:
    """Clause ``diffsr.ebm_identity``: psi^T nu = ||psi||^2/2 - ||psi - nu||^2/2 + ||nu||^2/2, as three log factors."""
    p, n = _pairwise(psi, nu, "diffsr.ebm_identity")
    log_scale_psi: Array = 0.5 * np.sum(p**2, axis=1)
    log_kernel: Array = -0.5 * np.sum((p[:, None, :] - n[None, :, :]) ** 2, axis=2)
    log_scale_nu: Array = 0.5 * np.sum(n**2, axis=1)
    return log_scale_psi, log_kernel, log_scale_nu


def _fourier(x: Array, omegas: Array, phases: Array | None) -> Array:
    """Real random Fourier features of the unit Gaussian kernel, without the EBM envelope."""
    D = omegas.shape[0]
    proj = x @ omegas.T
    if phases is None:
        paired: Array = np.concatenate([np.cos(proj), np.sin(proj)], axis=1) / np.sqrt(D)
        return paired
    phased: Array = np.sqrt(2.0 / D) * np.cos(proj + phases)
    return phased


def rff(
    psi: ArrayLike,
    nu: ArrayLike,
    log_z: ArrayLike,
    omegas: ArrayLike,
    phases: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """Clause ``diffsr.rff``: phi_omega(s, a) and mu_omega(s') with <phi_omega, mu_omega> ~ P(s' | s, a)."""
    cid = "diffsr.rff"
    p, n = _pairwise(psi, nu, cid)
    lz = _vector(log_z, p.shape[0], cid, "log_z")
    w = as_batch(omegas, cid, "omegas")
    require(w.shape[1] == p.shape[1], cid, f"omegas must have shape (D, {p.shape[1]}), got {w.shape}")
    b = None if phases is None else _vector(phases, w.shape[0], cid, "phases")
    log_env_psi = 0.5 * np.sum(p**2, axis=1) - lz
    log_env_nu = 0.5 * np.sum(n**2, axis=1)
    top = np.log(np.finfo(np.float64).max)
    require(bool(np.all(log_env_psi < top) and np.all(log_env_nu < top)), cid,
            "exp(||psi||^2/2 - log Z) and exp(||nu||^2/2) must be finite in float64")
    envelope_psi = np.exp(log_env_psi)[:, None]
    envelope_nu = np.exp(log_env_nu)[:, None]
    return envelope_psi * _fourier(p, w, b), envelope_nu * _fourier(n, w, b)


# ---- perturbed transition and score matching --------------------------------------------


def _mixture(weights: ArrayLike, means: ArrayLike, cov: ArrayLike, B: int, ds: int,
             cid: str) -> tuple[Array, Array, Array]:
    """Weights (B, N) (rows sum to 1), means broadcast to (B, N, ds), a PSD covariance (ds, ds)."""
    w = as_batch(weights, cid, "weights")
    N = w.shape[1]
    require(w.shape[0] == B, cid, f"weights must have shape ({B}, N), got {w.shape}")
    require(bool(np.all(w >= 0)), cid, "weights must be >= 0")
    require(bool(np.all(np.abs(w.sum(axis=1) - 1.0) <= 1e-9)), cid, "each row of weights must sum to 1")
    m = as_f64(means, cid, "means")
    require(m.shape in ((N, ds), (B, N, ds)), cid,
            f"means must have shape ({N}, {ds}) or ({B}, {N}, {ds}), got {m.shape}")
    sigma = as_f64(cov, cid, "cov")
    require(sigma.shape == (ds, ds), cid, f"cov must have shape ({ds}, {ds}), got {sigma.shape}")
    tiny = 1e-12 * (1.0 + float(np.abs(sigma).max()))
    require(bool(np.all(np.abs(sigma - sigma.T) <= tiny)), cid, "cov must be symmetric")
    require(bool(np.linalg.eigvalsh(sigma).min() >= -tiny), cid, "cov must be positive semidefinite")
    return w, np.broadcast_to(m, (B, N, ds)), sigma


def perturbed_transition(
    s_tilde: ArrayLike,
    means: ArrayLike,
    weights: ArrayLike,
    cov: ArrayLike,
    beta: ArrayLike,
) -> tuple[Array, Array]:
    """Clause ``diffsr.perturbed_transition``: log P(s~' | s, a; beta) and score for a Gaussian-mixture P(s' | s, a)."""
    cid = "diffsr.perturbed_transition"
    x = as_batch(s_tilde, cid, "s_tilde")
    B, ds = x.shape
    w, m, sigma = _mixture(weights, means, cov, B, ds, cid)
    bb = _beta(beta, B, cid)
    # P(s~' | s, a; beta) = sum_j w_j N(s~'; sqrt(1 - beta) m_j, C), C = (1 - beta) Sigma + beta I.
    C = (1.0 - bb)[:, :, None] * sigma + bb[:, :, None] * np.eye(ds)
    L = np.linalg.cholesky(C)
    diff = x[:, None, :] - np.sqrt(1.0 - bb)[:, :, None] * m            # (B, N, ds)
    white = np.linalg.solve(L[:, None, :, :], diff[..., None])[..., 0]  # L^{-1} diff
    log_det = 2.0 * np.sum(np.log(np.diagonal(L, axis1=1, axis2=2)), axis=1)
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    log_comp = log_w - 0.5 * np.sum(white**2, axis=2) - 0.5 * (log_det + ds * np.log(2 * np.pi))[:, None]
    log_p = _logsumexp(log_comp)
    post = np.exp(log_comp - log_p[:, None])                           # posterior weights of the components
    resid = x - np.sqrt(1.0 - bb) * np.einsum("bn,bnd->bd", post, m)
    score = -np.linalg.solve(C, resid[..., None])[..., 0]
    return log_p, score


def score_objective(
    psi: ArrayLike,
    grad_nu: ArrayLike,
    s_tilde: ArrayLike,
    s_next: ArrayLike,
    beta: ArrayLike,
) -> Array:
    """Clause ``diffsr.score_objective``: ||psi^T grad nu(s~'; beta) + (s~' - sqrt(1 - beta) s') / beta||^2 per row."""
    cid = "diffsr.score_objective"
    p = as_batch(psi, cid, "psi")
    B, m_dim = p.shape
    x = as_batch(s_tilde, cid, "s_tilde")
    s1 = as_batch(s_next, cid, "s_next")
    require(x.shape[0] == B and s1.shape == x.shape, cid,
            f"s_tilde and s_next must both have shape ({B}, ds), got {x.shape} and {s1.shape}")
    g = as_f64(grad_nu, cid, "grad_nu")
    require(g.shape == (B, m_dim, x.shape[1]), cid,
            f"grad_nu must have shape ({B}, {m_dim}, {x.shape[1]}), got {g.shape}")
    bb = _beta(beta, B, cid)
    model_score = np.einsum("bm,bmd->bd", p, g)
    residual = model_score + (x - np.sqrt(1.0 - bb) * s1) / bb
    return np.asarray(np.sum(residual**2, axis=1), dtype=np.float64)


def train_step(
    psi_fn: PsiFn,
    grad_nu_fn: GradNuFn,
    s: ArrayLike,
    a: ArrayLike,
    s_next: ArrayLike,
    eps: ArrayLike,
    betas: ArrayLike,
    k: ArrayLike,
) -> float:
    """Clause ``diffsr.train_step``: Algorithm 1's batch objective at levels beta = 1 - alpha_bar_k, noise eps."""
    cid = "diffsr.train_step"
    ss = as_batch(s, cid, "s")
    aa = as_batch(a, cid, "a")
    s1 = as_batch(s_next, cid, "s_next")
    e = as_batch(eps, cid, "eps")
    B = s1.shape[0]
    require(ss.shape[0] == B and aa.shape[0] == B, cid,
            f"s, a and s_next must have the same batch size, got {ss.shape}, {aa.shape}, {s1.shape}")
    require(e.shape == s1.shape, cid, f"eps must have the shape of s_next {s1.shape}, got {e.shape}")
    b = as_betas(betas, cid)
    steps = np.broadcast_to(as_step(k, b.size, cid, batch=B), (B,))
    level = 1.0 - alpha_bar(b)[steps]                     # the paper's beta^k, one per row
    s_tilde = ddpm.noise(s1, e, b, steps)                 # sqrt(1 - beta^k) s' + sqrt(beta^k) eps
    psi = as_f64(psi_fn(ss, aa), cid, "psi_fn(s, a)")
    grad_nu = as_f64(grad_nu_fn(s_tilde, level), cid, "grad_nu_fn(s_tilde, beta)")
    return float(np.mean(score_objective(psi, grad_nu, s_tilde, s1, level)))


# ---- online RL with the features (Algorithm 2) ------------------------------------------


def _elu(x: Array) -> Array:
    """elu(x) = x for x > 0, e^x - 1 otherwise (expm1: no cancellation near 0, no overflow for large x)."""
    return np.asarray(np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))), dtype=np.float64)


def critic(
    psi: ArrayLike,
    omegas: ArrayLike,
    phases: ArrayLike,
    amplitude: float,
    hidden_w: ArrayLike | None,
    hidden_b: ArrayLike | None,
    out_w: ArrayLike,
    out_b: ArrayLike,
) -> Array:
    """Clause ``diffsr.critic``: Q_i = w_i^T h_i + d_i, h_i = elu(W_i z_i + c_i) or z_i, z_i = A cos(omega_i psi + b_i).

    Returns (n_critics, B). hidden_w = hidden_b = None is the linear head of the deck's spectral Q.
    """
    cid = "diffsr.critic"
    p = as_batch(psi, cid, "psi")
    m = p.shape[1]
    w = as_f64(omegas, cid, "omegas")
    require(w.ndim == 3 and w.shape[0] >= 1 and w.shape[1] >= 1 and w.shape[2] == m, cid,
            f"omegas must have shape (n_critics, D, {m}) with n_critics, D >= 1, got {w.shape}")
    n, D = w.shape[0], w.shape[1]
    b = as_f64(phases, cid, "phases")
    require(b.shape == (n, D), cid, f"phases must have shape ({n}, {D}), got {b.shape}")
    A = as_f64(amplitude, cid, "amplitude")
    require(A.ndim == 0 and float(A) > 0.0, cid, f"amplitude must be a scalar > 0, got {amplitude!r}")
    require((hidden_w is None) == (hidden_b is None), cid, "hidden_w and hidden_b are both given or both None")
    z = float(A) * np.cos(np.einsum("bl,njl->nbj", p, w) + b[:, None, :])        # (n, B, D)
    h = z
    if hidden_w is not None and hidden_b is not None:
        W = as_f64(hidden_w, cid, "hidden_w")
        require(W.ndim == 3 and W.shape[0] == n and W.shape[1] >= 1 and W.shape[2] == D, cid,
                f"hidden_w must have shape ({n}, H, {D}) with H >= 1, got {W.shape}")
        c = as_f64(hidden_b, cid, "hidden_b")
        require(c.shape == (n, W.shape[1]), cid, f"hidden_b must have shape ({n}, {W.shape[1]}), got {c.shape}")
        h = _elu(np.einsum("nbj,nkj->nbk", z, W) + c[:, None, :])              # (n, B, H)
    width = h.shape[2]
    ow = as_f64(out_w, cid, "out_w")
    require(ow.shape == (n, width), cid, f"out_w must have shape ({n}, {width}), got {ow.shape}")
    ob = _vector(out_b, n, cid, "out_b")
    return np.asarray(np.einsum("nbk,nk->nb", h, ow) + ob[:, None], dtype=np.float64)


def td_target(
    r: ArrayLike,
    done: ArrayLike,
    q_next: ArrayLike,
    gamma: float,
    alpha: float = 0.0,
    log_pi_next: ArrayLike | None = None,
) -> Array:
    """Clause ``diffsr.td_target``: y = r + gamma (1 - done) (min_i Q_target_i(s', a') - alpha log pi(a' | s'))."""
    cid = "diffsr.td_target"
    q = _critics(q_next, cid, "q_next")
    B = q.shape[1]
    rr = _vector(r, B, cid, "r")
    d = _vector(done, B, cid, "done")
    require(bool(np.all((d == 0) | (d == 1))), cid, "done must be 0 or 1")
    g = _gamma(gamma, cid)
    soft_value = np.min(q, axis=0) - _entropy(alpha, log_pi_next, B, cid, "log_pi_next")
    return np.asarray(rr + g * (1.0 - d) * soft_value, dtype=np.float64)


def critic_loss(q: ArrayLike, y: ArrayLike) -> Array:
    """Clause ``diffsr.critic_loss``: sum_i (Q_i(s, a) - y)^2 per row (the TD loss of every critic, summed)."""
    cid = "diffsr.critic_loss"
    qq = _critics(q, cid, "q")
    yy = _vector(y, qq.shape[1], cid, "y")
    return np.asarray(np.sum((qq - yy) ** 2, axis=0), dtype=np.float64)


def policy_objective(q: ArrayLike, alpha: float = 0.0, log_pi: ArrayLike | None = None) -> Array:
    """Clause ``diffsr.policy_objective``: min_i Q_i(s, a) - alpha log pi(a | s) per row, a ~ pi(. | s) (maximised)."""
    cid = "diffsr.policy_objective"
    qq = _critics(q, cid, "q")
    return np.asarray(np.min(qq, axis=0) - _entropy(alpha, log_pi, qq.shape[1], cid, "log_pi"), dtype=np.float64)

