"""Conformance: spec family ``edp`` (Kang, Ma, Du, Pang and Yan, NeurIPS 2023).

alpha_bar and the ELBO weight are recomputed in float64 from the (rounded) betas; networks are
the deterministic MLPs of diffrl_ref.suite.networks (Lipschitz bound from their weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffrl_ref import spec
from diffrl_ref.reference import ddim as ref_ddim
from diffrl_ref.reference import ddpm as ref_ddpm
from diffrl_ref.reference import edp as ref
from diffrl_ref.suite import networks
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.gaussian_oracle import GaussianData
from diffrl_ref.suite.strategies import betas, finite

F = np.ndarray
MISH_SLOPE = 1.1  # max |d/dx x tanh(softplus(x))| ~ 1.0998: Mish's Lipschitz constant, for the bound L
DEFAULT_CAP = {"awr": 20.0, "crr_exp": 20.0, "iql": 100.0}  # the clause's default clips w_max (spec edp.weights)
EXP_KINDS = ("awr", "crr_exp", "iql")


# ---- helpers --------------------------------------------------------------------------


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


def _ab(b: F) -> F:
    return np.concatenate([[1.0], np.cumprod(1.0 - b)])


def _snap(v: float) -> float:
    """|v| < 1e-12 becomes 0 (keeps products of drawn values away from underflow; not a tolerance)."""
    return 0.0 if abs(v) < 1e-12 else v


def _batch(B: int, d: int, scale: float) -> st.SearchStrategy[F]:
    return hnp.arrays(np.float64, (B, d), elements=finite(-scale, scale).map(_snap))


def _steps(k: Any, B: int) -> F:
    return np.broadcast_to(np.asarray(k), (B,)).astype(np.int64)


def _policy_net(seed: int, da: int, ds: int) -> tuple[Callable[..., F], float]:
    mlp = networks.MLP.init(seed, [da + 8 + ds, 16, 16, da], "mish", 1.0)
    (w1, _), *rest = mlp.params
    L = float(np.linalg.norm(w1[:da], 2))
    for w, _ in rest:
        L *= MISH_SLOPE * float(np.linalg.norm(w, 2))
    return networks.eps_network(seed, da, ds), L


def _weight_vars(b: F, k: Any, B: int) -> dict[str, Any]:
    """w = beta_k / (2 alpha_k (1 - ab_k)) and gap = 1 - ab_{max(k-1, 1)} per row."""
    ab = _ab(b)
    kk = _steps(k, B)
    beta = b[kk - 1]
    return {"w": beta / (2.0 * (1.0 - beta) * (1.0 - ab[kk])), "gap": 1.0 - ab[np.maximum(kk - 1, 1)]}


def _u(a: F, e: F, e_hat: F, L: Any) -> F:
    return _f64(np.linalg.norm(np.abs(e) + np.abs(e_hat) + np.asarray(L) * (np.abs(a) + np.abs(e)), axis=1))


@st.composite
def _case(draw: st.DrawFn, max_K: int = 20, per_row: bool = True) -> dict[str, Any]:
    b = draw(betas(max_K=max_K))
    B = draw(st.integers(1, 5))
    da = draw(st.integers(1, 3))
    ds = draw(st.integers(1, 3))
    if per_row and draw(st.booleans()):
        k: Any = np.asarray(draw(st.lists(st.integers(1, b.size), min_size=B, max_size=B)), dtype=np.int64)
    else:
        k = draw(st.integers(1, b.size))
    return {"b": b, "k": k, "a": draw(_batch(B, da, 3.0)), "eps": draw(_batch(B, da, 3.0)),
            "s": draw(_batch(B, ds, 3.0)), "seed": draw(st.integers(0, 2**16))}


def _bound(lo: float, hi: float) -> st.SearchStrategy[float]:
    """A clip w_max representable in every dtype (bfloat16 values are)."""
    return finite(lo, hi).map(lambda v: float(round_to("bfloat16", v)))


def _rounded(impl: Any, c: dict[str, Any], *names: str) -> list[F]:
    return [round_to(impl.dtype, c[n]) for n in names]


def _roots(b: F, k: Any, B: int) -> dict[str, Any]:
    ab = _ab(b)[_steps(k, B)][:, None]
    return {"sqrt_ab": np.sqrt(ab), "sqrt_1m_ab": np.sqrt(1.0 - ab)}


# ---- edp.action_approx ----------------------------------------------------------------


@clause("edp.action_approx", "exact_for_true_noise")
@given(c=_case())
def test_action_approx_exact_for_true_noise(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, a, e = _rounded(impl, c, "b", "a", "eps")
    r = _roots(b, c["k"], a.shape[0])
    xk = round_to(impl.dtype, r["sqrt_ab"] * a + r["sqrt_1m_ab"] * e)
    got = need(impl, clause_id)(xk, e, b, c["k"])
    assert_close(clause_id, got, a, dtype=impl.dtype, what="a0_hat(a^k(a, eps), eps) = a", K=b.size, xk=xk, e=e,
                 **r, inputs={"k": c["k"], "alpha_bar_k": r["sqrt_ab"] ** 2})


@st.composite
def _gaussian(draw: st.DrawFn, d: int) -> GaussianData:
    m = draw(st.lists(finite(-3.0, 3.0).map(_snap), min_size=d, max_size=d))
    s2 = draw(st.lists(finite(0.01, 4.0), min_size=d, max_size=d))
    return GaussianData.of(m, s2)


@clause("edp.action_approx", "tweedie")
@given(c=_case(), data=st.data())
def test_action_approx_tweedie(impl: Any, clause_id: str, c: dict[str, Any], data: st.DataObject) -> None:
    b, x = _rounded(impl, c, "b", "a")
    B, d = x.shape
    g = data.draw(_gaussian(d))
    r = _roots(b, c["k"], B)
    ab = r["sqrt_ab"][:, 0] ** 2
    e_star = round_to(impl.dtype, g.eps(x, ab))
    mu, v = g.marginal(ab)
    posterior_mean = g.mean + r["sqrt_ab"] * g.var * (x - mu) / v
    assert_close(clause_id, need(impl, clause_id)(x, e_star, b, c["k"]), posterior_mean, dtype=impl.dtype,
                 what="a0_hat(a^k, eps*(a^k)) = E[a^0 | a^k]", K=b.size, xk=x, e=e_star, **r, inputs={"k": c["k"]})


@clause("edp.action_approx", "ddim_jump_to_zero")
@given(c=_case())
def test_action_approx_ddim_jump(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, x, e = _rounded(impl, c, "b", "a", "eps")
    B = x.shape[0]
    r = _roots(b, c["k"], B)
    k0 = np.zeros_like(np.asarray(c["k"])) if np.ndim(c["k"]) else 0
    jump = ref_ddim.step(x, e, b, c["k"], k0, 0.0, np.zeros_like(x))  # the float64 reference's DDIM step
    assert_close(clause_id, need(impl, clause_id)(x, e, b, c["k"]), jump, dtype=impl.dtype,
                 what="a0_hat = reference ddim.step(k -> 0, eta = 0)", K=b.size, xk=x, e=e, **r, inputs={"k": c["k"]})


@clause("edp.action_approx", "matches_reference")
@given(c=_case())
def test_action_approx_matches_reference(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, x, e = _rounded(impl, c, "b", "a", "eps")
    r = _roots(b, c["k"], x.shape[0])
    assert_close(clause_id, need(impl, clause_id)(x, e, b, c["k"]), ref.action_approx(x, e, b, c["k"]),
                 dtype=impl.dtype, K=b.size, xk=x, e=e, **r, inputs={"k": c["k"]})


_B3 = np.array([0.1, 0.2, 0.3])
_X = np.ones((2, 2))
_S = np.ones((2, 3))
_NAN = np.full((2, 2), np.nan)
_BAD_APPROX: list[tuple[Any, ...]] = [
    (_X, _X, _B3, 0), (_X, _X, _B3, 4), (_X, _X, _B3, np.array([1, 2, 3])), (_NAN, _X, _B3, 1),
    (_X, _NAN, _B3, 1), (_X, np.ones((2, 3)), _B3, 1), (_X, _X, np.array([0.1, 1.0]), 1),
    (np.ones(2), np.ones(2), _B3, 1),
]


@clause("edp.action_approx", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_APPROX))))
def test_action_approx_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_APPROX[i])


# ---- edp.weighted_elbo ----------------------------------------------------------------


def _oracle(b: F, delta: F) -> Callable[..., F]:
    """A network that returns the true noise (the state carries the clean action) plus delta."""
    ab = _ab(b)

    def eps_fn(x: F, kk: Any, s: F) -> F:
        abk = ab[np.asarray(kk)][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return _f64((np.asarray(x) - np.sqrt(abk) * s) / np.sqrt(1.0 - abk) + delta)

    return eps_fn


@clause("edp.weighted_elbo", "weight_closed_form")
@given(c=_case(), data=st.data())
def test_weighted_elbo_closed_form(impl: Any, clause_id: str, c: dict[str, Any], data: st.DataObject) -> None:
    b, a, e = _rounded(impl, c, "b", "a", "eps")
    B, da = a.shape
    delta = data.draw(_batch(B, da, 2.0))
    v = _weight_vars(b, c["k"], B)
    L = 1.0 / np.sqrt(1.0 - _ab(b)[_steps(c["k"], B)])[:, None]
    got = need(impl, clause_id)(a, a, _oracle(b, delta), b, c["k"], e)
    assert_close(clause_id, got, v["w"] * np.sum(delta**2, axis=1), dtype=impl.dtype,
                 what="beta_k / (2 alpha_k (1 - ab_k)) ||delta||^2", K=b.size, d=da, u=_u(a, e, e + delta, L), **v,
                 inputs={"k": c["k"]})


@clause("edp.weighted_elbo", "equals_vlb_weighting")
@given(c=_case())
def test_weighted_elbo_equals_vlb(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, a, e, s = _rounded(impl, c, "b", "a", "eps", "s")
    B, da = a.shape
    net, L = _policy_net(c["seed"], da, s.shape[1])
    steps = _steps(c["k"], B)
    abk = _ab(b)[steps][:, None]
    e_hat = net(np.sqrt(abk) * a + np.sqrt(1.0 - abk) * e, steps, s)
    want = ref_ddpm.simple_loss(e, e_hat, b, c["k"], "vlb", "beta")  # the float64 reference's VLB weighting
    assert_close(clause_id, need(impl, clause_id)(a, s, net, b, c["k"], e), want, dtype=impl.dtype,
                 what="= reference ddpm.simple_loss(vlb, sigma^2 = beta)", K=b.size, d=da, u=_u(a, e, e_hat, L),
                 **_weight_vars(b, c["k"], B), inputs={"k": c["k"]})


@clause("edp.weighted_elbo", "matches_reference")
@given(c=_case())
def test_weighted_elbo_matches_reference(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, a, e, s = _rounded(impl, c, "b", "a", "eps", "s")
    B, da = a.shape
    net, L = _policy_net(c["seed"], da, s.shape[1])
    steps = _steps(c["k"], B)
    abk = _ab(b)[steps][:, None]
    e_hat = net(np.sqrt(abk) * a + np.sqrt(1.0 - abk) * e, steps, s)
    assert_close(clause_id, need(impl, clause_id)(a, s, net, b, c["k"], e), ref.weighted_elbo(a, s, net, b, c["k"], e),
                 dtype=impl.dtype, K=b.size, d=da, u=_u(a, e, e_hat, L), **_weight_vars(b, c["k"], B),
                 inputs={"k": c["k"]})


def _zero_fn(x: F, k: Any, s: Any = None) -> F:
    return np.zeros_like(_f64(x))


def _nan_fn(x: F, k: Any, s: Any = None) -> F:
    return np.full_like(_f64(x), np.nan)


def _narrow_fn(x: F, k: Any, s: Any = None) -> F:
    return np.zeros((np.asarray(x).shape[0], 1))


_BAD_ELBO: list[tuple[Any, ...]] = [
    (_X, _S, _zero_fn, _B3, 0, _X), (_X, _S, _zero_fn, _B3, 4, _X), (_NAN, _S, _zero_fn, _B3, 1, _X),
    (_X, _S, _zero_fn, _B3, 1, _NAN), (_X, np.full((2, 3), np.nan), _zero_fn, _B3, 1, _X),
    (_X, _S, _zero_fn, _B3, 1, np.ones((2, 3))), (_X, np.ones((3, 3)), _zero_fn, _B3, 1, _X),
    (_X, _S, _nan_fn, _B3, 1, _X), (_X, _S, _narrow_fn, _B3, 1, _X), (_X, _S, _zero_fn, np.array([0.1, 1.0]), 1, _X),
]


@clause("edp.weighted_elbo", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_ELBO))))
def test_weighted_elbo_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_ELBO[i])


# ---- edp.weights ----------------------------------------------------------------------


@st.composite
def _adv(draw: st.DrawFn, kinds: tuple[str, ...] = ("awr", "crr_exp", "crr_binary", "iql")) -> dict[str, Any]:
    """Q, V (with exact ties on some rows), a kind and a temperature; exponents stay below 50."""
    B = draw(st.integers(1, 8))
    kind = draw(st.sampled_from(kinds))
    T = draw(finite(0.2, 5.0))
    span = 10.0 / T if kind == "iql" else 10.0 * T
    q = draw(hnp.arrays(np.float64, (B,), elements=finite(-span, span).map(_snap)))
    v = draw(hnp.arrays(np.float64, (B,), elements=finite(-span, span).map(_snap)))
    ties = draw(hnp.arrays(np.bool_, (B,)))
    return {"q": q, "v": np.where(ties, q, v), "kind": kind, "T": T}


def _exponent(q: F, v: F, kind: str, T: float) -> tuple[F, F]:
    """x = A / T (awr, crr_exp) or T A (iql), and the rule's scale (|q| + |v|) / T (or T (...)) + |x|."""
    A = q - v
    if kind == "iql":
        return T * A, T * (np.abs(q) + np.abs(v)) + np.abs(T * A)
    return A / T, (np.abs(q) + np.abs(v)) / T + np.abs(A / T)


