"""Bridge for family ``decision_diffuser``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import decision_diffuser as F
from ._bridge import Bridge


def state_trajectory(b: Bridge, states: ArrayLike, t: int, H: int) -> Any:
    cid = "decision_diffuser.state_trajectory"
    return b.out(F.state_trajectory(b.x(states, cid, "states"), t, H))


def guided_eps(b: Bridge, x_k: ArrayLike, k: ArrayLike, y: ArrayLike, eps_fn: Any, omega: float,
               y_null: ArrayLike | None = None) -> Any:
    cid = "decision_diffuser.guided_eps"
    return b.out(F.guided_eps(b.x(x_k, cid, "x_k"), b.k(k, cid), b.x(y, cid, "y"), b.net(eps_fn, cid, "eps_fn"),
                              omega, b.opt(y_null, cid, "y_null")))


def inverse_dynamics(b: Bridge, x: ArrayLike, inv_fn: Any) -> Any:
    cid = "decision_diffuser.inverse_dynamics"
    return b.out(F.inverse_dynamics(b.x(x, cid, "x"), b.net(inv_fn, cid, "inv_fn")))


def inverse_dynamics_loss(b: Bridge, states: ArrayLike, actions: ArrayLike, next_states: ArrayLike,
                          inv_fn: Any) -> Any:
    cid = "decision_diffuser.inverse_dynamics_loss"
    return b.out(F.inverse_dynamics_loss(b.x(states, cid, "states"), b.x(actions, cid, "actions"),
                                         b.x(next_states, cid, "next_states"), b.net(inv_fn, cid, "inv_fn")))


def dropout_loss(b: Bridge, x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike, y: ArrayLike,
                 b_drop: ArrayLike, eps_fn: Any, y_null: ArrayLike | None = None) -> Any:
    cid = "decision_diffuser.dropout_loss"
    return b.out(F.dropout_loss(b.x(x0, cid, "x0"), b.x(eps, cid, "eps"), b.sched(betas, cid), b.k(k, cid),
                                b.x(y, cid, "y"), b.x(b_drop, cid, "b"), b.net(eps_fn, cid, "eps_fn"),
                                b.opt(y_null, cid, "y_null")))
