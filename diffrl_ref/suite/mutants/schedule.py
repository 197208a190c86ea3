"""Planted bugs for the ``schedule`` family."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import schedule as ref

from . import Mutant

F = NDArray[np.float64]


def _alpha_bar_shifted(betas: ArrayLike) -> F:
    # Indexing alphas_cumprod[k] where alphas_cumprod[k - 1] was meant: every alpha_bar one step late.
    a = ref.alpha_bar(betas)
    return np.concatenate([[1.0], a[2:], [a[-1] * (1 - np.asarray(betas)[-1])]])


def _alpha_bar_no_zero(betas: ArrayLike) -> F:
    # Plain cumprod: forgets alpha_bar_0 = 1, so alpha_bar[k] is alpha_bar_{k+1}.
    return np.cumprod(1 - np.asarray(betas, dtype=np.float64)).astype(np.float64)


def _alpha_bar_sum(betas: ArrayLike) -> F:
    # 1 - cumsum(beta): the first-order approximation of the product.
    b = np.asarray(betas, dtype=np.float64)
    if b.size == 0 or not np.all((b > 0) & (b < 1)):
        raise ValueError("schedule.alpha_bar: bad betas")
    return np.concatenate([[1.0], 1 - np.cumsum(b)])


def _alpha_bar_unchecked(betas: ArrayLike) -> F:
    b = np.asarray(betas, dtype=np.float64)
    return np.concatenate([[1.0], np.cumprod(1 - b)])


def _linear_linspace_k_plus_1(K: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> F:
    return np.linspace(beta_start, beta_end, K + 1)[:K]


def _linear_float32(K: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> F:
    # Computed in float32 while claiming float64.
    return np.linspace(beta_start, beta_end, K, dtype=np.float32).astype(np.float64)


def _cosine_no_clip(K: int, s: float = 0.008, max_beta: float = 0.999) -> F:
    f = np.cos((np.arange(K + 1) / K + s) / (1 + s) * np.pi / 2) ** 2
    a = f / f[0]
    return np.asarray(1 - a[1:] / a[:-1], dtype=np.float64)


def _cosine_no_offset_norm(K: int, s: float = 0.008, max_beta: float = 0.999) -> F:
    # Drops the 1/(1+s) factor: alpha_bar no longer reaches ~0 at k = K as intended.
    f = np.cos((np.arange(K + 1) / K + s) * np.pi / 2) ** 2
    a = f / f[0]
    return np.asarray(np.clip(1 - a[1:] / a[:-1], 0, max_beta), dtype=np.float64)


def _vp_2k_plus_1(K: int, beta_min: float = 0.1, beta_max: float = 10.0) -> F:
    k = np.arange(1, K + 1)
    return 1 - np.exp(-beta_min / K - 0.5 * (beta_max - beta_min) * (2 * k + 1) / K**2)


MUTANTS = [
    Mutant("alpha_bar_shifted_by_one", "schedule.alpha_bar", ("boundary", "ratio", "matches_reference"),
           "alpha_bar_k read one index late (alphas_cumprod[k] for alpha_bar_k)",
           {"schedule.alpha_bar": _alpha_bar_shifted}),
    Mutant("alpha_bar_missing_alpha_bar_0", "schedule.alpha_bar", ("boundary",),
           "cumprod without the leading alpha_bar_0 = 1", {"schedule.alpha_bar": _alpha_bar_no_zero}),
    Mutant("alpha_bar_first_order", "schedule.alpha_bar", ("ratio", "monotone", "matches_reference"),
           "1 - cumsum(beta) in place of prod(1 - beta)", {"schedule.alpha_bar": _alpha_bar_sum}),
    Mutant("alpha_bar_no_domain_check", "schedule.alpha_bar", ("rejects_out_of_domain",),
           "accepts beta outside (0, 1) and NaN silently", {"schedule.alpha_bar": _alpha_bar_unchecked}),
    Mutant("linear_linspace_k_plus_1", "schedule.linear", ("endpoints", "constant_increment", "matches_reference"),
           "linspace over K + 1 points truncated to K", {"schedule.linear": _linear_linspace_k_plus_1}),
    Mutant("linear_float32", "schedule.linear", ("endpoints", "matches_reference"),
           "float32 arithmetic reported as float64", {"schedule.linear": _linear_float32}),
    Mutant("cosine_no_clip", "schedule.cosine", ("clipped", "matches_reference"), "beta_K not clipped at max_beta",
           {"schedule.cosine": _cosine_no_clip}),
    Mutant("cosine_missing_1_plus_s", "schedule.cosine", ("unclipped_alpha_bar", "matches_reference"),
           "f(k) without the 1/(1+s) normalisation", {"schedule.cosine": _cosine_no_offset_norm}),
    Mutant("vp_2k_plus_1", "schedule.vp", ("continuous_limit", "matches_reference"),
           "(2k + 1) in place of (2k - 1): the midpoint rule shifted by one step",
           {"schedule.vp": _vp_2k_plus_1}),
]
