"""Conformance: spec family ``qmix`` (QMIX, Rashid et al. 2018; MAD2RL greedy actions).

Hypernetworks are built here from fixed seeds (linear layers for the weights and b_1, a
2-layer ReLU net for V(s), as in the paper), so the implementation and the test see the same
functions. Joint action spaces are enumerated exhaustively with itertools.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffrl_ref import spec
from diffrl_ref.reference import qmix as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.networks import MLP
from diffrl_ref.suite.strategies import finite, seeds

F = np.ndarray
Hyper = ref.Hypernetworks


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


def _const(values: F) -> Callable[[F], F]:
    """A hypernetwork that returns fixed values (one row per state row)."""
    return lambda s: values.copy()


class _Net:
    """An MLP with a short repr (hypothesis prints the drawn arguments of a failing example)."""

    def __init__(self, seed: int, sizes: list[int], activation: str) -> None:
        self.mlp = MLP.init(seed, sizes, activation)
        self.label = f"MLP(seed={seed}, sizes={sizes}, {activation})"

    def __call__(self, s: F) -> F:
        return self.mlp(s)

    def __repr__(self) -> str:
        return self.label


def _hyper(seed: int, N: int, H: int, ds: int) -> Hyper:
    """Paper architecture: linear hypernetworks for W_1, b_1, w_2; 2-layer ReLU net for V(s)."""
    return Hyper(_Net(seed, [ds, N * H], "linear"), _Net(seed + 1, [ds, H], "linear"),
                 _Net(seed + 2, [ds, H], "linear"), _Net(seed + 3, [ds, H, 1], "relu"))


def _parts(hyper: Hyper, s: F, N: int) -> tuple[F, F, F, F]:
    """|W_1| (B, N, H), b_1 (B, H), |w_2| (B, H), V (B,) computed here from the hypernetworks."""
    b1 = _f64(hyper.b1(s))
    B, H = b1.shape
    return (np.abs(_f64(hyper.w1(s))).reshape(B, N, H), b1, np.abs(_f64(hyper.w2(s))),
            _f64(hyper.b2(s))[:, 0])


def _scale(q: F, s: F, hyper: Hyper) -> F:
    """sum_h |w2|_h (sum_i |W1|_ih |q_i| + |b1_h| + 1) + |V|, per row (the rule's scale)."""
    w1, b1, w2, v = _parts(hyper, s, q.shape[1])
    inner = np.einsum("bn,bnh->bh", np.abs(q), w1) + np.abs(b1) + 1.0
    out: F = np.sum(w2 * inner, axis=1) + np.abs(v)
    return out


def _elu(x: F) -> F:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


@st.composite
def _mixer_case(draw: st.DrawFn, max_N: int = 4) -> tuple[F, F, Hyper, int, int]:
    B = draw(st.integers(1, 5))
    N = draw(st.integers(1, max_N))
    H = draw(st.integers(1, 8))
    ds = draw(st.integers(1, 3))
    q = draw(hnp.arrays(np.float64, (B, N), elements=finite(-10.0, 10.0)))
    s = draw(hnp.arrays(np.float64, (B, ds), elements=finite(-2.0, 2.0)))
    return q, s, _hyper(draw(seeds()), N, H, ds), N, H


# ---- qmix.mixer -----------------------------------------------------------------------


@clause("qmix.mixer", "monotone")
@given(case=_mixer_case())
def test_mixer_monotone(impl: Any, clause_id: str, case: tuple[F, F, Hyper, int, int]) -> None:
    q, s, hyper, N, H = case
    q, s = round_to(impl.dtype, q), round_to(impl.dtype, s)
    mix = need(impl, clause_id)
    base = _f64(mix(q, s, hyper))
    assert_that(base.shape == (q.shape[0],), clause_id, f"Q_tot shape {base.shape}, expected ({q.shape[0]},)")
    for i in range(N):
        for delta in (0.01, 0.1, 1.0, 5.0):
            up = q.copy()
            up[:, i] += delta
            up = round_to(impl.dtype, up)
            drop = np.maximum(base - _f64(mix(up, s, hyper)), 0.0)
            assert_close(clause_id, drop, np.zeros_like(drop), dtype=impl.dtype,
                         what=f"decrease of Q_tot when Q_{i + 1} grows by {delta}", N=N, H=H,
                         scale=np.maximum(_scale(q, s, hyper), _scale(up, s, hyper)), inputs={"q": q})


@clause("qmix.mixer", "absolute_weights")
@given(case=_mixer_case(), sign_seed=seeds())
def test_mixer_absolute_weights(impl: Any, clause_id: str, case: tuple[F, F, Hyper, int, int],
                                sign_seed: int) -> None:
    q, s, hyper, N, H = case
    q, s = round_to(impl.dtype, q), round_to(impl.dtype, s)
    rng = np.random.default_rng(sign_seed)
    B = q.shape[0]
    flip1 = np.where(rng.random((B, N * H)) < 0.5, -1.0, 1.0)
    flip2 = np.where(rng.random((B, H)) < 0.5, -1.0, 1.0)
    mix = need(impl, clause_id)
    base = _f64(mix(q, s, hyper))
    for name, other in (
        ("-W_1", Hyper(_const(-_f64(hyper.w1(s))), hyper.b1, hyper.w2, hyper.b2)),
        ("-w_2", Hyper(hyper.w1, hyper.b1, _const(-_f64(hyper.w2(s))), hyper.b2)),
        ("random signs", Hyper(_const(flip1 * _f64(hyper.w1(s))), hyper.b1, _const(flip2 * _f64(hyper.w2(s))),
                               hyper.b2)),
    ):
        assert_close(clause_id, mix(q, s, other), base, dtype=impl.dtype, what=f"Q_tot unchanged by {name}",
                     N=N, H=H, scale=_scale(q, s, hyper), inputs={"q": q})


@clause("qmix.mixer", "affine_region")
@given(case=_mixer_case())
def test_mixer_affine_region(impl: Any, clause_id: str, case: tuple[F, F, Hyper, int, int]) -> None:
    q, s, hyper, N, H = case
    q, s = round_to(impl.dtype, q), round_to(impl.dtype, s)
    w1, _, w2, v = _parts(hyper, s, N)
    # b_1 above the largest |sum_i |W1|_ih q_i|: every pre-activation is >= 1, ELU is the identity.
    b1 = round_to(impl.dtype, 1.0 + np.einsum("bn,bnh->bh", np.abs(q), w1))
    positive = Hyper(hyper.w1, _const(b1), hyper.w2, hyper.b2)
    slope = np.sum(w1 * w2[:, None, :], axis=2)          # (B, N): sum_h |W1|_ih |w2|_h
    expected = np.sum(slope * q, axis=1) + np.sum(b1 * w2, axis=1) + v
    assert_close(clause_id, need(impl, clause_id)(q, s, positive), expected, dtype=impl.dtype,
                 what="Q_tot = sum_i Q_i sum_h |W1|_ih |w2|_h + b1 . |w2| + V", N=N, H=H,
                 scale=_scale(q, s, positive), inputs={"q": q})


@clause("qmix.mixer", "bias_path")
@given(case=_mixer_case(), b1_seed=seeds())
def test_mixer_bias_path(impl: Any, clause_id: str, case: tuple[F, F, Hyper, int, int], b1_seed: int) -> None:
    q, s, hyper, N, H = case
    q, s = round_to(impl.dtype, q), round_to(impl.dtype, s)
    B = q.shape[0]
    b1 = round_to(impl.dtype, np.random.default_rng(b1_seed).uniform(-5.0, 5.0, (B, H)))
    v_shift = -3.0  # makes V(s) negative on many rows: the final bias is not constrained either
    zero_w1 = Hyper(_const(np.zeros((B, N * H))), _const(b1), hyper.w2,
                    lambda st_: _f64(hyper.b2(st_)) + v_shift)
    _, _, w2, v = _parts(zero_w1, s, N)
    expected = np.sum(w2 * _elu(b1), axis=1) + v
    assert_close(clause_id, need(impl, clause_id)(q, s, zero_w1), expected, dtype=impl.dtype,
                 what="Q_tot = |w2| . ELU(b1) + V when W1 = 0", N=N, H=H, scale=_scale(q, s, zero_w1),
                 inputs={"b1": b1})


@clause("qmix.mixer", "matches_reference")
@given(case=_mixer_case())
def test_mixer_matches_reference(impl: Any, clause_id: str, case: tuple[F, F, Hyper, int, int]) -> None:
    q, s, hyper, N, H = case
    q, s = round_to(impl.dtype, q), round_to(impl.dtype, s)
    assert_close(clause_id, need(impl, clause_id)(q, s, hyper), ref.mixer(q, s, hyper), dtype=impl.dtype,
                 N=N, H=H, scale=_scale(q, s, hyper), inputs={"q": q})


_S2 = np.zeros((2, 1))
_Q2 = np.ones((2, 3))
_H = _hyper(7, 3, 4, 1)


def _bad_mixer_cases() -> list[tuple[Any, ...]]:
    nan = _Q2.copy()
    nan[0, 1] = np.nan
    return [
        (nan, _S2, _H),
        (np.ones(3), _S2, _H),                                              # q of rank 1
        (_Q2, np.zeros((3, 1)), _H),                                        # s with 3 rows for B = 2
        (_Q2, np.full((2, 1), np.nan), _H),
        (_Q2, _S2, Hyper(_const(np.ones((2, 4))), _H.b1, _H.w2, _H.b2)),    # W1 of width 4, not N*H = 12
        (_Q2, _S2, Hyper(_H.w1, _H.b1, _const(np.ones((2, 5))), _H.b2)),    # w2 wider than b1
        (_Q2, _S2, Hyper(_H.w1, _H.b1, _H.w2, _const(np.ones(2)))),         # V of shape (B,), not (B, 1)
        (_Q2, _S2, Hyper(_H.w1, _const(np.full((2, 4), np.nan)), _H.w2, _H.b2)),
    ]


_BAD_MIX = _bad_mixer_cases()


@clause("qmix.mixer", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_MIX))))
def test_mixer_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_MIX[i])


