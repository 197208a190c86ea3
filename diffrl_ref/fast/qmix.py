"""Monotonic value factorisation on the production path (family ``qmix``).

QMIX (Rashid et al., ICML 2018): Q_tot = abs(w_2(s)) . ELU(Q abs(W_1(s)) + b_1(s)) + V(s), with the
weights produced from the state by hypernetworks, so dQ_tot/dQ_i >= 0 and the greedy joint
action is the tuple of the agents' greedy actions (IGM). MAD2RL (Liu et al., IEEE TMC 2024)
improves its diffusion-based agents through this mixer. Hypernetworks are tensor callables of
the state batch s (B, ds) (an ``nn.Module`` works) and return the signed (pre-abs) outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as nnf
from torch import Tensor

from ._checks import batch, finite, require, require_values, scalar

#: A hypernetwork: the state batch s (B, ds) -> an output batch (B, m).
HyperFn = Callable[[Tensor], Tensor]


class Hypernetworks(NamedTuple):
    """The four hypernetworks of the mixer, each a function of the state s (B, ds).

    ``w1(s)``: (B, N*H), read row-major as the (N, H) first-layer weights (pre-abs);
    ``b1(s)``: (B, H) first-layer bias; ``w2(s)``: (B, H) output weights (pre-abs);
    ``b2(s)``: (B, 1) the state value V(s), the final bias.
    """

    w1: HyperFn
    b1: HyperFn
    w2: HyperFn
    b2: HyperFn


class MixWeights(NamedTuple):
    """One state batch's mixer weights: W_1 (B, N, H) and w_2 (B, H) signed, b_1 (B, H), V (B, 1)."""

    w1: Tensor
    b1: Tensor
    w2: Tensor
    v: Tensor


def _hyper_out(fn: HyperFn, s: Tensor, shape: tuple[int, ...], cid: str, name: str) -> Tensor:
    out = fn(s)
    require(isinstance(out, Tensor), cid, f"hyper.{name}(s) must return a tensor, got {type(out).__name__}")
    require(tuple(out.shape) == shape, cid, f"hyper.{name}(s) must have shape {shape}, got {tuple(out.shape)}")
    return finite(out, cid, f"hyper.{name}(s)")


def mixing_weights(s: Tensor, hyper: Hypernetworks, N: int, cid: str = "qmix.mixer") -> MixWeights:
    """The hypernetworks' outputs for the state batch s (B, ds), validated; H is the width of b_1(s)."""
    batch(s, cid, "s")
    require(isinstance(hyper, tuple) and len(hyper) == 4 and all(callable(h) for h in hyper), cid,
            "hyper must be Hypernetworks(w1, b1, w2, b2) of callables")
    B = s.shape[0]
    b1 = hyper.b1(s)
    require(isinstance(b1, Tensor) and b1.ndim == 2 and b1.shape[0] == B and b1.shape[1] >= 1, cid,
            f"hyper.b1(s) must be a tensor of shape ({B}, H) with H >= 1")
    H = b1.shape[1]
    finite(b1, cid, "hyper.b1(s)")
    w1 = _hyper_out(hyper.w1, s, (B, N * H), cid, "w1").reshape(B, N, H)
    w2 = _hyper_out(hyper.w2, s, (B, H), cid, "w2")
    v = _hyper_out(hyper.b2, s, (B, 1), cid, "b2")
    return MixWeights(w1, b1, w2, v)


def mix(q: Tensor, w: MixWeights) -> Tensor:
    """Q_tot = sum_h abs(w_2)_h ELU(sum_i q_i abs(W_1)_ih + b_1h) + V for q (B, M, N) -> (B, M).

    The M rows of q in batch row b share row b's weights.
    """
    hidden = nnf.elu(torch.einsum("bmn,bnh->bmh", q, w.w1.abs()) + w.b1.unsqueeze(1))
    return torch.einsum("bmh,bh->bm", hidden, w.w2.abs()) + w.v


