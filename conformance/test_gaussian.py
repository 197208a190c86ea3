"""Conformance: spec family ``gaussian``."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffrl_ref import spec
from diffrl_ref.reference import gaussian as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.stats import assert_gaussian_moments
from diffrl_ref.suite.strategies import finite

F = np.ndarray

#: Monte Carlo sample size of the distribution property. stats derives the bounds from n at level
#: ALPHA, so n sets only the power: at n = 20000 the mean test resolves a shift of 5.2 / sqrt(n) =
#: 0.04 sigma and the variance test a relative change of about 5.2 sqrt(2 / n) = 5%.
N_SAMPLES = 20000

#: Largest shift, in standard deviations of the statistic, that rounding z to the dtype may cause in
#: the distribution property's z and chi-square statistics: the levels then change by a factor of at
#: most e^(0.01 x 5.3) < 1.06 (5.3 >= their critical values).
ROUNDING_SHIFT = 0.01


def _max_mu_over_sigma(dtype: str, e: F) -> float:
    """Largest |mu| / sigma R for which rounding moves neither statistic by more than ROUNDING_SHIFT.

    With E = max|e_k| of the exact normal sample, the call sees e_k rounded to the dtype (error
    <= u E) and rounds sigma e_k and the sum: z_k - (mu + sigma e_k) is at most sigma delta with
    delta = 1.01 u (R + 3E) (1.01 >= (1 + u)^3 also covers rounding the clipped mu). The mean's z
    statistic moves by at most sqrt(n) delta; the chi-square statistic sum ((z_k - mu) / sigma)^2
    by at most n (2 E delta + delta^2), that is sqrt(n / 2) (2 E delta + delta^2) of its sd
    sqrt(2n), the larger of the two (E >= 1). Solved for delta, then R. bfloat16 (u = 2^-9) admits
    no R >= 0 at n = 20000: R = 0 (mu = 0) is used and the bound does not hold there (rounding
    sigma * eps alone can move the chi-square statistic by 27 sd).
    """
    n, E, u = e.shape[0], float(np.max(np.abs(e))), spec.EPS[dtype] / 2
    delta = -E + math.sqrt(E * E + ROUNDING_SHIFT * math.sqrt(2 / n))
    return max(delta / (1.01 * u) - 3 * E, 0.0)


def _atol(clause_id: str, dtype: str, **variables: Any) -> F:
    """The clause's tolerance rule, for properties that are inequalities rather than equalities."""
    return spec.clause(clause_id).tolerance.atol(dtype, **variables)


def _log_uniform(shape: tuple[int, ...], lo: float, hi: float) -> st.SearchStrategy[F]:
    """Positive values spread evenly in log scale over [lo, hi]."""
    return hnp.arrays(np.float64, shape, elements=finite(math.log(lo), math.log(hi))).map(np.exp)


# ---- gaussian.reparam -----------------------------------------------------------------


@st.composite
def _reparam_args(draw: st.DrawFn) -> tuple[F, F, F]:
    # The rule is relative: a product sigma * eps in the subnormal range carries an absolute underflow
    # error it does not cover. finite() draws mu and eps as 0 or of magnitude >= strategies.TINY = 1e-12,
    # so with sigma >= 1e-3, |sigma * eps| >= 1e-15, far above 2^-126 = 1.2e-38 (the smallest normal
    # float32 and bfloat16).
    B = draw(st.integers(1, 5))
    d = draw(st.integers(1, 4))
    mu = draw(hnp.arrays(np.float64, (B, d), elements=finite(-10, 10)))
    sigma = draw(_log_uniform((B, d), 1e-3, 10.0))
    eps = draw(hnp.arrays(np.float64, (B, d), elements=finite(-5, 5)))
    return mu, sigma, eps


