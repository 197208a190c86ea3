"""Planted bugs for the ``qmix`` family: mistakes seen in value-factorisation code."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import qmix as ref

from . import Mutant

F = NDArray[np.float64]
Hyper = ref.Hypernetworks


# ---- mixer ----------------------------------------------------------------------------


def _mixer_no_abs(q: ArrayLike, s: ArrayLike, hyper: Hyper) -> F:
    qq, w1, b1, w2, v = ref._weights(q, s, hyper)  # noqa: SLF001 - mutants reuse the domain checks
    hidden = ref._elu(np.einsum("bn,bnh->bh", qq, w1) + b1)  # noqa: SLF001 - th.abs dropped
    out: F = np.sum(hidden * w2, axis=1) + v[:, 0]
    return out


def _mixer_relu(q: ArrayLike, s: ArrayLike, hyper: Hyper) -> F:
    qq, w1, b1, w2, v = ref._weights(q, s, hyper)  # noqa: SLF001
    hidden = np.maximum(np.einsum("bn,bnh->bh", qq, np.abs(w1)) + b1, 0.0)  # ReLU where ELU belongs
    out: F = np.sum(hidden * np.abs(w2), axis=1) + v[:, 0]
    return out


def _mixer_abs_biases(q: ArrayLike, s: ArrayLike, hyper: Hyper) -> F:
    qq, w1, b1, w2, v = ref._weights(q, s, hyper)  # noqa: SLF001
    hidden = ref._elu(np.einsum("bn,bnh->bh", qq, np.abs(w1)) + np.abs(b1))  # noqa: SLF001 - biases forced >= 0
    out: F = np.sum(hidden * np.abs(w2), axis=1) + np.abs(v[:, 0])
    return out


def _mixer_final_weight_signed(q: ArrayLike, s: ArrayLike, hyper: Hyper) -> F:
    qq, w1, b1, w2, v = ref._weights(q, s, hyper)  # noqa: SLF001
    hidden = ref._elu(np.einsum("bn,bnh->bh", qq, np.abs(w1)) + b1)  # noqa: SLF001
    out: F = np.sum(hidden * w2, axis=1) + v[:, 0]  # abs on hyper_w_1 only, hyper_w_final left signed
    return out


def _mixer_w1_transposed(q: ArrayLike, s: ArrayLike, hyper: Hyper) -> F:
    qq, w1, b1, w2, v = ref._weights(q, s, hyper)  # noqa: SLF001
    B, N, H = w1.shape
    w1t = w1.reshape(B, H, N).transpose(0, 2, 1)  # view(-1, embed_dim, n_agents) then transposed
    hidden = ref._elu(np.einsum("bn,bnh->bh", qq, np.abs(w1t)) + b1)  # noqa: SLF001
    out: F = np.sum(hidden * np.abs(w2), axis=1) + v[:, 0]
    return out


def _mixer_unchecked(q: ArrayLike, s: ArrayLike, hyper: Hyper) -> F:
    qq, ss = np.asarray(q, dtype=np.float64), np.asarray(s, dtype=np.float64)
    qq = np.atleast_2d(qq)
    b1 = np.asarray(hyper.b1(ss), dtype=np.float64)
    H = b1.shape[-1]
    w1 = np.resize(np.abs(np.asarray(hyper.w1(ss), dtype=np.float64)), (qq.shape[0], qq.shape[1], H))
    w2 = np.resize(np.abs(np.asarray(hyper.w2(ss), dtype=np.float64)), (qq.shape[0], H))
    v = np.resize(np.asarray(hyper.b2(ss), dtype=np.float64), (qq.shape[0],))
    b1 = np.resize(b1, (qq.shape[0], H))
    with np.errstate(all="ignore"):
        hidden = ref._elu(np.einsum("bn,bnh->bh", qq, w1) + b1)  # noqa: SLF001
        out: F = np.sum(hidden * w2, axis=1) + v
    return out


# ---- greedy_actions -------------------------------------------------------------------


def _greedy_wrong_axis(q_values: ArrayLike, avail: ArrayLike | None = None) -> NDArray[np.int64]:
    q, mask = ref._utilities(q_values, avail, "qmix.greedy_actions")  # noqa: SLF001
    a: NDArray[np.int64] = np.argmax(np.where(mask, q, -np.inf), axis=1).astype(np.int64)  # over agents
    return a


def _greedy_mask_ignored(q_values: ArrayLike, avail: ArrayLike | None = None) -> NDArray[np.int64]:
    q, _ = ref._utilities(q_values, avail, "qmix.greedy_actions")  # noqa: SLF001
    a: NDArray[np.int64] = np.argmax(q, axis=2).astype(np.int64)  # avail_actions never applied
    return a


def _greedy_last_tie(q_values: ArrayLike, avail: ArrayLike | None = None) -> NDArray[np.int64]:
    q, mask = ref._utilities(q_values, avail, "qmix.greedy_actions")  # noqa: SLF001
    masked = np.where(mask, q, -np.inf)[..., ::-1]
    a: NDArray[np.int64] = (q.shape[2] - 1 - np.argmax(masked, axis=2)).astype(np.int64)  # ties: highest index
    return a


def _greedy_unchecked(q_values: ArrayLike, avail: ArrayLike | None = None) -> NDArray[np.int64]:
    q = np.asarray(q_values, dtype=np.float64)
    if avail is not None and np.shape(avail) == q.shape:
        q = np.where(np.asarray(avail, dtype=bool), q, -np.inf)
    with np.errstate(all="ignore"):
        a: NDArray[np.int64] = np.nan_to_num(np.argmax(q, axis=-1)).astype(np.int64)
    return a


# ---- igm ------------------------------------------------------------------------------


def _igm_greedy_only(q_values: ArrayLike, q_tot: ArrayLike, avail: ArrayLike | None = None,
                     atol: float = 0.0) -> NDArray[np.bool_]:
    ref.igm(q_values, q_tot, avail, atol)  # domain checks
    q, mask = ref._utilities(q_values, avail, "qmix.igm")  # noqa: SLF001
    B, N, _ = q.shape
    a = ref.greedy_actions(q, mask)
    table = np.asarray(q_tot, dtype=np.float64)
    joint_avail = ref._outer([mask[:, i] for i in range(N)])  # noqa: SLF001
    top = np.max(np.where(joint_avail, table, -np.inf).reshape(B, -1), axis=1)
    at_greedy = table[(np.arange(B),) + tuple(a.T)]
    out: NDArray[np.bool_] = at_greedy >= top - atol  # only "the greedy tuple is a maximiser"
    return out


def _igm_axes_reversed(q_values: ArrayLike, q_tot: ArrayLike, avail: ArrayLike | None = None,
                       atol: float = 0.0) -> NDArray[np.bool_]:
    table = np.asarray(q_tot, dtype=np.float64)
    if table.ndim >= 2:  # joint table read in Fortran order: agent axes reversed
        table = table.transpose((0,) + tuple(range(table.ndim - 1, 0, -1)))
    return ref.igm(q_values, table, avail, atol)


def _igm_avail_ignored(q_values: ArrayLike, q_tot: ArrayLike, avail: ArrayLike | None = None,
                       atol: float = 0.0) -> NDArray[np.bool_]:
    ref.igm(q_values, q_tot, avail, atol)  # domain checks
    q, mask = ref._utilities(q_values, avail, "qmix.igm")  # noqa: SLF001
    B, N, _ = q.shape
    table = np.asarray(q_tot, dtype=np.float64)
    best = np.max(np.where(mask, q, -np.inf), axis=2, keepdims=True)
    individual = ref._outer([(mask & (q == best))[:, i] for i in range(N)])  # noqa: SLF001
    top = np.max(table.reshape(B, -1), axis=1).reshape((B,) + (1,) * N)  # max over every joint action
    out: NDArray[np.bool_] = np.all(((table >= top - atol) == individual).reshape(B, -1), axis=1)
    return out


def _igm_unchecked(q_values: ArrayLike, q_tot: ArrayLike, avail: ArrayLike | None = None,
                   atol: float = 0.0) -> NDArray[np.bool_]:
    q = np.asarray(q_values, dtype=np.float64)
    table = np.asarray(q_tot, dtype=np.float64)
    B = q.shape[0]
    with np.errstate(all="ignore"):
        flat = table.reshape(B, -1)
        out: NDArray[np.bool_] = np.argmax(flat, axis=1) == 0
    return out


MUTANTS = [
    Mutant("qmix_mixer_no_abs", "qmix.mixer",
           ("monotone", "absolute_weights", "affine_region", "bias_path", "matches_reference"),
           "absolute value dropped from the hypernetwork weights (signed mixing weights)",
           {"qmix.mixer": _mixer_no_abs}),
    Mutant("qmix_mixer_relu_hidden", "qmix.mixer", ("bias_path", "matches_reference"),
           "ReLU hidden activation instead of ELU", {"qmix.mixer": _mixer_relu}),
    Mutant("qmix_mixer_abs_biases", "qmix.mixer", ("affine_region", "bias_path", "matches_reference"),
           "absolute value applied to the biases b_1 and V(s) too", {"qmix.mixer": _mixer_abs_biases}),
    Mutant("qmix_mixer_final_weight_signed", "qmix.mixer",
           ("monotone", "absolute_weights", "affine_region", "bias_path", "matches_reference"),
           "abs on hyper_w_1 only; hyper_w_final output used signed", {"qmix.mixer": _mixer_final_weight_signed}),
    Mutant("qmix_mixer_w1_transposed", "qmix.mixer", ("affine_region", "matches_reference"),
           "W_1 reshaped as (H, N) and transposed instead of row-major (N, H)",
           {"qmix.mixer": _mixer_w1_transposed}),
    Mutant("qmix_mixer_unchecked", "qmix.mixer", ("rejects_out_of_domain",),
           "no domain checks: hypernetwork outputs of any shape are resized, NaN passes through",
           {"qmix.mixer": _mixer_unchecked}),
    Mutant("qmix_greedy_wrong_axis", "qmix.greedy_actions", ("per_agent_argmax", "decentralised", "matches_reference"),
           "argmax over the agent axis instead of the action axis", {"qmix.greedy_actions": _greedy_wrong_axis}),
    Mutant("qmix_greedy_mask_ignored", "qmix.greedy_actions", ("per_agent_argmax", "matches_reference"),
           "available-action mask not applied before the argmax", {"qmix.greedy_actions": _greedy_mask_ignored}),
    Mutant("qmix_greedy_last_tie", "qmix.greedy_actions", ("per_agent_argmax", "matches_reference"),
           "ties broken to the highest action index", {"qmix.greedy_actions": _greedy_last_tie}),
    Mutant("qmix_greedy_unchecked", "qmix.greedy_actions", ("rejects_out_of_domain",),
           "no domain checks: NaN utilities and agents without actions return an index",
           {"qmix.greedy_actions": _greedy_unchecked}),
    Mutant("qmix_igm_greedy_only", "qmix.igm", ("set_equality_with_ties", "matches_reference"),
           "checks only that the greedy tuple attains max Q_tot, not equality of the argmax sets",
           {"qmix.igm": _igm_greedy_only}),
    Mutant("qmix_igm_axes_reversed", "qmix.igm",
           ("monotone_mixing_implies_igm", "detects_violation", "set_equality_with_ties", "matches_reference"),
           "joint table read in Fortran order: agent axes of Q_tot reversed", {"qmix.igm": _igm_axes_reversed}),
    Mutant("qmix_igm_avail_ignored", "qmix.igm",
           ("monotone_mixing_implies_igm", "set_equality_with_ties", "matches_reference"),
           "joint maximum taken over unavailable joint actions too", {"qmix.igm": _igm_avail_ignored}),
    Mutant("qmix_igm_unchecked", "qmix.igm", ("rejects_out_of_domain",),
           "no domain checks: any table shape, NaN and negative atol accepted", {"qmix.igm": _igm_unchecked}),
]
