"""Planted bugs for the ``ddpm`` family: each is a mistake seen in real DDPM code."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import ddpm as ref
from diffrl_ref.reference._checks import as_batch, as_betas

from . import Mutant

F = NDArray[np.float64]


def _cols(betas: ArrayLike, k: ArrayLike, B: int, cid: str) -> tuple[F, F, F, NDArray[np.int64]]:
    """Validated beta_k, alpha_bar_k, alpha_bar_{k-1} columns and steps (the reference's checks)."""
    return ref._schedule(betas, k, B, cid)  # noqa: SLF001 - mutants reuse the domain checks


def _raw(betas: ArrayLike, k: ArrayLike, B: int) -> tuple[F, F, F]:
    """Unchecked beta_k, alpha_bar_k, alpha_bar_{k-1} columns: NumPy indexing, no domain checks."""
    b = np.asarray(betas, dtype=np.float64)
    a_bar = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    kk = np.broadcast_to(np.asarray(k).astype(np.int64), (B,))
    return b[kk - 1][:, None], a_bar[kk][:, None], a_bar[kk - 1][:, None]


# ---- forward_kernel -------------------------------------------------------------------


def _fk_no_sqrt(x_prev: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F, F]:
    x = as_batch(x_prev, "ddpm.forward_kernel", "x_prev")
    beta_k, _, _, _ = _cols(betas, k, x.shape[0], "ddpm.forward_kernel")
    return (1.0 - beta_k) * x, beta_k  # alpha_k x_{k-1}: the sqrt forgotten


def _fk_next_beta(x_prev: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F, F]:
    x = as_batch(x_prev, "ddpm.forward_kernel", "x_prev")
    b = as_betas(betas, "ddpm.forward_kernel")
    _cols(b, k, x.shape[0], "ddpm.forward_kernel")
    kk = np.minimum(np.broadcast_to(np.asarray(k), (x.shape[0],)), b.size - 1)
    beta_k = b[kk][:, None]  # betas[k] with 1-based k: beta_{k+1} (clamped at the end)
    return np.sqrt(1.0 - beta_k) * x, beta_k


def _fk_unchecked(x_prev: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F, F]:
    x = np.asarray(x_prev, dtype=np.float64)
    beta_k, _, _ = _raw(betas, k, x.shape[0] if x.ndim == 2 else 1)
    return np.sqrt(1.0 - beta_k) * x, beta_k


# ---- marginal -------------------------------------------------------------------------


def _marginal_alpha(x0: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F, F]:
    x = as_batch(x0, "ddpm.marginal", "x0")
    beta_k, _, _, _ = _cols(betas, k, x.shape[0], "ddpm.marginal")
    alpha_k = 1.0 - beta_k  # alpha_k where alpha_bar_k belongs
    return np.sqrt(alpha_k) * x, 1.0 - alpha_k


def _marginal_no_sqrt(x0: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F, F]:
    x = as_batch(x0, "ddpm.marginal", "x0")
    _, a_bar_k, _, _ = _cols(betas, k, x.shape[0], "ddpm.marginal")
    return a_bar_k * x, 1.0 - a_bar_k


def _marginal_exp_sum(x0: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F, F]:
    x = as_batch(x0, "ddpm.marginal", "x0")
    _cols(betas, k, x.shape[0], "ddpm.marginal")
    b = as_betas(betas, "ddpm.marginal")
    kk = np.broadcast_to(np.asarray(k), (x.shape[0],))
    a_bar_k = np.exp(-np.cumsum(b))[kk - 1][:, None]  # exp(-sum beta), the continuous-time VP form, for prod(1 - beta)
    return np.sqrt(a_bar_k) * x, 1.0 - a_bar_k


def _marginal_unchecked(x0: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F, F]:
    x = np.asarray(x0, dtype=np.float64)
    _, a_bar_k, _ = _raw(betas, k, x.shape[0] if x.ndim == 2 else 1)
    return np.sqrt(a_bar_k) * x, 1.0 - a_bar_k


# ---- noise ----------------------------------------------------------------------------


def _noise_no_sqrt(x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F:
    x, e = ref._pair(x0, eps, ("x0", "eps"), "ddpm.noise")  # noqa: SLF001
    _, a_bar_k, _, _ = _cols(betas, k, x.shape[0], "ddpm.noise")
    return a_bar_k * x + np.sqrt(1.0 - a_bar_k) * e  # alpha_bar_k x0: sqrt missing on the signal


def _noise_var_as_std(x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F:
    x, e = ref._pair(x0, eps, ("x0", "eps"), "ddpm.noise")  # noqa: SLF001
    _, a_bar_k, _, _ = _cols(betas, k, x.shape[0], "ddpm.noise")
    return np.sqrt(a_bar_k) * x + (1.0 - a_bar_k) * e  # variance used as the noise std


def _noise_unchecked(x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F:
    x, e = np.asarray(x0, dtype=np.float64), np.asarray(eps, dtype=np.float64)
    _, a_bar_k, _ = _raw(betas, k, x.shape[0] if x.ndim == 2 else 1)
    return np.sqrt(a_bar_k) * x + np.sqrt(1.0 - a_bar_k) * e


# ---- x0_from_eps ----------------------------------------------------------------------


def _x0_sign(x_k: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F:
    x, e = ref._pair(x_k, eps, ("x_k", "eps"), "ddpm.x0_from_eps")  # noqa: SLF001
    _, a_bar_k, _, _ = _cols(betas, k, x.shape[0], "ddpm.x0_from_eps")
    return (x + np.sqrt(1.0 - a_bar_k) * e) / np.sqrt(a_bar_k)


def _x0_prev_alpha_bar(x_k: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F:
    x, e = ref._pair(x_k, eps, ("x_k", "eps"), "ddpm.x0_from_eps")  # noqa: SLF001
    _, _, a_bar_prev, _ = _cols(betas, k, x.shape[0], "ddpm.x0_from_eps")
    return (x - np.sqrt(1.0 - a_bar_prev) * e) / np.sqrt(a_bar_prev)  # alphas_cumprod_prev by mistake


def _x0_unchecked(x_k: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F:
    x, e = np.asarray(x_k, dtype=np.float64), np.asarray(eps, dtype=np.float64)
    _, a_bar_k, _ = _raw(betas, k, x.shape[0] if x.ndim == 2 else 1)
    return (x - np.sqrt(1.0 - a_bar_k) * e) / np.sqrt(a_bar_k)


# ---- posterior ------------------------------------------------------------------------


def _posterior_var_alpha_bar_k(x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F, F]:
    mean, _ = ref.posterior(x0, x_k, betas, k)
    x = np.asarray(x0, dtype=np.float64)
    beta_k, a_bar_k, _, _ = _cols(betas, k, x.shape[0], "ddpm.posterior")
    return mean, (1.0 - a_bar_k) / (1.0 - a_bar_k) * beta_k  # alphas_cumprod_prev = alphas_cumprod


def _posterior_x0_coef_alpha_bar_k(x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike,
                                   k: ArrayLike) -> tuple[F, F]:
    x, xk = ref._pair(x0, x_k, ("x0", "x_k"), "ddpm.posterior")  # noqa: SLF001
    beta_k, a_bar_k, a_bar_prev, _ = _cols(betas, k, x.shape[0], "ddpm.posterior")
    mean = (np.sqrt(a_bar_k) * beta_k / (1.0 - a_bar_k) * x  # sqrt(alpha_bar_k) for sqrt(alpha_bar_{k-1})
            + np.sqrt(1.0 - beta_k) * (1.0 - a_bar_prev) / (1.0 - a_bar_k) * xk)
    return mean, (1.0 - a_bar_prev) / (1.0 - a_bar_k) * beta_k


def _posterior_unchecked(x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F, F]:
    x, xk = np.asarray(x0, dtype=np.float64), np.asarray(x_k, dtype=np.float64)
    beta_k, a_bar_k, a_bar_prev = _raw(betas, k, x.shape[0] if x.ndim == 2 else 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (np.sqrt(a_bar_prev) * beta_k / (1.0 - a_bar_k) * x
                + np.sqrt(1.0 - beta_k) * (1.0 - a_bar_prev) / (1.0 - a_bar_k) * xk)
        return mean, (1.0 - a_bar_prev) / (1.0 - a_bar_k) * beta_k


# ---- reverse_step ---------------------------------------------------------------------


def _step_parts(x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                variance: str) -> tuple[F, F, F, F, F, F, NDArray[np.int64]]:
    x, e_hat = ref._pair(x_k, eps_hat, ("x_k", "eps_hat"), "ddpm.reverse_step")  # noqa: SLF001
    zz = as_batch(z, "ddpm.reverse_step", "z")
    ref._pair(x, zz, ("x_k", "z"), "ddpm.reverse_step")  # noqa: SLF001
    beta_k, a_bar_k, a_bar_prev, steps = _cols(betas, k, x.shape[0], "ddpm.reverse_step")
    sigma2 = ref._sigma2(variance, beta_k, a_bar_k, a_bar_prev, "ddpm.reverse_step")  # noqa: SLF001
    return x, e_hat, zz, beta_k, a_bar_k, sigma2, steps


def _step_noise_at_k1(x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                      variance: str = "beta") -> F:
    x, e_hat, zz, beta_k, a_bar_k, sigma2, _ = _step_parts(x_k, eps_hat, betas, k, z, variance)
    mean = (x - beta_k / np.sqrt(1.0 - a_bar_k) * e_hat) / np.sqrt(1.0 - beta_k)
    return mean + np.sqrt(sigma2) * zz  # z added at every step, k = 1 included


def _step_no_sqrt(x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                  variance: str = "beta") -> F:
    x, e_hat, zz, beta_k, a_bar_k, sigma2, steps = _step_parts(x_k, eps_hat, betas, k, z, variance)
    mean = (x - beta_k / (1.0 - a_bar_k) * e_hat) / np.sqrt(1.0 - beta_k)  # beta / (1 - ab), no sqrt
    return mean + np.where(steps[:, None] > 1, np.sqrt(sigma2), 0.0) * zz


def _step_var_as_std(x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                     variance: str = "beta") -> F:
    x, e_hat, zz, beta_k, a_bar_k, sigma2, steps = _step_parts(x_k, eps_hat, betas, k, z, variance)
    mean = (x - beta_k / np.sqrt(1.0 - a_bar_k) * e_hat) / np.sqrt(1.0 - beta_k)
    return mean + np.where(steps[:, None] > 1, sigma2, 0.0) * zz  # sigma_k^2 used as sigma_k


def _step_unchecked(x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                    variance: str = "beta") -> F:
    x, e_hat, zz = (np.asarray(a, dtype=np.float64) for a in (x_k, eps_hat, z))
    beta_k, a_bar_k, a_bar_prev = _raw(betas, k, x.shape[0] if x.ndim == 2 else 1)
    kk = np.broadcast_to(np.asarray(k), (beta_k.shape[0],))
    with np.errstate(all="ignore"):  # k = 0 divides by 1 - alpha_bar_0 = 0 and returns inf silently
        sigma2 = beta_k if variance == "beta" else (1.0 - a_bar_prev) / (1.0 - a_bar_k) * beta_k
        mean = (x - beta_k / np.sqrt(1.0 - a_bar_k) * e_hat) / np.sqrt(1.0 - beta_k)
        out: F = mean + np.where(kk[:, None] > 1, np.sqrt(sigma2), 0.0) * zz
    return out


# ---- simple_loss ----------------------------------------------------------------------


def _loss_vlb_no_alpha(eps: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike,
                       weighting: str = "simple", sigma2: str | ArrayLike | None = None) -> F:
    out = ref.simple_loss(eps, eps_hat, betas, k, weighting, sigma2)
    if weighting != "vlb":
        return out
    beta_k, _, _, _ = _cols(betas, k, out.shape[0], "ddpm.simple_loss")
    no_alpha: F = out * (1.0 - beta_k[:, 0])  # lambda_k without the alpha_k in its denominator
    return no_alpha


def _loss_feature_mean(eps: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike,
                       weighting: str = "simple", sigma2: str | ArrayLike | None = None) -> F:
    out = ref.simple_loss(eps, eps_hat, betas, k, weighting, sigma2)
    mean: F = out / np.asarray(eps).shape[1]  # F.mse_loss-style mean over features instead of the sum
    return mean


def _loss_unchecked(eps: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike,
                    weighting: str = "simple", sigma2: str | ArrayLike | None = None) -> F:
    e, e_hat = np.asarray(eps, dtype=np.float64), np.asarray(eps_hat, dtype=np.float64)
    sq: F = np.sum((e - e_hat) ** 2, axis=-1)
    if weighting != "vlb":
        return sq
    beta_k, a_bar_k, a_bar_prev = _raw(betas, k, e.shape[0] if e.ndim == 2 else 1)
    if sigma2 is None or isinstance(sigma2, str):
        s2 = beta_k if sigma2 != "beta_tilde" else (1.0 - a_bar_prev) / (1.0 - a_bar_k) * beta_k
    else:
        s2 = np.broadcast_to(np.asarray(sigma2, dtype=np.float64), beta_k.shape[:1])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        weighted: F = (beta_k**2 / (2.0 * s2 * (1.0 - beta_k) * (1.0 - a_bar_k)))[:, 0] * sq
    return weighted


# ---- vlb ------------------------------------------------------------------------------


def _vlb_no_prior(x0: ArrayLike, eps_fn: ref.EpsFn, betas: ArrayLike, eps: ArrayLike,
                  variance: str = "beta") -> F:
    terms = ref.vlb(x0, eps_fn, betas, eps, variance)
    terms[-1] = 0.0  # L_K dropped as "constant" although it depends on x0
    return terms


def _vlb_decoder_no_normaliser(x0: ArrayLike, eps_fn: ref.EpsFn, betas: ArrayLike, eps: ArrayLike,
                               variance: str = "beta") -> F:
    terms = ref.vlb(x0, eps_fn, betas, eps, variance)
    d = np.asarray(x0).shape[1]
    beta_1 = float(np.asarray(betas, dtype=np.float64)[0])
    terms[0] -= 0.5 * d * np.log(2.0 * np.pi * beta_1)  # -log p(x0|x1) without its log-normaliser
    return terms


def _vlb_kl_std_for_var(x0: ArrayLike, eps_fn: ref.EpsFn, betas: ArrayLike, eps: ArrayLike,
                        variance: str = "beta") -> F:
    terms = ref.vlb(x0, eps_fn, betas, eps, variance)
    b = as_betas(betas, "ddpm.vlb")
    a_bar = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    for k in range(2, b.size + 1):
        beta_tilde = (1.0 - a_bar[k - 1]) / (1.0 - a_bar[k]) * b[k - 1]
        s2 = b[k - 1] if variance == "beta" else beta_tilde
        r = beta_tilde / s2
        const = 0.5 * np.asarray(x0).shape[1] * (r - 1.0 - np.log(r))
        terms[k - 1] = const + (terms[k - 1] - const) * np.sqrt(s2)  # ||Delta||^2 / (2 sigma), not 2 sigma^2
    return terms


def _vlb_unchecked(x0: ArrayLike, eps_fn: ref.EpsFn, betas: ArrayLike, eps: ArrayLike,
                   variance: str = "beta") -> F:
    x, e, b = (np.asarray(a, dtype=np.float64) for a in (x0, eps, betas))
    (B, d), K = x.shape, b.size
    a_bar = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    terms = np.zeros((K + 1, B))
    with np.errstate(all="ignore"):
        for k in range(1, K + 1):
            ab, beta = a_bar[k], b[k - 1]
            xk = np.sqrt(ab) * x + np.sqrt(1.0 - ab) * e[k - 1]
            e_hat = np.asarray(eps_fn(xk, np.full(B, k)), dtype=np.float64)
            s2 = beta if variance != "beta_tilde" or k == 1 else (1.0 - a_bar[k - 1]) / (1.0 - ab) * beta
            terms[k - 1] = beta**2 / (2.0 * s2 * (1.0 - beta) * (1.0 - ab)) * np.sum((e[k - 1] - e_hat) ** 2, axis=-1)
            r = (1.0 - a_bar[k - 1]) / (1.0 - ab) * beta / s2
            terms[k - 1] += 0.5 * d * (np.log(2.0 * np.pi * beta) if k == 1 else r - 1.0 - np.log(r))
        terms[K] = 0.5 * (a_bar[K] * np.sum(x**2, axis=1) - d * a_bar[K] - d * np.log(1.0 - a_bar[K]))
    return terms


MUTANTS = [
    Mutant("ddpm_forward_kernel_no_sqrt", "ddpm.forward_kernel",
           ("variance_preserving", "indexing", "matches_reference"),
           "kernel mean alpha_k x_{k-1} instead of sqrt(alpha_k) x_{k-1}", {"ddpm.forward_kernel": _fk_no_sqrt}),
    Mutant("ddpm_forward_kernel_next_beta", "ddpm.forward_kernel", ("indexing", "matches_reference"),
           "betas[k] with 1-based k: step k uses beta_{k+1}", {"ddpm.forward_kernel": _fk_next_beta}),
    Mutant("ddpm_forward_kernel_unchecked", "ddpm.forward_kernel", ("rejects_out_of_domain",),
           "no domain checks: k = 0 wraps to betas[-1], NaN passes through",
           {"ddpm.forward_kernel": _fk_unchecked}),
    Mutant("ddpm_marginal_alpha_not_alpha_bar", "ddpm.marginal",
           ("composition", "exact_dyadic_schedule", "matches_reference"),
           "alpha_k where alpha_bar_k belongs in q(x_k | x_0)", {"ddpm.marginal": _marginal_alpha}),
    Mutant("ddpm_marginal_no_sqrt", "ddpm.marginal",
           ("composition", "exact_dyadic_schedule", "variance_preserving", "matches_reference"),
           "mean alpha_bar_k x_0: sqrt missing on alpha_bar", {"ddpm.marginal": _marginal_no_sqrt}),
    Mutant("ddpm_marginal_exp_sum", "ddpm.marginal", ("composition", "exact_dyadic_schedule", "matches_reference"),
           "alpha_bar_k = exp(-sum_i beta_i) (the continuous-time VP formula) instead of prod_i (1 - beta_i)",
           {"ddpm.marginal": _marginal_exp_sum}),
    Mutant("ddpm_marginal_unchecked", "ddpm.marginal", ("rejects_out_of_domain",),
           "no domain checks: k = 0 returns the data, NaN passes through", {"ddpm.marginal": _marginal_unchecked}),
    Mutant("ddpm_noise_no_sqrt", "ddpm.noise", ("distribution", "signal_and_noise_parts", "matches_reference"),
           "x_k = alpha_bar_k x_0 + ...: sqrt missing on alpha_bar", {"ddpm.noise": _noise_no_sqrt}),
    Mutant("ddpm_noise_variance_as_std", "ddpm.noise",
           ("distribution", "signal_and_noise_parts", "matches_reference"),
           "noise scaled by 1 - alpha_bar_k (the variance) instead of its square root",
           {"ddpm.noise": _noise_var_as_std}),
    Mutant("ddpm_noise_unchecked", "ddpm.noise", ("rejects_out_of_domain",),
           "no domain checks: shapes broadcast, k = 0 and NaN accepted", {"ddpm.noise": _noise_unchecked}),
    Mutant("ddpm_x0_from_eps_sign", "ddpm.x0_from_eps", ("round_trip", "tweedie", "matches_reference"),
           "x_k + sqrt(1 - alpha_bar_k) eps: wrong sign", {"ddpm.x0_from_eps": _x0_sign}),
    Mutant("ddpm_x0_from_eps_alpha_bar_prev", "ddpm.x0_from_eps", ("round_trip", "tweedie", "matches_reference"),
           "alpha_bar_{k-1} (alphas_cumprod_prev) where alpha_bar_k belongs", {"ddpm.x0_from_eps": _x0_prev_alpha_bar}),
    Mutant("ddpm_x0_from_eps_unchecked", "ddpm.x0_from_eps", ("rejects_out_of_domain",),
           "no domain checks: k = 0 returns x_k, NaN passes through", {"ddpm.x0_from_eps": _x0_unchecked}),
    Mutant("ddpm_posterior_variance_wrong_alpha_bar", "ddpm.posterior",
           ("bayes_rule", "point_mass_at_k1", "total_law", "matches_reference"),
           "posterior variance with alpha_bar_k where alpha_bar_{k-1} belongs (alphas_cumprod_prev = alphas_cumprod)",
           {"ddpm.posterior": _posterior_var_alpha_bar_k}),
    Mutant("ddpm_posterior_x0_coef_alpha_bar_k", "ddpm.posterior",
           ("bayes_rule", "point_mass_at_k1", "total_law", "matches_reference"),
           "x_0 coefficient sqrt(alpha_bar_k) beta_k / (1 - alpha_bar_k): alpha_bar index one late",
           {"ddpm.posterior": _posterior_x0_coef_alpha_bar_k}),
    Mutant("ddpm_posterior_unchecked", "ddpm.posterior", ("rejects_out_of_domain",),
           "no domain checks: k = 0 wraps alpha_bar_{-1}, NaN passes through",
           {"ddpm.posterior": _posterior_unchecked}),
    Mutant("ddpm_reverse_step_noise_at_k1", "ddpm.reverse_step",
           ("z_unused_at_k1", "exact_law", "converges_to_data", "matches_reference"),
           "sigma_k z added at k = 1 too", {"ddpm.reverse_step": _step_noise_at_k1}),
    Mutant("ddpm_reverse_step_no_sqrt", "ddpm.reverse_step",
           ("posterior_mean_identity", "exact_law", "converges_to_data", "matches_reference"),
           "beta_k / (1 - alpha_bar_k) instead of beta_k / sqrt(1 - alpha_bar_k) on eps_hat",
           {"ddpm.reverse_step": _step_no_sqrt}),
    Mutant("ddpm_reverse_step_variance_as_std", "ddpm.reverse_step",
           ("exact_law", "converges_to_data", "matches_reference"),
           "sigma_k^2 multiplies z (variance and standard deviation swapped)",
           {"ddpm.reverse_step": _step_var_as_std}),
    Mutant("ddpm_reverse_step_unchecked", "ddpm.reverse_step", ("rejects_out_of_domain",),
           "no domain checks: unknown variance names fall back to beta_tilde, NaN passes through",
           {"ddpm.reverse_step": _step_unchecked}),
    Mutant("ddpm_simple_loss_vlb_no_alpha", "ddpm.simple_loss", ("vlb_weight_is_kl_mean_term", "matches_reference"),
           "VLB weight beta_k^2 / (2 sigma_k^2 (1 - alpha_bar_k)): alpha_k missing",
           {"ddpm.simple_loss": _loss_vlb_no_alpha}),
    Mutant("ddpm_simple_loss_feature_mean", "ddpm.simple_loss",
           ("simple_is_squared_error", "vlb_weight_is_kl_mean_term", "matches_reference"),
           "mean over the d features (F.mse_loss) instead of the squared norm",
           {"ddpm.simple_loss": _loss_feature_mean}),
    Mutant("ddpm_simple_loss_unchecked", "ddpm.simple_loss", ("rejects_out_of_domain",),
           "no domain checks: sigma_k^2 = 0 gives inf, shapes broadcast", {"ddpm.simple_loss": _loss_unchecked}),
    Mutant("ddpm_vlb_no_prior_term", "ddpm.vlb",
           ("prior_term", "bound", "tight_when_model_is_exact", "matches_reference"),
           "L_K dropped as a constant", {"ddpm.vlb": _vlb_no_prior}),
    Mutant("ddpm_vlb_decoder_no_normaliser", "ddpm.vlb",
           ("terms_are_weighted_losses", "bound", "tight_when_model_is_exact", "matches_reference"),
           "L_0 without the Gaussian log-normaliser (d/2) log(2 pi beta_1)",
           {"ddpm.vlb": _vlb_decoder_no_normaliser}),
    Mutant("ddpm_vlb_kl_std_for_variance", "ddpm.vlb",
           ("terms_are_weighted_losses", "bound", "tight_when_model_is_exact", "matches_reference"),
           "KL mean term divided by 2 sigma_k instead of 2 sigma_k^2", {"ddpm.vlb": _vlb_kl_std_for_var}),
    Mutant("ddpm_vlb_unchecked", "ddpm.vlb", ("rejects_out_of_domain",),
           "no domain checks: NaN from the network and short eps arrays pass", {"ddpm.vlb": _vlb_unchecked}),
]
