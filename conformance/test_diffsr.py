"""Conformance: spec family ``diffsr`` (Diffusion Spectral Representation, Shribak et al. 2024).

Oracles: algebraic identities that hold to rounding (the kernel identity, shift invariance of
the log-sum-exp), exact moments of random Fourier features (cosines of Gaussian angles), Gaussian
closed forms of the perturbed transition for linear-Gaussian dynamics, exact expectations of
quadratic objectives by a degree-3 cubature (Vincent's score-matching identity), and finite MDPs
solved exactly for the TD fixed point. Statistical checks use diffrl_ref.suite.stats with fixed seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import integrate
from scipy import stats as sps

from diffrl_ref import spec
from diffrl_ref.reference import diffsr as ref
from diffrl_ref.suite import networks
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.stats import ALPHA, assert_mean_within
from diffrl_ref.suite.strategies import TINY, betas, finite

F = np.ndarray


# ---- helpers --------------------------------------------------------------------------


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


def _snap(v: float) -> float:
    """|v| < TINY becomes 0 (no subnormal products; the rules are relative to the data)."""
    return 0.0 if abs(v) < TINY else v


def _arr(shape: tuple[int, ...], lo: float, hi: float) -> st.SearchStrategy[F]:
    return hnp.arrays(np.float64, shape, elements=finite(lo, hi).map(_snap))


def _simplex(draw: st.DrawFn, shape: tuple[int, ...], lo: float = 0.0) -> F:
    """Rows on the probability simplex (last axis)."""
    raw = draw(_arr(shape, lo, 1.0)) + 0.05
    return np.asarray(raw / raw.sum(axis=-1, keepdims=True))


def _psd(draw: st.DrawFn, d: int, zero_ok: bool = True) -> F:
    """A symmetric positive semidefinite matrix with eigenvalues at most about 2 (0 allowed)."""
    if zero_ok and draw(st.booleans()) and draw(st.booleans()):
        return np.zeros((d, d))
    L = draw(_arr((d, d), -1.0, 1.0))
    # The ridge keeps a rank-deficient L L^T positive semidefinite after rounding to float32
    # (a singular matrix can round to an indefinite one, outside the clause's domain).
    return np.asarray(L @ L.T / d + 2.0**-10 * np.eye(d))


def _sqrtm(S: F) -> F:
    """Symmetric square root of a PSD matrix (eigh; tiny negative eigenvalues clipped)."""
    w, V = np.linalg.eigh(S)
    return np.asarray(V * np.sqrt(np.clip(w, 0.0, None)))


def _cubature(mean: F, cov: F) -> tuple[F, float]:
    """2n sigma points mean +- sqrt(n) L e_i (L L^T = cov), weights 1/(2n): exact for polynomials of degree <= 3."""
    n = mean.size
    L = _sqrtm(cov)
    offsets = np.sqrt(n) * L.T
    return np.concatenate([mean + offsets, mean - offsets], axis=0), 1.0 / (2 * n)


def _joint_cov(cov: F) -> F:
    """Covariance of (s', eps): diag(Sigma, I)."""
    ds = cov.shape[0]
    return np.asarray(np.block([[cov, np.zeros((ds, ds))], [np.zeros((ds, ds)), np.eye(ds)]]))


def _per_row_beta(draw: st.DrawFn, B: int, lo: float = 0.05, hi: float = 0.95) -> Any:
    if draw(st.booleans()):
        return draw(finite(lo, hi))
    return draw(_arr((B,), lo, hi))


def _col(beta: Any, B: int) -> F:
    return np.broadcast_to(_f64(beta), (B,))[:, None].astype(np.float64)


# ---- diffsr.ebm_transition -------------------------------------------------------------


@st.composite
def _ebm_case(draw: st.DrawFn, scale: float = 3.0) -> tuple[F, F]:
    B, N, m = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    return draw(_arr((B, m), -scale, scale)), draw(_arr((N, m), -scale, scale))


def _amax(psi: F, nu: F) -> F:
    """max_j sum_l |psi_il nu_jl| per row, as a (B, 1) column."""
    return np.asarray((np.abs(psi) @ np.abs(nu).T).max(axis=1, keepdims=True))


@clause("diffsr.ebm_transition", "normalised")
@given(case=_ebm_case())
def test_ebm_transition_normalised(impl: Any, clause_id: str, case: tuple[F, F]) -> None:
    psi, nu = (round_to(impl.dtype, x) for x in case)
    p, log_z = (_f64(x) for x in need(impl, clause_id)(psi, nu))
    B, N = psi.shape[0], nu.shape[0]
    assert_that(p.shape == (B, N) and log_z.shape == (B,), clause_id,
                f"shapes {p.shape} and {log_z.shape}, expected ({B}, {N}) and ({B},)")
    amax = _amax(psi, nu)
    v = {"m": psi.shape[1], "N": N, "amax": amax[:, 0], "lz": 0.0}
    assert_that(bool(np.all(p >= 0)), clause_id, "negative probabilities")
    assert_close(clause_id, np.maximum(p, 1.0).max(axis=1), np.ones(B), dtype=impl.dtype, what="P <= 1", **v)
    assert_close(clause_id, p.sum(axis=1), np.ones(B), dtype=impl.dtype, what="rows of P sum to 1", **v)
    z = np.exp(psi @ nu.T - log_z[:, None]).sum(axis=1)
    assert_close(clause_id, z, np.ones(B), dtype=impl.dtype, what="sum_j exp(psi^T nu_j - log Z) = 1", **v,
                 inputs={"log_z": log_z})


@clause("diffsr.ebm_transition", "shift_invariance")
@given(case=_ebm_case(), sign=st.sampled_from([1.0, -1.0]))
def test_ebm_transition_shift_invariance(impl: Any, clause_id: str, case: tuple[F, F], sign: float) -> None:
    psi, nu = (round_to(impl.dtype, x) for x in case)
    n0 = float(psi[0] @ psi[0])
    # |psi_0| >= 1/2 keeps |u| = 800 / |psi_0| <= 1600. The rounding of nu + u moves the energies by at most
    # eps amax, which the rule allows (amax is taken over nu and nu + u), but the allowance grows with |u|: a
    # tiny psi_0 would make u, and so the tolerance, arbitrarily large (and psi_0 = 0 leaves u undefined).
    assume(n0 >= 0.25)
    u = sign * 800.0 * psi[0] / n0                       # psi_0^T u = +-800: exp overflows or underflows
    nu_shift = round_to(impl.dtype, nu + u)
    u_eff = (nu_shift - nu).mean(axis=0)
    fn = need(impl, clause_id)
    p, log_z = (_f64(x) for x in fn(psi, nu))
    p2, log_z2 = (_f64(x) for x in fn(psi, nu_shift))
    amax = np.maximum(_amax(psi, nu), _amax(psi, nu_shift))
    v = {"m": psi.shape[1], "N": nu.shape[0]}
    assert_close(clause_id, p2, p, dtype=impl.dtype, what="P unchanged by nu -> nu + u", amax=amax, lz=0.0, **v,
                 inputs={"psi^T u": np.broadcast_to((psi @ u)[:, None], p.shape)})
    assert_close(clause_id, log_z2, log_z + psi @ u_eff, dtype=impl.dtype, what="log Z shifts by psi^T u",
                 amax=amax[:, 0], lz=1.0 + amax[:, 0], **v, inputs={"psi^T u": psi @ u_eff})


@st.composite
def _lattice_case(draw: st.DrawFn) -> tuple[F, F, F]:
    """psi (B, m) and the lattice of next-state features nu_j = c + j v (j = 0..N-1, N drawn by the test).

    c and v are multiples of 1/8 with |c| <= 2, |v| <= 1 and N <= 6, so every nu_j is a multiple of 1/8 of
    magnitude <= 7: at most 6 significant bits, exact in every dtype (bfloat16 has 8), and the rounded inputs
    are exactly on the lattice.
    """
    B, m = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    c = np.asarray(draw(st.lists(st.integers(-16, 16), min_size=m, max_size=m)), dtype=np.float64) / 8
    v = np.asarray(draw(st.lists(st.integers(-8, 8), min_size=m, max_size=m)), dtype=np.float64) / 8
    return draw(_arr((B, m), -3.0, 3.0)), c, v


@clause("diffsr.ebm_transition", "lattice_closed_form")
@given(case=_lattice_case(), N=st.integers(1, 6))
def test_ebm_transition_lattice_closed_form(impl: Any, clause_id: str, case: tuple[F, F, F], N: int) -> None:
    psi, c, v = case
    psi = round_to(impl.dtype, psi)
    j = np.arange(N, dtype=np.float64)
    nu = c[None, :] + j[:, None] * v[None, :]
    assert_that(bool(np.array_equal(round_to(impl.dtype, nu), nu)), clause_id, "test setup: lattice not exact")
    e0, t = psi @ c, psi @ v                  # energies e_ij = e0_i + j t_i
    # sum_j exp(j t) = (e^{N t} - 1) / (e^t - 1) (a geometric series; N at t = 0), with expm1: no cancellation.
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(t == 0.0, float(N), np.expm1(N * t) / np.expm1(t))
    log_z = e0 + np.log(ratio)
    P = np.exp(j[None, :] * t[:, None] - np.log(ratio)[:, None])   # a truncated geometric law in j
    got_p, got_lz = (_f64(x) for x in need(impl, clause_id)(psi, nu))
    # amax of the rule with |c_l| + j |v_l| in place of |nu_jl| (an upper bound): it also bounds the test's own
    # float64 rounding of e0 + j t.
    amax = np.max(np.abs(psi) @ (np.abs(c)[None, :] + j[:, None] * np.abs(v)[None, :]).T, axis=1)
    vars_ = {"m": psi.shape[1], "N": N, "amax": amax}
    assert_close(clause_id, got_p, P, dtype=impl.dtype, what="P_ij = e^{j t} (e^t - 1) / (e^{N t} - 1), t = psi^T v",
                 **{**vars_, "amax": amax[:, None]}, lz=0.0, inputs={"t": np.broadcast_to(t[:, None], P.shape)})
    assert_close(clause_id, got_lz, log_z, dtype=impl.dtype,
                 what="log Z = psi^T c + log((e^{N t} - 1) / (e^t - 1))", **vars_, lz=1.0 + amax, inputs={"t": t})


@clause("diffsr.ebm_transition", "matches_reference")
@given(case=_ebm_case())
def test_ebm_transition_matches_reference(impl: Any, clause_id: str, case: tuple[F, F]) -> None:
    psi, nu = (round_to(impl.dtype, x) for x in case)
    got, want = need(impl, clause_id)(psi, nu), ref.ebm_transition(psi, nu)
    amax = _amax(psi, nu)
    v = {"m": psi.shape[1], "N": nu.shape[0]}
    assert_close(clause_id, got[0], want[0], dtype=impl.dtype, what="P", amax=amax, lz=0.0, **v)
    assert_close(clause_id, got[1], want[1], dtype=impl.dtype, what="log Z", amax=amax[:, 0], lz=1.0 + amax[:, 0], **v)


_P2 = np.ones((2, 3))
_BAD_EBM: list[tuple[Any, ...]] = [
    (np.full((2, 3), np.nan), _P2),
    (_P2, np.full((2, 3), np.inf)),
    (np.ones(3), _P2),
    (_P2, np.ones((2, 4))),
]


def _first(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For clauses returning tuples: lets a wrongly accepted input be printed as one array."""
    return lambda *args, **kwargs: fn(*args, **kwargs)[0]


@clause("diffsr.ebm_transition", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_EBM))))
def test_ebm_transition_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(_first(need(impl, clause_id)), clause_id, *_BAD_EBM[i])


# ---- diffsr.ebm_identity ---------------------------------------------------------------


def _sq(psi: F, nu: F) -> F:
    return np.asarray((psi**2).sum(axis=1)[:, None] + (nu**2).sum(axis=1)[None, :])


@clause("diffsr.ebm_identity", "identity")
@given(case=_ebm_case(scale=5.0))
def test_ebm_identity_identity(impl: Any, clause_id: str, case: tuple[F, F]) -> None:
    psi, nu = (round_to(impl.dtype, x) for x in case)
    a, k, b = (_f64(x) for x in need(impl, clause_id)(psi, nu))
    B, N = psi.shape[0], nu.shape[0]
    assert_that(a.shape == (B,) and k.shape == (B, N) and b.shape == (N,), clause_id,
                f"shapes {a.shape}, {k.shape}, {b.shape}, expected ({B},), ({B}, {N}), ({N},)")
    assert_close(clause_id, a[:, None] + k + b[None, :], psi @ nu.T, dtype=impl.dtype,
                 what="||psi||^2/2 - ||psi - nu||^2/2 + ||nu||^2/2 = psi^T nu", m=psi.shape[1], sq=_sq(psi, nu))


@clause("diffsr.ebm_identity", "kernel_bounds")
@given(case=_ebm_case(scale=5.0))
def test_ebm_identity_kernel_bounds(impl: Any, clause_id: str, case: tuple[F, F]) -> None:
    psi, nu = (round_to(impl.dtype, x) for x in case)
    nu_ext = np.concatenate([nu, psi], axis=0)          # rows N.. are copies of the psi rows
    a, k, b = (_f64(x) for x in need(impl, clause_id)(psi, nu_ext))
    N, B = nu.shape[0], psi.shape[0]
    assert_that(bool(np.all(k <= 0)), clause_id, f"log kernel > 0: max {k.max():.3g}")
    diag = k[np.arange(B), N + np.arange(B)]
    assert_that(bool(np.all(diag == 0)), clause_id, f"log kernel of psi_i with itself is {diag}, not exactly 0")
    assert_that(bool(np.all(a >= 0) and np.all(b >= 0)), clause_id, "log scales ||psi||^2/2, ||nu||^2/2 must be >= 0")


@clause("diffsr.ebm_identity", "matches_reference")
@given(case=_ebm_case(scale=5.0))
def test_ebm_identity_matches_reference(impl: Any, clause_id: str, case: tuple[F, F]) -> None:
    psi, nu = (round_to(impl.dtype, x) for x in case)
    got, want = need(impl, clause_id)(psi, nu), ref.ebm_identity(psi, nu)
    m, sq = psi.shape[1], _sq(psi, nu)
    assert_close(clause_id, got[0], want[0], dtype=impl.dtype, what="log_scale_psi", m=m, sq=(psi**2).sum(axis=1))
    assert_close(clause_id, got[1], want[1], dtype=impl.dtype, what="log_kernel", m=m, sq=sq)
    assert_close(clause_id, got[2], want[2], dtype=impl.dtype, what="log_scale_nu", m=m, sq=(nu**2).sum(axis=1))


@clause("diffsr.ebm_identity", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_EBM))))
def test_ebm_identity_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(_first(need(impl, clause_id)), clause_id, *_BAD_EBM[i])


# ---- diffsr.rff ------------------------------------------------------------------------


def _rff_moments(r2: Any, phased: bool) -> tuple[Any, Any, Any]:
    """Kernel k, variance and fourth central moment of one feature's term, exactly.

    Paired: the term is z = cos(theta), theta = omega^T (psi - nu) ~ N(0, r2), with
    E cos(n theta) = exp(-n^2 r2 / 2). Phased: z = cos(theta) + cos(U), U uniform and independent
    of theta (2b mod 2 pi is uniform whatever omega is), E cos^2 U = 1/2, E cos^4 U = 3/8.
    """
    def c(n: int) -> Any:
        return np.exp(-(n**2) * np.asarray(r2) / 2)

    k = c(1)
    ez2, ez3, ez4 = (1 + c(2)) / 2, (3 * c(1) + c(3)) / 4, (3 + 4 * c(2) + c(4)) / 8
    var = np.expm1(-np.asarray(r2)) ** 2 / 2          # = ez2 - k^2, without the cancellation near r2 = 0
    mu4 = ez4 - 4 * k * ez3 + 6 * k**2 * ez2 - 3 * k**4
    if phased:
        mu4, var = mu4 + 3 * var + 3 / 8, var + 0.5
    return k, var, mu4


def _draws(seed: int, R: int, D: int, m: int, phased: bool) -> tuple[F, F | None]:
    rng = np.random.default_rng(seed)
    om = rng.standard_normal((R, D, m))
    ph = rng.uniform(0.0, 2 * np.pi, (R, D)) if phased else None
    return om, ph


def _estimates(fn: Callable[..., Any], psi: F, nu: F, log_z: F, om: F, ph: F | None) -> F:
    """<phi, mu> for every draw: (R, B, N)."""
    out = []
    for r in range(om.shape[0]):
        phi, mu = fn(psi, nu, log_z, om[r], None if ph is None else ph[r])
        out.append(_f64(phi) @ _f64(mu).T)
    return np.asarray(out)


#: (form, distance ||psi - nu||, dimension m) of the statistical RFF checks: each example costs
#: hundreds of calls, so the cases are a small grid that hypothesis enumerates.
_RFF_GRID = st.tuples(st.sampled_from([False, True]), st.sampled_from([0.35, 0.8, 1.5]), st.sampled_from([1, 3]))


def _pair(case: tuple[bool, float, int]) -> tuple[bool, F, F]:
    phased, dist, m = case
    rng = np.random.default_rng(int(1000 * dist) + m)
    psi = rng.uniform(-1.0, 1.0, (1, m))
    u = rng.standard_normal(m)
    return phased, psi, psi + dist * u / np.linalg.norm(u)


@clause("diffsr.rff", "unbiased")
@given(case=_RFF_GRID)
def test_rff_unbiased(impl: Any, clause_id: str, case: tuple[bool, float, int]) -> None:
    phased, psi, nu = _pair(case)
    psi, nu = round_to(impl.dtype, psi), round_to(impl.dtype, nu)
    log_z = 0.5 * ((psi**2).sum(axis=1) + (nu**2).sum(axis=1))   # so that <phi, mu> estimates the kernel
    R, D = 100, 200
    om, ph = _draws(2007, R, D, psi.shape[1], phased)
    est = _estimates(need(impl, clause_id), psi, nu, log_z, om, ph)[:, 0, 0]
    k, var, _ = _rff_moments(((psi - nu) ** 2).sum(), phased)
    assert_mean_within(clause_id, est, float(k), float(np.sqrt(var / D)),
                what=f"E<phi, mu> = exp(-||psi - nu||^2/2), {'phased' if phased else 'paired'} form, D = {D}")


@clause("diffsr.rff", "error_rate")
@given(case=_RFF_GRID)
def test_rff_error_rate(impl: Any, clause_id: str, case: tuple[bool, float, int]) -> None:
    phased, psi, nu = _pair(case)
    psi, nu = round_to(impl.dtype, psi), round_to(impl.dtype, nu)
    log_z = 0.5 * ((psi**2).sum(axis=1) + (nu**2).sum(axis=1))
    k, var, mu4 = (float(x) for x in _rff_moments(((psi - nu) ** 2).sum(), phased))
    fn = need(impl, clause_id)
    R, Ds = 300, (2, 8, 32)
    for D in Ds:
        om, ph = _draws(1000 + D, R, D, psi.shape[1], phased)
        sq_err = (_estimates(fn, psi, nu, log_z, om, ph)[:, 0, 0] - k) ** 2
        sd = np.sqrt(mu4 / D**3 + (2 * D - 3) * var**2 / D**3)
        assert_mean_within(clause_id, sq_err, var / D, float(sd), alpha=ALPHA / len(Ds),
                    what=f"E(<phi, mu> - k)^2 = sigma_1^2 / D, D = {D}, {'phased' if phased else 'paired'} form")


@st.composite
def _rff_inputs(draw: st.DrawFn, phased: bool | None = None) -> tuple[Any, ...]:
    B, N, m, D = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 12))
    psi, nu = draw(_arr((B, m), -2.0, 2.0)), draw(_arr((N, m), -2.0, 2.0))
    log_z = draw(_arr((B,), -5.0, 5.0))
    om = draw(_arr((D, m), -3.0, 3.0))
    use_phase = draw(st.booleans()) if phased is None else phased
    ph = draw(_arr((D,), 0.0, 2 * np.pi)) if use_phase else None
    return psi, nu, log_z, om, ph


def _round_opt(dtype: str, x: Any) -> Any:
    """round_to for an optional argument (None stays None)."""
    return None if x is None else round_to(dtype, x)


def _rff_vars(x: F, om: F, ph: F | None, shift: F) -> dict[str, Any]:
    """Rule variables for the features of rows x: env, arg (per feature), expo, F."""
    D = om.shape[0]
    arg = np.abs(x) @ np.abs(om).T
    half = 0.5 * (x**2).sum(axis=1)
    if ph is None:
        arg, c = np.concatenate([arg, arg], axis=1), 1.0
    else:
        arg, c = arg + np.abs(ph), 2.0
    env = np.sqrt(c / D) * np.exp(half - shift)[:, None]
    return {"env": env, "arg": arg, "expo": (half + np.abs(shift))[:, None], "F": arg.shape[1],
            "m": x.shape[1]}


@clause("diffsr.rff", "paired_diagonal")
@given(case=_rff_inputs(phased=False))
def test_rff_paired_diagonal(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    psi, _, log_z, om, _ = (_round_opt(impl.dtype, x) for x in case)
    phi, mu = (_f64(x) for x in need(impl, clause_id)(psi, psi, log_z, om, None))
    got = np.diagonal(phi @ mu.T)
    sq = (psi**2).sum(axis=1)
    expected = np.exp(sq - log_z)
    arg = (np.abs(psi) @ np.abs(om).T).max(axis=1)
    assert_close(clause_id, got, expected, dtype=impl.dtype, what="<phi_i, mu_i> with nu_i = psi_i",
                 m=psi.shape[1], F=2 * om.shape[0], arg=arg, expo=sq + np.abs(log_z), env=expected,
                 inputs={"D": om.shape[0]})


@clause("diffsr.rff", "transition_in_expectation")
@given(case=_ebm_case(scale=0.8), phased=st.booleans())
def test_rff_transition_in_expectation(impl: Any, clause_id: str, case: tuple[F, F], phased: bool) -> None:
    psi, nu = (round_to(impl.dtype, x) for x in case)
    psi, nu = psi[:3], nu[:4]
    e = psi @ nu.T
    log_z = e.max(axis=1) + np.log(np.exp(e - e.max(axis=1, keepdims=True)).sum(axis=1))
    P = np.exp(e - log_z[:, None])
    R, D = 100, 200
    om, ph = _draws(1957, R, D, psi.shape[1], phased)
    est = _estimates(need(impl, clause_id), psi, nu, log_z, om, ph)
    r2 = ((psi[:, None, :] - nu[None, :, :]) ** 2).sum(axis=2)
    _, var, _ = _rff_moments(r2, phased)
    env = np.exp(0.5 * (psi**2).sum(axis=1)[:, None] + 0.5 * (nu**2).sum(axis=1)[None, :] - log_z[:, None])
    B, N = P.shape
    m = psi.shape[1]
    # Where psi_i = nu_j the paired form has no variance: allow the clause's rounding rule there, for <phi, mu>
    # (env the product of the envelopes, F features, arg and expo their largest values).
    arg = np.abs(om).sum(axis=2).max() * max(np.abs(psi).max(), np.abs(nu).max())
    expo = 0.5 * (psi**2).sum(axis=1).max() + 0.5 * (nu**2).sum(axis=1).max() + np.abs(log_z).max()
    rounding = spec.clause(clause_id).tolerance.atol(impl.dtype, expected=P, m=m, F=D if phased else 2 * D, arg=arg,
                                                     expo=expo, env=env)
    for i in range(B):
        for j in range(N):
            assert_mean_within(clause_id, est[:, i, j], float(P[i, j]), float(env[i, j] * np.sqrt(var[i, j] / D)),
                               alpha=ALPHA / (B * N), rounding=float(rounding[i, j]),
                               what=f"E[phi mu^T][{i}, {j}] = P(s'_j | s_i, a_i)")


@clause("diffsr.rff", "matches_reference")
@given(case=_rff_inputs())
def test_rff_matches_reference(impl: Any, clause_id: str, case: tuple[Any, ...]) -> None:
    psi, nu, log_z, om, ph = (_round_opt(impl.dtype, x) for x in case)
    got, want = need(impl, clause_id)(psi, nu, log_z, om, ph), ref.rff(psi, nu, log_z, om, ph)
    assert_close(clause_id, got[0], want[0], dtype=impl.dtype, what="phi_omega", **_rff_vars(psi, om, ph, log_z),
                 inputs={"phased": ph is not None})
    assert_close(clause_id, got[1], want[1], dtype=impl.dtype, what="mu_omega",
                 **_rff_vars(nu, om, ph, np.zeros(nu.shape[0])), inputs={"phased": ph is not None})


_OM = np.ones((4, 3))
_LZ = np.zeros(2)
_BAD_RFF: list[tuple[Any, ...]] = [
    (np.full((2, 3), np.nan), _P2, _LZ, _OM, None),
    (_P2, _P2, np.zeros(3), _OM, None),                  # log_z of the wrong length
    (_P2, _P2, _LZ, np.ones((4, 2)), None),              # omegas of the wrong width
    (_P2, _P2, _LZ, _OM, np.zeros(3)),                   # phases of the wrong length
    (_P2, _P2, _LZ, np.full((4, 3), np.nan), None),
    (np.full((2, 3), 40.0), _P2, _LZ, _OM, None),        # exp(||psi||^2 / 2) = exp(2400) overflows
    (_P2, _P2, np.array([0.0, np.inf]), _OM, None),
]


@clause("diffsr.rff", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_RFF))))
def test_rff_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(_first(need(impl, clause_id)), clause_id, *_BAD_RFF[i])


# ---- diffsr.perturbed_transition --------------------------------------------------------


def _pt_vars(x: F, means: F, cov: F, beta: Any, N: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rule variables for log_p (flat) and score (column): kc, qmax, scale, N, ds, quad."""
    B, ds = x.shape
    b = _col(beta, B)
    m = np.broadcast_to(means, (B, N, ds))
    lam = float(np.linalg.eigvalsh(cov).max()) if ds else 0.0
    kc = 1.0 + (1.0 - b) * max(lam, 0.0) / b
    C = (1.0 - b)[:, :, None] * cov + b[:, :, None] * np.eye(ds)
    diff = x[:, None, :] - np.sqrt(1.0 - b)[:, :, None] * m
    q = np.einsum("bnd,bnd->bn", diff, np.linalg.solve(C[:, None], diff[..., None])[..., 0])
    qmax = q.max(axis=1, keepdims=True)
    m_norm = np.linalg.norm(m, axis=2).max(axis=1, keepdims=True)
    scale = (1.0 + np.linalg.norm(x, axis=1, keepdims=True) + m_norm) ** 2 / b
    col = {"kc": kc, "qmax": qmax, "scale": scale, "N": N, "ds": ds, "quad": 0.0}
    flat = {k: (v[:, 0] if isinstance(v, np.ndarray) else v) for k, v in col.items()}
    return flat, col


@st.composite
def _linear_gaussian(draw: st.DrawFn) -> dict[str, Any]:
    ds, da, B = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 5))
    A, Bm = draw(_arr((ds, ds), -1.0, 1.0)), draw(_arr((ds, da), -1.0, 1.0))
    s, a = draw(_arr((B, ds), -2.0, 2.0)), draw(_arr((B, da), -1.0, 1.0))
    return {"A": A, "Bm": Bm, "s": s, "a": a, "cov": _psd(draw, ds), "beta": _per_row_beta(draw, B),
            "x": draw(_arr((B, ds), -3.0, 3.0))}


