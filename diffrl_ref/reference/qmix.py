"""Monotonic value factorisation (spec family ``qmix``).

QMIX (Rashid et al., ICML 2018) mixes per-agent utilities Q_1..Q_N into a joint value Q_tot
with a network whose weights are produced from the state s by hypernetworks and made
non-negative by an absolute value, so dQ_tot/dQ_i >= 0 and the greedy joint action decomposes
into the agents' own greedy actions (Individual-Global-Max, IGM). MAD2RL (Liu et al., IEEE TMC
2024) uses the same mixer for the policy improvement of its diffusion-based agents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._checks import Array, as_batch, as_f64, require

#: A hypernetwork: the state batch s (B, ds) -> an output batch (B, m).
HyperFn = Callable[[Array], ArrayLike]


class Hypernetworks(NamedTuple):
    """The four hypernetworks of the QMIX mixer, each a function of the state s (B, ds).

    ``w1(s)``: (B, N*H), reshaped row-major to the (N, H) first-layer weights (pre-abs);
    ``b1(s)``: (B, H) first-layer bias; ``w2(s)``: (B, H) output weights (pre-abs);
    ``b2(s)``: (B, 1) state value V(s) used as the final bias (a 2-layer ReLU net in the paper).
    """

    w1: HyperFn
    b1: HyperFn
    w2: HyperFn
    b2: HyperFn


def _elu(x: Array) -> Array:
    """ELU with alpha = 1: x for x > 0, exp(x) - 1 otherwise (the mixer's hidden activation)."""
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _hyper_out(fn: HyperFn, s: Array, shape: tuple[int, ...], cid: str, name: str) -> Array:
    out = as_f64(fn(s), cid, f"hyper.{name}(s)")
    require(out.shape == shape, cid, f"hyper.{name}(s) must have shape {shape}, got {out.shape}")
    return out


def _weights(q: ArrayLike, s: ArrayLike, hyper: Hypernetworks,
                   cid: str = "qmix.mixer") -> tuple[Array, Array, Array, Array, Array]:
    """Validated (q, W1, b1, w2, V) of one mixer call; W1 (B, N, H) and w2 (B, H) still signed."""
    qq = as_batch(q, cid, "q")
    ss = as_batch(s, cid, "s")
    B, N = qq.shape
    require(ss.shape[0] == B, cid, f"s must have {B} rows like q, got shape {ss.shape}")
    require(isinstance(hyper, tuple) and len(hyper) == 4 and all(callable(h) for h in hyper), cid,
            "hyper must be Hypernetworks(w1, b1, w2, b2) of callables")
    b1 = as_batch(hyper.b1(ss), cid, "hyper.b1(s)")
    H = b1.shape[1]
    require(b1.shape[0] == B and H >= 1, cid, f"hyper.b1(s) must have shape ({B}, H), got {b1.shape}")
    w1 = _hyper_out(hyper.w1, ss, (B, N * H), cid, "w1").reshape(B, N, H)
    w2 = _hyper_out(hyper.w2, ss, (B, H), cid, "w2")
    v = _hyper_out(hyper.b2, ss, (B, 1), cid, "b2")
    return qq, w1, b1, w2, v


def mixer(q: ArrayLike, s: ArrayLike, hyper: Hypernetworks) -> Array:
    """Clause ``qmix.mixer``: ``Q_tot = |w2(s)| . ELU(q |W1(s)| + b1(s)) + V(s)``, per row."""
    qq, w1, b1, w2, v = _weights(q, s, hyper)
    hidden = _elu(np.einsum("bn,bnh->bh", qq, np.abs(w1)) + b1)
    q_tot: Array = np.sum(hidden * np.abs(w2), axis=1) + v[:, 0]
    return q_tot


def _utilities(q_values: ArrayLike, avail: ArrayLike | None, cid: str) -> tuple[Array, NDArray[np.bool_]]:
    """q (B, N, A) and the availability mask (B, N, A); every agent needs one available action."""
    q = as_f64(q_values, cid, "q_values")
    require(q.ndim == 3 and q.shape[1] >= 1 and q.shape[2] >= 1, cid,
            f"q_values must have shape (B, N, A) with N, A >= 1, got {q.shape}")
    if avail is None:
        mask = np.ones(q.shape, dtype=bool)
    else:
        m = np.asarray(avail)
        require(m.shape == q.shape, cid, f"avail must have the shape of q_values {q.shape}, got {m.shape}")
        require(m.dtype == np.bool_ or bool(np.all((m == 0) | (m == 1))), cid, "avail must be boolean (0/1)")
        mask = m.astype(bool)
    require(bool(np.all(mask.any(axis=2))), cid, "every agent needs at least one available action")
    return q, mask


def greedy_actions(q_values: ArrayLike, avail: ArrayLike | None = None) -> NDArray[np.int64]:
    """Clause ``qmix.greedy_actions``: a_i = argmax_a Q_i(s_i, a) over available a, lowest index on ties."""
    q, mask = _utilities(q_values, avail, "qmix.greedy_actions")
    masked = np.where(mask, q, -np.inf)
    actions: NDArray[np.int64] = np.argmax(masked, axis=2).astype(np.int64)  # argmax: first maximiser
    return actions


def _outer(masks: list[NDArray[np.bool_]]) -> NDArray[np.bool_]:
    """Joint mask (B, A, ..., A) of per-agent masks (B, A): entry u is the AND over agents of mask_i[u_i]."""
    out = masks[0]
    for m in masks[1:]:
        out = out[..., None] & m.reshape(m.shape[:1] + (1,) * (out.ndim - 1) + m.shape[1:])
    return out


def igm(q_values: ArrayLike, q_tot: ArrayLike, avail: ArrayLike | None = None, atol: float = 0.0) -> NDArray[np.bool_]:
    """Clause ``qmix.igm``: whether argmax_u Q_tot(u) == prod_i argmax_{u_i} Q_i(u_i), as sets, per row."""
    cid = "qmix.igm"
    q, mask = _utilities(q_values, avail, cid)
    B, N, A = q.shape
    table = as_f64(q_tot, cid, "q_tot")
    require(table.shape == (B,) + (A,) * N, cid,
            f"q_tot must have shape (B,) + (A,) * N = {(B,) + (A,) * N}, got {table.shape}")
    tol = as_f64(atol, cid, "atol")
    require(tol.ndim == 0 and float(tol) >= 0, cid, "atol must be a scalar >= 0")
    best = np.max(np.where(mask, q, -np.inf), axis=2, keepdims=True)
    individual = _outer([(mask & (q == best))[:, i] for i in range(N)])
    joint_avail = _outer([mask[:, i] for i in range(N)])
    flat = np.where(joint_avail, table, -np.inf).reshape(B, -1)
    top = np.max(flat, axis=1).reshape((B,) + (1,) * N)
    joint = joint_avail & (table >= top - float(tol))
    out: NDArray[np.bool_] = np.all((joint == individual).reshape(B, -1), axis=1)
    return out
