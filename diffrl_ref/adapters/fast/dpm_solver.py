"""Bridge for family ``dpm_solver``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import dpm_solver as F
from ._bridge import Bridge


def first_order(b: Bridge, x: ArrayLike, eps_hat: ArrayLike, ab_s: float, ab_t: float) -> Any:
    cid = "dpm_solver.first_order"
    return b.out(F.first_order(b.x(x, cid, "x"), b.x(eps_hat, cid, "eps_hat"), ab_s, ab_t))


def second_order(b: Bridge, x: ArrayLike, eps_fn: Any, ab_s: float, ab_t: float, r: float = 0.5) -> Any:
    cid = "dpm_solver.second_order"
    return b.out(F.second_order(b.x(x, cid, "x"), b.net(eps_fn, cid, "eps_fn"), ab_s, ab_t, r))


def pp_2m(b: Bridge, x_T: ArrayLike, eps_fn: Any, ab_grid: ArrayLike) -> Any:
    cid = "dpm_solver.pp_2m"
    return b.out(F.pp_2m(b.x(x_T, cid, "x_T"), b.net(eps_fn, cid, "eps_fn"), b.x64(ab_grid, cid, "ab_grid")))