@clause("diffsr.perturbed_transition", "linear_gaussian_closed_form")
@given(case=_linear_gaussian())
def test_perturbed_linear_gaussian(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, cov = round_to(impl.dtype, case["x"]), round_to(impl.dtype, case["cov"])
    beta = round_to(impl.dtype, case["beta"])
    mean = round_to(impl.dtype, case["s"] @ case["A"].T + case["a"] @ case["Bm"].T)   # A s + B a
    B, ds = x.shape
    log_p, score = (_f64(v) for v in need(impl, clause_id)(x, mean[:, None, :], np.ones((B, 1)), cov, beta))
    b = _col(beta, B)
    want_lp, want_score = np.empty(B), np.empty((B, ds))
    for i in range(B):
        C = (1.0 - b[i, 0]) * cov + b[i, 0] * np.eye(ds)
        mu = np.sqrt(1.0 - b[i, 0]) * mean[i]
        want_lp[i] = sps.multivariate_normal(mu, C).logpdf(x[i])
        want_score[i] = -np.linalg.solve(C, x[i] - mu)
    flat, col = _pt_vars(x, mean[:, None, :], cov, beta, 1)
    assert_close(clause_id, log_p, want_lp, dtype=impl.dtype,
                 what="log N(s~; sqrt(1-beta)(As+Ba), (1-beta)Sigma + beta I)", **flat, inputs={"beta": b[:, 0]})
    assert_close(clause_id, score, want_score, dtype=impl.dtype, what="score -C^{-1}(s~ - sqrt(1-beta)(As+Ba))",
                 **col, inputs={"beta": b[:, 0]})


@st.composite
def _mixture(draw: st.DrawFn, continuous: bool) -> dict[str, Any]:
    ds = 1 if continuous else draw(st.integers(1, 3))
    N, B = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    means = draw(_arr((N, ds), -2.0, 2.0))
    w = _simplex(draw, (N,))
    cov = np.full((1, 1), draw(finite(0.1, 2.0))) if continuous else np.zeros((ds, ds))
    return {"means": means, "w": w, "cov": cov, "beta": draw(finite(0.05, 0.95)), "x": draw(_arr((B, ds), -2.5, 2.5))}


def _npdf(x: float, mean: float, sd: float) -> float:
    """Normal density in plain floats (scipy's per-call overhead dominates inside quad)."""
    z = (x - mean) / sd
    return math.exp(-0.5 * z * z) / (sd * math.sqrt(2 * math.pi))


@clause("diffsr.perturbed_transition", "defining_integral")
@given(case=st.booleans().flatmap(_mixture))
def test_perturbed_defining_integral(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, means, cov, b = (round_to(impl.dtype, case[k]) for k in ("x", "means", "cov", "beta"))
    w = case["w"]
    beta = float(b)
    B, ds = x.shape
    N = means.shape[0]
    log_p = _f64(need(impl, clause_id)(x, means, np.broadcast_to(w, (B, N)), cov, beta)[0])
    flat, _ = _pt_vars(x, means, cov, beta, N)
    if cov[0, 0] == 0.0:      # finite next-state set: the integral against the discrete measure is a sum
        comp = np.log(w) + sps.norm.logpdf(x[:, None, :], np.sqrt(1 - beta) * means[None], np.sqrt(beta)).sum(axis=2)
        top = comp.max(axis=1, keepdims=True)
        want = top[:, 0] + np.log(np.exp(comp - top).sum(axis=1))
        quad = np.zeros(B)
    else:                     # one-dimensional Gaussian mixture: adaptive quadrature over s'
        sd = float(np.sqrt(cov[0, 0]))
        # 12 sd: the Gaussian mass beyond is below 1e-32, far under float64 rounding of the integral; quad's
        # own error estimate (epsrel 1e-12 asked) enters the rule as quad.
        lo, hi = means.min() - 12 * sd, means.max() + 12 * sd
        want, quad = np.empty(B), np.empty(B)
        comps = [(float(wj), float(mj)) for wj, mj in zip(w, means[:, 0], strict=True)]
        for i in range(B):
            def integrand(sp: float, xi: float = float(x[i, 0])) -> float:
                density = sum(wj * _npdf(sp, mj, sd) for wj, mj in comps)
                return _npdf(xi, math.sqrt(1 - beta) * sp, math.sqrt(beta)) * density
            val, err = integrate.quad(integrand, lo, hi, points=list(means[:, 0]), epsabs=0.0, epsrel=1e-12,
                                      limit=200)
            want[i], quad[i] = np.log(val), err / val
    flat["quad"] = quad
    assert_close(clause_id, log_p, want, dtype=impl.dtype, what="log of the defining integral", **flat,
                 inputs={"beta": beta, "Sigma": cov[0, 0]})


@clause("diffsr.perturbed_transition", "stein")
@given(case=st.booleans().flatmap(_mixture))
def test_perturbed_stein(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    means, cov, b = (round_to(impl.dtype, case[k]) for k in ("means", "cov", "beta"))
    w, beta = case["w"], float(b)
    N, ds = means.shape
    n = 8000
    rng = np.random.default_rng(20240)
    comp = rng.choice(N, size=n, p=w)
    s_next = means[comp] + rng.standard_normal((n, ds)) @ _sqrtm(cov).T
    x = round_to(impl.dtype, np.sqrt(1 - beta) * s_next + np.sqrt(beta) * rng.standard_normal((n, ds)))
    score = _f64(need(impl, clause_id)(x, means, np.broadcast_to(w, (n, N)), cov, beta)[1])
    c_inv = np.linalg.inv((1 - beta) * cov + beta * np.eye(ds))
    for d in range(ds):
        assert_mean_within(clause_id, score[:, d], 0.0, float(np.sqrt(c_inv[d, d])), alpha=ALPHA / ds,
                    what=f"E[score_{d}(s~')] = 0 under s~' = sqrt(1-beta) s' + sqrt(beta) eps")


@st.composite
def _pt_general(draw: st.DrawFn) -> dict[str, Any]:
    ds, N, B = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    shared = draw(st.booleans())
    means = draw(_arr((N, ds) if shared else (B, N, ds), -2.0, 2.0))
    return {"x": draw(_arr((B, ds), -3.0, 3.0)), "means": means, "w": _simplex(draw, (B, N)),
            "cov": _psd(draw, ds), "beta": _per_row_beta(draw, B)}


@clause("diffsr.perturbed_transition", "matches_reference")
@given(case=_pt_general())
def test_perturbed_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, means, cov, beta = (round_to(impl.dtype, case[k]) for k in ("x", "means", "cov", "beta"))
    w = case["w"]
    got = need(impl, clause_id)(x, means, w, cov, beta)
    want = ref.perturbed_transition(x, means, w, cov, beta)
    flat, col = _pt_vars(x, means, cov, beta, w.shape[1])
    assert_close(clause_id, got[0], want[0], dtype=impl.dtype, what="log_p", **flat)
    assert_close(clause_id, got[1], want[1], dtype=impl.dtype, what="score", **col)


_X2 = np.zeros((2, 2))
_M2 = np.zeros((1, 2))
_W2 = np.ones((2, 1))
_I2 = np.eye(2)
_BAD_PT: list[tuple[Any, ...]] = [
    (_X2, _M2, _W2, _I2, 0.0),
    (_X2, _M2, _W2, _I2, 1.0),
    (_X2, _M2, _W2, _I2, np.array([0.5, 1.2])),
    (_X2, np.zeros((2, 2)), np.full((2, 2), 0.6), _I2, 0.5),          # rows of weights sum to 1.2
    (_X2, np.zeros((2, 2)), np.array([[1.5, -0.5], [0.5, 0.5]]), _I2, 0.5),   # negative weight
    (_X2, _M2, _W2, np.array([[1.0, 0.0], [0.0, -1.0]]), 0.5),        # indefinite covariance
    (_X2, _M2, _W2, np.array([[1.0, 0.5], [0.0, 1.0]]), 0.5),         # asymmetric covariance
    (np.full((2, 2), np.nan), _M2, _W2, _I2, 0.5),
    (_X2, np.zeros((1, 3)), _W2, _I2, 0.5),                            # means of the wrong width
]


@clause("diffsr.perturbed_transition", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_PT))))
def test_perturbed_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(_first(need(impl, clause_id)), clause_id, *_BAD_PT[i])


