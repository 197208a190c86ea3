"""Conformance: spec family ``diffuser`` (Janner, Du, Tenenbaum and Levine, ICML 2022).

Oracles: bit-for-bit layout and overwrite checks (packing, splitting and inpainting copy
values); the DDPM mean and variance formed here in float64 from the schedule; the exactly
tilted Gaussian kernel for a linear return and the exact Bayes posterior for a Gaussian
likelihood (guided step); the exact Gaussian law of the whole eps*-driven chain (sample).
The reference is only the oracle of matches_reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from diffrl_ref.reference import diffuser as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.gaussian_oracle import GaussianData, propagate_affine
from diffrl_ref.suite.networks import MLP, time_embedding
from diffrl_ref.suite.stats import assert_gaussian_moments
from diffrl_ref.suite.strategies import betas, finite

F = NDArray[np.float64]
VARIANCES = ("beta", "beta_tilde")
_N = 20000  # chains per statistical check
_MISH_LIP = 1.1  # max |d/dx x tanh(softplus(x))| ~ 1.0998


# ---- helpers --------------------------------------------------------------------------


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


def _snap(v: float) -> float:
    """|v| < 1e-12 becomes 0 (keeps products of drawn values away from underflow)."""
    return 0.0 if abs(v) < 1e-12 else v


def _arr(shape: tuple[int, ...], scale: float) -> st.SearchStrategy[F]:
    return hnp.arrays(np.float64, shape, elements=finite(-scale, scale).map(_snap))


def _ab(b: F) -> F:
    return np.concatenate([[1.0], np.cumprod(1.0 - b)])


def _coefs(b: F, k: Any, B: int) -> dict[str, F]:
    """beta_k, alpha_k, alpha_bar_k, alpha_bar_{k-1}, gap and k per row, shaped (B, 1, 1) for plans."""
    ab = _ab(b)
    kk = np.broadcast_to(np.asarray(k), (B,)).astype(np.int64)
    col = (B, 1, 1)
    beta = b[kk - 1].reshape(col)
    return {"beta": beta, "alpha": 1.0 - beta, "ab": ab[kk].reshape(col), "ab_prev": ab[kk - 1].reshape(col),
            "gap": (1.0 - ab[np.maximum(kk - 1, 1)]).reshape(col), "k": kk.reshape(col).astype(np.float64)}


def _mu(x: F, e: F, c: dict[str, F]) -> F:
    """DDPM reverse mean (Ho et al., Eq. 11)."""
    return (x - c["beta"] / np.sqrt(1.0 - c["ab"]) * e) / np.sqrt(c["alpha"])


def _sigma(c: dict[str, F], variance: str) -> F:
    """Sigma_k: sigma_k^2 for k >= 2, 0 at k = 1 (the noiseless last step)."""
    s2 = c["beta"] if variance == "beta" else (1.0 - c["ab_prev"]) / (1.0 - c["ab"]) * c["beta"]
    return np.where(c["k"] > 1, s2, 0.0)


def _size(c: dict[str, F], *arrays: F) -> F:
    """scale of the rule: summed magnitudes over sqrt(alpha_k)."""
    return sum((np.abs(a) for a in arrays), np.zeros(1)) / np.sqrt(c["alpha"])


def _const_grad(c: F) -> Callable[[F], F]:
    return lambda t: np.broadcast_to(c, np.shape(t)).astype(np.float64).copy()


def _gauss_grad(y: F, r: float) -> Callable[[F], F]:
    """Gradient of J(tau) = -||y - tau||^2 / (2 r): the log-likelihood of N(y; tau, r I)."""
    return lambda t: (y - _f64(t)) / r


def _mask_full(m: NDArray[Any], shape: tuple[int, ...]) -> NDArray[np.bool_]:
    return np.broadcast_to(np.asarray(m, dtype=bool), shape)


# ---- diffuser.trajectory --------------------------------------------------------------


@st.composite
def _sa(draw: st.DrawFn) -> tuple[F, F]:
    B, L, ds, da = (draw(st.integers(1, n)) for n in (4, 6, 3, 3))
    return draw(_arr((B, L, ds), 10.0)), draw(_arr((B, L, da), 10.0))


@clause("diffuser.trajectory", "layout")
@given(sa=_sa())
def test_trajectory_layout(impl: Any, clause_id: str, sa: tuple[F, F]) -> None:
    s, a = (round_to(impl.dtype, x) for x in sa)
    (B, L, ds), da = s.shape, a.shape[2]
    tau = _f64(need(impl, clause_id)(s, a))
    assert_that(tau.shape == (B, L, ds + da), clause_id, f"shape {tau.shape}, expected (B, L, ds + da) = "
                f"{(B, L, ds + da)}")
    assert_that(bool(np.array_equal(tau[..., :ds], s)), clause_id, "tau[:, t, :ds] is not s_t (states first)")
    assert_that(bool(np.array_equal(tau[..., ds:], a)), clause_id, "tau[:, t, ds:] is not a_t")


@clause("diffuser.trajectory", "round_trip")
@given(sa=_sa())
def test_trajectory_round_trip(impl: Any, clause_id: str, sa: tuple[F, F]) -> None:
    s, a = (round_to(impl.dtype, x) for x in sa)
    (B, L, ds), da = s.shape, a.shape[2]
    tau = _f64(need(impl, clause_id)(s, a))
    assert_that(tau.shape == (B, L, ds + da) and bool(np.all(np.isfinite(tau))), clause_id,
                f"shape {tau.shape} (expected {(B, L, ds + da)}) or non-finite entries")
    s2, a2 = ref.split_trajectory(tau, ds)  # the reference's inverse: a failure is this clause's
    assert_that(s2.shape == s.shape and bool(np.array_equal(s2, s)), clause_id,
                "split_trajectory(trajectory(s, a)) does not give back the states")
    assert_that(a2.shape == a.shape and bool(np.array_equal(a2, a)), clause_id,
                "split_trajectory(trajectory(s, a)) does not give back the actions")


@clause("diffuser.trajectory", "matches_reference")
@given(sa=_sa())
def test_trajectory_matches_reference(impl: Any, clause_id: str, sa: tuple[F, F]) -> None:
    s, a = (round_to(impl.dtype, x) for x in sa)
    assert_close(clause_id, need(impl, clause_id)(s, a), ref.trajectory(s, a), dtype=impl.dtype)


_S = np.ones((2, 3, 2))
_A = np.ones((2, 3, 1))
_TRAJ_BAD: dict[str, tuple[Any, ...]] = {
    "states NaN": (np.full((2, 3, 2), np.nan), _A),
    "actions inf": (_S, np.full((2, 3, 1), np.inf)),
    "different L": (_S, np.ones((2, 4, 1))),
    "different B": (_S, np.ones((3, 3, 1))),
    "2-D states": (np.ones((3, 2)), np.ones((3, 1))),
    "empty action axis": (_S, np.ones((2, 3, 0))),
}


@clause("diffuser.trajectory", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_TRAJ_BAD)))
def test_trajectory_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_TRAJ_BAD[case])


# ---- diffuser.split_trajectory --------------------------------------------------------


@st.composite
def _tau_ds(draw: st.DrawFn) -> tuple[F, int]:
    B, L, D = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(2, 6))
    return draw(_arr((B, L, D), 10.0)), draw(st.integers(1, D - 1))


@clause("diffuser.split_trajectory", "layout")
@given(case=_tau_ds())
def test_split_layout(impl: Any, clause_id: str, case: tuple[F, int]) -> None:
    tau, ds = case
    tau = round_to(impl.dtype, tau)
    s, a = (_f64(x) for x in need(impl, clause_id)(tau, ds))
    assert_that(s.shape == tau.shape[:2] + (ds,) and a.shape == tau.shape[:2] + (tau.shape[2] - ds,), clause_id,
                f"shapes {s.shape}, {a.shape} for tau {tau.shape} and ds = {ds}")
    assert_that(bool(np.array_equal(s, tau[..., :ds])), clause_id, "states are not tau[..., :ds]")
    assert_that(bool(np.array_equal(a, tau[..., ds:])), clause_id, "actions are not tau[..., ds:]")


@clause("diffuser.split_trajectory", "round_trip")
@given(case=_tau_ds())
def test_split_round_trip(impl: Any, clause_id: str, case: tuple[F, int]) -> None:
    tau, ds = case
    tau = round_to(impl.dtype, tau)
    s, a = (_f64(x) for x in need(impl, clause_id)(tau, ds))
    assert_that(s.shape == tau.shape[:2] + (ds,) and a.shape == tau.shape[:2] + (tau.shape[2] - ds,)
                and bool(np.all(np.isfinite(s)) and np.all(np.isfinite(a))), clause_id,
                f"shapes {s.shape}, {a.shape} for tau {tau.shape} and ds = {ds}, or non-finite entries")
    back = ref.trajectory(s, a)  # the reference's inverse: a failure is this clause's
    assert_that(back.shape == tau.shape and bool(np.array_equal(back, tau)), clause_id,
                "trajectory(*split_trajectory(tau, ds)) is not tau")


@clause("diffuser.split_trajectory", "matches_reference")
@given(case=_tau_ds())
def test_split_matches_reference(impl: Any, clause_id: str, case: tuple[F, int]) -> None:
    tau, ds = case
    tau = round_to(impl.dtype, tau)
    got, want = need(impl, clause_id)(tau, ds), ref.split_trajectory(tau, ds)
    assert_close(clause_id, got[0], want[0], dtype=impl.dtype, what="states")
    assert_close(clause_id, got[1], want[1], dtype=impl.dtype, what="actions")


_T = np.ones((2, 3, 3))
_SPLIT_BAD: dict[str, tuple[Any, ...]] = {
    "state_dim 0": (_T, 0),
    "state_dim D": (_T, 3),
    "state_dim > D": (_T, 5),
    "state_dim negative": (_T, -1),
    "state_dim float": (_T, 1.5),
    "tau NaN": (np.full((2, 3, 3), np.nan), 1),
    "tau 2-D": (np.ones((3, 3)), 1),
}


@clause("diffuser.split_trajectory", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_SPLIT_BAD)))
def test_split_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    fn = need(impl, clause_id)
    assert_raises_domain(lambda *a: fn(*a)[1], clause_id, *_SPLIT_BAD[case])


# ---- diffuser.inpaint -----------------------------------------------------------------


@st.composite
def _mask(draw: st.DrawFn, B: int, L: int, D: int) -> NDArray[np.bool_]:
    """State conditioning (s_0, or s_0 and a goal s_{L-1} on the first ds features) or an arbitrary mask."""
    kind = draw(st.sampled_from(["s0", "s0_goal", "shared", "per_row"]))
    ds = draw(st.integers(1, D))
    if kind in ("s0", "s0_goal"):
        m = np.zeros((L, D), dtype=bool)
        m[0, :ds] = True
        if kind == "s0_goal":
            m[-1, :ds] = True
        return m
    return draw(hnp.arrays(np.bool_, (L, D) if kind == "shared" else (B, L, D)))


@st.composite
def _inpaint_case(draw: st.DrawFn) -> tuple[F, NDArray[np.bool_], F]:
    B, L, D = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    return draw(_arr((B, L, D), 10.0)), draw(_mask(B, L, D)), draw(_arr((B, L, D), 10.0))


@clause("diffuser.inpaint", "conditioned_entries_set")
@given(case=_inpaint_case())
def test_inpaint_conditioned(impl: Any, clause_id: str, case: tuple[F, NDArray[np.bool_], F]) -> None:
    tau, m, v = case
    tau, v = round_to(impl.dtype, tau), round_to(impl.dtype, v)
    out = _f64(need(impl, clause_id)(tau, m, v))
    M = _mask_full(m, tau.shape)
    assert_that(out.shape == tau.shape, clause_id, f"shape {out.shape}, expected {tau.shape}")
    assert_that(bool(np.array_equal(out[M], v[M])), clause_id,
                f"masked entries differ from the condition at {np.argwhere(M & (out != v))[:3].tolist()}")


@clause("diffuser.inpaint", "others_untouched")
@given(case=_inpaint_case())
def test_inpaint_others_untouched(impl: Any, clause_id: str, case: tuple[F, NDArray[np.bool_], F]) -> None:
    tau, m, v = case
    tau, v = round_to(impl.dtype, tau), round_to(impl.dtype, v)
    out = _f64(need(impl, clause_id)(tau, m, v))
    M = _mask_full(m, tau.shape)
    assert_that(out.shape == tau.shape and bool(np.array_equal(out[~M], tau[~M])), clause_id,
                f"entries outside the mask changed at {np.argwhere(~M & (out != tau))[:3].tolist()}")


@clause("diffuser.inpaint", "no_side_effects")
@given(case=_inpaint_case())
def test_inpaint_no_side_effects(impl: Any, clause_id: str, case: tuple[F, NDArray[np.bool_], F]) -> None:
    tau, m, v = case
    tau, v = round_to(impl.dtype, tau), round_to(impl.dtype, v)
    saved = (tau.copy(), m.copy(), v.copy())
    need(impl, clause_id)(tau, m, v)
    for name, now, before in zip(("tau", "mask", "values"), (tau, m, v), saved, strict=True):
        assert_that(bool(np.array_equal(now, before)), clause_id, f"the call modified its argument {name}")


@clause("diffuser.inpaint", "matches_reference")
@given(case=_inpaint_case())
def test_inpaint_matches_reference(impl: Any, clause_id: str, case: tuple[F, NDArray[np.bool_], F]) -> None:
    tau, m, v = case
    tau, v = round_to(impl.dtype, tau), round_to(impl.dtype, v)
    assert_close(clause_id, need(impl, clause_id)(tau, m, v), ref.inpaint(tau, m, v), dtype=impl.dtype)


_M0 = np.zeros((3, 2), dtype=bool)
_M0[0] = True
_X3 = np.ones((2, 3, 2))
_INPAINT_BAD: dict[str, tuple[Any, ...]] = {
    "tau NaN": (np.full((2, 3, 2), np.nan), _M0, _X3),
    "values NaN": (_X3, _M0, np.full((2, 3, 2), np.nan)),
    "values shape": (_X3, _M0, np.ones((2, 3, 1))),
    "mask not boolean": (_X3, _M0.astype(np.float64), _X3),
    "mask shape": (_X3, np.ones((2, 2), dtype=bool), _X3),
    "tau 2-D": (np.ones((3, 2)), _M0, np.ones((3, 2))),
}


@clause("diffuser.inpaint", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_INPAINT_BAD)))
def test_inpaint_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_INPAINT_BAD[case])


# ---- diffuser.guided_step -------------------------------------------------------------


@st.composite
def _step_case(draw: st.DrawFn, k_lo: int = 1, max_K: int = 20) -> dict[str, Any]:
    """A schedule, a step (scalar or per row, >= k_lo), plans tau_k, eps_hat, z, a variance and a scale."""
    b = draw(betas(min_K=k_lo, max_K=max_K))
    K = b.size
    B, L, D = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    if draw(st.booleans()):
        k: Any = np.asarray(draw(st.lists(st.integers(k_lo, K), min_size=B, max_size=B)), dtype=np.int64)
    else:
        k = draw(st.integers(k_lo, K))
    return {"b": b, "k": k, "x": draw(_arr((B, L, D), 10.0)), "e": draw(_arr((B, L, D), 5.0)),
            "z": draw(_arr((B, L, D), 5.0)), "variance": draw(st.sampled_from(VARIANCES)),
            "s": draw(finite(0.0, 5.0).map(_snap)), "y": draw(_arr((L, D), 5.0)), "r": draw(finite(0.1, 100.0)),
            "c": draw(_arr((L, D), 5.0))}


def _rounded(impl: Any, case: dict[str, Any]) -> tuple[F, Any, F, F, F, float]:
    b, x, e, z = (round_to(impl.dtype, case[n]) for n in ("b", "x", "e", "z"))
    return b, case["k"], x, e, z, float(round_to(impl.dtype, case["s"]))


@clause("diffuser.guided_step", "unguided_is_ddpm_step")
@given(case=_step_case())
def test_guided_step_unguided(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    b, k, x, e, z, s = _rounded(impl, case)
    var = case["variance"]
    B = x.shape[0]
    c = _coefs(b, k, B)
    want = _mu(x, e, c) + np.sqrt(_sigma(c, var)) * z  # ddpm.reverse_step (Ho et al., Eq. 11), formed here
    step = need(impl, clause_id)
    for what, grad, scale in (("grad_J = None", None, s), ("grad_J = 0", _const_grad(np.zeros(x.shape[1:])), s),
                              ("scale = 0", _const_grad(case["c"]), 0.0)):
        got = step(x, e, b, k, z, grad, scale, var)
        assert_close(clause_id, got, want, dtype=impl.dtype, what=f"{what}: mu + sqrt(Sigma_k) z",
                     K=b.size, scale=_size(c, x, e, z), amp=1.0, shift=0.0, gap=c["gap"],
                     inputs={"k": c["k"], "variance": var})


@clause("diffuser.guided_step", "exact_for_linear_return")
@given(case=_step_case())
def test_guided_step_linear_return(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    b, k, x, e, z, s = _rounded(impl, case)
    var, cvec = case["variance"], case["c"]
    c = _coefs(b, k, x.shape[0])
    Sigma = _sigma(c, var)
    step = need(impl, clause_id)
    at0 = _f64(step(x, e, b, k, np.zeros_like(z), _const_grad(cvec), s, var))
    atz = _f64(step(x, e, b, k, z, _const_grad(cvec), s, var))
    # N(x; mu, Sigma) exp(s <c, x>) is proportional to N(x; mu + s Sigma c, Sigma): the tilt is exact.
    shift = s * Sigma * cvec
    assert_close(clause_id, at0, _mu(x, e, c) + shift, dtype=impl.dtype, what="mean = mu + s Sigma c",
                 K=b.size, scale=_size(c, x, e), amp=1.0, shift=np.abs(shift), gap=c["gap"],
                 inputs={"k": c["k"], "variance": var, "s": s, "Sigma": Sigma})
    # atz - at0 carries the errors of both calls: the rule gets twice their magnitudes.
    assert_close(clause_id, atz - at0, np.sqrt(Sigma) * z, dtype=impl.dtype, what="noise = sqrt(Sigma) z",
                 K=b.size, scale=2 * _size(c, x, e, z), amp=1.0, shift=2 * np.abs(shift), gap=c["gap"],
                 inputs={"k": c["k"], "variance": var, "Sigma": Sigma})


@clause("diffuser.guided_step", "first_order_gaussian")
@given(case=_step_case())
def test_guided_step_first_order_gaussian(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    b, k, x, e, z, s = _rounded(impl, case)
    var, y, r = case["variance"], case["y"], case["r"]
    c = _coefs(b, k, x.shape[0])
    Sigma = _sigma(c, var)
    got = need(impl, clause_id)(x, e, b, k, np.zeros_like(z), _gauss_grad(y, r), s, var)
    mu = _mu(x, e, c)
    delta = Sigma * (y - mu) / (Sigma + r)  # exact posterior mean of N(x; mu, Sigma) N(y; x, r I), minus mu
    assert_close(clause_id, got, mu + s * (1.0 + Sigma / r) * delta, dtype=impl.dtype,
                 what="out - mu = s (1 + Sigma/r) (exact posterior mean - mu)", K=b.size,
                 scale=_size(c, x, e) + np.abs(y), amp=1.0 + s * Sigma / r, shift=np.abs(s * Sigma * (y - mu) / r),
                 gap=c["gap"], inputs={"k": c["k"], "variance": var, "s": s, "r": r, "Sigma": Sigma})


@clause("diffuser.guided_step", "gradient_at_mean")
@given(case=_step_case(k_lo=2))
def test_guided_step_gradient_at_mean(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    b, k, x, e, z, s = _rounded(impl, case)
    var = case["variance"]
    c = _coefs(b, k, x.shape[0])
    calls: list[F] = []

    def grad(t: F) -> F:
        calls.append(_f64(t).copy())
        return _gauss_grad(case["y"], case["r"])(t)

    need(impl, clause_id)(x, e, b, k, z, grad, s, var)
    assert_that(len(calls) >= 1, clause_id, "grad_J was never called for steps k >= 2")
    for arg in calls:
        assert_that(arg.shape == x.shape, clause_id, f"grad_J called with shape {arg.shape}, expected {x.shape}")
        assert_close(clause_id, arg, _mu(x, e, c), dtype=impl.dtype, what="grad_J evaluated at mu", K=b.size,
                     scale=_size(c, x, e), amp=1.0, shift=0.0, gap=c["gap"], inputs={"k": c["k"]})


@clause("diffuser.guided_step", "linear_in_scale")
@given(case=_step_case())
def test_guided_step_linear_in_scale(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    b, k, x, e, z, s = _rounded(impl, case)
    var, y, r = case["variance"], case["y"], case["r"]
    c = _coefs(b, k, x.shape[0])
    Sigma = _sigma(c, var)
    step = need(impl, clause_id)
    grad = _gauss_grad(y, r)
    out0, out1, outs = (_f64(step(x, e, b, k, z, grad, w, var)) for w in (0.0, 1.0, s))
    shift1 = np.abs(Sigma * (y - _mu(x, e, c)) / r)
    # s (out(1) - out(0)) carries s times the errors of out(1) and out(0).
    assert_close(clause_id, outs, out0 + s * (out1 - out0), dtype=impl.dtype,
                 what="out(s) - out(0) = s (out(1) - out(0))", K=b.size,
                 scale=(2.0 + 2.0 * s) * (_size(c, x, e, z) + np.abs(y)), amp=1.0 + max(s, 1.0) * Sigma / r,
                 shift=2.0 * (1.0 + s) * shift1, gap=c["gap"], inputs={"k": c["k"], "s": s})


@clause("diffuser.guided_step", "inactive_at_k1")
@given(case=_step_case())
def test_guided_step_inactive_at_k1(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    b, k, x, e, z, s = _rounded(impl, case)
    var = case["variance"]
    B = x.shape[0]
    k = np.where(np.arange(B) % 2 == 0, 1, np.broadcast_to(k, (B,))).astype(np.int64)  # k = 1 on even rows
    step = need(impl, clause_id)
    for kk in (1, k):
        at1 = np.broadcast_to(np.asarray(kk) == 1, (B,))
        guided = _f64(step(x, e, b, kk, z, _gauss_grad(case["y"], case["r"]), max(s, 1.0), var))
        plain = _f64(step(x, e, b, kk, np.zeros_like(z), None, 0.0, var))
        assert_that(bool(np.array_equal(guided[at1], plain[at1])), clause_id,
                    f"at k = 1 the output depends on z or grad_J (variance={var!r}, k={kk}): max change "
                    f"{np.max(np.abs(guided[at1] - plain[at1])):.3e}")


@clause("diffuser.guided_step", "matches_reference")
@given(case=_step_case(), guided=st.booleans())
def test_guided_step_matches_reference(impl: Any, clause_id: str, case: dict[str, Any], guided: bool) -> None:
    b, k, x, e, z, s = _rounded(impl, case)
    var, y, r = case["variance"], case["y"], case["r"]
    c = _coefs(b, k, x.shape[0])
    Sigma = _sigma(c, var)
    grad = _gauss_grad(y, r) if guided else None
    shift = np.abs(s * Sigma * (y - _mu(x, e, c)) / r) if guided else 0.0
    assert_close(clause_id, need(impl, clause_id)(x, e, b, k, z, grad, s, var),
                 ref.guided_step(x, e, b, k, z, grad, s, var), dtype=impl.dtype, K=b.size,
                 scale=_size(c, x, e, z) + np.abs(y), amp=1.0 + s * Sigma / r, shift=shift, gap=c["gap"],
                 inputs={"k": c["k"], "variance": var, "s": s, "guided": guided})


_B3 = np.array([0.1, 0.2, 0.3])
_P = np.ones((2, 3, 2))


def _nan_grad(t: F) -> F:
    return np.full(np.shape(t), np.nan)


def _short_grad(t: F) -> F:
    return np.ones(np.shape(t)[:2])


_STEP_BAD: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "k = 0": ((_P, _P, _B3, 0, _P), {}),
    "k = K + 1": ((_P, _P, _B3, 4, _P), {}),
    "k wrong shape": ((_P, _P, _B3, np.array([1, 2, 3]), _P), {}),
    "beta = 1": ((_P, _P, np.array([0.1, 1.0]), 1, _P), {}),
    "beta = 0": ((_P, _P, np.array([0.0, 0.1]), 1, _P), {}),
    "tau NaN": ((np.full((2, 3, 2), np.nan), _P, _B3, 2, _P), {}),
    "eps_hat shape": ((_P, np.ones((2, 3, 1)), _B3, 2, _P), {}),
    "z shape": ((_P, _P, _B3, 2, np.ones((1, 3, 2))), {}),
    "2-D plans": ((np.ones((2, 3)), np.ones((2, 3)), _B3, 2, np.ones((2, 3))), {}),
    "unknown variance": ((_P, _P, _B3, 2, _P), {"variance": "fixedlarge"}),
    "scale < 0": ((_P, _P, _B3, 2, _P), {"grad_J": _const_grad(np.ones((3, 2))), "scale": -1.0}),
    "grad_J NaN": ((_P, _P, _B3, 2, _P), {"grad_J": _nan_grad}),
    "grad_J wrong shape": ((_P, _P, _B3, 2, _P), {"grad_J": _short_grad}),
}


@clause("diffuser.guided_step", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_STEP_BAD)))
def test_guided_step_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    args, kwargs = _STEP_BAD[case]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- diffuser.sample ------------------------------------------------------------------


def _plan_net(seed: int, L: int, D: int, scale: float = 1.0) -> tuple[Callable[[F, Any], F], float]:
    """An MLP eps_theta(tau, k) on the flattened plan and a bound on its Lipschitz constant in tau."""
    n, emb = L * D, 8
    net = MLP.init(seed, [n + emb, 16, 16, n], "mish", scale)

    def eps_fn(tau: F, k: Any) -> F:
        t = _f64(tau)
        e = np.broadcast_to(time_embedding(k, emb), (t.shape[0], emb))
        return net(np.concatenate([t.reshape(t.shape[0], -1), e], axis=1)).reshape(t.shape)

    (w1, _), (w2, _), (w3, _) = net.params
    lip = float(np.linalg.norm(w1[:n], 2) * np.linalg.norm(w2, 2) * np.linalg.norm(w3, 2)) * _MISH_LIP**2
    return eps_fn, lip


@st.composite
def _sample_case(draw: st.DrawFn, conditioned: bool | None = None,
                 guides: tuple[str, ...] = ("none", "linear", "gaussian")) -> dict[str, Any]:
    """A schedule (K <= 8), initial plans and noise from a seed, optional conditioning and guide."""
    b = draw(betas(max_K=8))
    B, L, D = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    noise_seed = draw(st.integers(0, 2**16))
    if conditioned is None:
        conditioned = draw(st.booleans())
    guide = draw(st.sampled_from(guides))
    return {"b": b, "shape": (B, L, D), "noise_seed": noise_seed,
            "mask": draw(_mask(B, L, D)) if conditioned else None,
            "values": draw(_arr((B, L, D), 3.0)) if conditioned else None,
            "guide": guide, "c": draw(_arr((L, D), 3.0)), "y": draw(_arr((L, D), 3.0)), "r": draw(finite(0.5, 20.0)),
            "s": draw(finite(0.0, 3.0).map(_snap)), "variance": draw(st.sampled_from(VARIANCES)),
            "seed": draw(st.integers(0, 2**16))}


def _guide(case: dict[str, Any]) -> tuple[Callable[[F], F] | None, float]:
    """The guide's gradient and its Lipschitz constant."""
    if case["guide"] == "linear":
        return _const_grad(case["c"]), 0.0
    if case["guide"] == "gaussian":
        return _gauss_grad(case["y"], case["r"]), 1.0 / case["r"]
    return None, 0.0


