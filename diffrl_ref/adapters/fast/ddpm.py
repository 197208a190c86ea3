"""Bridge for family ``ddpm``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import ddpm as F
from ._bridge import Bridge


def forward_kernel(b: Bridge, x_prev: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    cid = "ddpm.forward_kernel"
    return tuple(b.out(t) for t in F.forward_kernel(b.x(x_prev, cid, "x_prev"), b.sched(betas, cid), b.k(k, cid)))


def marginal(b: Bridge, x0: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    cid = "ddpm.marginal"
    return tuple(b.out(t) for t in F.marginal(b.x(x0, cid, "x0"), b.sched(betas, cid), b.k(k, cid)))


def noise(b: Bridge, x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    cid = "ddpm.noise"
    return b.out(F.noise(b.x(x0, cid, "x0"), b.x(eps, cid, "eps"), b.sched(betas, cid), b.k(k, cid)))


def x0_from_eps(b: Bridge, x_k: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    cid = "ddpm.x0_from_eps"
    return b.out(F.x0_from_eps(b.x(x_k, cid, "x_k"), b.x(eps, cid, "eps"), b.sched(betas, cid), b.k(k, cid)))


def posterior(b: Bridge, x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    cid = "ddpm.posterior"
    return tuple(b.out(t) for t in F.posterior(b.x(x0, cid, "x0"), b.x(x_k, cid, "x_k"), b.sched(betas, cid),
                                               b.k(k, cid)))


def reverse_step(b: Bridge, x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                 variance: str = "beta") -> Any:
    cid = "ddpm.reverse_step"
    return b.out(F.reverse_step(b.x(x_k, cid, "x_k"), b.x(eps_hat, cid, "eps_hat"), b.sched(betas, cid),
                                b.k(k, cid), b.x(z, cid, "z"), variance))


def simple_loss(b: Bridge, eps: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike,
                weighting: str = "simple", sigma2: str | ArrayLike | None = None) -> Any:
    cid = "ddpm.simple_loss"
    s2 = sigma2 if sigma2 is None or isinstance(sigma2, str) else b.x(sigma2, cid, "sigma2")
    return b.out(F.simple_loss(b.x(eps, cid, "eps"), b.x(eps_hat, cid, "eps_hat"), b.sched(betas, cid),
                               b.k(k, cid), weighting, s2))


def vlb(b: Bridge, x0: ArrayLike, eps_fn: Any, betas: ArrayLike, eps: ArrayLike, variance: str = "beta") -> Any:
    cid = "ddpm.vlb"
    return b.out(F.vlb(b.x(x0, cid, "x0"), b.net(eps_fn, cid, "eps_fn"), b.sched(betas, cid), b.x(eps, cid, "eps"),
                       variance))
