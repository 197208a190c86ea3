"""DPM-Solver and DPM-Solver++ on the production path (family ``dpm_solver``).

Lu et al. (NeurIPS 2022; arXiv:2211.01095). Noise levels are signal rates alpha_bar in (0, 1);
alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), lambda = log(alpha / sigma). Step
coefficients depend only on the levels, so they are Python floats computed in float64 and the
tensor work per step is a few fused multiply-adds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import DomainError, batch, require, require_finite, same_shape, scalar
from .ddim import tau_steps
from .schedule import Schedule

#: eps_fn(x (B, d), alpha_bar) -> eps_hat (B, d), alpha_bar a float shared by the batch
LevelEpsFn = Callable[[Tensor, float], Tensor]


def _level(ab: float, cid: str, name: str) -> float:
    v = scalar(ab, cid, name)
    require(0 < v < 1, cid, f"{name} must lie in (0, 1), got {v!r}")
    return v


def _asl(ab: float) -> tuple[float, float, float]:
    """alpha, sigma, lambda of a level alpha_bar (lambda = (log ab - log1p(-ab)) / 2)."""
    return math.sqrt(ab), math.sqrt(1.0 - ab), 0.5 * (math.log(ab) - math.log1p(-ab))


def _levels(ab_s: float, ab_t: float, cid: str) -> tuple[float, float]:
    s, t = _level(ab_s, cid, "ab_s"), _level(ab_t, cid, "ab_t")
    require(s < t, cid, f"a denoising step needs ab_s < ab_t, got {s!r} >= {t!r}")
    return s, t


def _eval(eps_fn: Callable[[Tensor, float], Tensor], x: Tensor, level: float, cid: str) -> Tensor:
    e = eps_fn(x, level)
    same_shape(cid, x=x, eps=e)
    require_finite(e, cid, "eps_fn(x, alpha_bar) must be finite")
    return e


def first_order(x: Tensor, eps_hat: Tensor, ab_s: float, ab_t: float) -> Tensor:
    """Clause ``dpm_solver.first_order``: x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps_hat."""
    cid = "dpm_solver.first_order"
    batch(x, cid, "x")
    batch(eps_hat, cid, "eps_hat")
    same_shape(cid, x=x, eps_hat=eps_hat)
    s, t = _levels(ab_s, ab_t, cid)
    a_s, _, lam_s = _asl(s)
    a_t, s_t, lam_t = _asl(t)
    return torch.add(x * (a_t / a_s), eps_hat, alpha=-s_t * math.expm1(lam_t - lam_s))


def second_order(x: Tensor, eps_fn: LevelEpsFn, ab_s: float, ab_t: float, r: float = 0.5) -> Tensor:
    """Clause ``dpm_solver.second_order``: singlestep DPM-Solver-2 with the intermediate level at lambda_s + r h."""
    cid = "dpm_solver.second_order"
    batch(x, cid, "x")
    s, t = _levels(ab_s, ab_t, cid)
    r = scalar(r, cid, "r")
    require(0 < r <= 1, cid, f"r must lie in (0, 1], got {r!r}")
    a_s, _, lam_s = _asl(s)
    a_t, s_t, lam_t = _asl(t)
    h = lam_t - lam_s
    lam_u = lam_s + r * h
    ab_u = 1.0 / (1.0 + math.exp(-2.0 * lam_u))
    a_u, s_u = math.sqrt(ab_u), math.sqrt(1.0 / (1.0 + math.exp(2.0 * lam_u)))
    eps_s = _eval(eps_fn, x, s, cid)
    u = torch.add(x * (a_u / a_s), eps_s, alpha=-s_u * math.expm1(r * h))
    eps_u = _eval(eps_fn, u, ab_u, cid)
    c = s_t * math.expm1(h)
    return x * (a_t / a_s) - (c * (1 - 1 / (2 * r))) * eps_s - (c / (2 * r)) * eps_u


class PP2M:
    """DPM-Solver++(2M) over a fixed grid of levels, data prediction (Lu et al. 2022b, Alg. 2).

    ``grid`` is increasing in alpha_bar; a last level of exactly 1.0 (sigma = 0, the clean data)
    is reached by a first-order step, which returns the last x_0 prediction (as diffusers does
    with ``final_sigmas_type="zero"``). Each step is x <- A x + B x0 + C x0_prev with Python-float
    coefficients.
    """

    def __init__(self, grid: Sequence[float], cid: str = "dpm_solver.pp_2m") -> None:
        require(len(grid) >= 2, cid, f"ab_grid must have shape (M+1,) with M >= 1, got {len(grid)} levels")
        g = [float(v) for v in grid]
        require(all(math.isfinite(v) for v in g), cid, "ab_grid must be finite (no NaN or inf)")
        inner, last = g[:-1], g[-1]
        require(all(0 < v < 1 for v in inner) and 0 < last <= 1, cid, "every alpha_bar in ab_grid must lie in (0, 1)")
        require(all(a < b for a, b in zip(g, g[1:], strict=False)), cid,
                "ab_grid must be strictly increasing (noise decreasing)")
        lv = [_asl(v) for v in g if v < 1.0]  # lambda is +inf at alpha_bar = 1
        require(all(a[2] < b[2] for a, b in zip(lv, lv[1:], strict=False)), cid,
                "ab_grid levels too close: lambda must increase strictly")
        self.grid = g
        self.x0_coef = [(1.0 / a, -s / a) for a, s, _ in lv[: len(inner)]]  # x0 = (x - sigma eps) / alpha
        self.steps: list[tuple[float, float, float]] = []  # (A, B, C) of the step into level i
        for i in range(1, len(g)):
            _, s_prev, lam_prev = lv[i - 1]
            if g[i] == 1.0:  # sigma_t = 0, lambda_t = inf: x_t = x0 (first order)
                self.steps.append((0.0, 1.0, 0.0))
                continue
            a_i, s_i, lam_i = lv[i]
            h = lam_i - lam_prev
            phi = -a_i * math.expm1(-h)
            if i == 1:
                self.steps.append((s_i / s_prev, phi, 0.0))
            else:
                r = (lam_prev - lv[i - 2][2]) / h
                self.steps.append((s_i / s_prev, phi * (1 + 1 / (2 * r)), -phi / (2 * r)))

    def __call__(self, x: Tensor, eps_at: Callable[[Tensor, int], Tensor]) -> Tensor:
        """Integrate from grid[0] to grid[-1]; eps_at(x, i) is the network at level i."""
        x0_prev = x
        for i, (A, B, C) in enumerate(self.steps):
            c_x, c_e = self.x0_coef[i]
            x0 = torch.add(x * c_x, eps_at(x, i), alpha=c_e)
            x = x0 if A == 0.0 and C == 0.0 and B == 1.0 else torch.add(x * A, x0, alpha=B)
            if C:
                x = torch.add(x, x0_prev, alpha=C)
            x0_prev = x0
        return x


def pp_2m(x_T: Tensor, eps_fn: LevelEpsFn, ab_grid: Sequence[float] | Tensor) -> Tensor:
    """Clause ``dpm_solver.pp_2m``: DPM-Solver++(2M) from ab_grid[0] to ab_grid[-1] (levels in (0, 1))."""
    cid = "dpm_solver.pp_2m"
    batch(x_T, cid, "x_T")
    g = torch.as_tensor(ab_grid, dtype=torch.float64)
    require(g.ndim == 1 and g.numel() >= 2, cid, f"ab_grid must have shape (M+1,) with M >= 1, got {tuple(g.shape)}")
    grid = [float(v) for v in g.tolist()]
    require(all(0 < v < 1 for v in grid), cid, "every alpha_bar in ab_grid must lie in (0, 1)")
    solver = PP2M(grid, cid)
    return solver(x_T, lambda x, i: _eval(eps_fn, x, grid[i], cid))


class DPMSolverSampler:
    """DPM-Solver++(2M) for a discrete-step network eps_fn(x, k) on the sub-sequence tau of a schedule.

    Levels are alpha_bar_{tau_S} < ... < alpha_bar_{tau_1} < alpha_bar_0 = 1; one network call per
    step of tau, the last step first order onto the clean sample.
    """

    def __init__(self, sched: Schedule, tau: Sequence[int] | Tensor) -> None:
        cid = "dpm_solver.pp_2m"
        self.tau = tau_steps(tau, sched.K, cid)
        ks = list(reversed(self.tau))
        self.ks = ks
        grid = [sched.ab64(k) for k in ks] + [1.0]
        try:
            self.solver = PP2M(grid, cid)
        except DomainError as exc:
            raise DomainError(cid, f"schedule levels on tau: {exc.condition}") from None
        self.sched = sched
        self.k_tensors = [torch.tensor(k, device=sched.device) for k in ks]

    def __call__(self, x_K: Tensor, eps_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        cid = "dpm_solver.pp_2m"
        batch(x_K, cid, "x_K")
        B = x_K.shape[0]
        x = self.solver(x_K, lambda x, i: eps_fn(x, self.k_tensors[i].expand(B)))
        require_finite(x, cid, "eps_fn returned non-finite values")
        return x
