"""Bridge for family ``dof``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from numpy.typing import ArrayLike

from ...fast import dof as F
from ._bridge import Bridge
from .qmix import _hyper


def _nets(b: Bridge, eps_fns: Sequence[Any], cid: str) -> list[Callable[..., Any]]:
    """The agents' NumPy networks as tensor networks (non-callables go on for the clause to reject)."""
    return [b.net(f, cid, f"eps_fns[{i}]") if callable(f) else f for i, f in enumerate(eps_fns)]


def noise_factorisation(b: Bridge, eps_agents: ArrayLike, mode: str = "concat",
                        weights: ArrayLike | None = None) -> Any:
    cid = "dof.noise_factorisation"
    return b.out(F.noise_factorisation(b.x(eps_agents, cid, "eps_agents"), mode, b.opt(weights, cid, "weights")))


def data_factorisation(b: Bridge, x_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None,
                       s: ArrayLike | None = None, hyper: Any = None) -> Any:
    cid = "dof.data_factorisation"
    return b.out(F.data_factorisation(b.x(x_agents, cid, "x_agents"), mode, b.opt(weights, cid, "weights"),
                                      b.opt(s, cid, "s"), None if hyper is None else _hyper(b, hyper, cid)))


def train_step(b: Bridge, x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Any], betas: ArrayLike,
               mode: str = "concat", weights: ArrayLike | None = None) -> Any:
    cid = "dof.train_step"
    return b.out(F.train_step(b.x(x0_tot, cid, "x0_tot"), b.k(k, cid), b.x(eps, cid, "eps"), _nets(b, eps_fns, cid),
                              b.sched(betas, cid), mode, b.opt(weights, cid, "weights")))


def decentralised_sample(b: Bridge, x_K: ArrayLike, eps_fns: Sequence[Any], betas: ArrayLike, z: ArrayLike,
                         variance: str = "beta") -> Any:
    cid = "dof.decentralised_sample"
    return b.out(F.decentralised_sample(b.x(x_K, cid, "x_K"), _nets(b, eps_fns, cid), b.sched(betas, cid),
                                        b.x(z, cid, "z"), variance))


def igd(b: Bridge, x_tot_K: ArrayLike, eps_fns: Sequence[Any], betas: ArrayLike, z_tot: ArrayLike,
        mode: str = "concat", weights: ArrayLike | None = None, variance: str = "beta") -> Any:
    cid = "dof.igd"
    return b.out(F.igd(b.x(x_tot_K, cid, "x_tot_K"), _nets(b, eps_fns, cid), b.sched(betas, cid),
                       b.x(z_tot, cid, "z_tot"), mode, b.opt(weights, cid, "weights"), variance))


def policy_loss(b: Bridge, x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Any], betas: ArrayLike,
                q_new: ArrayLike, eta: float, mode: str = "concat", weights: ArrayLike | None = None,
                q_norm: ArrayLike | None = None) -> Any:
    cid = "dof.policy_loss"
    return b.out(F.policy_loss(b.x(x0_tot, cid, "x0_tot"), b.k(k, cid), b.x(eps, cid, "eps"), _nets(b, eps_fns, cid),
                               b.sched(betas, cid), b.x(q_new, cid, "q_new"), eta, mode,
                               b.opt(weights, cid, "weights"), b.opt(q_norm, cid, "q_norm")))


def planner_loss(b: Bridge, x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Any],
                 betas: ArrayLike, y: ArrayLike, drop: ArrayLike, mode: str = "concat",
                 weights: ArrayLike | None = None, empty: ArrayLike | None = None) -> Any:
    cid = "dof.planner_loss"
    return b.out(F.planner_loss(b.x(x0_tot, cid, "x0_tot"), b.k(k, cid), b.x(eps, cid, "eps"),
                                _nets(b, eps_fns, cid), b.sched(betas, cid), b.x(y, cid, "y"), b.x(drop, cid, "drop"),
                                mode, b.opt(weights, cid, "weights"), b.opt(empty, cid, "empty")))
