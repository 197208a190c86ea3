"""Conformance: spec family ``sde`` (VP-SDE, reverse-time SDE, probability-flow ODE)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from diffrl_ref import spec
from diffrl_ref.reference import sde as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.gaussian_oracle import GaussianData, propagate_affine
from diffrl_ref.suite.orders import check_order
from diffrl_ref.suite.stats import assert_gaussian_moments
from diffrl_ref.suite.strategies import batch_any, finite

F = np.ndarray

#: Unit roundoff of the float64 computations in this file (the oracles, the Runge-Kutta runs).
EPS64 = spec.EPS["float64"]
#: Runge-Kutta steps per unit time of the ODE-based properties. The times k / RK_STEPS and the
#: stage times in between are dyadic with at most 8 significant bits, so the implementation gets
#: them exactly in every dtype (bfloat16 included). RK4's own error is common to the implementation's
#: run and the exact-coefficient run it is compared with, so it needs no bound (spec: sde.vp).
RK_STEPS = 128
NO_ODE: dict[str, Any] = {"ode_cal": 0.0, "ode_prop": 0.0}


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


def _rk4(rhs: Callable[[float, F], F], y0: F, t0: float, t1: float, n: int) -> F:
    """Classical Runge-Kutta method (Kutta 1901) with n fixed steps from t0 to t1."""
    h, y = (t1 - t0) / n, np.asarray(y0, dtype=np.float64)
    for k in range(n):
        t = t0 + k * h
        k1 = rhs(t, y)
        k2 = rhs(t + h / 2, y + h / 2 * k1)
        k3 = rhs(t + h / 2, y + h / 2 * k2)
        k4 = rhs(t + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def _rk4_propagation(a: Callable[[float], F], d: Callable[[int], F], t0: float, t1: float, n: int) -> F:
    """Bound on how far n RK4 steps of y' = a(t) y + c(t) move when each right-hand-side value errs by d.

    A stage error of at most D changes one step's result by at most h D (1 + z/2 + z^2/6 + z^3/24),
    z = h max |a| over the step (expand the four stages); later steps multiply it by their exact
    RK4 multipliers M_k = 1 + h (a_1 + 2 a_2 (1 + h a_1 / 2) + ...) / 6, the step applied to y = 1.
    d(m) bounds D over step m (0-based). Returns sum_m |M_{m+1} ... M_n| h D_m (1 + ...).
    """
    h = (t1 - t0) / n
    total, carry = 0.0 * a(t0), 1.0 + 0.0 * a(t0)
    for k in range(n - 1, -1, -1):  # last step first, so carry is the product of the later multipliers
        t = t0 + k * h
        a1, a2, a4 = a(t), a(t + h / 2), a(t + h)
        z = abs(h) * np.maximum(np.maximum(np.abs(a1), np.abs(a2)), np.abs(a4))
        total = total + np.abs(carry) * abs(h) * d(k) * (1 + z / 2 + z**2 / 6 + z**3 / 24)
        k1 = a1
        k2 = a2 * (1 + h / 2 * k1)
        k3 = a2 * (1 + h / 2 * k2)
        k4 = a4 * (1 + h * k3)
        carry = carry * (1 + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    return np.asarray(total)


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
@given(br=_beta_range(), k=st.integers(7, RK_STEPS))
def test_vp_transition_kernel(impl: Any, clause_id: str, br: tuple[float, float], k: int) -> None:
    b0, b1 = br
    t_end = k / RK_STEPS
    # f(1, t) = a(t) and g(t) at every RK4 stage time j / (2 RK_STEPS), in one call (t given per row)
    ts = np.arange(2 * k + 1) / (2 * RK_STEPS)
    f, g = need(impl, clause_id)(np.ones((ts.size, 1)), ts, b0, b1)
    a_tab, g2_tab = np.asarray(f, dtype=np.float64)[:, 0], np.asarray(g, dtype=np.float64)[:, 0] ** 2

    def moments(t: float, y: F) -> F:  # moment ODEs of the linear SDE with the implementation's a, g
        j = int(round(t * 2 * RK_STEPS))
        return np.array([a_tab[j] * y[0], 2 * a_tab[j] * y[1] + g2_tab[j]])

    def moments_exact(t: float, y: F) -> F:  # the same with a = -beta / 2, g^2 = beta (Song et al. Eq. 11)
        beta = float(_beta(t, b0, b1))
        return np.array([-0.5 * beta * y[0], beta * (1 - y[1])])

    ab = float(_ab(t_end, b0, b1))
    kernel = np.array([np.sqrt(ab), 1 - ab])  # mean coefficient and variance of q(x_t | x_0)
    y_exact = _rk4(moments_exact, np.array([1.0, 0.0]), 0.0, t_end, k)  # = kernel + RK4's own error
    # The implementation's f and g each within 4 eps relative (the rule's one-implementation share):
    # stage errors 4 eps |a| |mean| and 8 eps |a| |var| + 9 eps g^2, with |a| = beta / 2, |y| <= 1.
    h = 1 / RK_STEPS
    ode_prop = _rk4_propagation(lambda t: np.array([-0.5, -1.0]) * float(_beta(t, b0, b1)),
                                lambda i: np.array([2.0, 13.0]) * float(_beta((i + 1) * h, b0, b1)), 0.0, t_end, k)
    # Same grid, so RK4's discretization error is common to both runs; 8 eps64 a step for each run's arithmetic.
    assert_close(clause_id, _rk4(moments, np.array([1.0, 0.0]), 0.0, t_end, k), y_exact, dtype=impl.dtype,
                 what="RK4 of the moment ODEs with the implementation's f, g vs with a = -beta/2, g^2 = beta",
                 scale=0.0, ode_cal=16 * k * EPS64, ode_prop=ode_prop,
                 inputs={"t": t_end, "beta_min": b0, "beta_max": b1, "kernel": kernel,
                         "|exact-coefficient RK4 - kernel|": np.abs(y_exact - kernel)})


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


#: Order of the Taylor-series solution of the moment ODEs (see _moments_taylor).
TAYLOR_ORDER = 20


def _moments_taylor(b0: float, b1: float, t_end: float, k: int) -> F:
    """The moment ODEs d mean/dt = -beta mean / 2, d var/dt = beta (1 - var) by the Taylor-series method.

    k steps of h = t_end / k from mean = 1, var = 0. With beta(t0 + s) = beta_0 + beta_1 s the
    Taylor coefficients of y' = -w beta y + c beta about t0 obey (j + 1) Y_{j+1} = -w (beta_0 Y_j +
    beta_1 Y_{j-1}) + c (beta_0 [j = 0] + beta_1 [j = 1]), w = (1/2, 1), c = (0, 1). The terms
    fall like (beta_max h + beta_1 h^2)^j / j! <= 0.2^j / j! for h <= 1/128, so order 20 truncates
    below 1e-30: the result is exact up to float64 arithmetic.
    """
    w, c = np.array([0.5, 1.0]), np.array([0.0, 1.0])
    h, y = t_end / k, np.array([1.0, 0.0])
    for m in range(k):
        beta0, beta1 = float(_beta(m * h, b0, b1)), b1 - b0
        coef = [y, -w * beta0 * y + c * beta0]
        for j in range(1, TAYLOR_ORDER):
            coef.append((-w * (beta0 * coef[j] + beta1 * coef[j - 1]) + c * beta1 * (j == 1)) / (j + 1))
        y = sum(cj * h**j for j, cj in enumerate(coef))
    return np.asarray(y)


@clause("sde.vp_marginal", "moment_odes")
@given(br=_beta_range(), k=st.integers(7, RK_STEPS))
def test_vp_marginal_moment_odes(impl: Any, clause_id: str, br: tuple[float, float], k: int) -> None:
    b0, b1 = br
    t_end = k / RK_STEPS  # dyadic: exact in every dtype
    y = _moments_taylor(b0, b1, t_end, k)
    a = float(np.asarray(need(impl, clause_id)(t_end, b0, b1)))
    # ode_cal: the float64 arithmetic of the Taylor steps, at most 8 eps64 a step (a sum of decreasing
    # terms led by |y| <= 1, carried on by propagators of size <= 1).
    assert_close(clause_id, [np.sqrt(a), 1 - a], y, dtype=impl.dtype,
                 what="[sqrt(ab), 1 - ab] vs solution of d mean/dt = -beta mean / 2, d var/dt = beta (1 - var)",
                 expo=_expo(t_end, b0, b1), scale=1.0, ode_cal=8 * k * EPS64, ode_prop=0.0,
                 inputs={"t": t_end, "beta_min": b0, "beta_max": b1})


#: Candidate step counts K of ddpm_limit, finest first (see diffrl_ref.suite.orders.check_order); K > beta_max = 20
#: keeps every factor 1 - beta(t_k) / K positive.
KS_DDPM = [np.array([64, 128, 256, 512]), np.array([32, 64, 128, 256])]


@clause("sde.vp_marginal", "ddpm_limit")
@given(br=_beta_range())
def test_vp_marginal_ddpm_limit(impl: Any, clause_id: str, br: tuple[float, float]) -> None:
    b0, b1 = br
    t_check = np.array([0.25, 0.5, 0.75, 1.0])  # dyadic: exact in every dtype
    fn = need(impl, clause_id)
    # The implementation's alpha_bar within (1 + 4 expo) eps relative, half the rule's 8 eps (1 + expo);
    # the test's closed form within the same at eps64. |log(1 + r)| <= r / (1 - r).
    r = 4 * (1 + _expo(t_check, b0, b1)) * (spec.EPS[impl.dtype] + EPS64)
    tol = np.where(r < 1, r / (1 - np.where(r < 1, r, 0.0)), np.inf)

    def log_disc(K: int) -> F:
        # DDPM with beta_k = beta(t_k) / K on the grid t_k = k / K (Song et al. Appendix B)
        k = np.arange(1, K + 1)
        return np.asarray(np.log(np.cumprod(1 - _beta(k / K, b0, b1) / K)[(t_check * K).astype(int) - 1]))

    def scheme64(K: int) -> tuple[F, F]:
        return np.abs(log_disc(K) - np.log(_ab(t_check, b0, b1))), tol

    def run(K: int) -> F:
        return np.asarray(np.abs(log_disc(K) - np.log(np.asarray(fn(t_check, b0, b1), dtype=np.float64))))

    check_order(clause_id, impl.dtype, KS_DDPM, scheme64, run, 1,
                 f"discrete DDPM log alpha_bar -> log alpha_bar(t) at t = {t_check}; beta_min={b0}, beta_max={b1}")


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


def _em_law(a: F, b: F, da: F, db: F, g: GaussianData, ts: F, b0: float, b1: float) -> tuple[F, F, F]:
    """Exact law of the Euler-Maruyama chain of the reverse SDE on the times ts (from t = 1 down).

    Step n: x <- x - (a_n x + b_n) dt + g(t_n) sqrt(dt) z, a, b of shape (N, d). Returns the mean,
    the variance and a bound on how far both move (summed) when a_n, b_n err by at most da_n,
    db_n: the mean's error is multiplied by |1 - a dt| and gains dt (da |mean| + db) per step,
    the variance's by (1 - a dt)^2 and gains 2 |1 - a dt| dt da var; 8 eps64 of each step's
    terms cover the float64 arithmetic of this and of the exact chain.
    """
    mean, var = g.marginal(float(_ab(ts[0], b0, b1)))
    bm, bv = np.zeros_like(mean), np.zeros_like(mean)
    for n in range(ts.size - 1):
        dt, beta = ts[n] - ts[n + 1], float(_beta(ts[n], b0, b1))
        q = 1 - a[n] * dt
        bm = np.abs(q) * bm + dt * (da[n] * np.abs(mean) + db[n]) + 8 * EPS64 * (np.abs(q * mean) + dt * np.abs(b[n]))
        bv = q**2 * bv + 2 * np.abs(q) * dt * da[n] * var + 8 * EPS64 * (q**2 * var + beta * dt)
        mean, var = propagate_affine(mean, var, q, -b[n] * dt, beta * dt)
    return mean, var, bm + bv


#: End time of the reverse-SDE runs: Song et al.'s epsilon = 1e-3 (a domain choice, not a tolerance).
T_END = 1e-3
#: Candidate step counts N of em_first_order, finest first (see diffrl_ref.suite.orders.check_order).
NS_EM = [np.array([32, 64, 128, 256]), np.array([16, 32, 64, 128]), np.array([8, 16, 32, 64])]


@clause("sde.reverse_drift", "em_first_order")
@given(g=_gaussian(), br=_beta_range(hi=20.0))
def test_reverse_drift_em_first_order(impl: Any, clause_id: str, g: GaussianData, br: tuple[float, float]) -> None:
    b0, b1 = br
    fn = need(impl, clause_id)
    eps = spec.EPS[impl.dtype]

    def grid(N: int) -> tuple[F, F, F]:
        ts = round_to(impl.dtype, np.linspace(1.0, T_END, N + 1))  # times the implementation represents
        mu, v = g.marginal(float(_ab(ts[-1], b0, b1)))
        return ts, mu, v

    def scheme64(N: int) -> tuple[F, F]:
        ts, mu, v = grid(N)
        # The exact drift f - g^2 score* (Song et al. Eq. 6) = a x + b, a = beta (1/v - 1/2), b = -beta mu / v.
        beta = _beta(ts[:-1, None], b0, b1)
        mu_t, v_t = g.marginal(_ab(ts[:-1], b0, b1))
        a_ex, b_ex = beta * (1 / v_t - 0.5), -beta * mu_t / v_t
        # The implementation's drift at the probes x = 0 and x = 1 is within 8 eps (|drift| + beta (|x| +
        # |score|)) each (half the rule); a is their difference, b the first.
        e0 = 8 * eps * (np.abs(b_ex) + beta * np.abs(mu_t) / v_t)
        e1 = 8 * eps * (np.abs(a_ex + b_ex) + beta * (1 + np.abs(1 - mu_t) / v_t))
        mean, var, _ = _em_law(a_ex, b_ex, 0 * a_ex, 0 * b_ex, g, ts, b0, b1)
        _, _, bound = _em_law(a_ex, b_ex, e0 + e1, e0, g, ts, b0, b1)
        return np.abs(mean - mu) + np.abs(var - v), bound

    def run(N: int) -> F:
        ts, mu, v = grid(N)
        a, b = _field_coefficients(fn, g, ts[:-1], b0, b1)
        mean, var, _ = _em_law(a, b, 0 * a, 0 * b, g, ts, b0, b1)
        return np.asarray(np.abs(mean - mu) + np.abs(var - v))

    check_order(clause_id, impl.dtype, NS_EM, scheme64, run, 1,
                 f"law of the Euler-Maruyama chain -> q(t_end), error |mean - mu| + |var - v| per coordinate; "
                 f"data mean {g.mean}, var {g.var}, beta_min={b0}, beta_max={b1}")


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
    kw: dict[str, Any] = dict(NO_ODE)
    assert_close(clause_id, a * mu + b, dmu, dtype=impl.dtype, what="d mean/dt = a mean + b", scale=scale,
                 inputs={"t": t, "data_mean": g.mean, "data_var": g.var}, **kw)
    assert_close(clause_id, 2 * a * v, dv, dtype=impl.dtype, what="d var/dt = 2 a v", scale=scale,
                 inputs={"t": t, "data_mean": g.mean, "data_var": g.var}, **kw)


@clause("sde.probability_flow", "flow_map")
@given(g=_gaussian(lo=0.1, hi=10.0), br=_beta_range(), k=st.integers(1, RK_STEPS // 2), data=st.data())
def test_probability_flow_flow_map(impl: Any, clause_id: str, g: GaussianData, br: tuple[float, float], k: int,
                                   data: st.DataObject) -> None:
    b0, b1 = br
    fn = need(impl, clause_id)
    d = g.mean.size
    t_end, n = k / RK_STEPS, RK_STEPS - k  # n RK4 steps of -1/RK_STEPS from t = 1: dyadic times
    ab1 = float(_ab(1.0, b0, b1))
    mu1, v1 = g.marginal(ab1)
    z = np.asarray(data.draw(st.lists(finite(-4.0, 4.0), min_size=4 * d, max_size=4 * d))).reshape(4, d)
    x1 = mu1 + np.sqrt(v1) * z

    def field(x: F, t: float) -> F:
        return np.asarray(fn(x, t, g.score(x, float(_ab(t, b0, b1))), b0, b1), dtype=np.float64)

    def a_exact(t: float) -> F:  # the exact field (Song et al. Eq. 13, Gaussian score) is a(t) x + b(t)
        beta, v = float(_beta(t, b0, b1)), g.marginal(float(_ab(t, b0, b1)))[1]
        return np.asarray(beta * (1 / v - 1) / 2)

    stages: list[F] = []  # per stage of the exact run: the eps-coefficient of the field's error bound

    def field_exact(t: float, x: F) -> F:
        beta = float(_beta(t, b0, b1))
        mu, v = g.marginal(float(_ab(t, b0, b1)))
        s = -(x - mu) / v
        # The implementation's field within 8 eps beta (|x| + |s|) (half the rule; the score's rounding
        # to the dtype included) plus |a| eps/2 |x| from rounding x.
        stages.append(8 * beta * (np.abs(x) + np.abs(s)) + 0.5 * np.abs(a_exact(t)) * np.abs(x))
        return np.asarray(-0.5 * beta * x - 0.5 * beta * s)

    flow = g.flow(x1, ab1, float(_ab(t_end, b0, b1)))
    x_exact = _rk4(field_exact, x1, 1.0, t_end, n)  # = the exact flow map + RK4's own error
    gain = float(np.max(np.sqrt(np.maximum(g.var, 1.0) / np.minimum(g.var, 1.0))))  # |sqrt(v_end / v_t)|
    # Same grid, so RK4's discretization error is common to both runs; 8 eps64 a step of each run's float64
    # arithmetic, carried at most by the flow's gain (the RK4 multipliers differ from it by O(h^5)).
    ode_cal = 16 * n * EPS64 * gain * float(np.max(np.abs(x_exact)) + np.max(np.abs(x1)))
    ode_prop = _rk4_propagation(a_exact, lambda m: np.max(np.asarray(stages[4 * m: 4 * m + 4]), axis=0), 1.0, t_end, n)
    assert_close(clause_id, _rk4(lambda t, x: field(x, t), x1, 1.0, t_end, n), x_exact, dtype=impl.dtype,
                 what="RK4 of the implementation's field vs RK4 of the exact field (Eq. 13), from t = 1 to t_end",
                 scale=0.0, ode_cal=ode_cal, ode_prop=ode_prop,
                 inputs={"x_1": x1, "data_mean": g.mean, "data_var": g.var, "t_end": t_end,
                         "flow map": flow, "|exact-field RK4 - flow map|": np.abs(x_exact - flow)})


@clause("sde.probability_flow", "matches_reference")
@given(x=batch_any(), data=st.data(), t=finite(0.0, 1.0), br=_beta_range())
def test_probability_flow_matches_reference(impl: Any, clause_id: str, x: F, data: st.DataObject, t: float,
                                            br: tuple[float, float]) -> None:
    x, t = round_to(impl.dtype, x), float(round_to(impl.dtype, t))
    s = round_to(impl.dtype, data.draw(st.lists(finite(-10, 10), min_size=x.size, max_size=x.size)))
    s = np.asarray(s).reshape(x.shape)
    beta = float(_beta(t, *br))
    assert_close(clause_id, need(impl, clause_id)(x, t, s, *br), ref.probability_flow(x, t, s, *br),
                 dtype=impl.dtype, scale=beta * (np.abs(x) + np.abs(s)), **NO_ODE)


@clause("sde.probability_flow", "rejects_out_of_domain")
@given(case=st.sampled_from(_BAD_FIELD))
def test_probability_flow_rejects_out_of_domain(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *case)
