"""Efficient Diffusion Policies, EDP (spec family ``edp``).

Kang, Ma, Du, Pang and Yan, NeurIPS 2023. Two devices make a diffusion policy cheap to train
and usable by likelihood-based offline RL: the one-step action approximation a0_hat (the
x0 reconstruction of DDPM, no sampling chain), and the replacement of the intractable
log pi_theta(a | s) by the DDPM ELBO, a weighted noise-prediction error. The weighted objective
E[f(Q) log pi] then covers AWR, CRR and IQL through the weight f. Built on the ``ddpm`` clauses.
On locomotion EDP trains its critics with IQL (Kostrikov, Nair and Levine, ICLR 2022): the
expectile value loss and the TD target r + gamma (1 - d) V(s').
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from . import ddpm
from ._checks import Array, DomainError, as_batch, as_f64, require, same_shape
from .diffsr import _gamma, _vector
from .diffusion_ql import StateEpsFn, _noise_prediction, _schedule

#: Weight functions f of the advantage A = Q - V and their default clip w_max.
KINDS: dict[str, float] = {"awr": 20.0, "crr_exp": 20.0, "crr_binary": 1.0, "iql": 100.0}


def action_approx(a_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Array:
    """Clause ``edp.action_approx``: a0_hat = (a^k - sqrt(1 - ab_k) eps_hat) / sqrt(ab_k)."""
    cid = "edp.action_approx"
    x = as_batch(a_k, cid, "a_k")
    e = as_batch(eps_hat, cid, "eps_hat")
    same_shape(cid, a_k=x, eps_hat=e)
    _, steps = _schedule(betas, k, x.shape[0], cid)
    return ddpm.x0_from_eps(x, e, betas, steps)


def weighted_elbo(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike,
                  eps: ArrayLike) -> Array:
    """Clause ``edp.weighted_elbo``: beta_k / (2 alpha_k (1 - ab_k)) ||eps - eps_fn(a^k, k, s)||^2 per row."""
    e, eps_hat, steps = _noise_prediction(a, s, eps_fn, betas, k, eps, "edp.weighted_elbo")
    # Ho et al.'s lambda_k with sigma_k^2 = beta_k is exactly EDP's weight.
    return ddpm.simple_loss(e, eps_hat, betas, steps, "vlb", "beta")


def weights(q: ArrayLike, v: ArrayLike, kind: str, temperature: float, w_max: float | None = None) -> Array:
    """Clause ``edp.weights``: f(A), A = Q - V: min(exp(A/T), w_max), 1[A > 0] or min(exp(T A), w_max) by kind."""
    cid = "edp.weights"
    qq = as_f64(q, cid, "q")
    vv = as_f64(v, cid, "v")
    require(qq.ndim == 1 and qq.size >= 1, cid, f"q must have shape (B,), got {qq.shape}")
    same_shape(cid, q=qq, v=vv)
    require(kind in KINDS, cid, f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    t = as_f64(temperature, cid, "temperature")
    require(t.ndim == 0 and float(t) > 0, cid, f"temperature must be a scalar > 0, got {temperature!r}")
    if w_max is None:
        cap = KINDS[kind]
    else:
        c = np.asarray(w_max, dtype=np.float64)
        require(c.ndim == 0 and bool(c > 0), cid, f"w_max must be a scalar > 0 (np.inf for no clip), got {w_max!r}")
        cap = float(c)
    adv = qq - vv
    if kind == "crr_binary":
        return np.asarray(adv > 0, dtype=np.float64)
    x = adv * float(t) if kind == "iql" else adv / float(t)
    # exp is evaluated below the clip only, so a clipped weight is w_max exactly and never overflows.
    with np.errstate(over="ignore"):
        w = np.minimum(np.exp(np.minimum(x, np.log(cap) + 1.0)), cap)
    require(bool(np.all(np.isfinite(w))), cid, "exp(A / T) overflows: give a finite w_max or a larger temperature")
    return np.asarray(w, dtype=np.float64)


def policy_objective(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike, eps: ArrayLike,
                     f: ArrayLike) -> Array:
    """Clause ``edp.policy_objective``: J = f(Q) log pi with log pi replaced by -weighted_elbo, per row (maximised)."""
    cid = "edp.policy_objective"
    a0 = as_batch(a, cid, "a")
    ff = as_f64(f, cid, "f")
    require(ff.shape == (a0.shape[0],), cid, f"f must have shape ({a0.shape[0]},), got {ff.shape}")
    require(bool(np.all(ff >= 0)), cid, "the weights f(Q) must be >= 0")
    try:
        elbo = weighted_elbo(a0, s, eps_fn, betas, k, eps)
    except DomainError as exc:
        raise DomainError(cid, str(exc)) from None
    return np.asarray(-ff * elbo, dtype=np.float64)


def expectile_loss(q: ArrayLike, v: ArrayLike, tau: float) -> Array:
    """Clause ``edp.expectile_loss``: ``|tau - 1(u < 0)| u^2`` per row, u = Q(s, a) - V(s) (IQL's value loss)."""
    cid = "edp.expectile_loss"
    qq = as_f64(q, cid, "q")
    vv = as_f64(v, cid, "v")
    require(qq.ndim == 1 and qq.size >= 1, cid, f"q must have shape (B,) with B >= 1, got {qq.shape}")
    same_shape(cid, q=qq, v=vv)
    t = as_f64(tau, cid, "tau")
    require(t.ndim == 0 and 0.0 < float(t) < 1.0, cid, f"tau must be a scalar in (0, 1), got {tau!r}")
    u = qq - vv
    return np.asarray(np.where(u < 0, 1.0 - float(t), float(t)) * u**2, dtype=np.float64)


def iql_q_target(r: ArrayLike, done: ArrayLike, v_next: ArrayLike, gamma: float) -> Array:
    """Clause ``edp.iql_q_target``: y = r + gamma (1 - done) V(s') (IQL: no maximum over next actions)."""
    cid = "edp.iql_q_target"
    rr = as_f64(r, cid, "r")
    require(rr.ndim == 1 and rr.size >= 1, cid, f"r must have shape (B,) with B >= 1, got {rr.shape}")
    B = rr.shape[0]
    d = _vector(done, B, cid, "done")
    require(bool(np.all((d == 0) | (d == 1))), cid, "done must be 0 or 1")
    vn = _vector(v_next, B, cid, "v_next")
    g = _gamma(gamma, cid)
    return np.asarray(rr + g * (1.0 - d) * vn, dtype=np.float64)