# ---- qmix.greedy_actions --------------------------------------------------------------


@st.composite
def _utility_tables(draw: st.DrawFn, min_N: int = 1, max_N: int = 4) -> tuple[F, F]:
    """q_values on a grid of spacing 0.5 (so exact ties occur) and a mask with >= 1 action per agent."""
    B = draw(st.integers(1, 4))
    N = draw(st.integers(min_N, max_N))
    A = draw(st.integers(1, 5))
    q = 0.5 * draw(hnp.arrays(np.int64, (B, N, A), elements=st.integers(-4, 4))).astype(np.float64)
    avail = draw(hnp.arrays(np.bool_, (B, N, A), elements=st.booleans()))
    first = draw(hnp.arrays(np.int64, (B, N), elements=st.integers(0, A - 1)))
    np.put_along_axis(avail, first[..., None], True, axis=2)
    q = np.where(avail, q, q + 10.0)  # unavailable actions look best: a mask must matter
    return q, avail


@clause("qmix.greedy_actions", "per_agent_argmax")
@given(case=_utility_tables())
def test_greedy_per_agent_argmax(impl: Any, clause_id: str, case: tuple[F, F]) -> None:
    q, avail = case
    q = round_to(impl.dtype, q)
    B, N, A = q.shape
    a = np.asarray(need(impl, clause_id)(q, avail))
    assert_that(a.shape == (B, N), clause_id, f"actions shape {a.shape}, expected (B, N) = {(B, N)}")
    assert_that(bool(np.all((a >= 0) & (a < A))), clause_id, f"action index outside 0..{A - 1}: {a.tolist()}")
    a = a.astype(np.int64)
    chosen_avail = np.take_along_axis(avail, a[..., None], axis=2)[..., 0]
    assert_that(bool(np.all(chosen_avail)), clause_id, f"an unavailable action was chosen: {a.tolist()}")
    best = np.max(np.where(avail, q, -np.inf), axis=2)
    chosen = np.take_along_axis(q, a[..., None], axis=2)[..., 0]
    assert_close(clause_id, chosen, best, dtype=impl.dtype, what="Q_i(a_i) = max over available actions",
                 inputs={"a": a})
    lowest = np.argmax(avail & (q == best[..., None]), axis=2)
    assert_that(bool(np.array_equal(a, lowest)), clause_id,
                f"ties must go to the lowest index: got {a.tolist()}, expected {lowest.tolist()}")


