"""Hypothesis strategies for the spec's common symbols."""

from __future__ import annotations

import functools

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

#: The largest bfloat16 number below 1 (1 - 2^-8). Quantities whose domain ends below 1 (beta_k,
#: max_beta, a discount gamma) are drawn up to it, so that they stay inside the domain after the
#: suite rounds them to the implementation's dtype (0.999 would round to 1.0 in bfloat16).
BELOW_ONE = 1.0 - 2.0**-8


@functools.lru_cache(maxsize=4096)  # strategies are immutable: built and validated once per bounds
def finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite floats in [lo, hi]; magnitudes below TINY are flushed to 0 when 0 lies in range.

    Values such as 1e-45 are normal in float64 but subnormal in float32, where rounding is
    absolute rather than relative; every clause's domain excludes them (see :func:`batch`).
    """
    floats = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if lo <= 0.0 <= hi:
        return floats.map(lambda v: 0.0 if abs(v) < TINY else v)
    return floats


@st.composite
def betas(
    draw: st.DrawFn,
    min_K: int = 1,
    max_K: int = 40,
    lo: float = 1e-4,
    hi: float = 0.5,
    min_alpha_bar: float = 1e-4,
) -> NDArray[np.float64]:
    """A valid schedule beta_1..beta_K: a named family or arbitrary values in [lo, hi].

    ``min_alpha_bar`` keeps alpha_bar_K away from 0, where reconstruction of x_0 is
    ill-conditioned (the spec's domains state this bound where it matters).
    """
    K = draw(st.integers(min_K, max_K))
    kind = draw(st.sampled_from(["linear", "vp", "random"]))
    if kind == "linear" and K >= 2:
        b1 = draw(finite(lo, hi))
        bK = draw(finite(b1, hi))
        b = b1 + (np.arange(K) / (K - 1)) * (bK - b1)
    elif kind == "vp":
        bmin = draw(finite(0.05, 1.0))
        bmax = draw(finite(bmin, 20.0))
        k = np.arange(1, K + 1)
        b = 1 - np.exp(-bmin / K - 0.5 * (bmax - bmin) * (2 * k - 1) / K**2)
    else:
        b = np.asarray(draw(st.lists(finite(lo, hi), min_size=K, max_size=K)), dtype=np.float64)
    b = np.clip(b, lo, BELOW_ONE)
    # Scale down until alpha_bar_K >= min_alpha_bar (keeps the domain well conditioned).
    while np.prod(1 - b) < min_alpha_bar:
        b = b * 0.5
    return b.astype(np.float64)


TINY = 1e-12


@functools.lru_cache(maxsize=4096)
def batch(B: int, d: int, scale: float = 10.0) -> st.SearchStrategy[NDArray[np.float64]]:
    """(B, d) arrays in [-scale, scale]; magnitudes below 1e-12 are flushed to 0.

    Tolerance rules are relative to the data; near subnormals the rounding error is absolute
    (of the size of the smallest normal), so such inputs are outside every clause's domain.
    """
    return hnp.arrays(np.float64, (B, d), elements=finite(-scale, scale)).map(
        lambda a: np.where(np.abs(a) < TINY, 0.0, a))


@st.composite
def batch_any(draw: st.DrawFn, max_B: int = 6, max_d: int = 5, scale: float = 10.0) -> NDArray[np.float64]:
    B = draw(st.integers(1, max_B))
    d = draw(st.integers(1, max_d))
    return draw(batch(B, d, scale))


def seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**32 - 1)