@clause("edp.weights", "non_negative_bounded")
@given(c=_adv(), cap=st.one_of(st.none(), _bound(1.5, 200.0)))
def test_weights_non_negative_bounded(impl: Any, clause_id: str, c: dict[str, Any], cap: float | None) -> None:
    q, v = round_to(impl.dtype, c["q"]), round_to(impl.dtype, c["v"])
    for kind in ("awr", "crr_exp", "crr_binary", "iql"):
        w = _f64(need(impl, clause_id)(q, v, kind, c["T"], cap))
        limit = 1.0 if kind == "crr_binary" else (DEFAULT_CAP[kind] if cap is None else cap)
        assert_that(w.shape == q.shape and bool(np.all((w >= 0) & (w <= limit))), clause_id,
                    f"{kind} weights outside [0, {limit}]: {w} (A = {q - v}, T = {c['T']})")
        if kind == "crr_binary":
            assert_that(bool(np.all((w == 0) | (w == 1))), clause_id, f"crr_binary weights not in {{0, 1}}: {w}")


@clause("edp.weights", "monotone")
@given(c=_adv(), v0=finite(-5.0, 5.0))
def test_weights_monotone(impl: Any, clause_id: str, c: dict[str, Any], v0: float) -> None:
    q = np.sort(round_to(impl.dtype, c["q"]))
    v = np.full_like(q, float(round_to(impl.dtype, v0)))
    for kind in ("awr", "crr_exp", "crr_binary", "iql"):
        w = _f64(need(impl, clause_id)(q, v, kind, c["T"]))
        assert_that(bool(np.all(np.diff(w) >= 0)), clause_id,
                    f"{kind} weights not non-decreasing in A: A = {q - v}, f = {w}")


