"""Conformance: spec family ``elbo``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats as sps

from diffrl_ref import spec
from diffrl_ref.reference import elbo as ref
from diffrl_ref.suite import stats
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.stats import ALPHA
from diffrl_ref.suite.strategies import finite

F = np.ndarray
LOG_2PI = math.log(2 * math.pi)

#: Monte Carlo sample size of the *_monte_carlo properties. The bound of _mc_check is derived from n
#: at a fixed level, so n sets only the power: at n = 20000 (B <= 3) the half-width is at most
#: 0.037 |lin| + 0.058 sqrt(2) |lam|_2 + 0.0017 max|lam|, under 0.07 standard deviations of the integrand
#: (sd^2 = |lin|^2 + 2 |lam|_2^2), far below the bias of the planted bugs, at a few ms per row.
N_SAMPLES = 20000

TERMS = ("log_px", "elbo", "reconstruction", "prior_kl", "posterior_kl")


def _atol(clause_id: str, dtype: str, **variables: Any) -> F:
    """The clause's tolerance rule, for properties that are inequalities rather than equalities."""
    return spec.clause(clause_id).tolerance.atol(dtype, **variables)


# ---- elbo.identity --------------------------------------------------------------------

Model = dict[str, Any]


@st.composite
def _linear_gaussian(draw: st.DrawFn) -> Model:
    """A linear-Gaussian model, observations and a variational posterior (q unrelated to the truth)."""
    B = draw(st.integers(1, 3))
    d = draw(st.integers(1, 4))
    m = draw(st.integers(1, 3))
    A = draw(hnp.arrays(np.float64, (B, m, m), elements=finite(-1, 1)))
    jitter = draw(finite(0.05, 2.0))
    cov = A @ np.swapaxes(A, -1, -2) + jitter * np.eye(m)
    return {
        "x": draw(hnp.arrays(np.float64, (B, d), elements=finite(-5, 5))),
        "W": draw(hnp.arrays(np.float64, (d, m), elements=finite(-2, 2))),
        "b": draw(hnp.arrays(np.float64, (d,), elements=finite(-3, 3))),
        "s2": math.exp(draw(finite(math.log(0.05), math.log(5.0)))),
        "q_mean": draw(hnp.arrays(np.float64, (B, m), elements=finite(-3, 3))),
        "q_cov": 0.5 * (cov + np.swapaxes(cov, -1, -2)),  # exactly symmetric
    }


def _rounded(dtype: str, model: Model) -> Model:
    out: Model = {k: round_to(dtype, v) for k, v in model.items()}
    out["s2"] = float(out["s2"])
    return out


def _posterior(model: Model) -> tuple[F, F]:
    """Exact p(z | x) = N(mean, cov) of the linear-Gaussian model, computed independently here (float64)."""
    W, s2, x, b = model["W"], model["s2"], model["x"], model["b"]
    P = np.eye(W.shape[1]) + W.T @ W / s2
    cov = np.linalg.inv(P)
    mean = np.linalg.solve(P, W.T @ (x - b).T / s2).T
    return mean, 0.5 * (cov + cov.T)


def _scale(model: Model) -> dict[str, Any]:
    """The variables of the rule: d, m, kappa and mag (defined in the clause's derivation)."""
    x, W, b, s2, mu, S = (model[k] for k in ("x", "W", "b", "s2", "q_mean", "q_cov"))
    d, m = W.shape
    w2 = float(np.linalg.norm(W, 2)) ** 2
    A = 1 + w2 / s2
    ev = np.linalg.eigvalsh(S)
    mu_post, _ = _posterior(model)
    mag = (d * (LOG_2PI + abs(math.log(s2))) + m * (1 + math.log(A)) + np.abs(np.sum(np.log(ev), axis=-1))
           + A * (np.trace(S, axis1=-2, axis2=-1) + np.sum(mu**2, -1) + np.sum(mu_post**2, -1))
           + (np.linalg.norm(x - b, axis=-1) + math.sqrt(w2) * np.linalg.norm(mu, axis=-1)) ** 2 / s2)
    return {"d": int(d), "m": int(m), "kappa": np.maximum(ev[:, -1] / ev[:, 0], A), "mag": mag}