# ---- diffsr.score_objective -------------------------------------------------------------


def _obj_mag(psi: F, grad_nu: F, x: F, s_next: F, beta: Any) -> F:
    """Per row: the Euclidean norm over coordinates of sum_l |psi_l grad_nu_ld| + (|s~'_d| + |s'_d|) / beta."""
    b = _col(beta, x.shape[0])
    per = np.einsum("bm,bmd->bd", np.abs(psi), np.abs(grad_nu)) + (np.abs(x) + np.abs(s_next)) / b
    return np.asarray(np.linalg.norm(per, axis=1))


@st.composite
def _objective_case(draw: st.DrawFn) -> dict[str, Any]:
    B, m, ds = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    return {"psi": draw(_arr((B, m), -3.0, 3.0)), "grad_nu": draw(_arr((B, m, ds), -3.0, 3.0)),
            "x": draw(_arr((B, ds), -3.0, 3.0)), "s_next": draw(_arr((B, ds), -3.0, 3.0)),
            "beta": _per_row_beta(draw, B), "delta": draw(_arr((B, ds), -2.0, 2.0)) * draw(st.sampled_from([0.0, 1.0])),
            "l0": draw(st.integers(0, m - 1))}


@clause("diffsr.score_objective", "denoising_target")
@given(case=_objective_case())
def test_score_objective_denoising_target(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    x, s1, beta = (round_to(impl.dtype, case[k]) for k in ("x", "s_next", "beta"))
    B, m = case["psi"].shape
    psi = np.zeros((B, m))
    psi[:, case["l0"]] = 1.0
    target = -(x - np.sqrt(1 - _col(beta, B)) * s1) / _col(beta, B)
    gn = case["grad_nu"].copy()
    gn[:, case["l0"], :] = target + case["delta"]
    gn = round_to(impl.dtype, gn)
    delta = gn[:, case["l0"], :] - target                       # the delta the rounded inputs carry
    got = _f64(need(impl, clause_id)(psi, gn, x, s1, beta))
    assert_close(clause_id, got, (delta**2).sum(axis=1), dtype=impl.dtype,
                 what="loss at model score = denoising target + delta is ||delta||^2", m=m, ds=x.shape[1], kc=1.0,
                 mag=_obj_mag(psi, gn, x, s1, beta), inputs={"beta": _col(beta, B)[:, 0]})


@st.composite
def _vincent_case(draw: st.DrawFn) -> dict[str, Any]:
    ds = draw(st.integers(1, 2))
    return {"m": draw(_arr((ds,), -2.0, 2.0)), "cov": _psd(draw, ds), "beta": draw(finite(0.05, 0.95)),
            "G": draw(_arr((ds, ds), -2.0, 2.0)), "h": draw(_arr((ds,), -2.0, 2.0))}


def _affine_model(x: F, G: F, h: F) -> tuple[F, F]:
    """psi = [s~'^T, 1] and grad_nu = [G^T; h^T] per row, so that psi^T grad_nu = G s~' + h."""
    B, ds = x.shape
    psi = np.concatenate([x, np.ones((B, 1))], axis=1)
    return psi, np.broadcast_to(np.concatenate([G.T, h[None, :]], axis=0), (B, ds + 1, ds)).copy()


@clause("diffsr.score_objective", "vincent_identity")
@given(case=_vincent_case())
def test_score_objective_vincent_identity(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    m, cov, G, h = (round_to(impl.dtype, case[k]) for k in ("m", "cov", "G", "h"))
    beta = float(round_to(impl.dtype, case["beta"]))
    ds = m.size
    C = (1 - beta) * cov + beta * np.eye(ds)
    c_inv = np.linalg.inv(C)
    # Exact expectations over (s', eps) ~ N((m, 0), diag(Sigma, I)) by cubature (the loss is quadratic).
    z, wt = _cubature(np.concatenate([m, np.zeros(ds)]), _joint_cov(cov))
    s1, e = z[:, :ds], z[:, ds:]
    x = np.sqrt(1 - beta) * s1 + np.sqrt(beta) * e
    fn = need(impl, clause_id)
    psi, gn = _affine_model(x, G, h)
    psi_s, gn_s = _affine_model(x, -c_inv, np.sqrt(1 - beta) * c_inv @ m)      # the exact score s*
    loss = _f64(fn(psi, gn, x, s1, beta))
    loss_s = _f64(fn(psi_s, gn_s, x, s1, beta))
    e_den, e_den_s = wt * loss.sum(), wt * loss_s.sum()
    A = G + c_inv
    c = h - np.sqrt(1 - beta) * c_inv @ m
    mu_t = np.sqrt(1 - beta) * m
    e_explicit = float(np.sum((A @ mu_t + c) ** 2) + np.trace(A @ C @ A.T))
    mag2 = wt * np.sum(_obj_mag(psi, gn, x, s1, beta) ** 2 + loss + _obj_mag(psi_s, gn_s, x, s1, beta) ** 2 + loss_s)
    kc = float(np.linalg.cond(C))
    v = {"m": ds + 1, "ds": ds, "kc": kc, "mag": np.sqrt(mag2)}
    assert_close(clause_id, e_den - e_den_s, e_explicit, dtype=impl.dtype,
                 what="E_den(s) - E_den(s*) = E||s - s*||^2 (Vincent 2011)", **v, inputs={"beta": beta})
    assert_close(clause_id, e_den_s, ds / beta - float(np.trace(c_inv)), dtype=impl.dtype,
                 what="E_den(s*) = ds/beta - tr(C^{-1})", **v, inputs={"beta": beta})


@clause("diffsr.score_objective", "matches_reference")
@given(case=_objective_case())
def test_score_objective_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    psi, gn, x, s1, beta = (round_to(impl.dtype, case[k]) for k in ("psi", "grad_nu", "x", "s_next", "beta"))
    got = need(impl, clause_id)(psi, gn, x, s1, beta)
    assert_close(clause_id, got, ref.score_objective(psi, gn, x, s1, beta), dtype=impl.dtype, m=psi.shape[1],
                 ds=x.shape[1], kc=1.0, mag=_obj_mag(psi, gn, x, s1, beta))


_PS = np.ones((2, 3))
_GN = np.ones((2, 3, 2))
_BAD_OBJ: list[tuple[Any, ...]] = [
    (_PS, _GN, _X2, _X2, 0.0),
    (_PS, _GN, _X2, _X2, 1.0),
    (_PS, _GN, _X2, _X2, np.array([0.5, -0.1])),
    (_PS, np.ones((2, 2, 2)), _X2, _X2, 0.5),               # grad_nu of the wrong shape
    (_PS, _GN, _X2, np.zeros((2, 3)), 0.5),                 # s_next and s_tilde differ
    (_PS, _GN, np.full((2, 2), np.nan), _X2, 0.5),
    (np.ones(3), _GN, _X2, _X2, 0.5),
]


@clause("diffsr.score_objective", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_OBJ))))
def test_score_objective_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_OBJ[i])


