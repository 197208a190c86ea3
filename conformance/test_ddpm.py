"""Conformance: spec family ``ddpm`` (Ho, Jain and Abbeel, NeurIPS 2020).

alpha_bar is recomputed here in float64 from the (rounded) betas as prod(1 - beta_i), and a test
of one clause calls no other clause of the implementation: where a property links two clauses
(marginal and forward kernels, x0_from_eps and noise, vlb and simple_loss) the other side is
written here from the paper, so a bug there cannot fail this clause.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import integrate

from diffrl_ref import spec
from diffrl_ref.reference import ddpm as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, observable, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.gaussian_oracle import GaussianData, propagate_affine
from diffrl_ref.suite.stats import assert_gaussian_moments
from diffrl_ref.suite.strategies import betas, finite

F = np.ndarray
VARIANCES = ("beta", "beta_tilde")


# ---- helpers --------------------------------------------------------------------------


def _ab(b: F) -> F:
    """alpha_bar_0..alpha_bar_K in float64, alpha_bar_0 = 1."""
    return np.concatenate([[1.0], np.cumprod(1.0 - b)])


def _rows(values: F, index: Any, B: int) -> F:
    """values[index] as a (B, 1) column; index is a step-like int or one per row."""
    return np.broadcast_to(np.asarray(values)[np.asarray(index)], (B,))[:, None].astype(np.float64)


def _coefs(b: F, k: Any, B: int) -> dict[str, F]:
    """Per-row columns beta_k, alpha_k, alpha_bar_k, alpha_bar_{k-1} and gap = 1 - alpha_bar_{max(k-1,1)}."""
    ab = _ab(b)
    kk = np.asarray(k)
    beta = _rows(b, kk - 1, B)
    return {"beta": beta, "alpha": 1.0 - beta, "ab": _rows(ab, kk, B), "ab_prev": _rows(ab, kk - 1, B),
            "gap": _rows(1.0 - ab, np.maximum(kk - 1, 1), B)}


def _roots(ab: F) -> dict[str, Any]:
    """The variables sqrt_ab = sqrt(alpha_bar_k) and sqrt_1m_ab = sqrt(1 - alpha_bar_k) of the rules."""
    return {"sqrt_ab": np.sqrt(ab), "sqrt_1m_ab": np.sqrt(1.0 - ab)}


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


def _snap(v: float) -> float:
    """|v| < 1e-12 becomes 0: keeps every product of drawn values above the float32/float64
    underflow threshold, where the relative rounding model behind the tolerance rules holds."""
    return 0.0 if abs(v) < 1e-12 else v


def _batch(B: int, d: int, scale: float) -> st.SearchStrategy[F]:
    """Like strategies.batch, without subnormal or tiny values."""
    return hnp.arrays(np.float64, (B, d), elements=finite(-scale, scale).map(_snap))


@st.composite
def _setup(draw: st.DrawFn, scales: tuple[float, ...] = (10.0,), min_K: int = 1, k_lo: int = 1,
           max_K: int = 40, per_row: bool = True) -> tuple[Any, ...]:
    """(betas, k, *arrays): a schedule, a step (scalar or per row) in [k_lo, K], arrays (B, d)."""
    b = draw(betas(min_K=max(min_K, k_lo), max_K=max_K))
    K = b.size
    B = draw(st.integers(1, 6))
    d = draw(st.integers(1, 4))
    arrays = [draw(_batch(B, d, s)) for s in scales]
    if per_row and draw(st.booleans()):
        k: Any = np.asarray(draw(st.lists(st.integers(k_lo, K), min_size=B, max_size=B)), dtype=np.int64)
    else:
        k = draw(st.integers(k_lo, K))
    return (b, k, *arrays)


@st.composite
def _gaussian(draw: st.DrawFn, max_d: int = 2) -> GaussianData:
    d = draw(st.integers(1, max_d))
    m = draw(st.lists(finite(-3.0, 3.0).map(_snap), min_size=d, max_size=d))
    s2 = draw(st.lists(finite(0.01, 4.0), min_size=d, max_size=d))
    return GaussianData.of(m, s2)


_B3 = np.array([0.1, 0.2, 0.3])
_X = np.ones((2, 3))
_NAN = np.full((2, 3), np.nan)


def _mean_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For clauses returning (mean, var): lets a wrongly accepted input be printed as one array."""
    return lambda *args, **kwargs: fn(*args, **kwargs)[0]


