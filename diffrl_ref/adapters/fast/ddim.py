"""Bridge for family ``ddim``."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ...fast import ddim as F
from ._bridge import Bridge


def sigma(b: Bridge, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float) -> Any:
    cid = "ddim.sigma"
    return b.out(F.sigma(b.sched(betas, cid), b.k(k, cid), b.k(k_prev, cid, "k_prev"), eta))


def posterior(b: Bridge, x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike,
              sigma: ArrayLike) -> Any:
    cid = "ddim.posterior"
    return tuple(b.out(t) for t in F.posterior(b.x(x0, cid, "x0"), b.x(x_k, cid, "x_k"), b.sched(betas, cid),
                                               b.k(k, cid), b.k(k_prev, cid, "k_prev"), b.x(sigma, cid, "sigma")))


def step(b: Bridge, x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float,
         z: ArrayLike) -> Any:
    cid = "ddim.step"
    return b.out(F.step(b.x(x_k, cid, "x_k"), b.x(eps_hat, cid, "eps_hat"), b.sched(betas, cid), b.k(k, cid),
                        b.k(k_prev, cid, "k_prev"), eta, b.x(z, cid, "z")))


def sample(b: Bridge, x_K: ArrayLike, eps_fn: Any, betas: ArrayLike, tau: ArrayLike, eta: float,
           noises: ArrayLike) -> Any:
    cid = "ddim.sample"
    return b.out(F.sample(b.x(x_K, cid, "x_K"), b.net(eps_fn, cid, "eps_fn"), b.sched(betas, cid),
                          np.asarray(tau).tolist(), eta, b.x(noises, cid, "noises")))
