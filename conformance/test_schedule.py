"""Conformance: spec family ``schedule``."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from diffrl_ref.reference import schedule as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.strategies import betas, finite

# ---- schedule.alpha_bar ---------------------------------------------------------------


@clause("schedule.alpha_bar", "boundary")
@given(b=betas())
def test_alpha_bar_boundary(impl: Any, clause_id: str, b: np.ndarray) -> None:
    b = round_to(impl.dtype, b)
    a = np.asarray(need(impl, clause_id)(b))
    K = b.size
    assert_that(a.shape == (K + 1,), clause_id, f"shape {a.shape}, expected (K+1,) = ({K + 1},)")
    assert_that(a[0] == 1.0, clause_id, f"alpha_bar[0] = {a[0]!r}, must be exactly 1 (alpha_bar_0)")
    assert_close(clause_id, a[1], 1 - b[0], dtype=impl.dtype, what="alpha_bar_1 = 1 - beta_1", K=K,
                 inputs={"beta_1": b[0]})


@clause("schedule.alpha_bar", "ratio")
@given(b=betas())
def test_alpha_bar_ratio(impl: Any, clause_id: str, b: np.ndarray) -> None:
    b = round_to(impl.dtype, b)
    a = np.asarray(need(impl, clause_id)(b), dtype=np.float64)
    assert_close(clause_id, a[1:] / a[:-1], 1 - b, dtype=impl.dtype, what="alpha_bar_k / alpha_bar_{k-1}",
                 K=b.size, inputs={"beta_k": b, "k": np.arange(1, b.size + 1)})


@clause("schedule.alpha_bar", "monotone")
@given(b=betas())
def test_alpha_bar_monotone(impl: Any, clause_id: str, b: np.ndarray) -> None:
    a = np.asarray(need(impl, clause_id)(round_to(impl.dtype, b)), dtype=np.float64)
    assert_that(bool(np.all(np.diff(a) < 0)), clause_id, f"alpha_bar not strictly decreasing: {a}")
    assert_that(bool(np.all((a > 0) & (a <= 1))), clause_id, f"alpha_bar outside (0, 1]: {a}")


@clause("schedule.alpha_bar", "matches_reference")
@given(b=betas())
def test_alpha_bar_matches_reference(impl: Any, clause_id: str, b: np.ndarray) -> None:
    b = round_to(impl.dtype, b)
    assert_close(clause_id, need(impl, clause_id)(b), ref.alpha_bar(b), dtype=impl.dtype, K=b.size,
                 inputs={"k": np.arange(b.size + 1)})


@clause("schedule.alpha_bar", "rejects_out_of_domain")
@given(bad=st.sampled_from([[0.0, 0.1], [0.1, 1.0], [0.2, -0.1], [np.nan], [np.inf], []]))
def test_alpha_bar_rejects_out_of_domain(impl: Any, clause_id: str, bad: list[float]) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, np.asarray(bad, dtype=np.float64))


# ---- schedule.linear ------------------------------------------------------------------


@st.composite
def _linear_args(draw: st.DrawFn) -> tuple[int, float, float]:
    K = draw(st.integers(2, 2000))
    b1 = draw(finite(1e-6, 0.5))
    bK = draw(finite(b1, 0.9))
    return K, b1, bK


@clause("schedule.linear", "endpoints")
@given(args=_linear_args())
def test_linear_endpoints(impl: Any, clause_id: str, args: tuple[int, float, float]) -> None:
    K, b1, bK = args
    b = np.asarray(need(impl, clause_id)(K, b1, bK), dtype=np.float64)
    assert_that(b.shape == (K,), clause_id, f"shape {b.shape}, expected ({K},)")
    assert_close(clause_id, b[[0, -1]], [b1, bK], dtype=impl.dtype, what="endpoints", beta_end=bK)


@clause("schedule.linear", "constant_increment")
@given(args=_linear_args())
def test_linear_increment(impl: Any, clause_id: str, args: tuple[int, float, float]) -> None:
    K, b1, bK = args
    b = np.asarray(need(impl, clause_id)(K, b1, bK), dtype=np.float64)
    step = (bK - b1) / (K - 1)
    # Each difference of two entries carries both entries' errors.
    assert_close(clause_id, np.diff(b), np.full(K - 1, step), dtype=impl.dtype, what="increment",
                 beta_end=2 * bK)


@clause("schedule.linear", "matches_reference")
@given(args=_linear_args())
def test_linear_matches_reference(impl: Any, clause_id: str, args: tuple[int, float, float]) -> None:
    K, b1, bK = args
    assert_close(clause_id, need(impl, clause_id)(K, b1, bK), ref.linear(K, b1, bK), dtype=impl.dtype,
                 beta_end=bK)


# ---- schedule.cosine ------------------------------------------------------------------

#: Nichol and Dhariwal's max_beta. With it only k = K is clipped (every other beta_k < 0.75), which
#: the rule's few-eps bound at clipped steps relies on (spec: schedule.cosine derivation).
MAX_BETA = 0.999


def _cosine_cond(K: int, s: float) -> np.ndarray:
    """Per-step conditioning of beta_k (see the clause's derivation), k = 1..K."""
    theta = (np.arange(K + 1) / K + s) / (1 + s) * np.pi / 2
    tan = np.tan(np.minimum(theta, np.nextafter(np.pi / 2, 0)))
    return 4 * np.pi * (tan[1:] + tan[:-1]) + 8


@clause("schedule.cosine", "unclipped_alpha_bar")
@given(K=st.integers(1, 1000), s=finite(1e-3, 0.1))
def test_cosine_alpha_bar(impl: Any, clause_id: str, K: int, s: float) -> None:
    s = float(round_to(impl.dtype, s))
    b = np.asarray(need(impl, clause_id)(K, s, MAX_BETA), dtype=np.float64)
    f = np.cos((np.arange(K + 1) / K + s) / (1 + s) * np.pi / 2) ** 2
    target = f / f[0]
    unclipped = b < float(round_to(impl.dtype, MAX_BETA))  # a clipped beta is max_beta rounded to the dtype
    # alpha_bar recomputed in float64 from the betas up to the first clipped step.
    stop = int(np.argmin(unclipped)) if not unclipped.all() else K
    a = np.concatenate([[1.0], np.cumprod(1 - b[:stop])])
    cond = np.concatenate([[0.0], np.cumsum(_cosine_cond(K, s)[:stop]) + 2 * np.arange(1, stop + 1)])
    assert_close(clause_id, a, target[: stop + 1], dtype=impl.dtype, what="alpha_bar = f(k)/f(0)",
                 cond=cond, scale=target[: stop + 1], clipped=0.0, inputs={"k": np.arange(stop + 1)})


@clause("schedule.cosine", "clipped")
@given(K=st.integers(1, 1000), s=finite(1e-3, 0.1), max_beta=finite(0.5, 0.999))
def test_cosine_clipped(impl: Any, clause_id: str, K: int, s: float, max_beta: float) -> None:
    s, max_beta = float(round_to(impl.dtype, s)), float(round_to(impl.dtype, max_beta))
    b = np.asarray(need(impl, clause_id)(K, s, max_beta), dtype=np.float64)
    assert_that(b.shape == (K,), clause_id, f"shape {b.shape}, expected ({K},)")
    assert_that(bool(np.all((b > 0) & (b <= max_beta))), clause_id,
                f"betas outside (0, max_beta={max_beta}]: min {b.min():.3g}, max {b.max():.6g}")
    # beta_k increases with k, so clipping can only affect a tail of the schedule.
    clipped = np.flatnonzero(b >= max_beta)
    assert_that(clipped.size == 0 or bool(np.all(clipped == np.arange(K - clipped.size, K))), clause_id,
                f"clip active at non-final steps {clipped.tolist()}")


@clause("schedule.cosine", "matches_reference")
@given(K=st.integers(1, 1000), s=finite(1e-3, 0.1))
def test_cosine_matches_reference(impl: Any, clause_id: str, K: int, s: float) -> None:
    s = float(round_to(impl.dtype, s))
    expected = ref.cosine(K, s, MAX_BETA)
    # Clipped steps carry only the rounding of max_beta, not the conditioning (spec derivation).
    clipped = (expected == MAX_BETA).astype(np.float64)
    assert_close(clause_id, need(impl, clause_id)(K, s, MAX_BETA), expected, dtype=impl.dtype,
                 cond=_cosine_cond(K, s), scale=1 - expected, clipped=clipped,
                 inputs={"k": np.arange(1, K + 1), "clipped": clipped})


# ---- schedule.vp ----------------------------------------------------------------------


@clause("schedule.vp", "continuous_limit")
@given(K=st.integers(1, 1000), bmin=finite(0.01, 1.0), span=finite(0.0, 19.0))
def test_vp_continuous_limit(impl: Any, clause_id: str, K: int, bmin: float, span: float) -> None:
    bmax = bmin + span
    b = np.asarray(need(impl, clause_id)(K, bmin, bmax), dtype=np.float64)
    k = np.arange(K + 1)
    exact = np.exp(-bmin * k / K - (bmax - bmin) * k**2 / (2 * K**2))
    assert_close(clause_id, np.concatenate([[1.0], np.cumprod(1 - b)]), exact, dtype=impl.dtype,
                 what="alpha_bar_k = exp(-int_0^{k/K} beta)", K=K, inputs={"k": k})


@clause("schedule.vp", "matches_reference")
@given(K=st.integers(1, 1000), bmin=finite(0.01, 1.0), span=finite(0.0, 19.0))
def test_vp_matches_reference(impl: Any, clause_id: str, K: int, bmin: float, span: float) -> None:
    assert_close(clause_id, need(impl, clause_id)(K, bmin, bmin + span), ref.vp(K, bmin, bmin + span),
                 dtype=impl.dtype, K=K)