# ---- diffsr.train_step -----------------------------------------------------------------


def _lipschitz(mlp: networks.MLP) -> float:
    """An upper bound on the MLP's Lipschitz constant: product of spectral norms, mish slope <= 1.1."""
    out = 1.0
    for w, _ in mlp.params:
        out *= float(np.linalg.norm(w, 2))
    return out * 1.1 ** (len(mlp.params) - 1)


def _mlp_networks(seed: int, ds: int, da: int, m: int) -> tuple[Any, Any, float]:
    psi_net = networks.MLP.init(seed, [ds + da, 16, m])
    nu_net = networks.MLP.init(seed + 1, [ds + 1, 16, m * ds])

    def psi_fn(s: F, a: F) -> F:
        return psi_net(np.concatenate([s, a], axis=1))

    def grad_nu_fn(x: F, beta: F) -> F:
        return nu_net(np.concatenate([x, np.asarray(beta)[:, None]], axis=1)).reshape(x.shape[0], m, ds)

    return psi_fn, grad_nu_fn, _lipschitz(nu_net)


@st.composite
def _train_case(draw: st.DrawFn) -> dict[str, Any]:
    b = draw(betas(max_K=10))
    B, ds, da, m = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    k: Any = (np.asarray(draw(st.lists(st.integers(1, b.size), min_size=B, max_size=B)), dtype=np.int64)
              if draw(st.booleans()) else draw(st.integers(1, b.size)))
    return {"betas": b, "k": k, "s": draw(_arr((B, ds), -2.0, 2.0)), "a": draw(_arr((B, da), -1.0, 1.0)),
            "s_next": draw(_arr((B, ds), -2.0, 2.0)), "eps": draw(_arr((B, ds), -3.0, 3.0)), "m": m,
            "seed": draw(st.integers(0, 2**16))}


