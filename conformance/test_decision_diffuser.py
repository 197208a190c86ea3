"""Conformance: spec family ``decision_diffuser`` (Ajay et al., ICLR 2023).

Oracles: bit-for-bit window selection; the network itself at the two guidance endpoints;
linear dynamics s' = A s + G a with G of full column rank, whose least-squares inverse model
G^+ (s' - A s) recovers every action exactly; the noising x_k formed here in float64 from the
schedule; for the dropout rate, a network that echoes the condition, so each row's loss shows
whether the implementation dropped it, checked row by row against the Bernoulli draws passed
in and in aggregate against a sample-size bound. The reference is only the oracle of
matches_reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from diffrl_ref import spec
from diffrl_ref.reference import decision_diffuser as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.networks import MLP, time_embedding
from diffrl_ref.suite.stats import assert_mean_within
from diffrl_ref.suite.strategies import betas, finite

F = NDArray[np.float64]
InvFn = Callable[[F, F], F]
_MISH_LIP = 1.1  # max |d/dx x tanh(softplus(x))| ~ 1.0998


# ---- helpers --------------------------------------------------------------------------


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


def _snap(v: float) -> float:
    """|v| < 1e-12 becomes 0 (keeps products of drawn values away from underflow; not a tolerance)."""
    return 0.0 if abs(v) < 1e-12 else v


def _arr(shape: tuple[int, ...], scale: float) -> st.SearchStrategy[F]:
    return hnp.arrays(np.float64, shape, elements=finite(-scale, scale).map(_snap))


def _cond_net(seed: int, H: int, ds: int, dy: int) -> tuple[Callable[[F, Any, F], F], float]:
    """An MLP eps_theta(x, k, y) on [x flattened, emb(k), y] and a bound on its Lipschitz constant in x."""
    n, emb = H * ds, 8
    net = MLP.init(seed, [n + emb + dy, 16, 16, n], "mish")

    def eps_fn(x: F, k: Any, y: F) -> F:
        xx = _f64(x)
        e = np.broadcast_to(time_embedding(k, emb), (xx.shape[0], emb))
        return net(np.concatenate([xx.reshape(xx.shape[0], -1), e, _f64(y)], axis=1)).reshape(xx.shape)

    (w1, _), (w2, _), (w3, _) = net.params
    lip = float(np.linalg.norm(w1[:n], 2) * np.linalg.norm(w2, 2) * np.linalg.norm(w3, 2)) * _MISH_LIP**2
    return eps_fn, lip


def _affine_inv(seed: int, ds: int, da: int) -> tuple[InvFn, Callable[[F, F], F]]:
    """f(s, s') = W_1 s + W_2 s' + c (not symmetric in its arguments) and its rounding-effect bound."""
    rng = np.random.default_rng(seed)
    W1, W2, c = rng.normal(size=(da, ds)), rng.normal(size=(da, ds)), rng.normal(size=da)

    def f(s: F, s2: F) -> F:
        return _f64(s) @ W1.T + _f64(s2) @ W2.T + c

    def spread(s: F, s2: F) -> F:
        return _f64(np.abs(s) @ np.abs(W1).T + np.abs(s2) @ np.abs(W2).T + np.abs(c))

    return f, spread


def _linear_system(seed: int, ds: int, da: int) -> tuple[F, F, F]:
    """A (ds, ds), G (ds, da) of full column rank (orthonormal columns times scales in [0.5, 2]), P = G^+."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(ds, ds)) / np.sqrt(ds)
    Q, _ = np.linalg.qr(rng.normal(size=(ds, ds)))
    G = Q[:, :da] * rng.uniform(0.5, 2.0, da)
    return A, G, _f64(np.linalg.pinv(G))


def _ls_inverse(A: F, G: F, P: F) -> tuple[InvFn, Callable[[F, F, F], F]]:
    """The least-squares inverse model f(s, s') = G^+ (s' - A s) and the bound
    |G^+| (|s'| + |A| |s| + |G| |a|) on the effect of rounding in it and in the rollout."""
    def f(s: F, s2: F) -> F:
        return (_f64(s2) - _f64(s) @ A.T) @ P.T

    def spread(s: F, s2: F, a: F) -> F:
        return _f64((np.abs(s2) + np.abs(s) @ np.abs(A).T + np.abs(a) @ np.abs(G).T) @ np.abs(P).T)

    return f, spread


# ---- decision_diffuser.state_trajectory -----------------------------------------------


@st.composite
def _episode(draw: st.DrawFn) -> tuple[F, int, int]:
    B, T, ds = draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.integers(1, 3))
    t = draw(st.integers(0, T - 1))
    return draw(_arr((B, T, ds), 10.0)), t, draw(st.integers(1, T - t))


