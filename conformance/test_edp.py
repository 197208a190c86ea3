"""Conformance: spec family ``edp`` (Kang, Ma, Du, Pang and Yan, NeurIPS 2023).

alpha_bar and the ELBO weight are recomputed in float64 from the (rounded) betas; networks are
the deterministic MLPs of diffrl_ref.suite.networks (Lipschitz bound from their weights). The IQL
critic clauses use an exact expectile (rational arithmetic) and finite MDPs solved exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffrl_ref import spec
from diffrl_ref.reference import ddim as ref_ddim
from diffrl_ref.reference import ddpm as ref_ddpm
from diffrl_ref.reference import edp as ref
from diffrl_ref.suite import networks
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, observable, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.gaussian_oracle import GaussianData
from diffrl_ref.suite.strategies import BELOW_ONE, betas, finite

from .test_diffsr import _simplex

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


# ---- edp.expectile_loss -----------------------------------------------------------------


def _flush(v: float) -> float:
    """|v| < 1e-6 becomes 0: a difference of such values, squared, would be subnormal in float32 (not a tolerance)."""
    return 0.0 if abs(v) < 1e-6 else v


def _values(B: int, span: float) -> st.SearchStrategy[F]:
    return hnp.arrays(np.float64, (B,), elements=finite(-span, span).map(_flush))


def _tau() -> st.SearchStrategy[float]:
    """An expectile in (0, 1) that stays there in every dtype; IQL's 0.7 and 0.9, and 0.5, always among the draws."""
    return st.one_of(st.sampled_from([0.5, 0.7, 0.9]), finite(0.01, BELOW_ONE))


@st.composite
def _residuals(draw: st.DrawFn) -> dict[str, Any]:
    """Q and V (exact ties on some rows) and an expectile."""
    B = draw(st.integers(1, 8))
    q, v = draw(_values(B, 20.0)), draw(_values(B, 20.0))
    ties = draw(hnp.arrays(np.bool_, (B,)))
    return {"q": q, "v": np.where(ties, q, v), "tau": draw(_tau())}


def _rows(out: Any, B: int, clause_id: str) -> F:
    """The implementation's per-row losses, checked to be (B,) before the test indexes or sums them."""
    y = _f64(out)
    assert_that(y.shape == (B,), clause_id, f"loss has shape {y.shape}, expected ({B},)")
    return y


def _qv_tau(impl: Any, c: dict[str, Any]) -> tuple[F, F, float]:
    return round_to(impl.dtype, c["q"]), round_to(impl.dtype, c["v"]), float(round_to(impl.dtype, c["tau"]))


