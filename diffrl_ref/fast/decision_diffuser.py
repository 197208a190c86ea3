"""Decision Diffuser on the production path (family ``decision_diffuser``).

Ajay, Du, Gupta, Tenenbaum, Jaakkola and Agrawal, Is Conditional Generative Modeling All You
Need for Decision-Making?, ICLR 2023. The model diffuses the H future states (B, H, ds), is
steered by classifier-free guidance on a condition y (the conditional and unconditional
predictions come from ONE network call on 2B rows), trained with condition dropout, and acts
through an inverse dynamics model a_t = f_phi(s_t, s_{t+1}). The empty condition is an explicit
tensor ``y_null`` (zeros unless given). Networks are tensor callables:
``eps_fn(x (B, H, ds), k (B,) int64, y (B, dy)) -> (B, H, ds)`` and
``inv_fn(s_t (n, ds), s_next (n, ds)) -> (n, da)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import ddpm, guidance
from ._checks import batch, finite, integer, require, require_finite, require_values, same_shape, scalar
from .schedule import Schedule

#: eps_fn(x (B, ...), k (B,) int64, y (B, dy)) -> eps_hat (B, ...)
CondEpsFn = Callable[[Tensor, Tensor, Tensor], Tensor]
#: inv_fn(s_t (n, ds), s_next (n, ds)) -> a_t (n, da)
InvFn = Callable[[Tensor, Tensor], Tensor]


def _states(x: Tensor, cid: str, name: str) -> Tensor:
    """A batch of state sequences (B, H, ds) with non-empty axes and finite entries."""
    require(x.ndim == 3 and min(x.shape) >= 1, cid, f"{name} must have shape (B, H, ds) with non-empty axes, "
            f"got shape {tuple(x.shape)}")
    return finite(x, cid, name)


def steps(k: int | Tensor, B: int, device: torch.device, cid: str) -> Tensor:
    """Diffusion step(s) k >= 1 (no schedule bound) as a (B,) int64 tensor: one step per row."""
    if isinstance(k, int):
        require(k >= 1, cid, f"k must be >= 1, got {k!r}")
        return torch.full((B,), k, dtype=torch.int64, device=device)
    require(not k.is_floating_point() and not k.is_complex() and k.dtype != torch.bool, cid,
            f"k must be an integer tensor, got {k.dtype}")
    require(k.ndim == 0 or tuple(k.shape) == (B,), cid, f"k must be a scalar or shape ({B},), got {tuple(k.shape)}")
    require_values(k >= 1, cid, "k must be >= 1")
    return k.to(device=device, dtype=torch.int64).expand(B)


def _conditions(y: Tensor, y_null: Tensor | None, B: int, cid: str) -> tuple[Tensor, Tensor]:
    """y (B, dy) and the empty condition (zeros unless given), same shape."""
    batch(y, cid, "y")
    require(y.shape[0] == B, cid, f"y must have {B} rows (one per sample), got shape {tuple(y.shape)}")
    if y_null is None:
        return y, torch.zeros_like(y)
    batch(y_null, cid, "y_null")
    same_shape(cid, y=y, y_null=y_null)
    return y, y_null


def _network(eps_fn: CondEpsFn, x: Tensor, kk: Tensor, y: Tensor, cid: str) -> Tensor:
    out = eps_fn(x, kk, y)
    require(out.shape == x.shape, cid, f"eps_fn must return shape {tuple(x.shape)}, got {tuple(out.shape)}")
    require_finite(out, cid, "eps_fn must return finite values")
    return out


def state_trajectory(states: Tensor, t: int, H: int) -> Tensor:
    """Clause ``decision_diffuser.state_trajectory``: x(tau) = (s_t, ..., s_{t+H-1}), a (B, H, ds) view of states."""
    cid = "decision_diffuser.state_trajectory"
    _states(states, cid, "states")
    start, length = integer(t, cid, "t", 0), integer(H, cid, "H", 1)
    T = states.shape[1]
    require(start + length <= T, cid,
            f"the window t..t+H-1 = {start}..{start + length - 1} must lie inside the {T} recorded states")
    return states.narrow(1, start, length)


def cfg_eps(x_k: Tensor, k: int | Tensor, y: Tensor, eps_fn: CondEpsFn, omega: float, y_null: Tensor | None = None,
            *, clause: str = "decision_diffuser.guided_eps") -> Tensor:
    """eps(x_k, empty, k) + omega (eps(x_k, y, k) - eps(x_k, empty, k)) for x_k of any shape (B, ...).

    One network call on the 2B rows [x_k; x_k] with conditions [y_null; y], combined by
    :func:`diffrl_ref.fast.guidance.cfg`. Domain errors name ``clause``.
    """
    B = x_k.shape[0]
    kk = steps(k, B, x_k.device, clause)
    c, empty = _conditions(y, y_null, B, clause)
    w = scalar(omega, clause, "omega", 0.0)
    both = _network(eps_fn, torch.cat([x_k, x_k]), torch.cat([kk, kk]), torch.cat([empty, c]), clause)
    eps_uncond, eps_cond = both.reshape(2, B, -1).unbind(0)
    return guidance.cfg(eps_uncond, eps_cond, w).reshape(x_k.shape)


def guided_eps(x_k: Tensor, k: int | Tensor, y: Tensor, eps_fn: CondEpsFn, omega: float,
               y_null: Tensor | None = None) -> Tensor:
    """Clause ``decision_diffuser.guided_eps``: eps(x_k, empty, k) + omega (eps(x_k, y, k) - eps(x_k, empty, k))."""
    cid = "decision_diffuser.guided_eps"
    return cfg_eps(_states(x_k, cid, "x_k"), k, y, eps_fn, omega, y_null, clause=cid)


def _actions(a: Tensor, n: int, cid: str) -> Tensor:
    require(a.ndim == 2 and a.shape[0] == n and a.shape[1] >= 1, cid,
            f"inv_fn must return shape ({n}, da) with da >= 1, got {tuple(a.shape)}")
    return finite(a, cid, "inv_fn output")


def inverse_dynamics(x: Tensor, inv_fn: InvFn, *, clause: str = "decision_diffuser.inverse_dynamics") -> Tensor:
    """Clause ``decision_diffuser.inverse_dynamics``: a_t = f_phi(s_t, s_{t+1}), t = 0..H-2, shape (B, H-1, da).

    All B (H - 1) pairs go through the model in one call. Domain errors name ``clause``.
    """
    _states(x, clause, "x")
    B, H, ds = x.shape
    require(H >= 2, clause, f"a plan needs H >= 2 states to define an action, got H = {H}")
    a = inv_fn(x[:, :-1].reshape(-1, ds), x[:, 1:].reshape(-1, ds))
    return _actions(a, B * (H - 1), clause).reshape(B, H - 1, -1)


def inverse_dynamics_loss(states: Tensor, actions: Tensor, next_states: Tensor, inv_fn: InvFn) -> Tensor:
    """Clause ``decision_diffuser.inverse_dynamics_loss``: ||a - f_phi(s, s')||^2 per transition, shape (B,)."""
    cid = "decision_diffuser.inverse_dynamics_loss"
    for name, t in (("states", states), ("actions", actions), ("next_states", next_states)):
        batch(t, cid, name)
    same_shape(cid, states=states, next_states=next_states)
    B = states.shape[0]
    require(actions.shape[0] == B, cid, f"actions must have {B} rows, got shape {tuple(actions.shape)}")
    a_hat = inv_fn(states, next_states)
    require(a_hat.shape == actions.shape, cid,
            f"inv_fn must return shape {tuple(actions.shape)}, got {tuple(a_hat.shape)}")
    finite(a_hat, cid, "inv_fn output")
    return torch.sum((actions - a_hat) ** 2, dim=1)


def dropout_loss(x0: Tensor, eps: Tensor, sched: Schedule, k: int | Tensor, y: Tensor, b: Tensor, eps_fn: CondEpsFn,
                 y_null: Tensor | None = None) -> Tensor:
    """Clause ``decision_diffuser.dropout_loss``: ||eps - eps_theta(x_k, (1 - b) y + b empty, k)||^2 per sample.

    x_k = sqrt(alpha_bar_k) x_0 + sqrt(1 - alpha_bar_k) eps (``ddpm.noise``); b (B,) holds the
    Bernoulli(p) dropout draws, 1 dropping the condition (a bool tensor, or floats 0/1).
    """
    cid = "decision_diffuser.dropout_loss"
    _states(x0, cid, "x0")
    _states(eps, cid, "eps")
    same_shape(cid, x0=x0, eps=eps)
    B = x0.shape[0]
    kk = sched.steps(k, B, cid)
    c, empty = _conditions(y, y_null, B, cid)
    require(tuple(b.shape) == (B,), cid, f"b must have shape ({B},), got {tuple(b.shape)}")
    require_values((b == 0) | (b == 1), cid, "every b must be 0 or 1 (a Bernoulli draw)")
    y_in = torch.where(b.to(torch.bool).unsqueeze(-1), empty, c)
    flat = (B, -1)
    x_k = ddpm.noise(x0.reshape(flat), eps.reshape(flat), sched, kk).reshape(x0.shape)
    e_hat = _network(eps_fn, x_k, kk, y_in, cid)
    return ddpm.simple_loss(eps.reshape(flat), e_hat.reshape(flat), sched, kk)


__all__ = ["CondEpsFn", "InvFn", "integer", "steps", "state_trajectory", "cfg_eps", "guided_eps", "inverse_dynamics",
           "inverse_dynamics_loss", "dropout_loss"]