def _noise(impl: Any, case: dict[str, Any]) -> tuple[F, F]:
    """tau_K (B, L, D) and z (K, B, L, D), standard normal from the case's seed, rounded to the dtype."""
    rng = np.random.default_rng(case["noise_seed"])
    shape = case["shape"]
    tau_K, z = rng.standard_normal(shape), rng.standard_normal((case["b"].size, *shape))
    return round_to(impl.dtype, tau_K), round_to(impl.dtype, z)


def _run(impl: Any, fn: Callable[..., Any], case: dict[str, Any], eps_fn: Callable[[F, Any], F],
         conditioned: bool = True) -> F:
    """The chain from ``fn`` (the implementation's or the reference's sample) on the case's rounded inputs."""
    b = round_to(impl.dtype, case["b"])
    tau_K, z = _noise(impl, case)
    grad, _ = _guide(case)
    use = conditioned and case["mask"] is not None
    m, v = (case["mask"], round_to(impl.dtype, case["values"])) if use else (None, None)
    return _f64(fn(tau_K, eps_fn, b, z, grad, float(round_to(impl.dtype, case["s"])), m, v, case["variance"]))


@clause("diffuser.sample", "condition_holds_every_step")
@given(case=_sample_case(conditioned=True))
def test_sample_condition_every_step(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    eps_fn, _ = _plan_net(case["seed"], *case["shape"][1:])
    chain = _run(impl, need(impl, clause_id), case, eps_fn)
    K, shape = case["b"].size, case["shape"]
    assert_that(chain.shape == (K + 1, *shape), clause_id, f"chain shape {chain.shape}, expected {(K + 1, *shape)}")
    M = _mask_full(case["mask"], shape)
    v = round_to(impl.dtype, case["values"])
    for k in range(K + 1):
        assert_that(bool(np.array_equal(chain[k][M], v[M])), clause_id,
                    f"tau^{k} violates the condition (entries {np.argwhere(M & (chain[k] != v))[:3].tolist()})")


def _step_vars(b: F, k: int, tau: F, e_hat: F, z: F, case: dict[str, Any], lip_J: float) -> dict[str, Any]:
    c = _coefs(b, k, tau.shape[0])
    Sigma = _sigma(c, case["variance"])
    grad, _ = _guide(case)
    g = grad(_mu(tau, e_hat, c)) if grad is not None else np.zeros_like(tau)
    s = case["s"]
    return {"K": b.size, "scale": _size(c, tau, e_hat, z) + np.abs(case["y"]), "amp": 1.0 + s * Sigma * lip_J,
            "shift": np.abs(s * Sigma * g), "gap": c["gap"]}


@clause("diffuser.sample", "composition")
@given(case=_sample_case())
def test_sample_composition(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    eps_fn, _ = _plan_net(case["seed"], *case["shape"][1:])
    chain = _run(impl, need(impl, clause_id), case, eps_fn)
    # One step of the float64 reference from the implementation's own chain: a bug in the
    # implementation's guided_step or inpaint cannot fail this clause.
    step, inpaint = ref.guided_step, ref.inpaint
    b, v = round_to(impl.dtype, case["b"]), case["values"]
    tau_K, z = _noise(impl, case)
    m = case["mask"]
    grad, lip_J = _guide(case)
    s, K, B = float(round_to(impl.dtype, case["s"])), b.size, case["shape"][0]

    def cond(t: F) -> F:
        return t if m is None else _f64(inpaint(t, m, round_to(impl.dtype, v)))

    assert_that(chain.shape == (K + 1, *case["shape"]) and bool(np.all(np.isfinite(chain))), clause_id,
                f"chain shape {chain.shape} (expected {(K + 1, *case['shape'])}) or non-finite entries")
    start = cond(tau_K)
    assert_that(chain.shape[0] == K + 1 and bool(np.array_equal(chain[K], start)), clause_id,
                "chain[K] is not inpaint(tau_K)")
    for k in range(K, 0, -1):
        e_hat = _f64(eps_fn(chain[k].copy(), np.full(B, k)))
        want = cond(_f64(step(chain[k], e_hat, b, k, z[k - 1], grad, s, case["variance"])))
        assert_close(clause_id, chain[k - 1], want, dtype=impl.dtype,
                     what=f"chain[{k - 1}] = inpaint(guided_step(chain[{k}]))", steps=1, growth=1.0,
                     **_step_vars(b, k, chain[k], e_hat, z[k - 1], case, lip_J), inputs={"k": k})


def _separable_net(seed: int, K: int, L: int, D: int) -> Callable[[F, Any], F]:
    """A coordinatewise network: entry j of eps depends on entry j of tau (and k) only."""
    rng = np.random.default_rng(seed)
    a, c = rng.uniform(-1.0, 1.0, (L, D)), rng.uniform(-0.5, 0.5, (L, D))

    def eps_fn(tau: F, k: Any) -> F:
        kk = np.asarray(k, dtype=np.float64).reshape(-1, 1, 1)
        return np.tanh(_f64(tau) * a * kk / K) + c

    return eps_fn


@clause("diffuser.sample", "unconditioned_entries_unaffected")
@given(case=_sample_case(conditioned=True, guides=("none", "linear")))
def test_sample_unconditioned_entries(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    eps_fn = _separable_net(case["seed"], case["b"].size, *case["shape"][1:])
    fn = need(impl, clause_id)
    with_cond = _run(impl, fn, case, eps_fn)
    without = _run(impl, fn, case, eps_fn, conditioned=False)
    free = ~_mask_full(case["mask"], case["shape"])
    for k in range(case["b"].size + 1):
        changed = free & (with_cond[k] != without[k])
        assert_that(not bool(changed.any()), clause_id,
                    f"conditioning changed unconditioned entries of tau^{k} at {np.argwhere(changed)[:3].tolist()}")


def _vp(K: int, beta_min: float, beta_max: float) -> F:
    k = np.arange(1, K + 1)
    return 1.0 - np.exp(-beta_min / K - 0.5 * (beta_max - beta_min) * (2 * k - 1) / K**2)


@clause("diffuser.sample", "exact_law")
@given(K=st.integers(2, 8), bmax=finite(5.0, 20.0), L=st.integers(1, 3), D=st.integers(1, 2),
       m=st.lists(finite(-2.0, 2.0).map(_snap), min_size=6, max_size=6),
       s2=st.lists(finite(0.02, 1.0), min_size=6, max_size=6), c=st.lists(finite(-10.0, 10.0), min_size=6, max_size=6),
       s=finite(0.5, 2.0), variance=st.sampled_from(VARIANCES))
def test_sample_exact_law(impl: Any, clause_id: str, K: int, bmax: float, L: int, D: int, m: list[float],
                          s2: list[float], c: list[float], s: float, variance: str) -> None:
    n_feat = L * D
    data = GaussianData.of(m[:n_feat], s2[:n_feat])
    b = round_to(impl.dtype, _vp(K, 0.1, bmax))
    s = float(round_to(impl.dtype, s))
    ab = _ab(b)
    cvec = np.asarray(c[:n_feat]).reshape(L, D)

    def eps_fn(tau: F, k: Any) -> F:
        t = _f64(tau)
        return data.eps(t.reshape(t.shape[0], -1), ab[int(np.asarray(k).reshape(-1)[0])]).reshape(t.shape)

    rng = np.random.default_rng(2022)
    tau_K, z = rng.standard_normal((_N, L, D)), rng.standard_normal((K, _N, L, D))
    chain = _f64(need(impl, clause_id)(tau_K, eps_fn, b, z, _const_grad(cvec), s, None, None, variance))
    mean, var = np.zeros(n_feat), np.ones(n_feat)
    for k in range(K, 0, -1):
        beta, alpha = b[k - 1], 1.0 - b[k - 1]
        _, V = data.marginal(ab[k])
        A = (1.0 - beta / V) / np.sqrt(alpha)
        offset = beta * np.sqrt(ab[k]) * data.mean / (np.sqrt(alpha) * V)
        Sigma = 0.0 if k == 1 else (beta if variance == "beta" else (1.0 - ab[k - 1]) / (1.0 - ab[k]) * beta)
        mean, var = propagate_affine(mean, var, A, offset + s * Sigma * cvec.ravel(), Sigma)
    assert_gaussian_moments(clause_id, chain[0].reshape(_N, -1), mean, var,
                     what=f"plans of the guided eps* chain, K={K}, variance={variance}, s={s:.3g}")


@clause("diffuser.sample", "matches_reference")
@given(case=_sample_case())
def test_sample_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    eps_fn, lip = _plan_net(case["seed"], *case["shape"][1:])
    got = _run(impl, need(impl, clause_id), case, eps_fn)
    want = _run(impl, ref.sample, case, eps_fn)
    b = round_to(impl.dtype, case["b"])
    K, B = b.size, case["shape"][0]
    _, z = _noise(impl, case)
    _, lip_J = _guide(case)
    ab = _ab(b)
    # Rule variables at their largest (gap at its smallest) over the reference chain.
    scale, amp, shift, gap = 0.0, 1.0, 0.0, 1.0
    for k in range(K, 0, -1):
        e_hat = _f64(eps_fn(want[k], np.full(B, k)))
        v = _step_vars(b, k, want[k], e_hat, z[k - 1], case, lip_J)
        scale, amp = max(scale, float(np.max(v["scale"]))), max(amp, float(np.max(v["amp"])))
        shift, gap = max(shift, float(np.max(v["shift"]))), min(gap, float(np.min(v["gap"])))
    # An error in tau^k reaches tau^{k-1} through the network and the mean, and through the guide's gradient.
    growth = float(np.max((1.0 + b * lip / np.sqrt(1.0 - ab[1:])) / np.sqrt(1.0 - b))) * amp
    assert_close(clause_id, got, want, dtype=impl.dtype, K=K, steps=K, growth=growth**K, scale=scale, amp=amp,
                 shift=shift, gap=gap, inputs={"guide": case["guide"], "variance": case["variance"]})


def _zero_net(tau: F, k: Any) -> F:
    return np.zeros_like(_f64(tau))


def _nan_net(tau: F, k: Any) -> F:
    return np.full(np.shape(tau), np.nan)


def _flat_net(tau: F, k: Any) -> F:
    return np.zeros((np.shape(tau)[0], int(np.prod(np.shape(tau)[1:]))))


_Z = np.ones((3, 2, 3, 2))
_SAMPLE_BAD: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "z wrong shape": ((_P, _zero_net, _B3, np.ones((2, 2, 3, 2))), {}),
    "mask without values": ((_P, _zero_net, _B3, _Z), {"mask": _M0}),
    "eps_fn NaN": ((_P, _nan_net, _B3, _Z), {}),
    "eps_fn wrong shape": ((_P, _flat_net, _B3, _Z), {}),
    "tau_K NaN": ((np.full((2, 3, 2), np.nan), _zero_net, _B3, _Z), {}),
    "scale < 0": ((_P, _zero_net, _B3, _Z), {"grad_J": _const_grad(np.ones((3, 2))), "scale": -0.5}),
    "unknown variance": ((_P, _zero_net, _B3, _Z), {"variance": "fixedlarge"}),
    "beta = 1": ((_P, _zero_net, np.array([0.1, 0.2, 1.0]), _Z), {}),
}


@clause("diffuser.sample", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_SAMPLE_BAD)))
def test_sample_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    args, kwargs = _SAMPLE_BAD[case]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)
