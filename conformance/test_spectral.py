"""Conformance: spec family ``spectral`` (spectral factorisation of a finite MDP's transitions).

The oracles are exact: a finite MDP drawn by hypothesis, its transition matrix factored by an
SVD (or by P G and G^{-T}), and the Bellman equation solved with np.linalg.solve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffrl_ref.reference import spectral as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.strategies import BELOW_ONE, finite

F = np.ndarray


# ---- helpers --------------------------------------------------------------------------


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


#: Drawn magnitudes below this become 0. The rules are relative, and a product that underflows
#: carries an absolute error they do not cover: gamma phi mu v, the longest product of drawn values,
#: is then 0 or >= 1e-36, above 2^-126 = 1.2e-38, the smallest normal float32 and bfloat16 (the rule,
#: >= 16 eps 1e-36, then also covers the <= 2^-134 half-spacing of each of the k N + k + 2 operations
#: of a sum whose cancellation ends in the subnormal range). 1e-12 (finite()'s flush) let
#: gamma phi mu v = 1e-48 underflow to 0 in float32.
TINY = 1e-9


def _snap(v: float) -> float:
    return 0.0 if abs(v) < TINY else v


def _arr(shape: tuple[int, ...], lo: float, hi: float) -> st.SearchStrategy[F]:
    return hnp.arrays(np.float64, shape, elements=finite(lo, hi).map(_snap))


@st.composite
def _mdp(draw: st.DrawFn, max_S: int = 4, max_A: int = 3) -> dict[str, Any]:
    """A finite MDP: P (S A, S) row-stochastic (rows ordered (s, a), a fastest), r (S A,), a policy pi (S, A), gamma."""
    S = draw(st.integers(2, max_S))
    A = draw(st.integers(1, max_A))
    raw = draw(_arr((S * A, S), 0.0, 1.0))
    # One entry of each row raised by 0.1: every row sum is >= 0.1, so normalising never divides by ~0.
    raw[np.arange(S * A), draw(st.lists(st.integers(0, S - 1), min_size=S * A, max_size=S * A))] += 0.1
    P = raw / raw.sum(axis=1, keepdims=True)
    pi_raw = draw(_arr((S, A), 0.05, 1.0))
    pi = pi_raw / pi_raw.sum(axis=1, keepdims=True)
    r = draw(_arr((S * A,), -1.0, 1.0))
    gamma = _snap(draw(finite(0.0, 0.95)))
    return {"S": S, "A": A, "P": P, "r": r, "pi": pi, "gamma": gamma}


def _policy_matrix(pi: F) -> F:
    """Pi (S, S A): V = Pi Q, V(s) = sum_a pi(a|s) Q(s, a)."""
    S, A = pi.shape
    Pi = np.zeros((S, S * A))
    for s in range(S):
        Pi[s, s * A:(s + 1) * A] = pi[s]
    return Pi


def _svd_features(P: F) -> tuple[F, F]:
    """phi = U diag(sigma) (S A, k), mu = V (S, k): an exact factorisation P = phi mu^T."""
    U, sig, Vt = np.linalg.svd(P, full_matrices=False)
    return U * sig, Vt.T


def _mag(phi: F, mu: F) -> F:
    """sum_l |phi_il| |mu_jl| per entry (B, N): the dot-product error bound's magnitude."""
    return np.asarray(np.abs(phi) @ np.abs(mu).T)


def _fact_err(P: F, cond: float = 1.0) -> float:
    """Backward error of a float64 factorisation of P, per entry, in units of eps: n sqrt(S A) cond."""
    n = max(P.shape)
    return float(n * np.sqrt(P.shape[0]) * cond)


# ---- spectral.transition ----------------------------------------------------------------


