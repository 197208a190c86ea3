"""Conformance: spec family ``madiff`` (Zhu et al., NeurIPS 2024).

Oracles: the joint network itself at the two guidance endpoints (a network that couples the
agents); per-agent linear dynamics o' = A_i o + G_i a with G_i of full column rank, whose
least-squares inverse models recover every agent's actions exactly; perturbing the other
agents' slices (decentralised execution). Where a property relates a clause to another
(N = 1 against the Decision Diffuser, one agent's action against the joint inverse dynamics),
the other clause is the float64 reference's, so a failure lands on the clause under test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from diffrl_ref.reference import decision_diffuser as ref_dd
from diffrl_ref.reference import madiff as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.networks import MLP, time_embedding
from diffrl_ref.suite.strategies import finite

F = NDArray[np.float64]
InvFn = Callable[[F, F], F]
JointNet = Callable[[F, Any, F], F]


# ---- helpers --------------------------------------------------------------------------


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


def _snap(v: float) -> float:
    """|v| < 1e-12 becomes 0 (keeps products of drawn values away from underflow; not a tolerance)."""
    return 0.0 if abs(v) < 1e-12 else v


def _arr(shape: tuple[int, ...], scale: float) -> st.SearchStrategy[F]:
    return hnp.arrays(np.float64, shape, elements=finite(-scale, scale).map(_snap))


def _joint_net(seed: int, N: int, H: int, d: int, dy: int) -> JointNet:
    """eps_theta(x, k, y): an MLP on the whole flattened joint trajectory, so every agent's output
    depends on every agent's input (the coupling MADiff's attention provides)."""
    n, emb = N * H * d, 8
    net = MLP.init(seed, [n + emb + dy, 16, 16, n], "mish")

    def eps_fn(x: F, k: Any, y: F) -> F:
        xx = _f64(x)
        e = np.broadcast_to(time_embedding(k, emb), (xx.shape[0], emb))
        return net(np.concatenate([xx.reshape(xx.shape[0], -1), e, _f64(y)], axis=1)).reshape(xx.shape)

    return eps_fn


def _affine_inv(seed: int, d: int, da: int) -> tuple[InvFn, Callable[[F, F], F]]:
    """f(o, o') = W_1 o + W_2 o' + c (order matters) and its rounding-effect bound."""
    rng = np.random.default_rng(seed)
    W1, W2, c = rng.normal(size=(da, d)), rng.normal(size=(da, d)), rng.normal(size=da)

    def f(o: F, o2: F) -> F:
        return _f64(o) @ W1.T + _f64(o2) @ W2.T + c

    def spread(o: F, o2: F) -> F:
        return _f64(np.abs(o) @ np.abs(W1).T + np.abs(o2) @ np.abs(W2).T + np.abs(c))

    return f, spread


# ---- madiff.guided_eps ----------------------------------------------------------------


@st.composite
def _cfg_case(draw: st.DrawFn, N: int | None = None) -> dict[str, Any]:
    B, H, d, dy = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    n_agents = draw(st.integers(2, 4)) if N is None else N
    per_row = draw(st.booleans())
    k: Any = (np.asarray(draw(st.lists(st.integers(1, 1000), min_size=B, max_size=B)), dtype=np.int64) if per_row
              else draw(st.integers(1, 1000)))
    return {"x": draw(_arr((B, n_agents, H, d), 5.0)), "k": k, "y": draw(_arr((B, dy), 5.0)),
            "y_null": draw(st.one_of(st.none(), _arr((B, dy), 5.0))), "omega": draw(finite(0.0, 10.0).map(_snap)),
            "seed": draw(st.integers(0, 2**16))}


def _cfg_inputs(impl: Any, case: dict[str, Any]) -> tuple[F, Any, F, F | None, float, JointNet]:
    x, y = round_to(impl.dtype, case["x"]), round_to(impl.dtype, case["y"])
    y_null = None if case["y_null"] is None else round_to(impl.dtype, case["y_null"])
    _, N, H, d = x.shape
    eps_fn = _joint_net(case["seed"], N, H, d, y.shape[1])
    return x, case["k"], y, y_null, float(round_to(impl.dtype, case["omega"])), eps_fn


def _endpoints(x: F, k: Any, y: F, y_null: F | None, eps_fn: JointNet) -> tuple[F, F]:
    kk = np.broadcast_to(np.asarray(k), (x.shape[0],)).astype(np.int64)
    return _f64(eps_fn(x, kk, np.zeros_like(y) if y_null is None else y_null)), _f64(eps_fn(x, kk, y))


@clause("madiff.guided_eps", "endpoints")
@given(case=_cfg_case())
def test_guided_eps_endpoints(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, k, y, y_null, _, eps_fn = _cfg_inputs(impl, case)
    eu, ec = _endpoints(x, k, y, y_null, eps_fn)
    fn = need(impl, clause_id)
    assert_close(clause_id, fn(x, k, y, eps_fn, 0.0, y_null), eu, dtype=impl.dtype,
                 what="omega = 0: joint eps(x_k, empty, k)", eps_uncond=eu, eps_cond=ec, omega=0.0, oracle=0.0)
    assert_close(clause_id, fn(x, k, y, eps_fn, 1.0, y_null), ec, dtype=impl.dtype,
                 what="omega = 1: joint eps(x_k, y, k)", eps_uncond=eu, eps_cond=ec, omega=1.0, oracle=0.0)


@clause("madiff.guided_eps", "affine_in_omega")
@given(case=_cfg_case())
def test_guided_eps_affine(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, k, y, y_null, omega, eps_fn = _cfg_inputs(impl, case)
    eu, ec = _endpoints(x, k, y, y_null, eps_fn)
    fn = need(impl, clause_id)
    at0, at1 = (_f64(fn(x, k, y, eps_fn, w, y_null)) for w in (0.0, 1.0))
    assert_close(clause_id, fn(x, k, y, eps_fn, omega, y_null), (1 - omega) * at0 + omega * at1, dtype=impl.dtype,
                 what="g(omega) = (1 - omega) g(0) + omega g(1)", eps_uncond=eu, eps_cond=ec, omega=omega,
                 oracle=(1 + 2 * omega) * (np.abs(eu) + np.abs(ec)), inputs={"omega": omega})


@clause("madiff.guided_eps", "single_agent_is_decision_diffuser")
@given(case=_cfg_case(N=1))
def test_guided_eps_single_agent(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, k, y, y_null, omega, eps_fn = _cfg_inputs(impl, case)
    eu, ec = _endpoints(x, k, y, y_null, eps_fn)

    def dd_net(s: F, kk: Any, c: F) -> F:  # the same network seen on (B, H, d)
        return eps_fn(_f64(s)[:, None], kk, c)[:, 0]

    got = _f64(need(impl, clause_id)(x, k, y, eps_fn, omega, y_null))
    want = ref_dd.guided_eps(x[:, 0], k, y, dd_net, omega, y_null)  # the float64 reference's Decision Diffuser
    assert_that(got.shape == x.shape, clause_id, f"shape {got.shape}, expected {x.shape}")
    assert_close(clause_id, got[:, 0], want, dtype=impl.dtype, what="N = 1: reference decision_diffuser.guided_eps",
                 eps_uncond=eu[:, 0], eps_cond=ec[:, 0], omega=omega, oracle=0.0, inputs={"omega": omega})


@clause("madiff.guided_eps", "matches_reference")
@given(case=_cfg_case())
def test_guided_eps_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, k, y, y_null, omega, eps_fn = _cfg_inputs(impl, case)
    eu, ec = _endpoints(x, k, y, y_null, eps_fn)
    assert_close(clause_id, need(impl, clause_id)(x, k, y, eps_fn, omega, y_null),
                 ref.guided_eps(x, k, y, eps_fn, omega, y_null), dtype=impl.dtype, eps_uncond=eu, eps_cond=ec,
                 omega=omega, oracle=0.0, inputs={"omega": omega})


def _zero_net(x: F, k: Any, y: F) -> F:
    return np.zeros_like(_f64(x))


def _flat_net(x: F, k: Any, y: F) -> F:
    return np.zeros((np.shape(x)[0], int(np.prod(np.shape(x)[1:]))))


_X4 = np.ones((2, 3, 4, 2))
_Y = np.ones((2, 1))
_CFG_BAD: dict[str, tuple[Any, ...]] = {
    "omega < 0": (_X4, 1, _Y, _zero_net, -1.0),
    "x NaN": (np.full((2, 3, 4, 2), np.nan), 1, _Y, _zero_net, 1.2),
    "y NaN": (_X4, 1, np.full((2, 1), np.nan), _zero_net, 1.2),
    "x 3-D": (np.ones((2, 4, 2)), 1, _Y, _zero_net, 1.2),
    "y rows": (_X4, 1, np.ones((3, 1)), _zero_net, 1.2),
    "k = 0": (_X4, 0, _Y, _zero_net, 1.2),
    "eps_fn wrong shape": (_X4, 1, _Y, _flat_net, 1.2),
}


@clause("madiff.guided_eps", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_CFG_BAD)))
def test_guided_eps_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_CFG_BAD[case])


# ---- madiff.inverse_dynamics ----------------------------------------------------------


@st.composite
def _joint_plan(draw: st.DrawFn, N: int | None = None) -> tuple[F, int, int]:
    B, H, d = draw(st.integers(1, 3)), draw(st.integers(2, 5)), draw(st.integers(1, 3))
    n_agents = draw(st.integers(2, 4)) if N is None else N
    return draw(_arr((B, n_agents, H, d), 10.0)), draw(st.integers(1, 3)), draw(st.integers(0, 2**16))


def _agent_models(seed: int, N: int, d: int, da: int) -> tuple[list[InvFn], list[Callable[[F, F], F]]]:
    pairs = [_affine_inv(seed + 1000 * i, d, da) for i in range(N)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@clause("madiff.inverse_dynamics", "per_agent_pairs")
@given(case=_joint_plan())
def test_inverse_dynamics_per_agent(impl: Any, clause_id: str, case: tuple[F, int, int]) -> None:
    x, da, seed = case
    x = round_to(impl.dtype, x)
    B, N, H, d = x.shape
    fs, spreads = _agent_models(seed, N, d, da)
    a = _f64(need(impl, clause_id)(x, fs))
    assert_that(a.shape == (B, N, H - 1, da), clause_id, f"shape {a.shape}, expected {(B, N, H - 1, da)}")
    for i in range(N):
        for t in range(H - 1):
            o, o2 = x[:, i, t], x[:, i, t + 1]
            assert_close(clause_id, a[:, i, t], fs[i](o, o2), dtype=impl.dtype,
                         what=f"a_{i}^{t} = f_{i}(o_{i}^{t}, o_{i}^{t + 1})", n=d, spread=spreads[i](o, o2),
                         inputs={"agent": i, "t": t})


@st.composite
def _joint_rollout(draw: st.DrawFn, N: int | None = None) -> dict[str, Any]:
    """Per-agent linear dynamics o' = A_i o + G_i a (G_i of full column rank), rolled out."""
    B, H, d = draw(st.integers(1, 3)), draw(st.integers(2, 5)), draw(st.integers(1, 3))
    n_agents = draw(st.integers(1, 4)) if N is None else N
    da = draw(st.integers(1, d))
    seed = draw(st.integers(0, 2**16))
    x = np.empty((B, n_agents, H, d))
    a = draw(_arr((B, n_agents, H - 1, da), 3.0))
    x[:, :, 0] = draw(_arr((B, n_agents, d), 3.0))
    systems = []
    for i in range(n_agents):
        rng = np.random.default_rng(seed + 7 * i)
        A = rng.normal(size=(d, d)) / np.sqrt(d)
        Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        G = Q[:, :da] * rng.uniform(0.5, 2.0, da)
        systems.append((A, G, np.linalg.pinv(G)))
        for t in range(H - 1):
            x[:, i, t + 1] = x[:, i, t] @ A.T + a[:, i, t] @ G.T
    return {"x": x, "a": a, "systems": systems}


def _ls_model(A: F, G: F, P: F) -> tuple[InvFn, Callable[[F, F, F], F]]:
    """G^+ (o' - A o) and the bound |G^+| (|o'| + |A| |o| + |G| |a|) of the rounding in it and in the rollout."""
    def f(o: F, o2: F) -> F:
        return (_f64(o2) - _f64(o) @ A.T) @ P.T

    def spread(o: F, o2: F, a: F) -> F:
        return _f64((np.abs(o2) + np.abs(o) @ np.abs(A).T + np.abs(a) @ np.abs(G).T) @ np.abs(P).T)

    return f, spread


@clause("madiff.inverse_dynamics", "recovers_linear_dynamics")
@given(case=_joint_rollout())
def test_inverse_dynamics_recovers(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x = round_to(impl.dtype, case["x"])
    models = [_ls_model(*system) for system in case["systems"]]
    got = _f64(need(impl, clause_id)(x, [m[0] for m in models]))
    spread = np.stack([m[1](x[:, i, :-1], x[:, i, 1:], case["a"][:, i]) for i, m in enumerate(models)], axis=1)
    assert_close(clause_id, got, case["a"], dtype=impl.dtype, what="G_i^+ (o_i' - A_i o_i) = a_i", n=x.shape[3],
                 spread=spread,
                 inputs={"agent": np.arange(x.shape[1])[None, :, None, None]})


@clause("madiff.inverse_dynamics", "shared_model")
@given(case=_joint_plan())
def test_inverse_dynamics_shared(impl: Any, clause_id: str, case: tuple[F, int, int]) -> None:
    x, da, seed = case
    x = round_to(impl.dtype, x)
    f, spread = _affine_inv(seed, x.shape[3], da)
    fn = need(impl, clause_id)
    shared, listed = _f64(fn(x, f)), _f64(fn(x, [f] * x.shape[1]))
    assert_that(shared.shape == listed.shape, clause_id, f"shapes {shared.shape} (shared) and {listed.shape} (list)")
    # Both sides are the implementation's, each within the rule of the exact value: spread doubled.
    assert_close(clause_id, shared, listed, dtype=impl.dtype, what="one shared model = [f] * N", n=x.shape[3],
                 spread=2 * np.stack([spread(x[:, i, :-1], x[:, i, 1:]) for i in range(x.shape[1])], axis=1))


@clause("madiff.inverse_dynamics", "single_agent_is_decision_diffuser")
@given(case=_joint_plan(N=1))
def test_inverse_dynamics_single_agent(impl: Any, clause_id: str, case: tuple[F, int, int]) -> None:
    x, da, seed = case
    x = round_to(impl.dtype, x)
    f, spread = _affine_inv(seed, x.shape[3], da)
    got = _f64(need(impl, clause_id)(x, [f]))
    want = ref_dd.inverse_dynamics(x[:, 0], f)  # the float64 reference's Decision Diffuser
    assert_that(got.shape[:2] == (x.shape[0], 1), clause_id, f"shape {got.shape}, expected (B, 1, H-1, da)")
    assert_close(clause_id, got[:, 0], want, dtype=impl.dtype,
                 what="N = 1: reference decision_diffuser.inverse_dynamics", n=x.shape[3],
                 spread=spread(x[:, 0, :-1], x[:, 0, 1:]))


@clause("madiff.inverse_dynamics", "matches_reference")
@given(case=_joint_plan(), shared=st.booleans())
def test_inverse_dynamics_matches_reference(impl: Any, clause_id: str, case: tuple[F, int, int], shared: bool) -> None:
    x, da, seed = case
    x = round_to(impl.dtype, x)
    N, d = x.shape[1], x.shape[3]
    fs, spreads = _agent_models(seed, N, d, da)
    models: Any = fs[0] if shared else fs
    spread = np.stack([(spreads[0] if shared else spreads[i])(x[:, i, :-1], x[:, i, 1:]) for i in range(N)], axis=1)
    assert_close(clause_id, need(impl, clause_id)(x, models), ref.inverse_dynamics(x, models), dtype=impl.dtype,
                 n=d, spread=spread, inputs={"shared": shared})


def _inv_ok(o: F, o2: F) -> F:
    return _f64(o2) - _f64(o)


def _inv_nan(o: F, o2: F) -> F:
    return np.full(np.shape(o), np.nan)


_INV_BAD: dict[str, tuple[Any, ...]] = {
    "too few models": (_X4, [_inv_ok] * 2),
    "too many models": (_X4, [_inv_ok] * 4),
    "H = 1": (np.ones((2, 3, 1, 2)), _inv_ok),
    "x NaN": (np.full((2, 3, 4, 2), np.nan), _inv_ok),
    "x 3-D": (np.ones((2, 4, 2)), _inv_ok),
    "model NaN": (_X4, [_inv_ok, _inv_nan, _inv_ok]),
}


@clause("madiff.inverse_dynamics", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_INV_BAD)))
def test_inverse_dynamics_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_INV_BAD[case])