@clause("gaussian.reparam", "affine")
@given(args=_reparam_args())
def test_reparam_affine(impl: Any, clause_id: str, args: tuple[F, F, F]) -> None:
    mu, sigma, e = (round_to(impl.dtype, a) for a in args)
    f = need(impl, clause_id)
    z0 = np.asarray(f(mu, sigma, np.zeros_like(e)), dtype=np.float64)
    assert_close(clause_id, z0, mu, dtype=impl.dtype, what="z(eps = 0) = mu", mu=mu, sigma=sigma, noise=0.0,
                 inputs={"mu": mu, "sigma": sigma})
    z = np.asarray(f(mu, sigma, e), dtype=np.float64)
    assert_close(clause_id, z - z0, sigma * e, dtype=impl.dtype, what="z(eps) - z(0) = sigma * eps",
                 mu=2 * np.abs(mu), sigma=sigma, noise=e, inputs={"mu": mu, "sigma": sigma, "eps": e})


@clause("gaussian.reparam", "distribution")
@given(mu=hnp.arrays(np.float64, st.integers(1, 3).map(lambda d: (d,)), elements=finite(-10, 10)),
       data=st.data())
def test_reparam_distribution(impl: Any, clause_id: str, mu: F, data: st.DataObject) -> None:
    d = mu.size
    sigma = data.draw(_log_uniform((d,), 1e-3, 10.0), label="sigma")
    e64 = np.random.default_rng(20140).standard_normal((N_SAMPLES, d))
    ratio = _max_mu_over_sigma(impl.dtype, e64)  # 158 to 183 in float32, ~1e11 in float64, 0 in bfloat16
    e, sigma = round_to(impl.dtype, e64), round_to(impl.dtype, sigma)
    mu = round_to(impl.dtype, np.clip(mu, -ratio * sigma, ratio * sigma))
    z = np.asarray(need(impl, clause_id)(np.tile(mu, (N_SAMPLES, 1)), np.tile(sigma, (N_SAMPLES, 1)), e),
                   dtype=np.float64)
    assert_that(z.shape == (N_SAMPLES, d), clause_id, f"shape {z.shape}, expected {(N_SAMPLES, d)}")
    assert_gaussian_moments(clause_id, z, mu, sigma**2, what=f"z ~ N(mu, sigma^2), sigma = {sigma}")


@clause("gaussian.reparam", "pathwise_gradient")
@given(args=_reparam_args())
def test_reparam_pathwise_gradient(impl: Any, clause_id: str, args: tuple[F, F, F]) -> None:
    mu, sigma, e = (round_to(impl.dtype, a) for a in args)
    f = need(impl, clause_id)
    # dz/dmu = 1: central difference with step 1 (exact for an affine map).
    mu_p, mu_m = round_to(impl.dtype, mu + 1.0), round_to(impl.dtype, mu - 1.0)
    dz = np.asarray(f(mu_p, sigma, e), dtype=np.float64) - np.asarray(f(mu_m, sigma, e), dtype=np.float64)
    assert_close(clause_id, dz, mu_p - mu_m, dtype=impl.dtype, what="z(mu + h) - z(mu - h) = 2h (dz/dmu = 1)",
                 mu=np.abs(mu_p) + np.abs(mu_m), sigma=2 * sigma, noise=e, inputs={"mu": mu, "sigma": sigma, "eps": e})
    # dz/dsigma = eps: central difference with step sigma / 2.
    s_p, s_m = round_to(impl.dtype, 1.5 * sigma), round_to(impl.dtype, 0.5 * sigma)
    dz = np.asarray(f(mu, s_p, e), dtype=np.float64) - np.asarray(f(mu, s_m, e), dtype=np.float64)
    assert_close(clause_id, dz, (s_p - s_m) * e, dtype=impl.dtype,
                 what="z(sigma + h) - z(sigma - h) = 2h eps (dz/dsigma = eps)",
                 mu=2 * np.abs(mu), sigma=s_p + s_m, noise=e, inputs={"mu": mu, "sigma": sigma, "eps": e})


@clause("gaussian.reparam", "matches_reference")
@given(args=_reparam_args())
def test_reparam_matches_reference(impl: Any, clause_id: str, args: tuple[F, F, F]) -> None:
    mu, sigma, e = (round_to(impl.dtype, a) for a in args)
    assert_close(clause_id, need(impl, clause_id)(mu, sigma, e), ref.reparam(mu, sigma, e), dtype=impl.dtype,
                 mu=mu, sigma=sigma, noise=e, inputs={"mu": mu, "sigma": sigma, "eps": e})


