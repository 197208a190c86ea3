"""Bridge for family ``madiff``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import madiff as F
from ._bridge import Bridge


def guided_eps(b: Bridge, x_k: ArrayLike, k: ArrayLike, y: ArrayLike, eps_fn: Any, omega: float,
               y_null: ArrayLike | None = None) -> Any:
    cid = "madiff.guided_eps"
    return b.out(F.guided_eps(b.x(x_k, cid, "x_k"), b.k(k, cid), b.x(y, cid, "y"), b.net(eps_fn, cid, "eps_fn"),
                              omega, b.opt(y_null, cid, "y_null")))


def inverse_dynamics(b: Bridge, x: ArrayLike, inv_fns: Any) -> Any:
    cid = "madiff.inverse_dynamics"
    models = b.net(inv_fns, cid, "inv_fn") if callable(inv_fns) else [
        b.net(f, cid, "inv_fn") if callable(f) else f for f in inv_fns]
    return b.out(F.inverse_dynamics(b.x(x, cid, "x"), models))


def decentralised_action(b: Bridge, x0: ArrayLike, i: int, inv_fn: Any, t: int = 0) -> Any:
    cid = "madiff.decentralised_action"
    return b.out(F.decentralised_action(b.x(x0, cid, "x0"), i, b.net(inv_fn, cid, "inv_fn"), t))
