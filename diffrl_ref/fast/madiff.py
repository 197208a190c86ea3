"""MADiff on the production path (family ``madiff``).

Zhu et al., MADiff: Offline Multi-agent Learning with Diffusion Models, NeurIPS 2024. The N
agents' observation sequences form one joint tensor x of shape (B, N, H, d), agent i's slice
being x[:, i]: the Decision Diffuser of :mod:`diffrl_ref.fast.decision_diffuser` lifted to the
joint array. Networks are tensor callables: ``eps_fn(x (B, N, H, d), k (B,) int64, y (B, dy))
-> (B, N, H, d)`` and ``f_i(o_t (n, d), o_next (n, d)) -> (n, da)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import decision_diffuser as dd
from ._checks import finite, integer, require


def _joint(x: Tensor, cid: str, name: str) -> Tensor:
    """A batch of joint trajectories (B, N, H, d) with non-empty axes and finite entries."""
    require(x.ndim == 4 and min(x.shape) >= 1, cid, f"{name} must have shape (B, N, H, d) with non-empty axes, "
            f"got shape {tuple(x.shape)}")
    return finite(x, cid, name)


def guided_eps(x_k: Tensor, k: int | Tensor, y: Tensor, eps_fn: dd.CondEpsFn, omega: float,
               y_null: Tensor | None = None) -> Tensor:
    """Clause ``madiff.guided_eps``: eps(x_k, empty, k) + omega (eps(x_k, y, k) - eps(x_k, empty, k)), x_k joint.

    Guidance acts on the joint prediction: one call of the joint network on 2B rows.
    """
    cid = "madiff.guided_eps"
    return dd.cfg_eps(_joint(x_k, cid, "x_k"), k, y, eps_fn, omega, y_null, clause=cid)


def inverse_dynamics(x: Tensor, inv_fns: dd.InvFn | Sequence[dd.InvFn]) -> Tensor:
    """Clause ``madiff.inverse_dynamics``: a_i^t = f_i(o_i^t, o_i^{t+1}), shape (B, N, H-1, da).

    A shared model (one callable) sees all B N (H - 1) pairs in one call; per-agent models are
    called once per agent.
    """
    cid = "madiff.inverse_dynamics"
    _joint(x, cid, "x")
    B, N, H, d = x.shape
    require(H >= 2, cid, f"a plan needs H >= 2 steps to define an action, got H = {H}")
    if callable(inv_fns):
        return dd.inverse_dynamics(x.reshape(B * N, H, d), inv_fns, clause=cid).reshape(B, N, H - 1, -1)
    models = list(inv_fns)
    require(len(models) == N, cid, f"need one inverse dynamics model per agent ({N}), got {len(models)}")
    require(all(callable(f) for f in models), cid, "every inverse dynamics model must be callable")
    actions = [dd.inverse_dynamics(x[:, i], f, clause=cid) for i, f in enumerate(models)]
    require(len({a.shape for a in actions}) == 1, cid, "every agent's model must return the same action dimension")
    return torch.stack(actions, dim=1)


def decentralised_action(x0: Tensor, i: int, inv_fn: dd.InvFn, t: int = 0) -> Tensor:
    """Clause ``madiff.decentralised_action``: a_i = f_i(x0[:, i, t], x0[:, i, t+1]), shape (B, da)."""
    cid = "madiff.decentralised_action"
    _joint(x0, cid, "x0")
    _, N, H, _ = x0.shape
    agent = integer(i, cid, "i", 0, N - 1)
    require(H >= 2, cid, f"a plan needs H >= 2 steps to define an action, got H = {H}")
    step = integer(t, cid, "t", 0, H - 2)
    require(callable(inv_fn), cid, "inv_fn must be callable")
    own = x0[:, agent, step:step + 2]  # agent i's slice only: (B, 2, d)
    return dd.inverse_dynamics(own, inv_fn, clause=cid)[:, 0]


__all__ = ["guided_eps", "inverse_dynamics", "decentralised_action"]