def _reparam_bad() -> list[tuple[F, F, F]]:
    mu, s, e = np.zeros((2, 3)), np.ones((2, 3)), np.ones((2, 3))

    def put(a: F, i: tuple[int, int], v: float) -> F:
        b = a.copy()
        b[i] = v
        return b

    return [
        (mu, put(s, (0, 1), 0.0), e),  # sigma = 0
        (mu, put(s, (1, 2), -1.0), e),  # negative sigma
        (put(mu, (0, 0), np.nan), s, e),
        (mu, s, put(e, (1, 1), np.inf)),
        (mu, put(s, (0, 0), np.nan), e),
        (mu, s, e[:1]),  # one noise row broadcast over the batch
        (mu, s[:, :1], e),  # isotropic sigma (B, 1) must be broadcast by the caller
        (mu[0], s[0], e[0]),  # not a batch
    ]


@clause("gaussian.reparam", "rejects_out_of_domain")
@given(i=st.integers(0, len(_reparam_bad()) - 1))
def test_reparam_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_reparam_bad()[i])


# ---- gaussian.kl ----------------------------------------------------------------------


@st.composite
def _kl_args(draw: st.DrawFn, min_d: int = 1, max_d: int = 4) -> tuple[F, F, F, F]:
    B = draw(st.integers(1, 4))
    d = draw(st.integers(min_d, max_d))
    mu1 = draw(hnp.arrays(np.float64, (B, d), elements=finite(-5, 5)))
    mu2 = draw(hnp.arrays(np.float64, (B, d), elements=finite(-5, 5)))
    var1 = draw(_log_uniform((B, d), 1e-2, 1e2))
    var2 = draw(_log_uniform((B, d), 1e-2, 1e2))
    return mu1, var1, mu2, var2


def _kl_call(impl: Any, clause_id: str, mu1: F, var1: F, mu2: F, var2: F) -> F:
    return np.asarray(need(impl, clause_id)(mu1, var1, mu2, var2), dtype=np.float64)


Q = list[list[Fraction]]


def _frac_solve(A: Q, Bm: Q) -> tuple[Q, Fraction]:
    """A^-1 Bm and det A, exactly (Gauss-Jordan elimination in rational arithmetic)."""
    n = len(A)
    M = [row[:] + brow[:] for row, brow in zip(A, Bm, strict=True)]
    det = Fraction(1)
    for c in range(n):
        p = next(r for r in range(c, n) if M[r][c] != 0)
        if p != c:
            M[c], M[p] = M[p], M[c]
            det = -det
        det *= M[c][c]
        piv = M[c][c]
        M[c] = [v / piv for v in M[c]]
        for r in range(n):
            if r != c and M[r][c] != 0:
                f = M[r][c]
                M[r] = [a - f * b for a, b in zip(M[r], M[c], strict=True)]
    return [row[n:] for row in M], det


def _frac_matmul(A: Q, Bm: Q) -> Q:
    return [[sum((A[i][k] * Bm[k][j] for k in range(len(Bm))), Fraction(0)) for j in range(len(Bm[0]))]
            for i in range(len(A))]


def _cayley(skew: list[int], d: int) -> Q:
    """Rational orthogonal Q = (I - A)(I + A)^-1 for the skew-symmetric A with upper entries ``skew``."""
    A = [[Fraction(0)] * d for _ in range(d)]
    it = iter(skew)
    for i in range(d):
        for j in range(i + 1, d):
            v = Fraction(next(it))
            A[i][j], A[j][i] = v, -v
    eye = [[Fraction(int(i == j)) for j in range(d)] for i in range(d)]
    plus = [[eye[i][j] + A[i][j] for j in range(d)] for i in range(d)]
    minus = [[eye[i][j] - A[i][j] for j in range(d)] for i in range(d)]
    inv_plus, _ = _frac_solve(plus, eye)
    return _frac_matmul(minus, inv_plus)


