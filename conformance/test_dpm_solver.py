"""Conformance: spec family ``dpm_solver`` (DPM-Solver-1, DPM-Solver-2, DPM-Solver++(2M))."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from diffrl_ref import spec
from diffrl_ref.reference import dpm_solver as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.gaussian_oracle import GaussianData
from diffrl_ref.suite.orders import check_order
from diffrl_ref.suite.strategies import batch, batch_any, finite

F = np.ndarray

#: Unit roundoff of the float64 computations in this file (the schemes written here).
EPS64 = spec.EPS["float64"]


# ---- noise levels (test-private, written from Lu et al.'s definitions) -------------------


def _lam(ab: Any) -> Any:
    """Half log-SNR lambda = log(alpha / sigma) = log(ab / (1 - ab)) / 2."""
    ab = np.asarray(ab, dtype=np.float64)
    return 0.5 * (np.log(ab) - np.log1p(-ab))


def _ab_of_lam(lam: Any) -> Any:
    """alpha_bar = sigmoid(2 lambda)."""
    return 1.0 / (1.0 + np.exp(-2.0 * np.asarray(lam, dtype=np.float64)))


@st.composite
def _levels(draw: st.DrawFn, lam_lo: float = -5.0, lam_hi: float = 5.0) -> tuple[float, float]:
    """A denoising step ab_s < ab_t, drawn in lambda so that every step length occurs."""
    lam_s = draw(finite(lam_lo, lam_hi - 0.01))
    lam_t = draw(finite(lam_s + 0.01, min(lam_s + 8.0, lam_hi)))
    return float(_ab_of_lam(lam_s)), float(_ab_of_lam(lam_t))


def _rounded_levels(dtype: str, levels: tuple[float, float]) -> tuple[float, float]:
    ab_s, ab_t = (float(round_to(dtype, v)) for v in levels)
    assume(0 < ab_s < ab_t < 1)
    return ab_s, ab_t


def _first_order_scale(x: F, e: Any, ab_s: float, ab_t: float) -> F:
    """(a_t / a_s)(|x| + sigma_s |eps|): both terms of the update, sigma_t e^h = a_t sigma_s / a_s."""
    return np.asarray(np.sqrt(ab_t / ab_s) * (np.abs(x) + np.sqrt(1 - ab_s) * np.abs(e)))


def _lam_sum(*abs_: float) -> float:
    return float(sum(abs(float(_lam(a))) for a in abs_))


def _ddim(x: F, e: F, ab_s: float, ab_t: float) -> F:
    """DDIM with sigma = 0 (Song, Meng and Ermon 2021, Eq. 12): the oracle of the first-order updates."""
    x0_hat = (x - np.sqrt(1 - ab_s) * e) / np.sqrt(ab_s)
    return np.asarray(np.sqrt(ab_t) * x0_hat + np.sqrt(1 - ab_t) * e)


@dataclass
class Recorder:
    """A network eps_fn(x, alpha_bar) that records its calls: levels, largest |x| and |eps|."""

    fn: Callable[[F, float], F]
    levels: list[float] = field(default_factory=list)
    x_max: float = 0.0
    e_max: float = 0.0

    def __call__(self, x: F, alpha_bar: float) -> F:
        out = np.asarray(self.fn(np.asarray(x, dtype=np.float64), float(alpha_bar)), dtype=np.float64)
        self.levels.append(float(alpha_bar))
        self.x_max = max(self.x_max, float(np.max(np.abs(x))))
        self.e_max = max(self.e_max, float(np.max(np.abs(out))))
        return out


def _lipschitz(g: GaussianData, ab: Any) -> float:
    """Largest Lipschitz constant in x of the exact eps*(x, ab) = sqrt(1 - ab)(x - mu) / v over the levels."""
    ab = np.atleast_1d(np.asarray(ab, dtype=np.float64))[:, None]
    return float(np.max(np.sqrt(1 - ab) / (ab * g.var + 1 - ab)))


def _point_mass(data: st.DataObject, d: int, dtype: str) -> GaussianData:
    """Data concentrated at one point m (variance 0): eps*(x, ab) = (x - alpha m) / sigma."""
    m = np.asarray(data.draw(st.lists(finite(-5.0, 5.0), min_size=d, max_size=d)))
    # Entries below 1e-3 in magnitude are set to 0: products with them would underflow into the
    # subnormal range of a reduced-precision dtype, where the relative rule cannot hold.
    m = round_to(dtype, np.where(np.abs(m) < 1e-3, 0.0, m))
    return GaussianData.of(m, np.zeros(d))


@st.composite
def _gaussian(draw: st.DrawFn, d: int = 3) -> GaussianData:
    """Gaussian data whose coordinate variances spread over a factor 16 around s0 in [0.2, 5]."""
    m = [draw(finite(-3.0, 3.0)) for _ in range(d)]
    s0 = draw(finite(0.2, 5.0))
    return GaussianData.of(m, s0 * np.geomspace(0.25, 4.0, d))


@st.composite
def _span(draw: st.DrawFn) -> tuple[float, float]:
    """Start and end of a sampling run: ab_T in [1e-3, 0.2] (noisy), 1 - ab_0 in [1e-3, 0.1] (clean)."""
    ab_T = float(np.exp(draw(finite(np.log(1e-3), np.log(0.2)))))
    ab_0 = 1.0 - float(np.exp(draw(finite(np.log(1e-3), np.log(0.1)))))
    return ab_T, ab_0


def _start_points(g: GaussianData, ab_T: float) -> F:
    """x_T at the marginal mean and +- 2 standard deviations (the flow map is affine, 3 points suffice)."""
    mu, v = g.marginal(ab_T)
    return np.asarray(mu + np.sqrt(v) * np.array([[-2.0], [0.0], [2.0]]))


def _lambda_grid(ab_T: float, ab_0: float, N: int, rho: float = 1.0) -> F:
    """N steps from ab_T to ab_0 whose lambda-lengths alternate 1, rho, 1, rho, ... (uniform for rho = 1)."""
    w = np.where(np.arange(N) % 2 == 0, 1.0, rho)
    c = np.concatenate([[0.0], np.cumsum(w)]) / w.sum()
    grid = _ab_of_lam(_lam(ab_T) + c * (_lam(ab_0) - _lam(ab_T)))
    grid[0], grid[-1] = ab_T, ab_0
    return np.asarray(grid)


def _term_error(dtype: str, lam: float, *hs: float) -> float:
    """Relative error of one term (coefficient x tensor) of a step, the rounding model of the order band.

    2 eps of the implementation's dtype (the coefficient's rounding, the product, at most two
    additions, eps/2 each; the network output's rounding to the dtype is one of them), plus the
    coefficient's own error when computed from logarithms in float64: the absolute error
    (8 + lam) eps64 of a step length h, made relative by e^h / (e^h - 1) <= 1 + 1/h, per h.
    The float64 scheme of this file obeys the same model with eps = eps64, hence the 2 eps64.
    """
    return 2 * spec.EPS[dtype] + 2 * EPS64 + (8 + lam) * EPS64 * sum(1 + 1 / h for h in hs)


def _eps_slope(g: GaussianData, ab: float) -> F:
    """d eps*/dx = sqrt(1 - ab) / (ab s^2 + 1 - ab) per coordinate (eps* is affine in x)."""
    return np.asarray(np.sqrt(1 - ab) / (ab * g.var + 1 - ab))


# ---- dpm_solver.first_order -------------------------------------------------------------


@st.composite
def _x_and_eps(draw: st.DrawFn) -> tuple[F, F]:
    x = draw(batch_any())
    return x, draw(batch(x.shape[0], x.shape[1], scale=5.0))


@clause("dpm_solver.first_order", "equals_ddim")
@given(xe=_x_and_eps(), levels=_levels())
def test_first_order_equals_ddim(impl: Any, clause_id: str, xe: tuple[F, F], levels: tuple[float, float]) -> None:
    x, e = (round_to(impl.dtype, a) for a in xe)
    ab_s, ab_t = _rounded_levels(impl.dtype, levels)
    got = need(impl, clause_id)(x, e, ab_s, ab_t)
    assert_close(clause_id, got, _ddim(x, e, ab_s, ab_t), dtype=impl.dtype, what="DPM-Solver-1 = DDIM(eta = 0)",
                 lam=_lam_sum(ab_s, ab_t), scale=_first_order_scale(x, e, ab_s, ab_t),
                 inputs={"ab_s": ab_s, "ab_t": ab_t, "x": x, "eps_hat": e})


@clause("dpm_solver.first_order", "exact_for_point_mass")
@given(x=batch_any(max_d=4), data=st.data(), levels=_levels())
def test_first_order_exact_for_point_mass(impl: Any, clause_id: str, x: F, data: st.DataObject,
                                          levels: tuple[float, float]) -> None:
    x = round_to(impl.dtype, x)
    ab_s, ab_t = _rounded_levels(impl.dtype, levels)
    g = _point_mass(data, x.shape[1], impl.dtype)
    e = round_to(impl.dtype, g.eps(x, ab_s))  # exact eps for data concentrated at m: constant along the flow
    assert_close(clause_id, need(impl, clause_id)(x, e, ab_s, ab_t), g.flow(x, ab_s, ab_t), dtype=impl.dtype,
                 what="one step = exact flow map for point-mass data", lam=_lam_sum(ab_s, ab_t),
                 scale=_first_order_scale(x, e, ab_s, ab_t), inputs={"ab_s": ab_s, "ab_t": ab_t, "x": x})


#: Candidate step counts of the order properties, finest first (each range doubles N three times).
#: The finest are those of the clause's statement; coarser ones serve where rounding hides the
#: finest errors (see diffrl_ref.suite.orders.check_order).
NS_SINGLESTEP = [np.array([8, 16, 32, 64]), np.array([4, 8, 16, 32]), np.array([2, 4, 8, 16])]
NS_MULTISTEP = [np.array([32, 64, 128, 256]), np.array([16, 32, 64, 128]), np.array([8, 16, 32, 64]),
                np.array([4, 8, 16, 32])]


def _dpm1_scheme(g: GaussianData, grid: F, x_T: F, dtype: str) -> tuple[F, F]:
    """DPM-Solver-1 (Lu et al. Eq. 3.7) with the exact eps*, in float64, and the rounding bound of the order band.

    The bound follows a perturbation of x through the steps exactly (eps* is affine, slope
    L = _eps_slope) and adds each step's rounding, _term_error times its two terms.
    """
    x, bound = x_T, np.zeros_like(x_T)
    for ab_s, ab_t in zip(grid[:-1], grid[1:], strict=True):
        lam_s, lam_t = float(_lam(ab_s)), float(_lam(ab_t))
        h = lam_t - lam_s
        c_x, c_e = np.sqrt(ab_t / ab_s), np.sqrt(1 - ab_t) * np.expm1(h)
        e = g.eps(x, float(ab_s))
        rel = _term_error(dtype, abs(lam_s) + abs(lam_t), h)
        bound = np.abs(c_x - c_e * _eps_slope(g, float(ab_s))) * bound + rel * (np.abs(c_x * x) + np.abs(c_e * e))
        x = c_x * x - c_e * e
    return np.asarray(x), np.asarray(bound)


@clause("dpm_solver.first_order", "first_order_convergence")
@given(g=_gaussian(), span=_span())
def test_first_order_convergence(impl: Any, clause_id: str, g: GaussianData, span: tuple[float, float]) -> None:
    fn = need(impl, clause_id)
    ab_T, ab_0 = span
    x_T = round_to(impl.dtype, _start_points(g, ab_T))
    exact = g.flow(x_T, ab_T, ab_0)

    def scheme64(N: int) -> tuple[F, F]:
        x64, bound = _dpm1_scheme(g, _lambda_grid(ab_T, ab_0, N), x_T, impl.dtype)
        return np.abs(x64 - exact).ravel(), bound.ravel()

    def run(N: int) -> F:
        grid, x = _lambda_grid(ab_T, ab_0, N), x_T
        for ab_s, ab_t in zip(grid[:-1], grid[1:], strict=True):
            x = np.asarray(fn(x, g.eps(x, ab_s), float(ab_s), float(ab_t)), dtype=np.float64)
        return np.abs(x - exact).ravel()

    check_order(clause_id, impl.dtype, NS_SINGLESTEP, scheme64, run, 1,
                 f"data mean {g.mean}, var {g.var}, ab_T={ab_T}, ab_0={ab_0}, lambda-uniform steps")


@clause("dpm_solver.first_order", "matches_reference")
@given(xe=_x_and_eps(), levels=_levels())
def test_first_order_matches_reference(impl: Any, clause_id: str, xe: tuple[F, F],
                                       levels: tuple[float, float]) -> None:
    x, e = (round_to(impl.dtype, a) for a in xe)
    ab_s, ab_t = _rounded_levels(impl.dtype, levels)
    assert_close(clause_id, need(impl, clause_id)(x, e, ab_s, ab_t), ref.first_order(x, e, ab_s, ab_t),
                 dtype=impl.dtype, lam=_lam_sum(ab_s, ab_t), scale=_first_order_scale(x, e, ab_s, ab_t),
                 inputs={"ab_s": ab_s, "ab_t": ab_t})


_X, _E = np.ones((2, 3)), np.ones((2, 3))
_BAD_FIRST: list[tuple[Any, ...]] = [
    (_X, _E, 0.5, 0.3),
    (_X, _E, 0.5, 0.5),
    (_X, _E, 0.0, 0.5),
    (_X, _E, 0.5, 1.0),
    (_X, _E, -0.1, 0.5),
    (_X, _E, np.nan, 0.5),
    (_X, np.ones((2, 2)), 0.3, 0.5),
    (np.ones(3), np.ones(3), 0.3, 0.5),
    (np.full((2, 3), np.nan), _E, 0.3, 0.5),
    (_X, np.full((2, 3), np.inf), 0.3, 0.5),
]


@clause("dpm_solver.first_order", "rejects_out_of_domain")
@given(case=st.sampled_from(_BAD_FIRST))
def test_first_order_rejects_out_of_domain(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *case)


# ---- dpm_solver.second_order ------------------------------------------------------------


def _second_order_scale(x: F, rec: Recorder, ab_s: float, ab_t: float, r: float, lipschitz: float) -> F:
    """Magnitudes of the terms of one DPM-Solver-2 step, including the network's response to rounding in u.

    S = (a_t / a_s)(|x| + sigma_s E) bounds each first-order term (E = largest |eps| returned);
    the correction adds S / r; rounding of u, of size S_u = (a_u / a_s)(|x| + sigma_s E), moves
    eps(u) by L S_u, which the correction multiplies by sigma_t (e^h - 1) / (2 r) <= a_t sigma_s / (2 r a_s).
    """
    lam_u = _lam(ab_s) + r * (_lam(ab_t) - _lam(ab_s))
    ab_u = float(_ab_of_lam(lam_u))
    S = _first_order_scale(x, rec.e_max, ab_s, ab_t)
    S_u = np.sqrt(ab_u / ab_s) * (np.abs(x) + np.sqrt(1 - ab_s) * rec.e_max)
    amp = np.sqrt(ab_t / ab_s) * np.sqrt(1 - ab_s) / (2 * r)
    return np.asarray(S * (1 + 1 / r) + amp * lipschitz * S_u)


@st.composite
def _r(draw: st.DrawFn) -> float:
    return float(draw(st.one_of(st.just(0.5), finite(0.25, 1.0))))


def _dpm2_scheme(g: GaussianData, grid: F, x_T: F, r: float, dtype: str) -> tuple[F, F]:
    """DPM-Solver-2 (Lu et al. Algorithm 1, general r) with the exact eps*, in float64, and the rounding bound.

    As _dpm1_scheme; the intermediate point u carries its own rounding, which reaches the
    result through the correction's weight c_3 and the slope of eps* at u.
    """
    x, bound = x_T, np.zeros_like(x_T)
    for ab_s, ab_t in zip(grid[:-1], grid[1:], strict=True):
        lam_s, lam_t = float(_lam(ab_s)), float(_lam(ab_t))
        h = lam_t - lam_s
        lam_u = lam_s + r * h
        ab_u = float(_ab_of_lam(lam_u))
        c_u, d_u = np.sqrt(ab_u / ab_s), np.sqrt(1 - ab_u) * np.expm1(r * h)
        c_1, c_2 = np.sqrt(ab_t / ab_s), np.sqrt(1 - ab_t) * np.expm1(h)
        c_3 = c_2 / (2 * r)
        e_s = g.eps(x, float(ab_s))
        u = c_u * x - d_u * e_s
        e_u = g.eps(u, ab_u)
        L_s, L_u = _eps_slope(g, float(ab_s)), _eps_slope(g, ab_u)
        rho_u = _term_error(dtype, abs(lam_s) + abs(lam_u), r * h) * (np.abs(c_u * x) + np.abs(d_u * e_s))
        rho_t = _term_error(dtype, abs(lam_s) + abs(lam_t), h) * (
            np.abs(c_1 * x) + np.abs(c_2 * e_s) + abs(c_3) * (np.abs(e_u) + np.abs(e_s)))
        slope = c_1 - (c_2 - c_3) * L_s - c_3 * L_u * (c_u - d_u * L_s)  # d x_t / d x_s
        bound = np.abs(slope) * bound + abs(c_3) * L_u * rho_u + rho_t
        x = c_1 * x - c_2 * e_s - c_3 * (e_u - e_s)
    return np.asarray(x), np.asarray(bound)


@clause("dpm_solver.second_order", "second_order_convergence")
@given(g=_gaussian(), span=_span(), r=_r())
def test_second_order_convergence(impl: Any, clause_id: str, g: GaussianData, span: tuple[float, float],
                                  r: float) -> None:
    fn = need(impl, clause_id)
    ab_T, ab_0 = span
    x_T = round_to(impl.dtype, _start_points(g, ab_T))
    exact = g.flow(x_T, ab_T, ab_0)

    def scheme64(N: int) -> tuple[F, F]:
        x64, bound = _dpm2_scheme(g, _lambda_grid(ab_T, ab_0, N), x_T, r, impl.dtype)
        return np.abs(x64 - exact).ravel(), bound.ravel()

    def run(N: int) -> F:
        grid, x = _lambda_grid(ab_T, ab_0, N), x_T
        for ab_s, ab_t in zip(grid[:-1], grid[1:], strict=True):
            x = np.asarray(fn(x, g.eps, float(ab_s), float(ab_t), r), dtype=np.float64)
        return np.abs(x - exact).ravel()

    check_order(clause_id, impl.dtype, NS_SINGLESTEP, scheme64, run, 2,
                 f"data mean {g.mean}, var {g.var}, ab_T={ab_T}, ab_0={ab_0}, r={r}, lambda-uniform steps")


@clause("dpm_solver.second_order", "reduces_to_first_order")
@given(xe=_x_and_eps(), levels=_levels(), r=_r())
def test_second_order_reduces_to_first_order(impl: Any, clause_id: str, xe: tuple[F, F],
                                             levels: tuple[float, float], r: float) -> None:
    x, c = (round_to(impl.dtype, a) for a in xe)
    ab_s, ab_t = _rounded_levels(impl.dtype, levels)
    rec = Recorder(lambda x_, ab_: c)  # a network that ignores its input: eps(u) = eps(x)
    got = need(impl, clause_id)(x, rec, ab_s, ab_t, r)
    assert_close(clause_id, got, _ddim(x, c, ab_s, ab_t), dtype=impl.dtype,
                 what="constant eps: the correction vanishes, one first-order (DDIM) step remains",
                 lam=_lam_sum(ab_s, ab_t), scale=_second_order_scale(x, rec, ab_s, ab_t, r, 0.0),
                 inputs={"ab_s": ab_s, "ab_t": ab_t, "r": r})


@clause("dpm_solver.second_order", "exact_for_point_mass")
@given(x=batch_any(max_d=4), data=st.data(), levels=_levels(), r=_r())
def test_second_order_exact_for_point_mass(impl: Any, clause_id: str, x: F, data: st.DataObject,
                                           levels: tuple[float, float], r: float) -> None:
    x = round_to(impl.dtype, x)
    ab_s, ab_t = _rounded_levels(impl.dtype, levels)
    g = _point_mass(data, x.shape[1], impl.dtype)
    rec = Recorder(g.eps)
    got = need(impl, clause_id)(x, rec, ab_s, ab_t, r)
    assert_close(clause_id, got, g.flow(x, ab_s, ab_t), dtype=impl.dtype,
                 what="one step = exact flow map for point-mass data (u lies on the trajectory)",
                 lam=_lam_sum(ab_s, ab_t),
                 scale=_second_order_scale(x, rec, ab_s, ab_t, r, _lipschitz(g, [ab_s, ab_t] + rec.levels)),
                 inputs={"ab_s": ab_s, "ab_t": ab_t, "r": r, "x": x})


@clause("dpm_solver.second_order", "network_levels")
@given(x=batch_any(max_d=4), levels=_levels(), r=_r())
def test_second_order_network_levels(impl: Any, clause_id: str, x: F, levels: tuple[float, float],
                                     r: float) -> None:
    x = round_to(impl.dtype, x)
    ab_s, ab_t = _rounded_levels(impl.dtype, levels)
    rec = Recorder(lambda x_, ab_: np.tanh(x_) * ab_)
    need(impl, clause_id)(x, rec, ab_s, ab_t, r)
    assert_that(len(rec.levels) == 2, clause_id, f"{len(rec.levels)} network evaluations, expected 2 per step")
    ab_u = float(_ab_of_lam(_lam(ab_s) + r * (_lam(ab_t) - _lam(ab_s))))
    assert_close(clause_id, rec.levels, [ab_s, ab_u], dtype=impl.dtype,
                 what="eps_fn levels [ab_s, sigmoid(2 (lambda_s + r h))]", lam=_lam_sum(ab_s, ab_t), scale=0.0,
                 inputs={"ab_s": ab_s, "ab_t": ab_t, "r": r})


@clause("dpm_solver.second_order", "matches_reference")
@given(g=_gaussian(d=2), z=batch(4, 2, scale=3.0), levels=_levels(), r=_r())
def test_second_order_matches_reference(impl: Any, clause_id: str, g: GaussianData, z: F,
                                        levels: tuple[float, float], r: float) -> None:
    ab_s, ab_t = _rounded_levels(impl.dtype, levels)
    mu, v = g.marginal(ab_s)
    x = round_to(impl.dtype, mu + np.sqrt(v) * z)
    rec = Recorder(g.eps)
    got = need(impl, clause_id)(x, rec, ab_s, ab_t, r)
    assert_close(clause_id, got, ref.second_order(x, g.eps, ab_s, ab_t, r), dtype=impl.dtype,
                 lam=_lam_sum(ab_s, ab_t),
                 scale=_second_order_scale(x, rec, ab_s, ab_t, r, _lipschitz(g, [ab_s, ab_t] + rec.levels)),
                 inputs={"ab_s": ab_s, "ab_t": ab_t, "r": r})


def _eps_nan(x: F, ab: float) -> F:
    return np.full_like(x, np.nan)


def _eps_short(x: F, ab: float) -> F:
    return np.zeros((x.shape[0], x.shape[1] + 1))


def _eps_ok(x: F, ab: float) -> F:
    return 0.1 * x


_BAD_SECOND: list[tuple[Any, ...]] = [
    (_X, _eps_ok, 0.5, 0.3, 0.5),
    (_X, _eps_ok, 0.5, 0.5, 0.5),
    (_X, _eps_ok, 0.0, 0.5, 0.5),
    (_X, _eps_ok, 0.3, 1.0, 0.5),
    (_X, _eps_ok, 0.3, 0.5, 0.0),
    (_X, _eps_ok, 0.3, 0.5, 1.5),
    (_X, _eps_ok, 0.3, 0.5, np.nan),
    (_X, _eps_nan, 0.3, 0.5, 0.5),
    (_X, _eps_short, 0.3, 0.5, 0.5),
    (np.ones(3), _eps_ok, 0.3, 0.5, 0.5),
    (np.full((2, 3), np.nan), _eps_ok, 0.3, 0.5, 0.5),
]


@clause("dpm_solver.second_order", "rejects_out_of_domain")
@given(case=st.sampled_from(_BAD_SECOND))
def test_second_order_rejects_out_of_domain(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *case)


# ---- dpm_solver.pp_2m -------------------------------------------------------------------


def _pp_2m_vars(rec: Recorder, grid: F, x_T: F, expected: F, gain: float) -> dict[str, Any]:
    """Variables of the pp_2m rule: M, lam, gain and scale = amp (1 + rmax)(X + E)."""
    lam = _lam(grid)
    h = np.diff(lam)
    rmax = float(np.max(h[1:] / h[:-1])) if h.size > 1 else 0.0  # largest 1 / r_i = h_i / h_{i-1}
    amp = float(np.max(np.sqrt(grid[1:] / grid[:-1])))  # alpha_i / alpha_{i-1} of the data-prediction term
    X = max(rec.x_max, float(np.max(np.abs(x_T))), float(np.max(np.abs(expected))))
    return {"M": int(grid.size - 1), "lam": float(np.max(np.abs(lam))), "gain": gain,
            "scale": amp * (1 + rmax) * (X + rec.e_max)}


def _gain(g: GaussianData) -> float:
    """Bound on the exact flow's sensitivity sqrt(v_end / v_t) between any two levels."""
    # 1e-300 only keeps a zero variance from dividing by 0 (point masses pass gain 1 instead).
    return float(np.max(np.sqrt(np.maximum(g.var, 1.0) / np.maximum(np.minimum(g.var, 1.0), 1e-300))))


