"""Decision Diffuser: return-conditioned diffusion over state trajectories (spec family ``decision_diffuser``).

Ajay, Du, Gupta, Tenenbaum, Jaakkola and Agrawal, Is Conditional Generative Modeling All You
Need for Decision-Making?, ICLR 2023. The model diffuses the H future states only, shape
(B, H, ds); it is steered by classifier-free guidance on a condition y (a return, a
constraint, a skill), trained with condition dropout, and acts through an inverse dynamics
model a_t = f_phi(s_t, s_{t+1}). The empty condition is an explicit array ``y_null``
(zeros unless given), so (1 - b) y + b y_null is computable as written.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import ddpm, guidance
from ._checks import Array, DomainError, as_batch, as_f64, require, same_shape

#: A conditional noise-prediction network: eps_fn(x (B, H, ds), k (B,) int, y (B, dy)) -> (B, H, ds).
CondEpsFn = Callable[[Array, NDArray[np.int64], Array], ArrayLike]

#: An inverse dynamics model: inv_fn(s_t (n, ds), s_next (n, ds)) -> a_t (n, da).
InvFn = Callable[[Array, Array], ArrayLike]


def _states(x: ArrayLike, cid: str, name: str) -> Array:
    """A batch of state sequences (B, H, ds) with every axis non-empty."""
    a = as_f64(x, cid, name)
    require(a.ndim == 3, cid, f"{name} must have shape (B, H, ds), got shape {a.shape}")
    require(min(a.shape) >= 1, cid, f"{name} must have non-empty axes, got shape {a.shape}")
    return a


def _int(v: object, cid: str, name: str, lo: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
        raise DomainError(cid, f"{name} must be an integer, got {v!r}")
    require(int(v) >= lo, cid, f"{name} must be >= {lo}, got {v!r}")
    return int(v)


def _omega(omega: float, cid: str) -> float:
    w = as_f64(omega, cid, "omega")
    require(w.ndim == 0 and float(w) >= 0, cid, f"omega must be a scalar >= 0, got {omega!r}")
    return float(w)


def _conditions(y: ArrayLike, y_null: ArrayLike | None, B: int, cid: str) -> tuple[Array, Array]:
    """The condition y (B, dy) and the empty condition (zeros unless given), same shape."""
    c = as_batch(y, cid, "y")
    require(c.shape[0] == B, cid, f"y must have {B} rows (one per sample), got shape {c.shape}")
    empty = np.zeros_like(c) if y_null is None else as_batch(y_null, cid, "y_null")
    same_shape(cid, y=c, y_null=empty)
    return c, empty


def _steps(k: ArrayLike, B: int, cid: str) -> NDArray[np.int64]:
    """Diffusion step(s) k >= 1, as one int per row (the network's argument)."""
    a = np.asarray(k)
    require(a.dtype.kind in "iu", cid, f"k must be an integer, got {k!r}")
    require(a.ndim == 0 or a.shape == (B,), cid, f"k must be a scalar or shape ({B},), got {a.shape}")
    require(bool(np.all(a >= 1)), cid, f"k must be >= 1, got {k!r}")
    return np.broadcast_to(a.astype(np.int64), (B,)).copy()


def _network(eps_fn: CondEpsFn, x: Array, steps: NDArray[np.int64], y: Array, cid: str) -> Array:
    out = as_f64(eps_fn(x.copy(), steps.copy(), y.copy()), cid, "eps_fn output")
    require(out.shape == x.shape, cid, f"eps_fn must return shape {x.shape}, got {out.shape}")
    return out


def state_trajectory(states: ArrayLike, t: int, H: int) -> Array:
    """Clause ``decision_diffuser.state_trajectory``: x(tau) = (s_t, s_{t+1}, ..., s_{t+H-1})."""
    cid = "decision_diffuser.state_trajectory"
    s = _states(states, cid, "states")
    start, length = _int(t, cid, "t", 0), _int(H, cid, "H", 1)
    require(start + length <= s.shape[1], cid,
            f"the window t..t+H-1 = {start}..{start + length - 1} must lie inside the {s.shape[1]} recorded states")
    return s[:, start:start + length].copy()


def guided_eps(
    x_k: ArrayLike,
    k: ArrayLike,
    y: ArrayLike,
    eps_fn: CondEpsFn,
    omega: float,
    y_null: ArrayLike | None = None,
) -> Array:
    """Clause ``decision_diffuser.guided_eps``: eps(x_k, empty, k) + omega (eps(x_k, y, k) - eps(x_k, empty, k))."""
    cid = "decision_diffuser.guided_eps"
    x = _states(x_k, cid, "x_k")
    B = x.shape[0]
    steps = _steps(k, B, cid)
    c, empty = _conditions(y, y_null, B, cid)
    w = _omega(omega, cid)
    eps_uncond = _network(eps_fn, x, steps, empty, cid)
    eps_cond = _network(eps_fn, x, steps, c, cid)
    return guidance.cfg(eps_uncond.reshape(B, -1), eps_cond.reshape(B, -1), w).reshape(x.shape)


def inverse_dynamics(x: ArrayLike, inv_fn: InvFn) -> Array:
    """Clause ``decision_diffuser.inverse_dynamics``: a_t = f_phi(s_t, s_{t+1}) for t = 0..H-2, shape (B, H-1, da)."""
    cid = "decision_diffuser.inverse_dynamics"
    s = _states(x, cid, "x")
    B, H, ds = s.shape
    require(H >= 2, cid, f"a plan needs H >= 2 states to define an action, got H = {H}")
    s_t, s_next = s[:, :-1].reshape(-1, ds), s[:, 1:].reshape(-1, ds)
    a = as_f64(inv_fn(s_t.copy(), s_next.copy()), cid, "inv_fn output")
    require(a.ndim == 2 and a.shape[0] == B * (H - 1) and a.shape[1] >= 1, cid,
            f"inv_fn must return shape ({B * (H - 1)}, da), got {a.shape}")
    return a.reshape(B, H - 1, a.shape[1])


def inverse_dynamics_loss(states: ArrayLike, actions: ArrayLike, next_states: ArrayLike, inv_fn: InvFn) -> Array:
    """Clause ``decision_diffuser.inverse_dynamics_loss``: ||a - f_phi(s, s')||^2 per transition, shape (B,)."""
    cid = "decision_diffuser.inverse_dynamics_loss"
    s, a, s_next = as_batch(states, cid, "states"), as_batch(actions, cid, "actions"), as_batch(
        next_states, cid, "next_states")
    same_shape(cid, states=s, next_states=s_next)
    require(a.shape[0] == s.shape[0], cid, f"actions must have {s.shape[0]} rows, got shape {a.shape}")
    a_hat = as_f64(inv_fn(s.copy(), s_next.copy()), cid, "inv_fn output")
    same_shape(cid, actions=a, inv_fn_output=a_hat)
    loss: Array = np.sum((a - a_hat) ** 2, axis=1)
    return loss


def dropout_loss(
    x0: ArrayLike,
    eps: ArrayLike,
    betas: ArrayLike,
    k: ArrayLike,
    y: ArrayLike,
    b: ArrayLike,
    eps_fn: CondEpsFn,
    y_null: ArrayLike | None = None,
) -> Array:
    """Clause ``decision_diffuser.dropout_loss``: ||eps - eps_theta(x_k, (1 - b) y + b empty, k)||^2 per sample."""
    cid = "decision_diffuser.dropout_loss"
    x, e = _states(x0, cid, "x0"), _states(eps, cid, "eps")
    same_shape(cid, x0=x, eps=e)
    B = x.shape[0]
    _, _, _, steps = ddpm._schedule(betas, k, B, cid)
    c, empty = _conditions(y, y_null, B, cid)
    drop = as_f64(b, cid, "b")
    require(drop.shape == (B,), cid, f"b must have shape ({B},), got {drop.shape}")
    require(bool(np.all((drop == 0) | (drop == 1))), cid, "every b must be 0 or 1 (a Bernoulli draw)")
    y_in = (1.0 - drop)[:, None] * c + drop[:, None] * empty
    x_k = ddpm.noise(x.reshape(B, -1), e.reshape(B, -1), betas, k).reshape(x.shape)
    e_hat = _network(eps_fn, x_k, steps, y_in, cid)
    return ddpm.simple_loss(e.reshape(B, -1), e_hat.reshape(B, -1), betas, k, "simple")