@clause("decision_diffuser.state_trajectory", "window")
@given(case=_episode())
def test_state_trajectory_window(impl: Any, clause_id: str, case: tuple[F, int, int]) -> None:
    s, t, H = case
    s = round_to(impl.dtype, s)
    x = _f64(need(impl, clause_id)(s, t, H))
    B, _, ds = s.shape
    assert_that(x.shape == (B, H, ds), clause_id, f"shape {x.shape}, expected (B, H, ds) = {(B, H, ds)}")
    for h in range(H):
        assert_that(bool(np.array_equal(x[:, h], s[:, t + h])), clause_id, f"x[:, {h}] is not s_(t+{h}) (t = {t})")


@clause("decision_diffuser.state_trajectory", "matches_reference")
@given(case=_episode())
def test_state_trajectory_matches_reference(impl: Any, clause_id: str, case: tuple[F, int, int]) -> None:
    s, t, H = case
    s = round_to(impl.dtype, s)
    assert_close(clause_id, need(impl, clause_id)(s, t, H), ref.state_trajectory(s, t, H), dtype=impl.dtype,
                 inputs={"t": t, "H": H})


_E = np.ones((2, 5, 3))
_WINDOW_BAD: dict[str, tuple[Any, ...]] = {
    "window past the end": (_E, 3, 3),
    "t = T": (_E, 5, 1),
    "t < 0": (_E, -1, 2),
    "H = 0": (_E, 0, 0),
    "t float": (_E, 1.5, 2),
    "states NaN": (np.full((2, 5, 3), np.nan), 0, 2),
    "states 2-D": (np.ones((5, 3)), 0, 2),
}


@clause("decision_diffuser.state_trajectory", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_WINDOW_BAD)))
def test_state_trajectory_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_WINDOW_BAD[case])


# ---- decision_diffuser.guided_eps -----------------------------------------------------


@st.composite
def _cfg_case(draw: st.DrawFn) -> dict[str, Any]:
    B, H, ds, dy = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    per_row = draw(st.booleans())
    k: Any = (np.asarray(draw(st.lists(st.integers(1, 1000), min_size=B, max_size=B)), dtype=np.int64) if per_row
              else draw(st.integers(1, 1000)))
    return {"x": draw(_arr((B, H, ds), 5.0)), "k": k, "y": draw(_arr((B, dy), 5.0)),
            "y_null": draw(st.one_of(st.none(), _arr((B, dy), 5.0))), "omega": draw(finite(0.0, 10.0).map(_snap)),
            "seed": draw(st.integers(0, 2**16))}


def _cfg_inputs(impl: Any, case: dict[str, Any]) -> tuple[F, Any, F, F | None, float, Callable[[F, Any, F], F]]:
    x, y = round_to(impl.dtype, case["x"]), round_to(impl.dtype, case["y"])
    y_null = None if case["y_null"] is None else round_to(impl.dtype, case["y_null"])
    eps_fn, _ = _cond_net(case["seed"], x.shape[1], x.shape[2], y.shape[1])
    return x, case["k"], y, y_null, float(round_to(impl.dtype, case["omega"])), eps_fn


def _endpoints(x: F, k: Any, y: F, y_null: F | None, eps_fn: Callable[[F, Any, F], F]) -> tuple[F, F]:
    """The network's unconditional and conditional predictions, evaluated here."""
    kk = np.broadcast_to(np.asarray(k), (x.shape[0],)).astype(np.int64)
    empty = np.zeros_like(y) if y_null is None else y_null
    return _f64(eps_fn(x, kk, empty)), _f64(eps_fn(x, kk, y))


