"""DOM2: diffusion policies for offline multi-agent RL (spec family ``dom2``).

Li, Pan and Huang, arXiv 2307.01472. Training and execution are decentralised: agent j has its
own diffusion policy eps_theta_j, updated as in Diffusion-QL from its own observation o_j and its
own critic Q_phi_j, and its own critic is trained with the CQL(H) objective of Kumar et al.
(2020). Actions are sampled with the first-order DPM-Solver (DDIM with sigma = 0) on the
discrete schedule. Built on ``diffusion_ql``, ``dpm_solver`` and ``ddpm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import logsumexp

from . import ddpm, diffusion_ql, dpm_solver
from ._checks import Array, DomainError, as_batch, as_betas, as_f64, as_step, require
from .diffusion_ql import QFn, StateEpsFn, _call_eps, _schedule, _states


def cql_loss(q_all: ArrayLike, a_idx: ArrayLike, y: ArrayLike, alpha: float) -> Array:
    """Clause ``dom2.cql_loss``: (Q(o, a_data) - y)^2 + alpha (log sum_a exp Q(o, a) - Q(o, a_data)) per row."""
    cid = "dom2.cql_loss"
    q = as_f64(q_all, cid, "q_all")
    require(q.ndim == 2 and q.shape[1] >= 1, cid, f"q_all must have shape (B, n) with n >= 1, got {q.shape}")
    B, n = q.shape
    raw = np.asarray(a_idx)
    require(raw.dtype.kind in "iu", cid, f"a_idx must hold integer action indices, got dtype {raw.dtype}")
    require(raw.shape == (B,), cid, f"a_idx must have shape ({B},), got {raw.shape}")
    idx = raw.astype(np.int64)
    require(bool(np.all((idx >= 0) & (idx < n))), cid, f"a_idx must lie in [0, {n - 1}], got {raw.tolist()}")
    target = as_f64(y, cid, "y")
    require(target.shape == (B,), cid, f"y must have shape ({B},), got {target.shape}")
    a = as_f64(alpha, cid, "alpha")
    require(a.ndim == 0 and float(a) >= 0, cid, f"alpha must be a scalar >= 0, got {alpha!r}")
    q_data = q[np.arange(B), idx]
    penalty = logsumexp(q, axis=1) - q_data
    return np.asarray((q_data - target) ** 2 + float(a) * penalty, dtype=np.float64)


def cql_sampled(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike, alpha: float) -> Array:
    """Clause ``dom2.cql_sampled``: (Q_data - y)^2 + alpha (log (1/M) sum_i exp(Q_i - log p_i) - Q_data) per row."""
    cid = "dom2.cql_sampled"
    qd = as_f64(q_data, cid, "q_data")
    require(qd.ndim == 1, cid, f"q_data must have shape (B,), got {qd.shape}")
    B = qd.shape[0]
    qs = as_f64(q_samples, cid, "q_samples")
    require(qs.ndim == 2 and qs.shape[0] == B and qs.shape[1] >= 1, cid,
            f"q_samples must have shape ({B}, M) with M >= 1, got {qs.shape}")
    lp = as_f64(log_p, cid, "log_p")
    require(lp.shape == qs.shape, cid, f"log_p must have the shape of q_samples {qs.shape}, got {lp.shape}")
    target = as_f64(y, cid, "y")
    require(target.shape == (B,), cid, f"y must have shape ({B},), got {target.shape}")
    a = as_f64(alpha, cid, "alpha")
    require(a.ndim == 0 and float(a) >= 0, cid, f"alpha must be a scalar >= 0, got {alpha!r}")
    log_z = logsumexp(qs - lp, axis=1) - np.log(qs.shape[1])
    return np.asarray((qd - target) ** 2 + float(a) * (log_z - qd), dtype=np.float64)


class Agent(NamedTuple):
    """One agent's batch and networks for the decentralised policy update (see diffusion_ql.loss)."""

    obs: ArrayLike
    action: ArrayLike
    eps_fn: StateEpsFn
    q_fn: QFn
    q_norm_fn: QFn
    k: ArrayLike
    eps: ArrayLike
    a_K: ArrayLike
    noises: ArrayLike


def policy_loss(agents: Sequence[Agent], betas: ArrayLike, eta: float = 1.0, max_action: float | None = 1.0,
                variance: str = "beta_tilde") -> Array:
    """Clause ``dom2.policy_loss``: row j = Diffusion-QL loss of agent j on its own o_j, a_j, eps_theta_j, Q_phi_j."""
    cid = "dom2.policy_loss"
    require(len(agents) >= 1, cid, "need at least one agent")
    rows = []
    for j, ag in enumerate(agents):
        require(isinstance(ag, Agent), cid, f"agent {j} must be a dom2.Agent record, got {type(ag).__name__}")
        try:
            rows.append(diffusion_ql.loss(ag.action, ag.obs, ag.eps_fn, betas, ag.k, ag.eps, ag.a_K, ag.noises,
                                          ag.q_fn, ag.q_norm_fn, eta, max_action, variance))
        except DomainError as exc:
            raise DomainError(cid, f"agent {j}: {exc}") from None
    require(len({r.shape for r in rows}) == 1, cid,
            f"every agent needs the same batch size B, got {[r.shape[0] for r in rows]}")
    return np.stack(rows)


def _tau(tau: ArrayLike, K: int, cid: str) -> NDArray[np.int64]:
    t = np.asarray(tau)
    require(t.ndim == 1 and t.size >= 2, cid, f"tau must list tau_0 < ... < tau_S (S >= 1), got shape {t.shape}")
    steps = as_step(t, K, cid, lo=0)
    require(bool(np.all(np.diff(steps) > 0)), cid, f"tau must be strictly increasing, got {steps.tolist()}")
    require(int(steps[-1]) == K, cid, f"tau must end at K = {K}, got {int(steps[-1])}")
    return steps


def sample(x_K: ArrayLike, eps_fn: StateEpsFn, obs: ArrayLike, betas: ArrayLike, tau: ArrayLike) -> Array:
    """Clause ``dom2.sample``: DPM-Solver-1 steps tau_S = K -> ... -> tau_0 on the discrete schedule.

    x_{k'} = (a_{k'} / a_k) x_k - s_{k'} (e^h - 1) eps_fn(x_k, k, o), h = lambda_{k'} - lambda_k;
    a step to k' = 0 (alpha_bar_0 = 1, lambda_0 = +inf) takes the limit, the x_0 reconstruction.
    """
    cid = "dom2.sample"
    x = as_batch(x_K, cid, "x_K")
    B = x.shape[0]
    o = _states(obs, B, cid)
    beta = as_betas(betas, cid)
    a_bar, _ = _schedule(beta, 1, B, cid)
    t = _tau(tau, beta.size, cid)
    for i in range(t.size - 1, 0, -1):
        k, k_prev = int(t[i]), int(t[i - 1])
        eps_hat = _call_eps(eps_fn, x, np.full(B, k, dtype=np.int64), o, cid)
        if k_prev == 0:
            x = ddpm.x0_from_eps(x, eps_hat, beta, k)
        else:
            x = dpm_solver.first_order(x, eps_hat, float(a_bar[k]), float(a_bar[k_prev]))
    return x
