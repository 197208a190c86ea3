"""Spectral representation of the transition operator on the production path (family ``spectral``).

Shribak, Gao, Li, Xiao and Dai, NeurIPS 2024 (arXiv 2406.16121), Sec. 2: P(s' | s, a) =
<phi(s, a), mu(s')>, under which Q^pi(s, a) = r(s, a) + gamma <phi(s, a), sum_{s'} mu(s') V^pi(s')>
is linear in phi. Features are rows: ``phi`` (B, k) for B state-action pairs, ``mu`` (N, k) for
N next states. Both clauses are matrix products, differentiable in every input.
"""

from __future__ import annotations

from torch import Tensor

from ._checks import batch, finite, require, scalar


def features(phi: Tensor, mu: Tensor, cid: str) -> tuple[Tensor, Tensor]:
    """phi (B, k) and mu (N, k), finite, with the same feature dimension k."""
    batch(phi, cid, "phi")
    batch(mu, cid, "mu")
    require(phi.shape[1] == mu.shape[1], cid,
            f"phi and mu must have the same feature dimension k, got phi{tuple(phi.shape)} and mu{tuple(mu.shape)}")
    return phi, mu


def vector(x: Tensor, n: int, cid: str, name: str) -> Tensor:
    """A finite vector of shape (n,)."""
    require(tuple(x.shape) == (n,), cid, f"{name} must have shape ({n},), got {tuple(x.shape)}")
    return finite(x, cid, name)


def discount(gamma: float, cid: str) -> float:
    """The discount factor as a Python float in [0, 1)."""
    g = scalar(gamma, cid, "gamma", 0.0, 1.0)  # both bounds given: _checks.scalar formats both in its messages
    require(g < 1.0, cid, f"gamma must lie in [0, 1), got {g!r}")
    return g


def transition(phi: Tensor, mu: Tensor) -> Tensor:
    """Clause ``spectral.transition``: P(s'_j | s_i, a_i) = <phi(s_i, a_i), mu(s'_j)>, shape (B, N)."""
    f, m = features(phi, mu, "spectral.transition")
    return f @ m.T


def q_function(r: Tensor, phi: Tensor, mu: Tensor, v: Tensor, gamma: float) -> Tensor:
    """Clause ``spectral.q_function``: Q(s, a) = r(s, a) + gamma <phi(s, a), sum_j mu(s'_j) V(s'_j)>, shape (B,).

    The weight vector w = mu^T V (k,) is formed first: O((B + N) k), never the (B, N) matrix P.
    """
    cid = "spectral.q_function"
    f, m = features(phi, mu, cid)
    vector(r, f.shape[0], cid, "r")
    vector(v, m.shape[0], cid, "v")
    g = discount(gamma, cid)
    w = m.T @ v  # sum_{s'} mu(s') V(s'): the weights of the linear critic, shape (k,)
    return r + g * (f @ w)
