"""MADiff: one diffusion model over all agents' trajectories (spec family ``madiff``).

Zhu et al., MADiff: Offline Multi-agent Learning with Diffusion Models, NeurIPS 2024. The N
agents' observation sequences form one joint array x of shape (B, N, H, d), agent i's slice
being x[:, i]. The model is the Decision Diffuser of ``decision_diffuser`` lifted to this
joint array: return-conditioned classifier-free guidance over the joint trajectory
(centralised training), and per-agent inverse dynamics a_i^t = f_i(o_i^t, o_i^{t+1}); in
decentralised execution agent i acts from its own slice of the jointly generated plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import decision_diffuser as dd
from ._checks import Array, DomainError, as_f64, require

#: A joint noise-prediction network: eps_fn(x (B, N, H, d), k (B,) int, y (B, dy)) -> (B, N, H, d).
JointEpsFn = Callable[[Array, NDArray[np.int64], Array], ArrayLike]


def _joint(x: ArrayLike, cid: str, name: str) -> Array:
    """A batch of joint trajectories (B, N, H, d) with every axis non-empty."""
    a = as_f64(x, cid, name)
    require(a.ndim == 4, cid, f"{name} must have shape (B, N, H, d), got shape {a.shape}")
    require(min(a.shape) >= 1, cid, f"{name} must have non-empty axes, got shape {a.shape}")
    return a


def _index(v: object, n: int, cid: str, name: str) -> int:
    """An integer index in [0, n - 1]; negative Python indices are rejected, not wrapped."""
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
        raise DomainError(cid, f"{name} must be an integer, got {v!r}")
    require(0 <= int(v) < n, cid, f"{name} must lie in [0, {n - 1}], got {v!r}")
    return int(v)


def _models(inv_fns: dd.InvFn | Sequence[dd.InvFn], N: int, cid: str) -> list[dd.InvFn]:
    """One inverse dynamics model per agent; a single callable is shared by all agents."""
    if callable(inv_fns):
        return [inv_fns] * N
    models = list(inv_fns)
    require(len(models) == N, cid, f"need one inverse dynamics model per agent ({N}), got {len(models)}")
    require(all(callable(f) for f in models), cid, "every inverse dynamics model must be callable")
    return models


def guided_eps(
    x_k: ArrayLike,
    k: ArrayLike,
    y: ArrayLike,
    eps_fn: JointEpsFn,
    omega: float,
    y_null: ArrayLike | None = None,
) -> Array:
    """Clause ``madiff.guided_eps``: eps(x_k, empty, k) + omega (eps(x_k, y, k) - eps(x_k, empty, k)), x_k joint."""
    cid = "madiff.guided_eps"
    x = _joint(x_k, cid, "x_k")
    B, N, H, d = x.shape

    def joint_eps(flat: Array, steps: NDArray[np.int64], cond: Array) -> Array:
        out = as_f64(eps_fn(flat.reshape(B, N, H, d), steps, cond), cid, "eps_fn output")
        require(out.shape == x.shape, cid, f"eps_fn must return shape {x.shape}, got {out.shape}")
        return out.reshape(B, N * H, d)

    guided = dd.guided_eps(x.reshape(B, N * H, d), k, y, joint_eps, omega, y_null)
    return guided.reshape(x.shape)


def inverse_dynamics(x: ArrayLike, inv_fns: dd.InvFn | Sequence[dd.InvFn]) -> Array:
    """Clause ``madiff.inverse_dynamics``: a_i^t = f_i(o_i^t, o_i^{t+1}), shape (B, N, H-1, da)."""
    cid = "madiff.inverse_dynamics"
    o = _joint(x, cid, "x")
    B, N, H, _ = o.shape
    require(H >= 2, cid, f"a plan needs H >= 2 steps to define an action, got H = {H}")
    models = _models(inv_fns, N, cid)
    actions = [dd.inverse_dynamics(o[:, i], models[i]) for i in range(N)]
    require(len({a.shape for a in actions}) == 1, cid, "every agent's model must return the same action dimension")
    return np.stack(actions, axis=1)


def decentralised_action(x0: ArrayLike, i: int, inv_fn: dd.InvFn, t: int = 0) -> Array:
    """Clause ``madiff.decentralised_action``: agent i's a_i^t = f_i(x0[:, i, t], x0[:, i, t+1]), shape (B, da)."""
    cid = "madiff.decentralised_action"
    o = _joint(x0, cid, "x0")
    _, N, H, _ = o.shape
    agent = _index(i, N, cid, "i")
    require(H >= 2, cid, f"a plan needs H >= 2 steps to define an action, got H = {H}")
    step = _index(t, H - 1, cid, "t")
    require(callable(inv_fn), cid, "inv_fn must be callable")
    own = o[:, agent, step:step + 2]                     # agent i's slice only: (B, 2, d)
    return dd.inverse_dynamics(own, inv_fn)[:, 0]