@clause("decision_diffuser.guided_eps", "endpoints")
@given(case=_cfg_case())
def test_guided_eps_endpoints(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, k, y, y_null, _, eps_fn = _cfg_inputs(impl, case)
    eu, ec = _endpoints(x, k, y, y_null, eps_fn)
    fn = need(impl, clause_id)
    assert_close(clause_id, fn(x, k, y, eps_fn, 0.0, y_null), eu, dtype=impl.dtype,
                 what="omega = 0: eps(x_k, empty, k)", eps_uncond=eu, eps_cond=ec, omega=0.0, oracle=0.0,
                 inputs={"y_null given": y_null is not None})
    assert_close(clause_id, fn(x, k, y, eps_fn, 1.0, y_null), ec, dtype=impl.dtype,
                 what="omega = 1: eps(x_k, y, k)", eps_uncond=eu, eps_cond=ec, omega=1.0, oracle=0.0)


@clause("decision_diffuser.guided_eps", "affine_in_omega")
@given(case=_cfg_case())
def test_guided_eps_affine(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, k, y, y_null, omega, eps_fn = _cfg_inputs(impl, case)
    eu, ec = _endpoints(x, k, y, y_null, eps_fn)
    fn = need(impl, clause_id)
    at0, at1 = (_f64(fn(x, k, y, eps_fn, w, y_null)) for w in (0.0, 1.0))
    assert_close(clause_id, fn(x, k, y, eps_fn, omega, y_null), (1 - omega) * at0 + omega * at1, dtype=impl.dtype,
                 what="g(omega) = (1 - omega) g(0) + omega g(1)", eps_uncond=eu, eps_cond=ec, omega=omega,
                 oracle=(1 + 2 * omega) * (np.abs(eu) + np.abs(ec)), inputs={"omega": omega})


@clause("decision_diffuser.guided_eps", "matches_reference")
@given(case=_cfg_case())
def test_guided_eps_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, k, y, y_null, omega, eps_fn = _cfg_inputs(impl, case)
    eu, ec = _endpoints(x, k, y, y_null, eps_fn)
    assert_close(clause_id, need(impl, clause_id)(x, k, y, eps_fn, omega, y_null),
                 ref.guided_eps(x, k, y, eps_fn, omega, y_null), dtype=impl.dtype, eps_uncond=eu, eps_cond=ec,
                 omega=omega, oracle=0.0, inputs={"omega": omega})


def _zero_net(x: F, k: Any, y: F) -> F:
    return np.zeros_like(_f64(x))


def _nan_net(x: F, k: Any, y: F) -> F:
    return np.full(np.shape(x), np.nan)


def _flat_net(x: F, k: Any, y: F) -> F:
    return np.zeros((np.shape(x)[0], int(np.prod(np.shape(x)[1:]))))


_X = np.ones((2, 3, 2))
_Y = np.ones((2, 1))
_CFG_BAD: dict[str, tuple[Any, ...]] = {
    "omega < 0": (_X, 1, _Y, _zero_net, -0.5),
    "omega NaN": (_X, 1, _Y, _zero_net, np.nan),
    "x NaN": (np.full((2, 3, 2), np.nan), 1, _Y, _zero_net, 1.2),
    "y NaN": (_X, 1, np.full((2, 1), np.nan), _zero_net, 1.2),
    "x 2-D": (np.ones((2, 3)), 1, _Y, _zero_net, 1.2),
    "y wrong rows": (_X, 1, np.ones((3, 1)), _zero_net, 1.2),
    "y_null wrong shape": (_X, 1, _Y, _zero_net, 1.2, np.ones((2, 2))),
    "k = 0": (_X, 0, _Y, _zero_net, 1.2),
    "eps_fn NaN": (_X, 1, _Y, _nan_net, 1.2),
    "eps_fn wrong shape": (_X, 1, _Y, _flat_net, 1.2),
}


@clause("decision_diffuser.guided_eps", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_CFG_BAD)))
def test_guided_eps_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_CFG_BAD[case])


# ---- decision_diffuser.inverse_dynamics -----------------------------------------------


@st.composite
def _plan_case(draw: st.DrawFn) -> tuple[F, int, int]:
    B, H, ds = draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(1, 3))
    return draw(_arr((B, H, ds), 10.0)), draw(st.integers(1, 3)), draw(st.integers(0, 2**16))