def _terms(impl: Any, clause_id: str, model: Model) -> dict[str, F]:
    out = need(impl, clause_id)(model["x"], model["W"], model["b"], model["s2"], model["q_mean"], model["q_cov"])
    assert_that(len(out) == 5, clause_id, f"returned {len(out)} values, expected 5: {', '.join(TERMS)}")
    B = model["x"].shape[0]
    terms = {k: np.asarray(v, dtype=np.float64) for k, v in zip(TERMS, out, strict=True)}
    for k, v in terms.items():
        assert_that(v.shape == (B,), clause_id, f"{k} has shape {v.shape}, expected ({B},)")
    return terms


@clause("elbo.identity", "evidence_identity")
@given(model=_linear_gaussian())
def test_identity_evidence(impl: Any, clause_id: str, model: Model) -> None:
    model = _rounded(impl.dtype, model)
    t = _terms(impl, clause_id, model)
    assert_close(clause_id, t["log_px"], t["elbo"] + t["posterior_kl"], dtype=impl.dtype,
                 what="log p(x) = ELBO + KL(q || p(z|x))", **_scale(model),
                 inputs={"elbo": t["elbo"], "posterior_kl": t["posterior_kl"]})


@clause("elbo.identity", "decomposition")
@given(model=_linear_gaussian())
def test_identity_decomposition(impl: Any, clause_id: str, model: Model) -> None:
    model = _rounded(impl.dtype, model)
    t = _terms(impl, clause_id, model)
    assert_close(clause_id, t["elbo"], t["reconstruction"] - t["prior_kl"], dtype=impl.dtype,
                 what="ELBO = E_q[log p(x|z)] - KL(q || p(z))", **_scale(model),
                 inputs={"reconstruction": t["reconstruction"], "prior_kl": t["prior_kl"]})


@clause("elbo.identity", "lower_bound")
@given(model=_linear_gaussian())
def test_identity_lower_bound(impl: Any, clause_id: str, model: Model) -> None:
    model = _rounded(impl.dtype, model)
    t = _terms(impl, clause_id, model)
    atol = _atol(clause_id, impl.dtype, **_scale(model))
    assert_that(bool(np.all(t["elbo"] <= t["log_px"] + atol)), clause_id,
                f"ELBO above log p(x) beyond the rule: elbo - log_px = {t['elbo'] - t['log_px']}, allowed {atol}")
    assert_that(bool(np.all(t["posterior_kl"] >= -atol)), clause_id,
                f"KL(q || p(z|x)) negative beyond the rule: {t['posterior_kl']}, allowed {-atol}")
    # q = the exact posterior: the bound is tight.
    mean, cov = _posterior(model)
    B, m = model["q_mean"].shape
    exact = _rounded(impl.dtype, {**model, "q_mean": mean, "q_cov": np.broadcast_to(cov, (B, m, m)).copy()})
    te = _terms(impl, clause_id, exact)
    scale = _scale(exact)
    assert_close(clause_id, te["elbo"], te["log_px"], dtype=impl.dtype, what="ELBO = log p(x) at q = p(z|x)",
                 **scale)
    assert_close(clause_id, te["posterior_kl"], np.zeros(B), dtype=impl.dtype, what="KL(p(z|x) || p(z|x)) = 0",
                 **scale)