# ---- madiff.decentralised_action ------------------------------------------------------


@st.composite
def _decentral_case(draw: st.DrawFn, N: int | None = None) -> dict[str, Any]:
    x, da, seed = draw(_joint_plan(N=N))
    _, n_agents, H, _ = x.shape
    return {"x": x, "da": da, "seed": seed, "i": draw(st.integers(0, n_agents - 1)), "t": draw(st.integers(0, H - 2)),
            "other": draw(_arr(x.shape, 10.0))}


@clause("madiff.decentralised_action", "own_slice_only")
@given(case=_decentral_case())
def test_decentral_own_slice(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, i, t = round_to(impl.dtype, case["x"]), case["i"], case["t"]
    f, _ = _affine_inv(case["seed"], x.shape[3], case["da"])
    changed = round_to(impl.dtype, case["other"])
    changed[:, i] = x[:, i]                               # agent i's slice kept, every teammate replaced
    fn = need(impl, clause_id)
    a, a2 = _f64(fn(x, i, f, t)), _f64(fn(changed, i, f, t))
    assert_that(a.shape == a2.shape and bool(np.array_equal(a, a2)), clause_id,
                f"agent {i}'s action changed when only its teammates' slices changed (t = {t}): max change "
                f"{np.max(np.abs(a - a2)) if a.shape == a2.shape else 'shape'}")


@clause("madiff.decentralised_action", "equals_joint_inverse_dynamics")
@given(case=_decentral_case())
def test_decentral_equals_joint(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, i, t = round_to(impl.dtype, case["x"]), case["i"], case["t"]
    f, spread = _affine_inv(case["seed"], x.shape[3], case["da"])
    got = _f64(need(impl, clause_id)(x, i, f, t))
    joint = ref.inverse_dynamics(x, f)  # the float64 reference's joint inverse dynamics
    assert_close(clause_id, got, joint[:, i, t], dtype=impl.dtype,
                 what="a_i = reference inverse_dynamics(x0, f)[:, i, t]", n=x.shape[3],
                 spread=spread(x[:, i, t], x[:, i, t + 1]), inputs={"agent": i, "t": t})


@clause("madiff.decentralised_action", "recovers_linear_dynamics")
@given(case=_joint_rollout(), pick=st.integers(0, 2**16))
def test_decentral_recovers(impl: Any, clause_id: str, case: dict[str, Any], pick: int) -> None:
    x = round_to(impl.dtype, case["x"])
    N, H = x.shape[1], x.shape[2]
    i, t = pick % N, (pick // N) % (H - 1)
    f, spread = _ls_model(*case["systems"][i])
    got = _f64(need(impl, clause_id)(x, i, f, t))
    assert_close(clause_id, got, case["a"][:, i, t], dtype=impl.dtype, what=f"agent {i} recovers a_{i}^{t}",
                 n=x.shape[3], spread=spread(x[:, i, t], x[:, i, t + 1], case["a"][:, i, t]),
                 inputs={"agent": i, "t": t})


@clause("madiff.decentralised_action", "single_agent_is_decision_diffuser")
@given(case=_decentral_case(N=1))
def test_decentral_single_agent(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, t = round_to(impl.dtype, case["x"]), case["t"]
    f, spread = _affine_inv(case["seed"], x.shape[3], case["da"])
    got = _f64(need(impl, clause_id)(x, 0, f, t))
    want = ref_dd.inverse_dynamics(x[:, 0], f)[:, t]  # the float64 reference's Decision Diffuser
    assert_close(clause_id, got, want, dtype=impl.dtype, n=x.shape[3],
                 what="N = 1: reference decision_diffuser.inverse_dynamics(x0[:, 0])[:, t]",
                 spread=spread(x[:, 0, t], x[:, 0, t + 1]), inputs={"t": t})


@clause("madiff.decentralised_action", "matches_reference")
@given(case=_decentral_case())
def test_decentral_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, i, t = round_to(impl.dtype, case["x"]), case["i"], case["t"]
    f, spread = _affine_inv(case["seed"], x.shape[3], case["da"])
    assert_close(clause_id, need(impl, clause_id)(x, i, f, t), ref.decentralised_action(x, i, f, t),
                 dtype=impl.dtype, n=x.shape[3], spread=spread(x[:, i, t], x[:, i, t + 1]), inputs={"agent": i, "t": t})


_DEC_BAD: dict[str, tuple[Any, ...]] = {
    "i = N": (_X4, 3, _inv_ok, 0),
    "i = -1": (_X4, -1, _inv_ok, 0),
    "i float": (_X4, 1.0, _inv_ok, 0),
    "t = H - 1": (_X4, 0, _inv_ok, 3),
    "t = -1": (_X4, 0, _inv_ok, -1),
    "H = 1": (np.ones((2, 3, 1, 2)), 0, _inv_ok, 0),
    "x0 NaN": (np.full((2, 3, 4, 2), np.nan), 0, _inv_ok, 0),
    "x0 3-D": (np.ones((2, 4, 2)), 0, _inv_ok, 0),
}


@clause("madiff.decentralised_action", "rejects_out_of_domain")
@given(case=st.sampled_from(sorted(_DEC_BAD)))
def test_decentral_rejects_out_of_domain(impl: Any, clause_id: str, case: str) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_DEC_BAD[case])