def _x_theta_star(g: GaussianData, x: F, ab: float) -> F:
    """Exact data prediction E[x_0 | x_t = x] = m + alpha s^2 (x - alpha m) / (ab s^2 + 1 - ab) (Gaussian posterior)."""
    a = np.sqrt(ab)
    return np.asarray(g.mean + a * g.var * (x - a * g.mean) / (ab * g.var + 1 - ab))


def _pp_2m_scheme(g: GaussianData, grid: F, x_T: F, dtype: str) -> tuple[F, F]:
    """DPM-Solver++(2M), Lu et al. (2022b) Algorithm 2, with the closed-form x_theta*, in float64.

    Written from the paper's equations, independently of diffrl_ref.reference:
      x_1 = (sigma_1 / sigma_0) x_0 - alpha_1 (e^{-h_1} - 1) x_theta(x_0),
      D_i = (1 + 1/(2 r_i)) x_theta(x_{i-1}) - 1/(2 r_i) x_theta(x_{i-2}),  r_i = h_{i-1} / h_i,
      x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i.
    Also returns the rounding bound of the order band. Step i is x_i = A x_{i-1} + B x0_i + C x0_{i-1}
    with x0_i = x_theta(x_{i-1}), whose slope in x is K_i = alpha s^2 / v; an implementation rounds
    x_i (rho_i, _term_error times the three terms) and x0_i, formed as (x - sigma eps) / alpha
    (rho0_i, with the terms |x| and |x - alpha x0|). The sensitivities of x_M to both are
    propagated back exactly (eps* is affine): lx_{i-1} = A lx_i + K_i l0_i, l0_i = B_i lx_i +
    C_{i+1} lx_{i+1}, lx_M = 1; the bound is sum_i |lx_i| rho_i + |l0_i| rho0_i.
    """
    alpha, sigma, lam = np.sqrt(grid), np.sqrt(1 - grid), _lam(grid)
    lam_max = float(np.max(np.abs(lam)))
    x, x0_prev = x_T, np.zeros_like(x_T)
    coef: list[tuple[float, float, float, F]] = []  # (A_i, B_i, C_i, K_i), i = 1..M
    rho: list[F] = []
    rho0: list[F] = []
    for i in range(1, grid.size):
        ab = float(grid[i - 1])
        x0 = _x_theta_star(g, x, ab)
        h = float(lam[i] - lam[i - 1])
        phi = float(-alpha[i] * np.expm1(-h))
        if i == 1:
            B, C, rel = phi, 0.0, _term_error(dtype, lam_max, h)
        else:
            h_prev = float(lam[i - 1] - lam[i - 2])
            r = h_prev / h
            B, C, rel = phi * (1 + 1 / (2 * r)), -phi / (2 * r), _term_error(dtype, lam_max, h, h_prev)
        A = float(sigma[i] / sigma[i - 1])
        rho0.append(_term_error(dtype, lam_max) * (np.abs(x) + np.abs(x - alpha[i - 1] * x0)) / alpha[i - 1])
        rho.append(rel * (np.abs(A * x) + np.abs(B * x0) + np.abs(C * x0_prev)))
        coef.append((A, B, C, np.asarray(alpha[i - 1] * g.var / (ab * g.var + 1 - ab))))
        x = A * x + B * x0 + C * x0_prev
        x0_prev = x0
    bound = np.zeros_like(x_T)
    lx, lx_next, C_next = np.ones_like(g.var), np.zeros_like(g.var), 0.0
    for (A, B, C, K), r_i, r0_i in zip(reversed(coef), reversed(rho), reversed(rho0), strict=True):
        l0 = B * lx + C_next * lx_next
        bound = bound + np.abs(lx) * r_i + np.abs(l0) * r0_i
        lx, lx_next, C_next = A * lx + K * l0, lx, C
    return np.asarray(x), np.asarray(bound)