def _mc_check(clause_id: str, samples: F, expected: float, lin: F, H: F, atol: float, level: float,
              what: str) -> None:
    """The mean of the samples c + lin . eps_k + eps_k^T H eps_k (eps_k ~ N(0, I_m) i.i.d.) is its
    expectation ``expected`` (c + tr H), within a non-asymptotic bound at ``level`` plus the rule.

    The mean's error is lin . mean(eps) + (1/n) sum_k (eps_k^T H eps_k - tr H). The first term is
    exactly N(0, |lin|^2 / n): a two-sided z bound at level / 2. The second is, in the eigenbasis of
    H (eigenvalues lam), a weighted sum of n m centred chi-square(1) variables; Laurent and Massart
    (Ann. Statist. 2000, Lemma 1), applied to the positive and to the negative eigenvalues, bound
    its magnitude by 2 (|lam+|_2 + |lam-|_2) sqrt(x / n) + 2 max|lam| x / n except with probability
    4 e^-x; x = log(8 / level) makes that level / 2. No CLT approximation: the level is exact as a bound.
    """
    stats.spend(level)
    n = samples.size
    lam = np.linalg.eigvalsh(0.5 * (H + H.T))
    x = math.log(8 / level)
    half_lin = float(sps.norm.isf(level / 4)) * float(np.linalg.norm(lin)) / math.sqrt(n)
    half_quad = (2 * float(np.linalg.norm(lam[lam > 0]) + np.linalg.norm(lam[lam < 0])) * math.sqrt(x / n)
                 + 2 * float(np.max(np.abs(lam))) * x / n)
    half = half_lin + half_quad
    xbar = math.fsum(samples) / n
    assert_that(abs(xbar - expected) <= half + atol, clause_id,
                f"[{what}] Monte Carlo mean {xbar:.10g}, implementation {expected:.10g}: |difference| "
                f"{abs(xbar - expected):.3g} > {half:.3g} (statistical, n = {n}, level {level:.1e}) "
                f"+ {atol:.3g} (rule)")


def _draws(model: Model, i: int) -> tuple[F, F, F, F, F]:
    """Fixed-seed z = mu_q + L eps for row i, with the pieces of the integrand's quadratic form."""
    mu, S = model["q_mean"][i], model["q_cov"][i]
    W, b, x = model["W"], model["b"], model["x"][i]
    e = np.random.default_rng(2014).standard_normal((N_SAMPLES, mu.size))
    L = np.linalg.cholesky(S)
    z = mu + e @ L.T
    M = W @ L  # z enters log p(x|z) through W z = W mu + M eps
    r = x - b - W @ mu
    return z, e, L, M, r


@clause("elbo.identity", "reconstruction_monte_carlo")
@given(model=_linear_gaussian())
def test_identity_reconstruction_mc(impl: Any, clause_id: str, model: Model) -> None:
    model = _rounded(impl.dtype, model)
    t = _terms(impl, clause_id, model)
    atol = _atol(clause_id, impl.dtype, **_scale(model))
    W, b, s2 = model["W"], model["b"], model["s2"]
    B, d = model["x"].shape
    for i in range(B):
        z, _, _, M, r = _draws(model, i)
        log_lik = -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * np.sum((model["x"][i] - z @ W.T - b) ** 2, -1) / s2
        # log p(x|z) = const + (M^T r / s2) . eps - eps^T (M^T M / 2 s2) eps. Level ALPHA / B per row:
        # Bonferroni over the B rows, ALPHA per example.
        lin, H = M.T @ r / s2, -M.T @ M / (2 * s2)
        _mc_check(clause_id, log_lik, float(t["reconstruction"][i]), lin, H, float(atol[i]), ALPHA / B,
                  f"E_q[log p(x|z)], row {i}")