@clause("spectral.transition", "exact_factorisation")
@given(mdp=_mdp())
def test_transition_exact_factorisation(impl: Any, clause_id: str, mdp: dict[str, Any]) -> None:
    P = mdp["P"]
    phi, mu = (round_to(impl.dtype, x) for x in _svd_features(P))
    got = _f64(need(impl, clause_id)(phi, mu))
    assert_close(clause_id, got, P, dtype=impl.dtype, what="<phi, mu> = P (SVD factors)", k=phi.shape[1],
                 mag=_mag(phi, mu) + _fact_err(P), inputs={"P": P})


@st.composite
def _mixing(draw: st.DrawFn, k: int) -> tuple[F, float]:
    """A k x k matrix G = Q diag(d) with Q orthogonal and d in [1, 10]: cond(G) <= 10."""
    Q, _ = np.linalg.qr(draw(_arr((k, k), -1.0, 1.0)) + 2.0 * np.eye(k))
    d = np.asarray(draw(st.lists(finite(1.0, 10.0), min_size=k, max_size=k)))
    return Q * d, float(d.max() / d.min())


@clause("spectral.transition", "rows_sum_to_one")
@given(data=st.data())
def test_transition_rows_sum_to_one(impl: Any, clause_id: str, data: st.DataObject) -> None:
    mdp = data.draw(_mdp())
    P = mdp["P"]
    G, cond = data.draw(_mixing(P.shape[1]))
    phi, mu = round_to(impl.dtype, P @ G), round_to(impl.dtype, np.linalg.inv(G).T)
    got = _f64(need(impl, clause_id)(phi, mu))
    N = P.shape[1]
    mag = (_mag(phi, mu) + _fact_err(P, cond)).sum(axis=1) + N
    assert_close(clause_id, got.sum(axis=1), np.ones(P.shape[0]), dtype=impl.dtype, what="row sums of phi mu^T",
                 k=phi.shape[1], mag=mag, inputs={"cond_G": cond})


@st.composite
def _features(draw: st.DrawFn) -> tuple[F, F]:
    B, N, k = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    return draw(_arr((B, k), -10.0, 10.0)), draw(_arr((N, k), -10.0, 10.0))


@clause("spectral.transition", "matches_reference")
@given(case=_features())
def test_transition_matches_reference(impl: Any, clause_id: str, case: tuple[F, F]) -> None:
    phi, mu = (round_to(impl.dtype, x) for x in case)
    got, want = need(impl, clause_id)(phi, mu), ref.transition(phi, mu)
    assert_close(clause_id, got, want, dtype=impl.dtype, k=phi.shape[1], mag=_mag(phi, mu))


_PHI = np.ones((2, 3))
_BAD_T: list[tuple[Any, ...]] = [
    (np.full((2, 3), np.nan), _PHI),
    (_PHI, np.full((2, 3), np.inf)),
    (np.ones(3), _PHI),                 # phi of shape (k,), not (B, k)
    (_PHI, np.ones(3)),
    (_PHI, np.ones((2, 4))),            # feature dimensions differ
]


@clause("spectral.transition", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_T))))
def test_transition_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_T[i])


# ---- spectral.q_function -----------------------------------------------------------------


def _q_mag(r: F, phi: F, mu: F, v: F, gamma: float, P: F | None) -> F:
    """|r| + gamma sum_l sum_j |phi_il mu_jl v_j|, plus gamma N fact_err max|V| for factored P."""
    mag = np.abs(r) + gamma * (np.abs(phi) @ (np.abs(mu).T @ np.abs(v)))
    if P is not None:
        mag = mag + gamma * P.shape[1] * _fact_err(P) * np.max(np.abs(v))
    return np.asarray(mag)


