"""Conformance: spec family ``guidance``.

Oracles: the exact Bayes posterior of a Gaussian reverse step under a Gaussian classifier
(classifier guidance), and the exact noise prediction of the tilted density p_t(x) p_t(y | x)^omega
for Gaussian data, built by linear-Gaussian regression of y on x_t (classifier-free guidance).
Both are written here in float64; the reference is only the oracle of matches_reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from diffrl_ref.reference import guidance as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.gaussian_oracle import GaussianData
from diffrl_ref.suite.strategies import finite

F = NDArray[np.float64]


def _normal(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Floats in [lo, hi] that are 0 or at least 1e-6 in magnitude: no value underflows in a low precision."""
    return finite(lo, hi).map(lambda v: v if abs(v) >= 1e-6 else 0.0)


def _batch(B: int, d: int, lo: float = -10.0, hi: float = 10.0) -> st.SearchStrategy[F]:
    return hnp.arrays(np.float64, (B, d), elements=_normal(lo, hi))


@st.composite
def _shape(draw: st.DrawFn) -> tuple[int, int]:
    return draw(st.integers(1, 6)), draw(st.integers(1, 5))


# =================================================================================================
# guidance.classifier
# =================================================================================================


@st.composite
def _classifier_args(draw: st.DrawFn) -> tuple[F, F, F]:
    """mean (B, d), var (B, 1) or (B, d) in [1e-3, 1], grad (B, d)."""
    B, d = draw(_shape())
    var_cols = draw(st.sampled_from([1, d]))
    return draw(_batch(B, d)), draw(_batch(B, var_cols, 1e-3, 1.0)), draw(_batch(B, d))


@clause("guidance.classifier", "s_zero_identity")
@given(args=_classifier_args())
def test_classifier_s_zero(impl: Any, clause_id: str, args: tuple[F, F, F]) -> None:
    mean, var, grad = (round_to(impl.dtype, a) for a in args)
    got = need(impl, clause_id)(mean, var, grad, 0.0)
    assert_close(clause_id, got, mean, dtype=impl.dtype, what="s = 0: the unguided mean", mean=mean, shift=0.0)


@clause("guidance.classifier", "linear_in_s")
@given(args=_classifier_args(), s=_normal(0.0, 10.0))
def test_classifier_linear_in_s(impl: Any, clause_id: str, args: tuple[F, F, F], s: float) -> None:
    mean, var, grad = (round_to(impl.dtype, a) for a in args)
    s = float(round_to(impl.dtype, s))
    fn = need(impl, clause_id)
    one = np.asarray(fn(mean, var, grad, 1.0), dtype=np.float64)
    got = fn(mean, var, grad, s)
    # s (g(1) - mean) carries s times the error of g(1): the rule gets the summed magnitudes.
    assert_close(clause_id, got, mean + s * (one - mean), dtype=impl.dtype, what="g(s) - mean = s (g(1) - mean)",
                 mean=(1 + s) * abs(mean), shift=2 * abs(s * var * grad), inputs={"s": s})


@clause("guidance.classifier", "gaussian_bayes")
@given(args=_classifier_args(), y=_batch(6, 5), r=finite(0.1, 100.0), s=_normal(0.0, 10.0))
def test_classifier_gaussian_bayes(impl: Any, clause_id: str, args: tuple[F, F, F], y: F, r: float,
                                   s: float) -> None:
    mean, var, _ = (round_to(impl.dtype, a) for a in args)
    s = float(round_to(impl.dtype, s))
    y = y[: mean.shape[0], : mean.shape[1]]
    # Classifier p(y | x) = N(y; x, r I): its log-likelihood gradient at x = mu is (y - mu) / r.
    grad = round_to(impl.dtype, (y - mean) / r)
    got = need(impl, clause_id)(mean, var, grad, s)
    # Exact posterior of N(x; mu, Sigma) N(y; x, r I): mean mu + delta, delta = Sigma (y - mu) / (Sigma + r).
    delta = var * (y - mean) / (var + r)
    expected = mean + s * (1 + var / r) * delta
    assert_close(clause_id, got, expected, dtype=impl.dtype,
                 what="guided - mu = s (1 + Sigma/r) (exact posterior mean - mu)", mean=mean, shift=s * var * grad,
                 inputs={"r": r, "s": s, "Sigma": np.broadcast_to(var, mean.shape)})


@clause("guidance.classifier", "matches_reference")
@given(args=_classifier_args(), s=_normal(0.0, 10.0))
def test_classifier_matches_reference(impl: Any, clause_id: str, args: tuple[F, F, F], s: float) -> None:
    mean, var, grad = (round_to(impl.dtype, a) for a in args)
    s = float(round_to(impl.dtype, s))
    assert_close(clause_id, need(impl, clause_id)(mean, var, grad, s), ref.classifier(mean, var, grad, s),
                 dtype=impl.dtype, mean=mean, shift=s * var * grad, inputs={"s": s})


