"""Planted bugs for the ``guidance`` family."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import guidance as ref

from . import Mutant

F = NDArray[np.float64]


def _f(a: ArrayLike) -> F:
    return np.asarray(a, dtype=np.float64)


# ---- guidance.classifier -------------------------------------------------------------------


def _classifier_std(mean: ArrayLike, var: ArrayLike, grad_log_p: ArrayLike, s: float) -> F:
    # The standard deviation sqrt(Sigma) where the covariance Sigma belongs.
    ref.classifier(mean, var, grad_log_p, s)
    return _f(mean) + s * np.sqrt(_f(var)) * _f(grad_log_p)


def _classifier_scale_squared(mean: ArrayLike, var: ArrayLike, grad_log_p: ArrayLike, s: float) -> F:
    # The scale applied twice: once to the gradient by the caller's helper, once in the update.
    ref.classifier(mean, var, grad_log_p, s)
    return _f(mean) + s * s * _f(var) * _f(grad_log_p)


def _classifier_scale_default(mean: ArrayLike, var: ArrayLike, grad_log_p: ArrayLike, s: float) -> F:
    # ``scale = s or 1.0``: an explicit s = 0 is falsy and silently becomes the default 1.
    return ref.classifier(mean, var, grad_log_p, s or 1.0)


def _classifier_unchecked(mean: ArrayLike, var: ArrayLike, grad_log_p: ArrayLike, s: float) -> F:
    with np.errstate(all="ignore"):
        return _f(mean) + s * _f(var) * _f(grad_log_p)


# ---- guidance.cfg --------------------------------------------------------------------------


def _cfg_hs_formula(eps_uncond: ArrayLike, eps_cond: ArrayLike, omega: float) -> F:
    # Ho and Salimans' (1 + w) eps_c - w eps_u evaluated with the decks' omega: one unit too strong.
    ref.cfg(eps_uncond, eps_cond, omega)
    return (1 + omega) * _f(eps_cond) - omega * _f(eps_uncond)


def _cfg_rescaled(eps_uncond: ArrayLike, eps_cond: ArrayLike, omega: float) -> F:
    # Guidance rescaling (std of the guided prediction matched to the conditional one, phi = 0.7)
    # left switched on: no longer the plain extrapolation the spec defines.
    guided = ref.cfg(eps_uncond, eps_cond, omega)
    sd_c = _f(eps_cond).std(axis=1, keepdims=True)
    sd_g = guided.std(axis=1, keepdims=True)
    factor = np.where(sd_g > 0, sd_c / np.where(sd_g > 0, sd_g, 1.0), 1.0)
    return 0.7 * guided * factor + 0.3 * guided


def _cfg_unchecked(eps_uncond: ArrayLike, eps_cond: ArrayLike, omega: float) -> F:
    with np.errstate(all="ignore"):
        u = _f(eps_uncond)
        return u + _f(omega) * (_f(eps_cond) - u)


# ---- guidance.cfg_ho_salimans --------------------------------------------------------------


def _hs_omega_convention(eps_uncond: ArrayLike, eps_cond: ArrayLike, w: float) -> F:
    # Wrong CFG convention: w used as the decks' omega, i.e. the guidance weight off by one.
    ref.cfg_ho_salimans(eps_uncond, eps_cond, w)
    u = _f(eps_uncond)
    return u + w * (_f(eps_cond) - u)


def _hs_unchecked(eps_uncond: ArrayLike, eps_cond: ArrayLike, w: float) -> F:
    with np.errstate(all="ignore"):
        return (1 + _f(w)) * _f(eps_cond) - _f(w) * _f(eps_uncond)


MUTANTS = [
    Mutant("guidance_classifier_std_for_var", "guidance.classifier", ("gaussian_bayes", "matches_reference"),
           "sqrt(Sigma) (a standard deviation) used where the covariance Sigma belongs",
           {"guidance.classifier": _classifier_std}),
    Mutant("guidance_classifier_scale_squared", "guidance.classifier",
           ("linear_in_s", "gaussian_bayes", "matches_reference"),
           "gradient scale applied twice (s^2)", {"guidance.classifier": _classifier_scale_squared}),
    Mutant("guidance_classifier_s_or_default", "guidance.classifier", ("s_zero_identity",),
           "`s or 1.0`: s = 0 silently replaced by the default scale 1",
           {"guidance.classifier": _classifier_scale_default}),
    Mutant("guidance_classifier_unchecked", "guidance.classifier", ("rejects_out_of_domain",),
           "no domain checks (NaN, shapes, var < 0, s < 0 pass through)",
           {"guidance.classifier": _classifier_unchecked}),
    Mutant("guidance_cfg_ho_salimans_formula", "guidance.cfg", ("endpoints", "sharpened_gaussian", "matches_reference"),
           "wrong CFG convention: (1 + omega) eps_c - omega eps_u with the decks' omega",
           {"guidance.cfg": _cfg_hs_formula}),
    Mutant("guidance_cfg_rescaled", "guidance.cfg", ("endpoints", "affine_in_omega", "matches_reference"),
           "guidance rescale (phi = 0.7) left on: the guided prediction's std forced to the conditional one's",
           {"guidance.cfg": _cfg_rescaled}),
    Mutant("guidance_cfg_unchecked", "guidance.cfg", ("rejects_out_of_domain",),
           "no domain checks (NaN, shapes, negative omega pass through)", {"guidance.cfg": _cfg_unchecked}),
    Mutant("guidance_hs_omega_convention", "guidance.cfg_ho_salimans",
           ("convention_mapping", "w_zero_conditional", "matches_reference"),
           "wrong CFG convention: eps_u + w (eps_c - eps_u), omega used where 1 + w belongs",
           {"guidance.cfg_ho_salimans": _hs_omega_convention}),
    Mutant("guidance_hs_unchecked", "guidance.cfg_ho_salimans", ("rejects_out_of_domain",),
           "no domain checks (NaN, shapes, w < -1 pass through)", {"guidance.cfg_ho_salimans": _hs_unchecked}),
]