def _kl_full_exact(Qm: Q, mu1: F, var1: F, mu2: F, var2: F) -> float:
    """(1/2)[tr(S2^-1 S1) + D^T S2^-1 D - d + log(det S2 / det S1)] for S_i = Q diag(var_i) Q^T, m_i = Q mu_i."""
    d = len(Qm)
    QT = [list(r) for r in zip(*Qm, strict=True)]

    def cov(v: F) -> Q:
        return _frac_matmul([[Qm[i][j] * Fraction(float(v[j])) for j in range(d)] for i in range(d)], QT)

    def mean(m: F) -> list[Fraction]:
        return [sum((Qm[i][j] * Fraction(float(m[j])) for j in range(d)), Fraction(0)) for i in range(d)]

    S1, S2 = cov(var1), cov(var2)
    D = [a - b for a, b in zip(mean(mu2), mean(mu1), strict=True)]
    S2inv_S1, det2 = _frac_solve(S2, S1)
    _, det1 = _frac_solve(S1, [[Fraction(0)] for _ in range(d)])
    S2inv_D, _ = _frac_solve(S2, [[v] for v in D])
    trace = sum((S2inv_S1[i][i] for i in range(d)), Fraction(0))
    quad = sum((D[i] * S2inv_D[i][0] for i in range(d)), Fraction(0))
    return float((trace + quad - d) / 2) + 0.5 * math.log(det2 / det1)