@clause("decision_diffuser.inverse_dynamics", "consecutive_pairs")
@given(case=_plan_case())
def test_inverse_dynamics_pairs(impl: Any, clause_id: str, case: tuple[F, int, int]) -> None:
    x, da, seed = case
    x = round_to(impl.dtype, x)
    B, H, ds = x.shape
    f, spread = _affine_inv(seed, ds, da)
    a = _f64(need(impl, clause_id)(x, f))
    assert_that(a.shape == (B, H - 1, da), clause_id, f"shape {a.shape}, expected (B, H-1, da) = {(B, H - 1, da)}")
    for t in range(H - 1):
        assert_close(clause_id, a[:, t], f(x[:, t], x[:, t + 1]), dtype=impl.dtype,
                     what=f"a_{t} = f(s_{t}, s_{t + 1})", n=ds, spread=spread(x[:, t], x[:, t + 1]), inputs={"t": t})


@st.composite
def _rollout(draw: st.DrawFn) -> dict[str, Any]:
    """Linear dynamics s' = A s + G a, G (ds, da) of full column rank, rolled out from random actions."""
    B, H, ds = draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(1, 4))
    da = draw(st.integers(1, ds))
    A, G, P = _linear_system(draw(st.integers(0, 2**16)), ds, da)
    s0, a = draw(_arr((B, ds), 3.0)), draw(_arr((B, H - 1, da), 3.0))
    x = np.empty((B, H, ds))
    x[:, 0] = s0
    for t in range(H - 1):
        x[:, t + 1] = x[:, t] @ A.T + a[:, t] @ G.T
    return {"x": x, "a": a, "A": A, "G": G, "P": P}


@clause("decision_diffuser.inverse_dynamics", "recovers_linear_dynamics")
@given(case=_rollout())
def test_inverse_dynamics_recovers(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x = round_to(impl.dtype, case["x"])
    f, spread = _ls_inverse(case["A"], case["G"], case["P"])
    got = _f64(need(impl, clause_id)(x, f))
    assert_close(clause_id, got, case["a"], dtype=impl.dtype, what="G^+ (s_{t+1} - A s_t) = a_t", n=x.shape[2],
                 spread=spread(x[:, :-1], x[:, 1:], case["a"]), inputs={"t": np.arange(x.shape[1] - 1)[None, :, None]})


@clause("decision_diffuser.inverse_dynamics", "matches_reference")
@given(case=_plan_case())
def test_inverse_dynamics_matches_reference(impl: Any, clause_id: str, case: tuple[F, int, int]) -> None:
    x, da, seed = case
    x = round_to(impl.dtype, x)
    f, spread = _affine_inv(seed, x.shape[2], da)
    assert_close(clause_id, need(impl, clause_id)(x, f), ref.inverse_dynamics(x, f), dtype=impl.dtype,
                 n=x.shape[2], spread=spread(x[:, :-1], x[:, 1:]))


def _inv_ok(s: F, s2: F) -> F:
    return _f64(s2) - _f64(s)


def _inv_nan(s: F, s2: F) -> F:
    return np.full(np.shape(s), np.nan)


def _inv_rows(s: F, s2: F) -> F:
    return np.zeros((1, np.shape(s)[1]))


_INV_BAD: dict[str, tuple[Any, ...]] = {
    "H = 1": (np.ones((2, 1, 2)), _inv_ok),
    "x NaN": (np.full((2, 3, 2), np.nan), _inv_ok),
    "x 2-D": (np.ones((3, 2)), _inv_ok),
    "inv_fn NaN": (np.ones((2, 3, 2)), _inv_nan),
    "inv_fn wrong rows": (np.ones((2, 3, 2)), _inv_rows),
}


@clause("decision_diffuser.inverse_dynamics", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_INV_BAD)))
def test_inverse_dynamics_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_INV_BAD[case])


# ---- decision_diffuser.inverse_dynamics_loss ------------------------------------------


def _norm(a: F) -> F:
    return _f64(np.linalg.norm(a, axis=-1))


@st.composite
def _transitions(draw: st.DrawFn) -> tuple[F, F, F, int]:
    B, ds, da = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (draw(_arr((B, ds), 5.0)), draw(_arr((B, da), 5.0)), draw(_arr((B, ds), 5.0)),
            draw(st.integers(0, 2**16)))


