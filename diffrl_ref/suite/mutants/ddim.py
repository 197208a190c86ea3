"""Planted bugs for the ``ddim`` family."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import ddim as ref
from diffrl_ref.reference import schedule

from . import Mutant

F = NDArray[np.float64]


def _ab(betas: ArrayLike) -> F:
    return schedule.alpha_bar(np.asarray(betas, dtype=np.float64))


def _col(a: Any) -> F:
    c = np.asarray(a, dtype=np.float64)
    return c[:, None] if c.ndim == 1 else c


# ---- ddim.sigma ----------------------------------------------------------------------------


def _sigma_missing_sqrt(betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float) -> F:
    # eta (1 - ab_prev)/(1 - ab_k) (1 - ab_k/ab_prev): the product under the square roots, unrooted.
    ref.sigma(betas, k, k_prev, eta)  # keep the domain checks
    s = ref.sigma(betas, k, k_prev, 1.0)
    return np.asarray(eta * s**2, dtype=np.float64)


def _sigma_hat(betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float) -> F:
    # DDIM's larger sigma_hat = sqrt(1 - ab_k / ab_prev) (DDPM's beta_k variance) taken for Eq. (16).
    ref.sigma(betas, k, k_prev, eta)  # keep the domain checks
    ab = _ab(betas)
    return np.asarray(eta * np.sqrt(1 - ab[np.asarray(k)] / ab[np.asarray(k_prev)]), dtype=np.float64)


def _sigma_eta_squared(betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float) -> F:
    return np.asarray(eta * ref.sigma(betas, k, k_prev, eta), dtype=np.float64)


def _sigma_unchecked(betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float) -> F:
    ab = np.concatenate([[1.0], np.cumprod(1 - np.asarray(betas, dtype=np.float64))])
    a, p = ab[np.asarray(k, dtype=np.int64) % ab.size], ab[np.asarray(k_prev, dtype=np.int64) % ab.size]
    with np.errstate(all="ignore"):
        return np.asarray(eta * np.sqrt((1 - p) / (1 - a)) * np.sqrt(1 - a / p), dtype=np.float64)


# ---- ddim.posterior ------------------------------------------------------------------------


def _posterior_consecutive(x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike,
                           sigma: ArrayLike) -> tuple[F, F]:
    # alpha_bar_{k-1} used for the target whatever k_prev is (code written for single steps).
    ref.posterior(x0, x_k, betas, k, k_prev, sigma)
    ab = _ab(betas)
    ab_k, ab_p, s = _col(ab[np.asarray(k)]), _col(ab[np.asarray(k) - 1]), _col(sigma)
    x0_, xk = np.asarray(x0, dtype=np.float64), np.asarray(x_k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        mean = np.sqrt(ab_p) * x0_ + np.sqrt(1 - ab_p - s**2) * (xk - np.sqrt(ab_k) * x0_) / np.sqrt(1 - ab_k)
    return mean, np.broadcast_to(s**2, (xk.shape[0], 1)).copy()


def _posterior_sigma_as_variance(x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike,
                                 sigma: ArrayLike) -> tuple[F, F]:
    # The sigma argument treated as a variance.
    ref.posterior(x0, x_k, betas, k, k_prev, sigma)
    ab = _ab(betas)
    ab_k, ab_p, v = _col(ab[np.asarray(k)]), _col(ab[np.asarray(k_prev)]), _col(sigma)
    x0_, xk = np.asarray(x0, dtype=np.float64), np.asarray(x_k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        mean = np.sqrt(ab_p) * x0_ + np.sqrt(1 - ab_p - v) * (xk - np.sqrt(ab_k) * x0_) / np.sqrt(1 - ab_k)
    return mean, np.broadcast_to(v, (xk.shape[0], 1)).copy()


def _posterior_unchecked(x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike,
                         sigma: ArrayLike) -> tuple[F, F]:
    b = np.asarray(betas, dtype=np.float64)
    ab = np.concatenate([[1.0], np.cumprod(1 - b)])
    ki, kpi = np.asarray(k, dtype=np.int64) % ab.size, np.asarray(k_prev, dtype=np.int64) % ab.size
    ab_k, ab_p, s = _col(ab[ki]), _col(ab[kpi]), _col(sigma)
    x0_, xk = np.asarray(x0, dtype=np.float64), np.asarray(x_k, dtype=np.float64)
    with np.errstate(all="ignore"):
        mean = np.sqrt(ab_p) * x0_ + np.sqrt(1 - ab_p - s**2) * (xk - np.sqrt(ab_k) * x0_) / np.sqrt(1 - ab_k)
    return mean, np.broadcast_to(s**2, (xk.shape[0], 1)).copy()


# ---- ddim.step -----------------------------------------------------------------------------


def _step_with(sigma_of: Callable[[F, F, float], F], x0_noise: Callable[[F], F]) -> Callable[..., F]:
    def step(x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float,
             z: ArrayLike) -> F:
        ref.step(x_k, eps_hat, betas, k, k_prev, eta, z)  # keep the domain checks
        ab = _ab(betas)
        ab_k, ab_p = _col(ab[np.asarray(k)]), _col(ab[np.asarray(k_prev)])
        xk, e, z_ = (np.asarray(a, dtype=np.float64) for a in (x_k, eps_hat, z))
        sig = sigma_of(ab_k, ab_p, eta)
        x0_hat = (xk - x0_noise(1 - ab_k) * e) / np.sqrt(ab_k)
        with np.errstate(invalid="ignore"):
            return np.asarray(np.sqrt(ab_p) * x0_hat + np.sqrt(1 - ab_p - sig**2) * e + sig * z_, dtype=np.float64)

    return step


def _sigma16(ab_k: F, ab_p: F, eta: float) -> F:
    return np.asarray(eta * np.sqrt((1 - ab_p) / (1 - ab_k)) * np.sqrt(1 - ab_k / ab_p), dtype=np.float64)


_step_sigma_missing_sqrt = _step_with(lambda a, p, eta: eta * _sigma16(a, p, 1.0) ** 2, np.sqrt)
_step_x0_hat_no_sqrt = _step_with(_sigma16, lambda v: v)
_step_eta_ignored = _step_with(lambda a, p, eta: _sigma16(a, p, 1.0), np.sqrt)


def _step_unchecked(x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float,
                    z: ArrayLike) -> F:
    ab = np.concatenate([[1.0], np.cumprod(1 - np.asarray(betas, dtype=np.float64))])
    ab_k = _col(ab[np.asarray(k, dtype=np.int64) % ab.size])
    ab_p = _col(ab[np.asarray(k_prev, dtype=np.int64) % ab.size])
    xk, e, z_ = (np.asarray(a, dtype=np.float64) for a in (x_k, eps_hat, z))
    with np.errstate(all="ignore"):
        sig = _sigma16(ab_k, ab_p, eta)
        return np.asarray(np.sqrt(ab_p) * (xk - np.sqrt(1 - ab_k) * e) / np.sqrt(ab_k)
                          + np.sqrt(1 - ab_p - sig**2) * e + sig * z_, dtype=np.float64)


# ---- ddim.sample ---------------------------------------------------------------------------


def _sample_with(k_prev_of: Callable[[list[int], int], int],
                 noise_index: Callable[[int, int], int]) -> Callable[..., F]:
    def sample(x_K: ArrayLike, eps_fn: Callable[..., Any], betas: ArrayLike, tau: ArrayLike, eta: float,
               noises: ArrayLike) -> F:
        t = [int(v) for v in np.asarray(tau).ravel()]
        x = np.asarray(x_K, dtype=np.float64)
        z = np.asarray(noises, dtype=np.float64)
        for i in range(len(t) - 1, -1, -1):
            e = np.asarray(eps_fn(x, np.full(x.shape[0], t[i])), dtype=np.float64)
            x = ref.step(x, e, betas, t[i], k_prev_of(t, i), eta, z[noise_index(i, len(t))])
        return x

    return sample


def _checked(bad: Callable[..., F]) -> Callable[..., F]:
    def sample(x_K: ArrayLike, eps_fn: Callable[..., Any], betas: ArrayLike, tau: ArrayLike, eta: float,
               noises: ArrayLike) -> F:
        ref.sample(x_K, lambda x, k: np.zeros_like(x), betas, tau, eta, noises)  # the domain checks only
        return bad(x_K, eps_fn, betas, tau, eta, noises)

    return sample


_sample_consecutive = _checked(_sample_with(lambda t, i: t[i] - 1, lambda i, n: i))
_sample_noise_reversed = _checked(_sample_with(lambda t, i: t[i - 1] if i else 0, lambda i, n: n - 1 - i))


def _sample_heun(x_K: ArrayLike, eps_fn: Callable[..., Any], betas: ArrayLike, tau: ArrayLike, eta: float,
                 noises: ArrayLike) -> F:
    # A second-order (Heun, as in EDM's sampler) update where the clause is DDIM's Euler step:
    # eps_hat is averaged with the network's prediction at the Euler predictor (not on the last step).
    ref.sample(x_K, lambda x, k: np.zeros_like(x), betas, tau, eta, noises)  # the domain checks only
    t = [int(v) for v in np.asarray(tau).ravel()]
    x = np.asarray(x_K, dtype=np.float64)
    z = np.asarray(noises, dtype=np.float64)
    B = x.shape[0]
    for i in range(len(t) - 1, -1, -1):
        k, kp = t[i], (t[i - 1] if i else 0)
        e = np.asarray(eps_fn(x, np.full(B, k)), dtype=np.float64)
        if kp > 0:
            pred = ref.step(x, e, betas, k, kp, 0.0, z[i])
            e = (e + np.asarray(eps_fn(pred, np.full(B, kp)), dtype=np.float64)) / 2
        x = ref.step(x, e, betas, k, kp, eta, z[i])
    return x


def _fast_sample_variance_root(x_K: ArrayLike, eps_fn: Callable[..., Any], betas: ArrayLike, tau: ArrayLike,
                               eta: float, noises: ArrayLike) -> Any:
    # The production sampler (float32) with the deterministic part of each step taken as
    # xbar_prev = xbar_k - sqrt(sigma_bar_k^2 - sigma_bar_prev^2) eps_hat, a root of a difference of
    # variances (the VE ancestral noise scale) where the difference sigma_bar_prev - sigma_bar_k belongs.
    from ...adapters.fast._bridge import Bridge
    from ...fast import ddim as fast_ddim

    cid = "ddim.sample"
    br = Bridge("float32", "cpu")
    sched = br.sched(betas, cid)
    sampler = fast_ddim.DDIMSampler(sched, np.asarray(tau).tolist(), eta)
    prev = [0, *sampler.tau[:-1]]
    coef = []
    for (k, c_x, c_eps, sig), kp in zip(sampler.coef, reversed(prev), strict=True):
        ab_k, ab_p = sched.ab64(k), sched.ab64(kp)
        sb_k, sb_p = math.sqrt(sched.om64(k) / ab_k), math.sqrt(sched.om64(kp) / ab_p)
        c_eps += math.sqrt(ab_p) * ((sb_k - sb_p) - math.sqrt(sb_k**2 - sb_p**2))
        coef.append((k, c_x, c_eps, sig))
    sampler.coef = coef
    return br.out(sampler(br.x(x_K, cid, "x_K"), br.net(eps_fn, cid, "eps_fn"), br.x(noises, cid, "noises")))


def _sample_unchecked(x_K: ArrayLike, eps_fn: Callable[..., Any], betas: ArrayLike, tau: ArrayLike, eta: float,
                      noises: ArrayLike) -> F:
    # No validation of tau, eta or the noise shape: whatever steps tau lists are taken in turn.
    t = [int(v) for v in np.asarray(tau).ravel()]
    x = np.asarray(x_K, dtype=np.float64)
    z = np.asarray(noises, dtype=np.float64)
    for i in range(len(t) - 1, -1, -1):
        e = np.asarray(eps_fn(x, np.full(x.shape[0], t[i])), dtype=np.float64)
        x = _step_unchecked(x, e, betas, t[i], t[i - 1] if i else 0, eta, z[i] if i < len(z) else np.zeros_like(x))
    return x


MUTANTS = [
    Mutant("ddim_sigma_missing_sqrt", "ddim.sigma", ("ddpm_equivalence", "matches_reference"),
           "DDIM sigma missing a square root: returns the variance sigma^2 as the standard deviation",
           {"ddim.sigma": _sigma_missing_sqrt}),
    Mutant("ddim_sigma_hat", "ddim.sigma", ("ddpm_equivalence", "bounded", "matches_reference"),
           "sigma_hat = eta sqrt(1 - ab_k/ab_prev) (DDPM's beta variance) in place of Eq. (16)",
           {"ddim.sigma": _sigma_hat}),
    Mutant("ddim_sigma_eta_squared", "ddim.sigma", ("linear_in_eta", "matches_reference"),
           "eta applied twice (eta^2 scaling)", {"ddim.sigma": _sigma_eta_squared}),
    Mutant("ddim_sigma_unchecked", "ddim.sigma", ("rejects_out_of_domain",),
           "no domain checks: k_prev >= k, eta outside [0, 1] and bad betas return numbers (or NaN)",
           {"ddim.sigma": _sigma_unchecked}),
    Mutant("ddim_posterior_consecutive_only", "ddim.posterior",
           ("marginal_preservation", "boundary", "matches_reference"),
           "alpha_bar_{k-1} used as the target's alpha_bar whatever k_prev is (single-step code in a skipping sampler)",
           {"ddim.posterior": _posterior_consecutive}),
    Mutant("ddim_posterior_sigma_as_variance", "ddim.posterior",
           ("marginal_preservation", "ddpm_equivalence", "matches_reference"),
           "the sigma argument treated as a variance (sigma where sigma^2 belongs)",
           {"ddim.posterior": _posterior_sigma_as_variance}),
    Mutant("ddim_posterior_unchecked", "ddim.posterior", ("rejects_out_of_domain",),
           "no domain checks: sigma^2 > 1 - ab_prev returns NaN, k_prev >= k returns numbers",
           {"ddim.posterior": _posterior_unchecked}),
    Mutant("ddim_step_sigma_missing_sqrt", "ddim.step",
           ("ddpm_equivalence", "true_noise_posterior", "matches_reference"),
           "the step uses the variance eta sigma_1^2 as its noise standard deviation",
           {"ddim.step": _step_sigma_missing_sqrt}),
    Mutant("ddim_step_x0_hat_no_sqrt", "ddim.step",
           ("euler_step", "ddpm_equivalence", "true_noise_posterior", "matches_reference"),
           "x0_hat = (x_k - (1 - ab_k) eps_hat) / sqrt(ab_k): missing square root on 1 - ab_k",
           {"ddim.step": _step_x0_hat_no_sqrt}),
    Mutant("ddim_step_eta_ignored", "ddim.step", ("eta0_deterministic", "euler_step", "matches_reference"),
           "eta ignored (always the DDPM noise level eta = 1)", {"ddim.step": _step_eta_ignored}),
    Mutant("ddim_step_unchecked", "ddim.step", ("rejects_out_of_domain",),
           "no domain checks on inputs, steps or eta", {"ddim.step": _step_unchecked}),
    Mutant("ddim_sample_consecutive_k_prev", "ddim.sample", ("flow_convergence", "exact_law", "matches_reference"),
           "each step of the sub-sequence goes to k - 1 instead of the previous element of tau",
           {"ddim.sample": _sample_consecutive}),
    Mutant("ddim_sample_noise_reversed", "ddim.sample", ("ddpm_equivalence", "matches_reference"),
           "noises indexed in reverse (noises[S-1-i] for the step leaving tau_i)",
           {"ddim.sample": _sample_noise_reversed}),
    Mutant("ddim_sample_heun", "ddim.sample",
           ("flow_convergence", "exact_law", "ddpm_equivalence", "matches_reference"),
           "second-order (Heun) update in place of DDIM's Euler step: eps_hat averaged with the prediction at "
           "the Euler predictor", {"ddim.sample": _sample_heun}),
    Mutant("ddim_sample_variance_root_fast", "ddim.sample",
           ("flow_convergence", "exact_law", "ddpm_equivalence", "matches_reference"),
           "production path (float32): deterministic update -sqrt(sigma_bar_k^2 - sigma_bar_prev^2) eps_hat "
           "instead of (sigma_bar_prev - sigma_bar_k) eps_hat (converges to the wrong map)",
           {"ddim.sample": _fast_sample_variance_root}, target="fast"),
    Mutant("ddim_sample_unchecked", "ddim.sample", ("rejects_out_of_domain",),
           "no validation of tau, eta, the noise shape or the network's output",
           {"ddim.sample": _sample_unchecked}),
]
