"""Planted bugs for the ``gaussian`` family."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import gaussian as ref

from . import Mutant

F = NDArray[np.float64]


def _f64(*arrays: ArrayLike) -> list[F]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


# ---- gaussian.reparam -------------------------------------------------------------------


def _reparam_sigma_squared(mu: ArrayLike, sigma: ArrayLike, eps: ArrayLike) -> F:
    # The variance multiplies the noise: mu + sigma^2 * eps.
    return ref.reparam(mu, np.asarray(sigma, dtype=np.float64) ** 2, eps)


def _reparam_sigma_as_variance(mu: ArrayLike, sigma: ArrayLike, eps: ArrayLike) -> F:
    # Treats its argument as a variance and takes the square root: mu + sqrt(sigma) * eps.
    with np.errstate(invalid="ignore"):  # sigma < 0 gives NaN, which the reference then rejects
        return ref.reparam(mu, np.sqrt(np.asarray(sigma, dtype=np.float64)), eps)


def _reparam_logvar(mu: ArrayLike, sigma: ArrayLike, eps: ArrayLike) -> F:
    # VAE-encoder convention leaking in: the argument read as a log-variance, std = exp(sigma / 2).
    m, s, e = _f64(mu, sigma, eps)
    ref.reparam(m, s, e)  # keeps the domain checks
    return m + np.exp(0.5 * s) * e


def _reparam_shared_noise(mu: ArrayLike, sigma: ArrayLike, eps: ArrayLike) -> F:
    # One noise row broadcast over the batch (eps[:1]): every row gets the same draw.
    m, s, e = _f64(mu, sigma, eps)
    ref.reparam(m, s, e)
    return m + s * e[:1]


def _reparam_float32(mu: ArrayLike, sigma: ArrayLike, eps: ArrayLike) -> F:
    m, s, e = (np.asarray(a, dtype=np.float32) for a in (mu, sigma, eps))
    return (m + s * e).astype(np.float64)


def _reparam_unchecked(mu: ArrayLike, sigma: ArrayLike, eps: ArrayLike) -> F:
    m, s, e = _f64(mu, sigma, eps)
    return m + s * e


# ---- gaussian.kl --------------------------------------------------------------------------


def _kl_swapped(mu1: ArrayLike, var1: ArrayLike, mu2: ArrayLike, var2: ArrayLike) -> F:
    # KL(q || p) returned for KL(p || q).
    return ref.kl(mu2, var2, mu1, var1)


def _kl_mean_over_d(mu1: ArrayLike, var1: ArrayLike, mu2: ArrayLike, var2: ArrayLike) -> F:
    # .mean(-1) where .sum(-1) was meant.
    out = ref.kl(mu1, var1, mu2, var2)
    d: int = np.shape(mu1)[-1]
    return out / d


def _kl_log_ratio_sign(mu1: ArrayLike, var1: ArrayLike, mu2: ArrayLike, var2: ArrayLike) -> F:
    # log(var1 / var2) with the wrong sign.
    ref.kl(mu1, var1, mu2, var2)
    m1, v1, m2, v2 = _f64(mu1, var1, mu2, var2)
    r = v1 / v2
    return np.asarray(0.5 * np.sum(r - 1 + np.log(r) + (m1 - m2) ** 2 / v2, axis=-1), dtype=np.float64)


def _kl_missing_minus_one(mu1: ArrayLike, var1: ArrayLike, mu2: ArrayLike, var2: ArrayLike) -> F:
    # Forgets the "- d" (the -1 per coordinate): KL(p || p) = d / 2.
    out = ref.kl(mu1, var1, mu2, var2)
    d: int = np.shape(mu1)[-1]
    return out + 0.5 * d


def _kl_unchecked(mu1: ArrayLike, var1: ArrayLike, mu2: ArrayLike, var2: ArrayLike) -> F:
    m1, v1, m2, v2 = _f64(mu1, var1, mu2, var2)
    with np.errstate(all="ignore"):
        r = v1 / v2
        return np.asarray(0.5 * np.sum(r - 1 - np.log(r) + (m1 - m2) ** 2 / v2, axis=-1), dtype=np.float64)


MUTANTS = [
    Mutant("reparam_sigma_squared", "gaussian.reparam",
           ("affine", "distribution", "pathwise_gradient", "matches_reference"),
           "variance in place of the standard deviation: mu + sigma^2 * eps",
           {"gaussian.reparam": _reparam_sigma_squared}),
    Mutant("reparam_sigma_as_variance", "gaussian.reparam",
           ("affine", "distribution", "pathwise_gradient", "matches_reference"),
           "argument read as a variance: mu + sqrt(sigma) * eps",
           {"gaussian.reparam": _reparam_sigma_as_variance}),
    Mutant("reparam_logvar_convention", "gaussian.reparam",
           ("affine", "distribution", "pathwise_gradient", "matches_reference"),
           "argument read as a log-variance: mu + exp(sigma / 2) * eps",
           {"gaussian.reparam": _reparam_logvar}),
    Mutant("reparam_shared_noise", "gaussian.reparam", ("affine", "distribution", "matches_reference"),
           "one noise row eps[:1] broadcast over the batch",
           {"gaussian.reparam": _reparam_shared_noise}),
    Mutant("reparam_float32", "gaussian.reparam", ("matches_reference",),
           "float32 arithmetic reported as float64", {"gaussian.reparam": _reparam_float32}),
    Mutant("reparam_no_domain_check", "gaussian.reparam", ("rejects_out_of_domain",),
           "broadcasts mismatched shapes and accepts sigma <= 0 and NaN",
           {"gaussian.reparam": _reparam_unchecked}),
    Mutant("kl_swapped_arguments", "gaussian.kl", ("full_covariance", "asymmetry", "matches_reference"),
           "KL(q || p) computed for KL(p || q)", {"gaussian.kl": _kl_swapped}),
    Mutant("kl_mean_over_coordinates", "gaussian.kl", ("full_covariance", "additivity", "matches_reference"),
           "mean over the d coordinates instead of the sum", {"gaussian.kl": _kl_mean_over_d}),
    Mutant("kl_log_ratio_sign", "gaussian.kl", ("full_covariance", "nonnegative", "matches_reference"),
           "+log(var1 / var2) where -log(var1 / var2) is meant", {"gaussian.kl": _kl_log_ratio_sign}),
    Mutant("kl_missing_minus_one", "gaussian.kl", ("full_covariance", "nonnegative", "matches_reference"),
           "the -1 per coordinate dropped (KL(p || p) = d/2)", {"gaussian.kl": _kl_missing_minus_one}),
    Mutant("kl_no_domain_check", "gaussian.kl", ("rejects_out_of_domain",),
           "accepts non-positive variances, NaN and broadcastable shapes",
           {"gaussian.kl": _kl_unchecked}),
]