@clause("gaussian.kl", "full_covariance")
@given(args=_kl_args(), data=st.data())
def test_kl_full_covariance(impl: Any, clause_id: str, args: tuple[F, F, F, F], data: st.DataObject) -> None:
    mu1, var1, mu2, var2 = (round_to(impl.dtype, a) for a in args)
    B, d = mu1.shape
    skew = data.draw(st.lists(st.integers(-3, 3), min_size=d * (d - 1) // 2, max_size=d * (d - 1) // 2),
                     label="skew")
    Qm = _cayley(skew, d)
    exact = np.array([_kl_full_exact(Qm, mu1[i], var1[i], mu2[i], var2[i]) for i in range(B)])
    assert_close(clause_id, _kl_call(impl, clause_id, mu1, var1, mu2, var2), exact, dtype=impl.dtype,
                 what="diagonal closed form = rotated full-covariance KL (exact rational oracle)",
                 mu1=mu1, var1=var1, mu2=mu2, var2=var2, d=d, inputs={"row": np.arange(B)})


@clause("gaussian.kl", "nonnegative")
@given(args=_kl_args())
def test_kl_nonnegative(impl: Any, clause_id: str, args: tuple[F, F, F, F]) -> None:
    mu1, var1, mu2, var2 = (round_to(impl.dtype, a) for a in args)
    d = mu1.shape[1]
    kl = _kl_call(impl, clause_id, mu1, var1, mu2, var2)
    atol = _atol(clause_id, impl.dtype, mu1=mu1, var1=var1, mu2=mu2, var2=var2, d=d)
    # The bound, in float64, rounds by at most (d + 3) u M (M as in the rule): inside the rule's factor 2.
    mean_part = 0.5 * np.sum((mu1 - mu2) ** 2 / var2, axis=-1)
    bad = ~(kl >= mean_part - atol)
    assert_that(not bool(np.any(bad)), clause_id,
                f"KL below its lower bound (1/2) sum (mu1 - mu2)^2 / var2 (>= 0) beyond the rule: KL = {kl[bad]}, "
                f"bound = {mean_part[bad]}, allowed slack {atol[bad]}")
    assert_close(clause_id, _kl_call(impl, clause_id, mu1, var1, mu1, var1), np.zeros(mu1.shape[0]),
                 dtype=impl.dtype, what="KL(p || p) = 0", mu1=mu1, var1=var1, mu2=mu1, var2=var1, d=d)


@clause("gaussian.kl", "asymmetry")
@given(args=_kl_args(), data=st.data())
def test_kl_asymmetry(impl: Any, clause_id: str, args: tuple[F, F, F, F], data: st.DataObject) -> None:
    mu, _, _, var2 = args
    # r > 1: the wider Gaussian first; 1.5 keeps the rounded ratio var1 / var2 above 1 in every dtype
    # (rounding var1 moves it by at most 2^-8 relative, in bfloat16). The identity uses the rounded ratio.
    r = data.draw(hnp.arrays(np.float64, mu.shape, elements=finite(1.5, 20.0)), label="r")
    mu, var2 = round_to(impl.dtype, mu), round_to(impl.dtype, var2)
    var1 = round_to(impl.dtype, var2 * r)  # the wider Gaussian
    d = mu.shape[1]
    forward = _kl_call(impl, clause_id, mu, var1, mu, var2)
    backward = _kl_call(impl, clause_id, mu, var2, mu, var1)
    ratio = var1 / var2
    expected = 0.5 * np.sum(ratio - 1 / ratio - 2 * np.log(ratio), axis=-1)
    # The rule summed over both evaluations: pass both argument orders side by side.
    cat = np.concatenate
    assert_close(clause_id, forward - backward, expected, dtype=impl.dtype,
                 what="KL(wide || narrow) - KL(narrow || wide) = (1/2) sum(r - 1/r - 2 log r) > 0",
                 mu1=cat([mu, mu], -1), var1=cat([var1, var2], -1), mu2=cat([mu, mu], -1),
                 var2=cat([var2, var1], -1), d=d, inputs={"r_min": np.min(ratio, axis=-1)})


@clause("gaussian.kl", "additivity")
@given(args=_kl_args(min_d=2, max_d=5))
def test_kl_additivity(impl: Any, clause_id: str, args: tuple[F, F, F, F]) -> None:
    mu1, var1, mu2, var2 = (round_to(impl.dtype, a) for a in args)
    B, d = mu1.shape
    full = _kl_call(impl, clause_id, mu1, var1, mu2, var2)
    parts = np.stack([_kl_call(impl, clause_id, mu1[:, [j]], var1[:, [j]], mu2[:, [j]], var2[:, [j]])
                      for j in range(d)], axis=-1)
    assert_that(parts.shape == (B, d), clause_id, f"one-coordinate KL has shape {parts.shape[:1]}, expected ({B},)")
    summed = np.array([math.fsum(row) for row in parts])
    assert_close(clause_id, full, summed, dtype=impl.dtype, what="KL over d coordinates = sum of 1-coordinate KLs",
                 mu1=mu1, var1=var1, mu2=mu2, var2=var2, d=d, inputs={"row": np.arange(B)})


@clause("gaussian.kl", "matches_reference")
@given(args=_kl_args())
def test_kl_matches_reference(impl: Any, clause_id: str, args: tuple[F, F, F, F]) -> None:
    mu1, var1, mu2, var2 = (round_to(impl.dtype, a) for a in args)
    assert_close(clause_id, _kl_call(impl, clause_id, mu1, var1, mu2, var2), ref.kl(mu1, var1, mu2, var2),
                 dtype=impl.dtype, mu1=mu1, var1=var1, mu2=mu2, var2=var2, d=mu1.shape[1])


def _kl_bad() -> list[tuple[F, F, F, F]]:
    m, v = np.zeros((2, 3)), np.ones((2, 3))

    def put(a: F, i: tuple[int, int], val: float) -> F:
        b = a.copy()
        b[i] = val
        return b

    return [
        (m, put(v, (0, 0), 0.0), m, v),
        (m, v, m, put(v, (1, 2), -2.0)),
        (put(m, (0, 1), np.nan), v, m, v),
        (m, v, put(m, (1, 1), np.inf), v),
        (m, put(v, (1, 0), np.inf), m, v),
        (m, v, m[:, :2], v[:, :2]),  # mismatched d
        (m, v, m[:1], v[:1]),  # one q broadcast over the batch
        (m[0], v[0], m[0], v[0]),  # not a batch
    ]


@clause("gaussian.kl", "rejects_out_of_domain")
@given(i=st.integers(0, len(_kl_bad()) - 1))
def test_kl_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_kl_bad()[i])