@clause("elbo.identity", "elbo_monte_carlo")
@given(model=_linear_gaussian())
def test_identity_elbo_mc(impl: Any, clause_id: str, model: Model) -> None:
    model = _rounded(impl.dtype, model)
    t = _terms(impl, clause_id, model)
    atol = _atol(clause_id, impl.dtype, **_scale(model))
    W, b, s2 = model["W"], model["b"], model["s2"]
    B, d = model["x"].shape
    m = W.shape[1]
    for i in range(B):
        z, _, L, M, r = _draws(model, i)
        mu, S = model["q_mean"][i], model["q_cov"][i]
        log_lik = -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * np.sum((model["x"][i] - z @ W.T - b) ** 2, -1) / s2
        log_prior = -0.5 * m * LOG_2PI - 0.5 * np.sum(z**2, -1)
        dz = z - mu
        log_q = (-0.5 * m * LOG_2PI - 0.5 * np.linalg.slogdet(S)[1]
                 - 0.5 * np.einsum("ni,ij,nj->n", dz, np.linalg.inv(S), dz))
        # log p(x, z) - log q(z|x) is quadratic in eps (log q's quadratic form is |eps|^2): linear
        # part lin, quadratic part H.
        lin = M.T @ r / s2 - L.T @ mu
        H = -M.T @ M / (2 * s2) - L.T @ L / 2 + np.eye(m) / 2
        _mc_check(clause_id, log_lik + log_prior - log_q, float(t["elbo"][i]), lin, H, float(atol[i]), ALPHA / B,
                  f"E_q[log p(x, z) - log q(z|x)], row {i}")  # Bonferroni over the B rows, as above


@clause("elbo.identity", "matches_reference")
@given(model=_linear_gaussian())
def test_identity_matches_reference(impl: Any, clause_id: str, model: Model) -> None:
    model = _rounded(impl.dtype, model)
    t = _terms(impl, clause_id, model)
    expected = ref.identity(model["x"], model["W"], model["b"], model["s2"], model["q_mean"], model["q_cov"])
    scale = _scale(model)
    for k, v in zip(TERMS, expected, strict=True):
        assert_close(clause_id, t[k], v, dtype=impl.dtype, what=k, **scale)


def _identity_bad() -> list[tuple[Any, ...]]:
    x, W, b, mu = np.zeros((2, 2)), np.eye(2), np.zeros(2), np.zeros((2, 2))
    cov = np.stack([np.eye(2), np.eye(2)])

    def with_cov(c: list[list[float]]) -> F:
        out = cov.copy()
        out[1] = c
        return out

    x_nan = x.copy()
    x_nan[0, 1] = np.nan
    return [
        (x, W, b, 1.0, mu, with_cov([[1.0, 0.0], [0.0, -1.0]])),  # indefinite
        (x, W, b, 1.0, mu, with_cov([[0.0, 0.0], [0.0, 0.0]])),  # singular
        (x, W, b, 1.0, mu, with_cov([[1.0, 0.5], [0.0, 1.0]])),  # not symmetric
        (x, W, b, 1.0, mu, with_cov([[1.0, 2.0], [2.0, 1.0]])),  # symmetric, not positive definite
        (x, W, b, 0.0, mu, cov),
        (x, W, b, -1.0, mu, cov),
        (x, W, b, np.nan, mu, cov),
        (x_nan, W, b, 1.0, mu, cov),
        (x, np.eye(3)[:, :2], b, 1.0, mu, cov),  # W has d = 3 rows, x has d = 2
        (x, W, np.zeros(3), 1.0, mu, cov),
        (x, W, b, 1.0, np.zeros((2, 3)), cov),
        (x, W, b, 1.0, mu, np.eye(2)),  # covariance not batched
    ]


@clause("elbo.identity", "rejects_out_of_domain")
@given(i=st.integers(0, len(_identity_bad()) - 1))
def test_identity_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_identity_bad()[i])


# ---- elbo.max_likelihood --------------------------------------------------------------

#: Probabilities are multiples of 2^-K_MAX at most: exact in every dtype down to bfloat16, rows sum to 1 exactly.
K_MAX = 8


@st.composite
def _dyadic(draw: st.DrawFn, n: int, k: int, positive: bool) -> F:
    """A probability vector of n entries c_i / 2^k with integer c_i (all c_i >= 1 if ``positive``)."""
    total = 2**k - (n if positive else 0)
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=n - 1, max_size=n - 1)))
    counts = np.diff(np.array([0, *cuts, total])) + (1 if positive else 0)
    return np.asarray(counts / 2**k, dtype=np.float64)