@clause("edp.expectile_loss", "asymmetric_square")
@given(c=_residuals())
def test_expectile_loss_asymmetric_square(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    q, v, tau = _qv_tau(impl, c)
    u = q - v
    fn = need(impl, clause_id)
    want = np.where(u > 0, tau, np.where(u < 0, 1.0 - tau, 0.0)) * u**2
    assert_close(clause_id, fn(q, v, tau), want, dtype=impl.dtype, what="tau u^2 (u > 0), (1 - tau) u^2 (u < 0)",
                 mag=0.0, inputs={"u": u, "tau": tau})
    assert_close(clause_id, fn(q, v, 0.5), u**2 / 2, dtype=impl.dtype, what="tau = 1/2: u^2 / 2", mag=0.0,
                 inputs={"u": u})


@st.composite
def _sample(draw: st.DrawFn) -> dict[str, Any]:
    """Q at n dataset actions of one state (ties possible), an expectile, a side and a fraction of the gap."""
    n = draw(st.integers(1, 6))
    q = draw(_values(n, 10.0))
    if n > 1 and draw(st.booleans()):
        q[-1] = q[0]
    return {"q": q, "tau": draw(_tau()), "side": draw(st.sampled_from([-1, 1])), "frac": draw(finite(0.5, 1.0))}


def _expectile(q: list[Fraction], tau: Fraction) -> Fraction:
    """The tau-expectile of the sample q, exactly: the root of sum_i |tau - 1(q_i < m)| (q_i - m)."""
    qs = sorted(q)
    n = len(qs)
    for j in range(n + 1):  # j samples below m, weight 1 - tau; the others weight tau
        m = ((1 - tau) * sum(qs[:j], Fraction(0)) + tau * sum(qs[j:], Fraction(0))) / ((1 - tau) * j + tau * (n - j))
        if (j == 0 or qs[j - 1] <= m) and (j == n or m <= qs[j]):
            return m
    raise AssertionError("no piece holds its stationary point")  # impossible: L is convex and C^1


def _mean_loss(q: list[Fraction], tau: Fraction, m: Fraction) -> Fraction:
    return sum((((1 - tau) if qi < m else tau) * (qi - m) * (qi - m) for qi in q), Fraction(0)) / len(q)


@clause("edp.expectile_loss", "expectile_minimiser")
@given(c=_sample())
def test_expectile_loss_expectile_minimiser(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    q = round_to(impl.dtype, c["q"])
    tau = float(round_to(impl.dtype, c["tau"]))
    Q, T = [Fraction(float(x)) for x in q], Fraction(tau)
    n = len(Q)
    m_star = _expectile(Q, T)
    above, below = [x for x in Q if x > m_star], [x for x in Q if x < m_star]
    # The quadratic piece on the drawn side ends at the nearest sample there (none: 1 + |m*| away).
    if c["side"] > 0:
        gap = min(above) - m_star if above else 1 + abs(m_star)
    else:
        gap = m_star - max(below) if below else 1 + abs(m_star)
    m1 = float(round_to(impl.dtype, float(m_star + c["side"] * Fraction(c["frac"]) * gap)))
    m0 = float(round_to(impl.dtype, float(m_star)))

    def weight(m: float) -> Fraction:
        """W on m's side of m*: the summed weights of the samples for a v strictly between m* and m."""
        if m >= m_star:
            return sum((((1 - T) if x <= m_star else T) for x in Q), Fraction(0))
        return sum((((1 - T) if x < m_star else T) for x in Q), Fraction(0))

    def rise(m: float) -> Fraction:
        """L(m) - L(m*) = W (m - m*)^2 / n on the quadratic piece around m*."""
        return weight(m) * (Fraction(m) - m_star) * (Fraction(m) - m_star) / n

    increase = rise(m1) - rise(m0)
    fn = need(impl, clause_id)
    rows1, rows0 = _rows(fn(q, np.full(n, m1), tau), n, clause_id), _rows(fn(q, np.full(n, m0), tau), n, clause_id)
    got = float((sum(map(Fraction, rows1.tolist()), Fraction(0)) - sum(map(Fraction, rows0.tolist()), Fraction(0))) / n)
    want = float(increase)
    mag = float(_mean_loss(Q, T, Fraction(m0)) + _mean_loss(Q, T, Fraction(m1)))
    allowed = float(spec.clause(clause_id).tolerance.atol(impl.dtype, expected=want, mag=mag))
    observable(want > 2 * allowed, "not observable: the increase of the mean loss is within the rule of 0 "
                                   f"in {impl.dtype}")
    what = f"L(m1) - L(m0) = (W(m1) (m1 - m*)^2 - W(m0) (m0 - m*)^2) / n around the expectile m* = {float(m_star)!r}"
    assert_close(clause_id, got, want, dtype=impl.dtype, what=what, mag=mag,
                 inputs={"q": q, "tau": tau, "m0": m0, "m1": m1})
    assert_that(got > 0, clause_id, f"the mean loss at m1 = {m1!r} is not above its value at the expectile "
                                    f"m* = {float(m_star)!r}: increase {got!r} (q = {q}, tau = {tau})")


@clause("edp.expectile_loss", "monotone_in_tau")
@given(c=_residuals(), taus=st.lists(_tau(), min_size=2, max_size=5))
def test_expectile_loss_monotone_in_tau(impl: Any, clause_id: str, c: dict[str, Any], taus: list[float]) -> None:
    q, v, _ = _qv_tau(impl, c)
    ts = sorted({float(round_to(impl.dtype, t)) for t in taus})
    fn = need(impl, clause_id)
    loss = np.stack([_rows(fn(q, v, t), q.size, clause_id) for t in ts])  # (len(ts), B)
    step = np.diff(loss, axis=0)
    up, down, tie = q > v, q < v, q == v
    assert_that(bool(np.all(step[:, up] >= 0)), clause_id,
                f"loss decreases with tau where Q > V: tau = {ts}, Q - V = {q[up] - v[up]}, loss = {loss[:, up]}")
    assert_that(bool(np.all(step[:, down] <= 0)), clause_id,
                f"loss increases with tau where Q < V: tau = {ts}, Q - V = {q[down] - v[down]}, loss = {loss[:, down]}")
    assert_that(bool(np.all(loss[:, tie] == 0)), clause_id, f"loss not 0 where Q = V: {loss[:, tie]}")


@clause("edp.expectile_loss", "matches_reference")
@given(c=_residuals())
def test_expectile_loss_matches_reference(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    q, v, tau = _qv_tau(impl, c)
    assert_close(clause_id, need(impl, clause_id)(q, v, tau), ref.expectile_loss(q, v, tau), dtype=impl.dtype,
                 mag=0.0, inputs={"u": q - v, "tau": tau})


_BAD_EXPECTILE: list[tuple[Any, ...]] = [
    (_Q2, _Q2, 0.0), (_Q2, _Q2, 1.0), (_Q2, _Q2, -0.3), (_Q2, _Q2, 1.5), (_Q2, _Q2, np.nan),
    (np.array([np.nan, 1.0]), _Q2, 0.7), (_Q2, np.array([0.0, np.inf]), 0.7), (_Q2, np.ones(3), 0.7),
    (np.ones((2, 2)), np.ones((2, 2)), 0.7), (np.zeros(0), np.zeros(0), 0.7),
]


@clause("edp.expectile_loss", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_EXPECTILE))))
def test_expectile_loss_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_EXPECTILE[i])