@clause("edp.weights", "crr_step")
@given(c=_adv(kinds=("crr_binary",)))
def test_weights_crr_step(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    q, v = round_to(impl.dtype, c["q"]), round_to(impl.dtype, c["v"])
    w = _f64(need(impl, clause_id)(q, v, "crr_binary", c["T"]))
    want = (q > v).astype(np.float64)
    assert_that(bool(np.array_equal(w, want)), clause_id, f"1[Q > V] expected {want}, got {w} (A = {q - v})")


@clause("edp.weights", "exp_closed_form")
@given(c=_adv(kinds=EXP_KINDS), cap=st.one_of(_bound(1.5, 200.0), st.just(np.inf)))
def test_weights_exp_closed_form(impl: Any, clause_id: str, c: dict[str, Any], cap: float) -> None:
    q, v = round_to(impl.dtype, c["q"]), round_to(impl.dtype, c["v"])
    x, scale = _exponent(q, v, c["kind"], c["T"])
    got = need(impl, clause_id)(q, v, c["kind"], c["T"], cap)
    assert_close(clause_id, got, np.minimum(np.exp(x), cap), dtype=impl.dtype,
                 what=f"{c['kind']}: min(exp(x), w_max), w_max={cap}", scale=scale, inputs={"A": q - v, "x": x})


@clause("edp.weights", "clip_limits")
@given(c=_adv(kinds=EXP_KINDS))
def test_weights_clip_limits(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    q, v = round_to(impl.dtype, c["q"]), round_to(impl.dtype, c["v"])
    cap = DEFAULT_CAP[c["kind"]]
    x, scale = _exponent(q, v, c["kind"], c["T"])
    w = _f64(need(impl, clause_id)(q, v, c["kind"], c["T"]))
    # The rule's relative error of f, 4 eps (4 + scale), is an absolute error of the computed
    # exponent (exp maps one to the other): farther than that from log(w_max) the clip cannot flip.
    margin = 4 * spec.EPS[impl.dtype] * (4 + scale)
    above, below = x > np.log(cap) + margin, x < np.log(cap) - margin
    assert_that(bool(np.all(w[above] == cap)), clause_id,
                f"{c['kind']}: weight not clipped to {cap} where exp(x) > {cap}: x = {x[above]}, f = {w[above]}")
    assert_that(bool(np.all(w[below] < cap)), clause_id,
                f"{c['kind']}: weight at the clip {cap} where exp(x) < {cap}: x = {x[below]}, f = {w[below]}")


@clause("edp.weights", "matches_reference")
@given(c=_adv(), cap=st.one_of(st.none(), _bound(1.5, 200.0)))
def test_weights_matches_reference(impl: Any, clause_id: str, c: dict[str, Any], cap: float | None) -> None:
    q, v = round_to(impl.dtype, c["q"]), round_to(impl.dtype, c["v"])
    _, scale = _exponent(q, v, c["kind"], c["T"])
    assert_close(clause_id, need(impl, clause_id)(q, v, c["kind"], c["T"], cap),
                 ref.weights(q, v, c["kind"], c["T"], cap), dtype=impl.dtype, what=c["kind"], scale=scale,
                 inputs={"A": q - v})


_Q2 = np.array([0.5, -0.5])
_BAD_W: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((_Q2, _Q2, "awac", 1.0), {}), ((_Q2, _Q2, "awr", 0.0), {}), ((_Q2, _Q2, "iql", -1.0), {}),
    ((_Q2, _Q2, "awr", 1.0), {"w_max": 0.0}), ((_Q2, _Q2, "crr_exp", 1.0), {"w_max": -5.0}),
    ((np.array([np.nan, 1.0]), _Q2, "awr", 1.0), {}), ((_Q2, np.ones(3), "awr", 1.0), {}),
    ((np.ones((2, 2)), np.ones((2, 2)), "awr", 1.0), {}), ((_Q2, _Q2, "awr", np.nan), {}),
    ((np.array([1e4, 0.0]), np.zeros(2), "awr", 1.0), {"w_max": np.inf}),  # exp overflows, no clip
]


@clause("edp.weights", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_W))))
def test_weights_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_W[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- edp.policy_objective -------------------------------------------------------------


@st.composite
def _weights_for(draw: st.DrawFn, B: int) -> F:
    f = draw(hnp.arrays(np.float64, (B,), elements=finite(0.0, 20.0).map(_snap)))
    zero = draw(hnp.arrays(np.bool_, (B,)))
    return np.where(zero, 0.0, f)


def _objective_vars(b: F, k: Any, a: F, e: F, e_hat: F, L: Any, f: F) -> dict[str, Any]:
    v = _weight_vars(b, k, a.shape[0])
    return {"f": f, "elbo": v["w"] * np.sum((e - e_hat) ** 2, axis=1), "u": _u(a, e, e_hat, L), **v}


@clause("edp.policy_objective", "composition")
@given(c=_case(), data=st.data())
def test_policy_objective_composition(impl: Any, clause_id: str, c: dict[str, Any], data: st.DataObject) -> None:
    b, a, e, s = _rounded(impl, c, "b", "a", "eps", "s")
    B, da = a.shape
    f = round_to(impl.dtype, data.draw(_weights_for(B)))
    net, L = _policy_net(c["seed"], da, s.shape[1])
    steps = _steps(c["k"], B)
    abk = _ab(b)[steps][:, None]
    e_hat = net(np.sqrt(abk) * a + np.sqrt(1.0 - abk) * e, steps, s)
    want = -f * ref.weighted_elbo(a, s, net, b, c["k"], e)  # the float64 reference's ELBO
    assert_close(clause_id, need(impl, clause_id)(a, s, net, b, c["k"], e, f), want, dtype=impl.dtype,
                 what="J = -f reference weighted_elbo", K=b.size, d=da, **_objective_vars(b, c["k"], a, e, e_hat, L, f),
                 inputs={"k": c["k"], "f": f})


@clause("edp.policy_objective", "candidate_ranking")
@given(c=_case(), n_cand=st.integers(2, 4), data=st.data())
def test_policy_objective_candidate_ranking(impl: Any, clause_id: str, c: dict[str, Any], n_cand: int,
                                            data: st.DataObject) -> None:
    b, a, e = _rounded(impl, c, "b", "a", "eps")
    B, da = a.shape
    f = round_to(impl.dtype, data.draw(_weights_for(B)))
    deltas = [np.zeros_like(a)] + [data.draw(_batch(B, da, 2.0)) for _ in range(n_cand - 1)]
    obj = need(impl, clause_id)
    w = _weight_vars(b, c["k"], B)["w"]
    L = 1.0 / np.sqrt(1.0 - _ab(b)[_steps(c["k"], B)])[:, None]
    J, score, slack = [], [], []
    for delta in deltas:
        J.append(_f64(obj(a, a, _oracle(b, delta), b, c["k"], e, f)))
        score.append(float(np.sum(f * w * np.sum(delta**2, axis=1))))
        rule_vars = _objective_vars(b, c["k"], a, e, e + delta, L, f)
        atol = spec.clause(clause_id).tolerance.atol(impl.dtype, expected=-f * w * np.sum(delta**2, axis=1),
                                                     K=b.size, d=da, **rule_vars)
        slack.append(float(np.sum(atol)))
    total = np.array([j.sum() for j in J])
    assert_that(bool(np.all(total <= np.array(slack))), clause_id, f"objective above 0: sums {total}, slack {slack}")
    assert_that(abs(total[0]) <= slack[0], clause_id, f"the true-noise policy's objective is {total[0]!r}, not 0")
    order = np.argsort(score)
    if len(score) > 1 and score[order[1]] - score[order[0]] > slack[order[0]] + slack[order[1]]:
        assert_that(int(np.argmax(total)) == int(order[0]), clause_id,
                    f"argmax of the objective is candidate {int(np.argmax(total))}, but candidate {int(order[0])} "
                    f"has the smallest f-weighted error (scores {score}, objectives {total})")
    # A candidate changed only where f = 0 keeps its objective, row by row.
    altered = deltas[-1] + np.where((f == 0)[:, None], 5.0, 0.0)
    again = _f64(obj(a, a, _oracle(b, altered), b, c["k"], e, f))
    assert_that(bool(np.array_equal(again, J[-1])), clause_id,
                f"changing the policy on zero-weight rows changed the objective: {J[-1]} -> {again} (f = {f})")


@clause("edp.policy_objective", "matches_reference")
@given(c=_case(), data=st.data())
def test_policy_objective_matches_reference(impl: Any, clause_id: str, c: dict[str, Any],
                                            data: st.DataObject) -> None:
    b, a, e, s = _rounded(impl, c, "b", "a", "eps", "s")
    B, da = a.shape
    f = round_to(impl.dtype, data.draw(_weights_for(B)))
    net, L = _policy_net(c["seed"], da, s.shape[1])
    steps = _steps(c["k"], B)
    abk = _ab(b)[steps][:, None]
    e_hat = net(np.sqrt(abk) * a + np.sqrt(1.0 - abk) * e, steps, s)
    assert_close(clause_id, need(impl, clause_id)(a, s, net, b, c["k"], e, f),
                 ref.policy_objective(a, s, net, b, c["k"], e, f), dtype=impl.dtype, K=b.size, d=da,
                 **_objective_vars(b, c["k"], a, e, e_hat, L, f), inputs={"k": c["k"]})


_F2 = np.array([1.0, 0.5])
_BAD_OBJ: list[tuple[Any, ...]] = [
    (_X, _S, _zero_fn, _B3, 1, _X, np.array([1.0, -0.5])), (_X, _S, _zero_fn, _B3, 1, _X, np.array([1.0, np.nan])),
    (_X, _S, _zero_fn, _B3, 1, _X, np.ones(3)), (_X, _S, _zero_fn, _B3, 0, _X, _F2),
    (_NAN, _S, _zero_fn, _B3, 1, _X, _F2), (_X, _S, _nan_fn, _B3, 1, _X, _F2),
]


@clause("edp.policy_objective", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_OBJ))))
def test_policy_objective_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_OBJ[i])
