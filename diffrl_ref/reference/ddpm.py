"""Denoising diffusion probabilistic models (spec family ``ddpm``).

Ho, Jain and Abbeel, NeurIPS 2020. Steps are 1-based (k = 1..K); a schedule is passed as
``betas`` = beta_1..beta_K and alpha_bar_0 = 1. Noise is always an argument, never drawn here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._checks import Array, as_batch, as_betas, as_f64, as_step, require, same_shape
from .schedule import alpha_bar

#: A noise-prediction network: eps_fn(x (B, d), k (B,) int) -> eps_hat (B, d).
EpsFn = Callable[[Array, NDArray[np.int64]], ArrayLike]

#: Reverse-process variance choices of Ho et al., Sec. 3.2: sigma_k^2 = beta_k or beta_tilde_k.
VARIANCES = ("beta", "beta_tilde")


def _schedule(betas: ArrayLike, k: ArrayLike, B: int, cid: str) -> tuple[Array, Array, Array, NDArray[np.int64]]:
    """beta_k, alpha_bar_k and alpha_bar_{k-1} as (B, 1) columns, and the steps k as (B,)."""
    beta = as_betas(betas, cid)
    a_bar = alpha_bar(beta)
    require(bool(np.all((a_bar[1:] > 0) & (a_bar[1:] < 1))), cid,
            "need 0 < alpha_bar_k < 1 in float64 for every k (alpha_bar underflows or beta_1 rounds away)")
    steps = np.broadcast_to(as_step(k, beta.size, cid, batch=B), (B,))
    return beta[steps - 1][:, None], a_bar[steps][:, None], a_bar[steps - 1][:, None], steps


def _pair(a: ArrayLike, b: ArrayLike, names: tuple[str, str], cid: str) -> tuple[Array, Array]:
    x, y = as_batch(a, cid, names[0]), as_batch(b, cid, names[1])
    same_shape(cid, **{names[0]: x, names[1]: y})
    return x, y


def _beta_tilde(beta_k: Array, a_bar_k: Array, a_bar_prev: Array) -> Array:
    """beta_tilde_k = (1 - alpha_bar_{k-1}) / (1 - alpha_bar_k) beta_k (Ho et al., Eq. 7)."""
    return (1.0 - a_bar_prev) / (1.0 - a_bar_k) * beta_k


def _reverse_mean(x_k: Array, eps_hat: Array, beta_k: Array, a_bar_k: Array) -> Array:
    """mu_theta(x_k, k) = (x_k - beta_k / sqrt(1 - alpha_bar_k) eps_hat) / sqrt(alpha_k) (Eq. 11)."""
    return (x_k - beta_k / np.sqrt(1.0 - a_bar_k) * eps_hat) / np.sqrt(1.0 - beta_k)


def _sigma2(variance: str, beta_k: Array, a_bar_k: Array, a_bar_prev: Array, cid: str) -> Array:
    require(variance in VARIANCES, cid, f"variance must be one of {VARIANCES}, got {variance!r}")
    return beta_k if variance == "beta" else _beta_tilde(beta_k, a_bar_k, a_bar_prev)


def forward_kernel(x_prev: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[Array, Array]:
    """Clause ``ddpm.forward_kernel``: q(x_k | x_{k-1}) = N(sqrt(alpha_k) x_{k-1}, beta_k I)."""
    cid = "ddpm.forward_kernel"
    x = as_batch(x_prev, cid, "x_prev")
    beta_k, _, _, _ = _schedule(betas, k, x.shape[0], cid)
    alpha_k = 1.0 - beta_k
    return np.sqrt(alpha_k) * x, beta_k.copy()


def marginal(x0: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[Array, Array]:
    """Clause ``ddpm.marginal``: q(x_k | x_0) = N(sqrt(alpha_bar_k) x_0, (1 - alpha_bar_k) I)."""
    cid = "ddpm.marginal"
    x = as_batch(x0, cid, "x0")
    _, a_bar_k, _, _ = _schedule(betas, k, x.shape[0], cid)
    return np.sqrt(a_bar_k) * x, 1.0 - a_bar_k


def noise(x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Array:
    """Clause ``ddpm.noise``: x_k = sqrt(alpha_bar_k) x_0 + sqrt(1 - alpha_bar_k) eps."""
    cid = "ddpm.noise"
    x, e = _pair(x0, eps, ("x0", "eps"), cid)
    _, a_bar_k, _, _ = _schedule(betas, k, x.shape[0], cid)
    return np.sqrt(a_bar_k) * x + np.sqrt(1.0 - a_bar_k) * e


def x0_from_eps(x_k: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Array:
    """Clause ``ddpm.x0_from_eps``: x_0 = (x_k - sqrt(1 - alpha_bar_k) eps) / sqrt(alpha_bar_k)."""
    cid = "ddpm.x0_from_eps"
    x, e = _pair(x_k, eps, ("x_k", "eps"), cid)
    _, a_bar_k, _, _ = _schedule(betas, k, x.shape[0], cid)
    return (x - np.sqrt(1.0 - a_bar_k) * e) / np.sqrt(a_bar_k)


def posterior(x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[Array, Array]:
    """Clause ``ddpm.posterior``: q(x_{k-1} | x_k, x_0) = N(mu_tilde, beta_tilde_k I) (Eqs. 6-7)."""
    cid = "ddpm.posterior"
    x, xk = _pair(x0, x_k, ("x0", "x_k"), cid)
    beta_k, a_bar_k, a_bar_prev, _ = _schedule(betas, k, x.shape[0], cid)
    alpha_k = 1.0 - beta_k
    mu_tilde = (np.sqrt(a_bar_prev) * beta_k / (1.0 - a_bar_k) * x
                + np.sqrt(alpha_k) * (1.0 - a_bar_prev) / (1.0 - a_bar_k) * xk)
    return mu_tilde, _beta_tilde(beta_k, a_bar_k, a_bar_prev)


def reverse_step(
    x_k: ArrayLike,
    eps_hat: ArrayLike,
    betas: ArrayLike,
    k: ArrayLike,
    z: ArrayLike,
    variance: str = "beta",
) -> Array:
    """Clause ``ddpm.reverse_step``: x_{k-1} = mu_theta(x_k, k) + sigma_k z, z unused at k = 1 (Alg. 2)."""
    cid = "ddpm.reverse_step"
    x, e_hat = _pair(x_k, eps_hat, ("x_k", "eps_hat"), cid)
    zz = as_batch(z, cid, "z")
    same_shape(cid, x_k=x, z=zz)
    beta_k, a_bar_k, a_bar_prev, steps = _schedule(betas, k, x.shape[0], cid)
    sigma2 = _sigma2(variance, beta_k, a_bar_k, a_bar_prev, cid)
    sigma = np.where(steps[:, None] > 1, np.sqrt(sigma2), 0.0)
    return _reverse_mean(x, e_hat, beta_k, a_bar_k) + sigma * zz


def _loss_sigma2(sigma2: str | ArrayLike | None, beta_k: Array, a_bar_k: Array, a_bar_prev: Array,
                 B: int, cid: str) -> Array:
    """sigma_k^2 as a (B, 1) column: None means beta_k; a name from VARIANCES; or values."""
    if sigma2 is None or isinstance(sigma2, str):
        s2 = _sigma2("beta" if sigma2 is None else sigma2, beta_k, a_bar_k, a_bar_prev, cid)
    else:
        v = as_f64(sigma2, cid, "sigma2")
        require(v.ndim == 0 or v.shape == (B,), cid, f"sigma2 must be a scalar or shape ({B},), got {v.shape}")
        s2 = np.broadcast_to(v, (B,))[:, None]
    require(bool(np.all(s2 > 0)), cid, "sigma_k^2 must be > 0 (beta_tilde_1 = 0: no VLB weight at k = 1)")
    return s2


def simple_loss(
    eps: ArrayLike,
    eps_hat: ArrayLike,
    betas: ArrayLike,
    k: ArrayLike,
    weighting: str = "simple",
    sigma2: str | ArrayLike | None = None,
) -> Array:
    """Clause ``ddpm.simple_loss``: w_k ||eps - eps_hat||^2 per row, w_k = 1 (Eq. 14) or lambda_k (Eq. 12)."""
    cid = "ddpm.simple_loss"
    e, e_hat = _pair(eps, eps_hat, ("eps", "eps_hat"), cid)
    B = e.shape[0]
    beta_k, a_bar_k, a_bar_prev, _ = _schedule(betas, k, B, cid)
    require(weighting in ("simple", "vlb"), cid, f"weighting must be 'simple' or 'vlb', got {weighting!r}")
    squared_error: Array = np.sum((e - e_hat) ** 2, axis=1)
    if weighting == "simple":
        return squared_error
    s2 = _loss_sigma2(sigma2, beta_k, a_bar_k, a_bar_prev, B, cid)
    alpha_k = 1.0 - beta_k
    lambda_k = beta_k**2 / (2.0 * s2 * alpha_k * (1.0 - a_bar_k))
    weighted: Array = lambda_k[:, 0] * squared_error
    return weighted


def _gaussian_kl(mean_q: Array, var_q: Array, mean_p: Array, var_p: Array) -> Array:
    """KL(N(mean_q, var_q I) || N(mean_p, var_p I)) per row; variances are (B, 1) columns."""
    d = mean_q.shape[1]
    ratio = (var_q / var_p)[:, 0]
    kl: Array = 0.5 * (d * (ratio - 1.0 - np.log(ratio)) + np.sum((mean_q - mean_p) ** 2, axis=1) / var_p[:, 0])
    return kl


def vlb(x0: ArrayLike, eps_fn: EpsFn, betas: ArrayLike, eps: ArrayLike, variance: str = "beta") -> Array:
    """Clause ``ddpm.vlb``: the terms L_0, L_1, ..., L_{K-1}, L_K of Ho et al., Eq. 5, row j = L_j.

    L_{k-1} (k >= 2) is KL(q(x_{k-1} | x_k, x_0) || p_theta(x_{k-1} | x_k)) at
    x_k = noise(x_0, eps[k-1]); L_0 = -log N(x_0; mu_theta(x_1, 1), beta_1 I) (Gaussian decoder);
    L_K = KL(q(x_K | x_0) || N(0, I)).
    """
    cid = "ddpm.vlb"
    x = as_batch(x0, cid, "x0")
    B, d = x.shape
    beta = as_betas(betas, cid)
    K = beta.size
    e = as_f64(eps, cid, "eps")
    require(e.shape == (K, B, d), cid, f"eps must have shape (K, B, d) = {(K, B, d)}, got {e.shape}")
    require(variance in VARIANCES, cid, f"variance must be one of {VARIANCES}, got {variance!r}")
    terms = np.empty((K + 1, B))
    for k in range(1, K + 1):
        beta_k, a_bar_k, a_bar_prev, steps = _schedule(beta, k, B, cid)
        x_k = np.sqrt(a_bar_k) * x + np.sqrt(1.0 - a_bar_k) * e[k - 1]
        e_hat = as_f64(eps_fn(x_k, steps.copy()), cid, "eps_fn output")
        same_shape(cid, x_k=x_k, eps_hat=e_hat)
        mu_theta = _reverse_mean(x_k, e_hat, beta_k, a_bar_k)
        if k == 1:  # decoder N(mu_theta(x_1, 1), beta_1 I)
            terms[0] = np.sum((x - mu_theta) ** 2, axis=1) / (2.0 * beta_k[:, 0]) \
                + 0.5 * d * np.log(2.0 * np.pi * beta_k[:, 0])
        else:
            mu_tilde, beta_tilde = posterior(x, x_k, beta, k)
            sigma2 = _sigma2(variance, beta_k, a_bar_k, a_bar_prev, cid)
            terms[k - 1] = _gaussian_kl(mu_tilde, beta_tilde, mu_theta, sigma2)
    _, a_bar_K, _, _ = _schedule(beta, K, B, cid)
    terms[K] = _gaussian_kl(np.sqrt(a_bar_K) * x, 1.0 - a_bar_K, np.zeros_like(x), np.ones((B, 1)))
    return terms