@clause("decision_diffuser.inverse_dynamics_loss", "squared_error")
@given(case=_transitions())
def test_inv_loss_squared_error(impl: Any, clause_id: str, case: tuple[F, F, F, int]) -> None:
    s, a, s2, seed = case
    s, a, s2 = (round_to(impl.dtype, v) for v in (s, a, s2))
    f, spread = _affine_inv(seed, s.shape[1], a.shape[1])
    got = need(impl, clause_id)(s, a, s2, f)
    assert_close(clause_id, got, np.sum((a - f(s, s2)) ** 2, axis=1), dtype=impl.dtype,
                 what="sum_j (a_j - f(s, s')_j)^2", n=a.shape[1] + s.shape[1], u=_norm(a) + _norm(spread(s, s2)))


@clause("decision_diffuser.inverse_dynamics_loss", "zero_at_exact_inverse")
@given(case=_rollout())
def test_inv_loss_zero_at_exact_inverse(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x = round_to(impl.dtype, case["x"])
    ds, da = x.shape[2], case["a"].shape[2]
    s, s2 = x[:, :-1].reshape(-1, ds), x[:, 1:].reshape(-1, ds)
    a = round_to(impl.dtype, case["a"].reshape(-1, da))
    f, spread = _ls_inverse(case["A"], case["G"], case["P"])
    got = need(impl, clause_id)(s, a, s2, f)
    assert_close(clause_id, got, np.zeros(s.shape[0]), dtype=impl.dtype, what="loss of G^+ (s' - A s) is 0",
                 n=da + ds, u=_norm(a) + _norm(spread(s, s2, a)))


@clause("decision_diffuser.inverse_dynamics_loss", "matches_reference")
@given(case=_transitions())
def test_inv_loss_matches_reference(impl: Any, clause_id: str, case: tuple[F, F, F, int]) -> None:
    s, a, s2, seed = case
    s, a, s2 = (round_to(impl.dtype, v) for v in (s, a, s2))
    f, spread = _affine_inv(seed, s.shape[1], a.shape[1])
    assert_close(clause_id, need(impl, clause_id)(s, a, s2, f), ref.inverse_dynamics_loss(s, a, s2, f),
                 dtype=impl.dtype, n=a.shape[1] + s.shape[1], u=_norm(a) + _norm(spread(s, s2)))


_S2 = np.ones((2, 3))
_A2 = np.ones((2, 1))


def _inv_a(s: F, s2: F) -> F:
    return np.zeros((np.shape(s)[0], 1))


_LOSS_BAD: dict[str, tuple[Any, ...]] = {
    "states NaN": (np.full((2, 3), np.nan), _A2, _S2, _inv_a),
    "actions inf": (_S2, np.full((2, 1), np.inf), _S2, _inv_a),
    "1-D states": (np.ones(3), _A2, np.ones(3), _inv_a),
    "next_states shape": (_S2, _A2, np.ones((2, 2)), _inv_a),
    "actions rows": (_S2, np.ones((3, 1)), _S2, _inv_a),
    "inv_fn NaN": (_S2, _A2, _S2, _inv_nan),
    "inv_fn wrong shape": (_S2, _A2, _S2, _inv_ok),
}


@clause("decision_diffuser.inverse_dynamics_loss", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_LOSS_BAD)))
def test_inv_loss_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_LOSS_BAD[case])


# ---- decision_diffuser.dropout_loss ---------------------------------------------------


