"""Planted bugs for the ``decision_diffuser`` family."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import ddpm
from diffrl_ref.reference import decision_diffuser as ref

from . import Mutant

F = NDArray[np.float64]


def _f(a: ArrayLike) -> F:
    return np.asarray(a, dtype=np.float64)


# ---- decision_diffuser.state_trajectory ------------------------------------------------------


def _window_next(states: ArrayLike, t: int, H: int) -> F:
    # Starts one step late: (s_{t+1}, ..., s_{t+H}) (an index kept 1-based).
    ref.state_trajectory(states, t, H)
    return _f(states)[:, t + 1:t + 1 + H]


def _window_reversed(states: ArrayLike, t: int, H: int) -> F:
    # Most recent state first, as a history buffer would hold it.
    return ref.state_trajectory(states, t, H)[:, ::-1]


def _window_unchecked(states: ArrayLike, t: int, H: int) -> F:
    # NumPy slicing silently truncates a window that runs past the record.
    return _f(states)[:, int(t):int(t) + int(H)]


# ---- decision_diffuser.guided_eps ------------------------------------------------------------


def _cfg_variant(combine: Any) -> Any:
    def guided(x_k: ArrayLike, k: ArrayLike, y: ArrayLike, eps_fn: Any, omega: float,
               y_null: ArrayLike | None = None) -> F:
        ref.guided_eps(x_k, k, y, eps_fn, omega, y_null)
        x = _f(x_k)
        kk = np.broadcast_to(np.asarray(k), (x.shape[0],)).astype(np.int64)
        empty = np.zeros_like(_f(y)) if y_null is None else _f(y_null)
        eu, ec = _f(eps_fn(x, kk, empty)), _f(eps_fn(x, kk, _f(y)))
        out: F = combine(eu, ec, float(omega))
        return out
    return guided


def _cfg_unchecked(x_k: ArrayLike, k: ArrayLike, y: ArrayLike, eps_fn: Any, omega: float,
                   y_null: ArrayLike | None = None) -> F:
    x = _f(x_k)
    kk = np.broadcast_to(np.asarray(k), (x.shape[0],))
    empty = np.zeros_like(_f(y)) if y_null is None else _f(y_null)
    eu, ec = _f(eps_fn(x, kk, empty)), _f(eps_fn(x, kk, _f(y)))
    return eu + omega * (ec - eu)


# ---- decision_diffuser.inverse_dynamics ------------------------------------------------------


def _inv_swapped(x: ArrayLike, inv_fn: Any) -> F:
    # f(s_{t+1}, s_t): the concatenation [s', s] where the model was trained on [s, s'].
    return ref.inverse_dynamics(x, lambda s, s2: inv_fn(s2, s))


def _inv_across_batch(x: ArrayLike, inv_fn: Any) -> F:
    # Pairs formed on the flattened (B H, ds) array: the last pair of a plan uses the next plan's s_0.
    good = ref.inverse_dynamics(x, inv_fn)
    s = _f(x)
    B, H, ds = s.shape
    flat = s.reshape(-1, ds)
    n = B * (H - 1)
    a = _f(inv_fn(flat[:n], flat[1:n + 1]))
    return a.reshape(good.shape)


def _inv_unchecked(x: ArrayLike, inv_fn: Any) -> F:
    s = _f(x)
    B, H, ds = s.shape
    with np.errstate(all="ignore"):
        a = _f(inv_fn(s[:, :-1].reshape(-1, ds), s[:, 1:].reshape(-1, ds)))
    return a.reshape(B, H - 1, -1)


# ---- decision_diffuser.inverse_dynamics_loss -------------------------------------------------


def _inv_loss_swapped(states: ArrayLike, actions: ArrayLike, next_states: ArrayLike, inv_fn: Any) -> F:
    return ref.inverse_dynamics_loss(states, actions, next_states, lambda s, s2: inv_fn(s2, s))


def _inv_loss_mean(states: ArrayLike, actions: ArrayLike, next_states: ArrayLike, inv_fn: Any) -> F:
    # The official code's F.mse_loss averages over the action features as well.
    loss = ref.inverse_dynamics_loss(states, actions, next_states, inv_fn)
    return _f(loss / _f(actions).shape[1])


def _inv_loss_unchecked(states: ArrayLike, actions: ArrayLike, next_states: ArrayLike, inv_fn: Any) -> F:
    with np.errstate(all="ignore"):
        return _f(np.sum((_f(actions) - _f(inv_fn(_f(states), _f(next_states)))) ** 2, axis=-1))


# ---- decision_diffuser.dropout_loss ----------------------------------------------------------


def _dropout_variant(kind: str) -> Any:
    def loss(x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike, y: ArrayLike, b: ArrayLike,
             eps_fn: Any, y_null: ArrayLike | None = None) -> F:
        ref.dropout_loss(x0, eps, betas, k, y, b, eps_fn, y_null)
        x, e = _f(x0), _f(eps)
        B = x.shape[0]
        drop = _f(b)[:, None]
        empty = np.zeros_like(_f(y)) if (y_null is None or kind == "null_zero") else _f(y_null)
        if kind == "inverted":       # b = 1 keeps the condition: the mask the wrong way round
            y_in = drop * _f(y) + (1 - drop) * empty
        else:
            y_in = (1 - drop) * _f(y) + drop * empty
        x_k = ddpm.noise(x.reshape(B, -1), e.reshape(B, -1), betas, k).reshape(x.shape)
        net_in = x if kind == "clean_input" else x_k   # the network fed x_0 instead of x_k
        kk = np.broadcast_to(np.asarray(k), (B,)).astype(np.int64)
        e_hat = _f(eps_fn(net_in, kk, y_in))
        out: F = np.sum((e - e_hat) ** 2, axis=(1, 2))
        return out
    return loss


def _dropout_soft(x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike, y: ArrayLike, b: ArrayLike,
                  eps_fn: Any, y_null: ArrayLike | None = None) -> F:
    # b taken as a mixing weight: b = 0.5 half-drops the condition instead of being rejected.
    x, e = _f(x0), _f(eps)
    B = x.shape[0]
    drop = np.broadcast_to(_f(b), (B,))[:, None]
    empty = np.zeros_like(_f(y)) if y_null is None else _f(y_null)
    x_k = ddpm.noise(x.reshape(B, -1), e.reshape(B, -1), betas, k).reshape(x.shape)
    kk = np.broadcast_to(np.asarray(k), (B,)).astype(np.int64)
    e_hat = _f(eps_fn(x_k, kk, (1 - drop) * _f(y) + drop * empty))
    return _f(np.sum((e - e_hat.reshape(e.shape)) ** 2, axis=(1, 2)))


MUTANTS = [
    Mutant("dd_window_one_late", "decision_diffuser.state_trajectory", ("window", "matches_reference"),
           "window starts at s_{t+1} (1-based index)", {"decision_diffuser.state_trajectory": _window_next}),
    Mutant("dd_window_reversed", "decision_diffuser.state_trajectory", ("window", "matches_reference"),
           "window in reverse time order", {"decision_diffuser.state_trajectory": _window_reversed}),
    Mutant("dd_window_truncated", "decision_diffuser.state_trajectory", ("rejects_out_of_domain",),
           "a window past the end silently truncated by slicing",
           {"decision_diffuser.state_trajectory": _window_unchecked}),
    Mutant("dd_cfg_weights_swapped", "decision_diffuser.guided_eps", ("endpoints", "matches_reference"),
           "eps_cond + omega (eps_uncond - eps_cond): the two predictions swapped",
           {"decision_diffuser.guided_eps": _cfg_variant(lambda u, c, w: c + w * (u - c))}),
    Mutant("dd_cfg_one_plus_w", "decision_diffuser.guided_eps", ("endpoints", "matches_reference"),
           "Ho and Salimans' (1 + w) eps_c - w eps_u used with the decks' omega",
           {"decision_diffuser.guided_eps": _cfg_variant(lambda u, c, w: (1 + w) * c - w * u)}),
    Mutant("dd_cfg_weight_squared", "decision_diffuser.guided_eps", ("affine_in_omega", "matches_reference"),
           "guidance weight applied twice (omega^2)",
           {"decision_diffuser.guided_eps": _cfg_variant(lambda u, c, w: u + w * w * (c - u))}),
    Mutant("dd_cfg_unchecked", "decision_diffuser.guided_eps", ("rejects_out_of_domain",),
           "no domain checks", {"decision_diffuser.guided_eps": _cfg_unchecked}),
    Mutant("dd_inv_swapped", "decision_diffuser.inverse_dynamics",
           ("consecutive_pairs", "recovers_linear_dynamics", "matches_reference"),
           "f(s_{t+1}, s_t): the states swapped", {"decision_diffuser.inverse_dynamics": _inv_swapped}),
    Mutant("dd_inv_across_batch", "decision_diffuser.inverse_dynamics",
           ("consecutive_pairs", "recovers_linear_dynamics", "matches_reference"),
           "pairs formed on the flattened batch, crossing from one plan to the next",
           {"decision_diffuser.inverse_dynamics": _inv_across_batch}),
    Mutant("dd_inv_unchecked", "decision_diffuser.inverse_dynamics", ("rejects_out_of_domain",),
           "no domain checks", {"decision_diffuser.inverse_dynamics": _inv_unchecked}),
    Mutant("dd_inv_loss_swapped", "decision_diffuser.inverse_dynamics_loss",
           ("squared_error", "zero_at_exact_inverse", "matches_reference"),
           "f(s', s) in the loss", {"decision_diffuser.inverse_dynamics_loss": _inv_loss_swapped}),
    Mutant("dd_inv_loss_mean", "decision_diffuser.inverse_dynamics_loss", ("squared_error", "matches_reference"),
           "mean over action features instead of the squared norm",
           {"decision_diffuser.inverse_dynamics_loss": _inv_loss_mean}),
    Mutant("dd_inv_loss_unchecked", "decision_diffuser.inverse_dynamics_loss", ("rejects_out_of_domain",),
           "no domain checks", {"decision_diffuser.inverse_dynamics_loss": _inv_loss_unchecked}),
    Mutant("dd_dropout_mask_inverted", "decision_diffuser.dropout_loss",
           ("b_one_is_unconditional", "b_zero_is_conditional", "dropout_rate", "matches_reference"),
           "b = 1 keeps the condition and b = 0 drops it",
           {"decision_diffuser.dropout_loss": _dropout_variant("inverted")}),
    Mutant("dd_dropout_null_is_zero", "decision_diffuser.dropout_loss", ("b_one_is_unconditional", "matches_reference"),
           "the given empty condition ignored, zeros used",
           {"decision_diffuser.dropout_loss": _dropout_variant("null_zero")}),
    Mutant("dd_dropout_clean_input", "decision_diffuser.dropout_loss",
           ("b_one_is_unconditional", "b_zero_is_conditional", "matches_reference"),
           "the network evaluated at x_0 instead of the noised x_k",
           {"decision_diffuser.dropout_loss": _dropout_variant("clean_input")}),
    Mutant("dd_dropout_soft_b", "decision_diffuser.dropout_loss", ("rejects_out_of_domain",),
           "b not checked to be 0 or 1 (a soft mix passes)", {"decision_diffuser.dropout_loss": _dropout_soft}),
]
