"""Bridge for family ``dom2``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from ...fast import dom2 as F
from ._bridge import Bridge


def cql_loss(b: Bridge, q_all: ArrayLike, a_idx: ArrayLike, y: ArrayLike, alpha: float) -> Any:
    cid = "dom2.cql_loss"
    # a_idx keeps its dtype: the clause rejects float indices, so no conversion to integers here.
    idx = torch.as_tensor(np.asarray(a_idx), device=b.device)
    return b.out(F.cql_loss(b.x(q_all, cid, "q_all"), idx, b.x(y, cid, "y"), alpha))


def cql_sampled(b: Bridge, q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike,
                alpha: float) -> Any:
    cid = "dom2.cql_sampled"
    return b.out(F.cql_sampled(b.x(q_data, cid, "q_data"), b.x(q_samples, cid, "q_samples"), b.x(log_p, cid, "log_p"),
                               b.x(y, cid, "y"), alpha))


def _agent(b: Bridge, rec: Any, cid: str) -> Any:
    """A suite dom2.Agent record (NumPy, NumPy networks) as a production Agent; anything else passes unchanged."""
    if getattr(rec, "_fields", None) != F.Agent._fields:
        return rec
    return F.Agent(b.x(rec.obs, cid, "obs"), b.x(rec.action, cid, "action"), b.net(rec.eps_fn, cid, "eps_fn"),
                   b.net(rec.q_fn, cid, "q_fn"), b.net(rec.q_norm_fn, cid, "q_norm_fn"), b.k(rec.k, cid),
                   b.x(rec.eps, cid, "eps"), b.x(rec.a_K, cid, "a_K"), b.x(rec.noises, cid, "noises"))


def policy_loss(b: Bridge, agents: Sequence[Any], betas: ArrayLike, eta: float = 1.0,
                max_action: float | None = 1.0, variance: str = "beta_tilde") -> Any:
    cid = "dom2.policy_loss"
    return b.out(F.policy_loss([_agent(b, r, cid) for r in agents], b.sched(betas, cid), eta, max_action, variance))


def sample(b: Bridge, x_K: ArrayLike, eps_fn: Any, obs: ArrayLike, betas: ArrayLike, tau: ArrayLike) -> Any:
    cid = "dom2.sample"
    return b.out(F.sample(b.x(x_K, cid, "x_K"), b.net(eps_fn, cid, "eps_fn"), b.x(obs, cid, "obs"),
                          b.sched(betas, cid), np.asarray(tau).tolist()))
