"""Planted bugs for the ``elbo`` family."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from diffrl_ref.reference import elbo as ref

from . import Mutant

F = NDArray[np.float64]


# ---- elbo.identity ------------------------------------------------------------------------


def _pieces(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, s2: float, q_mean: ArrayLike, q_cov: ArrayLike
) -> tuple[ref.ElboTerms, F, F, F, F, float]:
    """The reference terms plus the float64 inputs the mutants rework."""
    t = ref.identity(x, W, b, s2, q_mean, q_cov)
    as64 = [np.asarray(a, dtype=np.float64) for a in (x, W, q_mean, q_cov)]
    return t, as64[0], as64[1], as64[2], as64[3], float(s2)


def _elbo_kl_sign(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, s2: float, q_mean: ArrayLike, q_cov: ArrayLike
) -> ref.ElboTerms:
    # ELBO = reconstruction + KL(q || p(z)): the prior-matching term added instead of subtracted.
    t = ref.identity(x, W, b, s2, q_mean, q_cov)
    return t._replace(elbo=t.reconstruction + t.prior_kl)


def _recon_plug_in_mean(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, s2: float, q_mean: ArrayLike, q_cov: ArrayLike
) -> ref.ElboTerms:
    # E_q[log p(x|z)] evaluated at z = E_q[z]: the tr(W q_cov W^T) / (2 s2) term is lost.
    t, _, W_, _, cov, noise = _pieces(x, W, b, s2, q_mean, q_cov)
    recon = t.reconstruction + np.einsum("ij,bji->b", W_.T @ W_, cov) / (2 * noise)
    return t._replace(reconstruction=recon, elbo=recon - t.prior_kl)


def _noise_std_as_variance(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, s2: float, q_mean: ArrayLike, q_cov: ArrayLike
) -> ref.ElboTerms:
    # s2 read as the noise standard deviation throughout (variance s2^2): consistent, wrong model.
    return ref.identity(x, W, b, float(s2) ** 2, q_mean, q_cov)


def _posterior_kl_reversed(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, s2: float, q_mean: ArrayLike, q_cov: ArrayLike
) -> ref.ElboTerms:
    # KL(p(z|x) || q) returned for KL(q || p(z|x)).
    t, x_, W_, mu_q, cov, noise = _pieces(x, W, b, s2, q_mean, q_cov)
    m = W_.shape[1]
    P = np.eye(m) + W_.T @ W_ / noise
    cov_post = np.linalg.inv(P)
    mu_post = np.linalg.solve(P, W_.T @ (x_ - np.asarray(b, dtype=np.float64)).T / noise).T
    q_prec = np.linalg.inv(cov)
    delta = mu_post - mu_q
    kl = 0.5 * (np.einsum("bij,ji->b", q_prec, cov_post) + np.einsum("bi,bij,bj->b", delta, q_prec, delta) - m
                + np.linalg.slogdet(cov)[1] - np.linalg.slogdet(cov_post)[1])
    return t._replace(posterior_kl=kl)


def _prior_kl_half_logdet(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, s2: float, q_mean: ArrayLike, q_cov: ArrayLike
) -> ref.ElboTerms:
    # log-std where log-variance is meant: -(1/2) log det in place of -log det in KL(q || p(z)).
    t, _, _, _, cov, _ = _pieces(x, W, b, s2, q_mean, q_cov)
    prior_kl = t.prior_kl + 0.25 * np.linalg.slogdet(cov)[1]
    return t._replace(prior_kl=prior_kl, elbo=t.reconstruction - prior_kl)


def _identity_float32(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, s2: float, q_mean: ArrayLike, q_cov: ArrayLike
) -> ref.ElboTerms:
    # Every input rounded to float32 first (a float32 pipeline reported as float64).
    def r(a: ArrayLike) -> F:
        return np.asarray(a, dtype=np.float32).astype(np.float64)

    cov = r(q_cov)
    return ref.identity(r(x), r(W), r(b), float(np.float32(s2)), r(q_mean), 0.5 * (cov + np.swapaxes(cov, -1, -2)))


def _identity_unchecked(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, s2: float, q_mean: ArrayLike, q_cov: ArrayLike
) -> ref.ElboTerms:
    # No SPD check (slogdet's sign ignored, plain inverses) and no check on s2: NaN or garbage out.
    x_, W_, b_, mu, cov = (np.asarray(a, dtype=np.float64) for a in (x, W, b, q_mean, q_cov))
    d, m = W_.shape
    with np.errstate(all="ignore"):
        noise = float(s2)
        C = W_ @ W_.T + noise * np.eye(d)
        r0 = x_ - b_
        log_px = -0.5 * (d * ref.LOG_2PI + np.linalg.slogdet(C)[1]
                         + np.einsum("bi,ij,bj->b", r0, np.linalg.pinv(C), r0))
        resid = x_ - mu @ W_.T - b_
        recon = -0.5 * (d * np.log(2 * np.pi * noise)
                        + (np.sum(resid**2, -1) + np.einsum("ij,bji->b", W_.T @ W_, cov)) / noise)
        logdet_q = np.linalg.slogdet(cov)[1]
        prior_kl = 0.5 * (np.trace(cov, axis1=-2, axis2=-1) + np.sum(mu**2, -1) - m - logdet_q)
        elbo = recon - prior_kl
    return ref.ElboTerms(log_px, elbo, recon, prior_kl, log_px - elbo)


# ---- elbo.max_likelihood --------------------------------------------------------------------


def _ml_reverse_kl(p_data: ArrayLike, p_theta: ArrayLike) -> ref.LikelihoodTerms:
    # Mode-seeking KL(p_theta || p_data) returned for KL(p_data || p_theta).
    t = ref.max_likelihood(p_data, p_theta)
    return t._replace(kl=np.sum(special.rel_entr(np.asarray(p_theta), np.asarray(p_data)), axis=-1))


def _ml_log_ratio_flipped(p_data: ArrayLike, p_theta: ArrayLike) -> ref.LikelihoodTerms:
    # sum p log(q / p): the KL's sign flipped.
    t = ref.max_likelihood(p_data, p_theta)
    return t._replace(kl=-t.kl)


def _ml_naive_zero(p_data: ArrayLike, p_theta: ArrayLike) -> ref.LikelihoodTerms:
    # p * log(p / q) and p * log(p) evaluated literally: 0 * log 0 = NaN at empty categories.
    ref.max_likelihood(p_data, p_theta)
    p, q = np.asarray(p_data, dtype=np.float64), np.asarray(p_theta, dtype=np.float64)
    with np.errstate(all="ignore"):
        kl = np.sum(p * np.log(p / q), axis=-1)
        ce = -np.sum(p * np.log(q), axis=-1)
        h = -np.sum(p * np.log(p), axis=-1)
    return ref.LikelihoodTerms(kl, ce, h)


def _ml_clamped_log(p_data: ArrayLike, p_theta: ArrayLike) -> ref.LikelihoodTerms:
    # log(q + 1e-8) "for stability": finite KL where it must be +inf, and biased everywhere.
    ref.max_likelihood(p_data, p_theta)
    p, q = np.asarray(p_data, dtype=np.float64), np.asarray(p_theta, dtype=np.float64)
    ce = -np.sum(special.xlogy(p, q + 1e-8), axis=-1)
    h = -np.sum(special.xlogy(p, p), axis=-1)
    return ref.LikelihoodTerms(ce - h, ce, h)


def _ml_bits(p_data: ArrayLike, p_theta: ArrayLike) -> ref.LikelihoodTerms:
    # log2 where the natural log is meant: every term in bits instead of nats.
    t = ref.max_likelihood(p_data, p_theta)
    return ref.LikelihoodTerms(*(v / np.log(2) for v in t))


def _ml_entropy_sign(p_data: ArrayLike, p_theta: ArrayLike) -> ref.LikelihoodTerms:
    # Entropy returned as sum p log p (the negative entropy).
    t = ref.max_likelihood(p_data, p_theta)
    return t._replace(entropy=-t.entropy)


def _ml_unchecked(p_data: ArrayLike, p_theta: ArrayLike) -> ref.LikelihoodTerms:
    p, q = np.asarray(p_data, dtype=np.float64), np.asarray(p_theta, dtype=np.float64)
    with np.errstate(all="ignore"):
        return ref.LikelihoodTerms(np.sum(special.rel_entr(p, q), axis=-1), -np.sum(special.xlogy(p, q), axis=-1),
                                   -np.sum(special.xlogy(p, p), axis=-1))


MUTANTS = [
    Mutant("elbo_kl_sign", "elbo.identity",
           ("evidence_identity", "decomposition", "lower_bound", "elbo_monte_carlo", "matches_reference"),
           "ELBO = reconstruction + KL(q || p(z)) (sign of the prior-matching term)",
           {"elbo.identity": _elbo_kl_sign}),
    Mutant("elbo_reconstruction_plug_in_mean", "elbo.identity",
           ("evidence_identity", "lower_bound", "reconstruction_monte_carlo", "elbo_monte_carlo",
            "matches_reference"),
           "E_q[log p(x|z)] evaluated at z = q_mean (tr(W q_cov W^T) / 2 s2 term dropped)",
           {"elbo.identity": _recon_plug_in_mean}),
    Mutant("elbo_noise_std_as_variance", "elbo.identity",
           ("reconstruction_monte_carlo", "elbo_monte_carlo", "matches_reference"),
           "s2 read as the noise standard deviation throughout (internally consistent)",
           {"elbo.identity": _noise_std_as_variance}),
    Mutant("elbo_posterior_kl_reversed", "elbo.identity", ("evidence_identity", "matches_reference"),
           "KL(p(z|x) || q) returned for KL(q || p(z|x))", {"elbo.identity": _posterior_kl_reversed}),
    Mutant("elbo_prior_kl_half_logdet", "elbo.identity", ("evidence_identity", "elbo_monte_carlo", "matches_reference"),
           "log-std for log-variance in KL(q || p(z)): -(1/2) log det q_cov in place of -log det",
           {"elbo.identity": _prior_kl_half_logdet}),
    Mutant("elbo_float32_inputs", "elbo.identity", ("matches_reference",),
           "inputs rounded to float32 (a float32 pipeline reported as float64)",
           {"elbo.identity": _identity_float32}),
    Mutant("elbo_no_domain_check", "elbo.identity", ("rejects_out_of_domain",),
           "no SPD check on q_cov (slogdet sign ignored) and no check on s2 or shapes",
           {"elbo.identity": _identity_unchecked}),
    Mutant("ml_reverse_kl", "elbo.max_likelihood",
           ("kl_is_ce_minus_entropy", "argmin_is_max_likelihood", "matches_reference"),
           "mode-seeking KL(p_theta || p_data) for KL(p_data || p_theta)", {"elbo.max_likelihood": _ml_reverse_kl}),
    Mutant("ml_log_ratio_flipped", "elbo.max_likelihood",
           ("kl_is_ce_minus_entropy", "gibbs_pinsker", "argmin_is_max_likelihood", "matches_reference"),
           "sum p log(q / p): the KL with its sign flipped", {"elbo.max_likelihood": _ml_log_ratio_flipped}),
    Mutant("ml_naive_zero_probability", "elbo.max_likelihood", ("support", "matches_reference"),
           "p * log(p / q) evaluated literally: NaN at categories with p = 0",
           {"elbo.max_likelihood": _ml_naive_zero}),
    Mutant("ml_clamped_log", "elbo.max_likelihood", ("support", "matches_reference"),
           "log(q + 1e-8): finite KL where p_theta misses the support, biased elsewhere",
           {"elbo.max_likelihood": _ml_clamped_log}),
    Mutant("ml_bits", "elbo.max_likelihood", ("matches_reference",),
           "log2 in place of the natural log (bits, not nats)", {"elbo.max_likelihood": _ml_bits}),
    Mutant("ml_entropy_sign", "elbo.max_likelihood", ("kl_is_ce_minus_entropy", "matches_reference"),
           "entropy returned as sum p log p (negative entropy)", {"elbo.max_likelihood": _ml_entropy_sign}),
    Mutant("ml_no_domain_check", "elbo.max_likelihood", ("rejects_out_of_domain",),
           "accepts negative entries, NaN and unnormalised rows", {"elbo.max_likelihood": _ml_unchecked}),
]