@st.composite
def _prob_rows(draw: st.DrawFn, B: int, n: int, positive: bool) -> F:
    k = draw(st.integers(3, K_MAX))
    return np.stack([draw(_dyadic(n, k, positive)) for _ in range(B)])


@st.composite
def _ml_pair(draw: st.DrawFn, positive_theta: bool = False, min_n: int = 2) -> tuple[F, F]:
    B = draw(st.integers(1, 4))
    n = draw(st.integers(min_n, 6))
    return draw(_prob_rows(B, n, False)), draw(_prob_rows(B, n, positive_theta))


def _mag(p: F, q: F) -> F:
    """sum over p_i > 0 of p_i (1 + |log p_i| + |log q_i|), per row (+inf where q_i = 0 < p_i)."""
    used = p > 0
    with np.errstate(divide="ignore"):  # log 0 = -inf where q_i = 0 < p_i
        log_p, log_q = np.log(np.where(used, p, 1.0)), np.log(np.where(used, q, 1.0))
    terms = np.where(used, p * (1 + np.abs(log_p) + np.abs(log_q)), 0.0)
    return np.asarray(np.sum(terms, axis=-1), dtype=np.float64)


def _ml(impl: Any, clause_id: str, p: F, q: F) -> tuple[F, F, F]:
    out = need(impl, clause_id)(p, q)
    assert_that(len(out) == 3, clause_id, f"returned {len(out)} values, expected 3: kl, cross_entropy, entropy")
    kl, ce, h = (np.asarray(v, dtype=np.float64) for v in out)
    for name, v in (("kl", kl), ("cross_entropy", ce), ("entropy", h)):
        assert_that(v.shape == p.shape[:1], clause_id, f"{name} has shape {v.shape}, expected {p.shape[:1]}")
        assert_that(not bool(np.any(np.isnan(v))), clause_id, f"{name} is NaN: {v} for p_data={p}, p_theta={q}")
    return kl, ce, h


@clause("elbo.max_likelihood", "kl_is_ce_minus_entropy")
@given(pq=_ml_pair())
def test_ml_kl_is_ce_minus_entropy(impl: Any, clause_id: str, pq: tuple[F, F]) -> None:
    p, q = round_to(impl.dtype, pq[0]), round_to(impl.dtype, pq[1])  # dyadic: exact in every dtype
    kl, ce, h = _ml(impl, clause_id, p, q)
    fin = np.isfinite(kl)
    assert_that(bool(np.all(fin == np.isfinite(ce))), clause_id,
                f"kl and cross_entropy must be infinite on the same rows: kl={kl}, cross_entropy={ce}")
    assert_that(bool(np.all(np.isfinite(h))), clause_id, f"entropy not finite: {h}")
    assert_close(clause_id, kl[fin], ce[fin] - h[fin], dtype=impl.dtype, what="KL = CE - H", n=p.shape[1],
                 mag=_mag(p[fin], q[fin]), inputs={"p_data": p[fin], "p_theta": q[fin]})


@clause("elbo.max_likelihood", "gibbs_pinsker")
@given(pq=_ml_pair())
def test_ml_gibbs_pinsker(impl: Any, clause_id: str, pq: tuple[F, F]) -> None:
    p, q = round_to(impl.dtype, pq[0]), round_to(impl.dtype, pq[1])
    n = p.shape[1]
    kl, _, _ = _ml(impl, clause_id, p, q)
    fin = np.isfinite(kl)
    pinsker = 0.5 * np.sum(np.abs(p - q), axis=-1) ** 2
    atol = np.where(fin, _atol(clause_id, impl.dtype, n=n, mag=np.where(fin, _mag(p, q), 0.0)), 0.0)
    bad = ~(kl >= pinsker - atol)
    assert_that(not bool(np.any(bad)), clause_id,
                f"KL below Pinsker's bound (1/2)||p - q||_1^2 beyond the rule: KL = {kl[bad]}, bound = {pinsker[bad]}, "
                f"p_data = {p[bad]}, p_theta = {q[bad]}")
    kl_pp, _, _ = _ml(impl, clause_id, p, p)
    assert_close(clause_id, kl_pp, np.zeros(p.shape[0]), dtype=impl.dtype, what="KL(p || p) = 0", n=n,
                 mag=_mag(p, p), inputs={"p_data": p})


