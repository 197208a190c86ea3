"""Guidance on the production path (family ``guidance``).

Classifier guidance (Dhariwal and Nichol 2021) and classifier-free guidance (Ho and Salimans
2022) in the decks' omega convention and in Ho and Salimans' w = omega - 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import batch, require, require_values, same_shape, scalar


def classifier(mean: Tensor, var: Tensor, grad_log_p: Tensor, s: float) -> Tensor:
    """Clause ``guidance.classifier``: mu + s Sigma grad_x log p_phi(y | x); var is (B, 1) or (B, d)."""
    cid = "guidance.classifier"
    batch(mean, cid, "mean")
    batch(grad_log_p, cid, "grad_log_p")
    same_shape(cid, mean=mean, grad_log_p=grad_log_p)
    B, d = mean.shape
    require(tuple(var.shape) in ((B, 1), (B, d)), cid,
            f"var must have shape ({B}, 1) or ({B}, {d}), got {tuple(var.shape)}")
    require_values(torch.isfinite(var) & (var >= 0), cid, "var is a (diagonal) covariance and must be finite and >= 0")
    return torch.addcmul(mean, var, grad_log_p, value=scalar(s, cid, "s", 0.0))


def _pair(u: Tensor, c: Tensor, cid: str) -> None:
    batch(u, cid, "eps_uncond")
    batch(c, cid, "eps_cond")
    same_shape(cid, eps_uncond=u, eps_cond=c)


def cfg(eps_uncond: Tensor, eps_cond: Tensor, omega: float) -> Tensor:
    """Clause ``guidance.cfg``: eps(x, empty) + omega (eps(x, y) - eps(x, empty))."""
    cid = "guidance.cfg"
    _pair(eps_uncond, eps_cond, cid)
    return torch.lerp(eps_uncond, eps_cond, scalar(omega, cid, "omega", 0.0))


def cfg_ho_salimans(eps_uncond: Tensor, eps_cond: Tensor, w: float) -> Tensor:
    """Clause ``guidance.cfg_ho_salimans``: (1 + w) eps(x, y) - w eps(x, empty)."""
    cid = "guidance.cfg_ho_salimans"
    _pair(eps_uncond, eps_cond, cid)
    w_ = scalar(w, cid, "w", -1.0)
    return torch.lerp(eps_uncond, eps_cond, 1.0 + w_)