@clause("qmix.greedy_actions", "decentralised")
@given(case=_utility_tables(min_N=2), other=_utility_tables(min_N=2))
def test_greedy_decentralised(impl: Any, clause_id: str, case: tuple[F, F], other: tuple[F, F]) -> None:
    q, avail = case
    B, N, A = q.shape
    q2, avail2 = other
    # Another team on the same (B, N, A) grid: take its values where they exist, keep the fallbacks valid.
    alt_q = np.resize(q2, (B, N, A))
    alt_avail = np.resize(avail2, (B, N, A))
    alt_avail[..., 0] = True
    greedy = need(impl, clause_id)
    base = np.asarray(greedy(round_to(impl.dtype, q), avail))
    assert_that(base.shape == (B, N), clause_id, f"actions shape {base.shape}, expected (B, N) = {(B, N)}")
    for i in range(N):
        q_mix, m_mix = alt_q.copy(), alt_avail.copy()
        q_mix[:, i], m_mix[:, i] = q[:, i], avail[:, i]
        a = np.asarray(greedy(round_to(impl.dtype, q_mix), m_mix))
        assert_that(a.shape == base.shape and bool(np.array_equal(a[:, i], base[:, i])), clause_id,
                    f"agent {i + 1}'s action changed when only the other agents' utilities changed: "
                    f"{base.tolist()} -> {a.tolist()}")