@clause("dpm_solver.pp_2m", "second_order_convergence")
@given(g=_gaussian(), span=_span(), rho=finite(1.5, 3.0))
def test_pp_2m_convergence(impl: Any, clause_id: str, g: GaussianData, span: tuple[float, float],
                           rho: float) -> None:
    fn = need(impl, clause_id)
    ab_T, ab_0 = span
    x_T = round_to(impl.dtype, _start_points(g, ab_T))
    exact = g.flow(x_T, ab_T, ab_0)

    def scheme64(N: int) -> tuple[F, F]:
        x64, bound = _pp_2m_scheme(g, _lambda_grid(ab_T, ab_0, N, rho), x_T, impl.dtype)
        return np.abs(x64 - exact).ravel(), bound.ravel()

    def run(N: int) -> F:
        return np.abs(np.asarray(fn(x_T, g.eps, _lambda_grid(ab_T, ab_0, N, rho))) - exact).ravel()

    check_order(clause_id, impl.dtype, NS_MULTISTEP, scheme64, run, 2,
                 f"data mean {g.mean}, var {g.var}, ab_T={ab_T}, ab_0={ab_0}, lambda steps alternating 1 : {rho}")


@clause("dpm_solver.pp_2m", "first_step_is_ddim")
@given(xe=_x_and_eps(), levels=_levels())
def test_pp_2m_first_step_is_ddim(impl: Any, clause_id: str, xe: tuple[F, F], levels: tuple[float, float]) -> None:
    x, w = (round_to(impl.dtype, a) for a in xe)
    ab_s, ab_t = _rounded_levels(impl.dtype, levels)
    rec = Recorder(lambda x_, ab_: np.sin(x_) + ab_ * w)  # any network: the identity is algebraic
    got = need(impl, clause_id)(x, rec, np.array([ab_s, ab_t]))
    e = np.sin(x) + ab_s * w
    expected = _ddim(x, e, ab_s, ab_t)
    assert_close(clause_id, got, expected, dtype=impl.dtype, what="M = 1: DPM-Solver++1 = DDIM(eta = 0)",
                 **_pp_2m_vars(rec, np.array([ab_s, ab_t]), x, expected, 1.0),
                 inputs={"ab_s": ab_s, "ab_t": ab_t, "x": x})