def mixer(q: Tensor, s: Tensor, hyper: Hypernetworks) -> Tensor:
    """Clause ``qmix.mixer``: Q_tot = sum_h abs(w_2(s))_h ELU(sum_i Q_i abs(W_1(s))_ih + b_1(s)_h) + V(s).

    Shape (B,).
    """
    cid = "qmix.mixer"
    batch(q, cid, "q")
    B, N = q.shape
    require(s.ndim == 2 and s.shape[0] == B, cid, f"s must have shape ({B}, ds) like q's rows, got {tuple(s.shape)}")
    return mix(q.unsqueeze(1), mixing_weights(s, hyper, N, cid))[:, 0]


def _utilities(q_values: Tensor, avail: Tensor | None, cid: str) -> tuple[Tensor, Tensor]:
    """q (B, N, A) and the boolean availability mask (B, N, A); every agent needs an available action."""
    require(q_values.ndim == 3 and q_values.shape[1] >= 1 and q_values.shape[2] >= 1, cid,
            f"q_values must have shape (B, N, A) with N, A >= 1, got {tuple(q_values.shape)}")
    finite(q_values, cid, "q_values")
    if avail is None:
        mask = torch.ones(q_values.shape, dtype=torch.bool, device=q_values.device)
    else:
        require(avail.shape == q_values.shape, cid,
                f"avail must have the shape of q_values {tuple(q_values.shape)}, got {tuple(avail.shape)}")
        if avail.dtype != torch.bool:
            require_values((avail == 0) | (avail == 1), cid, "avail must be boolean (0/1)")
        mask = avail != 0
    require_values(mask.any(dim=2), cid, "every agent needs at least one available action")
    return q_values, mask


def greedy_actions(q_values: Tensor, avail: Tensor | None = None) -> Tensor:
    """Clause ``qmix.greedy_actions``: a_i = argmax_{a in A_i} Q_i(s_i, a), (B, N) int64, lowest index on ties."""
    q, mask = _utilities(q_values, avail, "qmix.greedy_actions")
    # torch.argmax returns the first maximiser, the spec's tie rule.
    return torch.argmax(q.masked_fill(~mask, -torch.inf), dim=2)


def _outer(masks: Tensor) -> Tensor:
    """Joint mask (B, A, ..., A) of per-agent masks (B, N, A): entry u is AND_i masks[:, i, u_i]."""
    B, N, A = masks.shape
    out = torch.ones((B,) + (1,) * N, dtype=torch.bool, device=masks.device)
    for i in range(N):  # a loop over agents: agent i's mask on action axis i
        out = out & masks[:, i].reshape((B,) + (1,) * i + (A,) + (1,) * (N - 1 - i))
    return out


def igm(q_values: Tensor, q_tot: Tensor, avail: Tensor | None = None, atol: float = 0.0) -> Tensor:
    """Clause ``qmix.igm``: argmax_u Q_tot(u) == prod_i argmax_{u_i} Q_i(u_i) as sets, (B,) bool.

    The joint side is {u : max Q_tot - Q_tot(u) <= atol} over available joint actions; the
    individual side the product of the exact per-agent maximiser sets.
    """
    cid = "qmix.igm"
    q, mask = _utilities(q_values, avail, cid)
    B, N, A = q.shape
    require(tuple(q_tot.shape) == (B,) + (A,) * N, cid,
            f"q_tot must have shape (B,) + (A,) * N = {(B,) + (A,) * N}, got {tuple(q_tot.shape)}")
    finite(q_tot, cid, "q_tot")
    tol = scalar(atol, cid, "atol", 0.0, math.inf)  # hi given: _checks.scalar formats both bounds
    masked = q.masked_fill(~mask, -torch.inf)
    individual = _outer(mask & (masked == masked.amax(dim=2, keepdim=True)))
    joint_avail = _outer(mask)
    table = q_tot.masked_fill(~joint_avail, -torch.inf)
    top = table.reshape(B, -1).amax(dim=1).reshape((B,) + (1,) * N)
    joint = joint_avail & (top - table <= tol)
    return (joint == individual).reshape(B, -1).all(dim=1)


__all__ = ["HyperFn", "Hypernetworks", "MixWeights", "mixing_weights", "mix", "mixer", "greedy_actions", "igm"]
