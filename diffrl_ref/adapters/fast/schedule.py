"""Bridge for family ``schedule``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import schedule as F
from ._bridge import Bridge


def alpha_bar(b: Bridge, betas: ArrayLike) -> Any:
    return b.out(F.alpha_bar(b.x(betas, "schedule.alpha_bar", "betas")))


def linear(b: Bridge, K: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Any:
    return b.out(F.linear(K, beta_start, beta_end, dtype=b.dtype))


def cosine(b: Bridge, K: int, s: float = 0.008, max_beta: float = 0.999) -> Any:
    return b.out(F.cosine(K, s, max_beta, dtype=b.dtype))


def vp(b: Bridge, K: int, beta_min: float = 0.1, beta_max: float = 10.0) -> Any:
    return b.out(F.vp(K, beta_min, beta_max, dtype=b.dtype))