@st.composite
def _loss_case(draw: st.DrawFn) -> dict[str, Any]:
    b = draw(betas(max_K=40))
    K = b.size
    B, H, ds, dy = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    per_row = draw(st.booleans())
    k: Any = (np.asarray(draw(st.lists(st.integers(1, K), min_size=B, max_size=B)), dtype=np.int64) if per_row
              else draw(st.integers(1, K)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return {"b": b, "k": k, "x0": draw(_arr((B, H, ds), 5.0)), "eps": rng.standard_normal((B, H, ds)),
            "y": draw(_arr((B, dy), 5.0)), "y_null": draw(st.one_of(st.none(), _arr((B, dy), 5.0))),
            "drop": rng.integers(0, 2, B).astype(np.float64), "seed": draw(st.integers(0, 2**16))}


def _loss_oracle(x0: F, e: F, b: F, k: Any, cond: F, eps_fn: Callable[[F, Any, F], F],
                 lip: float) -> tuple[F, dict[str, Any]]:
    """||eps - eps_fn(x_k, k, cond)||^2 per row, x_k formed here, and the rule's variables."""
    B = x0.shape[0]
    ab_all = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    kk = np.broadcast_to(np.asarray(k), (B,)).astype(np.int64)
    ab = ab_all[kk].reshape(B, 1, 1)
    xk = np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * e
    e_hat = _f64(eps_fn(xk, kk, cond))
    loss = np.sum((e - e_hat) ** 2, axis=(1, 2))
    flat = (B, -1)
    size = (np.abs(x0) + np.abs(e) / np.sqrt(1.0 - ab)).reshape(flat)
    u = lip * _norm(size) + _norm(e.reshape(flat)) + _norm(e_hat.reshape(flat))
    return loss, {"K": b.size, "n": int(np.prod(x0.shape[1:])), "u": u}


def _loss_inputs(impl: Any, case: dict[str, Any]) -> tuple[F, F, F, Any, F, F | None, Callable[[F, Any, F], F], float]:
    x0, e, b, y = (round_to(impl.dtype, case[n]) for n in ("x0", "eps", "b", "y"))
    y_null = None if case["y_null"] is None else round_to(impl.dtype, case["y_null"])
    eps_fn, lip = _cond_net(case["seed"], x0.shape[1], x0.shape[2], y.shape[1])
    return x0, e, b, case["k"], y, y_null, eps_fn, lip


@clause("decision_diffuser.dropout_loss", "b_one_is_unconditional")
@given(case=_loss_case())
def test_dropout_b_one(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x0, e, b, k, y, y_null, eps_fn, lip = _loss_inputs(impl, case)
    B = x0.shape[0]
    empty = np.zeros_like(y) if y_null is None else y_null
    want, rule = _loss_oracle(x0, e, b, k, empty, eps_fn, lip)
    got = need(impl, clause_id)(x0, e, b, k, y, np.ones(B), eps_fn, y_null)
    assert_close(clause_id, got, want, dtype=impl.dtype, what="b = 1: ||eps - eps(x_k, empty, k)||^2", **rule,
                 inputs={"k": k, "y_null given": y_null is not None})


@clause("decision_diffuser.dropout_loss", "b_zero_is_conditional")
@given(case=_loss_case())
def test_dropout_b_zero(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x0, e, b, k, y, y_null, eps_fn, lip = _loss_inputs(impl, case)
    want, rule = _loss_oracle(x0, e, b, k, y, eps_fn, lip)
    got = need(impl, clause_id)(x0, e, b, k, y, np.zeros(x0.shape[0]), eps_fn, y_null)
    assert_close(clause_id, got, want, dtype=impl.dtype, what="b = 0: ||eps - eps(x_k, y, k)||^2", **rule,
                 inputs={"k": k})


_N = 20000  # rows of the dropout-rate check: the rate's bound z(ALPHA) sqrt(p (1 - p) / _N) is 0.010 to 0.015
_Y_ON = 8.0  # the condition value; exact in every dtype, far from the null condition 0
_E_MAX = 2.0  # |eps| clipped here, so each row's two possible losses are far apart (see below)


def _echo_net(x: F, k: Any, y: F) -> F:
    """A network whose prediction is the condition itself, y_1 in every entry (x and k ignored)."""
    return np.broadcast_to(_f64(y)[:, :1, None], np.shape(x)).copy()


@clause("decision_diffuser.dropout_loss", "dropout_rate")
@given(p=st.sampled_from([0.1, 0.25]))
def test_dropout_rate(impl: Any, clause_id: str, p: float) -> None:
    rng = np.random.default_rng(2023)
    H, ds, K = 2, 2, 10
    n = H * ds
    b = round_to(impl.dtype, np.linspace(1e-4, 0.02, K))
    x0 = round_to(impl.dtype, rng.standard_normal((_N, H, ds)))
    e = round_to(impl.dtype, np.clip(rng.standard_normal((_N, H, ds)), -_E_MAX, _E_MAX))
    y = np.full((_N, 1), _Y_ON)
    k = rng.integers(1, K + 1, _N)
    drop = (rng.random(_N) < p).astype(np.float64)  # b ~ Bernoulli(p), passed to the implementation
    got = _f64(need(impl, clause_id)(x0, e, b, k, y, drop, _echo_net))
    # With the echo network the loss of a row is exactly ||eps||^2 (null condition 0) or ||eps - 8||^2
    # (condition kept), whatever x_k is. Evaluating n squared differences and their sum rounds by at
    # most (n + 2) eps / 2 relative to M = sum_j (|eps_j| + |eps_hat_j|)^2 >= loss (M also bounds an
    # expanded ||eps||^2 - 2 <eps, eps_hat> + ||eps_hat||^2); doubled: tau = (n + 2) eps M.
    eps = spec.EPS[impl.dtype]
    flat = e.reshape(_N, n)
    uncond, cond = np.sum(flat**2, axis=1), np.sum((flat - _Y_ON) ** 2, axis=1)
    tau_u = (n + 2) * eps * np.sum(np.abs(flat) ** 2, axis=1)
    tau_c = (n + 2) * eps * np.sum((np.abs(flat) + _Y_ON) ** 2, axis=1)
    # |eps| <= 2 gives cond - uncond = sum_j 8 (8 - 2 eps_j) >= 32 n, while tau_u + tau_c
    # <= (n + 2) eps 104 n (4.9 n in bfloat16, n = 4): the two windows never overlap.
    assert_that(bool(np.all(cond - uncond > tau_u + tau_c)), clause_id,
                "test design: the conditional and unconditional losses of a row are not separable")
    is_uncond, is_cond = np.abs(got - uncond) <= tau_u, np.abs(got - cond) <= tau_c
    neither = ~(is_uncond | is_cond)
    assert_that(not bool(neither.any()), clause_id,
                f"{int(neither.sum())} rows have a loss that is neither ||eps||^2 nor ||eps - y||^2 "
                f"(first at row {int(np.argmax(neither))}: {got[np.argmax(neither)]!r})")
    assert_mean_within(clause_id, is_uncond.astype(np.float64), p, float(np.sqrt(p * (1 - p))),
                       what=f"fraction of rows the implementation trained without the condition, p = {p}")
    wrong = is_uncond != (drop == 1)
    assert_that(not bool(wrong.any()), clause_id, f"{int(wrong.sum())} rows dropped the condition where b = 0 or "
                f"kept it where b = 1 (first at row {int(np.argmax(wrong))})")


@clause("decision_diffuser.dropout_loss", "matches_reference")
@given(case=_loss_case())
def test_dropout_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x0, e, b, k, y, y_null, eps_fn, lip = _loss_inputs(impl, case)
    drop = case["drop"]
    want = ref.dropout_loss(x0, e, b, k, y, drop, eps_fn, y_null)
    mix = (1 - drop)[:, None] * y + drop[:, None] * (np.zeros_like(y) if y_null is None else y_null)
    _, rule = _loss_oracle(x0, e, b, k, mix, eps_fn, lip)
    assert_close(clause_id, need(impl, clause_id)(x0, e, b, k, y, drop, eps_fn, y_null), want, dtype=impl.dtype,
                 **rule, inputs={"k": k, "b": drop})


_B3 = np.array([0.1, 0.2, 0.3])
_D0 = np.zeros(2)
_LOSSD_BAD: dict[str, tuple[Any, ...]] = {
    "b = 0.5": (_X, _X, _B3, 1, _Y, np.full(2, 0.5), _zero_net),
    "b wrong shape": (_X, _X, _B3, 1, _Y, np.zeros(3), _zero_net),
    "x0 NaN": (np.full((2, 3, 2), np.nan), _X, _B3, 1, _Y, _D0, _zero_net),
    "eps shape": (_X, np.ones((2, 3, 1)), _B3, 1, _Y, _D0, _zero_net),
    "y rows": (_X, _X, _B3, 1, np.ones((3, 1)), _D0, _zero_net),
    "k = 0": (_X, _X, _B3, 0, _Y, _D0, _zero_net),
    "k = K + 1": (_X, _X, _B3, 4, _Y, _D0, _zero_net),
    "eps_fn wrong shape": (_X, _X, _B3, 1, _Y, _D0, _flat_net),
}


@clause("decision_diffuser.dropout_loss", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_LOSSD_BAD)))
def test_dropout_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_LOSSD_BAD[case])
