"""Efficient Diffusion Policies on the production path (family ``edp``).

Kang, Ma, Du, Pang and Yan, NeurIPS 2023. The one-step action approximation a0_hat is the DDPM
x_0 reconstruction (no sampling chain), and log pi_theta(a | s) is replaced by the DDPM ELBO, a
weighted noise-prediction error, so that the weighted-regression objective E[f(Q) log pi] of
AWR, CRR and IQL applies. Built on ``ddpm`` and the eps-matching half of ``diffusion_ql``. The
critics are IQL's on locomotion (Kostrikov, Nair and Levine, ICLR 2022): an expectile value loss
and the TD target r + gamma (1 - d) V(s'), with the target critics and V(s') held constant.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import ddpm
from ._checks import batch, finite, require, require_finite, require_values, same_shape, scalar, unchecked
from .diffusion_ql import StateEpsFn, noise_prediction, positive
from .schedule import Schedule
from .spectral import discount, vector

#: Weight functions f of the advantage A = Q - V and their default clip w_max.
KINDS: dict[str, float] = {"awr": 20.0, "crr_exp": 20.0, "crr_binary": 1.0, "iql": 100.0}


def action_approx(a_k: Tensor, eps_hat: Tensor, sched: Schedule, k: int | Tensor) -> Tensor:
    """Clause ``edp.action_approx``: a0_hat = (a^k - sqrt(1 - ab_k) eps_theta(a^k, k; s)) / sqrt(ab_k)."""
    cid = "edp.action_approx"
    batch(a_k, cid, "a_k")
    batch(eps_hat, cid, "eps_hat")
    same_shape(cid, a_k=a_k, eps_hat=eps_hat)
    kk = sched.steps(k, a_k.shape[0], cid)
    with unchecked():  # validated above
        return ddpm.x0_from_eps(a_k, eps_hat, sched, kk)


def _weighted_elbo(a: Tensor, s: Tensor, eps_fn: StateEpsFn, sched: Schedule, k: int | Tensor, eps: Tensor,
                   cid: str) -> Tensor:
    e, e_hat, kk = noise_prediction(a, s, eps_fn, sched, k, eps, cid)
    with unchecked():  # Ho et al.'s lambda_k at sigma_k^2 = beta_k is EDP's weight beta_k / (2 alpha_k (1 - ab_k))
        return ddpm.simple_loss(e, e_hat, sched, kk, "vlb", "beta")


def weighted_elbo(a: Tensor, s: Tensor, eps_fn: StateEpsFn, sched: Schedule, k: int | Tensor,
                  eps: Tensor) -> Tensor:
    """Clause ``edp.weighted_elbo``: beta_k / (2 alpha_k (1 - ab_k)) ||eps - eps_theta(a^k, k; s)||^2 per row.

    One network call on the whole batch; -weighted_elbo approximates log pi_theta(a | s) up to a constant.
    """
    return _weighted_elbo(a, s, eps_fn, sched, k, eps, "edp.weighted_elbo")


def _w_max(kind: str, w_max: float | None, cid: str) -> float:
    if w_max is None:
        return KINDS[kind]
    try:
        cap = float(w_max)
    except (TypeError, ValueError):
        cap = math.nan
    require(cap > 0, cid, f"w_max must be a scalar > 0 (math.inf for no clip), got {w_max!r}")
    return cap


def weights(q: Tensor, v: Tensor, kind: str, temperature: float, w_max: float | None = None) -> Tensor:
    """Clause ``edp.weights``: f(A), A = Q - V: min(exp(A / T), w_max) (awr, crr_exp), 1[A > 0] (crr_binary),
    min(exp(T A), w_max) (iql). w_max None is the kind's default (20, 20, 100)."""
    cid = "edp.weights"
    require(q.ndim == 1 and q.numel() >= 1, cid, f"q must have shape (B,) with B >= 1, got {tuple(q.shape)}")
    same_shape(cid, q=q, v=v)
    finite(q, cid, "q")
    finite(v, cid, "v")
    require(kind in KINDS, cid, f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    t = positive(temperature, cid, "temperature")
    cap = _w_max(kind, w_max, cid)
    adv = q - v
    if kind == "crr_binary":
        return (adv > 0).to(q.dtype)
    x = adv * t if kind == "iql" else adv / t
    # exp only below the clip: a clipped weight is w_max exactly and never overflows.
    w = torch.exp(x.clamp(max=math.log(cap) + 1.0)).clamp(max=cap)
    require_finite(w, cid, "exp(A / T) overflows: give a finite w_max or a larger temperature")
    return w


def policy_objective(a: Tensor, s: Tensor, eps_fn: StateEpsFn, sched: Schedule, k: int | Tensor, eps: Tensor,
                     f: Tensor) -> Tensor:
    """Clause ``edp.policy_objective``: J = f(Q) log pi = -f weighted_elbo per row (maximised; f is a constant)."""
    cid = "edp.policy_objective"
    batch(a, cid, "a")
    require(tuple(f.shape) == (a.shape[0],), cid, f"f must have shape ({a.shape[0]},), got {tuple(f.shape)}")
    finite(f, cid, "f")
    require_values(f >= 0, cid, "the weights f(Q) must be >= 0")
    return -f.detach() * _weighted_elbo(a, s, eps_fn, sched, k, eps, cid)


def expectile_loss(q: Tensor, v: Tensor, tau: float) -> Tensor:
    """Clause ``edp.expectile_loss``: ``|tau - 1(u < 0)| u^2`` per row, u = Q(s, a) - V(s); IQL's value loss.

    q (B,) is the target critics' minimum at the dataset actions and is detached (the gradient
    reaches v only); the value network's loss is the batch mean.
    """
    cid = "edp.expectile_loss"
    require(q.ndim == 1 and q.numel() >= 1, cid, f"q must have shape (B,) with B >= 1, got {tuple(q.shape)}")
    same_shape(cid, q=q, v=v)
    finite(q, cid, "q")
    finite(v, cid, "v")
    t = scalar(tau, cid, "tau", 0.0, 1.0)  # both bounds given: _checks.scalar formats both in its messages
    require(0.0 < t < 1.0, cid, f"tau must lie in (0, 1), got {t!r}")
    u = q.detach() - v
    sq = u * u
    # Python-float weights keep the tensor's dtype (a torch.where of two scalars would be float32).
    return torch.where(u < 0, (1.0 - t) * sq, t * sq)


def iql_q_target(r: Tensor, done: Tensor, v_next: Tensor, gamma: float) -> Tensor:
    """Clause ``edp.iql_q_target``: y = r + gamma (1 - d) V(s'), IQL's target (no maximum over next actions).

    done (B,) of 0/1 (float or bool); v_next (B,) the value network at s', detached: y is a
    constant of the critics' loss (diffsr.critic_loss).
    """
    cid = "edp.iql_q_target"
    require(r.ndim == 1 and r.numel() >= 1, cid, f"r must have shape (B,) with B >= 1, got {tuple(r.shape)}")
    B = r.shape[0]
    vector(r, B, cid, "r")
    vector(v_next, B, cid, "v_next")
    require(tuple(done.shape) == (B,), cid, f"done must have shape ({B},), got {tuple(done.shape)}")
    d = done.to(r.dtype)
    require_values((d == 0) | (d == 1), cid, "done must be 0 or 1")
    g = discount(gamma, cid)
    return r + g * (1.0 - d) * v_next.detach()


__all__ = ["KINDS", "action_approx", "weighted_elbo", "weights", "policy_objective", "expectile_loss", "iql_q_target"]