@st.composite
def _ml_family(draw: st.DrawFn) -> tuple[F, F]:
    """One data distribution and J model distributions over the same n categories."""
    n = draw(st.integers(2, 6))
    J = draw(st.integers(2, 6))
    p = draw(_prob_rows(1, n, False))
    models = np.concatenate([draw(_prob_rows(1, n, draw(st.booleans()))) for _ in range(J)])
    return p[0], models


@clause("elbo.max_likelihood", "argmin_is_max_likelihood")
@given(pm=_ml_family())
# Forward KL prefers [0.5, 0.5], reverse (mode-seeking) KL prefers [0.9375, 0.0625].
@example(pm=(np.array([0.75, 0.25]), np.array([[0.5, 0.5], [0.9375, 0.0625]])))
def test_ml_argmin_is_max_likelihood(impl: Any, clause_id: str, pm: tuple[F, F]) -> None:
    p, models = pm
    J, n = models.shape
    kl, _, _ = _ml(impl, clause_id, np.tile(p, (J, 1)), models)
    # A dataset whose empirical distribution is p exactly: count_i = p_i N copies of category i.
    N = 2**K_MAX
    data = np.repeat(np.arange(n), (p * N).astype(np.int64))
    with np.errstate(divide="ignore"):
        log_q = np.log(models[:, data])
    loglik = np.array([math.fsum(row) / N if np.all(np.isfinite(row)) else -math.inf for row in log_q])
    assert_that(bool(np.all(np.isposinf(kl) == np.isneginf(loglik))), clause_id,
                f"KL must be +inf exactly for the models with log-likelihood -inf: KL {kl}, mean log-lik {loglik}")
    fin = np.flatnonzero(np.isfinite(loglik))
    if fin.size == 0:
        return
    best = int(fin[np.argmax(loglik[fin])])
    mags = _mag(np.tile(p, (J, 1)), models)
    assert_close(clause_id, kl[fin] - kl[best], loglik[best] - loglik[fin], dtype=impl.dtype,
                 what="KL(p || q_j) - KL(p || q_best) = L_best - L_j", n=n, mag=mags[fin] + mags[best],
                 inputs={"model j": fin, "L_j": loglik[fin], "KL_j": kl[fin]})
    j_min = int(np.argmin(kl))
    slack = _atol(clause_id, impl.dtype, n=n, mag=mags[j_min] + mags[best])
    assert_that(bool(loglik[j_min] >= loglik[best] - slack), clause_id,
                f"argmin KL = model {j_min} has mean log-likelihood {loglik[j_min]}, but model {best} "
                f"has {loglik[best]} (KL {kl})")


@st.composite
def _ml_support(draw: st.DrawFn) -> tuple[F, F, int]:
    B = draw(st.integers(1, 4))
    n = draw(st.integers(2, 5))
    p, q = draw(_prob_rows(B, n, True)), draw(_prob_rows(B, n, True))
    return p, q, draw(st.integers(0, n))


