"""Planted bugs for the ``sde`` family."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import sde as ref

from . import Mutant

F = NDArray[np.float64]


def _rows(x: ArrayLike, t: ArrayLike) -> tuple[F, F]:
    """x as float64 and t as a (B, 1) column, without any domain check."""
    xs = np.asarray(x, dtype=np.float64)
    tt = np.broadcast_to(np.asarray(t, dtype=np.float64), (xs.shape[0],))[:, None]
    return xs, tt


# ---- sde.vp ----------------------------------------------------------------------------


def _vp_g_is_beta(x: ArrayLike, t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[F, F]:
    # Diffusion coefficient set to beta(t) instead of sqrt(beta(t)) (variance vs std confusion).
    f, g = ref.vp(x, t, beta_min, beta_max)
    return f, g**2


def _vp_beta_missing_min(x: ArrayLike, t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[F, F]:
    # beta(t) = beta_min + t beta_max: the slope forgets to subtract beta_min.
    xs, tt = _rows(x, t)
    ref.vp(x, t, beta_min, beta_max)  # keep the domain checks
    beta = beta_min + tt * beta_max
    return -0.5 * beta * xs, np.sqrt(beta)


def _vp_unchecked(x: ArrayLike, t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[F, F]:
    xs, tt = _rows(x, t)
    beta = beta_min + tt * (beta_max - beta_min)
    return -0.5 * beta * xs, np.sqrt(np.abs(beta))


# ---- sde.vp_marginal -------------------------------------------------------------------


def _marginal_missing_half(t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> F:
    # int_0^t beta taken as beta_min t + (beta_max - beta_min) t^2: the 1/2 of the quadratic term dropped.
    ref.vp_marginal(t, beta_min, beta_max)
    tt = np.asarray(t, dtype=np.float64)
    return np.exp(-beta_min * tt - (beta_max - beta_min) * tt**2)


def _marginal_mean_coefficient(t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> F:
    # Returns the kernel's mean coefficient sqrt(alpha_bar) (Song et al.'s exponent with 1/4, 1/2).
    return np.sqrt(ref.vp_marginal(t, beta_min, beta_max))


def _marginal_variance(t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> F:
    # Returns the kernel variance 1 - alpha_bar(t) where alpha_bar(t) is expected.
    return 1.0 - ref.vp_marginal(t, beta_min, beta_max)


def _marginal_unchecked(t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> F:
    tt = np.asarray(t, dtype=np.float64)
    return np.exp(-beta_min * tt - 0.5 * (beta_max - beta_min) * tt**2)


# ---- sde.reverse_drift -----------------------------------------------------------------


def _reverse_plus(x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
                  beta_max: float = 20.0) -> F:
    # Sign error in the reverse SDE drift: f + g^2 score.
    f, g = ref.vp(x, t, beta_min, beta_max)
    ref.reverse_drift(x, t, score, beta_min, beta_max)
    return f + g**2 * np.asarray(score, dtype=np.float64)


def _reverse_g_not_squared(x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
                           beta_max: float = 20.0) -> F:
    # f - g score: the diffusion coefficient used where its square belongs.
    f, g = ref.vp(x, t, beta_min, beta_max)
    ref.reverse_drift(x, t, score, beta_min, beta_max)
    return f - g * np.asarray(score, dtype=np.float64)


def _reverse_forward_time(x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
                          beta_max: float = 20.0) -> F:
    # Returns the drift in the flipped time s = 1 - t, -(f - g^2 score), where the dt < 0 form is specified.
    return -ref.reverse_drift(x, t, score, beta_min, beta_max)


def _reverse_unchecked(x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
                       beta_max: float = 20.0) -> F:
    xs, tt = _rows(x, t)
    beta = beta_min + tt * (beta_max - beta_min)
    return -0.5 * beta * xs - beta * np.asarray(score, dtype=np.float64)


# ---- sde.probability_flow --------------------------------------------------------------


def _flow_missing_half(x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
                       beta_max: float = 20.0) -> F:
    # The factor 1/2 of Eq. (13) dropped: the reverse-SDE drift used as the ODE field.
    ref.probability_flow(x, t, score, beta_min, beta_max)
    return ref.reverse_drift(x, t, score, beta_min, beta_max)


def _flow_plus(x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
               beta_max: float = 20.0) -> F:
    # Sign error: f + g^2 score / 2.
    f, g = ref.vp(x, t, beta_min, beta_max)
    ref.probability_flow(x, t, score, beta_min, beta_max)
    return f + 0.5 * g**2 * np.asarray(score, dtype=np.float64)


def _flow_unchecked(x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
                    beta_max: float = 20.0) -> F:
    xs, tt = _rows(x, t)
    beta = beta_min + tt * (beta_max - beta_min)
    return -0.5 * beta * xs - 0.5 * beta * np.asarray(score, dtype=np.float64)


MUTANTS = [
    Mutant("sde_vp_g_is_beta", "sde.vp", ("variance_preserving", "transition_kernel", "matches_reference"),
           "diffusion g(t) = beta(t) instead of sqrt(beta(t))", {"sde.vp": _vp_g_is_beta}),
    Mutant("sde_vp_beta_missing_min", "sde.vp", ("transition_kernel", "matches_reference"),
           "beta(t) = beta_min + t beta_max (slope without - beta_min)", {"sde.vp": _vp_beta_missing_min}),
    Mutant("sde_vp_no_domain_check", "sde.vp", ("rejects_out_of_domain",),
           "accepts t outside [0, 1], NaN and bad shapes silently", {"sde.vp": _vp_unchecked}),
    Mutant("sde_marginal_missing_half", "sde.vp_marginal", ("moment_odes", "ddpm_limit", "matches_reference"),
           "int_0^t beta without the 1/2 on the quadratic term", {"sde.vp_marginal": _marginal_missing_half}),
    Mutant("sde_marginal_mean_coefficient", "sde.vp_marginal", ("moment_odes", "ddpm_limit", "matches_reference"),
           "returns the kernel mean coefficient sqrt(alpha_bar)", {"sde.vp_marginal": _marginal_mean_coefficient}),
    Mutant("sde_marginal_variance", "sde.vp_marginal", ("boundary", "moment_odes", "matches_reference"),
           "returns the kernel variance 1 - alpha_bar", {"sde.vp_marginal": _marginal_variance}),
    Mutant("sde_marginal_no_domain_check", "sde.vp_marginal", ("rejects_out_of_domain",),
           "accepts t outside [0, 1] and bad beta ranges silently", {"sde.vp_marginal": _marginal_unchecked}),
    Mutant("sde_reverse_drift_sign", "sde.reverse_drift",
           ("marginal_consistency", "em_first_order", "em_sample_law", "matches_reference"),
           "sign error in the reverse SDE drift: f + g^2 score", {"sde.reverse_drift": _reverse_plus}),
    Mutant("sde_reverse_drift_g_not_squared", "sde.reverse_drift",
           ("marginal_consistency", "em_first_order", "em_sample_law", "matches_reference"),
           "f - g score: g where g^2 belongs", {"sde.reverse_drift": _reverse_g_not_squared}),
    Mutant("sde_reverse_drift_forward_time", "sde.reverse_drift",
           ("marginal_consistency", "em_first_order", "em_sample_law", "matches_reference"),
           "drift returned for the flipped time 1 - t, -(f - g^2 score)", {"sde.reverse_drift": _reverse_forward_time}),
    Mutant("sde_reverse_drift_no_domain_check", "sde.reverse_drift", ("rejects_out_of_domain",),
           "no checks of shapes, NaN or t", {"sde.reverse_drift": _reverse_unchecked}),
    Mutant("sde_flow_missing_half", "sde.probability_flow", ("preserves_marginals", "flow_map", "matches_reference"),
           "probability-flow field without the 1/2: f - g^2 score", {"sde.probability_flow": _flow_missing_half}),
    Mutant("sde_flow_sign", "sde.probability_flow", ("preserves_marginals", "flow_map", "matches_reference"),
           "sign error: f + g^2 score / 2", {"sde.probability_flow": _flow_plus}),
    Mutant("sde_flow_no_domain_check", "sde.probability_flow", ("rejects_out_of_domain",),
           "no checks of shapes, NaN or t", {"sde.probability_flow": _flow_unchecked}),
]