def _train_mag2(psi: F, gn: F, x: F, s1: F, e: F, level: F, lip: float, K: int) -> float:
    """Batch mean of the objective's magnitude squared plus the corruption's propagated error (units of eps)."""
    corrupt = (np.linalg.norm(psi, axis=1) * lip + 1.0 / level) * 2 * (K + 2) * (
        np.linalg.norm(s1, axis=1) + np.linalg.norm(e, axis=1))
    return float(np.mean(_obj_mag(psi, gn, x, s1, level) ** 2 + corrupt**2))


@clause("diffsr.train_step", "composition")
@given(case=_train_case())
def test_train_step_composition(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    b, s, a, s1, e = (round_to(impl.dtype, case[k]) for k in ("betas", "s", "a", "s_next", "eps"))
    k = case["k"]
    B, ds = s1.shape
    psi_fn, grad_nu_fn, lip = _mlp_networks(case["seed"], ds, a.shape[1], case["m"])
    got = float(need(impl, clause_id)(psi_fn, grad_nu_fn, s, a, s1, e, b, k))
    # Algorithm 1 written here in float64 (not the implementation's ddpm.noise or diffsr.score_objective, so a
    # bug in those fails their own clauses, not this one): level beta^k = 1 - alpha_bar_k, the corruption
    # s~' = sqrt(1 - beta^k) s' + sqrt(beta^k) eps, and the batch mean of
    # ||psi^T grad_nu + (s~' - sqrt(1 - beta) s') / beta||^2.
    level = np.broadcast_to((1.0 - np.concatenate([[1.0], np.cumprod(1.0 - b)]))[np.asarray(k)], (B,)).copy()
    x = np.sqrt(1.0 - level)[:, None] * s1 + np.sqrt(level)[:, None] * e
    psi, gn = _f64(psi_fn(s, a)), _f64(grad_nu_fn(x, level))
    resid = np.einsum("bm,bmd->bd", psi, gn) + (x - np.sqrt(1.0 - level)[:, None] * s1) / level[:, None]
    expected = float(np.mean(np.sum(resid**2, axis=1)))
    mag2 = _train_mag2(psi, gn, x, s1, e, level, lip, b.size)
    assert_close(clause_id, got, expected, dtype=impl.dtype,
                 what="mean of score_objective at ddpm.noise(s', eps, betas, k), beta = 1 - alpha_bar_k",
                 m=case["m"], ds=ds, kc=1.0, mag=np.sqrt(mag2), inputs={"k": k})


def _exact_score_networks(A: F, Bm: F, cov: F) -> tuple[Any, Any]:
    """psi(s, a) = [1, (A s + B a)^T], grad nu(s~'; beta) = [-C^{-1} s~'; sqrt(1 - beta) C^{-1}]: psi^T grad nu = s*."""
    ds = cov.shape[0]

    def psi_fn(s: F, a: F) -> F:
        return np.concatenate([np.ones((s.shape[0], 1)), s @ A.T + a @ Bm.T], axis=1)

    def grad_nu_fn(x: F, beta: F) -> F:
        out = np.empty((x.shape[0], ds + 1, ds))
        for i in range(x.shape[0]):
            c_inv = np.linalg.inv((1 - beta[i]) * cov + beta[i] * np.eye(ds))
            out[i, 0] = -c_inv @ x[i]
            out[i, 1:] = np.sqrt(1 - beta[i]) * c_inv
        return out

    return psi_fn, grad_nu_fn


@clause("diffsr.train_step", "vincent_minimum")
@given(case=_linear_gaussian(), b=betas(max_K=6, lo=0.05, hi=0.5))
def test_train_step_vincent_minimum(impl: Any, clause_id: str, case: dict[str, Any], b: F) -> None:
    A, Bm, cov = (round_to(impl.dtype, case[k]) for k in ("A", "Bm", "cov"))
    b = round_to(impl.dtype, b)
    s, a = round_to(impl.dtype, case["s"][:1]), round_to(impl.dtype, case["a"][:1])
    ds = s.shape[1]
    mean = (s @ A.T + a @ Bm.T)[0]
    z, _ = _cubature(np.concatenate([mean, np.zeros(ds)]), _joint_cov(cov))
    n = z.shape[0]
    s1, e = round_to(impl.dtype, z[:, :ds]), round_to(impl.dtype, z[:, ds:])
    S, Aa = np.repeat(s, n, axis=0), np.repeat(a, n, axis=0)
    psi_fn, grad_nu_fn = _exact_score_networks(A, Bm, cov)
    fn = need(impl, clause_id)
    ab = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    for k in range(1, b.size + 1):
        level = 1.0 - ab[k]
        C = (1 - level) * cov + level * np.eye(ds)
        c_inv = np.linalg.inv(C)
        got = float(fn(psi_fn, grad_nu_fn, S, Aa, s1, e, b, k))
        lv = np.full(n, level)
        x = np.sqrt(1 - level) * s1 + np.sqrt(level) * e
        mag2 = _train_mag2(psi_fn(S, Aa), grad_nu_fn(x, lv), x, s1, e, lv, float(np.linalg.norm(c_inv, 2)), b.size)
        assert_close(clause_id, got, ds / level - float(np.trace(c_inv)), dtype=impl.dtype,
                     what=f"exact score on a cubature batch gives ds/beta^k - tr(C_k^-1), k={k}",
                     m=ds + 1, ds=ds, kc=float(np.linalg.cond(C)), mag=np.sqrt(mag2),
                     inputs={"k": k, "beta^k": level})


@clause("diffsr.train_step", "matches_reference")
@given(case=_train_case())
def test_train_step_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    b, s, a, s1, e = (round_to(impl.dtype, case[k]) for k in ("betas", "s", "a", "s_next", "eps"))
    k = case["k"]
    B, ds = s1.shape
    psi_fn, grad_nu_fn, lip = _mlp_networks(case["seed"], ds, a.shape[1], case["m"])
    got = float(need(impl, clause_id)(psi_fn, grad_nu_fn, s, a, s1, e, b, k))
    want = ref.train_step(psi_fn, grad_nu_fn, s, a, s1, e, b, k)
    level = np.broadcast_to((1.0 - np.concatenate([[1.0], np.cumprod(1.0 - b)]))[np.asarray(k)], (B,)).copy()
    x = np.sqrt(1 - level)[:, None] * s1 + np.sqrt(level)[:, None] * e
    psi, gn = _f64(psi_fn(s, a)), _f64(grad_nu_fn(x, level))
    assert_close(clause_id, got, want, dtype=impl.dtype, m=case["m"], ds=ds, kc=1.0,
                 mag=np.sqrt(_train_mag2(psi, gn, x, s1, e, level, lip, b.size)), inputs={"k": k})


def _psi_fn(s: F, a: F) -> F:
    return np.ones((s.shape[0], 2))


def _grad_nu_fn(x: F, beta: F) -> F:
    return np.ones((x.shape[0], 2, x.shape[1]))


_B3 = np.array([0.1, 0.2, 0.3])
_S2, _A2 = np.zeros((2, 2)), np.zeros((2, 1))
_BAD_TRAIN: list[tuple[Any, ...]] = [
    (_S2, _A2, _S2, _S2, _B3, 0),                        # k = 0
    (_S2, _A2, _S2, _S2, _B3, 4),                        # k = K + 1
    (_S2, _A2, _S2, _S2, _B3, np.array([1, 2, 3])),      # k of the wrong shape
    (_S2, _A2, _S2, np.zeros((2, 3)), _B3, 1),           # eps of the wrong shape
    (np.zeros((3, 2)), np.zeros((3, 1)), _S2, _S2, _B3, 1),   # batch sizes differ
    (np.full((2, 2), np.nan), _A2, _S2, _S2, _B3, 1),
    (_S2, _A2, _S2, _S2, np.array([0.1, 1.0]), 1),       # beta = 1 in the schedule
]


@clause("diffsr.train_step", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_TRAIN))))
def test_train_step_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, _psi_fn, _grad_nu_fn, *_BAD_TRAIN[i])


