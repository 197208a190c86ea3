"""DPM-Solver and DPM-Solver++ for the probability-flow ODE of a VP diffusion (spec family ``dpm_solver``).

Noise levels are given by the signal rate alpha_bar in (0, 1): alpha = sqrt(alpha_bar),
sigma = sqrt(1 - alpha_bar), half log-SNR lambda = log(alpha / sigma). A step goes from the
noisier level s to the cleaner level t (alpha_bar_s < alpha_bar_t), so h = lambda_t - lambda_s > 0.
The noise network is a callable eps_fn(x, alpha_bar) -> eps_hat with x of shape (B, d) and
alpha_bar a float shared by the batch; it is evaluated only at the levels the algorithms name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from ._checks import Array, as_batch, as_f64, require, same_shape

LevelEpsFn = Callable[[Array, float], ArrayLike]


def _level(alpha_bar: ArrayLike, clause: str, name: str) -> float:
    """A noise level alpha_bar: a finite scalar strictly inside (0, 1)."""
    a = as_f64(alpha_bar, clause, name)
    require(a.ndim == 0, clause, f"{name} must be a scalar, got shape {a.shape}")
    require(0 < float(a) < 1, clause, f"{name} must lie in (0, 1), got {float(a)!r}")
    return float(a)


def _alpha_sigma_lambda(alpha_bar: float) -> tuple[float, float, float]:
    """alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), lambda = log(alpha / sigma)."""
    alpha, sigma = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    return float(alpha), float(sigma), float(np.log(alpha) - np.log(sigma))


def _level_of_lambda(lam: float) -> tuple[float, float, float]:
    """Inverse of lambda: alpha_bar = sigmoid(2 lambda) (1 - alpha_bar = sigmoid(-2 lambda)), alpha, sigma."""
    ab = 1.0 / (1.0 + np.exp(-2.0 * lam))
    return float(ab), float(np.sqrt(ab)), float(np.sqrt(1.0 / (1.0 + np.exp(2.0 * lam))))


def _expm1(h: float) -> float:
    """e^h - 1 without cancellation for small h."""
    return float(np.expm1(h))


def _eval(eps_fn: LevelEpsFn, x: Array, alpha_bar: float, clause: str) -> Array:
    """Call the network and check its output: finite, shaped like x."""
    e = as_f64(eps_fn(x, alpha_bar), clause, "eps_fn(x, alpha_bar)")
    same_shape(clause, x=x, eps=e)
    return e


def first_order(x: ArrayLike, eps_hat: ArrayLike, ab_s: float, ab_t: float) -> Array:
    """Clause ``dpm_solver.first_order``: x_t = (a_t / a_s) x_s - s_t (e^h - 1) eps_hat (DPM-Solver-1)."""
    cid = "dpm_solver.first_order"
    xs = as_batch(x, cid, "x")
    e = as_batch(eps_hat, cid, "eps_hat")
    same_shape(cid, x=xs, eps_hat=e)
    ab_s, ab_t = _level(ab_s, cid, "ab_s"), _level(ab_t, cid, "ab_t")
    require(ab_s < ab_t, cid, f"a denoising step needs ab_s < ab_t, got {ab_s!r} >= {ab_t!r}")
    a_s, _, lam_s = _alpha_sigma_lambda(ab_s)
    a_t, s_t, lam_t = _alpha_sigma_lambda(ab_t)
    h = lam_t - lam_s
    return (a_t / a_s) * xs - s_t * _expm1(h) * e


def second_order(x: ArrayLike, eps_fn: LevelEpsFn, ab_s: float, ab_t: float, r: float = 0.5) -> Array:
    """Clause ``dpm_solver.second_order``: one step of singlestep DPM-Solver-2 (intermediate at lambda_s + r h)."""
    cid = "dpm_solver.second_order"
    xs = as_batch(x, cid, "x")
    ab_s, ab_t = _level(ab_s, cid, "ab_s"), _level(ab_t, cid, "ab_t")
    require(ab_s < ab_t, cid, f"a denoising step needs ab_s < ab_t, got {ab_s!r} >= {ab_t!r}")
    r = float(as_f64(r, cid, "r"))
    require(0 < r <= 1, cid, f"r must lie in (0, 1], got {r!r}")
    a_s, _, lam_s = _alpha_sigma_lambda(ab_s)
    a_t, s_t, lam_t = _alpha_sigma_lambda(ab_t)
    h = lam_t - lam_s
    ab_u, a_u, s_u = _level_of_lambda(lam_s + r * h)
    eps_s = _eval(eps_fn, xs, ab_s, cid)
    u = (a_u / a_s) * xs - s_u * _expm1(r * h) * eps_s
    eps_u = _eval(eps_fn, u, ab_u, cid)
    return (a_t / a_s) * xs - s_t * _expm1(h) * eps_s - s_t / (2 * r) * _expm1(h) * (eps_u - eps_s)


def pp_2m(x_T: ArrayLike, eps_fn: LevelEpsFn, ab_grid: ArrayLike) -> Array:
    """Clause ``dpm_solver.pp_2m``: DPM-Solver++(2M) from ab_grid[0] to ab_grid[-1], data prediction."""
    cid = "dpm_solver.pp_2m"
    x = as_batch(x_T, cid, "x_T")
    grid = as_f64(ab_grid, cid, "ab_grid")
    require(grid.ndim == 1 and grid.size >= 2, cid, f"ab_grid must have shape (M+1,) with M >= 1, got {grid.shape}")
    require(bool(np.all((grid > 0) & (grid < 1))), cid, "every alpha_bar in ab_grid must lie in (0, 1)")
    require(bool(np.all(np.diff(grid) > 0)), cid, "ab_grid must be strictly increasing (noise decreasing)")
    levels = [_alpha_sigma_lambda(float(ab)) for ab in grid]
    require(bool(np.all(np.diff([lam for _, _, lam in levels]) > 0)), cid,
            "ab_grid levels too close: lambda must increase strictly")

    def data_pred(x: Array, i: int) -> Array:
        """x_theta = (x - sigma eps_theta(x)) / alpha at level i."""
        alpha, sigma, _ = levels[i]
        return (x - sigma * _eval(eps_fn, x, float(grid[i]), cid)) / alpha

    x0_prev = data_pred(x, 0)
    _, s_0, lam_0 = levels[0]
    a_1, s_1, lam_1 = levels[1]
    x = (s_1 / s_0) * x - a_1 * _expm1(-(lam_1 - lam_0)) * x0_prev
    for i in range(2, grid.size):
        _, s_prev, lam_prev = levels[i - 1]
        a_i, s_i, lam_i = levels[i]
        h, h_prev = lam_i - lam_prev, lam_prev - levels[i - 2][2]
        r = h_prev / h
        x0 = data_pred(x, i - 1)
        D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = (s_i / s_prev) * x - a_i * _expm1(-h) * D
        x0_prev = x0
    return x