@clause("spectral.q_function", "bellman_exact")
@given(mdp=_mdp())
def test_q_function_bellman_exact(impl: Any, clause_id: str, mdp: dict[str, Any]) -> None:
    P, r, pi, gamma = mdp["P"], mdp["r"], mdp["pi"], mdp["gamma"]
    gamma = float(round_to(impl.dtype, gamma))
    n = P.shape[0]
    Pi = _policy_matrix(pi)
    M = np.eye(n) - gamma * P @ Pi
    Q = np.linalg.solve(M, r)                     # the Bellman equation, solved directly
    kappa = float(np.linalg.cond(M, np.inf))
    phi, mu = _svd_features(P)
    V = Pi @ Q
    phi, mu, V, rr = (round_to(impl.dtype, x) for x in (phi, mu, V, r))
    got = _f64(need(impl, clause_id)(rr, phi, mu, V, gamma))
    assert_close(clause_id, got, Q, dtype=impl.dtype, what="spectral Q vs the solved Bellman equation",
                 k=phi.shape[1], N=mu.shape[0], mag=_q_mag(rr, phi, mu, V, gamma, P), n=n, kappa=kappa,
                 qmax=float(np.max(np.abs(Q))), inputs={"gamma": gamma, "kappa": kappa})


@clause("spectral.q_function", "constant_value")
@given(mdp=_mdp(), c=finite(-10.0, 10.0))
def test_q_function_constant_value(impl: Any, clause_id: str, mdp: dict[str, Any], c: float) -> None:
    P, r, gamma = mdp["P"], mdp["r"], float(round_to(impl.dtype, mdp["gamma"]))
    phi, mu = (round_to(impl.dtype, x) for x in _svd_features(P))
    c = float(round_to(impl.dtype, c))
    V = np.full(P.shape[1], c)
    rr = round_to(impl.dtype, r)
    got = _f64(need(impl, clause_id)(rr, phi, mu, V, gamma))
    assert_close(clause_id, got, rr + gamma * c, dtype=impl.dtype, what="V = c gives Q = r + gamma c",
                 k=phi.shape[1], N=mu.shape[0], mag=_q_mag(rr, phi, mu, V, gamma, P), n=1, kappa=0.0, qmax=0.0,
                 inputs={"gamma": gamma, "c": c})


@st.composite
def _q_case(draw: st.DrawFn) -> tuple[Any, ...]:
    phi, mu = draw(_features())
    r = draw(_arr((phi.shape[0],), -10.0, 10.0))
    v = draw(_arr((mu.shape[0],), -10.0, 10.0))
    return r, phi, mu, v, _snap(draw(finite(0.0, BELOW_ONE)))


@clause("spectral.q_function", "matches_reference")
@given(case=_q_case())
def test_q_function_matches_reference(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    r, phi, mu, v, g = (round_to(impl.dtype, x) for x in case)
    gamma = float(g)
    got, want = need(impl, clause_id)(r, phi, mu, v, gamma), ref.q_function(r, phi, mu, v, gamma)
    assert_close(clause_id, got, want, dtype=impl.dtype, k=phi.shape[1], N=mu.shape[0],
                 mag=_q_mag(r, phi, mu, v, gamma, None), n=1, kappa=0.0, qmax=0.0)


_R2, _V3 = np.zeros(2), np.ones(2)
_BAD_Q: list[tuple[Any, ...]] = [
    (_R2, _PHI, _PHI, _V3, 1.0),                          # gamma = 1
    (_R2, _PHI, _PHI, _V3, -0.1),                         # gamma < 0
    (_R2, _PHI, _PHI, _V3, np.nan),
    (np.array([0.0, np.nan]), _PHI, _PHI, _V3, 0.9),
    (_R2, _PHI, _PHI, np.array([1.0, np.inf]), 0.9),
    (np.zeros(3), _PHI, _PHI, _V3, 0.9),                  # r of the wrong length
    (_R2, _PHI, _PHI, np.ones(3), 0.9),                   # v of the wrong length
    (_R2, _PHI, np.ones((2, 4)), _V3, 0.9),               # feature dimensions differ
    (_R2, np.ones(3), _PHI, _V3, 0.9),
]


@clause("spectral.q_function", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_Q))))
def test_q_function_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_Q[i])
