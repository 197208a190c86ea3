"""Conformance: spec family ``dom2`` (Li, Pan and Huang, arXiv 2307.01472).

The per-agent loss reuses the network builders and the tolerance scale of the diffusion_ql
tests (imported from that module), so both families measure the same computation the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import logsumexp

from diffrl_ref import spec
from diffrl_ref.reference import ddim as ddim_ref
from diffrl_ref.reference import diffusion_ql as dql_ref
from diffrl_ref.reference import dom2 as ref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.strategies import TINY, betas, finite

from .test_diffusion_ql import _bound, _critic, _loss_scale, _point_mass_agent, _point_mass_loss, _policy_net

F = np.ndarray


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


def _ab(b: F) -> F:
    return np.concatenate([[1.0], np.cumprod(1.0 - b)])


def _snap(v: float) -> float:
    """|v| < TINY becomes 0: no subnormal inputs in float32 (strategies.TINY; the rules are relative)."""
    return 0.0 if abs(v) < TINY else v


def _batch(B: int, d: int, scale: float) -> st.SearchStrategy[F]:
    return hnp.arrays(np.float64, (B, d), elements=finite(-scale, scale).map(_snap))


# ---- dom2.cql_loss --------------------------------------------------------------------


@st.composite
def _cql(draw: st.DrawFn, min_n: int = 1) -> dict[str, Any]:
    B = draw(st.integers(1, 6))
    n = draw(st.integers(min_n, 6))
    mag = draw(st.sampled_from([1.0, 30.0]))
    q = mag * draw(hnp.arrays(np.float64, (B, n), elements=finite(-1.0, 1.0).map(_snap)))
    const = draw(hnp.arrays(np.bool_, (B,)))
    q = np.where(const[:, None], q[:, :1], q)  # some rows constant over the actions
    idx = np.asarray(draw(st.lists(st.integers(0, n - 1), min_size=B, max_size=B)), dtype=np.int64)
    y = mag * draw(hnp.arrays(np.float64, (B,), elements=finite(-1.0, 1.0).map(_snap)))
    return {"q": q, "idx": idx, "y": y, "alpha": draw(finite(0.1, 5.0)), "const": const}


def _cql_scale(q: F, idx: F, y: F, alpha: float) -> F:
    q_data = q[np.arange(q.shape[0]), idx]
    return _f64((np.abs(q_data) + np.abs(y)) ** 2
                + alpha * (np.max(np.abs(q), axis=1) + np.abs(q_data) + np.log(q.shape[1])))


@clause("dom2.cql_loss", "td_term")
@given(c=_cql())
def test_cql_td_term(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    q, y = round_to(impl.dtype, c["q"]), round_to(impl.dtype, c["y"])
    q_data = q[np.arange(q.shape[0]), c["idx"]]
    assert_close(clause_id, need(impl, clause_id)(q, c["idx"], y, 0.0), (q_data - y) ** 2, dtype=impl.dtype,
                 what="alpha = 0: (Q(o, a_data) - y)^2", n=q.shape[1], scale=_cql_scale(q, c["idx"], y, 0.0),
                 inputs={"a_idx": c["idx"]})


@clause("dom2.cql_loss", "penalty_bounds")
@given(c=_cql())
def test_cql_penalty_bounds(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    q = round_to(impl.dtype, c["q"])
    B, n = q.shape
    q_data = q[np.arange(B), c["idx"]]
    loss = _f64(need(impl, clause_id)(q, c["idx"], q_data, c["alpha"]))  # y = Q_data: the TD term is 0
    lo = c["alpha"] * (np.max(q, axis=1) - q_data)
    hi = lo + c["alpha"] * np.log(n)
    tol = spec.clause(clause_id).tolerance.atol(impl.dtype, expected=hi, n=n,
                                                scale=_cql_scale(q, c["idx"], q_data, c["alpha"]))
    bad = (loss < lo - tol) | (loss > hi + tol)
    i = int(np.argmax(bad))
    assert_that(not bool(np.any(bad)), clause_id,
                f"penalty {loss[i] / c['alpha']!r} outside [max Q - Q_data, max Q - Q_data + log n] = "
                f"[{lo[i] / c['alpha']!r}, {hi[i] / c['alpha']!r}] (Q = {q[i]}, a_idx = {c['idx'][i]})")


@clause("dom2.cql_loss", "constant_q_gives_log_n")
@given(c=_cql(), level=finite(-50.0, 50.0))
def test_cql_constant_q(impl: Any, clause_id: str, c: dict[str, Any], level: float) -> None:
    B, n = c["q"].shape
    q = np.full((B, n), float(round_to(impl.dtype, level)))
    y = q[:, 0].copy()
    got = need(impl, clause_id)(q, c["idx"], y, c["alpha"])
    assert_close(clause_id, got, np.full(B, c["alpha"] * np.log(n)), dtype=impl.dtype,
                 what="constant Q: penalty = log n", n=n, scale=_cql_scale(q, c["idx"], y, c["alpha"]),
                 inputs={"Q": level})


@clause("dom2.cql_loss", "uniform_behaviour_jensen")
@given(c=_cql(min_n=2))
def test_cql_uniform_jensen(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    q = round_to(impl.dtype, c["q"])
    B, n = q.shape
    rows = np.repeat(q, n, axis=0)                       # each row once per action of the set
    idx = np.tile(np.arange(n), B)
    y = rows[np.arange(B * n), idx]                      # zero TD term
    loss = _f64(need(impl, clause_id)(rows, idx, y, c["alpha"])).reshape(B, n)
    avg = loss.mean(axis=1)
    gap = logsumexp(q, axis=1) - np.log(n) - q.mean(axis=1)   # log mean exp Q - mean Q >= 0
    scale = _cql_scale(rows, idx, y, c["alpha"]).reshape(B, n).max(axis=1) + c["alpha"] * np.max(np.abs(q), axis=1)
    assert_close(clause_id, avg, c["alpha"] * (np.log(n) + gap), dtype=impl.dtype,
                 what="uniform average of the penalty = log n + (log mean exp Q - mean Q)", n=n, scale=scale,
                 inputs={"constant row": c["const"]})


@clause("dom2.cql_loss", "suppresses_unseen")
@given(c=_cql(min_n=2), h=finite(0.1, 2.0))
def test_cql_suppresses_unseen(impl: Any, clause_id: str, c: dict[str, Any], h: float) -> None:
    q = round_to(impl.dtype, c["q"])
    B, n = q.shape
    fn = need(impl, clause_id)
    rows = np.arange(B)
    base = _f64(fn(q, c["idx"], q[rows, c["idx"]], c["alpha"]))
    rule = spec.clause(clause_id).tolerance
    for j in range(n):
        raised = q.copy()
        raised[:, j] = round_to(impl.dtype, raised[:, j] + h)
        got = _f64(fn(raised, c["idx"], raised[rows, c["idx"]], c["alpha"]))
        change = c["alpha"] * (logsumexp(raised, axis=1) - raised[rows, c["idx"]]
                               - logsumexp(q, axis=1) + q[rows, c["idx"]])
        # tol: the rule for each of the two losses compared (base and got), so |got - base - change| <= tol
        # up to the rule being evaluated at base; a change beyond 2 tol (a factor 2 of margin for that) has
        # its sign decided by the comparison.
        tol = rule.atol(impl.dtype, expected=base, n=n, scale=_cql_scale(raised, c["idx"], raised[rows, c["idx"]],
                                                                             c["alpha"])) * 2
        clear = np.abs(change) > 2 * tol
        seen = c["idx"] == j
        wrong = clear & np.where(seen, got >= base, got <= base)
        i = int(np.argmax(wrong))
        assert_that(not bool(np.any(wrong)), clause_id,
                    f"raising Q at action {j} ({'the dataset action' if seen[i] else 'an unseen action'}) by {h} "
                    f"moved the penalty from {base[i]!r} to {got[i]!r}; expected change {change[i]!r} (Q = {q[i]})")


@clause("dom2.cql_loss", "matches_reference")
@given(c=_cql())
def test_cql_matches_reference(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    q, y = round_to(impl.dtype, c["q"]), round_to(impl.dtype, c["y"])
    assert_close(clause_id, need(impl, clause_id)(q, c["idx"], y, c["alpha"]), ref.cql_loss(q, c["idx"], y, c["alpha"]),
                 dtype=impl.dtype, n=q.shape[1], scale=_cql_scale(q, c["idx"], y, c["alpha"]),
                 inputs={"a_idx": c["idx"]})


_Q23 = np.zeros((2, 3))
_I2 = np.array([0, 2])
_Y2 = np.zeros(2)
_BAD_CQL: list[tuple[Any, ...]] = [
    (_Q23, np.array([0, 3]), _Y2, 1.0), (_Q23, np.array([-1, 0]), _Y2, 1.0), (_Q23, np.array([0.0, 1.0]), _Y2, 1.0),
    (np.full((2, 3), np.nan), _I2, _Y2, 1.0), (_Q23, _I2, np.array([0.0, np.inf]), 1.0), (_Q23, _I2, _Y2, -1.0),
    (_Q23, _I2, np.zeros(3), 1.0), (np.zeros(3), _I2, _Y2, 1.0), (_Q23, np.array([0, 1, 2]), _Y2, 1.0),
]


@clause("dom2.cql_loss", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_CQL))))
def test_cql_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_CQL[i])


# ---- dom2.cql_sampled -----------------------------------------------------------------


@st.composite
def _cqls(draw: st.DrawFn, min_m: int = 1) -> dict[str, Any]:
    B = draw(st.integers(1, 5))
    M = draw(st.integers(min_m, 8))
    mag = draw(st.sampled_from([1.0, 30.0]))
    qs = mag * draw(hnp.arrays(np.float64, (B, M), elements=finite(-1.0, 1.0).map(_snap)))
    d = draw(st.integers(1, 4))  # uniform proposal on [-1, 1]^d, or a density that varies per sample
    lp = draw(st.one_of(st.just(np.full((B, M), -d * np.log(2.0))),
                        hnp.arrays(np.float64, (B, M), elements=finite(-4.0, 2.0).map(_snap))))
    qd = mag * draw(hnp.arrays(np.float64, (B,), elements=finite(-1.0, 1.0).map(_snap)))
    y = mag * draw(hnp.arrays(np.float64, (B,), elements=finite(-1.0, 1.0).map(_snap)))
    return {"qd": qd, "qs": qs, "lp": lp, "y": y, "alpha": draw(finite(0.1, 5.0))}


def _cqls_scale(qd: F, qs: F, lp: F, y: F, alpha: float) -> F:
    return _f64((np.abs(qd) + np.abs(y)) ** 2
                + alpha * (np.max(np.abs(qs - lp), axis=1) + np.abs(qd) + np.log(qs.shape[1])))


def _rounded(impl: Any, c: dict[str, Any]) -> tuple[F, F, F, F]:
    return tuple(round_to(impl.dtype, c[k]) for k in ("qd", "qs", "lp", "y"))  # type: ignore[return-value]


@clause("dom2.cql_sampled", "td_term")
@given(c=_cqls())
def test_cqls_td_term(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    qd, qs, lp, y = _rounded(impl, c)
    assert_close(clause_id, need(impl, clause_id)(qd, qs, lp, y, 0.0), (qd - y) ** 2, dtype=impl.dtype,
                 what="alpha = 0: (Q(o, a_data) - y)^2", M=qs.shape[1], scale=_cqls_scale(qd, qs, lp, y, 0.0))


@clause("dom2.cql_sampled", "finite_set_reduces")
@given(c=_cql())
def test_cqls_finite_set_reduces(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    q, y = round_to(impl.dtype, c["q"]), round_to(impl.dtype, c["y"])
    B, n = q.shape
    qd = q[np.arange(B), c["idx"]]
    lp = np.full((B, n), -np.log(n))  # the uniform distribution over the set; -log n rounded is within the rule
    got = need(impl, clause_id)(qd, q, round_to(impl.dtype, lp), y, c["alpha"])
    assert_close(clause_id, got, ref.cql_loss(q, c["idx"], y, c["alpha"]), dtype=impl.dtype,
                 what="M = n samples = the finite set, p = 1/n: dom2.cql_loss", M=n,
                 scale=_cqls_scale(qd, q, lp, y, c["alpha"]), inputs={"a_idx": c["idx"]})


@clause("dom2.cql_sampled", "exact_for_ideal_proposal")
@given(c=_cqls(), log_norm=finite(-5.0, 5.0))
def test_cqls_ideal_proposal(impl: Any, clause_id: str, c: dict[str, Any], log_norm: float) -> None:
    qd, qs, _, y = _rounded(impl, c)
    cst = float(round_to(impl.dtype, log_norm))
    lp = round_to(impl.dtype, qs - cst)  # p proportional to exp Q with normaliser e^c
    got = need(impl, clause_id)(qd, qs, lp, y, c["alpha"])
    # the rounding of lp moves each weight by at most one ulp of |Q - c|: inside the rule's scale term
    assert_close(clause_id, got, (qd - y) ** 2 + c["alpha"] * (cst - qd), dtype=impl.dtype,
                 what="p proportional to exp Q: penalty = c - Q_data", M=qs.shape[1],
                 scale=_cqls_scale(qd, qs, lp, y, c["alpha"]) + c["alpha"] * np.max(np.abs(qs), axis=1),
                 inputs={"c": cst})


@clause("dom2.cql_sampled", "proposal_density_enters_inverted")
@given(c=_cqls(), h=st.sampled_from([-2.0, -0.5, 0.25, 1.0, 3.0]))
def test_cqls_density_inverted(impl: Any, clause_id: str, c: dict[str, Any], h: float) -> None:
    qd, qs, lp, y = _rounded(impl, c)
    fn = need(impl, clause_id)
    base = _f64(fn(qd, qs, lp, y, c["alpha"]))
    M = qs.shape[1]
    # h is a power of two or a sum of two: adding it is exact at these magnitudes in every dtype the suite runs
    scale = _cqls_scale(qd, qs, lp + h, y, c["alpha"]) + c["alpha"] * abs(h)
    assert_close(clause_id, fn(qd, qs, lp + h, y, c["alpha"]), base - c["alpha"] * h, dtype=impl.dtype,
                 what="log p + h: penalty - h", M=M, scale=2 * scale, inputs={"h": h})
    assert_close(clause_id, fn(qd + h, qs + h, lp, y + h, c["alpha"]), base, dtype=impl.dtype,
                 what="Q + h everywhere: unchanged", M=M, scale=2 * scale, inputs={"h": h})


@clause("dom2.cql_sampled", "suppresses_unseen")
@given(c=_cqls(min_m=2), h=finite(0.1, 2.0))
def test_cqls_suppresses_unseen(impl: Any, clause_id: str, c: dict[str, Any], h: float) -> None:
    qd, qs, lp, _ = _rounded(impl, c)
    fn = need(impl, clause_id)
    a = c["alpha"]
    rule = spec.clause(clause_id).tolerance
    M = qs.shape[1]
    base = _f64(fn(qd, qs, lp, qd, a))  # y = Q_data: the TD term is 0
    cases: list[tuple[str, F, F, F]] = []
    for i in range(M):
        raised = qs.copy()
        raised[:, i] = round_to(impl.dtype, raised[:, i] + h)
        cases.append((f"drawn action {i}", qd, raised, _f64(a * (logsumexp(raised - lp, axis=1)
                                                                - logsumexp(qs - lp, axis=1)))))
    up = round_to(impl.dtype, qd + h)
    cases.append(("the dataset action", up, qs, _f64(-a * (up - qd))))
    for where, q_d, q_s, change in cases:
        got = _f64(fn(q_d, q_s, lp, q_d, a))
        # the rule for each of the two losses compared; a change beyond twice that has its sign decided
        tol = 2 * rule.atol(impl.dtype, expected=base, M=M, scale=_cqls_scale(q_d, q_s, lp, q_d, a))
        clear = np.abs(change) > 2 * tol
        wrong = clear & ((got - base) * np.sign(change) <= 0)
        j = int(np.argmax(wrong))
        assert_that(not bool(np.any(wrong)), clause_id,
                    f"raising Q at {where} by {h} moved the loss from {base[j]!r} to {got[j]!r}; expected a change "
                    f"of {change[j]!r} (Q samples = {qs[j]}, log p = {lp[j]}, Q_data = {qd[j]})")


@clause("dom2.cql_sampled", "matches_reference")
@given(c=_cqls())
def test_cqls_matches_reference(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    qd, qs, lp, y = _rounded(impl, c)
    assert_close(clause_id, need(impl, clause_id)(qd, qs, lp, y, c["alpha"]),
                 ref.cql_sampled(qd, qs, lp, y, c["alpha"]), dtype=impl.dtype, M=qs.shape[1],
                 scale=_cqls_scale(qd, qs, lp, y, c["alpha"]))


_QD = np.zeros(2)
_QS = np.zeros((2, 3))
_BAD_CQLS: list[tuple[Any, ...]] = [
    (np.array([0.0, np.nan]), _QS, _QS, _QD, 1.0), (_QD, np.full((2, 3), np.inf), _QS, _QD, 1.0),
    (_QD, _QS, np.full((2, 3), np.nan), _QD, 1.0), (_QD, _QS, _QS, np.array([0.0, np.inf]), 1.0),
    (_QD, _QS, _QS, _QD, -1.0), (_QD, np.zeros((2, 0)), np.zeros((2, 0)), _QD, 1.0),
    (_QD, np.zeros((3, 3)), np.zeros((3, 3)), _QD, 1.0), (_QD, _QS, np.zeros((2, 2)), _QD, 1.0),
    (_QD, _QS, _QS, np.zeros(3), 1.0), (np.zeros((2, 1)), _QS, _QS, _QD, 1.0),
]


@clause("dom2.cql_sampled", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_CQLS))))
def test_cqls_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_CQLS[i])


# ---- dom2.policy_loss -----------------------------------------------------------------


@st.composite
def _agents_case(draw: st.DrawFn) -> dict[str, Any]:
    b = draw(betas(max_K=6))
    N = draw(st.integers(2, 3))
    B = draw(st.integers(1, 4))
    agents = []
    for _ in range(N):
        da, ds = draw(st.integers(1, 2)), draw(st.integers(1, 3))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        k = np.asarray(draw(st.lists(st.integers(1, b.size), min_size=B, max_size=B)), dtype=np.int64)
        agents.append({"a": draw(_batch(B, da, 2.0)), "s": draw(_batch(B, ds, 2.0)), "k": k,
                       "eps": rng.standard_normal((B, da)), "a_K": rng.standard_normal((B, da)),
                       "noises": rng.standard_normal((b.size, B, da)), "seed": draw(st.integers(0, 2**16))})
    return {"b": b, "agents": agents, "eta": draw(finite(0.1, 3.0)),
            "m": draw(st.one_of(st.none(), _bound(0.3, 1.5))),  # representable in every dtype: the clip is exact
            "variance": draw(st.sampled_from(["beta", "beta_tilde"]))}


def _nets(seed: int, da: int, ds: int) -> tuple[Any, ...]:
    net, L = _policy_net(seed, da, ds)
    q_fn, Lq = _critic(seed + 2, ds, da)
    qn_fn, Lqn = _critic(seed + 3, ds, da)
    return net, L, q_fn, Lq, qn_fn, Lqn


def _records(impl: Any, c: dict[str, Any], seed_shift: int = 0, which: int = -1) -> tuple[list[ref.Agent], list[Any]]:
    """dom2.Agent records (inputs rounded) and each agent's networks; ``which`` gets other networks and data."""
    out, nets_all = [], []
    for j, ag in enumerate(c["agents"]):
        a, s, e, a_K, z = (round_to(impl.dtype, ag[n]) for n in ("a", "s", "eps", "a_K", "noises"))
        seed = ag["seed"] + (seed_shift if j == which else 0)
        if j == which:
            a = round_to(impl.dtype, np.clip(a + 0.5, -2.0, 2.0))
        nets = _nets(seed, a.shape[1], s.shape[1])
        out.append(ref.Agent(s, a, nets[0], nets[2], nets[4], ag["k"], e, a_K, z))
        nets_all.append(nets)
    return out, nets_all