# ---- diffsr.critic -----------------------------------------------------------------------


def _elu(x: F) -> F:
    """elu(x) = e^x - 1 for x < 0, x otherwise (expm1 of the negative part only)."""
    return np.asarray(np.where(x < 0, np.expm1(np.minimum(x, 0.0)), x))


@st.composite
def _critic_case(draw: st.DrawFn, hidden: bool | None = None) -> dict[str, Any]:
    """n critics on D features of m-dimensional psi (B rows); hidden head with H units, or the linear head."""
    n, m, D, B = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    use_hidden = draw(st.booleans()) if hidden is None else hidden
    H = draw(st.integers(1, 5)) if use_hidden else 0
    return {"psi": draw(_arr((B, m), -3.0, 3.0)), "om": draw(_arr((n, D, m), -3.0, 3.0)),
            "ph": draw(_arr((n, D), -2 * np.pi, 2 * np.pi)), "A": draw(finite(0.05, 3.0)),
            "W": draw(_arr((n, H, D), -2.0, 2.0)) if use_hidden else None,
            "c": draw(_arr((n, H), -3.0, 3.0)) if use_hidden else None,
            "ow": draw(_arr((n, H if use_hidden else D), -2.0, 2.0)), "ob": draw(_arr((n,), -5.0, 5.0))}


def _critic_args(dtype: str, case: dict[str, Any]) -> tuple[Any, ...]:
    """The case's arguments rounded to the implementation's dtype, in the clause's order."""
    return (*(_round_opt(dtype, case[k]) for k in ("psi", "om", "ph")), float(round_to(dtype, case["A"])),
            *(_round_opt(dtype, case[k]) for k in ("W", "c", "ow", "ob")))


def _critic_vars(psi: F, om: F, ph: F, A: float, W: F | None, c: F | None, ow: F, ob: F) -> dict[str, Any]:
    """Rule variables: m, D, H (0 for the linear head), arg (n, B), mag (n, 1); quad = 0 (no float64 oracle)."""
    arg = (np.einsum("bl,njl->nbj", np.abs(psi), np.abs(om)) + np.abs(ph)[:, None, :]).max(axis=2)
    if W is None or c is None:
        H, mag = 0, A * np.abs(ow).sum(axis=1) + np.abs(ob)
    else:
        U = A * np.abs(W).sum(axis=2) + np.abs(c)          # (n, H): bounds of the pre-activations
        H, mag = W.shape[1], (np.abs(ow) * U).sum(axis=1) + np.abs(ob)
    return {"m": psi.shape[1], "D": om.shape[1], "H": H, "arg": arg, "mag": mag[:, None], "quad": 0.0}


#: Gauss-Hermite nodes per axis. For f(x) = cos(a sqrt(2) x + c) with a = |omega| s <= 2 the error of the
#: normalised G-node rule is at most G! a^(2G) / (2G)! (the 2G-th derivative bound), 4^24 24! / 48! < 2e-23
#: relative for G = 24, per axis (m = 2 multiplies it by a small constant): far below every dtype's rule,
#: float64's included, so the quadrature is exact here.
_GH_NODES = 24


@st.composite
def _gauss_case(draw: st.DrawFn) -> dict[str, Any]:
    m, n, D = draw(st.sampled_from([1, 2])), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    om = draw(_arr((n, D, m), -3.0, 3.0))
    top = float(np.linalg.norm(om, axis=2).max())
    s = draw(finite(0.05, 1.0))
    if top > 0:
        s = min(s, 2.0 / top)                               # |omega_ij| s <= 2: the quadrature bound above
    return {"mu": draw(_arr((m,), -2.0, 2.0)), "s": s, "om": om, "ph": draw(_arr((n, D), 0.0, 2 * np.pi)),
            "A": draw(finite(0.05, 3.0)), "ow": draw(_arr((n, D), -2.0, 2.0)), "ob": draw(_arr((n,), -5.0, 5.0))}


@clause("diffsr.critic", "gaussian_expectation")
@given(case=_gauss_case())
def test_critic_gaussian_expectation(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    om, ph, ow, ob = (round_to(impl.dtype, case[k]) for k in ("om", "ph", "ow", "ob"))
    A = float(round_to(impl.dtype, case["A"]))
    mu, s = case["mu"], case["s"]
    m = mu.size
    x, w = np.polynomial.hermite.hermgauss(_GH_NODES)
    w = w / np.sqrt(np.pi)                                  # E f(Z), Z ~ N(0, 1/2) per axis: weights sum to 1
    X = np.stack(np.meshgrid(*([x] * m), indexing="ij"), axis=-1).reshape(-1, m)
    wt = np.prod(np.stack(np.meshgrid(*([w] * m), indexing="ij"), axis=-1).reshape(-1, m), axis=1)
    # psi = mu + sqrt(2) s X ~ N(mu, s^2 I). The nodes are rounded to the dtype; the oracle is the law of the
    # unrounded ones (the rule's m + 2 covers the move).
    psi = round_to(impl.dtype, mu + np.sqrt(2.0) * s * X)
    q = _f64(need(impl, clause_id)(psi, om, ph, A, None, None, ow, ob))
    shape = (ow.shape[0], psi.shape[0])
    assert_that(q.shape == shape, clause_id, f"shape {q.shape}, expected {shape}")
    got = q @ wt
    decay = np.exp(-0.5 * s**2 * (om**2).sum(axis=2))      # E cos(omega^T psi + b) = decay cos(omega^T mu + b)
    expected = ob + A * (ow * decay * np.cos(om @ mu + ph)).sum(axis=1)
    v = _critic_vars(psi, om, ph, A, None, None, ow, ob)
    mag = v["mag"][:, 0]
    # The float64 rounding of this oracle (the weighted sum over the nodes, the closed form): the rule's quad.
    quad = (wt.size + om.shape[1] + 4) * spec.EPS["float64"] * mag
    assert_close(clause_id, got, expected, dtype=impl.dtype,
                 what="E[Q_i(psi)] = d_i + A sum_j w_ij exp(-s^2 |omega_ij|^2 / 2) cos(omega_ij^T mu + b_ij)",
                 m=m, D=om.shape[1], H=0, arg=v["arg"].max(axis=1), mag=mag, quad=quad,
                 inputs={"s": s, "A": A, "nodes": psi.shape[0]})


@clause("diffsr.critic", "elu_head")
@given(case=_critic_case(hidden=True), data=st.data())
def test_critic_elu_head(impl: Any, clause_id: str, case: dict[str, Any], data: st.DataObject) -> None:
    psi, om, ph, A, W, c, ow, ob = _critic_args(impl.dtype, case)
    fn = need(impl, clause_id)
    n, D = om.shape[0], om.shape[1]
    zero = np.zeros_like(W)
    q0 = _f64(fn(psi, om, ph, A, zero, c, ow, ob))
    const = (ow * _elu(c)).sum(axis=1) + ob                 # whatever psi: W z = 0
    assert_close(clause_id, q0, np.broadcast_to(const[:, None], q0.shape), dtype=impl.dtype,
                 what="hidden_w = 0: Q_i = w_i^T elu(c_i) + d_i for every psi",
                 **_critic_vars(psi, om, ph, A, zero, c, ow, ob))
    # hidden_w = I and hidden_b >= 2A: the pre-activation z + c >= A > 0, where elu is the identity.
    eye = np.broadcast_to(np.eye(D), (n, D, D)).copy()
    c2 = round_to(impl.dtype, 2.0 * A + data.draw(_arr((n, D), 0.0, 3.0)))
    w2 = round_to(impl.dtype, data.draw(_arr((n, D), -2.0, 2.0)))
    q_hidden = _f64(fn(psi, om, ph, A, eye, c2, w2, ob))
    q_linear = _f64(fn(psi, om, ph, A, None, None, w2, ob))
    assert_close(clause_id, q_hidden, q_linear + (w2 * c2).sum(axis=1)[:, None], dtype=impl.dtype,
                 what="hidden_w = I, hidden_b >= 2A: Q = linear-head Q + w^T c",
                 **_critic_vars(psi, om, ph, A, eye, c2, w2, ob))


@clause("diffsr.critic", "symmetries")
@given(case=_critic_case(), scale=finite(0.25, 4.0), data=st.data())
def test_critic_symmetries(impl: Any, clause_id: str, case: dict[str, Any], scale: float,
                           data: st.DataObject) -> None:
    psi, om, ph, A, W, c, ow, ob = _critic_args(impl.dtype, case)
    fn = need(impl, clause_id)
    q = _f64(fn(psi, om, ph, A, W, c, ow, ob))
    ph_2pi = round_to(impl.dtype, ph + 2 * np.pi)
    v = _critic_vars(psi, om, ph, A, W, c, ow, ob)
    v["arg"] = np.maximum(v["arg"], _critic_vars(psi, om, ph_2pi, A, W, c, ow, ob)["arg"])
    assert_close(clause_id, _f64(fn(psi, om, ph_2pi, A, W, c, ow, ob)), q, dtype=impl.dtype,
                 what="Q(b + 2 pi) = Q(b)", **v)
    assert_close(clause_id, _f64(fn(psi, -om, -ph, A, W, c, ow, ob)), q, dtype=impl.dtype,
                 what="Q(-omega, -b) = Q(omega, b)", **v)
    # Linear head, d = 0: Q is A times a function of (omega, b, w). The scaled amplitude is rounded to the
    # dtype; the test compares with the ratio of the amplitudes actually passed.
    w_lin = round_to(impl.dtype, data.draw(_arr((om.shape[0], om.shape[1]), -2.0, 2.0)))
    d0 = np.zeros(om.shape[0])
    A2 = float(round_to(impl.dtype, scale * A))
    q1 = _f64(fn(psi, om, ph, A, None, None, w_lin, d0))
    q2 = _f64(fn(psi, om, ph, A2, None, None, w_lin, d0))
    assert_close(clause_id, q2, (A2 / A) * q1, dtype=impl.dtype, what="Q(c A) = c Q(A) (linear head, d = 0)",
                 **_critic_vars(psi, om, ph, max(A, A2), None, None, w_lin, d0), inputs={"A": A, "cA": A2})


@clause("diffsr.critic", "matches_reference")
@given(case=_critic_case())
def test_critic_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    args = _critic_args(impl.dtype, case)
    assert_close(clause_id, need(impl, clause_id)(*args), ref.critic(*args), dtype=impl.dtype,
                 what="hidden head" if case["W"] is not None else "linear head", **_critic_vars(*args))


_CPSI, _COM, _CPH = np.ones((2, 3)), np.ones((2, 4, 3)), np.zeros((2, 4))
_CW, _CC, _COW, _COB = np.ones((2, 5, 4)), np.zeros((2, 5)), np.ones((2, 5)), np.zeros(2)


def _nan(shape: tuple[int, ...]) -> F:
    a = np.ones(shape)
    a.flat[-1] = np.nan
    return a


_BAD_CRITIC: list[tuple[Any, ...]] = [
    (_nan((2, 3)), _COM, _CPH, 1.0, _CW, _CC, _COW, _COB),
    (_CPSI, _nan((2, 4, 3)), _CPH, 1.0, _CW, _CC, _COW, _COB),
    (_CPSI, _COM, _nan((2, 4)), 1.0, _CW, _CC, _COW, _COB),
    (_CPSI, _COM, _CPH, float("nan"), _CW, _CC, _COW, _COB),
    (_CPSI, _COM, _CPH, 1.0, _nan((2, 5, 4)), _CC, _COW, _COB),
    (_CPSI, _COM, _CPH, 1.0, _CW, _nan((2, 5)), _COW, _COB),
    (_CPSI, _COM, _CPH, 1.0, _CW, _CC, _nan((2, 5)), _COB),
    (_CPSI, _COM, _CPH, 1.0, _CW, _CC, _COW, _nan((2,))),
    (_CPSI, _COM, _CPH, 1.0, None, None, _nan((2, 4)), _COB),      # NaN in the linear head's weights
    (_CPSI, _COM, _CPH, 0.0, _CW, _CC, _COW, _COB),                 # amplitude 0
    (_CPSI, _COM, _CPH, -1.0, _CW, _CC, _COW, _COB),
    (_CPSI, _COM, _CPH, 1.0, _CW, None, _COW, _COB),                # hidden_w without hidden_b
    (_CPSI, _COM, _CPH, 1.0, None, _CC, _COW, _COB),                # hidden_b without hidden_w
    (np.ones(3), _COM, _CPH, 1.0, _CW, _CC, _COW, _COB),            # psi one-dimensional
    (_CPSI, np.ones((2, 4, 2)), _CPH, 1.0, _CW, _CC, _COW, _COB),   # omegas of the wrong width
    (_CPSI, np.ones((4, 3)), np.zeros(4), 1.0, None, None, np.ones(4), np.zeros(1)),   # omegas two-dimensional
    (_CPSI, _COM, np.zeros((2, 3)), 1.0, _CW, _CC, _COW, _COB),     # phases of the wrong length
    (_CPSI, _COM, _CPH, 1.0, np.ones((2, 5, 3)), _CC, _COW, _COB),  # hidden_w of the wrong width
    (_CPSI, _COM, _CPH, 1.0, _CW, np.zeros((2, 4)), _COW, _COB),    # hidden_b of the wrong length
    (_CPSI, _COM, _CPH, 1.0, _CW, _CC, np.ones((2, 4)), _COB),      # out_w of the features' width, not H
    (_CPSI, _COM, _CPH, 1.0, None, None, _COW, _COB),               # linear head with out_w of width H
    (_CPSI, _COM, _CPH, 1.0, _CW, _CC, _COW, np.zeros(3)),          # out_b of the wrong length
]


@clause("diffsr.critic", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_CRITIC))))
def test_critic_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_CRITIC[i])


