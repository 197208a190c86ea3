"""Planted bugs for the ``dpm_solver`` family."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import dpm_solver as ref

from . import Mutant

F = NDArray[np.float64]
EpsFn = Callable[[F, float], ArrayLike]


def _lam(ab: float) -> float:
    return float(0.5 * (np.log(ab) - np.log1p(-ab)))


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def _zeros(x: F, alpha_bar: float) -> F:
    """Stand-in network for validating the other arguments without calling the real one."""
    return np.zeros_like(x)


# ---- dpm_solver.first_order -------------------------------------------------------------


def _first_h_for_expm1(x: ArrayLike, eps_hat: ArrayLike, ab_s: float, ab_t: float) -> F:
    # e^h - 1 truncated to h (the exponential integrator's weight replaced by its Taylor term).
    ref.first_order(x, eps_hat, ab_s, ab_t)
    h = _lam(ab_t) - _lam(ab_s)
    return np.asarray(np.sqrt(ab_t / ab_s) * np.asarray(x) - np.sqrt(1 - ab_t) * h * np.asarray(eps_hat))


def _first_log_snr(x: ArrayLike, eps_hat: ArrayLike, ab_s: float, ab_t: float) -> F:
    # lambda taken as the full log-SNR log(alpha^2 / sigma^2) instead of log(alpha / sigma): h doubled.
    ref.first_order(x, eps_hat, ab_s, ab_t)
    h = 2 * (_lam(ab_t) - _lam(ab_s))
    return np.asarray(np.sqrt(ab_t / ab_s) * np.asarray(x) - np.sqrt(1 - ab_t) * np.expm1(h) * np.asarray(eps_hat))


def _first_unchecked(x: ArrayLike, eps_hat: ArrayLike, ab_s: float, ab_t: float) -> F:
    with np.errstate(all="ignore"):
        h = _lam(ab_t) - _lam(ab_s)
        return np.asarray(np.sqrt(ab_t / ab_s) * np.asarray(x) - np.sqrt(1 - ab_t) * np.expm1(h) * np.asarray(eps_hat))


# ---- dpm_solver.second_order ------------------------------------------------------------


def _second(x: ArrayLike, eps_fn: EpsFn, ab_s: float, ab_t: float, r: float, *, phi_h: bool = False,
            corr: float = 0.5, ab_u_of: Callable[[float], float] | None = None) -> F:
    """DPM-Solver-2 with switchable bugs (validation by the reference first)."""
    ref.second_order(x, _zeros, ab_s, ab_t, r)
    xs = np.asarray(x, dtype=np.float64)
    lam_s, lam_t = _lam(ab_s), _lam(ab_t)
    h = lam_t - lam_s
    lam_u = lam_s + r * h
    ab_u = _sigmoid(2 * lam_u) if ab_u_of is None else ab_u_of(lam_u)
    a_s, a_u, a_t = np.sqrt(ab_s), np.sqrt(ab_u), np.sqrt(ab_t)
    s_u, s_t = np.sqrt(1 - ab_u), np.sqrt(1 - ab_t)
    e_s = np.asarray(eps_fn(xs, ab_s), dtype=np.float64)
    u = (a_u / a_s) * xs - s_u * np.expm1(r * h) * e_s
    e_u = np.asarray(eps_fn(u, ab_u), dtype=np.float64)
    w = h if phi_h else np.expm1(h)
    return np.asarray((a_t / a_s) * xs - s_t * w * e_s - s_t * corr / r * w * (e_u - e_s))


def _second_h_for_expm1(x: ArrayLike, eps_fn: EpsFn, ab_s: float, ab_t: float, r: float = 0.5) -> F:
    # e^h - 1 truncated to h in the final update: the step degrades to first order.
    return _second(x, eps_fn, ab_s, ab_t, r, phi_h=True)


def _second_correction_1_over_r(x: ArrayLike, eps_fn: EpsFn, ab_s: float, ab_t: float, r: float = 0.5) -> F:
    # Correction weighted 1/r instead of 1/(2r).
    return _second(x, eps_fn, ab_s, ab_t, r, corr=1.0)


def _second_sigmoid_lambda(x: ArrayLike, eps_fn: EpsFn, ab_s: float, ab_t: float, r: float = 0.5) -> F:
    # Intermediate level alpha_bar_u = sigmoid(lambda_u), forgetting that lambda is the half log-SNR.
    return _second(x, eps_fn, ab_s, ab_t, r, ab_u_of=_sigmoid)


def _second_unchecked(x: ArrayLike, eps_fn: EpsFn, ab_s: float, ab_t: float, r: float = 0.5) -> F:
    # No validation of levels, r or the network's output.
    with np.errstate(all="ignore"):
        xs = np.asarray(x, dtype=np.float64)
        lam_s, lam_t = _lam(ab_s), _lam(ab_t)
        h = lam_t - lam_s
        ab_u = _sigmoid(2 * (lam_s + r * h))
        e_s = np.asarray(eps_fn(xs, ab_s))
        u = np.sqrt(ab_u / ab_s) * xs - np.sqrt(1 - ab_u) * np.expm1(r * h) * e_s
        e_u = np.asarray(eps_fn(u, ab_u))
        out = np.sqrt(ab_t / ab_s) * xs - np.sqrt(1 - ab_t) * np.expm1(h) * e_s
        d = xs.shape[-1]
        return np.asarray(out - np.sqrt(1 - ab_t) / (2 * r) * np.expm1(h) * (e_u[..., :d] - e_s[..., :d]))


# ---- dpm_solver.pp_2m -------------------------------------------------------------------


def _pp_2m(x_T: ArrayLike, eps_fn: EpsFn, ab_grid: ArrayLike, *, ratio_inverted: bool = False,
           sign_flipped: bool = False, uniform_coefficients: bool = False, empty_history: bool = False,
           noise_linear_part: bool = False, level_shift: bool = False, heun: bool = False,
           validate: bool = True) -> F:
    """DPM-Solver++(2M) with switchable bugs (validation by the reference first unless told not to)."""
    if validate:
        ref.pp_2m(x_T, _zeros, ab_grid)
    grid = np.asarray(ab_grid, dtype=np.float64)
    alpha, sigma = np.sqrt(grid), np.sqrt(1 - grid)
    lam = 0.5 * (np.log(grid) - np.log1p(-grid))
    x = np.asarray(x_T, dtype=np.float64)

    def x_theta(x: F, i: int) -> F:
        j = i + 1 if level_shift else i  # network queried at the target level of the step
        return np.asarray((x - sigma[i] * np.asarray(eps_fn(x, float(grid[j])))) / alpha[i])

    def lin(i: int) -> float:
        return float(alpha[i] / alpha[i - 1] if noise_linear_part else sigma[i] / sigma[i - 1])

    prev = x_theta(x, 0)
    D = 1.5 * prev if empty_history else prev  # the 2M formula with a zero "previous" x_theta and r = 1
    x = lin(1) * x - alpha[1] * np.expm1(-(lam[1] - lam[0])) * D
    for i in range(2, grid.size):
        h, h_prev = lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
        r = 1.0 if uniform_coefficients else (h / h_prev if ratio_inverted else h_prev / h)
        x0 = x_theta(x, i - 1)
        if heun:
            # diffusers' solver_type="heun": + alpha_t ((e^{-h} - 1)/h + 1) D1, D1 = (x0 - prev) / r, where
            # Algorithm 2 has - alpha_t (e^{-h} - 1) D1 / 2. The two agree to O(h^2) D1 = O(h^3).
            x = lin(i) * x - alpha[i] * np.expm1(-h) * x0 + alpha[i] * (np.expm1(-h) / h + 1) * (x0 - prev) / r
            prev = x0
            continue
        if sign_flipped:
            D = (1 - 1 / (2 * r)) * x0 + 1 / (2 * r) * prev
        else:
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        x = lin(i) * x - alpha[i] * np.expm1(-h) * D
        prev = x0
    return np.asarray(x)


def _pp_ratio_inverted(x_T: ArrayLike, eps_fn: EpsFn, ab_grid: ArrayLike) -> F:
    return _pp_2m(x_T, eps_fn, ab_grid, ratio_inverted=True)


def _pp_sign_flipped(x_T: ArrayLike, eps_fn: EpsFn, ab_grid: ArrayLike) -> F:
    return _pp_2m(x_T, eps_fn, ab_grid, sign_flipped=True)


def _pp_uniform_coefficients(x_T: ArrayLike, eps_fn: EpsFn, ab_grid: ArrayLike) -> F:
    return _pp_2m(x_T, eps_fn, ab_grid, uniform_coefficients=True)


def _pp_empty_history(x_T: ArrayLike, eps_fn: EpsFn, ab_grid: ArrayLike) -> F:
    return _pp_2m(x_T, eps_fn, ab_grid, empty_history=True)


def _pp_heun(x_T: ArrayLike, eps_fn: EpsFn, ab_grid: ArrayLike) -> F:
    return _pp_2m(x_T, eps_fn, ab_grid, heun=True)


def _pp_noise_linear_part(x_T: ArrayLike, eps_fn: EpsFn, ab_grid: ArrayLike) -> F:
    return _pp_2m(x_T, eps_fn, ab_grid, noise_linear_part=True)


def _pp_level_shift(x_T: ArrayLike, eps_fn: EpsFn, ab_grid: ArrayLike) -> F:
    return _pp_2m(x_T, eps_fn, ab_grid, level_shift=True)


def _pp_unchecked(x_T: ArrayLike, eps_fn: EpsFn, ab_grid: ArrayLike) -> F:
    # The right algorithm without any validation: bad grids and network outputs give NaN or nonsense.
    grid = np.atleast_1d(np.asarray(ab_grid, dtype=np.float64)).ravel()
    x = np.asarray(x_T, dtype=np.float64)
    if grid.size < 2:
        return x
    with np.errstate(all="ignore"):
        return _pp_2m(x, lambda x_, ab_: np.asarray(eps_fn(x_, ab_))[..., : x.shape[-1]], grid, validate=False)


MUTANTS = [
    Mutant("dpm1_h_for_expm1", "dpm_solver.first_order", ("equals_ddim", "exact_for_point_mass", "matches_reference"),
           "e^h - 1 truncated to h (still first order, but not DDIM)", {"dpm_solver.first_order": _first_h_for_expm1}),
    Mutant("dpm1_full_log_snr", "dpm_solver.first_order",
           ("equals_ddim", "exact_for_point_mass", "first_order_convergence", "matches_reference"),
           "lambda = log(alpha^2 / sigma^2) (full log-SNR): h doubled", {"dpm_solver.first_order": _first_log_snr}),
    Mutant("dpm1_no_domain_check", "dpm_solver.first_order", ("rejects_out_of_domain",),
           "no checks of levels, shapes or NaN", {"dpm_solver.first_order": _first_unchecked}),
    Mutant("dpm2_h_for_expm1", "dpm_solver.second_order",
           ("second_order_convergence", "reduces_to_first_order", "exact_for_point_mass", "matches_reference"),
           "e^h - 1 truncated to h in the final update", {"dpm_solver.second_order": _second_h_for_expm1}),
    Mutant("dpm2_correction_1_over_r", "dpm_solver.second_order", ("second_order_convergence", "matches_reference"),
           "correction weighted 1/r instead of 1/(2r)", {"dpm_solver.second_order": _second_correction_1_over_r}),
    Mutant("dpm2_sigmoid_lambda", "dpm_solver.second_order",
           ("second_order_convergence", "exact_for_point_mass", "network_levels", "matches_reference"),
           "intermediate level sigmoid(lambda_u) instead of sigmoid(2 lambda_u)",
           {"dpm_solver.second_order": _second_sigmoid_lambda}),
    Mutant("dpm2_no_domain_check", "dpm_solver.second_order", ("rejects_out_of_domain",),
           "no checks of levels, r or the network's output", {"dpm_solver.second_order": _second_unchecked}),
    Mutant("pp_2m_ratio_inverted", "dpm_solver.pp_2m", ("algorithm_2_gaussian", "matches_reference"),
           "r_i = h_i / h_{i-1} (inverted step ratio; still second order, see notes)",
           {"dpm_solver.pp_2m": _pp_ratio_inverted}),
    Mutant("pp_2m_heun_correction", "dpm_solver.pp_2m", ("algorithm_2_gaussian", "matches_reference"),
           "diffusers' solver_type='heun' correction alpha_t ((e^{-h} - 1)/h + 1) D1 in place of Algorithm 2's "
           "-alpha_t (e^{-h} - 1) D1 / 2 (still second order, exact for point masses)",
           {"dpm_solver.pp_2m": _pp_heun}),
    Mutant("pp_2m_sign_flipped", "dpm_solver.pp_2m", ("second_order_convergence", "matches_reference"),
           "2M correction with the wrong sign: D = (1 - 1/(2r)) x0 + 1/(2r) x0_prev",
           {"dpm_solver.pp_2m": _pp_sign_flipped}),
    Mutant("pp_2m_uniform_coefficients", "dpm_solver.pp_2m", ("second_order_convergence", "matches_reference"),
           "fixed-step coefficients 3/2, -1/2 on a non-uniform grid (r_i = 1)",
           {"dpm_solver.pp_2m": _pp_uniform_coefficients}),
    Mutant("pp_2m_empty_history", "dpm_solver.pp_2m",
           ("first_step_is_ddim", "second_order_convergence", "matches_reference"),
           "first step uses the 2M formula with a zero previous x_theta instead of the first-order update",
           {"dpm_solver.pp_2m": _pp_empty_history}),
    Mutant("pp_2m_noise_linear_part", "dpm_solver.pp_2m",
           ("exact_for_point_mass", "first_step_is_ddim", "second_order_convergence", "matches_reference"),
           "linear coefficient alpha_i / alpha_{i-1} (noise-prediction form) with the data-prediction term",
           {"dpm_solver.pp_2m": _pp_noise_linear_part}),
    Mutant("pp_2m_level_off_by_one", "dpm_solver.pp_2m",
           ("network_levels", "exact_for_point_mass", "second_order_convergence", "matches_reference"),
           "network queried at the step's target level ab_grid[i] instead of ab_grid[i-1]",
           {"dpm_solver.pp_2m": _pp_level_shift}),
    Mutant("pp_2m_no_domain_check", "dpm_solver.pp_2m", ("rejects_out_of_domain",),
           "no checks of the grid, shapes or the network's output", {"dpm_solver.pp_2m": _pp_unchecked}),
]