_M = np.ones((2, 3))
_CLASSIFIER_BAD: dict[str, tuple[Any, ...]] = {
    "mean NaN": (np.full((2, 3), np.nan), np.ones((2, 1)), _M, 1.0),
    "grad inf": (_M, np.ones((2, 1)), np.full((2, 3), np.inf), 1.0),
    "var NaN": (_M, np.full((2, 1), np.nan), _M, 1.0),
    "var < 0": (_M, -np.ones((2, 1)), _M, 1.0),
    "var shape (B,)": (_M, np.ones(2), _M, 1.0),
    "var shape (B, d+1)": (_M, np.ones((2, 4)), _M, 1.0),
    "grad shape mismatch": (_M, np.ones((2, 1)), np.ones((2, 2)), 1.0),
    "mean not a batch": (np.ones(3), np.ones((1, 1)), np.ones(3), 1.0),
    "s < 0": (_M, np.ones((2, 1)), _M, -1.0),
    "s NaN": (_M, np.ones((2, 1)), _M, np.nan),
}


@clause("guidance.classifier", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_CLASSIFIER_BAD)))
def test_classifier_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_CLASSIFIER_BAD[case])


# =================================================================================================
# guidance.cfg
# =================================================================================================


@st.composite
def _pair(draw: st.DrawFn) -> tuple[F, F]:
    B, d = draw(_shape())
    return draw(_batch(B, d, -5.0, 5.0)), draw(_batch(B, d, -5.0, 5.0))


@clause("guidance.cfg", "endpoints")
@given(pair=_pair())
def test_cfg_endpoints(impl: Any, clause_id: str, pair: tuple[F, F]) -> None:
    u, c = (round_to(impl.dtype, a) for a in pair)
    fn = need(impl, clause_id)
    assert_close(clause_id, fn(u, c, 0.0), u, dtype=impl.dtype, what="omega = 0: unconditional",
                 eps_uncond=u, eps_cond=c, omega=0.0, oracle=0.0)
    assert_close(clause_id, fn(u, c, 1.0), c, dtype=impl.dtype, what="omega = 1: conditional",
                 eps_uncond=u, eps_cond=c, omega=1.0, oracle=0.0)


@clause("guidance.cfg", "affine_in_omega")
@given(pair=_pair(), omega=_normal(0.0, 10.0))
def test_cfg_affine(impl: Any, clause_id: str, pair: tuple[F, F], omega: float) -> None:
    u, c = (round_to(impl.dtype, a) for a in pair)
    omega = float(round_to(impl.dtype, omega))
    fn = need(impl, clause_id)
    at0, at1 = (np.asarray(fn(u, c, w), dtype=np.float64) for w in (0.0, 1.0))
    # The combination weights |1 - omega| + omega <= 1 + 2 omega multiply the errors of g(0) and g(1).
    assert_close(clause_id, fn(u, c, omega), (1 - omega) * at0 + omega * at1, dtype=impl.dtype,
                 what="g(omega) = (1 - omega) g(0) + omega g(1)", eps_uncond=u, eps_cond=c, omega=omega,
                 oracle=(1 + 2 * omega) * (abs(u) + abs(c)), inputs={"omega": omega})


@st.composite
def _gaussian_cfg(draw: st.DrawFn) -> dict[str, Any]:
    B, d = draw(_shape())
    m = np.asarray(draw(st.lists(_normal(-2.0, 2.0), min_size=d, max_size=d)))
    v = np.exp(np.asarray(draw(st.lists(finite(np.log(0.1), np.log(10.0)), min_size=d, max_size=d))))
    y = np.asarray(draw(st.lists(_normal(-3.0, 3.0), min_size=d, max_size=d)))
    return {"m": m, "v": v, "y": y, "r": draw(finite(0.1, 10.0)), "ab": draw(finite(0.01, 0.99)),
            "x": draw(_batch(B, d, -4.0, 4.0)), "omega": draw(_normal(0.0, 10.0))}