# ---- finite MDPs for the TD clauses --------------------------------------------------------


@st.composite
def _soft_mdp(draw: st.DrawFn) -> dict[str, Any]:
    """A finite MDP with terminal flags d(s, a, s'), a policy pi > 0, and Q^pi of the soft Bellman equation."""
    S, A = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    n = S * A
    P = _simplex(draw, (n, S))
    d = np.asarray(draw(hnp.arrays(np.bool_, (n, S))), dtype=np.float64)
    pi = _simplex(draw, (S, A), lo=0.05)
    r = draw(_arr((n,), -1.0, 1.0))
    gamma = draw(finite(0.0, 0.95))
    alpha = draw(st.sampled_from([0.0, 0.0, 0.2, 1.0]))
    log_pi = np.log(pi)
    # T[(s,a),(s',a')] = P(s'|s,a)(1 - d(s,a,s')) pi(a'|s'); h = sum T log pi(a'|s').
    T = ((P * (1 - d))[:, :, None] * pi[None, :, :]).reshape(n, n)
    h = T @ log_pi.reshape(n)
    M = np.eye(n) - gamma * T
    Q = np.linalg.solve(M, r - gamma * alpha * h)
    return {"S": S, "A": A, "P": P, "d": d, "pi": pi, "r": r, "gamma": gamma, "alpha": alpha, "Q": Q,
            "kappa": float(np.linalg.cond(M, np.inf)), "noise": draw(_arr((n,), 0.0, 5.0))}


def _enumerate(mdp: dict[str, Any]) -> dict[str, F]:
    """All (s, a, s', a') rows: index of (s, a), weight P(s'|s,a) pi(a'|s'), done, Q(s', a'), log pi(a'|s')."""
    S, A = mdp["S"], mdp["A"]
    grid = np.meshgrid(np.arange(S * A), np.arange(S), np.arange(A), indexing="ij")
    sa, sp, ap = (g.ravel() for g in grid)
    nxt = sp * A + ap
    return {"sa": sa, "w": mdp["P"][sa, sp] * mdp["pi"][sp, ap], "done": mdp["d"][sa, sp],
            "q_next": mdp["Q"][nxt], "log_pi": np.log(mdp["pi"][sp, ap]), "r": mdp["r"][sa], "nxt": nxt}


def _per_sa(values: F, rows: dict[str, F], n: int) -> F:
    """sum over the enumerated rows of weight * value, per (s, a)."""
    return np.bincount(rows["sa"], weights=rows["w"] * values, minlength=n)


# ---- diffsr.td_target -----------------------------------------------------------------


@st.composite
def _td_case(draw: st.DrawFn, nc: int | None = None) -> dict[str, Any]:
    B = draw(st.integers(1, 6))
    n = draw(st.integers(1, 3)) if nc is None else nc
    alpha = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]))
    lp = draw(_arr((B,), -5.0, 5.0)) if alpha > 0 or draw(st.booleans()) else None
    return {"r": draw(_arr((B,), -10.0, 10.0)), "done": np.asarray(draw(hnp.arrays(np.bool_, (B,))), dtype=np.float64),
            "q": draw(_arr((n, B), -50.0, 50.0)), "gamma": draw(finite(0.0, 0.99)), "alpha": alpha, "log_pi": lp}


def _td_mag(r: F, q: F, gamma: float, alpha: float, lp: F | None) -> F:
    return np.asarray(np.abs(r) + gamma * (np.abs(q).max(axis=0) + alpha * (0.0 if lp is None else np.abs(lp))))


def _rounded(impl: Any, case: dict[str, Any]) -> tuple[Any, ...]:
    r, q = round_to(impl.dtype, case["r"]), round_to(impl.dtype, case["q"])
    gamma, alpha = float(round_to(impl.dtype, case["gamma"])), float(round_to(impl.dtype, case["alpha"]))
    lp = None if case["log_pi"] is None else round_to(impl.dtype, case["log_pi"])
    return r, case["done"], q, gamma, alpha, lp


_NO_MDP: dict[str, Any] = {"n": 0, "kappa": 0.0, "qmax": 0.0}


