"""Planted bugs for the ``spectral`` family: mistakes seen in code using spectral/linear-MDP features."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import spectral as ref

from . import Mutant

F = NDArray[np.float64]


# ---- transition -------------------------------------------------------------------------


def _transition_softmax(phi: ArrayLike, mu: ArrayLike) -> F:
    logits = ref.transition(phi, mu)  # the inner products treated as logits and softmax-normalised
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def _transition_drop_last(phi: ArrayLike, mu: ArrayLike) -> F:
    f, m = ref._features(phi, mu, "spectral.transition")  # noqa: SLF001 - reuse the checks
    return np.asarray(f[:, :-1] @ m[:, :-1].T, dtype=np.float64)  # off-by-one slice drops feature k


def _transition_unchecked(phi: ArrayLike, mu: ArrayLike) -> F:
    f, m = np.atleast_2d(np.asarray(phi, dtype=np.float64)), np.atleast_2d(np.asarray(mu, dtype=np.float64))
    k = min(f.shape[1], m.shape[1])
    return np.asarray(f[:, :k] @ m[:, :k].T, dtype=np.float64)


# ---- q_function -------------------------------------------------------------------------


def _q_gamma_squared(r: ArrayLike, phi: ArrayLike, mu: ArrayLike, v: ArrayLike, gamma: float) -> F:
    return ref.q_function(r, phi, mu, v, float(gamma) ** 2)  # discount applied twice


def _q_normalised(r: ArrayLike, phi: ArrayLike, mu: ArrayLike, v: ArrayLike, gamma: float) -> F:
    g = float(gamma)
    q = ref.q_function(r, phi, mu, v, g)  # (1 - gamma)-normalised target: (1 - gamma) r + gamma P V
    return np.asarray(q - g * np.asarray(r, dtype=np.float64), dtype=np.float64)


def _q_unchecked(r: ArrayLike, phi: ArrayLike, mu: ArrayLike, v: ArrayLike, gamma: float) -> F:
    f, m = np.asarray(phi, dtype=np.float64), np.asarray(mu, dtype=np.float64)
    vv, rr = np.asarray(v, dtype=np.float64), np.asarray(r, dtype=np.float64)
    k = min(f.shape[-1], m.shape[-1])
    n = min(m.shape[0], vv.shape[0])
    w = np.atleast_2d(m)[:n, :k].T @ vv[:n]
    return np.asarray(rr + float(gamma) * (np.atleast_2d(f)[:, :k] @ w), dtype=np.float64)


MUTANTS = [
    Mutant("spectral_transition_softmax", "spectral.transition", ("exact_factorisation", "matches_reference"),
           "inner products softmax-normalised as if they were logits", {"spectral.transition": _transition_softmax}),
    Mutant("spectral_transition_drop_last_feature", "spectral.transition",
           ("exact_factorisation", "rows_sum_to_one", "matches_reference"),
           "features sliced [:, :-1]: the last singular direction is dropped",
           {"spectral.transition": _transition_drop_last}),
    Mutant("spectral_transition_unchecked", "spectral.transition", ("rejects_out_of_domain",),
           "no domain checks: NaN passes, mismatched feature dimensions are truncated",
           {"spectral.transition": _transition_unchecked}),
    Mutant("spectral_q_gamma_squared", "spectral.q_function",
           ("bellman_exact", "constant_value", "matches_reference"),
           "discount applied twice: gamma^2 <phi, sum mu V>", {"spectral.q_function": _q_gamma_squared}),
    Mutant("spectral_q_normalised_reward", "spectral.q_function",
           ("bellman_exact", "constant_value", "matches_reference"),
           "(1 - gamma)-normalised Bellman target (1 - gamma) r + gamma P V", {"spectral.q_function": _q_normalised}),
    Mutant("spectral_q_unchecked", "spectral.q_function", ("rejects_out_of_domain",),
           "no domain checks: gamma = 1, NaN and mismatched lengths accepted", {"spectral.q_function": _q_unchecked}),
]
