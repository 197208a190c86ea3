"""Bridge for family ``edp``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import edp as F
from ._bridge import Bridge


def action_approx(b: Bridge, a_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    cid = "edp.action_approx"
    return b.out(F.action_approx(b.x(a_k, cid, "a_k"), b.x(eps_hat, cid, "eps_hat"), b.sched(betas, cid),
                                 b.k(k, cid)))


def weighted_elbo(b: Bridge, a: ArrayLike, s: ArrayLike, eps_fn: Any, betas: ArrayLike, k: ArrayLike,
                  eps: ArrayLike) -> Any:
    cid = "edp.weighted_elbo"
    return b.out(F.weighted_elbo(b.x(a, cid, "a"), b.x(s, cid, "s"), b.net(eps_fn, cid, "eps_fn"),
                                 b.sched(betas, cid), b.k(k, cid), b.x(eps, cid, "eps")))


def weights(b: Bridge, q: ArrayLike, v: ArrayLike, kind: str, temperature: float, w_max: float | None = None) -> Any:
    cid = "edp.weights"
    return b.out(F.weights(b.x(q, cid, "q"), b.x(v, cid, "v"), kind, temperature, w_max))


def policy_objective(b: Bridge, a: ArrayLike, s: ArrayLike, eps_fn: Any, betas: ArrayLike, k: ArrayLike,
                     eps: ArrayLike, f: ArrayLike) -> Any:
    cid = "edp.policy_objective"
    return b.out(F.policy_objective(b.x(a, cid, "a"), b.x(s, cid, "s"), b.net(eps_fn, cid, "eps_fn"),
                                    b.sched(betas, cid), b.k(k, cid), b.x(eps, cid, "eps"), b.x(f, cid, "f")))


def expectile_loss(b: Bridge, q: ArrayLike, v: ArrayLike, tau: float) -> Any:
    cid = "edp.expectile_loss"
    return b.out(F.expectile_loss(b.x(q, cid, "q"), b.x(v, cid, "v"), tau))


def iql_q_target(b: Bridge, r: ArrayLike, done: ArrayLike, v_next: ArrayLike, gamma: float) -> Any:
    cid = "edp.iql_q_target"
    return b.out(F.iql_q_target(b.x(r, cid, "r"), b.x(done, cid, "done"), b.x(v_next, cid, "v_next"), gamma))
