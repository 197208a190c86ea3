"""Bridge for family ``diffuser``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from ...fast import diffuser as F
from ._bridge import Bridge


def _mask(b: Bridge, mask: ArrayLike) -> Tensor:
    """The mask as a tensor of its own dtype (a non-boolean mask reaches the production check)."""
    return torch.as_tensor(np.asarray(mask), device=b.device)


def _grad(b: Bridge, grad_J: Any, cid: str) -> Any:
    return None if grad_J is None else b.net(grad_J, cid, "grad_J")


def trajectory(b: Bridge, states: ArrayLike, actions: ArrayLike) -> Any:
    cid = "diffuser.trajectory"
    return b.out(F.trajectory(b.x(states, cid, "states"), b.x(actions, cid, "actions")))


def split_trajectory(b: Bridge, tau: ArrayLike, state_dim: int) -> Any:
    cid = "diffuser.split_trajectory"
    return tuple(b.out(t) for t in F.split_trajectory(b.x(tau, cid, "tau"), state_dim))


def inpaint(b: Bridge, tau: ArrayLike, mask: ArrayLike, values: ArrayLike) -> Any:
    cid = "diffuser.inpaint"
    return b.out(F.inpaint(b.x(tau, cid, "tau"), _mask(b, mask), b.x(values, cid, "values")))


def guided_step(b: Bridge, tau_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                grad_J: Any = None, scale: float = 1.0, variance: str = "beta") -> Any:
    cid = "diffuser.guided_step"
    return b.out(F.guided_step(b.x(tau_k, cid, "tau_k"), b.x(eps_hat, cid, "eps_hat"), b.sched(betas, cid),
                               b.k(k, cid), b.x(z, cid, "z"), _grad(b, grad_J, cid), scale, variance))


def sample(b: Bridge, tau_K: ArrayLike, eps_fn: Any, betas: ArrayLike, z: ArrayLike, grad_J: Any = None,
           scale: float = 1.0, mask: ArrayLike | None = None, values: ArrayLike | None = None,
           variance: str = "beta") -> Any:
    cid = "diffuser.sample"
    return b.out(F.sample(b.x(tau_K, cid, "tau_K"), b.net(eps_fn, cid, "eps_fn"), b.sched(betas, cid),
                          b.x(z, cid, "z"), _grad(b, grad_J, cid), scale, None if mask is None else _mask(b, mask),
                          b.opt(values, cid, "values"), variance))