@st.composite
def _grid(draw: st.DrawFn, min_M: int = 1, max_M: int = 12) -> F:
    """An increasing alpha_bar grid (M + 1 levels) with irregular lambda steps."""
    M = draw(st.integers(min_M, max_M))
    lam_T = draw(finite(-4.0, 1.0))
    steps = np.asarray(draw(st.lists(finite(0.05, 1.0), min_size=M, max_size=M)))
    return np.asarray(_ab_of_lam(lam_T + np.concatenate([[0.0], np.cumsum(steps)])))


def _rounded_grid(dtype: str, grid: F) -> F:
    grid = round_to(dtype, grid)
    assume(bool(np.all(np.diff(grid) > 0)) and grid[0] > 0 and grid[-1] < 1)
    return grid


@clause("dpm_solver.pp_2m", "algorithm_2_gaussian")
@given(g=_gaussian(d=2), z=batch(4, 2, scale=3.0), grid=_grid(min_M=2, max_M=3))
def test_pp_2m_algorithm_2_gaussian(impl: Any, clause_id: str, g: GaussianData, z: F, grid: F) -> None:
    grid = _rounded_grid(impl.dtype, grid)
    mu, v = g.marginal(float(grid[0]))
    x = round_to(impl.dtype, mu + np.sqrt(v) * z)
    rec = Recorder(g.eps)
    got = need(impl, clause_id)(x, rec, grid)
    expected, _ = _pp_2m_scheme(g, grid, x, "float64")
    assert_close(clause_id, got, expected, dtype=impl.dtype,
                 what="Algorithm 2 of Lu et al. (2022b) with the closed-form x_theta* of Gaussian data",
                 **_pp_2m_vars(rec, grid, x, expected, _gain(g)), inputs={"x_T": x})