@clause("dom2.policy_loss", "decentralised")
@given(c=_agents_case())
def test_policy_loss_decentralised(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    fn = need(impl, clause_id)
    b = round_to(impl.dtype, c["b"])
    base = _f64(fn(_records(impl, c)[0], b, c["eta"], c["m"], c["variance"]))
    for i in range(len(c["agents"])):
        changed = _f64(fn(_records(impl, c, seed_shift=7919, which=i)[0], b, c["eta"], c["m"], c["variance"]))
        others = [j for j in range(len(c["agents"])) if j != i]
        assert_that(bool(np.array_equal(changed[others], base[others])), clause_id,
                    f"changing agent {i}'s networks and data changed other agents' losses: "
                    f"{base[others]} -> {changed[others]}")


@clause("dom2.policy_loss", "per_agent_diffusion_ql")
@given(c=_agents_case())
def test_policy_loss_per_agent(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b = round_to(impl.dtype, c["b"])
    recs, nets = _records(impl, c)
    got = _f64(need(impl, clause_id)(recs, b, c["eta"], c["m"], c["variance"]))
    single = dql_ref.loss  # the float64 reference: a bug in diffusion_ql.loss fails that clause, not this one
    for j, (r, nj) in enumerate(zip(recs, nets, strict=True)):
        want = single(r.action, r.obs, r.eps_fn, b, r.k, r.eps, r.a_K, r.noises, r.q_fn, r.q_norm_fn, c["eta"],
                      c["m"], c["variance"])
        cj = {"k": r.k, "m": c["m"], "variance": c["variance"]}
        scale, u, _ = _loss_scale(cj, _f64(r.obs), _f64(r.action), _f64(r.eps), b, _f64(r.a_K), _f64(r.noises),
                                  c["eta"], nj)
        assert_close(clause_id, got[j], want, dtype=impl.dtype, what=f"row {j} = diffusion_ql.loss of agent {j}",
                     K=b.size, d=_f64(r.action).shape[1], scale=scale, u=u, inputs={"k": r.k})


@clause("dom2.policy_loss", "point_mass_agents")
@given(c=_agents_case())
def test_policy_loss_point_mass_agents(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b = round_to(impl.dtype, c["b"])
    recs, nets = [], []
    for j, ag in enumerate(c["agents"]):
        a, s, e, a_K, z = (round_to(impl.dtype, ag[n]) for n in ("a", "s", "eps", "a_K", "noises"))
        nj = _point_mass_agent(ag["seed"] + 11 * j, b, s, a.shape[1], c["m"])  # each agent its own m_j, Q_j, Q'_j
        recs.append(ref.Agent(s, a, nj[0], nj[2], nj[4], ag["k"], e, a_K, z))
        nets.append(nj)
    got = _f64(need(impl, clause_id)(recs, b, c["eta"], c["m"], c["variance"]))
    shape = (len(recs), c["agents"][0]["k"].size)
    assert_that(got.shape == shape, clause_id, f"shape {got.shape}, expected (N, B) = {shape}")
    for j, (r, nj) in enumerate(zip(recs, nets, strict=True)):
        want = _point_mass_loss(nj[0], nj[2], nj[4], _f64(r.action), _f64(r.obs), r.k, c["eta"], c["m"])
        cj = {"k": r.k, "m": c["m"], "variance": c["variance"]}
        scale, u, _ = _loss_scale(cj, _f64(r.obs), _f64(r.action), _f64(r.eps), b, _f64(r.a_K), _f64(r.noises),
                                  c["eta"], nj)
        assert_close(clause_id, got[j], want, dtype=impl.dtype,
                     what=f"row {j}: SNR_k ||a_j - m_j(o_j)||^2 - eta Q_j(o_j, clip m_j) / mean|Q'_j(o_j, clip m_j)|",
                     K=b.size, d=_f64(r.action).shape[1], scale=scale, u=u,
                     inputs={"k": r.k, "max_action": str(c["m"])})


@clause("dom2.policy_loss", "matches_reference")
@given(c=_agents_case())
def test_policy_loss_matches_reference(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b = round_to(impl.dtype, c["b"])
    recs, nets = _records(impl, c)
    got = _f64(need(impl, clause_id)(recs, b, c["eta"], c["m"], c["variance"]))
    want = ref.policy_loss(recs, b, c["eta"], c["m"], c["variance"])
    assert_that(got.shape == want.shape, clause_id, f"shape {got.shape}, expected (N, B) = {want.shape}")
    for j, (r, nj) in enumerate(zip(recs, nets, strict=True)):
        cj = {"k": r.k, "m": c["m"], "variance": c["variance"]}
        scale, u, _ = _loss_scale(cj, _f64(r.obs), _f64(r.action), _f64(r.eps), b, _f64(r.a_K), _f64(r.noises),
                                  c["eta"], nj)
        assert_close(clause_id, got[j], want[j], dtype=impl.dtype, what=f"agent {j}", K=b.size,
                     d=_f64(r.action).shape[1], scale=scale, u=u, inputs={"k": r.k})


def _zero_fn(x: F, k: Any, s: Any = None) -> F:
    return np.zeros_like(_f64(x))


def _nan_fn(x: F, k: Any, s: Any = None) -> F:
    return np.full_like(_f64(x), np.nan)


def _narrow_fn(x: F, k: Any, s: Any = None) -> F:
    return np.zeros((np.asarray(x).shape[0], 1))


def _one_q(s: F, a: F) -> F:
    return np.ones(np.asarray(a).shape[0])


def _agent(B: int = 2, eps_fn: Callable[..., F] = _zero_fn, action: Any = None) -> ref.Agent:
    a = np.ones((B, 2)) if action is None else action
    return ref.Agent(np.ones((B, 3)), a, eps_fn, _one_q, _one_q, 1, np.zeros((B, 2)), np.zeros((B, 2)),
                     np.zeros((3, B, 2)))


_B3 = np.array([0.1, 0.2, 0.3])
_BAD_POLICY: list[tuple[Any, ...]] = [
    ([], _B3), ([_agent(2), _agent(3)], _B3), ([tuple(_agent(2))], _B3),
    ([_agent(2), _agent(2, action=np.full((2, 2), np.nan))], _B3), ([_agent(2, eps_fn=_nan_fn)], _B3),
    ([_agent(2)], np.array([0.1, 1.0, 0.2])), ([_agent(2), _agent(2, eps_fn=_narrow_fn)], _B3),
]


@clause("dom2.policy_loss", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_POLICY))))
def test_policy_loss_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_POLICY[i])


