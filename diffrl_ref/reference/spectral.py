"""Spectral representation of an MDP's transition operator (spec family ``spectral``).

Diff-SR (Shribak, Gao, Li, Xiao and Dai, NeurIPS 2024) starts from the factorisation
P(s' | s, a) = <phi(s, a), mu(s')> of the transition operator, under which
Q^pi(s, a) = r(s, a) + gamma <phi(s, a), sum_{s'} mu(s') V^pi(s')> is linear in phi. Here the
state space is finite (or a finite set of next states is given), so the integral over s' is a
sum: features are rows, phi of shape (B, k) for B state-action pairs and mu of shape (N, k)
for N next states.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._checks import Array, as_batch, as_f64, require


def _features(phi: ArrayLike, mu: ArrayLike, cid: str) -> tuple[Array, Array]:
    """phi (B, k) and mu (N, k) with the same feature dimension k."""
    f = as_batch(phi, cid, "phi")
    m = as_batch(mu, cid, "mu")
    require(f.shape[1] == m.shape[1], cid,
            f"phi and mu must have the same feature dimension k, got phi{f.shape} and mu{m.shape}")
    return f, m


def transition(phi: ArrayLike, mu: ArrayLike) -> Array:
    """Clause ``spectral.transition``: P(s'_j | s_i, a_i) = <phi(s_i, a_i), mu(s'_j)>, shape (B, N)."""
    f, m = _features(phi, mu, "spectral.transition")
    return np.asarray(f @ m.T, dtype=np.float64)


def q_function(r: ArrayLike, phi: ArrayLike, mu: ArrayLike, v: ArrayLike, gamma: float) -> Array:
    """Clause ``spectral.q_function``: Q(s, a) = r(s, a) + gamma <phi(s, a), sum_j mu(s'_j) V(s'_j)>."""
    cid = "spectral.q_function"
    f, m = _features(phi, mu, cid)
    rr = as_f64(r, cid, "r")
    vv = as_f64(v, cid, "v")
    require(rr.shape == (f.shape[0],), cid, f"r must have shape ({f.shape[0]},), got {rr.shape}")
    require(vv.shape == (m.shape[0],), cid, f"v must have shape ({m.shape[0]},), got {vv.shape}")
    g = as_f64(gamma, cid, "gamma")
    require(g.ndim == 0 and 0.0 <= float(g) < 1.0, cid, f"gamma must be a scalar in [0, 1), got {gamma!r}")
    w = m.T @ vv  # sum_{s'} mu(s') V(s'): the weight vector of the linear critic, shape (k,)
    return np.asarray(rr + float(g) * (f @ w), dtype=np.float64)
