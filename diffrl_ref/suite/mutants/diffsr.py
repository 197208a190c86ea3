"""Planted bugs for the ``diffsr`` family: mistakes seen in EBM, random-feature, score-matching and SAC/TD3 code."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import ddpm
from diffrl_ref.reference import diffsr as ref
from diffrl_ref.reference._checks import as_batch, as_betas, as_f64, as_step
from diffrl_ref.reference.schedule import alpha_bar

from . import Mutant

F = NDArray[np.float64]


# ---- ebm_transition ---------------------------------------------------------------------


def _ebm_naive(psi: ArrayLike, nu: ArrayLike) -> tuple[F, F]:
    p, n = ref._pairwise(psi, nu, "diffsr.ebm_transition")  # noqa: SLF001 - reuse the checks
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e = np.exp(p @ n.T)                      # no max-subtraction: overflows to inf, or 0/0
        z = e.sum(axis=1)
        return e / z[:, None], np.log(z)


def _ebm_wrong_axis(psi: ArrayLike, nu: ArrayLike) -> tuple[F, F]:
    p, n = ref._pairwise(psi, nu, "diffsr.ebm_transition")  # noqa: SLF001
    e = p @ n.T
    mx = e.max(axis=0, keepdims=True)            # softmax over the batch axis instead of the next states
    log_z = mx[0] + np.log(np.exp(e - mx).sum(axis=0))
    _, lz = ref.ebm_transition(p, n)
    return np.exp(e - log_z[None, :]), lz


def _ebm_log_z_unshifted(psi: ArrayLike, nu: ArrayLike) -> tuple[F, F]:
    p, n = ref._pairwise(psi, nu, "diffsr.ebm_transition")  # noqa: SLF001
    e = p @ n.T
    mx = e.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(e - mx).sum(axis=1))  # the max is never added back to log Z
    return np.exp(e - mx - log_sum[:, None]), log_sum


def _ebm_attention_temperature(psi: ArrayLike, nu: ArrayLike) -> tuple[F, F]:
    p, n = ref._pairwise(psi, nu, "diffsr.ebm_transition")  # noqa: SLF001
    _, log_z = ref.ebm_transition(p, n)
    # P from an attention layer's scaled dot product softmax(psi^T nu / sqrt(m)); log Z kept unscaled.
    # Rows still sum to 1 and P is unchanged by nu -> nu + u: only the values show the temperature.
    p_scaled, _ = ref.ebm_transition(p / np.sqrt(p.shape[1]), n)
    return p_scaled, log_z


def _ebm_unchecked(psi: ArrayLike, nu: ArrayLike) -> tuple[F, F]:
    p, n = np.atleast_2d(np.asarray(psi, dtype=np.float64)), np.atleast_2d(np.asarray(nu, dtype=np.float64))
    k = min(p.shape[1], n.shape[1])
    e = p[:, :k] @ n[:, :k].T
    mx = np.nan_to_num(e.max(axis=1, keepdims=True))
    log_z = mx[:, 0] + np.log(np.exp(e - mx).sum(axis=1))
    return np.exp(e - log_z[:, None]), log_z


# ---- ebm_identity -----------------------------------------------------------------------


def _identity_sign(psi: ArrayLike, nu: ArrayLike) -> tuple[F, F, F]:
    a, k, b = ref.ebm_identity(psi, nu)
    return -a, k, b                              # exp(-||psi||^2 / 2): the sign of the psi factor flipped


def _identity_no_half(psi: ArrayLike, nu: ArrayLike) -> tuple[F, F, F]:
    a, k, b = ref.ebm_identity(psi, nu)
    return a, 2.0 * k, b                         # kernel exp(-||psi - nu||^2) without the 1/2


def _identity_kernel_sign(psi: ArrayLike, nu: ArrayLike) -> tuple[F, F, F]:
    a, k, b = ref.ebm_identity(psi, nu)
    return -a, -k, -b                            # every log factor negated (a decomposition of exp(-psi^T nu))


def _identity_unchecked(psi: ArrayLike, nu: ArrayLike) -> tuple[F, F, F]:
    p, n = np.atleast_2d(np.asarray(psi, dtype=np.float64)), np.atleast_2d(np.asarray(nu, dtype=np.float64))
    k = min(p.shape[1], n.shape[1])
    p, n = p[:, :k], n[:, :k]
    return (0.5 * (p**2).sum(axis=1), -0.5 * ((p[:, None] - n[None]) ** 2).sum(axis=2), 0.5 * (n**2).sum(axis=1))


# ---- rff --------------------------------------------------------------------------------


def _rff_parts(psi: ArrayLike, nu: ArrayLike, log_z: ArrayLike, omegas: ArrayLike,
               phases: ArrayLike | None) -> tuple[F, F, F, F, F | None]:
    """Validated inputs via the reference (its checks run; its output is discarded)."""
    ref.rff(psi, nu, log_z, omegas, phases)
    return (np.asarray(psi, dtype=np.float64), np.asarray(nu, dtype=np.float64), np.asarray(log_z, dtype=np.float64),
            np.asarray(omegas, dtype=np.float64), None if phases is None else np.asarray(phases, dtype=np.float64))


def _envelopes(p: F, n: F, lz: F) -> tuple[F, F]:
    return np.exp(0.5 * (p**2).sum(axis=1) - lz)[:, None], np.exp(0.5 * (n**2).sum(axis=1))[:, None]


def _rff_no_scale(psi: ArrayLike, nu: ArrayLike, log_z: ArrayLike, omegas: ArrayLike,
                  phases: ArrayLike | None = None) -> tuple[F, F]:
    p, n, lz, w, b = _rff_parts(psi, nu, log_z, omegas, phases)
    ep, en = _envelopes(p, n, lz)

    def feats(x: F) -> F:                        # cos/sin features without the sqrt(2/D) (sqrt(1/D)) scale
        proj = x @ w.T
        return np.concatenate([np.cos(proj), np.sin(proj)], axis=1) if b is None else np.sqrt(2.0) * np.cos(proj + b)

    return ep * feats(p), en * feats(n)


def _rff_two_pi(psi: ArrayLike, nu: ArrayLike, log_z: ArrayLike, omegas: ArrayLike,
                phases: ArrayLike | None = None) -> tuple[F, F]:
    p, n, lz, w, b = _rff_parts(psi, nu, log_z, omegas, phases)
    return ref.rff(p, n, lz, 2 * np.pi * w, b)   # Fourier-feature habit 2 pi omega: the kernel's bandwidth is wrong


def _rff_ignore_phases(psi: ArrayLike, nu: ArrayLike, log_z: ArrayLike, omegas: ArrayLike,
                       phases: ArrayLike | None = None) -> tuple[F, F]:
    p, n, lz, w, b = _rff_parts(psi, nu, log_z, omegas, phases)
    if b is None:
        return ref.rff(p, n, lz, w, None)
    return ref.rff(p, n, lz, w, np.zeros_like(b))   # the random phases dropped: sqrt(2/D) cos(omega^T x)


def _rff_split_frequencies(psi: ArrayLike, nu: ArrayLike, log_z: ArrayLike, omegas: ArrayLike,
                           phases: ArrayLike | None = None) -> tuple[F, F]:
    p, n, lz, w, b = _rff_parts(psi, nu, log_z, omegas, phases)
    if b is not None or w.shape[0] < 2:
        return ref.rff(p, n, lz, w, b)
    D = w.shape[0]
    h = D // 2
    ep, en = _envelopes(p, n, lz)

    def feats(x: F) -> F:                        # cos on the first half of the frequencies, sin on the second
        out: F = np.concatenate([np.cos(x @ w[:h].T), np.sin(x @ w[h:2 * h].T)], axis=1) * np.sqrt(1.0 / h)
        return out

    return ep * feats(p), en * feats(n)


def _rff_envelope_sign(psi: ArrayLike, nu: ArrayLike, log_z: ArrayLike, omegas: ArrayLike,
                       phases: ArrayLike | None = None) -> tuple[F, F]:
    p, n, lz, w, b = _rff_parts(psi, nu, log_z, omegas, phases)
    phi, mu = ref.rff(p, n, lz, w, b)
    return phi * np.exp(-(p**2).sum(axis=1))[:, None], mu   # exp(-||psi||^2/2 - log Z): sign of the psi term


def _rff_unchecked(psi: ArrayLike, nu: ArrayLike, log_z: ArrayLike, omegas: ArrayLike,
                   phases: ArrayLike | None = None) -> tuple[F, F]:
    p, n = np.atleast_2d(np.asarray(psi, dtype=np.float64)), np.atleast_2d(np.asarray(nu, dtype=np.float64))
    w = np.atleast_2d(np.asarray(omegas, dtype=np.float64))
    k = min(p.shape[1], n.shape[1], w.shape[1])
    p, n, w = p[:, :k], n[:, :k], w[:, :k]
    lz = np.resize(np.asarray(log_z, dtype=np.float64), p.shape[0])
    b = None if phases is None else np.resize(np.asarray(phases, dtype=np.float64), w.shape[0])

    def f(x: F) -> F:
        if b is None:
            paired: F = np.concatenate([np.cos(x @ w.T), np.sin(x @ w.T)], axis=1) / np.sqrt(w.shape[0])
            return paired
        phased: F = np.sqrt(2.0 / w.shape[0]) * np.cos(x @ w.T + b)
        return phased

    with np.errstate(over="ignore", invalid="ignore"):
        ep, en = _envelopes(p, n, lz)
        return ep * f(p), en * f(n)


# ---- perturbed_transition -----------------------------------------------------------------


def _pt_mixture(x: F, m: F, w: F, C: F, mean_scale: F) -> tuple[F, F]:
    """log sum_j w_j N(x; scale m_j, C) and its score, per row (C of shape (B, ds, ds), scale (B, 1))."""
    c_inv = np.linalg.inv(C)
    diff = x[:, None, :] - mean_scale[:, :, None] * m                   # (B, N, ds)
    quad = np.einsum("bnd,bde,bne->bn", diff, c_inv, diff)
    with np.errstate(divide="ignore"):
        lc = np.log(w) - 0.5 * quad - 0.5 * np.linalg.slogdet(2 * np.pi * C)[1][:, None]
    top = lc.max(axis=1, keepdims=True)
    log_p = top[:, 0] + np.log(np.exp(lc - top).sum(axis=1))
    post = np.exp(lc - log_p[:, None])
    score = -np.einsum("bde,be->bd", c_inv, x - mean_scale * np.einsum("bn,bnd->bd", post, m))
    return log_p, score


def _pt_with(s_tilde: ArrayLike, means: ArrayLike, weights: ArrayLike, cov: ArrayLike, beta: ArrayLike,
             mean_scale: Any, cov_fn: Any) -> tuple[F, F]:
    """The perturbed mixture with a buggy mean scale and covariance (validated like the reference)."""
    ref.perturbed_transition(s_tilde, means, weights, cov, beta)
    x = np.asarray(s_tilde, dtype=np.float64)
    B, ds = x.shape
    w = np.asarray(weights, dtype=np.float64)
    m = np.broadcast_to(np.asarray(means, dtype=np.float64), (B, w.shape[1], ds))
    sigma = np.asarray(cov, dtype=np.float64)
    b = np.broadcast_to(np.asarray(beta, dtype=np.float64), (B,))[:, None, None]
    return _pt_mixture(x, m, w, cov_fn(sigma, b, np.eye(ds)), mean_scale(b[:, :, 0]))


def _pt_no_sqrt(s_tilde: ArrayLike, means: ArrayLike, weights: ArrayLike, cov: ArrayLike,
                beta: ArrayLike) -> tuple[F, F]:
    return _pt_with(s_tilde, means, weights, cov, beta, lambda b: np.ones_like(b),  # mean s', not sqrt(1 - beta) s'
                    lambda s, b, eye: (1 - b) * s + b * eye)


def _pt_no_shrink(s_tilde: ArrayLike, means: ArrayLike, weights: ArrayLike, cov: ArrayLike,
                  beta: ArrayLike) -> tuple[F, F]:
    return _pt_with(s_tilde, means, weights, cov, beta, lambda b: np.sqrt(1 - b),
                    lambda s, b, eye: s + b * eye)                       # Sigma + beta I: (1 - beta) forgotten


def _pt_std_as_var(s_tilde: ArrayLike, means: ArrayLike, weights: ArrayLike, cov: ArrayLike,
                   beta: ArrayLike) -> tuple[F, F]:
    return _pt_with(s_tilde, means, weights, cov, beta, lambda b: np.sqrt(1 - b),
                    lambda s, b, eye: (1 - b) * s + np.sqrt(b) * eye)    # sqrt(beta) I as the added variance


def _pt_unchecked(s_tilde: ArrayLike, means: ArrayLike, weights: ArrayLike, cov: ArrayLike,
                  beta: ArrayLike) -> tuple[F, F]:
    x = np.atleast_2d(np.asarray(s_tilde, dtype=np.float64))
    B, ds = x.shape
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    m = np.asarray(means, dtype=np.float64)
    m = np.broadcast_to(m[..., :ds] if m.shape[-1] >= ds else np.resize(m, m.shape[:-1] + (ds,)), (B, w.shape[1], ds))
    b = np.broadcast_to(np.asarray(beta, dtype=np.float64), (B,))[:, None, None]
    C = (1 - b) * np.asarray(cov, dtype=np.float64) + b * np.eye(ds)
    with np.errstate(all="ignore"):
        C = np.where(np.abs(np.linalg.det(C))[:, None, None] > 0, C, np.eye(ds))   # singular C silently replaced
        return _pt_mixture(x, m, w, C, np.sqrt(np.abs(1 - b[:, :, 0])))


# ---- score_objective ----------------------------------------------------------------------


def _obj_parts(psi: ArrayLike, grad_nu: ArrayLike, s_tilde: ArrayLike, s_next: ArrayLike,
               beta: ArrayLike) -> tuple[F, F, F, F]:
    ref.score_objective(psi, grad_nu, s_tilde, s_next, beta)    # the reference's checks
    p, g = np.asarray(psi, dtype=np.float64), np.asarray(grad_nu, dtype=np.float64)
    x, s1 = np.asarray(s_tilde, dtype=np.float64), np.asarray(s_next, dtype=np.float64)
    b = np.broadcast_to(np.asarray(beta, dtype=np.float64), (x.shape[0],))[:, None]
    return np.einsum("bm,bmd->bd", p, g), x, s1, b


def _obj_no_sqrt(psi: ArrayLike, grad_nu: ArrayLike, s_tilde: ArrayLike, s_next: ArrayLike, beta: ArrayLike) -> F:
    s, x, s1, b = _obj_parts(psi, grad_nu, s_tilde, s_next, beta)
    return np.asarray(((s + (x - s1) / b) ** 2).sum(axis=1))          # (s~' - s') / beta: sqrt(1 - beta) missing


def _obj_sqrt_beta(psi: ArrayLike, grad_nu: ArrayLike, s_tilde: ArrayLike, s_next: ArrayLike, beta: ArrayLike) -> F:
    s, x, s1, b = _obj_parts(psi, grad_nu, s_tilde, s_next, beta)
    return np.asarray(((s + (x - np.sqrt(1 - b) * s1) / np.sqrt(b)) ** 2).sum(axis=1))   # divided by sqrt(beta)


def _obj_sign(psi: ArrayLike, grad_nu: ArrayLike, s_tilde: ArrayLike, s_next: ArrayLike, beta: ArrayLike) -> F:
    s, x, s1, b = _obj_parts(psi, grad_nu, s_tilde, s_next, beta)
    return np.asarray(((s - (x - np.sqrt(1 - b) * s1) / b) ** 2).sum(axis=1))        # target sign flipped


def _obj_unchecked(psi: ArrayLike, grad_nu: ArrayLike, s_tilde: ArrayLike, s_next: ArrayLike, beta: ArrayLike) -> F:
    p, g = np.atleast_2d(np.asarray(psi, dtype=np.float64)), np.asarray(grad_nu, dtype=np.float64)
    x, s1 = np.asarray(s_tilde, dtype=np.float64), np.asarray(s_next, dtype=np.float64)
    d = min(x.shape[-1], s1.shape[-1], g.shape[-1])
    mm = min(p.shape[1], g.shape[1])
    b = np.broadcast_to(np.asarray(beta, dtype=np.float64), (x.shape[0],))[:, None]
    with np.errstate(all="ignore"):
        s = np.einsum("bm,bmd->bd", p[:, :mm], g[:, :mm, :d])
        return np.asarray(((s + (x[:, :d] - np.sqrt(1 - b) * s1[:, :d]) / b) ** 2).sum(axis=1))


# ---- train_step ---------------------------------------------------------------------------


def _train_with(psi_fn: ref.PsiFn, grad_nu_fn: ref.GradNuFn, s: ArrayLike, a: ArrayLike, s_next: ArrayLike,
                eps: ArrayLike, betas: ArrayLike, k: ArrayLike, corrupt: Any, level_index: int = 0,
                reduce: Any = np.mean) -> float:
    cid = "diffsr.train_step"
    ss, aa, s1, e = (as_batch(v, cid, n) for v, n in ((s, "s"), (a, "a"), (s_next, "s_next"), (eps, "eps")))
    b = as_betas(betas, cid)
    B = s1.shape[0]
    steps = np.broadcast_to(as_step(k, b.size, cid, batch=B), (B,))
    ab = alpha_bar(b)[steps + level_index]
    level = 1.0 - ab
    x = corrupt(s1, e, ab)
    psi = as_f64(psi_fn(ss, aa), cid, "psi")
    g = as_f64(grad_nu_fn(x, level), cid, "grad_nu")
    # The objective written out, unchecked as in a training loop: a level of 0 (alphas_cumprod_prev at k = 1)
    # divides by zero and gives inf or NaN, not a domain error of another clause.
    with np.errstate(divide="ignore", invalid="ignore"):
        resid = np.einsum("bm,bmd->bd", psi, g) + (x - np.sqrt(1.0 - level)[:, None] * s1) / level[:, None]
        return float(reduce(np.sum(resid**2, axis=1)))


def _train_no_sqrt(psi_fn: ref.PsiFn, grad_nu_fn: ref.GradNuFn, s: ArrayLike, a: ArrayLike, s_next: ArrayLike,
                   eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> float:
    return _train_with(psi_fn, grad_nu_fn, s, a, s_next, eps, betas, k,   # alpha_bar s' + (1 - alpha_bar) eps
                       lambda s1, e, ab: ab[:, None] * s1 + (1 - ab)[:, None] * e)


def _train_prev_level(psi_fn: ref.PsiFn, grad_nu_fn: ref.GradNuFn, s: ArrayLike, a: ArrayLike, s_next: ArrayLike,
                      eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> float:
    return _train_with(psi_fn, grad_nu_fn, s, a, s_next, eps, betas, k,   # alphas_cumprod_prev: level of step k - 1
                       lambda s1, e, ab: np.sqrt(ab)[:, None] * s1 + np.sqrt(1 - ab)[:, None] * e, level_index=-1)


def _train_sum(psi_fn: ref.PsiFn, grad_nu_fn: ref.GradNuFn, s: ArrayLike, a: ArrayLike, s_next: ArrayLike,
               eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> float:
    return _train_with(psi_fn, grad_nu_fn, s, a, s_next, eps, betas, k,   # summed over the batch, not averaged
                       lambda s1, e, ab: np.sqrt(ab)[:, None] * s1 + np.sqrt(1 - ab)[:, None] * e, reduce=np.sum)


def _train_unchecked(psi_fn: ref.PsiFn, grad_nu_fn: ref.GradNuFn, s: ArrayLike, a: ArrayLike, s_next: ArrayLike,
                     eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> float:
    s1, e = np.asarray(s_next, dtype=np.float64), np.asarray(eps, dtype=np.float64)
    b = np.asarray(betas, dtype=np.float64)
    ab = np.concatenate([[1.0], np.cumprod(1 - b)])[np.broadcast_to(np.asarray(k), (s1.shape[0],)) % (b.size + 1)]
    with np.errstate(all="ignore"):
        x = np.sqrt(ab)[:, None] * s1 + np.sqrt(1 - ab)[:, None] * np.resize(e, s1.shape)
        psi = np.asarray(psi_fn(np.asarray(s), np.asarray(a)), dtype=np.float64)[: s1.shape[0]]
        g = np.asarray(grad_nu_fn(x, 1 - ab), dtype=np.float64)
        lv = np.where(ab < 1, 1 - ab, 0.5)[:, None]
        return float(np.mean(((np.einsum("bm,bmd->bd", psi, g) + (x - np.sqrt(1 - lv) * s1) / lv) ** 2).sum(axis=1)))


# ---- critic -------------------------------------------------------------------------------


def _q_with(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float, hidden_w: ArrayLike | None,
            hidden_b: ArrayLike | None, out_w: ArrayLike, out_b: ArrayLike, *, trig: Any = np.cos,
            amp: Any = None, act: Any = None, use_phases: bool = True, use_out_b: bool = True) -> F:
    """The critic with one buggy piece, on inputs validated by the reference (its output is discarded)."""
    ref.critic(psi, omegas, phases, amplitude, hidden_w, hidden_b, out_w, out_b)
    p, w, b = (np.asarray(x, dtype=np.float64) for x in (psi, omegas, phases))
    A = float(amplitude) if amp is None else amp(w.shape[1])
    proj = np.einsum("bl,njl->nbj", p, w) + (b[:, None, :] if use_phases else 0.0)
    h = A * trig(proj)
    if hidden_w is not None and hidden_b is not None:
        u = np.einsum("nbj,nkj->nbk", h, np.asarray(hidden_w, dtype=np.float64)) + np.asarray(hidden_b)[:, None, :]
        h = ref._elu(u) if act is None else act(u)  # noqa: SLF001 - the reference's elu, unless the bug replaces it
    q = np.einsum("nbk,nk->nb", h, np.asarray(out_w, dtype=np.float64))
    return np.asarray(q + (np.asarray(out_b, dtype=np.float64)[:, None] if use_out_b else 0.0))


def _q_sin(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float, hidden_w: ArrayLike | None,
           hidden_b: ArrayLike | None, out_w: ArrayLike, out_b: ArrayLike) -> F:
    return _q_with(psi, omegas, phases, amplitude, hidden_w, hidden_b, out_w, out_b, trig=np.sin)  # sin(l1(psi))


def _q_fixed_amplitude(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float,
                       hidden_w: ArrayLike | None, hidden_b: ArrayLike | None, out_w: ArrayLike, out_b: ArrayLike) -> F:
    return _q_with(psi, omegas, phases, amplitude, hidden_w, hidden_b, out_w, out_b,
                   amp=lambda D: np.sqrt(2.0 / D))          # the amplitude argument ignored: always sqrt(2/D)


def _q_relu(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float, hidden_w: ArrayLike | None,
            hidden_b: ArrayLike | None, out_w: ArrayLike, out_b: ArrayLike) -> F:
    return _q_with(psi, omegas, phases, amplitude, hidden_w, hidden_b, out_w, out_b,
                   act=lambda u: np.maximum(u, 0.0))        # ReLU where the head has ELU


def _q_no_phases(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float, hidden_w: ArrayLike | None,
                 hidden_b: ArrayLike | None, out_w: ArrayLike, out_b: ArrayLike) -> F:
    return _q_with(psi, omegas, phases, amplitude, hidden_w, hidden_b, out_w, out_b, use_phases=False)


def _q_no_out_bias(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float,
                   hidden_w: ArrayLike | None, hidden_b: ArrayLike | None, out_w: ArrayLike, out_b: ArrayLike) -> F:
    return _q_with(psi, omegas, phases, amplitude, hidden_w, hidden_b, out_w, out_b, use_out_b=False)


def _q_unchecked(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float, hidden_w: ArrayLike | None,
                 hidden_b: ArrayLike | None, out_w: ArrayLike, out_b: ArrayLike) -> F:
    p = np.atleast_2d(np.asarray(psi, dtype=np.float64))
    w = np.asarray(omegas, dtype=np.float64)
    w = w if w.ndim == 3 else w[None]
    k = min(p.shape[1], w.shape[2])
    n, D = w.shape[0], w.shape[1]
    b = np.resize(np.asarray(phases, dtype=np.float64), (n, D))
    with np.errstate(all="ignore"):
        h = float(amplitude) * np.cos(np.einsum("bl,njl->nbj", p[:, :k], w[:, :, :k]) + b[:, None, :])
        if hidden_w is not None:                            # hidden_b missing: taken as 0
            W = np.asarray(hidden_w, dtype=np.float64)
            W = np.resize(W, (n, W.shape[1], D))
            c = np.zeros((n, W.shape[1])) if hidden_b is None else np.resize(np.asarray(hidden_b), (n, W.shape[1]))
            u = np.einsum("nbj,nkj->nbk", h, W) + c[:, None, :]
            h = np.where(u > 0, u, np.expm1(np.minimum(u, 0.0)))
        ow = np.resize(np.asarray(out_w, dtype=np.float64), (n, h.shape[2]))
        return np.asarray(np.einsum("nbk,nk->nb", h, ow) + np.resize(np.asarray(out_b, dtype=np.float64), n)[:, None])


# ---- td_target, critic_loss, policy_objective ---------------------------------------------


def _td_max(r: ArrayLike, done: ArrayLike, q_next: ArrayLike, gamma: float, alpha: float = 0.0,
            log_pi_next: ArrayLike | None = None) -> F:
    q = np.asarray(q_next, dtype=np.float64)
    ref.td_target(r, done, q, gamma, alpha, log_pi_next)
    return ref.td_target(r, done, q.max(axis=0, keepdims=True), gamma, alpha, log_pi_next)   # max over critics


def _td_no_done(r: ArrayLike, done: ArrayLike, q_next: ArrayLike, gamma: float, alpha: float = 0.0,
                log_pi_next: ArrayLike | None = None) -> F:
    ref.td_target(r, done, q_next, gamma, alpha, log_pi_next)
    return ref.td_target(r, np.zeros(np.shape(done)), q_next, gamma, alpha, log_pi_next)  # done mask ignored


def _td_gamma_twice(r: ArrayLike, done: ArrayLike, q_next: ArrayLike, gamma: float, alpha: float = 0.0,
                    log_pi_next: ArrayLike | None = None) -> F:
    ref.td_target(r, done, q_next, gamma, alpha, log_pi_next)
    return ref.td_target(r, done, q_next, float(gamma) ** 2, alpha, log_pi_next)     # discount applied twice


def _td_entropy_sign(r: ArrayLike, done: ArrayLike, q_next: ArrayLike, gamma: float, alpha: float = 0.0,
                     log_pi_next: ArrayLike | None = None) -> F:
    y = ref.td_target(r, done, q_next, gamma, alpha, log_pi_next)
    if log_pi_next is None:
        return y
    bonus = 2 * float(gamma) * (1 - np.asarray(done, dtype=np.float64)) * float(alpha) * np.asarray(log_pi_next)
    return np.asarray(y + bonus)                      # + alpha log pi: the entropy bonus with the wrong sign


def _td_unchecked(r: ArrayLike, done: ArrayLike, q_next: ArrayLike, gamma: float, alpha: float = 0.0,
                  log_pi_next: ArrayLike | None = None) -> F:
    q = np.atleast_2d(np.asarray(q_next, dtype=np.float64))
    lp = 0.0 if log_pi_next is None else np.resize(np.asarray(log_pi_next, dtype=np.float64), q.shape[1])
    rr = np.resize(np.asarray(r, dtype=np.float64), q.shape[1])
    return np.asarray(rr + float(gamma) * (1 - np.asarray(done, dtype=np.float64)) * (q.min(axis=0) - alpha * lp))


def _critic_mean(q: ArrayLike, y: ArrayLike) -> F:
    qq = np.asarray(q, dtype=np.float64)
    return np.asarray(ref.critic_loss(q, y) / qq.shape[0])   # averaged over the critics instead of summed


def _critic_min_only(q: ArrayLike, y: ArrayLike) -> F:
    qq = np.asarray(q, dtype=np.float64)
    ref.critic_loss(q, y)
    return np.asarray((qq.min(axis=0) - np.asarray(y, dtype=np.float64)) ** 2)   # only the smaller critic is fitted


def _critic_unchecked(q: ArrayLike, y: ArrayLike) -> F:
    qq = np.atleast_2d(np.asarray(q, dtype=np.float64))
    return np.asarray(((qq - np.resize(np.asarray(y, dtype=np.float64), qq.shape[1])) ** 2).sum(axis=0))


def _policy_max(q: ArrayLike, alpha: float = 0.0, log_pi: ArrayLike | None = None) -> F:
    qq = np.asarray(q, dtype=np.float64)
    ref.policy_objective(qq, alpha, log_pi)
    return ref.policy_objective(qq.max(axis=0, keepdims=True), alpha, log_pi)   # max over critics


def _policy_mean(q: ArrayLike, alpha: float = 0.0, log_pi: ArrayLike | None = None) -> F:
    qq = np.asarray(q, dtype=np.float64)
    ref.policy_objective(qq, alpha, log_pi)
    return ref.policy_objective(qq.mean(axis=0, keepdims=True), alpha, log_pi)  # mean of the critics (TD3 code)


def _policy_entropy_sign(q: ArrayLike, alpha: float = 0.0, log_pi: ArrayLike | None = None) -> F:
    j = ref.policy_objective(q, alpha, log_pi)
    return j if log_pi is None else np.asarray(j + 2 * float(alpha) * np.asarray(log_pi))  # + alpha log pi


def _policy_unchecked(q: ArrayLike, alpha: float = 0.0, log_pi: ArrayLike | None = None) -> F:
    qq = np.atleast_2d(np.asarray(q, dtype=np.float64))
    lp = 0.0 if log_pi is None else np.resize(np.asarray(log_pi, dtype=np.float64), qq.shape[1])
    return np.asarray(qq.min(axis=0) - float(alpha) * lp)


_ = ddpm  # the corruption the mutants of train_step re-implement is ddpm.noise


MUTANTS = [
    Mutant("diffsr_ebm_naive_logsumexp", "diffsr.ebm_transition", ("shift_invariance",),
           "exp(psi^T nu) normalised without subtracting the max: overflow gives inf/inf = NaN",
           {"diffsr.ebm_transition": _ebm_naive}),
    Mutant("diffsr_ebm_softmax_wrong_axis", "diffsr.ebm_transition",
           ("normalised", "lattice_closed_form", "matches_reference"),
           "softmax over the batch axis instead of the next-state axis", {"diffsr.ebm_transition": _ebm_wrong_axis}),
    Mutant("diffsr_ebm_log_z_unshifted", "diffsr.ebm_transition",
           ("normalised", "shift_invariance", "lattice_closed_form", "matches_reference"),
           "log Z returned without adding the subtracted max back", {"diffsr.ebm_transition": _ebm_log_z_unshifted}),
    Mutant("diffsr_ebm_attention_temperature", "diffsr.ebm_transition", ("lattice_closed_form", "matches_reference"),
           "P = softmax(psi^T nu / sqrt(m)) (the scaled dot product of attention) with log Z unscaled",
           {"diffsr.ebm_transition": _ebm_attention_temperature}),
    Mutant("diffsr_ebm_unchecked", "diffsr.ebm_transition", ("rejects_out_of_domain",),
           "no domain checks: NaN passes, mismatched feature dimensions are truncated",
           {"diffsr.ebm_transition": _ebm_unchecked}),
    Mutant("diffsr_identity_psi_sign", "diffsr.ebm_identity", ("identity", "kernel_bounds", "matches_reference"),
           "psi factor exp(-||psi||^2/2): sign of the ||psi||^2/2 term flipped",
           {"diffsr.ebm_identity": _identity_sign}),
    Mutant("diffsr_identity_no_half", "diffsr.ebm_identity", ("identity", "matches_reference"),
           "kernel exp(-||psi - nu||^2) without the 1/2", {"diffsr.ebm_identity": _identity_no_half}),
    Mutant("diffsr_identity_all_signs", "diffsr.ebm_identity", ("identity", "kernel_bounds", "matches_reference"),
           "every log factor negated: the decomposition of exp(-psi^T nu)",
           {"diffsr.ebm_identity": _identity_kernel_sign}),
    Mutant("diffsr_identity_unchecked", "diffsr.ebm_identity", ("rejects_out_of_domain",),
           "no domain checks: NaN passes, mismatched dimensions are truncated",
           {"diffsr.ebm_identity": _identity_unchecked}),
    Mutant("diffsr_rff_no_scale", "diffsr.rff",
           ("unbiased", "error_rate", "paired_diagonal", "transition_in_expectation", "matches_reference"),
           "cos/sin features without the sqrt(2/D) (paired: sqrt(1/D)) scale", {"diffsr.rff": _rff_no_scale}),
    Mutant("diffsr_rff_two_pi_frequencies", "diffsr.rff",
           ("unbiased", "error_rate", "transition_in_expectation", "matches_reference"),
           "frequencies used as 2 pi omega (Fourier-feature habit): omega drawn with the wrong variance",
           {"diffsr.rff": _rff_two_pi}),
    Mutant("diffsr_rff_no_phases", "diffsr.rff",
           ("unbiased", "error_rate", "transition_in_expectation", "matches_reference"),
           "random phases dropped: sqrt(2/D) cos(omega^T x) is biased", {"diffsr.rff": _rff_ignore_phases}),
    Mutant("diffsr_rff_split_frequencies", "diffsr.rff",
           ("unbiased", "error_rate", "paired_diagonal", "transition_in_expectation", "matches_reference"),
           "paired form with cos on half the frequencies and sin on the other half: unbiased, far larger variance",
           {"diffsr.rff": _rff_split_frequencies}),
    Mutant("diffsr_rff_envelope_sign", "diffsr.rff",
           ("unbiased", "error_rate", "paired_diagonal", "transition_in_expectation", "matches_reference"),
           "envelope exp(-||psi||^2/2 - log Z): sign of the ||psi||^2/2 term", {"diffsr.rff": _rff_envelope_sign}),
    Mutant("diffsr_rff_unchecked", "diffsr.rff", ("rejects_out_of_domain",),
           "no domain checks: NaN, wrong shapes and an overflowing envelope pass", {"diffsr.rff": _rff_unchecked}),
    Mutant("diffsr_perturbed_no_sqrt", "diffsr.perturbed_transition",
           ("linear_gaussian_closed_form", "defining_integral", "stein", "matches_reference"),
           "perturbed mean s' instead of sqrt(1 - beta) s'", {"diffsr.perturbed_transition": _pt_no_sqrt}),
    Mutant("diffsr_perturbed_no_shrink", "diffsr.perturbed_transition",
           ("linear_gaussian_closed_form", "defining_integral", "matches_reference"),
           "perturbed covariance Sigma + beta I: the (1 - beta) on Sigma forgotten",
           {"diffsr.perturbed_transition": _pt_no_shrink}),
    Mutant("diffsr_perturbed_std_as_variance", "diffsr.perturbed_transition",
           ("linear_gaussian_closed_form", "defining_integral", "matches_reference"),
           "added variance sqrt(beta) I: the noise std used as its variance",
           {"diffsr.perturbed_transition": _pt_std_as_var}),
    Mutant("diffsr_perturbed_unchecked", "diffsr.perturbed_transition", ("rejects_out_of_domain",),
           "no domain checks: beta = 0 or 1, unnormalised weights and an indefinite cov pass",
           {"diffsr.perturbed_transition": _pt_unchecked}),
    Mutant("diffsr_objective_no_sqrt", "diffsr.score_objective",
           ("denoising_target", "vincent_identity", "matches_reference"),
           "target (s~' - s') / beta: sqrt(1 - beta) missing", {"diffsr.score_objective": _obj_no_sqrt}),
    Mutant("diffsr_objective_sqrt_beta", "diffsr.score_objective",
           ("denoising_target", "vincent_identity", "matches_reference"),
           "target divided by sqrt(beta) instead of beta (noise-prediction scale)",
           {"diffsr.score_objective": _obj_sqrt_beta}),
    Mutant("diffsr_objective_sign", "diffsr.score_objective",
           ("denoising_target", "vincent_identity", "matches_reference"),
           "psi^T grad nu - (s~' - sqrt(1 - beta) s')/beta: sign of the target", {"diffsr.score_objective": _obj_sign}),
    Mutant("diffsr_objective_unchecked", "diffsr.score_objective", ("rejects_out_of_domain",),
           "no domain checks: beta = 0 or 1 and mismatched shapes pass", {"diffsr.score_objective": _obj_unchecked}),
    Mutant("diffsr_train_alpha_bar_no_sqrt", "diffsr.train_step",
           ("composition", "vincent_minimum", "matches_reference"),
           "corruption alpha_bar s' + (1 - alpha_bar) eps: beta where sqrt(beta) belongs",
           {"diffsr.train_step": _train_no_sqrt}),
    Mutant("diffsr_train_prev_level", "diffsr.train_step", ("composition", "vincent_minimum", "matches_reference"),
           "noise level from alpha_bar_{k-1} (alphas_cumprod_prev): one level early",
           {"diffsr.train_step": _train_prev_level}),
    Mutant("diffsr_train_sum_not_mean", "diffsr.train_step", ("composition", "vincent_minimum", "matches_reference"),
           "batch objective summed instead of averaged", {"diffsr.train_step": _train_sum}),
    Mutant("diffsr_train_unchecked", "diffsr.train_step", ("rejects_out_of_domain",),
           "no domain checks: k = 0 wraps, eps is resized, NaN passes", {"diffsr.train_step": _train_unchecked}),
    Mutant("diffsr_q_sin", "diffsr.critic", ("gaussian_expectation", "symmetries", "matches_reference"),
           "sin(omega psi + b) where the features are cos(omega psi + b) (the official sin(l1(psi)) with b not "
           "shifted by -pi/2)", {"diffsr.critic": _q_sin}),
    Mutant("diffsr_q_fixed_amplitude", "diffsr.critic", ("gaussian_expectation", "symmetries", "matches_reference"),
           "the amplitude argument ignored, sqrt(2/D) hard-coded", {"diffsr.critic": _q_fixed_amplitude}),
    Mutant("diffsr_q_relu_head", "diffsr.critic", ("elu_head", "matches_reference"),
           "ReLU in the hidden head instead of ELU", {"diffsr.critic": _q_relu}),
    Mutant("diffsr_q_no_phases", "diffsr.critic", ("gaussian_expectation", "matches_reference"),
           "phases ignored: A cos(omega psi)", {"diffsr.critic": _q_no_phases}),
    Mutant("diffsr_q_no_out_bias", "diffsr.critic", ("gaussian_expectation", "elu_head", "matches_reference"),
           "the output bias d_i dropped", {"diffsr.critic": _q_no_out_bias}),
    Mutant("diffsr_q_unchecked", "diffsr.critic", ("rejects_out_of_domain",),
           "no domain checks: NaN and amplitude <= 0 pass, shapes are resized, a missing hidden_b is taken as 0",
           {"diffsr.critic": _q_unchecked}),
    Mutant("diffsr_td_max_critics", "diffsr.td_target",
           ("min_over_critics", "done_masks_bootstrap", "fixed_point", "matches_reference"),
           "max over the target critics instead of min", {"diffsr.td_target": _td_max}),
    Mutant("diffsr_td_done_ignored", "diffsr.td_target", ("done_masks_bootstrap", "fixed_point", "matches_reference"),
           "terminal flag ignored: bootstraps through the end of episodes", {"diffsr.td_target": _td_no_done}),
    Mutant("diffsr_td_gamma_twice", "diffsr.td_target", ("done_masks_bootstrap", "fixed_point", "matches_reference"),
           "discount applied twice: gamma^2 on the bootstrap", {"diffsr.td_target": _td_gamma_twice}),
    Mutant("diffsr_td_entropy_sign", "diffsr.td_target", ("done_masks_bootstrap", "fixed_point", "matches_reference"),
           "soft target min Q + alpha log pi: entropy term with the wrong sign",
           {"diffsr.td_target": _td_entropy_sign}),
    Mutant("diffsr_td_unchecked", "diffsr.td_target", ("rejects_out_of_domain",),
           "no domain checks: gamma = 1, done = 0.5, missing log pi and NaN pass", {"diffsr.td_target": _td_unchecked}),
    Mutant("diffsr_critic_mean_over_critics", "diffsr.critic_loss", ("quadratic", "expected_loss", "matches_reference"),
           "TD losses averaged over the critics instead of summed", {"diffsr.critic_loss": _critic_mean}),
    Mutant("diffsr_critic_min_only", "diffsr.critic_loss", ("quadratic", "expected_loss", "matches_reference"),
           "only the smaller critic's TD error is penalised", {"diffsr.critic_loss": _critic_min_only}),
    Mutant("diffsr_critic_unchecked", "diffsr.critic_loss", ("rejects_out_of_domain",),
           "no domain checks: y is resized, NaN passes", {"diffsr.critic_loss": _critic_unchecked}),
    Mutant("diffsr_policy_max_critics", "diffsr.policy_objective", ("min_over_critics", "matches_reference"),
           "max over the critics instead of min", {"diffsr.policy_objective": _policy_max}),
    Mutant("diffsr_policy_mean_critics", "diffsr.policy_objective", ("min_over_critics", "matches_reference"),
           "mean of the critics (the TD3 actor of the official code) instead of min",
           {"diffsr.policy_objective": _policy_mean}),
    Mutant("diffsr_policy_entropy_sign", "diffsr.policy_objective", ("entropy_term", "matches_reference"),
           "min Q + alpha log pi: entropy term with the wrong sign", {"diffsr.policy_objective": _policy_entropy_sign}),
    Mutant("diffsr_policy_unchecked", "diffsr.policy_objective", ("rejects_out_of_domain",),
           "no domain checks: negative alpha, missing log pi and NaN pass",
           {"diffsr.policy_objective": _policy_unchecked}),
]
