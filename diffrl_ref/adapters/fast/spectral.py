"""Bridge for family ``spectral``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import spectral as F
from ._bridge import Bridge


def transition(b: Bridge, phi: ArrayLike, mu: ArrayLike) -> Any:
    cid = "spectral.transition"
    return b.out(F.transition(b.x(phi, cid, "phi"), b.x(mu, cid, "mu")))


def q_function(b: Bridge, r: ArrayLike, phi: ArrayLike, mu: ArrayLike, v: ArrayLike, gamma: float) -> Any:
    cid = "spectral.q_function"
    return b.out(F.q_function(b.x(r, cid, "r"), b.x(phi, cid, "phi"), b.x(mu, cid, "mu"), b.x(v, cid, "v"), gamma))