def _bad_schedule_cases(make: Callable[[F, Any], tuple[tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
    """Bad schedules and steps, shared by every step-indexed clause (bad data is added per clause)."""
    return [
        make(_B3, 0),                                  # k = 0 (alpha_bar_0 has no step)
        make(_B3, 4),                                  # k = K + 1
        make(_B3, np.array([1, 2, 3])),                # k of the wrong shape for B = 2
        make(_B3, 1.5),                                # non-integer k
        make(np.array([0.1, 1.0, 0.2]), 1),            # beta = 1
        make(np.array([0.0, 0.1]), 1),                 # beta = 0
        make(np.array([0.1, -0.2]), 1),                # beta < 0
        make(np.array([0.1, np.nan]), 1),              # NaN in betas
    ]


# ---- ddpm.forward_kernel --------------------------------------------------------------


@clause("ddpm.forward_kernel", "variance_preserving")
@given(case=_setup())
def test_forward_kernel_variance_preserving(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x = case
    b, x = round_to(impl.dtype, b), round_to(impl.dtype, x)
    fk = need(impl, clause_id)
    B = x.shape[0]
    g = _f64(fk(np.ones((B, 1)), b, k)[0])
    mean, var = (_f64(a) for a in fk(x, b, k))
    assert_that(var.shape == (B, 1), clause_id, f"variance shape {var.shape}, expected ({B}, 1)")
    assert_close(clause_id, g**2 + var, np.ones((B, 1)), dtype=impl.dtype, what="g^2 + var = 1", scale=1.0,
                 inputs={"k": k, "beta_k": _rows(b, np.asarray(k) - 1, B)})
    assert_close(clause_id, mean, g * x, dtype=impl.dtype, what="mean = g x_prev (linear)", scale=0.0,
                 inputs={"k": k})


@clause("ddpm.forward_kernel", "indexing")
@given(case=_setup(per_row=False))
def test_forward_kernel_indexing(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, _, x = case
    b, x = round_to(impl.dtype, b), round_to(impl.dtype, x)
    assume(np.unique(b).size == b.size)
    fk = need(impl, clause_id)
    B = x.shape[0]
    for k in range(1, b.size + 1):
        mean, var = (_f64(a) for a in fk(x, b, k))
        assert_close(clause_id, var, np.full((B, 1), b[k - 1]), dtype=impl.dtype, what=f"var at k={k} is beta_k",
                     scale=1.0, inputs={"beta_k": b[k - 1]})
        assert_close(clause_id, mean, np.sqrt(1.0 - b[k - 1]) * x, dtype=impl.dtype,
                     what=f"mean at k={k} is sqrt(1 - beta_k) x_prev", scale=0.0, inputs={"beta_k": b[k - 1]})


@clause("ddpm.forward_kernel", "matches_reference")
@given(case=_setup())
def test_forward_kernel_matches_reference(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x = case
    b, x = round_to(impl.dtype, b), round_to(impl.dtype, x)
    got, want = need(impl, clause_id)(x, b, k), ref.forward_kernel(x, b, k)
    assert_close(clause_id, got[0], want[0], dtype=impl.dtype, what="mean", scale=0.0, inputs={"k": k})
    assert_close(clause_id, got[1], want[1], dtype=impl.dtype, what="var", scale=1.0, inputs={"k": k})


_BAD_X = _bad_schedule_cases(lambda b, k: ((_X, b, k), {})) + [
    ((_NAN, _B3, 1), {}),
    ((np.ones(3), _B3, 1), {}),                        # x of shape (d,), not (B, d)
]


@clause("ddpm.forward_kernel", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_X))))
def test_forward_kernel_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_X[i]
    assert_raises_domain(_mean_only(need(impl, clause_id)), clause_id, *args, **kwargs)


# ---- ddpm.marginal --------------------------------------------------------------------


@clause("ddpm.marginal", "composition")
@given(case=_setup(per_row=False))
def test_marginal_composition(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, _, x0 = case
    b, x0 = round_to(impl.dtype, b), round_to(impl.dtype, x0)
    marg = need(impl, clause_id)
    B = x0.shape[0]
    m, v = x0, np.zeros((B, 1))
    for k in range(1, b.size + 1):
        # The kernel of Ho et al. Eq. (2), written here (not the implementation's forward_kernel, so a
        # bug there cannot fail this clause): N(sqrt(alpha_k) x_{k-1}, beta_k I) maps N(m, v) to
        # N(sqrt(alpha_k) m, alpha_k v + beta_k).
        alpha = 1.0 - b[k - 1]
        m, v = np.sqrt(alpha) * m, alpha * v + b[k - 1]
        mean, var = (_f64(a) for a in marg(x0, b, k))
        assert_close(clause_id, mean, m, dtype=impl.dtype, what=f"mean after {k} kernels", K=b.size, scale=0.0,
                     inputs={"k": k})
        assert_close(clause_id, var, v, dtype=impl.dtype, what=f"variance after {k} kernels", K=b.size,
                     scale=1.0, inputs={"k": k})


# sqrt(alpha_k) with a few bits: beta_k = 1 - r^2 is then exact in bfloat16, float32 and float64.
_DYADIC_ROOTS = tuple(Fraction(n, 2**j) for n, j in ((1, 1), (3, 2), (5, 3), (7, 3), (15, 4), (31, 5), (63, 6),
                                                    (127, 7)))


assert all(round_to("bfloat16", float(1 - r * r)) == float(1 - r * r) for r in _DYADIC_ROOTS)


@clause("ddpm.marginal", "exact_dyadic_schedule")
@given(roots=st.lists(st.sampled_from(_DYADIC_ROOTS), min_size=1, max_size=8),
       x0=st.integers(1, 4).flatmap(lambda d: _batch(3, d, 10.0)))
def test_marginal_exact_dyadic_schedule(impl: Any, clause_id: str, roots: list[Fraction], x0: F) -> None:
    x0 = round_to(impl.dtype, x0)
    b = np.array([float(1 - r * r) for r in roots])
    marg = need(impl, clause_id)
    B = x0.shape[0]
    sqrt_ab = Fraction(1)
    for k in range(1, b.size + 1):
        sqrt_ab *= roots[k - 1]  # sqrt(alpha_bar_k) = r_1 ... r_k exactly (rational arithmetic)
        mean_exact = np.array([[float(sqrt_ab * Fraction(v)) for v in row] for row in x0])
        var_exact = np.full((B, 1), float(1 - sqrt_ab * sqrt_ab))
        mean, var = (_f64(a) for a in marg(x0, b, k))
        assert_close(clause_id, mean, mean_exact, dtype=impl.dtype, what=f"mean = (r_1...r_k) x0 at k={k}",
                     K=b.size, scale=0.0, inputs={"k": k, "sqrt(alpha_bar_k)": float(sqrt_ab)})
        assert_close(clause_id, var, var_exact, dtype=impl.dtype, what=f"var = 1 - (r_1...r_k)^2 at k={k}",
                     K=b.size, scale=1.0, inputs={"k": k, "sqrt(alpha_bar_k)": float(sqrt_ab)})


@clause("ddpm.marginal", "variance_preserving")
@given(case=_setup())
def test_marginal_variance_preserving(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x0 = case
    b = round_to(impl.dtype, b)
    B = x0.shape[0]
    marg = need(impl, clause_id)
    g = _f64(marg(np.ones((B, 1)), b, k)[0])
    var = _f64(marg(round_to(impl.dtype, x0), b, k)[1])
    assert_that(var.shape == (B, 1), clause_id, f"variance shape {var.shape}, expected ({B}, 1)")
    assert_close(clause_id, g**2 + var, np.ones((B, 1)), dtype=impl.dtype, what="g^2 + var = 1", K=b.size,
                 scale=1.0, inputs={"k": k, "alpha_bar_k": _rows(_ab(b), k, B)})


@clause("ddpm.marginal", "matches_reference")
@given(case=_setup())
def test_marginal_matches_reference(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x0 = case
    b, x0 = round_to(impl.dtype, b), round_to(impl.dtype, x0)
    got, want = need(impl, clause_id)(x0, b, k), ref.marginal(x0, b, k)
    assert_close(clause_id, got[0], want[0], dtype=impl.dtype, what="mean", K=b.size, scale=0.0, inputs={"k": k})
    assert_close(clause_id, got[1], want[1], dtype=impl.dtype, what="var", K=b.size, scale=1.0, inputs={"k": k})


@clause("ddpm.marginal", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_X))))
def test_marginal_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_X[i]
    assert_raises_domain(_mean_only(need(impl, clause_id)), clause_id, *args, **kwargs)


# ---- ddpm.noise -----------------------------------------------------------------------

_N = 20000  # rows per statistical check


@clause("ddpm.noise", "distribution")
@given(case=_setup(per_row=False))
def test_noise_distribution(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x0 = case
    b, x0 = round_to(impl.dtype, b), round_to(impl.dtype, x0[:1])
    d = x0.shape[1]
    eps = np.random.default_rng(20200).standard_normal((_N, d))
    xk = _f64(need(impl, clause_id)(np.repeat(x0, _N, axis=0), eps, b, k))
    ab = _ab(b)[k]
    assert_gaussian_moments(clause_id, xk, np.sqrt(ab) * x0[0], 1.0 - ab, what=f"x_k ~ q(x_k | x0), k={k}")


@clause("ddpm.noise", "signal_and_noise_parts")
@given(case=_setup(scales=(10.0, 5.0)))
def test_noise_parts(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x0, e = case
    b, x0, e = round_to(impl.dtype, b), round_to(impl.dtype, x0), round_to(impl.dtype, e)
    B = x0.shape[0]
    ab = _coefs(b, k, B)["ab"]
    noise = need(impl, clause_id)
    zero = np.zeros_like(x0)
    assert_close(clause_id, _f64(noise(x0, zero, b, k)), np.sqrt(ab) * x0, dtype=impl.dtype,
                 what="noise(x0, 0) = sqrt(alpha_bar_k) x0", K=b.size, **_roots(ab), x0=x0, e=zero, inputs={"k": k})
    assert_close(clause_id, _f64(noise(zero, e, b, k)), np.sqrt(1.0 - ab) * e, dtype=impl.dtype,
                 what="noise(0, eps) = sqrt(1 - alpha_bar_k) eps", K=b.size, **_roots(ab), x0=zero, e=e,
                 inputs={"k": k})


@clause("ddpm.noise", "matches_reference")
@given(case=_setup(scales=(10.0, 5.0)))
def test_noise_matches_reference(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x0, e = case
    b, x0, e = round_to(impl.dtype, b), round_to(impl.dtype, x0), round_to(impl.dtype, e)
    ab = _coefs(b, k, x0.shape[0])["ab"]
    assert_close(clause_id, need(impl, clause_id)(x0, e, b, k), ref.noise(x0, e, b, k), dtype=impl.dtype,
                 K=b.size, **_roots(ab), x0=x0, e=e, inputs={"k": k})


_BAD_PAIR = _bad_schedule_cases(lambda b, k: ((_X, _X, b, k), {})) + [
    ((_NAN, _X, _B3, 1), {}),
    ((_X, _NAN, _B3, 1), {}),
    ((_X, np.ones((2, 2)), _B3, 1), {}),               # shapes differ
    ((np.ones(3), np.ones(3), _B3, 1), {}),            # 1-D arrays
]


@clause("ddpm.noise", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_PAIR))))
def test_noise_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_PAIR[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- ddpm.x0_from_eps -----------------------------------------------------------------


@clause("ddpm.x0_from_eps", "round_trip")
@given(case=_setup(scales=(10.0, 5.0)))
def test_x0_from_eps_round_trip(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x0, e = case
    b, x0, e = round_to(impl.dtype, b), round_to(impl.dtype, x0), round_to(impl.dtype, e)
    ab = _coefs(b, k, x0.shape[0])["ab"]
    # x_k = sqrt(alpha_bar_k) x0 + sqrt(1 - alpha_bar_k) eps formed here in float64 (not by the
    # implementation's ddpm.noise, so a bug there cannot fail this clause), then rounded to the dtype.
    xk = round_to(impl.dtype, np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * e)
    back = need(impl, clause_id)(xk, e, b, k)
    assert_close(clause_id, back, x0, dtype=impl.dtype, what="x0_from_eps(sqrt(ab) x0 + sqrt(1 - ab) eps, eps) = x0",
                 K=b.size, xk=xk, e=e, **_roots(ab), inputs={"k": k, "alpha_bar_k": ab})


@clause("ddpm.x0_from_eps", "tweedie")
@given(case=_setup(scales=(10.0,)), data=_gaussian(max_d=4))
def test_x0_from_eps_tweedie(impl: Any, clause_id: str, case: tuple[Any, ...], data: GaussianData) -> None:
    b, k, x = case
    d = data.mean.size
    x = round_to(impl.dtype, np.resize(x, (x.shape[0], d)))
    b = round_to(impl.dtype, b)
    ab = _coefs(b, k, x.shape[0])["ab"]
    e_star = round_to(impl.dtype, data.eps(x, ab[:, 0]))
    mu, v = data.marginal(ab[:, 0])
    posterior_mean = data.mean + np.sqrt(ab) * data.var * (x - mu) / v
    assert_close(clause_id, need(impl, clause_id)(x, e_star, b, k), posterior_mean, dtype=impl.dtype,
                 what="x0_from_eps(x, eps*(x)) = E[x0 | x_k = x]", K=b.size, xk=x, e=e_star, **_roots(ab),
                 inputs={"k": k, "alpha_bar_k": ab})


@clause("ddpm.x0_from_eps", "matches_reference")
@given(case=_setup(scales=(10.0, 5.0)))
def test_x0_from_eps_matches_reference(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, xk, e = case
    b, xk, e = round_to(impl.dtype, b), round_to(impl.dtype, xk), round_to(impl.dtype, e)
    ab = _coefs(b, k, xk.shape[0])["ab"]
    assert_close(clause_id, need(impl, clause_id)(xk, e, b, k), ref.x0_from_eps(xk, e, b, k), dtype=impl.dtype,
                 K=b.size, xk=xk, e=e, **_roots(ab), inputs={"k": k, "alpha_bar_k": ab})


@clause("ddpm.x0_from_eps", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_PAIR))))
def test_x0_from_eps_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_PAIR[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- ddpm.posterior -------------------------------------------------------------------


@clause("ddpm.posterior", "bayes_rule")
@given(case=_setup(scales=(10.0, 10.0), k_lo=2))
def test_posterior_bayes_rule(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x0, xk = case
    b, x0, xk = round_to(impl.dtype, b), round_to(impl.dtype, x0), round_to(impl.dtype, xk)
    c = _coefs(b, k, x0.shape[0])
    # q(x_k | x_{k-1}) as a function of x_{k-1}: precision alpha_k / beta_k, mean x_k / sqrt(alpha_k);
    # q(x_{k-1} | x0): precision 1 / (1 - alpha_bar_{k-1}), mean sqrt(alpha_bar_{k-1}) x0.
    precision = c["alpha"] / c["beta"] + 1.0 / (1.0 - c["ab_prev"])
    var = 1.0 / precision
    mean = var * (np.sqrt(c["alpha"]) * xk / c["beta"] + np.sqrt(c["ab_prev"]) * x0 / (1.0 - c["ab_prev"]))
    got_mean, got_var = (_f64(a) for a in need(impl, clause_id)(x0, xk, b, k))
    assert_close(clause_id, got_mean, mean, dtype=impl.dtype, what="mean = precision-weighted product",
                 K=b.size, scale=np.abs(x0) + np.abs(xk), gap=c["gap"], inputs={"k": k})
    assert_close(clause_id, got_var, var, dtype=impl.dtype, what="variance = 1 / total precision", K=b.size,
                 scale=c["beta"], gap=c["gap"], inputs={"k": k})


@clause("ddpm.posterior", "point_mass_at_k1")
@given(case=_setup(scales=(10.0, 10.0), per_row=False))
def test_posterior_point_mass_at_k1(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, _, x0, xk = case
    b, x0, xk = round_to(impl.dtype, b), round_to(impl.dtype, x0), round_to(impl.dtype, xk)
    B = x0.shape[0]
    c = _coefs(b, 1, B)
    for k in (1, np.ones(B, dtype=np.int64)):
        mean, var = (_f64(a) for a in need(impl, clause_id)(x0, xk, b, k))
        assert_close(clause_id, var, np.zeros((B, 1)), dtype=impl.dtype, what="variance at k=1 is 0", K=b.size,
                     scale=c["beta"], gap=c["gap"], inputs={"beta_1": b[0]})
        assert_close(clause_id, mean, x0, dtype=impl.dtype, what="mean at k=1 is x0", K=b.size,
                     scale=np.abs(x0) + np.abs(xk), gap=c["gap"], inputs={"beta_1": b[0]})


@clause("ddpm.posterior", "total_law")
@given(case=_setup(scales=(10.0,)))
def test_posterior_total_law(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x0 = case
    b, x0 = round_to(impl.dtype, b), round_to(impl.dtype, x0)
    B = x0.shape[0]
    c = _coefs(b, k, B)
    post = need(impl, clause_id)
    mean_of_mean = _f64(post(x0, np.sqrt(c["ab"]) * x0, b, k)[0])
    assert_close(clause_id, mean_of_mean, np.sqrt(c["ab_prev"]) * x0, dtype=impl.dtype,
                 # the rule's scale |x0| + |x_k| with x_k = sqrt(alpha_bar_k) x0, at most 2 |x0|
                 what="E[mu_tilde] = sqrt(alpha_bar_{k-1}) x0", K=b.size, scale=2 * np.abs(x0), gap=c["gap"],
                 inputs={"k": k})
    coef_xk = _f64(post(np.zeros((B, 1)), np.ones((B, 1)), b, k)[0])
    var = _f64(post(x0, x0, b, k)[1])
    assert_close(clause_id, coef_xk**2 * (1.0 - c["ab"]) + var, 1.0 - c["ab_prev"], dtype=impl.dtype,
                 what="Var[mu_tilde] + beta_tilde = 1 - alpha_bar_{k-1}", K=b.size,
                 scale=c["beta"] + 1.0 - c["ab_prev"], gap=c["gap"], inputs={"k": k})


# A stored hard point (found by hypothesis against diffusers 0.42.1): a small beta_k after large
# ones. Re-deriving beta_k as 1 - alpha_bar_k / alpha_bar_{k-1} from rounded cumulative products
# (instead of reading betas[k]) loses about eps / beta_k of relative accuracy in beta_tilde.
_HARD_POSTERIOR = (np.array([0.5, 0.5, 0.5, 0.25, 0.25, 0.390625, 0.0546875, 0.001953125]), 8,
                   np.zeros((1, 1)), np.zeros((1, 1)))


@clause("ddpm.posterior", "matches_reference")
@given(case=_setup(scales=(10.0, 10.0)))
@example(case=_HARD_POSTERIOR)
def test_posterior_matches_reference(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, x0, xk = case
    b, x0, xk = round_to(impl.dtype, b), round_to(impl.dtype, x0), round_to(impl.dtype, xk)
    c = _coefs(b, k, x0.shape[0])
    got, want = need(impl, clause_id)(x0, xk, b, k), ref.posterior(x0, xk, b, k)
    assert_close(clause_id, got[0], want[0], dtype=impl.dtype, what="mean", K=b.size,
                 scale=np.abs(x0) + np.abs(xk), gap=c["gap"], inputs={"k": k})
    assert_close(clause_id, got[1], want[1], dtype=impl.dtype, what="var", K=b.size, scale=c["beta"],
                 gap=c["gap"], inputs={"k": k})


@clause("ddpm.posterior", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_PAIR))))
def test_posterior_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_PAIR[i]
    assert_raises_domain(_mean_only(need(impl, clause_id)), clause_id, *args, **kwargs)


# ---- ddpm.reverse_step ----------------------------------------------------------------


def _sigma2(variance: str, c: dict[str, F]) -> F:
    return c["beta"] if variance == "beta" else (1.0 - c["ab_prev"]) / (1.0 - c["ab"]) * c["beta"]


@clause("ddpm.reverse_step", "posterior_mean_identity")
@given(case=_setup(scales=(10.0, 5.0)), variance=st.sampled_from(VARIANCES))
def test_reverse_step_posterior_mean(impl: Any, clause_id: str, case: tuple[Any, ...], variance: str) -> None:
    b, k, x0, e = case
    b, x0, e = round_to(impl.dtype, b), round_to(impl.dtype, x0), round_to(impl.dtype, e)
    c = _coefs(b, k, x0.shape[0])
    xk = round_to(impl.dtype, np.sqrt(c["ab"]) * x0 + np.sqrt(1.0 - c["ab"]) * e)
    mu_tilde = (np.sqrt(c["ab_prev"]) * c["beta"] / (1.0 - c["ab"]) * x0
                + np.sqrt(c["alpha"]) * (1.0 - c["ab_prev"]) / (1.0 - c["ab"]) * xk)
    out = need(impl, clause_id)(xk, e, b, k, np.zeros_like(x0), variance)
    # x_k is rounded to the dtype, so eps is exact only up to eps |x_k| / sqrt(1 - alpha_bar_k),
    # which the step multiplies by beta_k / sqrt(1 - alpha_bar_k) <= 1 / gap: inside scale / gap.
    assert_close(clause_id, out, mu_tilde, dtype=impl.dtype, what="step mean = mu_tilde(x0, x_k)", K=b.size,
                 scale=(np.abs(x0) + np.abs(xk) + np.abs(e)) / np.sqrt(c["alpha"]), gap=c["gap"],
                 inputs={"k": k, "variance": variance})


@clause("ddpm.reverse_step", "z_unused_at_k1")
@given(case=_setup(scales=(10.0, 5.0, 5.0)), variance=st.sampled_from(VARIANCES))
def test_reverse_step_z_unused_at_k1(impl: Any, clause_id: str, case: tuple[Any, ...], variance: str) -> None:
    b, k, xk, e, z = case
    b, xk, e, z = (round_to(impl.dtype, a) for a in (b, xk, e, z))
    B = xk.shape[0]
    k = np.where(np.arange(B) % 2 == 0, 1, np.broadcast_to(k, (B,))).astype(np.int64)  # k = 1 on even rows
    step = need(impl, clause_id)
    for kk in (1, k):
        at1 = np.broadcast_to(np.asarray(kk) == 1, (B,))
        with_z = _f64(step(xk, e, b, kk, z, variance))
        without = _f64(step(xk, e, b, kk, np.zeros_like(z), variance))
        assert_that(bool(np.array_equal(with_z[at1], without[at1])), clause_id,
                    f"output at k = 1 depends on z (variance={variance!r}, k={kk}): max change "
                    f"{np.max(np.abs(with_z[at1] - without[at1])):.3e}")


def _chain_law(data: GaussianData, b: F, variance: str, start: tuple[F, F] | None = None) -> tuple[F, F]:
    """Exact law of the ancestral chain from x_K ~ start (default N(0, I)) driven by eps* (closed form, float64)."""
    ab = _ab(b)
    mean, var = start if start is not None else (np.zeros_like(data.mean), np.ones_like(data.var))
    for k in range(b.size, 0, -1):
        beta, alpha = b[k - 1], 1.0 - b[k - 1]
        _, V = data.marginal(ab[k])
        A = (1.0 - beta / V) / np.sqrt(alpha)
        c = beta * np.sqrt(ab[k]) * data.mean / (np.sqrt(alpha) * V)
        s2 = 0.0 if k == 1 else (beta if variance == "beta" else (1.0 - ab[k - 1]) / (1.0 - ab[k]) * beta)
        mean, var = propagate_affine(mean, var, A, c, s2)
    return mean, var


@clause("ddpm.reverse_step", "exact_law")
@given(b=betas(max_K=20), data=_gaussian(), variance=st.sampled_from(VARIANCES))
def test_reverse_step_exact_law(impl: Any, clause_id: str, b: F, data: GaussianData, variance: str) -> None:
    b = round_to(impl.dtype, b)
    ab = _ab(b)
    d = data.mean.size
    step = need(impl, clause_id)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((_N, d))
    for k in range(b.size, 0, -1):
        x = _f64(step(x, data.eps(x, ab[k]), b, k, rng.standard_normal((_N, d)), variance))
    mean, var = _chain_law(data, b, variance)
    assert_gaussian_moments(clause_id, x, mean, var, what=f"output of the eps* chain, K={b.size}, variance={variance}")


def _vp(K: int, beta_min: float, beta_max: float) -> F:
    k = np.arange(1, K + 1)
    return 1.0 - np.exp(-beta_min / K - 0.5 * (beta_max - beta_min) * (2 * k - 1) / K**2)


def _first_order_constant(s2: F, beta_min: float, beta_max: float) -> F:
    """C = (1 - s2) s2^2 int_0^1 alpha_bar^2 beta^2 / V^3 dt - beta(0): the limit of K e_K."""

    def beta(t: float) -> float:
        return beta_min + t * (beta_max - beta_min)

    def a_bar(t: float) -> float:
        return float(np.exp(-beta_min * t - 0.5 * (beta_max - beta_min) * t**2))

    out = []
    for s in s2:
        def f(t: float, s: float = float(s)) -> float:
            return a_bar(t) ** 2 * beta(t) ** 2 / (1.0 + a_bar(t) * (s - 1.0)) ** 3
        # Quadrature error <= 1e-12 |C| + 1e-13: negligible in the check, whose allowance is >= 0.005 (spec).
        out.append((1.0 - s) * s**2 * integrate.quad(f, 0.0, 1.0, epsabs=1e-13, epsrel=1e-12)[0] - beta_min)
    return np.asarray(out)


@clause("ddpm.reverse_step", "converges_to_data")
@given(K=st.sampled_from([32, 64]), schedule=st.sampled_from([(0.1, 20.0), (0.1, 10.0), (0.5, 5.0)]))
def test_reverse_step_converges_to_data(impl: Any, clause_id: str, K: int, schedule: tuple[float, float]) -> None:
    data = GaussianData.of([1.0, -2.0, 0.5], [0.05, 0.5, 2.0])
    d = 3
    step = need(impl, clause_id)
    C = _first_order_constant(data.var, *schedule)
    for n_steps in (K, 2 * K):
        b = round_to(impl.dtype, _vp(n_steps, *schedule))
        ab = _ab(b)
        mean, var = data.marginal(ab[n_steps])  # start from the exact q(x_K): only discretisation remains
        for k in range(n_steps, 0, -1):
            def f(x: F, z: F, k: int = k, b: F = b, ab: F = ab) -> F:
                return _f64(step(x, data.eps(x, ab[k]), b, k, z, "beta"))
            zero, one = np.zeros((1, d)), np.ones((1, d))
            c = f(zero, zero)[0]  # the step is x -> A x + c + sigma z, coordinatewise
            A, noise_var = f(one, zero)[0] - c, (f(zero, one)[0] - c) ** 2
            mean, var = propagate_affine(mean, var, A, c, noise_var)
        # scale K (1 + |m|)(1 + s2): K steps of terms at most a few |m|, carried by gains <= max(1, sqrt(s2)) (spec)
        assert_close(clause_id, mean, data.mean, dtype=impl.dtype, what=f"output mean exact, K={n_steps}",
                     K=n_steps, scale=n_steps * (1.0 + np.abs(data.mean)) * (1.0 + data.var), gap=1.0)
        # The exact chain on the same schedule, float64 (Ho et al. Eq. 11 with eps*, in closed form): its
        # K e*_K tends to C (the first-order constant); the implementation's chain must be that chain.
        _, var_exact = _chain_law(data, b, "beta", start=data.marginal(ab[n_steps]))
        scale = 2 * n_steps * (1.0 + data.var)
        rounding = spec.clause(clause_id).tolerance.atol(impl.dtype, expected=C, K=n_steps, scale=scale, gap=1.0)
        # Where the rounding allowance alone covers C, a chain whose K e_K stays at 0 (or at 2C) would pass.
        # The six cases are chosen so this cannot happen in float32 or float64.
        observable(not np.any(rounding >= np.abs(C)),
                   f"not observable at {impl.dtype}: {clause_id}: rounding allowance {np.max(rounding):.3g} "
                   f"reaches |C| = {np.min(np.abs(C)):.3g} (K = {n_steps})")
        assert_close(clause_id, n_steps * (var - data.var), n_steps * (var_exact - data.var), dtype=impl.dtype,
                     what=f"K e_K of the exact chain, which tends to C (K={n_steps}, VP beta in [{schedule[0]}, "
                          f"{schedule[1]}])",
                     K=n_steps, scale=scale, gap=1.0,
                     inputs={"s2": data.var, "C": C})


@clause("ddpm.reverse_step", "matches_reference")
@given(case=_setup(scales=(10.0, 5.0, 5.0)), variance=st.sampled_from(VARIANCES))
def test_reverse_step_matches_reference(impl: Any, clause_id: str, case: tuple[Any, ...], variance: str) -> None:
    b, k, xk, e, z = case
    b, xk, e, z = (round_to(impl.dtype, a) for a in (b, xk, e, z))
    c = _coefs(b, k, xk.shape[0])
    assert_close(clause_id, need(impl, clause_id)(xk, e, b, k, z, variance), ref.reverse_step(xk, e, b, k, z, variance),
                 dtype=impl.dtype, K=b.size, scale=(np.abs(xk) + np.abs(e) + np.abs(z)) / np.sqrt(c["alpha"]),
                 gap=c["gap"], inputs={"k": k, "variance": variance})


_BAD_STEP = _bad_schedule_cases(lambda b, k: ((_X, _X, b, k, _X), {})) + [
    ((_NAN, _X, _B3, 2, _X), {}),
    ((_X, _NAN, _B3, 2, _X), {}),
    ((_X, _X, _B3, 2, _NAN), {}),
    ((_X, _X, _B3, 2, np.ones((2, 2))), {}),           # z of the wrong shape
    ((_X, np.ones((1, 3)), _B3, 2, _X), {}),           # eps_hat of the wrong shape
    ((_X, _X, _B3, 2, _X), {"variance": "fixedlarge"}),  # unknown variance name
]


@clause("ddpm.reverse_step", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_STEP))))
def test_reverse_step_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_STEP[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- ddpm.simple_loss -----------------------------------------------------------------


def _u(x0: F, xk: F, e_hat: F, alpha: F, sigma2: F) -> F:
    """Size of the means mu_tilde, mu_theta in units of the reverse standard deviation (per row)."""
    size = np.linalg.norm((np.abs(x0) + np.abs(xk) + np.abs(e_hat)) / np.sqrt(alpha), axis=-1)
    return _f64(size / np.sqrt(2.0 * sigma2[..., 0]))


@clause("ddpm.simple_loss", "simple_is_squared_error")
@given(case=_setup(scales=(5.0, 5.0)))
def test_simple_loss_squared_error(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    b, k, e, e_hat = case
    b, e, e_hat = round_to(impl.dtype, b), round_to(impl.dtype, e), round_to(impl.dtype, e_hat)
    got = need(impl, clause_id)(e, e_hat, b, k, "simple")
    assert_close(clause_id, got, np.sum((e - e_hat) ** 2, axis=1), dtype=impl.dtype,
                 what="simple loss = sum_j (eps_j - eps_hat_j)^2", K=b.size, d=e.shape[1], u=0.0, gap=1.0,
                 inputs={"k": k})


@st.composite
def _sigma2_choice(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["none", "beta", "beta_tilde", "value"]))
    if kind == "none":
        return None
    if kind == "value":
        return draw(finite(1e-3, 1.0))
    return kind


def _resolve_sigma2(sigma2: Any, c: dict[str, F]) -> F:
    if sigma2 is None or sigma2 == "beta":
        return c["beta"]
    if sigma2 == "beta_tilde":
        return _sigma2("beta_tilde", c)
    return np.full_like(c["beta"], float(sigma2))


@clause("ddpm.simple_loss", "vlb_weight_is_kl_mean_term")
@given(case=_setup(scales=(10.0, 5.0, 5.0), k_lo=2), sigma2=_sigma2_choice(), at_k1=st.booleans())
def test_simple_loss_kl_mean_term(impl: Any, clause_id: str, case: tuple[Any, ...], sigma2: Any,
                                  at_k1: bool) -> None:
    b, k, x0, e, e_hat = case
    b, x0, e, e_hat = (round_to(impl.dtype, a) for a in (b, x0, e, e_hat))
    if at_k1 and sigma2 != "beta_tilde":  # k = 1 too: there beta_tilde_1 = 0 and the KL mean term is
        k = 1                             # the Gaussian decoder's quadratic term (same weight)
    B = x0.shape[0]
    c = _coefs(b, k, B)
    s2 = _resolve_sigma2(sigma2, c)
    xk = round_to(impl.dtype, np.sqrt(c["ab"]) * x0 + np.sqrt(1.0 - c["ab"]) * e)
    mu_tilde = (np.sqrt(c["ab_prev"]) * c["beta"] / (1.0 - c["ab"]) * x0
                + np.sqrt(c["alpha"]) * (1.0 - c["ab_prev"]) / (1.0 - c["ab"]) * xk)
    mu_theta = (xk - c["beta"] / np.sqrt(1.0 - c["ab"]) * e_hat) / np.sqrt(c["alpha"])
    kl_mean = np.sum((mu_tilde - mu_theta) ** 2, axis=1) / (2.0 * s2[:, 0])
    got = need(impl, clause_id)(e, e_hat, b, k, "vlb", sigma2)
    assert_close(clause_id, got, kl_mean, dtype=impl.dtype, what="lambda_k ||eps - eps_hat||^2 = KL mean term",
                 K=b.size, d=x0.shape[1], u=_u(x0, xk, e_hat, c["alpha"], s2), gap=c["gap"][:, 0],
                 inputs={"k": k, "sigma2": s2[:, 0]})


@clause("ddpm.simple_loss", "matches_reference")
@given(case=_setup(scales=(5.0, 5.0), k_lo=2), weighting=st.sampled_from(["simple", "vlb"]),
       sigma2=_sigma2_choice())
def test_simple_loss_matches_reference(impl: Any, clause_id: str, case: tuple[Any, ...], weighting: str,
                                       sigma2: Any) -> None:
    b, k, e, e_hat = case
    b, e, e_hat = round_to(impl.dtype, b), round_to(impl.dtype, e), round_to(impl.dtype, e_hat)
    c = _coefs(b, k, e.shape[0])
    assert_close(clause_id, need(impl, clause_id)(e, e_hat, b, k, weighting, sigma2),
                 ref.simple_loss(e, e_hat, b, k, weighting, sigma2), dtype=impl.dtype, K=b.size, d=e.shape[1],
                 u=0.0, gap=c["gap"][:, 0] if weighting == "vlb" else 1.0,
                 inputs={"k": k, "weighting": weighting, "sigma2": str(sigma2)})


_BAD_LOSS = _bad_schedule_cases(lambda b, k: ((_X, _X, b, k, "vlb"), {})) + [
    ((_NAN, _X, _B3, 2), {}),
    ((_X, _NAN, _B3, 2), {}),
    ((_X, np.ones((2, 2)), _B3, 2), {}),
    ((_X, _X, _B3, 2, "l1"), {}),                        # unknown weighting
    ((_X, _X, _B3, 2, "vlb", 0.0), {}),                  # sigma_k^2 = 0
    ((_X, _X, _B3, 2, "vlb", -0.1), {}),                 # sigma_k^2 < 0
    ((_X, _X, _B3, 2, "vlb", np.array([0.1, 0.1, 0.1])), {}),  # sigma2 of the wrong shape
    ((_X, _X, _B3, 1, "vlb", "beta_tilde"), {}),         # beta_tilde_1 = 0: no weight at k = 1
    ((_X, _X, _B3, 2, "vlb", "fixedlarge"), {}),         # unknown variance name
]


@clause("ddpm.simple_loss", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_LOSS))))
def test_simple_loss_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_LOSS[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- ddpm.vlb -------------------------------------------------------------------------


def _toy_eps_fn(K: int) -> Callable[[F, Any], F]:
    """A fixed nonlinear 'network' (the identity of terms_are_weighted_losses holds for any)."""
    def eps_fn(x: F, k: Any) -> F:
        return _f64(np.tanh(np.asarray(x)) * (np.asarray(k)[:, None] / K) + 0.1)
    return eps_fn


def _eps_star_fn(data: GaussianData, ab: F) -> Callable[[F, Any], F]:
    def eps_fn(x: F, k: Any) -> F:
        return data.eps(np.asarray(x, dtype=np.float64), ab[np.asarray(k)])
    return eps_fn


@st.composite
def _vlb_case(draw: st.DrawFn, max_K: int = 20) -> tuple[F, F, F]:
    b = draw(betas(max_K=max_K))
    B = draw(st.integers(1, 4))
    d = draw(st.integers(1, 3))
    x0 = draw(_batch(B, d, 5.0))
    eps = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal((b.size, B, d))
    return b, x0, eps


def _vlb_tol_vars(b: F, x0: F, eps: F, eps_fn: Callable[[F, Any], F], variance: str) -> tuple[F, F]:
    """(u, gap) per term, shape (K+1, B): cancellation scale and conditioning of each L_j."""
    K, B = b.size, x0.shape[0]
    u = np.zeros((K + 1, B))
    gap = np.ones((K + 1, B))
    for k in range(1, K + 1):
        c = _coefs(b, k, B)
        xk = np.sqrt(c["ab"]) * x0 + np.sqrt(1.0 - c["ab"]) * eps[k - 1]
        s2 = c["beta"] if k == 1 else _sigma2(variance, c)
        u[k - 1] = _u(x0, xk, _f64(eps_fn(xk, np.full(B, k))), c["alpha"], s2)
        gap[k - 1] = c["gap"][:, 0]
    gap[K] = 1.0 - _ab(b)[K]
    return u, gap


@clause("ddpm.vlb", "terms_are_weighted_losses")
@given(case=_vlb_case(), variance=st.sampled_from(VARIANCES))
def test_vlb_terms_are_weighted_losses(impl: Any, clause_id: str, case: tuple[F, F, F], variance: str) -> None:
    b, x0, eps = (round_to(impl.dtype, a) for a in case)
    K, (B, d) = b.size, x0.shape
    eps_fn = _toy_eps_fn(K)
    terms = _f64(need(impl, clause_id)(x0, eps_fn, b, eps, variance))
    assert_that(terms.shape == (K + 1, B), clause_id, f"terms shape {terms.shape}, expected (K+1, B) = {(K + 1, B)}")
    expected = np.zeros((K, B))
    for k in range(1, K + 1):
        c = _coefs(b, k, B)
        xk = np.sqrt(c["ab"]) * x0 + np.sqrt(1.0 - c["ab"]) * eps[k - 1]
        e_hat = eps_fn(xk, np.full(B, k))
        s2 = c["beta"] if k == 1 else _sigma2(variance, c)
        # The vlb weight of Eq. (12), lambda_k = beta_k^2 / (2 sigma_k^2 alpha_k (1 - alpha_bar_k)), written
        # here (not the implementation's ddpm.simple_loss, so a bug there cannot fail this clause).
        lam = (c["beta"] ** 2 / (2.0 * s2 * c["alpha"] * (1.0 - c["ab"])))[:, 0]
        weighted = lam * np.sum((eps[k - 1] - e_hat) ** 2, axis=1)
        if k == 1:
            const = 0.5 * d * np.log(2.0 * np.pi * c["beta"][:, 0])
        else:
            r = (_sigma2("beta_tilde", c) / s2)[:, 0]
            const = 0.5 * d * (r - 1.0 - np.log(r))
        expected[k - 1] = weighted + const
    u, gap = _vlb_tol_vars(b, x0, eps, eps_fn, variance)
    assert_close(clause_id, terms[:K], expected, dtype=impl.dtype,
                 what="L_{k-1} = lambda_k ||eps_k - eps_hat_k||^2 + variance constant", K=K, d=d,
                 scale=np.abs(expected) + d, u=u[:K], gap=gap[:K],
                 inputs={"j (term L_j)": np.arange(K)[:, None], "variance": variance})


@clause("ddpm.vlb", "prior_term")
@given(case=_vlb_case(), variance=st.sampled_from(VARIANCES))
def test_vlb_prior_term(impl: Any, clause_id: str, case: tuple[F, F, F], variance: str) -> None:
    b, x0, eps = (round_to(impl.dtype, a) for a in case)
    K, d = b.size, x0.shape[1]
    terms = _f64(need(impl, clause_id)(x0, lambda x, k: np.zeros_like(x), b, eps, variance))
    abK = _ab(b)[K]
    kl = 0.5 * (abK * np.sum(x0**2, axis=1) - d * abK - d * np.log(1.0 - abK))
    assert_close(clause_id, terms[K], kl, dtype=impl.dtype, what="L_K = KL(q(x_K | x0) || N(0, I))", K=K, d=d,
                 scale=np.abs(kl) + d, u=0.0, gap=1.0 - abK, inputs={"alpha_bar_K": abK})


def _expected_vlb(fn: Callable[..., Any], x0: F, eps_fn: Callable[[F, Any], F], b: F,
                  variance: str) -> tuple[F, F, F, F]:
    """E_q[L_j] per term and row, exactly, for an L quadratic in each eps_k: cubature {+-sqrt(d) e_i}.

    Also returns, for the tolerance rule, the largest |L_j| and the largest cancellation scale
    u_j over the cubature points, and the conditioning gap_j.
    """
    K, (B, d) = b.size, x0.shape
    total, magnitude, u = np.zeros((K + 1, B)), np.zeros((K + 1, B)), np.zeros((K + 1, B))
    gap = np.ones((K + 1, B))
    for i in range(d):
        for sign in (1.0, -1.0):
            point = np.zeros(d)
            point[i] = sign * np.sqrt(d)
            eps = np.broadcast_to(point, (K, B, d)).copy()
            t = _f64(fn(x0, eps_fn, b, eps, variance))
            total += t / (2 * d)
            magnitude = np.maximum(magnitude, np.abs(t))
            u_point, gap = _vlb_tol_vars(b, x0, eps, eps_fn, variance)
            u = np.maximum(u, u_point)
    return total, magnitude, u, gap


def _model_nll(x0: F, data: GaussianData, b: F, variance: str) -> F:
    """-log p_theta(x0): the exact Gaussian marginal of the eps*-driven chain with decoder N(., beta_1)."""
    ab = _ab(b)
    mean, var = np.zeros_like(data.mean), np.ones_like(data.var)
    for k in range(b.size, 0, -1):
        beta, alpha = b[k - 1], 1.0 - b[k - 1]
        _, V = data.marginal(ab[k])
        A = (1.0 - beta / V) / np.sqrt(alpha)
        c = beta * np.sqrt(ab[k]) * data.mean / (np.sqrt(alpha) * V)
        s2 = beta if (k == 1 or variance == "beta") else (1.0 - ab[k - 1]) / (1.0 - ab[k]) * beta
        mean, var = propagate_affine(mean, var, A, c, s2)
    return _f64(np.sum(0.5 * np.log(2.0 * np.pi * var) + (x0 - mean) ** 2 / (2.0 * var), axis=1))


@clause("ddpm.vlb", "bound")
@given(b=betas(max_K=12), data=_gaussian(), x_scale=finite(0.0, 3.0), variance=st.sampled_from(VARIANCES),
       seed=st.integers(0, 2**16))
def test_vlb_bound(impl: Any, clause_id: str, b: F, data: GaussianData, x_scale: float, variance: str,
                   seed: int) -> None:
    b = round_to(impl.dtype, b)
    d = data.mean.size
    # x0 within x_scale standard deviations of the data mean (the bound holds for every x0).
    x0 = round_to(impl.dtype, data.mean + x_scale * np.sqrt(data.var)
                  * np.random.default_rng(seed).uniform(-1.0, 1.0, (4, d)))
    eps_fn = _eps_star_fn(data, _ab(b))
    expected_L, magnitude, u, gap = _expected_vlb(need(impl, clause_id), x0, eps_fn, b, variance)
    nll = _model_nll(x0, data, b, variance)
    K = b.size
    # The rule for the sum of the K + 1 terms and the test's own -log p_theta (a few float64 operations
    # per step on quantities of size |nll|): scale and u add up over the terms.
    slack = spec.clause(clause_id).tolerance.atol(
        impl.dtype, K=K, d=d, scale=np.sum(magnitude + d, axis=0) + np.abs(nll) + d,
        u=np.sum(u, axis=0), gap=np.min(gap, axis=0))
    excess = np.sum(expected_L, axis=0) - nll
    i = int(np.argmin(excess + slack))
    assert_that(bool(np.all(excess >= -slack)), clause_id,
                f"E_q[L] = {np.sum(expected_L, axis=0)[i]:.12g} < -log p_theta(x0) = {nll[i]:.12g} by "
                f"{-excess[i]:.3e} (allowed rounding {slack[i]:.3e}); x0 = {x0[i]}, data N({data.mean}, {data.var}), "
                f"K = {K}, variance = {variance!r}")


@clause("ddpm.vlb", "tight_when_model_is_exact")
@given(b=betas(max_K=12), x0=st.integers(1, 3).flatmap(lambda d: _batch(4, d, 4.0)))
def test_vlb_tight(impl: Any, clause_id: str, b: F, x0: F) -> None:
    b, x0 = round_to(impl.dtype, b), round_to(impl.dtype, x0)
    K, d = b.size, x0.shape[1]
    data = GaussianData.of(np.zeros(d), np.ones(d))
    eps_fn = _eps_star_fn(data, _ab(b))
    expected_L, magnitude, u, gap = _expected_vlb(need(impl, clause_id), x0, eps_fn, b, "beta")
    nll = 0.5 * np.sum(x0**2, axis=1) + 0.5 * d * np.log(2.0 * np.pi)
    assert_close(clause_id, np.sum(expected_L, axis=0), nll, dtype=impl.dtype,
                 what="E_q[L] = -log N(x0; 0, I) when p_theta = q", K=K, d=d,
                 scale=np.sum(magnitude + d, axis=0) + nll + d, u=np.sum(u, axis=0), gap=np.min(gap, axis=0),
                 inputs={"K": K})


@clause("ddpm.vlb", "matches_reference")
@given(case=_vlb_case(), variance=st.sampled_from(VARIANCES))
def test_vlb_matches_reference(impl: Any, clause_id: str, case: tuple[F, F, F], variance: str) -> None:
    b, x0, eps = (round_to(impl.dtype, a) for a in case)
    K, d = b.size, x0.shape[1]
    eps_fn = _toy_eps_fn(K)
    want = ref.vlb(x0, eps_fn, b, eps, variance)
    u, gap = _vlb_tol_vars(b, x0, eps, eps_fn, variance)
    assert_close(clause_id, need(impl, clause_id)(x0, eps_fn, b, eps, variance), want, dtype=impl.dtype,
                 what="terms L_0..L_K", K=K, d=d, scale=np.abs(want) + d, u=u, gap=gap,
                 inputs={"j (term L_j)": np.arange(K + 1)[:, None], "variance": variance})


def _nan_fn(x: F, k: Any) -> F:
    return np.full_like(np.asarray(x, dtype=np.float64), np.nan)


def _narrow_fn(x: F, k: Any) -> F:
    return np.zeros((np.asarray(x).shape[0], 1))


def _zero_fn(x: F, k: Any) -> F:
    return np.zeros_like(np.asarray(x, dtype=np.float64))


_E3 = np.zeros((3, 2, 3))
_BAD_VLB = [
    ((_NAN, _zero_fn, _B3, _E3), {}),
    ((_X, _zero_fn, _B3, np.full((3, 2, 3), np.nan)), {}),
    ((_X, _zero_fn, _B3, np.zeros((2, 2, 3))), {}),      # eps with K - 1 slices
    ((_X, _zero_fn, _B3, np.zeros((2, 3))), {}),         # eps without the step axis
    ((_X, _nan_fn, _B3, _E3), {}),                       # network returns NaN
    ((_X, _narrow_fn, _B3, _E3), {}),                    # network returns the wrong shape
    ((_X, _zero_fn, np.array([0.1, 1.0, 0.2]), _E3), {}),
    ((_X, _zero_fn, np.array([0.0, 0.1, 0.2]), _E3), {}),
    ((_X, _zero_fn, _B3, _E3), {"variance": "learned"}),
    ((np.ones(3), _zero_fn, _B3, np.zeros((3, 1, 3))), {}),  # 1-D x0
]


@clause("ddpm.vlb", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_VLB))))
def test_vlb_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_VLB[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)
