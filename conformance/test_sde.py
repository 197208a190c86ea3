"""Conformance: spec family ``sde`` (VP-SDE, reverse-time SDE, probability-flow ODE)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from diffrl_ref import spec
from diffrl_ref.reference import sde as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.gaussian_oracle import GaussianData, propagate_affine
from diffrl_ref.suite.stats import assert_gaussian_moments
from diffrl_ref.suite.strategies import batch_any, finite

F = np.ndarray

#: solve_ivp settings of the ODE-based properties (the tolerance rules use them): rtol 1e-10,
#: raised to 64 eps for reduced-precision implementations, whose rounded right-hand side the
#: step-size control could not resolve below that (it would shrink the steps without end).
ODE_RTOL = 1e-10


#: Largest solve_ivp step: with beta <= 20 and data variance >= 0.1 the flow's rate is at most
#: beta / (2 var) <= 100, and steps of 1/16 or less keep the error estimate in its asymptotic range.
MAX_STEP = 1 / 16


def _ode_tols(dtype: str) -> tuple[float, float]:
    rtol = max(ODE_RTOL, 64 * spec.EPS[dtype])
    return rtol, rtol / 100
#: Half-width of the acceptance band of fitted convergence orders (spec: tolerance.derivation).
ORDER_BAND = 0.3
NO_ODE: dict[str, Any] = {"ode_steps": 0, "ode_rtol": 0.0, "ode_atol": 0.0, "ode_dim": 1}


def _ab(t: Any, b0: float, b1: float) -> Any:
    """Test-private VP signal rate exp(-int_0^t beta) (the oracle, Song et al. Appendix B)."""
    return np.exp(-b0 * np.asarray(t) - 0.5 * (b1 - b0) * np.asarray(t) ** 2)


def _beta(t: Any, b0: float, b1: float) -> Any:
    return b0 + np.asarray(t) * (b1 - b0)


@st.composite
def _beta_range(draw: st.DrawFn, lo: float = 0.05, hi: float = 20.0) -> tuple[float, float]:
    b0 = draw(finite(lo, 1.0))
    b1 = draw(finite(max(b0, 1.0), hi))
    return b0, b1


@st.composite
def _gaussian(draw: st.DrawFn, d: int = 3, lo: float = 0.25, hi: float = 4.0) -> GaussianData:
    m = [draw(finite(-3.0, 3.0)) for _ in range(d)]
    s2 = [draw(finite(lo, hi)) for _ in range(d)]
    return GaussianData.of(m, s2)


def _fit_order(ns: F, errors: F) -> float:
    """Least-squares slope of -log(error) against log(N): the observed convergence order."""
    return float(-np.polyfit(np.log(ns), np.log(errors), 1)[0])


# ---- sde.vp ---------------------------------------------------------------------------


@clause("sde.vp", "variance_preserving")
@given(x=batch_any(), data=st.data(), br=_beta_range())
def test_vp_variance_preserving(impl: Any, clause_id: str, x: F, data: st.DataObject,
                                br: tuple[float, float]) -> None:
    x = round_to(impl.dtype, x)
    t = round_to(impl.dtype, data.draw(st.lists(finite(0.0, 1.0), min_size=x.shape[0], max_size=x.shape[0])))
    b0, b1 = br
    fn = need(impl, clause_id)
    f, g = (np.asarray(v, dtype=np.float64) for v in fn(x, t, b0, b1))
    assert_that(g.shape == (x.shape[0], 1), clause_id, f"g has shape {g.shape}, expected (B, 1)")
    a = np.asarray(fn(np.ones_like(x), t, b0, b1)[0], dtype=np.float64)  # drift's linear coefficient a(t)
    beta = _beta(t, b0, b1)[:, None]
    assert_close(clause_id, f, a * x, dtype=impl.dtype, what="f(x, t) = a(t) x (linear drift)",
                 scale=beta * np.abs(x), **NO_ODE, inputs={"t": t[:, None]})
    # Variance ODE of the linear SDE: dv/dt = 2 a v + g^2; v = 1 stays 1 iff 2 a + g^2 = 0.
    assert_close(clause_id, 2 * a + g**2, np.zeros_like(a), dtype=impl.dtype,
                 what="2 a(t) + g(t)^2 = 0 (N(0, I) is stationary)", scale=2 * beta, **NO_ODE,
                 inputs={"t": t[:, None], "beta_min": b0, "beta_max": b1})


@clause("sde.vp", "transition_kernel")
@given(br=_beta_range(), t_end=finite(0.05, 1.0))
def test_vp_transition_kernel(impl: Any, clause_id: str, br: tuple[float, float], t_end: float) -> None:
    b0, b1 = br
    fn = need(impl, clause_id)
    one = np.ones((1, 1))

    def moments(t: float, y: F) -> F:
        f, g = fn(one, t, b0, b1)
        a, g2 = float(np.asarray(f)[0, 0]), float(np.asarray(g)[0, 0]) ** 2
        return np.array([a * y[0], 2 * a * y[1] + g2])

    rtol, atol = _ode_tols(impl.dtype)
    sol = solve_ivp(moments, (0.0, t_end), [1.0, 0.0], method="DOP853", rtol=rtol, atol=atol)
    assert_that(sol.success, clause_id, f"moment ODE failed to integrate: {sol.message}")
    ab = float(_ab(t_end, b0, b1))
    # mean coefficient sqrt(alpha_bar(t)) and variance 1 - alpha_bar(t) of q(x_t | x_0)
    assert_close(clause_id, sol.y[:, -1], [np.sqrt(ab), 1 - ab], dtype=impl.dtype,
                 what="moment ODEs driven by f, g vs N(sqrt(ab) x0, (1 - ab) I)", scale=2 * b1,
                 ode_steps=len(sol.t) - 1, ode_rtol=rtol, ode_atol=atol, ode_dim=2,
                 inputs={"t": t_end, "beta_min": b0, "beta_max": b1})


@clause("sde.vp", "matches_reference")
@given(x=batch_any(), t=finite(0.0, 1.0), br=_beta_range())
def test_vp_matches_reference(impl: Any, clause_id: str, x: F, t: float, br: tuple[float, float]) -> None:
    x, t = round_to(impl.dtype, x), float(round_to(impl.dtype, t))
    f, g = need(impl, clause_id)(x, t, *br)
    f_ref, g_ref = ref.vp(x, t, *br)
    assert_close(clause_id, f, f_ref, dtype=impl.dtype, what="drift f", scale=0.0, **NO_ODE)
    assert_close(clause_id, g, g_ref, dtype=impl.dtype, what="diffusion g", scale=0.0, **NO_ODE)


_BAD_VP: list[tuple[Any, Any, float, float]] = [
    (np.ones((2, 3)), -0.1, 0.1, 20.0),
    (np.ones((2, 3)), 1.5, 0.1, 20.0),
    (np.ones((2, 3)), np.nan, 0.1, 20.0),
    (np.ones((2, 3)), np.array([0.1, 0.2, 0.3]), 0.1, 20.0),
    (np.ones(3), 0.5, 0.1, 20.0),
    (np.array([[np.nan, 1.0]]), 0.5, 0.1, 20.0),
    (np.ones((2, 3)), 0.5, 0.0, 20.0),
    (np.ones((2, 3)), 0.5, 5.0, 1.0),
]


@clause("sde.vp", "rejects_out_of_domain")
@given(case=st.sampled_from(_BAD_VP))
def test_vp_rejects_out_of_domain(impl: Any, clause_id: str, case: tuple[Any, Any, float, float]) -> None:
    fn = need(impl, clause_id)
    # Only f is reported if the call wrongly succeeds (the pair (f, g) has ragged shapes).
    assert_raises_domain(lambda *a: fn(*a)[0], clause_id, *case)


# ---- sde.vp_marginal ------------------------------------------------------------------


def _expo(t: Any, b0: float, b1: float) -> Any:
    """-log alpha_bar(t), the exponent whose rounding the rule scales with."""
    return b0 * np.asarray(t) + 0.5 * (b1 - b0) * np.asarray(t) ** 2


@clause("sde.vp_marginal", "boundary")
@given(br=_beta_range(), n=st.integers(2, 50))
def test_vp_marginal_boundary(impl: Any, clause_id: str, br: tuple[float, float], n: int) -> None:
    fn = need(impl, clause_id)
    a0 = np.asarray(fn(0.0, *br), dtype=np.float64)
    assert_that(a0.shape == () and float(a0) == 1.0, clause_id, f"alpha_bar(0) = {a0!r}, must be exactly 1")
    t = np.linspace(0.0, 1.0, n + 1)
    a = np.asarray(fn(t, *br), dtype=np.float64)
    assert_that(a.shape == t.shape, clause_id, f"shape {a.shape}, expected {t.shape} (one per time)")
    assert_that(bool(np.all(np.diff(a) < 0)), clause_id, f"alpha_bar(t) not strictly decreasing: {a}")
    assert_that(bool(np.all((a > 0) & (a <= 1))), clause_id, f"alpha_bar(t) outside (0, 1]: {a}")


@clause("sde.vp_marginal", "moment_odes")
@given(br=_beta_range(), t_end=finite(0.05, 1.0))
def test_vp_marginal_moment_odes(impl: Any, clause_id: str, br: tuple[float, float], t_end: float) -> None:
    b0, b1 = br

    def moments(t: float, y: F) -> F:
        beta = float(_beta(t, b0, b1))
        return np.array([-0.5 * beta * y[0], beta * (1 - y[1])])

    sol = solve_ivp(moments, (0.0, t_end), [1.0, 0.0], method="DOP853", rtol=ODE_RTOL, atol=ODE_RTOL / 100)
    assert_that(sol.success, clause_id, f"moment ODE failed to integrate: {sol.message}")
    a = float(np.asarray(need(impl, clause_id)(t_end, b0, b1)))
    assert_close(clause_id, [np.sqrt(a), 1 - a], sol.y[:, -1], dtype=impl.dtype,
                 what="[sqrt(ab), 1 - ab] vs solution of d mean/dt = -beta mean / 2, d var/dt = beta (1 - var)",
                 expo=_expo(t_end, b0, b1), scale=1.0, ode_steps=len(sol.t) - 1, ode_rtol=ODE_RTOL,
                 ode_atol=ODE_RTOL / 100, ode_dim=2, inputs={"t": t_end, "beta_min": b0, "beta_max": b1})


@clause("sde.vp_marginal", "ddpm_limit")
@given(br=_beta_range())
def test_vp_marginal_ddpm_limit(impl: Any, clause_id: str, br: tuple[float, float]) -> None:
    b0, b1 = br
    fn = need(impl, clause_id)
    t_check = np.array([0.25, 0.5, 0.75, 1.0])
    target = np.asarray(fn(t_check, b0, b1), dtype=np.float64)
    Ks = np.array([64, 128, 256, 512])
    errors = []
    for K in Ks:
        k = np.arange(1, K + 1)
        # DDPM with beta_k = beta(t_k) / K on the grid t_k = k / K (Song et al. Appendix B)
        ab_disc = np.cumprod(1 - _beta(k / K, b0, b1) / K)
        errors.append(np.max(np.abs(np.log(ab_disc[(t_check * K).astype(int) - 1]) - np.log(target))))
    order = _fit_order(Ks, np.asarray(errors))
    assert_that(abs(order - 1) <= ORDER_BAND, clause_id,
                f"discrete DDPM alpha_bar -> alpha_bar(t) with observed order {order:.3f}, expected 1 +- "
                f"{ORDER_BAND} (errors of log alpha_bar {np.asarray(errors)} at K = {Ks}; "
                f"beta_min={b0}, beta_max={b1})")


@clause("sde.vp_marginal", "matches_reference")
@given(t=st.lists(finite(0.0, 1.0), min_size=1, max_size=20), br=_beta_range())
def test_vp_marginal_matches_reference(impl: Any, clause_id: str, t: list[float], br: tuple[float, float]) -> None:
    tt = round_to(impl.dtype, t)
    assert_close(clause_id, need(impl, clause_id)(tt, *br), ref.vp_marginal(tt, *br), dtype=impl.dtype,
                 expo=_expo(tt, *br), scale=0.0, **NO_ODE, inputs={"t": tt})


@clause("sde.vp_marginal", "rejects_out_of_domain")
@given(case=st.sampled_from([(-0.01, 0.1, 20.0), (1.01, 0.1, 20.0), (np.nan, 0.1, 20.0), (0.5, -1.0, 20.0),
                             (0.5, 2.0, 1.0), (np.ones((2, 2)) * 0.5, 0.1, 20.0), (0.5, 0.1, np.inf)]))
def test_vp_marginal_rejects_out_of_domain(impl: Any, clause_id: str, case: tuple[Any, float, float]) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *case)


# ---- sde.reverse_drift and sde.probability_flow: shared helpers ------------------------


def _field_coefficients(fn: Callable[..., Any], g: GaussianData, t: Any, b0: float, b1: float) -> tuple[F, F]:
    """(a, b) of the field x -> fn(x, t, score*(x, t)) = a x + b (exact Gaussian score), per coordinate.

    ``t`` is a scalar or a vector of n times; all times are probed in one call (rows x = 0 and
    x = 1 for each time, t given per row), and a, b come back with shape (d,) or (n, d).
    """
    ts = np.atleast_1d(np.asarray(t, dtype=np.float64))
    n, d = ts.size, g.mean.size
    x = np.concatenate([np.zeros((n, d)), np.ones((n, d))])
    t_rows = np.concatenate([ts, ts])
    out = np.asarray(fn(x, t_rows, g.score(x, _ab(t_rows, b0, b1)), b0, b1), dtype=np.float64)
    a, b = out[n:] - out[:n], out[:n]
    return (a[0], b[0]) if np.ndim(t) == 0 else (a, b)


def _marginal_rates(g: GaussianData, t: float, b0: float, b1: float) -> tuple[F, F, F, F]:
    """Mean, variance of q_t and their time derivatives d mean/dt, d var/dt (closed form)."""
    ab = float(_ab(t, b0, b1))
    beta = float(_beta(t, b0, b1))
    mu, v = g.marginal(ab)
    return mu, v, -0.5 * beta * mu, beta * ab * (1 - g.var)  # d ab/dt = -beta ab


# ---- sde.reverse_drift ----------------------------------------------------------------


@clause("sde.reverse_drift", "marginal_consistency")
@given(g=_gaussian(), t=finite(0.0, 1.0), br=_beta_range())
def test_reverse_drift_marginal_consistency(impl: Any, clause_id: str, g: GaussianData, t: float,
                                            br: tuple[float, float]) -> None:
    b0, b1 = br
    a, b = _field_coefficients(need(impl, clause_id), g, t, b0, b1)
    mu, v, dmu, dv = _marginal_rates(g, t, b0, b1)
    beta = float(_beta(t, b0, b1))
    # Run backwards with step dt: x <- x - (a x + b) dt + g sqrt(dt) z, so in forward time the
    # law's moments move at d mean/dt = a mean + b and d var/dt = 2 a v - g^2; the reverse SDE
    # must retrace the forward marginals q_t exactly (Anderson 1982; Song et al. Eq. 6).
    scale = beta * (1 + np.abs(mu) + v) * (1 + 1 / v)
    assert_close(clause_id, a * mu + b, dmu, dtype=impl.dtype, what="d mean/dt = a mean + b", scale=scale,
                 inputs={"t": t, "data_mean": g.mean, "data_var": g.var})
    assert_close(clause_id, 2 * a * v - beta, dv, dtype=impl.dtype, what="d var/dt = 2 a v - g^2", scale=scale,
                 inputs={"t": t, "data_mean": g.mean, "data_var": g.var})


def _em_law(fn: Callable[..., Any], g: GaussianData, b0: float, b1: float, N: int, t_end: float) -> tuple[F, F]:
    """Exact law of N Euler-Maruyama steps of the reverse SDE from q_1 at t = 1 to t_end."""
    ts = np.linspace(1.0, t_end, N + 1)
    a, b = _field_coefficients(fn, g, ts[:-1], b0, b1)
    mean, var = g.marginal(float(_ab(1.0, b0, b1)))
    for n in range(N):
        dt = ts[n] - ts[n + 1]
        # x_{t - dt} = x_t - drift dt + g(t) sqrt(dt) z
        mean, var = propagate_affine(mean, var, 1 - a[n] * dt, -b[n] * dt, float(_beta(ts[n], b0, b1)) * dt)
    return mean, var


T_END = 1e-3


@clause("sde.reverse_drift", "em_first_order")
@given(g=_gaussian(), br=_beta_range(hi=20.0))
def test_reverse_drift_em_first_order(impl: Any, clause_id: str, g: GaussianData, br: tuple[float, float]) -> None:
    b0, b1 = br
    fn = need(impl, clause_id)
    mu, v = g.marginal(float(_ab(T_END, b0, b1)))
    Ns = np.array([32, 64, 128, 256])
    errors = []
    for N in Ns:
        mean, var = _em_law(fn, g, b0, b1, int(N), T_END)
        errors.append(float(np.max(np.abs(mean - mu) + np.abs(var - v))))
    order = _fit_order(Ns, np.asarray(errors))
    assert_that(abs(order - 1) <= ORDER_BAND, clause_id,
                f"law of the Euler-Maruyama chain -> q(t_end) with observed order {order:.3f}, expected 1 +- "
                f"{ORDER_BAND} (errors {np.asarray(errors)} at N = {Ns}; data mean {g.mean}, var {g.var}, "
                f"beta_min={b0}, beta_max={b1})")


@clause("sde.reverse_drift", "em_sample_law")
@given(g=_gaussian(d=2), br=_beta_range())
def test_reverse_drift_em_sample_law(impl: Any, clause_id: str, g: GaussianData, br: tuple[float, float]) -> None:
    b0, b1 = br
    fn = need(impl, clause_id)
    rng = np.random.default_rng(20210112)
    n, N = 20000, 16
    ts = np.linspace(1.0, T_END, N + 1)
    mean, var = g.marginal(float(_ab(1.0, b0, b1)))
    x = mean + np.sqrt(var) * rng.standard_normal((n, g.mean.size))
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        dt, ab, beta = t - t_next, float(_ab(t, b0, b1)), float(_beta(t, b0, b1))
        drift = np.asarray(fn(x, float(t), g.score(x, ab), b0, b1))
        x = x - drift * dt + np.sqrt(beta * dt) * rng.standard_normal(x.shape)
        # Exact law of the same chain with the drift written from Song et al. Eq. (6): f - g^2 score,
        # f = -beta x / 2, g^2 = beta, score = -(x - mu_t) / v_t: affine in x.
        mu_t, v_t = g.marginal(ab)
        a = -0.5 * beta + beta / v_t
        mean, var = propagate_affine(mean, var, 1 - a * dt, -(-beta * mu_t / v_t) * dt, beta * dt)
    assert_gaussian_moments(clause_id, x, mean, var, what=f"{N} Euler-Maruyama steps of the reverse SDE, n = {n}")


@clause("sde.reverse_drift", "matches_reference")
@given(x=batch_any(), data=st.data(), t=finite(0.0, 1.0), br=_beta_range())
def test_reverse_drift_matches_reference(impl: Any, clause_id: str, x: F, data: st.DataObject, t: float,
                                         br: tuple[float, float]) -> None:
    x, t = round_to(impl.dtype, x), float(round_to(impl.dtype, t))
    s = round_to(impl.dtype, data.draw(st.lists(finite(-10, 10), min_size=x.size, max_size=x.size)))
    s = np.asarray(s).reshape(x.shape)
    beta = float(_beta(t, *br))
    assert_close(clause_id, need(impl, clause_id)(x, t, s, *br), ref.reverse_drift(x, t, s, *br),
                 dtype=impl.dtype, scale=beta * (np.abs(x) + np.abs(s)))


_BAD_FIELD: list[tuple[Any, Any, Any, float, float]] = [
    (np.ones((2, 3)), 0.5, np.ones((2, 2)), 0.1, 20.0),
    (np.ones((2, 3)), 0.5, np.full((2, 3), np.nan), 0.1, 20.0),
    (np.ones((2, 3)), -0.5, np.ones((2, 3)), 0.1, 20.0),
    (np.ones((2, 3)), 1.5, np.ones((2, 3)), 0.1, 20.0),
    (np.ones((2, 3)), np.array([0.1, 0.2, 0.3]), np.ones((2, 3)), 0.1, 20.0),
    (np.ones(3), 0.5, np.ones(3), 0.1, 20.0),
    (np.full((2, 3), np.inf), 0.5, np.ones((2, 3)), 0.1, 20.0),
    (np.ones((2, 3)), 0.5, np.ones((2, 3)), 3.0, 2.0),
]


@clause("sde.reverse_drift", "rejects_out_of_domain")
@given(case=st.sampled_from(_BAD_FIELD))
def test_reverse_drift_rejects_out_of_domain(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *case)


# ---- sde.probability_flow -------------------------------------------------------------


@clause("sde.probability_flow", "preserves_marginals")
@given(g=_gaussian(), t=finite(0.0, 1.0), br=_beta_range())
def test_probability_flow_preserves_marginals(impl: Any, clause_id: str, g: GaussianData, t: float,
                                              br: tuple[float, float]) -> None:
    b0, b1 = br
    a, b = _field_coefficients(need(impl, clause_id), g, t, b0, b1)
    mu, v, dmu, dv = _marginal_rates(g, t, b0, b1)
    beta = float(_beta(t, b0, b1))
    # A deterministic linear flow dx/dt = a x + b transports N(mean, v) to N(.) with
    # d mean/dt = a mean + b and d var/dt = 2 a v; these must be the rates of q_t (Song et al. Eq. 13).
    scale = beta * (1 + np.abs(mu) + v) * (1 + 1 / v)
    kw: dict[str, Any] = {"gain": 1.0, **NO_ODE, "ymax": 0.0}
    assert_close(clause_id, a * mu + b, dmu, dtype=impl.dtype, what="d mean/dt = a mean + b", scale=scale,
                 inputs={"t": t, "data_mean": g.mean, "data_var": g.var}, **kw)
    assert_close(clause_id, 2 * a * v, dv, dtype=impl.dtype, what="d var/dt = 2 a v", scale=scale,
                 inputs={"t": t, "data_mean": g.mean, "data_var": g.var}, **kw)


@clause("sde.probability_flow", "flow_map")
@given(g=_gaussian(lo=0.1, hi=10.0), br=_beta_range(), t_end=finite(1e-3, 0.5), data=st.data())
def test_probability_flow_flow_map(impl: Any, clause_id: str, g: GaussianData, br: tuple[float, float],
                                   t_end: float, data: st.DataObject) -> None:
    b0, b1 = br
    fn = need(impl, clause_id)
    d = g.mean.size
    ab1 = float(_ab(1.0, b0, b1))
    mu1, v1 = g.marginal(ab1)
    z = np.asarray(data.draw(st.lists(finite(-4.0, 4.0), min_size=4 * d, max_size=4 * d))).reshape(4, d)
    x1 = mu1 + np.sqrt(v1) * z

    def rhs(t: float, y: F) -> F:
        x = y.reshape(x1.shape)
        return np.asarray(fn(x, t, g.score(x, float(_ab(t, b0, b1))), b0, b1), dtype=np.float64).ravel()

    rtol, atol = _ode_tols(impl.dtype)
    sol = solve_ivp(rhs, (1.0, t_end), x1.ravel(), method="DOP853", rtol=rtol, atol=atol, max_step=MAX_STEP)
    assert_that(sol.success, clause_id, f"probability-flow ODE failed to integrate: {sol.message}")
    expected = g.flow(x1, ab1, float(_ab(t_end, b0, b1)))
    # Sensitivity of the exact affine flow from any t to t_end: sqrt(v_end / v_t) <= gain.
    vmin, vmax = np.minimum(g.var, 1.0), np.maximum(g.var, 1.0)
    gain = np.sqrt(vmax / vmin)
    ymax = float(max(np.max(np.abs(x1)), np.max(np.abs(sol.y))))
    beta_int = b0 + 0.5 * (b1 - b0)  # int_0^1 beta >= int_{t_end}^1 beta
    assert_close(clause_id, sol.y[:, -1].reshape(x1.shape), expected, dtype=impl.dtype,
                 what="ODE solution at t_end vs exact flow map", gain=gain, ode_steps=len(sol.t) - 1,
                 ode_rtol=rtol, ode_atol=atol, ode_dim=x1.size, ymax=ymax,
                 scale=gain * beta_int * ymax * (1 + 1 / vmin),
                 inputs={"x_1": x1, "data_mean": g.mean, "data_var": g.var, "t_end": t_end})


@clause("sde.probability_flow", "matches_reference")
@given(x=batch_any(), data=st.data(), t=finite(0.0, 1.0), br=_beta_range())
def test_probability_flow_matches_reference(impl: Any, clause_id: str, x: F, data: st.DataObject, t: float,
                                            br: tuple[float, float]) -> None:
    x, t = round_to(impl.dtype, x), float(round_to(impl.dtype, t))
    s = round_to(impl.dtype, data.draw(st.lists(finite(-10, 10), min_size=x.size, max_size=x.size)))
    s = np.asarray(s).reshape(x.shape)
    beta = float(_beta(t, *br))
    assert_close(clause_id, need(impl, clause_id)(x, t, s, *br), ref.probability_flow(x, t, s, *br),
                 dtype=impl.dtype, scale=beta * (np.abs(x) + np.abs(s)), gain=1.0, **NO_ODE, ymax=0.0)


@clause("sde.probability_flow", "rejects_out_of_domain")
@given(case=st.sampled_from(_BAD_FIELD))
def test_probability_flow_rejects_out_of_domain(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *case)
