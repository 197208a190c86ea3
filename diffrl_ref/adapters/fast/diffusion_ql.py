"""Bridge for family ``diffusion_ql``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import diffusion_ql as F
from ._bridge import Bridge


def bc_loss(b: Bridge, a: ArrayLike, s: ArrayLike, eps_fn: Any, betas: ArrayLike, k: ArrayLike,
            eps: ArrayLike) -> Any:
    cid = "diffusion_ql.bc_loss"
    return b.out(F.bc_loss(b.x(a, cid, "a"), b.x(s, cid, "s"), b.net(eps_fn, cid, "eps_fn"), b.sched(betas, cid),
                           b.k(k, cid), b.x(eps, cid, "eps")))


def sample_action(b: Bridge, s: ArrayLike, eps_fn: Any, betas: ArrayLike, a_K: ArrayLike, noises: ArrayLike,
                  max_action: float | None = 1.0, variance: str = "beta_tilde") -> Any:
    cid = "diffusion_ql.sample_action"
    return b.out(F.sample_action(b.x(s, cid, "s"), b.net(eps_fn, cid, "eps_fn"), b.sched(betas, cid),
                                 b.x(a_K, cid, "a_K"), b.x(noises, cid, "noises"), max_action, variance))


def q_loss(b: Bridge, q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> Any:
    cid = "diffusion_ql.q_loss"
    return b.out(F.q_loss(b.x(q, cid, "q"), b.x(q_norm, cid, "q_norm"), eta))


def q_loss_grad(b: Bridge, q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> Any:
    cid = "diffusion_ql.q_loss_grad"
    return tuple(b.out(g) for g in F.q_loss_grad(b.x(q, cid, "q"), b.x(q_norm, cid, "q_norm"), eta))


def loss(b: Bridge, a: ArrayLike, s: ArrayLike, eps_fn: Any, betas: ArrayLike, k: ArrayLike, eps: ArrayLike,
         a_K: ArrayLike, noises: ArrayLike, q_fn: Any, q_norm_fn: Any, eta: float = 1.0,
         max_action: float | None = 1.0, variance: str = "beta_tilde") -> Any:
    cid = "diffusion_ql.loss"
    return b.out(F.loss(b.x(a, cid, "a"), b.x(s, cid, "s"), b.net(eps_fn, cid, "eps_fn"), b.sched(betas, cid),
                        b.k(k, cid), b.x(eps, cid, "eps"), b.x(a_K, cid, "a_K"), b.x(noises, cid, "noises"),
                        b.net(q_fn, cid, "q_fn"), b.net(q_norm_fn, cid, "q_norm_fn"), eta, max_action, variance))