@clause("elbo.max_likelihood", "support")
@given(args=_ml_support())
def test_ml_support(impl: Any, clause_id: str, args: tuple[F, F, int]) -> None:
    p, q, j = args
    n = p.shape[1]
    kl, ce, h = _ml(impl, clause_id, p, q)
    # A category both distributions give probability 0 changes nothing (0 log 0 = 0).
    p0, q0 = np.insert(p, j, 0.0, axis=1), np.insert(q, j, 0.0, axis=1)
    kl0, ce0, h0 = _ml(impl, clause_id, p0, q0)
    mag = _mag(p, q)
    for name, got, want in (("kl", kl0, kl), ("cross_entropy", ce0, ce), ("entropy", h0, h)):
        assert_close(clause_id, got, want, dtype=impl.dtype, what=f"{name} with an extra zero-probability category",
                     n=n + 1, mag=mag, inputs={"p_data": p, "zero at": j})
    # p_theta misses a category p_data uses: KL and cross-entropy are +inf, entropy is unaffected.
    q_miss = q.copy()
    q_miss[:, 1] += q_miss[:, 0]
    q_miss[:, 0] = 0.0
    kl_m, ce_m, h_m = _ml(impl, clause_id, p, q_miss)
    assert_that(bool(np.all(np.isposinf(kl_m)) and np.all(np.isposinf(ce_m))), clause_id,
                f"p_theta = 0 where p_data > 0 must give KL = CE = +inf, got KL {kl_m}, CE {ce_m}")
    assert_close(clause_id, h_m, h, dtype=impl.dtype, what="entropy does not depend on p_theta", n=n, mag=mag)


@clause("elbo.max_likelihood", "matches_reference")
@given(pq=_ml_pair())
def test_ml_matches_reference(impl: Any, clause_id: str, pq: tuple[F, F]) -> None:
    p, q = round_to(impl.dtype, pq[0]), round_to(impl.dtype, pq[1])
    got = _ml(impl, clause_id, p, q)
    expected = ref.max_likelihood(p, q)
    fin = np.isfinite(expected.kl)
    for name, g, e in zip(("kl", "cross_entropy", "entropy"), got, expected, strict=True):
        assert_that(bool(np.all(np.isposinf(g) == np.isposinf(e))), clause_id,
                    f"{name}: infinite entries differ, got {g}, expected {e}")
        if name == "entropy":
            assert_close(clause_id, g, e, dtype=impl.dtype, what=name, n=p.shape[1], mag=_mag(p, p),
                         inputs={"p_data": p})
        else:
            assert_close(clause_id, g[fin], e[fin], dtype=impl.dtype, what=name, n=p.shape[1],
                         mag=_mag(p[fin], q[fin]), inputs={"p_data": p[fin], "p_theta": q[fin]})


_ML_BAD: list[tuple[list[list[float]], list[list[float]]]] = [
    ([[-0.25, 1.25]], [[0.5, 0.5]]),  # negative probability
    ([[0.5, 0.5]], [[1.5, -0.5]]),
    ([[np.nan, 1.0]], [[0.5, 0.5]]),
    ([[0.5, 0.5]], [[np.inf, 0.5]]),
    ([[3.0, 1.0]], [[0.5, 0.5]]),  # unnormalised counts
    ([[0.5, 0.5]], [[0.25, 0.25]]),  # row sums to 1/2
    ([[0.5, 0.5 + 1e-4]], [[0.5, 0.5]]),  # off by 1e-4, > 500 x the domain's (n + 1) 2^-24: not rounding
    ([[0.5, 0.5], [0.25, 0.75]], [[0.5, 0.5]]),  # batch mismatch
    ([[0.5, 0.5]], [[0.25, 0.25, 0.5]]),  # category mismatch
]


@clause("elbo.max_likelihood", "rejects_out_of_domain")
@given(i=st.integers(0, len(_ML_BAD) + 1))
def test_ml_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    f = need(impl, clause_id)
    if i == len(_ML_BAD):
        assert_raises_domain(f, clause_id, np.array([0.5, 0.5]), np.array([0.5, 0.5]))  # not a batch
    elif i == len(_ML_BAD) + 1:
        assert_raises_domain(f, clause_id, np.zeros((1, 0)), np.zeros((1, 0)))  # no categories
    else:
        p, q = _ML_BAD[i]
        assert_raises_domain(f, clause_id, np.array(p), np.array(q))