@clause("qmix.greedy_actions", "matches_reference")
@given(case=_utility_tables(), masked=st.booleans())
def test_greedy_matches_reference(impl: Any, clause_id: str, case: tuple[F, F], masked: bool) -> None:
    q, avail = case
    q = round_to(impl.dtype, q)
    m = avail if masked else None
    got = np.asarray(need(impl, clause_id)(q, m))
    exp = ref.greedy_actions(q, m)
    assert_that(got.shape == exp.shape and bool(np.array_equal(got, exp)), clause_id,
                f"actions {got.tolist()}, reference {exp.tolist()}")


_QV = np.zeros((2, 3, 4))
_BAD_GREEDY: list[tuple[Any, ...]] = [
    (np.full((2, 3, 4), np.nan),),
    (np.where(np.arange(4) == 2, np.inf, _QV),),
    (np.zeros((2, 4)),),                                             # rank 2
    (_QV, np.ones((2, 3, 3), dtype=bool)),                          # mask of another shape
    (_QV, np.where(np.arange(3)[:, None] == 1, False, np.ones((2, 3, 4), dtype=bool))),  # agent 2: no action
]


@clause("qmix.greedy_actions", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_GREEDY))))
def test_greedy_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_GREEDY[i])


# ---- qmix.igm -------------------------------------------------------------------------


def _joint(q: F) -> tuple[F, F]:
    """All joint actions U (M, N) of a (B, N, A) table and the utilities rows[b, m, i] = q[b, i, U[m, i]]."""
    B, N, A = q.shape
    U = np.asarray(list(itertools.product(range(A), repeat=N)), dtype=np.int64)
    return U, q[:, np.arange(N)[None, :], U]


def _joint_avail(avail: F, U: F) -> F:
    N = avail.shape[1]
    out: F = np.all(avail[:, np.arange(N)[None, :], U], axis=2)   # (B, M)
    return out


def _igm_truth(q: F, avail: F, values: F, atol: float) -> F:
    """IGM by enumeration, written as loops over joint actions: per row, set(joint argmax) == product set."""
    B, N, A = q.shape
    U, _ = _joint(q)
    ok = np.zeros(B, dtype=bool)
    for b in range(B):
        sets = [{a for a in range(A) if avail[b, i, a] and q[b, i, a] == max(q[b, i][avail[b, i]])} for i in range(N)]
        prod = set(itertools.product(*sets))
        valid = [m for m in range(len(U)) if all(avail[b, i, U[m, i]] for i in range(N))]
        top = max(values[b, m] for m in valid)
        joint = {tuple(int(u) for u in U[m]) for m in valid if values[b, m] >= top - atol}
        ok[b] = joint == prod
    return ok


@st.composite
def _igm_case(draw: st.DrawFn) -> tuple[F, F, F, Hyper, int]:
    """N in 2..3 agents with 2..4 available actions each (of A = 4), utilities on a 0.5 grid."""
    B = draw(st.integers(1, 3))
    N = draw(st.integers(2, 3))
    H = draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(seeds()))
    A = 4
    avail = np.zeros((B, N, A), dtype=bool)
    for b in range(B):
        for i in range(N):
            avail[b, i, rng.permutation(A)[: draw(st.integers(2, 4))]] = True
    q = 0.5 * rng.integers(-4, 5, (B, N, A)).astype(np.float64)
    q = np.where(avail, q, 5.0)  # unavailable actions would win an unmasked argmax
    s = rng.uniform(-1.0, 1.0, (B, 2))
    return q, avail, s, _hyper(int(rng.integers(2**31)), N, H, 2), H


