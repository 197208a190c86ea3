"""Bridge for family ``guidance``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import guidance as F
from ._bridge import Bridge


def classifier(b: Bridge, mean: ArrayLike, var: ArrayLike, grad_log_p: ArrayLike, s: float) -> Any:
    cid = "guidance.classifier"
    return b.out(F.classifier(b.x(mean, cid, "mean"), b.x(var, cid, "var"), b.x(grad_log_p, cid, "grad_log_p"), s))


def cfg(b: Bridge, eps_uncond: ArrayLike, eps_cond: ArrayLike, omega: float) -> Any:
    cid = "guidance.cfg"
    return b.out(F.cfg(b.x(eps_uncond, cid, "eps_uncond"), b.x(eps_cond, cid, "eps_cond"), omega))


def cfg_ho_salimans(b: Bridge, eps_uncond: ArrayLike, eps_cond: ArrayLike, w: float) -> Any:
    cid = "guidance.cfg_ho_salimans"
    return b.out(F.cfg_ho_salimans(b.x(eps_uncond, cid, "eps_uncond"), b.x(eps_cond, cid, "eps_cond"), w))