@clause("diffsr.td_target", "min_over_critics")
@given(case=_td_case(nc=2))
def test_td_target_min_over_critics(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    r, done, q, gamma, alpha, lp = _rounded(impl, case)
    fn = need(impl, clause_id)
    y = _f64(fn(r, done, q, gamma, alpha, lp))
    mag = _td_mag(r, q, gamma, alpha, lp)
    v = {"mag": mag, **_NO_MDP}
    assert_close(clause_id, y, _f64(fn(r, done, q.min(axis=0)[None], gamma, alpha, lp)), dtype=impl.dtype,
                 what="y(q1, q2) = y(min(q1, q2))", **v, inputs={"q1": q[0], "q2": q[1]})
    assert_close(clause_id, y, _f64(fn(r, done, q[::-1].copy(), gamma, alpha, lp)), dtype=impl.dtype,
                 what="y(q1, q2) = y(q2, q1)", **v)
    for i in range(2):
        yi = _f64(fn(r, done, q[i:i + 1], gamma, alpha, lp))
        assert_close(clause_id, np.maximum(y, yi), yi, dtype=impl.dtype, what=f"y(q1, q2) <= y(q{i + 1})", **v)


@clause("diffsr.td_target", "done_masks_bootstrap")
@given(case=_td_case())
def test_td_target_done_masks_bootstrap(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    r, done, q, gamma, alpha, lp = _rounded(impl, case)
    fn = need(impl, clause_id)
    big_q = round_to(impl.dtype, 1e3 * q)  # large values: a bootstrap through done would dwarf r (not a tolerance)
    big_lp = None if lp is None else round_to(impl.dtype, 1e3 * lp)
    y = _f64(fn(r, done, big_q, gamma, alpha, big_lp))
    bootstrap = r + gamma * (big_q.min(axis=0) - alpha * (0.0 if big_lp is None else big_lp))
    expected = np.where(done == 1, r, bootstrap)
    assert_close(clause_id, y, expected, dtype=impl.dtype,
                 what="y = r where done, r + gamma (min Q - alpha log pi) elsewhere",
                 mag=_td_mag(r, big_q, gamma, alpha, big_lp), **_NO_MDP, inputs={"done": done, "gamma": gamma})


@clause("diffsr.td_target", "fixed_point")
@given(mdp=_soft_mdp())
def test_td_target_fixed_point(impl: Any, clause_id: str, mdp: dict[str, Any]) -> None:
    rows = _enumerate(mdp)
    n = mdp["S"] * mdp["A"]
    gamma, alpha = float(round_to(impl.dtype, mdp["gamma"])), mdp["alpha"]
    q1 = round_to(impl.dtype, rows["q_next"])
    q2 = round_to(impl.dtype, q1 + mdp["noise"][rows["nxt"]])       # a pessimistic pair: min is Q^pi
    r, lp = round_to(impl.dtype, rows["r"]), round_to(impl.dtype, rows["log_pi"])
    # Which critic comes first, decided by a drawn value in [0, 5] (2.5: the middle, so hypothesis draws both
    # orders): the minimum must be found in either position. Not a tolerance.
    q_next = np.stack([q2, q1]) if mdp["noise"][0] > 2.5 else np.stack([q1, q2])
    y = _f64(need(impl, clause_id)(r, rows["done"], q_next, gamma, alpha, lp if alpha > 0 else None))
    got = _per_sa(y, rows, n)
    mag = np.abs(r).max() + gamma * (np.abs(q_next).max() + alpha * np.abs(lp).max())
    assert_close(clause_id, got, mdp["Q"], dtype=impl.dtype, what="E_{s', a'}[y] = Q^pi (TD fixed point)",
                 mag=mag, n=2 * n, kappa=mdp["kappa"], qmax=float(np.abs(mdp["Q"]).max()),
                 inputs={"gamma": gamma, "alpha": alpha})


#: A soft target with a live bootstrap (alpha > 0, log pi given, done = 0 on one row, gamma > 0), values exact in
#: every dtype: always among the examples, so a wrong entropy term cannot pass for want of such a draw.
_TD_SOFT: dict[str, Any] = {"r": np.array([0.5, -1.0]), "done": np.array([0.0, 1.0]),
                            "q": np.array([[2.0, -3.0], [1.5, 4.0]]), "gamma": 0.875, "alpha": 0.5,
                            "log_pi": np.array([-1.25, 0.75])}


@clause("diffsr.td_target", "matches_reference")
@given(case=_td_case())
@example(case=_TD_SOFT)
def test_td_target_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    r, done, q, gamma, alpha, lp = _rounded(impl, case)
    assert_close(clause_id, need(impl, clause_id)(r, done, q, gamma, alpha, lp),
                 ref.td_target(r, done, q, gamma, alpha, lp), dtype=impl.dtype, mag=_td_mag(r, q, gamma, alpha, lp),
                 **_NO_MDP)


_Z2, _Q2 = np.zeros(2), np.zeros((2, 2))
_BAD_TD: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((_Z2, _Z2, _Q2, 1.0), {}),                                    # gamma = 1
    ((_Z2, _Z2, _Q2, -0.1), {}),
    ((_Z2, _Z2, _Q2, 0.9), {"alpha": -0.1}),
    ((_Z2, _Z2, _Q2, 0.9), {"alpha": 0.2}),                        # alpha > 0 without log_pi_next
    ((_Z2, np.array([0.0, 0.5]), _Q2, 0.9), {}),                   # done not in {0, 1}
    ((_Z2, _Z2, np.zeros(2), 0.9), {}),                            # q_next one-dimensional
    ((np.array([0.0, np.nan]), _Z2, _Q2, 0.9), {}),
    ((np.zeros(3), _Z2, _Q2, 0.9), {}),                            # r of the wrong length
    ((_Z2, _Z2, _Q2, 0.9), {"alpha": 0.2, "log_pi_next": np.zeros(3)}),
]


@clause("diffsr.td_target", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_TD))))
def test_td_target_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_TD[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- diffsr.critic_loss -------------------------------------------------------------------


@clause("diffsr.critic_loss", "quadratic")
@given(case=_td_case(), delta=st.data())
def test_critic_loss_quadratic(impl: Any, clause_id: str, case: dict[str, Any], delta: st.DataObject) -> None:
    y = round_to(impl.dtype, case["r"])
    nc, B = case["q"].shape
    q = round_to(impl.dtype, y + delta.draw(_arr((nc, B), -5.0, 5.0)))
    d = q - y                                                       # the delta the rounded inputs carry
    got = _f64(need(impl, clause_id)(q, y))
    assert_close(clause_id, got, (d**2).sum(axis=0), dtype=impl.dtype, what="loss(y + delta) = sum_i delta_i^2",
                 nc=nc, mag=np.abs(q).max(axis=0) + np.abs(y), **_NO_MDP)


@clause("diffsr.critic_loss", "expected_loss")
@given(mdp=_soft_mdp(), data=st.data())
def test_critic_loss_expected_loss(impl: Any, clause_id: str, mdp: dict[str, Any], data: st.DataObject) -> None:
    rows = _enumerate(mdp)
    n = mdp["S"] * mdp["A"]
    gamma, alpha = mdp["gamma"], mdp["alpha"]
    y = round_to(impl.dtype, rows["r"] + gamma * (1 - rows["done"]) * (rows["q_next"] - alpha * rows["log_pi"]))
    Q = mdp["Q"]
    delta = data.draw(_arr((2, n), -2.0, 2.0))
    q0 = round_to(impl.dtype, np.stack([Q, Q])[:, rows["sa"]])
    q1 = round_to(impl.dtype, (np.stack([Q, Q]) + delta)[:, rows["sa"]])
    fn = need(impl, clause_id)
    excess = _per_sa(_f64(fn(q1, y)), rows, n) - _per_sa(_f64(fn(q0, y)), rows, n)
    d_eff = q1 - q0                                   # per row; constant within each (s, a) up to rounding
    expected = _per_sa((d_eff**2).sum(axis=0), rows, n)
    mag = float(np.abs(q1).max() + np.abs(y).max())
    assert_close(clause_id, excess, expected, dtype=impl.dtype,
                 what="E[loss(Q^pi + delta)] - E[loss(Q^pi)] = sum_i delta_i^2", nc=2, mag=mag, n=2 * n,
                 kappa=mdp["kappa"], qmax=float(np.abs(Q).max()), inputs={"gamma": gamma, "alpha": alpha})


@clause("diffsr.critic_loss", "matches_reference")
@given(case=_td_case())
def test_critic_loss_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    q, y = round_to(impl.dtype, case["q"]), round_to(impl.dtype, case["r"])
    assert_close(clause_id, need(impl, clause_id)(q, y), ref.critic_loss(q, y), dtype=impl.dtype, nc=q.shape[0],
                 mag=np.abs(q).max(axis=0) + np.abs(y), **_NO_MDP)


_BAD_CL: list[tuple[Any, ...]] = [
    (np.zeros(2), _Z2),                      # q one-dimensional
    (_Q2, np.zeros(3)),                      # y of the wrong length
    (np.full((2, 2), np.nan), _Z2),
    (_Q2, np.array([0.0, np.inf])),
]


@clause("diffsr.critic_loss", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_CL))))
def test_critic_loss_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_CL[i])


# ---- diffsr.policy_objective ------------------------------------------------------------


@clause("diffsr.policy_objective", "min_over_critics")
@given(case=_td_case())
def test_policy_objective_min_over_critics(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    q = round_to(impl.dtype, case["q"])
    got = _f64(need(impl, clause_id)(q))
    assert_close(clause_id, got, q.min(axis=0), dtype=impl.dtype, what="J = min_i Q_i at alpha = 0",
                 mag=np.abs(q).max(axis=0), inputs={"q": q.T})


@clause("diffsr.policy_objective", "entropy_term")
@given(case=_td_case(), alpha=finite(0.01, 2.0), data=st.data())
def test_policy_objective_entropy_term(impl: Any, clause_id: str, case: dict[str, Any], alpha: float,
                                       data: st.DataObject) -> None:
    q = round_to(impl.dtype, case["q"])
    alpha = float(round_to(impl.dtype, alpha))
    lp = round_to(impl.dtype, data.draw(_arr((q.shape[1],), -5.0, 5.0)))
    fn = need(impl, clause_id)
    j0 = _f64(fn(q))
    got = _f64(fn(q, alpha, lp))
    assert_close(clause_id, got, j0 - alpha * lp, dtype=impl.dtype, what="J(alpha, log pi) = J(0) - alpha log pi",
                 mag=np.abs(q).max(axis=0) + alpha * np.abs(lp), inputs={"alpha": alpha, "log_pi": lp})


@clause("diffsr.policy_objective", "matches_reference")
@given(case=_td_case())
def test_policy_objective_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    q = round_to(impl.dtype, case["q"])
    alpha = float(round_to(impl.dtype, case["alpha"]))
    lp = None if case["log_pi"] is None else round_to(impl.dtype, case["log_pi"])
    mag = np.abs(q).max(axis=0) + alpha * (0.0 if lp is None else np.abs(lp))
    assert_close(clause_id, need(impl, clause_id)(q, alpha, lp), ref.policy_objective(q, alpha, lp),
                 dtype=impl.dtype, mag=mag)


_BAD_PO: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((_Q2,), {"alpha": -0.1, "log_pi": _Z2}),
    ((_Q2,), {"alpha": 0.2}),                                  # alpha > 0 without log_pi
    ((np.zeros(2),), {}),                                      # q one-dimensional
    ((np.full((2, 2), np.nan),), {}),
    ((_Q2,), {"alpha": 0.2, "log_pi": np.zeros(3)}),
]


@clause("diffsr.policy_objective", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_PO))))
def test_policy_objective_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_PO[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)