def _tied(rows: F, values: F) -> F:
    """values (B, M) with every joint action given the value of the first joint action of its row b
    that has the same utility vector: Q_tot is a function of that vector, so ties become exact
    whatever order the float64 arithmetic summed them in."""
    out = np.empty_like(values)
    for b in range(rows.shape[0]):
        _, first, inv = np.unique(rows[b], axis=0, return_index=True, return_inverse=True)
        out[b] = values[b, first[np.ravel(inv)]]
    return out


@clause("qmix.igm", "monotone_mixing_implies_igm")
@given(case=_igm_case())
def test_igm_monotone_mixing(impl: Any, clause_id: str, case: tuple[F, F, F, Hyper, int]) -> None:
    q, avail, s, hyper, _ = case
    q, s = round_to(impl.dtype, q), round_to(impl.dtype, s)
    B, N, A = q.shape
    U, rows = _joint(q)
    M = U.shape[0]
    # Q_tot of every joint action from the float64 reference mixer (a bug in the implementation's
    # mixer cannot fail this clause), then rounded to the dtype the implementation works in.
    exact = _tied(rows, ref.mixer(rows.reshape(B * M, N), np.repeat(s, M, axis=0), hyper).reshape(B, M))
    values = round_to(impl.dtype, exact)
    # Rounding moves a value by at most eps/2 of its magnitude, so a strict gap below the joint
    # maximum survives it where top - next > eps (|top| + |next|) (a factor 2 to spare); a smaller
    # gap may become a tie in a low precision (bfloat16), and then IGM fails on the table the
    # implementation is given.
    valid = _joint_avail(avail, U)
    top = np.max(np.where(valid, exact, -np.inf), axis=1)
    below = valid & (exact < top[:, None])
    has_below = below.any(axis=1)
    nxt = np.where(has_below, np.max(np.where(below, exact, -np.inf), axis=1), top)
    resolved = ~has_below | (top - nxt > spec.EPS[impl.dtype] * (np.abs(top) + np.abs(nxt)))
    truth = _igm_truth(q, avail, values, 0.0)
    assert_that(bool(np.all(truth[resolved])), clause_id,
                f"test design: the enumeration finds IGM violated for a strictly monotone mixer on rows "
                f"{np.flatnonzero(resolved & ~truth).tolist()}")
    # Equal utility vectors have bit-identical values (_tied), so atol = 0 counts exactly the ties.
    got = np.asarray(need(impl, clause_id)(q, values.reshape((B,) + (A,) * N), avail, 0.0))
    assert_that(got.shape == (B,) and bool(np.all(got[resolved])), clause_id,
                f"igm returned {got.tolist()} for a monotone mixer (IGM holds on rows "
                f"{np.flatnonzero(resolved).tolist()})")
    assert_that(bool(np.array_equal(got, truth)), clause_id,
                f"igm returned {got.tolist()}, enumeration of the rounded table says {truth.tolist()}")


def _signed_values(rows: F, rng: np.random.Generator, H: int, monotone: bool, zero_agent: int | None = None) -> F:
    """Q_tot of a random mixer per row: weights signed (non-monotonic) or |.| (monotonic)."""
    B, M, N = rows.shape
    w1 = rng.standard_normal((B, N, H))
    w2 = rng.standard_normal((B, H))
    if monotone:
        w1, w2 = np.abs(w1) + 0.1, np.abs(w2) + 0.1  # strictly monotone
    if zero_agent is not None:
        w1[:, zero_agent] = 0.0
    b1 = rng.standard_normal((B, 1, H))
    v = rng.standard_normal((B, 1))
    # Sums written as elementwise loops (one fixed order for every joint action, no BLAS): joint
    # actions that differ only in a zero-weight agent's utility get bit-identical values, and
    # _tied makes equal utility vectors exact ties, so igm needs atol = 0 on these tables.
    pre = np.broadcast_to(b1, (B, M, H)).copy()
    for n in range(N):
        pre += rows[:, :, n, None] * w1[:, None, n, :]
    hidden = _elu(pre)
    out = np.broadcast_to(v, (B, M)).copy()
    for h in range(H):
        out += hidden[:, :, h] * w2[:, None, h]
    return _tied(rows, out)