@clause("guidance.cfg", "sharpened_gaussian")
@given(case=_gaussian_cfg())
def test_cfg_sharpened_gaussian(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    m, v, y, r, ab, omega = case["m"], case["v"], case["y"], case["r"], case["ab"], case["omega"]
    x = round_to(impl.dtype, case["x"])
    omega = float(round_to(impl.dtype, omega))
    # Data x_0 ~ N(m, v); label y | x_0 ~ N(x_0, r): the conditional data law is N(m_y, v_y).
    v_y, m_y = v * r / (v + r), (r * m + v * y) / (v + r)
    eps_u = round_to(impl.dtype, GaussianData.of(m, v).eps(x, ab))
    eps_c = round_to(impl.dtype, GaussianData.of(m_y, v_y).eps(x, ab))
    got = need(impl, clause_id)(eps_u, eps_c, omega)
    # Oracle: p_t(x) p_t(y | x)^omega, with p_t(y | x) = N(y; a x + b, q) from regressing y on x_t
    # (Var x_t = V, Cov(y, x_t) = sqrt(ab) v). A Gaussian with precision P and P*mean = PM; its
    # noise prediction is -sqrt(1 - ab) grad log = sqrt(1 - ab) (P x - PM).
    V = ab * v + 1 - ab
    a = np.sqrt(ab) * v / V
    b = m * (1 - a * np.sqrt(ab))
    q = r + v * (1 - ab) / V
    P = 1 / V + omega * a**2 / q
    PM = np.sqrt(ab) * m / V + omega * a * (y - b) / q
    expected = np.sqrt(1 - ab) * (P * x - PM)
    oracle = np.sqrt(1 - ab) * ((1 + omega) * (abs(x) + np.sqrt(ab) * abs(m)) / V
                                + omega * (abs(x) + np.sqrt(ab) * abs(m_y)) / (ab * v_y + 1 - ab)
                                + P * abs(x) + abs(PM))
    assert_close(clause_id, got, expected, dtype=impl.dtype, what="eps of p_t(x) p_t(y|x)^omega",
                 eps_uncond=eps_u, eps_cond=eps_c, omega=omega, oracle=oracle,
                 inputs={"omega": omega, "alpha_bar": ab, "r": r})


@clause("guidance.cfg", "matches_reference")
@given(pair=_pair(), omega=_normal(0.0, 10.0))
def test_cfg_matches_reference(impl: Any, clause_id: str, pair: tuple[F, F], omega: float) -> None:
    u, c = (round_to(impl.dtype, a) for a in pair)
    omega = float(round_to(impl.dtype, omega))
    assert_close(clause_id, need(impl, clause_id)(u, c, omega), ref.cfg(u, c, omega), dtype=impl.dtype,
                 eps_uncond=u, eps_cond=c, omega=omega, oracle=0.0, inputs={"omega": omega})


def _bad_pairs(weight_name: str, bad_weight: float) -> dict[str, tuple[Any, ...]]:
    return {
        "eps_uncond NaN": (np.full((2, 3), np.nan), _M, 1.5),
        "eps_cond inf": (_M, np.full((2, 3), -np.inf), 1.5),
        "shape mismatch": (_M, np.ones((3, 3)), 1.5),
        "not a batch": (np.ones(3), np.ones(3), 1.5),
        f"{weight_name} NaN": (_M, _M, np.nan),
        f"{weight_name} out of range": (_M, _M, bad_weight),
        f"{weight_name} not a scalar": (_M, _M, np.array([1.0, 2.0])),
    }


_CFG_BAD = _bad_pairs("omega", -0.5)


@clause("guidance.cfg", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_CFG_BAD)))
def test_cfg_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_CFG_BAD[case])


# =================================================================================================
# guidance.cfg_ho_salimans
# =================================================================================================


@clause("guidance.cfg_ho_salimans", "convention_mapping")
@given(pair=_pair(), w=_normal(-1.0, 10.0))
def test_hs_convention_mapping(impl: Any, clause_id: str, pair: tuple[F, F], w: float) -> None:
    u, c = (round_to(impl.dtype, a) for a in pair)
    w = float(round_to(impl.dtype, w))
    # The decks' (Decision Diffuser) form with omega = 1 + w, evaluated here in float64.
    expected = u + (1 + w) * (c - u)
    assert_close(clause_id, need(impl, clause_id)(u, c, w), expected, dtype=impl.dtype,
                 what="(1 + w) eps_c - w eps_u = cfg(omega = 1 + w)", eps_uncond=u, eps_cond=c, w=w,
                 inputs={"w": w})


@clause("guidance.cfg_ho_salimans", "w_zero_conditional")
@given(pair=_pair())
def test_hs_w_zero(impl: Any, clause_id: str, pair: tuple[F, F]) -> None:
    u, c = (round_to(impl.dtype, a) for a in pair)
    assert_close(clause_id, need(impl, clause_id)(u, c, 0.0), c, dtype=impl.dtype,
                 what="w = 0: the conditional model", eps_uncond=u, eps_cond=c, w=0.0)


@clause("guidance.cfg_ho_salimans", "matches_reference")
@given(pair=_pair(), w=_normal(-1.0, 10.0))
def test_hs_matches_reference(impl: Any, clause_id: str, pair: tuple[F, F], w: float) -> None:
    u, c = (round_to(impl.dtype, a) for a in pair)
    w = float(round_to(impl.dtype, w))
    assert_close(clause_id, need(impl, clause_id)(u, c, w), ref.cfg_ho_salimans(u, c, w), dtype=impl.dtype,
                 eps_uncond=u, eps_cond=c, w=w, inputs={"w": w})


_HS_BAD = _bad_pairs("w", -1.5)


@clause("guidance.cfg_ho_salimans", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_HS_BAD)))
def test_hs_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_HS_BAD[case])