@clause("dpm_solver.pp_2m", "exact_for_point_mass")
@given(x=batch_any(max_d=4), data=st.data(), grid=_grid())
def test_pp_2m_exact_for_point_mass(impl: Any, clause_id: str, x: F, data: st.DataObject, grid: F) -> None:
    x, grid = round_to(impl.dtype, x), _rounded_grid(impl.dtype, grid)
    g = _point_mass(data, x.shape[1], impl.dtype)
    rec = Recorder(g.eps)
    got = need(impl, clause_id)(x, rec, grid)
    expected = g.flow(x, float(grid[0]), float(grid[-1]))
    assert_close(clause_id, got, expected, dtype=impl.dtype,
                 what="x_theta is constant along the flow of point-mass data: every step is exact",
                 **_pp_2m_vars(rec, grid, x, expected, 1.0), inputs={"x": x})


@clause("dpm_solver.pp_2m", "network_levels")
@given(x=batch_any(max_d=4), grid=_grid())
def test_pp_2m_network_levels(impl: Any, clause_id: str, x: F, grid: F) -> None:
    x, grid = round_to(impl.dtype, x), _rounded_grid(impl.dtype, grid)
    rec = Recorder(lambda x_, ab_: np.tanh(x_) * ab_)
    need(impl, clause_id)(x, rec, grid)
    M = grid.size - 1
    assert_that(len(rec.levels) == M, clause_id, f"{len(rec.levels)} network evaluations, expected M = {M}")
    assert_close(clause_id, rec.levels, grid[:-1], dtype=impl.dtype,
                 what="eps_fn evaluated at ab_grid[0], ..., ab_grid[M-1] in order",
                 M=1, lam=0.0, gain=1.0, scale=0.0, inputs={"i": np.arange(M)})