@clause("qmix.igm", "detects_violation")
@given(seed=seeds(), N=st.sampled_from([2, 3]))
def test_igm_detects_violation(impl: Any, clause_id: str, seed: int, N: int) -> None:
    rng = np.random.default_rng(seed)
    B, A, H = 24, 3, 4
    q = round_to(impl.dtype, 0.5 * rng.integers(-4, 5, (B, N, A)).astype(np.float64))
    avail = np.ones((B, N, A), dtype=bool)
    _, rows = _joint(q)
    values = round_to(impl.dtype, _signed_values(rows, rng, H, monotone=False))
    atol = 0.0  # ties are exact (_tied): equal utility vectors have bit-identical values
    truth = _igm_truth(q, avail, values, atol)
    assert_that(not bool(np.all(truth)), clause_id,
                "no counterexample: signed mixers satisfied IGM on all 24 instances (the property cannot fail)")
    got = np.asarray(need(impl, clause_id)(q, values.reshape((B,) + (A,) * N), avail, atol))
    assert_that(got.shape == (B,) and bool(np.array_equal(got, truth)), clause_id,
                f"igm says {got.astype(int).tolist()}, enumeration says {truth.astype(int).tolist()}")


@clause("qmix.igm", "set_equality_with_ties")
@given(case=_igm_case(), seed=seeds())
def test_igm_set_equality_with_ties(impl: Any, clause_id: str, case: tuple[F, F, F, Hyper, int], seed: int) -> None:
    q, avail, _, _, H = case
    q = round_to(impl.dtype, q)
    B, N, A = q.shape
    rng = np.random.default_rng(seed)
    j = int(rng.integers(N))
    _, rows = _joint(q)
    check = need(impl, clause_id)
    # With agent j ignored, every available u_j is a joint maximiser: IGM fails unless all of
    # agent j's available actions are tied maximisers.
    best_j = np.max(np.where(avail[:, j], q[:, j], -np.inf), axis=1, keepdims=True)
    all_tied = np.all(~avail[:, j] | (q[:, j] == best_j), axis=1)
    for zero, expect in ((j, all_tied), (None, np.ones(B, dtype=bool))):
        values = round_to(impl.dtype, _signed_values(rows, np.random.default_rng(seed), H, monotone=True,
                                                     zero_agent=zero))
        got = np.asarray(check(q, values.reshape((B,) + (A,) * N), avail, 0.0))  # exact ties (_tied)
        what = f"agent {j + 1} has zero weight" if zero is not None else "strictly monotone mixer"
        assert_that(got.shape == (B,) and bool(np.array_equal(got, expect)), clause_id,
                    f"igm returned {got.tolist()} ({what}), expected {expect.tolist()}")


@clause("qmix.igm", "matches_reference")
@given(case=_igm_case(), masked=st.booleans(), seed=seeds())
def test_igm_matches_reference(impl: Any, clause_id: str, case: tuple[F, F, F, Hyper, int], masked: bool,
                               seed: int) -> None:
    q, avail, _, _, H = case
    q = round_to(impl.dtype, q)
    B, N, A = q.shape
    _, rows = _joint(q)
    m = avail if masked else None
    for kind in ("signed", "monotone", "zero_weight"):  # every kind on every example, not left to the draw
        values = round_to(impl.dtype, _signed_values(rows, np.random.default_rng(seed), H, kind != "signed",
                                                     zero_agent=0 if kind == "zero_weight" else None))
        table = values.reshape((B,) + (A,) * N)
        got = np.asarray(need(impl, clause_id)(q, table, m, 0.0))  # exact ties (_tied): no tolerance needed
        exp = ref.igm(q, table, m, 0.0)
        assert_that(got.shape == exp.shape and bool(np.array_equal(got, exp)), clause_id,
                    f"{kind} mixer: igm {got.tolist()}, reference {exp.tolist()}")


_QI = np.zeros((2, 2, 3))
_TI = np.zeros((2, 3, 3))
_BAD_IGM: list[tuple[Any, ...]] = [
    (_QI, np.zeros((2, 9))),                                        # table not (B, A, A)
    (_QI, np.zeros((2, 3, 3, 3))),                                  # three action axes for two agents
    (np.full((2, 2, 3), np.nan), _TI),
    (_QI, np.full((2, 3, 3), np.nan)),
    (_QI, _TI, np.zeros((2, 2, 3), dtype=bool)),                    # no available action
    (_QI, _TI, None, -1.0),                                         # atol < 0
]


@clause("qmix.igm", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_IGM))))
def test_igm_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_IGM[i])
