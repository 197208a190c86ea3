"""Noise schedules (spec family ``schedule``)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._checks import Array, as_betas, require


def alpha_bar(betas: ArrayLike) -> Array:
    """Clause ``schedule.alpha_bar``: [alpha_bar_0 = 1, alpha_bar_1, ..., alpha_bar_K]."""
    beta = as_betas(betas, "schedule.alpha_bar")
    alpha = 1.0 - beta
    return np.concatenate([[1.0], np.cumprod(alpha)])


def linear(K: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Array:
    """Clause ``schedule.linear``: beta_k linear from beta_start (k = 1) to beta_end (k = K)."""
    cid = "schedule.linear"
    require(int(K) == K and K >= 2, cid, f"K must be an integer >= 2, got {K!r}")
    require(0 < beta_start <= beta_end < 1, cid, "need 0 < beta_start <= beta_end < 1")
    k = np.arange(1, K + 1, dtype=np.float64)
    return beta_start + (k - 1) / (K - 1) * (beta_end - beta_start)


def cosine(K: int, s: float = 0.008, max_beta: float = 0.999) -> Array:
    """Clause ``schedule.cosine``: alpha_bar_k = f(k)/f(0), beta_k = min(1 - ratio, max_beta)."""
    cid = "schedule.cosine"
    require(int(K) == K and K >= 1, cid, f"K must be an integer >= 1, got {K!r}")
    require(s > 0, cid, "s must be > 0")
    require(0 < max_beta < 1, cid, "max_beta must lie in (0, 1)")

    def f(k: Array) -> Array:
        return np.cos((k / K + s) / (1 + s) * np.pi / 2) ** 2

    k = np.arange(0, K + 1, dtype=np.float64)
    a_bar = f(k) / f(np.zeros(1))
    return np.minimum(1.0 - a_bar[1:] / a_bar[:-1], max_beta)


def vp(K: int, beta_min: float = 0.1, beta_max: float = 10.0) -> Array:
    """Clause ``schedule.vp``: the discretised VP-SDE schedule used by Diffusion-QL."""
    cid = "schedule.vp"
    require(int(K) == K and K >= 1, cid, f"K must be an integer >= 1, got {K!r}")
    require(0 < beta_min <= beta_max, cid, "need 0 < beta_min <= beta_max")
    k = np.arange(1, K + 1, dtype=np.float64)
    return 1.0 - np.exp(-beta_min / K - 0.5 * (beta_max - beta_min) * (2 * k - 1) / K**2)