@clause("dpm_solver.pp_2m", "matches_reference")
@given(g=_gaussian(d=2), z=batch(4, 2, scale=3.0), grid=_grid())
def test_pp_2m_matches_reference(impl: Any, clause_id: str, g: GaussianData, z: F, grid: F) -> None:
    grid = _rounded_grid(impl.dtype, grid)
    mu, v = g.marginal(float(grid[0]))
    x = round_to(impl.dtype, mu + np.sqrt(v) * z)
    rec = Recorder(g.eps)
    got = need(impl, clause_id)(x, rec, grid)
    expected = ref.pp_2m(x, g.eps, grid)
    assert_close(clause_id, got, expected, dtype=impl.dtype, **_pp_2m_vars(rec, grid, x, expected, _gain(g)))


_BAD_PP: list[tuple[Any, ...]] = [
    (_X, _eps_ok, np.array([0.5])),
    (_X, _eps_ok, np.array([0.5, 0.3])),
    (_X, _eps_ok, np.array([0.3, 0.5, 0.5])),
    (_X, _eps_ok, np.array([0.0, 0.5])),
    (_X, _eps_ok, np.array([0.3, 1.0])),
    (_X, _eps_ok, np.array([0.3, np.nan])),
    (_X, _eps_ok, np.array([[0.3, 0.5]])),
    (_X, _eps_nan, np.array([0.3, 0.5, 0.7])),
    (_X, _eps_short, np.array([0.3, 0.5])),
    (np.ones(3), _eps_ok, np.array([0.3, 0.5])),
    (np.full((2, 3), np.inf), _eps_ok, np.array([0.3, 0.5])),
]


@clause("dpm_solver.pp_2m", "rejects_out_of_domain")
@given(case=st.sampled_from(_BAD_PP))
def test_pp_2m_rejects_out_of_domain(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *case)