# ---- edp.iql_q_target -------------------------------------------------------------------


@st.composite
def _target_case(draw: st.DrawFn) -> dict[str, Any]:
    B = draw(st.integers(1, 6))
    return {"r": draw(_values(B, 10.0)), "done": np.asarray(draw(hnp.arrays(np.bool_, (B,))), dtype=np.float64),
            "v": draw(_values(B, 50.0)), "gamma": draw(finite(0.0, 0.99))}


def _target_rounded(impl: Any, c: dict[str, Any]) -> tuple[F, F, F, float]:
    r, v = round_to(impl.dtype, c["r"]), round_to(impl.dtype, c["v"])
    return r, c["done"], v, float(round_to(impl.dtype, c["gamma"]))


def _target_mag(r: F, done: F, v: F, gamma: float) -> F:
    """|r| + gamma (1 - d) |V(s')|: the bootstrap of a terminal row is exactly 0."""
    return np.asarray(np.abs(r) + gamma * (1.0 - done) * np.abs(v))


_NO_MDP: dict[str, Any] = {"n": 0, "kappa": 0.0, "qmax": 0.0}


@clause("edp.iql_q_target", "done_masks_bootstrap")
@given(c=_target_case())
def test_iql_q_target_done_masks_bootstrap(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    r, done, v, gamma = _target_rounded(impl, c)
    big_v = round_to(impl.dtype, 1e3 * v)  # large values: a bootstrap through done would dwarf r (not a tolerance)
    y = need(impl, clause_id)(r, done, big_v, gamma)
    assert_close(clause_id, y, np.where(done == 1, r, r + gamma * big_v), dtype=impl.dtype,
                 what="y = r where done, r + gamma V(s') elsewhere", mag=_target_mag(r, done, big_v, gamma), **_NO_MDP,
                 inputs={"done": done, "gamma": gamma, "v_next": big_v})


@st.composite
def _mdp(draw: st.DrawFn) -> dict[str, Any]:
    """A finite MDP: P(s' | s, a) over n = S A rows, terminal flags d(s, a, s'), rewards, a policy pi > 0, gamma."""
    S, A = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    return {"S": S, "A": A, "P": _simplex(draw, (S * A, S)),
            "d": np.asarray(draw(hnp.arrays(np.bool_, (S * A, S))), dtype=np.float64),
            "pi": _simplex(draw, (S, A), lo=0.05), "r": draw(_values(S * A, 1.0)), "gamma": draw(finite(0.0, 0.95))}


@clause("edp.iql_q_target", "fixed_point")
@given(mdp=_mdp())
def test_iql_q_target_fixed_point(impl: Any, clause_id: str, mdp: dict[str, Any]) -> None:
    S, A, P, d, pi = mdp["S"], mdp["A"], mdp["P"], mdp["d"], mdp["pi"]
    n = S * A
    gamma, r = float(round_to(impl.dtype, mdp["gamma"])), round_to(impl.dtype, mdp["r"])
    # Policy evaluation, exactly: T[(s,a),(s',a')] = P(s'|s,a) (1 - d(s,a,s')) pi(a'|s'); Q = r + gamma T Q.
    T = ((P * (1 - d))[:, :, None] * pi[None, :, :]).reshape(n, n)
    M = np.eye(n) - gamma * T
    Q = np.linalg.solve(M, r)
    V = np.sum(pi * Q.reshape(S, A), axis=1)  # V(s') = sum_a' pi(a'|s') Q(s', a')
    sa, sp = np.repeat(np.arange(n), S), np.tile(np.arange(S), n)  # every (s, a, s')
    v_next = round_to(impl.dtype, V[sp])
    y = _f64(need(impl, clause_id)(r[sa], d[sa, sp], v_next, gamma))
    assert_that(y.shape == sa.shape, clause_id, f"y has shape {y.shape} for {sa.size} transitions, expected {sa.shape}")
    got = np.bincount(sa, weights=P[sa, sp] * y, minlength=n)  # E_{s' ~ P(.|s,a)}[y]
    assert_close(clause_id, got, Q, dtype=impl.dtype, what="E_{s'}[r + gamma (1 - d) V(s')] = Q^pi (fixed point)",
                 mag=float(np.abs(r).max() + gamma * np.abs(V).max()), n=n, kappa=float(np.linalg.cond(M, np.inf)),
                 qmax=float(np.abs(Q).max()), inputs={"gamma": gamma})


#: A live bootstrap and a terminal row with a nonzero reward, values exact in every dtype: always among the examples.
_IQL_TARGET: dict[str, Any] = {"r": np.array([0.5, -1.0, 2.0]), "done": np.array([0.0, 1.0, 0.0]),
                               "v": np.array([3.0, -4.0, -1.5]), "gamma": 0.875}


@clause("edp.iql_q_target", "matches_reference")
@given(c=_target_case())
@example(c=_IQL_TARGET)
def test_iql_q_target_matches_reference(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    r, done, v, gamma = _target_rounded(impl, c)
    assert_close(clause_id, need(impl, clause_id)(r, done, v, gamma), ref.iql_q_target(r, done, v, gamma),
                 dtype=impl.dtype, mag=_target_mag(r, done, v, gamma), **_NO_MDP, inputs={"done": done})


_Z2 = np.zeros(2)
_BAD_TARGET: list[tuple[Any, ...]] = [
    (_Z2, _Z2, _Z2, 1.0), (_Z2, _Z2, _Z2, -0.1), (_Z2, _Z2, _Z2, np.nan),  # gamma outside [0, 1)
    (_Z2, np.array([0.0, 0.5]), _Z2, 0.9),                                  # done not in {0, 1}
    (np.array([0.0, np.nan]), _Z2, _Z2, 0.9), (_Z2, _Z2, np.array([np.inf, 0.0]), 0.9),
    (_Z2, _Z2, np.zeros(3), 0.9), (_Z2, np.zeros(3), _Z2, 0.9),             # wrong lengths
    (np.zeros((2, 1)), _Z2, _Z2, 0.9), (_Z2, _Z2, np.zeros((2, 1)), 0.9),   # a (B, 1) column
]


@clause("edp.iql_q_target", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_TARGET))))
def test_iql_q_target_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_TARGET[i])