# ---- dom2.sample ----------------------------------------------------------------------


@st.composite
def _sub_sequence(draw: st.DrawFn, max_K: int = 30) -> tuple[F, F]:
    b = draw(betas(max_K=max_K))
    K = b.size
    inner = draw(st.lists(st.integers(0, K - 1), min_size=1, max_size=min(K, 8), unique=True))
    return b, np.asarray(sorted(inner) + [K], dtype=np.int64)


def _solver_scale(net: Callable[..., F], o: F, b: F, tau: F, x_K: F, L: Callable[[int], float]) -> tuple[F, F]:
    """The float64 DPM-Solver-1 trajectory's end point and the dom2.sample rule's scale."""
    ab = _ab(b)
    K = b.size
    x, S = x_K.copy(), np.zeros_like(x_K)
    B = x.shape[0]
    for i in range(tau.size - 1, 0, -1):
        k, kp = int(tau[i]), int(tau[i - 1])
        e = _f64(net(x, np.full(B, k), o))
        a, s = np.sqrt(ab[k]), np.sqrt(1.0 - ab[k])
        lam = abs(np.log(a / s))
        cond = 1.0 / (1.0 - ab[k])
        if kp >= 1:
            ap, sp = np.sqrt(ab[kp]), np.sqrt(1.0 - ab[kp])
            q, coef = ap / a, ap * s / a - sp
            lam += abs(np.log(ap / sp))
            direction = np.abs(e) * (sp + (4.0 + cond) / sp)
        else:
            q, coef, direction = 1.0 / a, s / a, 0.0
        xn = q * x - coef * e
        step = (K + 8 + lam) * (np.abs(xn) + q * (2 * np.abs(x) + s * np.abs(e) * (2.0 + cond)) + direction) \
            + coef * L(k) * np.abs(x)
        S = (q + coef * L(k)) * S + step
        x = xn
    return x, S


