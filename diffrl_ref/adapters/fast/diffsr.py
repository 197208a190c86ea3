"""Bridge for family ``diffsr``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import diffsr as F
from ._bridge import Bridge


def _scalar_or(b: Bridge, v: ArrayLike, cid: str, name: str) -> Any:
    """A Python float stays a float (the production path's scalar form); arrays become tensors."""
    return v if isinstance(v, (int, float)) else b.x(v, cid, name)


def ebm_transition(b: Bridge, psi: ArrayLike, nu: ArrayLike) -> Any:
    cid = "diffsr.ebm_transition"
    return tuple(b.out(t) for t in F.ebm_transition(b.x(psi, cid, "psi"), b.x(nu, cid, "nu")))


def ebm_identity(b: Bridge, psi: ArrayLike, nu: ArrayLike) -> Any:
    cid = "diffsr.ebm_identity"
    return tuple(b.out(t) for t in F.ebm_identity(b.x(psi, cid, "psi"), b.x(nu, cid, "nu")))


def rff(b: Bridge, psi: ArrayLike, nu: ArrayLike, log_z: ArrayLike, omegas: ArrayLike,
        phases: ArrayLike | None = None) -> Any:
    cid = "diffsr.rff"
    return tuple(b.out(t) for t in F.rff(b.x(psi, cid, "psi"), b.x(nu, cid, "nu"), b.x(log_z, cid, "log_z"),
                                         b.x(omegas, cid, "omegas"), b.opt(phases, cid, "phases")))


def perturbed_transition(b: Bridge, s_tilde: ArrayLike, means: ArrayLike, weights: ArrayLike, cov: ArrayLike,
                         beta: ArrayLike) -> Any:
    cid = "diffsr.perturbed_transition"
    return tuple(b.out(t) for t in F.perturbed_transition(
        b.x(s_tilde, cid, "s_tilde"), b.x(means, cid, "means"), b.x(weights, cid, "weights"), b.x(cov, cid, "cov"),
        _scalar_or(b, beta, cid, "beta")))


def score_objective(b: Bridge, psi: ArrayLike, grad_nu: ArrayLike, s_tilde: ArrayLike, s_next: ArrayLike,
                    beta: ArrayLike) -> Any:
    cid = "diffsr.score_objective"
    return b.out(F.score_objective(b.x(psi, cid, "psi"), b.x(grad_nu, cid, "grad_nu"), b.x(s_tilde, cid, "s_tilde"),
                                   b.x(s_next, cid, "s_next"), _scalar_or(b, beta, cid, "beta")))


def train_step(b: Bridge, psi_fn: Any, grad_nu_fn: Any, s: ArrayLike, a: ArrayLike, s_next: ArrayLike,
               eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    cid = "diffsr.train_step"
    return float(b.out(F.train_step(b.net(psi_fn, cid, "psi_fn"), b.net(grad_nu_fn, cid, "grad_nu_fn"),
                                    b.x(s, cid, "s"), b.x(a, cid, "a"), b.x(s_next, cid, "s_next"),
                                    b.x(eps, cid, "eps"), b.sched(betas, cid), b.k(k, cid))))


def critic(b: Bridge, psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float,
           hidden_w: ArrayLike | None, hidden_b: ArrayLike | None, out_w: ArrayLike, out_b: ArrayLike) -> Any:
    cid = "diffsr.critic"
    return b.out(F.critic(b.x(psi, cid, "psi"), b.x(omegas, cid, "omegas"), b.x(phases, cid, "phases"), amplitude,
                          b.opt(hidden_w, cid, "hidden_w"), b.opt(hidden_b, cid, "hidden_b"),
                          b.x(out_w, cid, "out_w"), b.x(out_b, cid, "out_b")))


def td_target(b: Bridge, r: ArrayLike, done: ArrayLike, q_next: ArrayLike, gamma: float, alpha: float = 0.0,
              log_pi_next: ArrayLike | None = None) -> Any:
    cid = "diffsr.td_target"
    return b.out(F.td_target(b.x(r, cid, "r"), b.x(done, cid, "done"), b.x(q_next, cid, "q_next"), gamma, alpha,
                             b.opt(log_pi_next, cid, "log_pi_next")))


def critic_loss(b: Bridge, q: ArrayLike, y: ArrayLike) -> Any:
    cid = "diffsr.critic_loss"
    return b.out(F.critic_loss(b.x(q, cid, "q"), b.x(y, cid, "y")))


def policy_objective(b: Bridge, q: ArrayLike, alpha: float = 0.0, log_pi: ArrayLike | None = None) -> Any:
    cid = "diffsr.policy_objective"
    return b.out(F.policy_objective(b.x(q, cid, "q"), alpha, b.opt(log_pi, cid, "log_pi")))
