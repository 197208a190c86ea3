"""DOM2 on the production path (family ``dom2``).

Li, Pan and Huang, arXiv 2307.01472. Training and execution are decentralised: agent j's
diffusion policy is updated with the Diffusion-QL loss on its own observations and critic, and
its critic with CQL(H) (Kumar et al. 2020). Actions are sampled with the first-order DPM-Solver,
which on the discrete schedule is deterministic DDIM: :class:`Solver` runs
:class:`~diffrl_ref.fast.ddim.DDIMSampler` with eta = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import diffusion_ql
from ._checks import DomainError, batch, checking, finite, require, require_values, unchecked
from .ddim import DDIMSampler, tau_steps
from .diffusion_ql import Conditioned, QFn, StateEpsFn, nonnegative
from .schedule import Schedule


def cql_loss(q_all: Tensor, a_idx: Tensor, y: Tensor, alpha: float) -> Tensor:
    """Clause ``dom2.cql_loss``: (Q(o, a_data) - y)^2 + alpha (log sum_a exp Q(o, a) - Q(o, a_data)) per row.

    y is a TD target and carries no gradient; the loss is differentiable in q_all.
    """
    cid = "dom2.cql_loss"
    require(q_all.ndim == 2 and q_all.shape[1] >= 1, cid,
            f"q_all must have shape (B, n) with n >= 1, got {tuple(q_all.shape)}")
    finite(q_all, cid, "q_all")
    B, n = q_all.shape
    require(not (a_idx.is_floating_point() or a_idx.is_complex() or a_idx.dtype == torch.bool), cid,
            f"a_idx must hold integer action indices, got dtype {a_idx.dtype}")
    require(tuple(a_idx.shape) == (B,), cid, f"a_idx must have shape ({B},), got {tuple(a_idx.shape)}")
    require_values((a_idx >= 0) & (a_idx < n), cid, f"a_idx must lie in [0, {n - 1}]")
    require(tuple(y.shape) == (B,), cid, f"y must have shape ({B},), got {tuple(y.shape)}")
    finite(y, cid, "y")
    a = nonnegative(alpha, cid, "alpha")
    q_data = q_all.gather(1, a_idx.to(device=q_all.device, dtype=torch.int64).unsqueeze(1)).squeeze(1)
    penalty = torch.logsumexp(q_all, dim=1) - q_data
    return (q_data - y.detach()) ** 2 + a * penalty


def cql_sampled(q_data: Tensor, q_samples: Tensor, log_p: Tensor | float, y: Tensor, alpha: float) -> Tensor:
    """Clause ``dom2.cql_sampled``: (Q_data - y)^2 + alpha (log (1/M) sum_i exp(Q_i - log p_i) - Q_data) per row.

    The continuous-action CQL(H) penalty with M proposal samples; ``log_p`` may be a number (the same density
    at every sample, as the uniform proposal's -d log 2). y carries no gradient.
    """
    cid = "dom2.cql_sampled"
    require(q_data.ndim == 1, cid, f"q_data must have shape (B,), got {tuple(q_data.shape)}")
    B = q_data.shape[0]
    require(q_samples.ndim == 2 and q_samples.shape[0] == B and q_samples.shape[1] >= 1, cid,
            f"q_samples must have shape ({B}, M) with M >= 1, got {tuple(q_samples.shape)}")
    lp = torch.as_tensor(log_p, dtype=q_samples.dtype, device=q_samples.device)
    require(lp.ndim == 0 or tuple(lp.shape) == tuple(q_samples.shape), cid,
            f"log_p must be a number or have the shape of q_samples {tuple(q_samples.shape)}, got {tuple(lp.shape)}")
    require(tuple(y.shape) == (B,), cid, f"y must have shape ({B},), got {tuple(y.shape)}")
    for name, v in (("q_data", q_data), ("q_samples", q_samples), ("log_p", lp), ("y", y)):
        finite(v, cid, name)
    a = nonnegative(alpha, cid, "alpha")
    log_z = torch.logsumexp(q_samples - lp, dim=1) - math.log(q_samples.shape[1])
    return (q_data - y.detach()) ** 2 + a * (log_z - q_data)


class Agent(NamedTuple):
    """One agent's batch and networks for the decentralised policy update (see diffusion_ql.loss)."""

    obs: Tensor
    action: Tensor
    eps_fn: StateEpsFn
    q_fn: QFn
    q_norm_fn: QFn
    k: int | Tensor
    eps: Tensor
    a_K: Tensor
    noises: Tensor


def policy_loss(agents: Sequence[Agent], sched: Schedule, eta: float = 1.0, max_action: float | None = 1.0,
                variance: str = "beta_tilde") -> Tensor:
    """Clause ``dom2.policy_loss``: row j = diffusion_ql.loss of agent j on its own o_j, a_j, eps_theta_j, Q_phi_j.

    Returns (N, B). Agents may differ in action and observation dimensions, so they are
    looped over; each agent's loss is batched.
    """
    cid = "dom2.policy_loss"
    require(len(agents) >= 1, cid, "need at least one agent")
    objective = diffusion_ql.PolicyLoss(sched, eta, max_action, variance)
    rows = []
    for j, ag in enumerate(agents):
        require(isinstance(ag, Agent), cid, f"agent {j} must be a dom2.Agent record, got {type(ag).__name__}")
        try:
            rows.append(objective(ag.action, ag.obs, ag.eps_fn, ag.k, ag.eps, ag.a_K, ag.noises, ag.q_fn,
                                  ag.q_norm_fn))
        except DomainError as exc:
            raise DomainError(cid, f"agent {j}: {exc}") from None
    require(len({r.shape for r in rows}) == 1, cid,
            f"every agent needs the same batch size B, got {[r.shape[0] for r in rows]}")
    return torch.stack(rows)


def _tau(tau: Sequence[int] | Tensor, K: int, cid: str) -> list[int]:
    """tau_0 < tau_1 < ... < tau_S = K with tau_0 >= 0 and S >= 1, as ints."""
    t = torch.as_tensor(tau)
    require(t.ndim == 1 and t.numel() >= 2, cid,
            f"tau must list tau_0 < ... < tau_S (S >= 1), got shape {tuple(t.shape)}")
    rest = tau_steps(t[1:], K, cid)  # integers in [1, K], strictly increasing, ending at K
    t0 = float(t[0])
    require(t0.is_integer() and 0 <= t0 < rest[0], cid,
            f"tau must be strictly increasing integers from tau_0 >= 0, got {t.tolist()}")
    return [int(t0), *rest]


class Solver:
    """Clause ``dom2.sample``: first-order DPM-Solver on tau_S = K -> ... -> tau_0 (deterministic DDIM).

    x_{k'} = (a_{k'} / a_k) x_k - s_{k'} (e^h - 1) eps_theta(x_k, k, o) = ddim.step(x_k, eps_hat, k -> k', eta = 0),
    since s_{k'} (e^h - 1) = a_{k'} s_k / a_k - s_{k'}; tau_0 = 0 ends with the x_0 reconstruction.
    """

    def __init__(self, sched: Schedule, tau: Sequence[int] | Tensor) -> None:
        cid = "dom2.sample"
        self.tau = _tau(tau, sched.K, cid)
        t0 = self.tau[0]
        # DPM-Solver's discrete chain stops at tau_0: no jump tau_0 -> 0 unless tau_0 = 0.
        self.ddim = DDIMSampler(sched, self.tau[1:] if t0 == 0 else self.tau, eta=0.0, land_on_x0=t0 == 0)

    def __call__(self, x_K: Tensor, eps_fn: StateEpsFn, obs: Tensor) -> Tensor:
        """x_K (B, da), obs (B, do) -> x_{tau_0} (B, da)."""
        cid = "dom2.sample"
        batch(x_K, cid, "x_K")
        batch(obs, cid, "obs")
        require(obs.shape[0] == x_K.shape[0], cid,
                f"obs must have {x_K.shape[0]} rows (one observation per sample), got shape {tuple(obs.shape)}")
        net = Conditioned(eps_fn, obs, cid, record=checking())
        with unchecked():  # inputs validated above; the network's outputs are checked by net
            x = self.ddim(x_K, net)
        net.check()
        return x


def sample(x_K: Tensor, eps_fn: StateEpsFn, obs: Tensor, sched: Schedule, tau: Sequence[int] | Tensor) -> Tensor:
    """Clause ``dom2.sample``: x_{k'} = (a_{k'} / a_k) x_k - s_{k'} (e^h - 1) eps_theta(x_k, k, o), k = tau_i."""
    return Solver(sched, tau)(x_K, eps_fn, obs)


__all__ = ["cql_loss", "cql_sampled", "Agent", "policy_loss", "Solver", "sample"]