@clause("dom2.sample", "equals_ddim")
@given(case=_sub_sequence(), B=st.integers(1, 4), da=st.integers(1, 3), do=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_sample_equals_ddim(impl: Any, clause_id: str, case: tuple[F, F], B: int, da: int, do: int,
                            seed: int) -> None:
    b, tau = case
    b = round_to(impl.dtype, b)
    rng = np.random.default_rng(seed)
    x_K, o = round_to(impl.dtype, rng.standard_normal((B, da))), round_to(impl.dtype, rng.standard_normal((B, do)))
    net, L = _policy_net(seed, da, do)
    got = need(impl, clause_id)(x_K, net, o, b, tau)
    x = x_K
    for i in range(tau.size - 1, 0, -1):  # the float64 reference ddim.step, not the implementation's
        k, kp = int(tau[i]), int(tau[i - 1])
        x = ddim_ref.step(x, net(x, np.full(B, k), o), b, k, kp, 0.0, np.zeros_like(x))
    _, scale = _solver_scale(net, o, b, tau, x_K, lambda k: L)
    assert_close(clause_id, got, x, dtype=impl.dtype,
                 what="DPM-Solver-1 chain = DDIM (eta = 0) chain", scale=scale, inputs={"tau": str(tau.tolist())})


@clause("dom2.sample", "exact_for_point_mass")
@given(case=_sub_sequence(), B=st.integers(1, 4), m=hnp.arrays(np.float64, (3,), elements=finite(-2.0, 2.0)),
       seed=st.integers(0, 2**16))
def test_sample_exact_for_point_mass(impl: Any, clause_id: str, case: tuple[F, F], B: int, m: F, seed: int) -> None:
    b, tau = case
    b = round_to(impl.dtype, b)
    m = round_to(impl.dtype, m)
    ab = _ab(b)
    x_K = round_to(impl.dtype, np.random.default_rng(seed).standard_normal((B, 3)))

    def eps_star(x: F, k: Any, o: F) -> F:
        abk = ab[np.asarray(k)][:, None]
        return _f64((np.asarray(x) - np.sqrt(abk) * m) / np.sqrt(1.0 - abk))

    K, t0 = b.size, int(tau[0])
    want = np.sqrt(ab[t0]) * m + np.sqrt(1.0 - ab[t0]) * (x_K - np.sqrt(ab[K]) * m) / np.sqrt(1.0 - ab[K])
    _, scale = _solver_scale(eps_star, np.zeros((B, 1)), b, tau, x_K, lambda k: 1.0 / np.sqrt(1.0 - ab[k]))
    got = need(impl, clause_id)(x_K, eps_star, np.zeros((B, 1)), b, tau)
    assert_close(clause_id, got, want, dtype=impl.dtype, what="exact flow of a point mass for any tau",
                 scale=scale + np.abs(want), inputs={"tau": str(tau.tolist())})


@clause("dom2.sample", "matches_reference")
@given(case=_sub_sequence(), B=st.integers(1, 4), da=st.integers(1, 3), do=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_sample_matches_reference(impl: Any, clause_id: str, case: tuple[F, F], B: int, da: int, do: int,
                                  seed: int) -> None:
    b, tau = case
    b = round_to(impl.dtype, b)
    rng = np.random.default_rng(seed)
    x_K, o = round_to(impl.dtype, rng.standard_normal((B, da))), round_to(impl.dtype, rng.standard_normal((B, do)))
    net, L = _policy_net(seed, da, do)
    _, scale = _solver_scale(net, o, b, tau, x_K, lambda k: L)
    assert_close(clause_id, need(impl, clause_id)(x_K, net, o, b, tau), ref.sample(x_K, net, o, b, tau),
                 dtype=impl.dtype, scale=scale, inputs={"tau": str(tau.tolist())})


_X = np.ones((2, 2))
_O = np.ones((2, 3))
_BAD_DPM: list[tuple[Any, ...]] = [
    (_X, _zero_fn, _O, _B3, np.array([0, 2])), (_X, _zero_fn, _O, _B3, np.array([2, 1, 3])),
    (_X, _zero_fn, _O, _B3, np.array([3])), (_X, _zero_fn, _O, _B3, np.array([-1, 3])),
    (_X, _zero_fn, _O, _B3, np.array([0, 4])), (np.full((2, 2), np.nan), _zero_fn, _O, _B3, np.array([0, 3])),
    (_X, _zero_fn, np.full((2, 3), np.nan), _B3, np.array([0, 3])),
    (_X, _zero_fn, np.ones((3, 3)), _B3, np.array([0, 3])),
    (_X, _nan_fn, _O, _B3, np.array([0, 3])), (_X, _narrow_fn, _O, _B3, np.array([0, 3])),
    (_X, _zero_fn, _O, np.array([0.1, 1.0, 0.2]), np.array([0, 3])),
]


@clause("dom2.sample", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_DPM))))
def test_sample_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_DPM[i])
