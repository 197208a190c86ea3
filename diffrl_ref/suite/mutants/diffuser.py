"""Planted bugs for the ``diffuser`` family."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import ddpm
from diffrl_ref.reference import diffuser as ref

from . import Mutant

F = NDArray[np.float64]


def _f(a: ArrayLike) -> F:
    return np.asarray(a, dtype=np.float64)


# ---- diffuser.trajectory / split_trajectory ------------------------------------------------


def _trajectory_actions_first(states: ArrayLike, actions: ArrayLike) -> F:
    # The official code's row layout [a_t, s_t] where the spec (the paper) puts states first.
    ref.trajectory(states, actions)
    return np.concatenate([_f(actions), _f(states)], axis=2)


def _trajectory_time_axis(states: ArrayLike, actions: ArrayLike) -> F:
    # Each plan flattened, states block then actions block ([s_0..s_{L-1}, a_0..a_{L-1}]), then
    # reshaped to (B, L, D): states and actions end up interleaved across time steps.
    tau = ref.trajectory(states, actions)
    B = tau.shape[0]
    return np.concatenate([_f(states).reshape(B, -1), _f(actions).reshape(B, -1)], axis=1).reshape(tau.shape)


def _trajectory_unchecked(states: ArrayLike, actions: ArrayLike) -> F:
    return np.concatenate([_f(states), _f(actions)], axis=-1)


def _split_actions_first(tau: ArrayLike, state_dim: int) -> tuple[F, F]:
    # Reads the code's [a_t, s_t] layout: the first D - ds features taken as the action.
    ref.split_trajectory(tau, state_dim)
    x = _f(tau)
    da = x.shape[2] - state_dim
    return x[..., da:], x[..., :da]


def _split_unchecked(tau: ArrayLike, state_dim: int) -> tuple[F, F]:
    # Plain slicing: state_dim = D returns an empty action, state_dim = 0 an empty state.
    x = _f(tau)
    return x[..., :state_dim], x[..., state_dim:]


# ---- diffuser.inpaint ------------------------------------------------------------------------


def _inpaint_in_place(tau: ArrayLike, mask: ArrayLike, values: ArrayLike) -> F:
    # torch-style x[mask] = values[mask] on the caller's array.
    out = ref.inpaint(tau, mask, values)
    x = tau if isinstance(tau, np.ndarray) else _f(tau)
    x[...] = out
    return x


def _inpaint_mask_inverted(tau: ArrayLike, mask: ArrayLike, values: ArrayLike) -> F:
    ref.inpaint(tau, mask, values)
    return np.where(np.asarray(mask), _f(tau), _f(values))


def _inpaint_first_row_values(tau: ArrayLike, mask: ArrayLike, values: ArrayLike) -> F:
    # The condition of the first sample broadcast to the whole batch.
    ref.inpaint(tau, mask, values)
    return np.where(np.asarray(mask), _f(values)[:1], _f(tau))


def _inpaint_unchecked(tau: ArrayLike, mask: ArrayLike, values: ArrayLike) -> F:
    return np.where(np.asarray(mask, dtype=bool), _f(values), _f(tau))


# ---- diffuser.guided_step --------------------------------------------------------------------


def _parts(tau_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, variance: str) -> tuple[F, F, F]:
    """(mu, Sigma_k, flat view of tau_k) from the reference's verified pieces, after its domain checks."""
    x = _f(tau_k)
    B = x.shape[0]
    flat = x.reshape(B, -1)
    mu = ddpm.reverse_step(flat, _f(eps_hat).reshape(B, -1), betas, k, np.zeros_like(flat), variance)
    sigma2 = ref._transition_variance(flat, betas, k, variance)
    return mu, sigma2, flat


def _guided(fn: Any) -> Any:
    """A buggy step: validated like the reference, then tau^{k-1} = fn(mu, Sigma, g, s, z, tau_k)."""
    def step(tau_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
             grad_J: Any = None, scale: float = 1.0, variance: str = "beta") -> F:
        ref.guided_step(tau_k, eps_hat, betas, k, z, grad_J, scale, variance)
        x = _f(tau_k)
        mu, sigma2, flat = _parts(tau_k, eps_hat, betas, k, variance)
        B = x.shape[0]
        g = np.zeros_like(mu) if grad_J is None else _f(grad_J(mu.reshape(x.shape))).reshape(B, -1)
        out: F = fn(mu, sigma2, g, float(scale), _f(z).reshape(B, -1), flat, grad_J, x.shape, k)
        return out.reshape(x.shape)
    return step


def _no_sigma(mu: F, sigma2: F, g: F, s: float, z: F, *_: Any) -> F:
    return mu + s * g + np.sqrt(sigma2) * z


def _std_for_var(mu: F, sigma2: F, g: F, s: float, z: F, *_: Any) -> F:
    return mu + s * np.sqrt(sigma2) * g + np.sqrt(sigma2) * z


def _grad_at_tau_k(mu: F, sigma2: F, g: F, s: float, z: F, flat: F, grad_J: Any, shape: Any, k: Any) -> F:
    # The official code evaluates the guide at the noisy tau^k, the paper at mu.
    g_k = np.zeros_like(mu) if grad_J is None else _f(grad_J(flat.reshape(shape))).reshape(mu.shape)
    return mu + s * sigma2 * g_k + np.sqrt(sigma2) * z


def _scale_squared(mu: F, sigma2: F, g: F, s: float, z: F, *_: Any) -> F:
    return mu + s * s * sigma2 * g + np.sqrt(sigma2) * z


def _noise_var_for_std(mu: F, sigma2: F, g: F, s: float, z: F, *_: Any) -> F:
    # sigma_k^2 z where sigma_k z belongs.
    return mu + s * sigma2 * g + sigma2 * z


def _guided_at_k1(tau_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                  grad_J: Any = None, scale: float = 1.0, variance: str = "beta") -> F:
    # Sigma_1 read literally as beta_1 for the shift, although the last step draws no noise.
    ref.guided_step(tau_k, eps_hat, betas, k, z, grad_J, scale, variance)
    x = _f(tau_k)
    B = x.shape[0]
    mu, sigma2, flat = _parts(tau_k, eps_hat, betas, k, variance)
    _, beta_k = ddpm.forward_kernel(flat, betas, k)
    steps = np.broadcast_to(np.asarray(k), (B,))
    cov = np.where(steps[:, None] == 1, beta_k, sigma2)
    g = np.zeros_like(mu) if grad_J is None else _f(grad_J(mu.reshape(x.shape))).reshape(B, -1)
    return (mu + float(scale) * cov * g + np.sqrt(sigma2) * _f(z).reshape(B, -1)).reshape(x.shape)


def _guided_unchecked(tau_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                      grad_J: Any = None, scale: float = 1.0, variance: str = "beta") -> F:
    # No checks on the guide or the scale: NaN gradients and negative scales pass through.
    x = _f(tau_k)
    B = x.shape[0]
    mu, sigma2, _ = _parts(tau_k, eps_hat, betas, k, variance)
    with np.errstate(all="ignore"):
        g = np.zeros_like(mu) if grad_J is None else np.resize(_f(grad_J(mu.reshape(x.shape))), mu.shape)
        return (mu + float(scale) * sigma2 * g + np.sqrt(sigma2) * _f(z).reshape(B, -1)).reshape(x.shape)


# ---- diffuser.sample -------------------------------------------------------------------------


def _sample_loop(order: str) -> Any:
    """A sampler whose constraint is applied at the wrong place: 'before' each step or only at the 'end'."""
    def sample(tau_K: ArrayLike, eps_fn: Any, betas: ArrayLike, z: ArrayLike, grad_J: Any = None, scale: float = 1.0,
               mask: Any = None, values: Any = None, variance: str = "beta") -> F:
        good = ref.sample(tau_K, eps_fn, betas, z, grad_J, scale, mask, values, variance)

        def cond(t: F) -> F:
            return t if mask is None else ref.inpaint(t, mask, values)

        K = good.shape[0] - 1
        chain = np.empty_like(good)
        x = _f(tau_K)
        chain[K] = x
        for k in range(K, 0, -1):
            if order == "before":
                x = cond(x)
            x = ref.guided_step(x, _f(eps_fn(x.copy(), np.full(x.shape[0], k))), betas, k, _f(z)[k - 1], grad_J,
                                scale, variance)
            chain[k - 1] = x
        if order == "end":
            chain[0] = cond(chain[0])
        return chain
    return sample


def _sample_whole_time_step(tau_K: ArrayLike, eps_fn: Any, betas: ArrayLike, z: ArrayLike, grad_J: Any = None,
                            scale: float = 1.0, mask: Any = None, values: Any = None, variance: str = "beta") -> F:
    # x[:, t] = values[:, t] for every time step that holds a condition: a_t overwritten with s_t.
    ref.sample(tau_K, eps_fn, betas, z, grad_J, scale, mask, values, variance)
    if mask is None:
        return ref.sample(tau_K, eps_fn, betas, z, grad_J, scale, mask, values, variance)
    x0 = _f(tau_K)
    rows = np.broadcast_to(np.asarray(mask), x0.shape).any(axis=2, keepdims=True)
    wide = np.broadcast_to(rows, x0.shape)
    K = np.asarray(betas).size
    chain = np.empty((K + 1, *x0.shape))
    chain[K] = np.where(wide, _f(values), x0)
    for k in range(K, 0, -1):
        e = _f(eps_fn(chain[k].copy(), np.full(x0.shape[0], k)))
        chain[k - 1] = np.where(wide, _f(values), ref.guided_step(chain[k], e, betas, k, _f(z)[k - 1], grad_J,
                                                                  scale, variance))
    return chain


def _sample_guide_on_input(tau_K: ArrayLike, eps_fn: Any, betas: ArrayLike, z: ArrayLike, grad_J: Any = None,
                           scale: float = 1.0, mask: Any = None, values: Any = None, variance: str = "beta") -> F:
    # The official code's order: tau^k += s Sigma grad J(tau^k), then the network and the mean.
    ref.sample(tau_K, eps_fn, betas, z, grad_J, scale, mask, values, variance)
    x0 = _f(tau_K)
    B = x0.shape[0]
    K = np.asarray(betas).size

    def cond(t: F) -> F:
        return t if mask is None else ref.inpaint(t, mask, values)

    chain = np.empty((K + 1, *x0.shape))
    chain[K] = cond(x0)
    for k in range(K, 0, -1):
        x = chain[k]
        if grad_J is not None:
            sigma2 = ref._transition_variance(x.reshape(B, -1), betas, k, variance)
            x = cond(x + scale * sigma2.reshape(B, 1, 1) * _f(grad_J(x.copy())))
        e = _f(eps_fn(x.copy(), np.full(B, k)))
        chain[k - 1] = cond(ref.guided_step(x, e, betas, k, _f(z)[k - 1], None, scale, variance))
    return chain


def _sample_values_default_zero(tau_K: ArrayLike, eps_fn: Any, betas: ArrayLike, z: ArrayLike, grad_J: Any = None,
                                scale: float = 1.0, mask: Any = None, values: Any = None, variance: str = "beta") -> F:
    # values=None silently read as zeros when a mask is given.
    if mask is not None and values is None:
        values = np.zeros_like(_f(tau_K))
    return ref.sample(tau_K, eps_fn, betas, z, grad_J, scale, mask, values, variance)


MUTANTS = [
    Mutant("diffuser_trajectory_actions_first", "diffuser.trajectory", ("layout", "round_trip", "matches_reference"),
           "rows stored as [a_t, s_t] (the official code's order) instead of the paper's [s_t, a_t]",
           {"diffuser.trajectory": _trajectory_actions_first}),
    Mutant("diffuser_trajectory_time_axis", "diffuser.trajectory", ("layout", "round_trip", "matches_reference"),
           "each plan's states and actions concatenated as flat blocks and reshaped",
           {"diffuser.trajectory": _trajectory_time_axis}),
    Mutant("diffuser_trajectory_unchecked", "diffuser.trajectory", ("rejects_out_of_domain",),
           "no domain checks: NaN and 2-D arrays pass", {"diffuser.trajectory": _trajectory_unchecked}),
    Mutant("diffuser_split_actions_first", "diffuser.split_trajectory", ("layout", "round_trip", "matches_reference"),
           "splits the code's [a_t, s_t] layout", {"diffuser.split_trajectory": _split_actions_first}),
    Mutant("diffuser_split_unchecked", "diffuser.split_trajectory", ("rejects_out_of_domain",),
           "plain slicing accepts state_dim = 0 or D (an empty part)", {"diffuser.split_trajectory": _split_unchecked}),
    Mutant("diffuser_inpaint_in_place", "diffuser.inpaint", ("no_side_effects",),
           "overwrites the caller's plan in place", {"diffuser.inpaint": _inpaint_in_place}),
    Mutant("diffuser_inpaint_mask_inverted", "diffuser.inpaint",
           ("conditioned_entries_set", "others_untouched", "matches_reference"),
           "np.where with the branches swapped", {"diffuser.inpaint": _inpaint_mask_inverted}),
    Mutant("diffuser_inpaint_first_sample_values", "diffuser.inpaint", ("conditioned_entries_set", "matches_reference"),
           "the first sample's condition broadcast to the batch", {"diffuser.inpaint": _inpaint_first_row_values}),
    Mutant("diffuser_inpaint_unchecked", "diffuser.inpaint", ("rejects_out_of_domain",),
           "no domain checks", {"diffuser.inpaint": _inpaint_unchecked}),
    Mutant("diffuser_guided_no_sigma", "diffuser.guided_step",
           ("exact_for_linear_return", "first_order_gaussian", "matches_reference"),
           "guidance added to the mean without Sigma: mu + s g", {"diffuser.guided_step": _guided(_no_sigma)}),
    Mutant("diffuser_guided_std_for_var", "diffuser.guided_step",
           ("exact_for_linear_return", "first_order_gaussian", "matches_reference"),
           "sqrt(Sigma) where the covariance Sigma belongs in the shift",
           {"diffuser.guided_step": _guided(_std_for_var)}),
    Mutant("diffuser_guided_grad_at_tau_k", "diffuser.guided_step",
           ("first_order_gaussian", "gradient_at_mean", "matches_reference"),
           "gradient of J evaluated at tau^k instead of mu", {"diffuser.guided_step": _guided(_grad_at_tau_k)}),
    Mutant("diffuser_guided_scale_squared", "diffuser.guided_step",
           ("linear_in_scale", "first_order_gaussian", "matches_reference"),
           "scale applied twice (s^2)", {"diffuser.guided_step": _guided(_scale_squared)}),
    Mutant("diffuser_guided_noise_variance", "diffuser.guided_step",
           ("unguided_is_ddpm_step", "exact_for_linear_return", "matches_reference"),
           "noise scaled by sigma_k^2 instead of sigma_k", {"diffuser.guided_step": _guided(_noise_var_for_std)}),
    Mutant("diffuser_guided_at_k1", "diffuser.guided_step", ("inactive_at_k1",),
           "the last (noiseless) step still guided with a nonzero covariance",
           {"diffuser.guided_step": _guided_at_k1}),
    Mutant("diffuser_guided_unchecked", "diffuser.guided_step", ("rejects_out_of_domain",),
           "guide output and scale not checked", {"diffuser.guided_step": _guided_unchecked}),
    Mutant("diffuser_sample_inpaint_before_step", "diffuser.sample",
           ("condition_holds_every_step", "composition", "matches_reference"),
           "constraint applied before each step instead of after it", {"diffuser.sample": _sample_loop("before")}),
    Mutant("diffuser_sample_inpaint_only_at_end", "diffuser.sample",
           ("condition_holds_every_step", "composition", "matches_reference"),
           "constraint applied once, to the final plan", {"diffuser.sample": _sample_loop("end")}),
    Mutant("diffuser_sample_whole_time_step", "diffuser.sample",
           ("unconditioned_entries_unaffected", "composition", "matches_reference"),
           "the whole time step overwritten where only some features are conditioned",
           {"diffuser.sample": _sample_whole_time_step}),
    Mutant("diffuser_sample_guide_on_input", "diffuser.sample", ("exact_law", "composition", "matches_reference"),
           "guidance added to tau^k before the network (code order) instead of to the mean",
           {"diffuser.sample": _sample_guide_on_input}),
    Mutant("diffuser_sample_values_default_zero", "diffuser.sample", ("rejects_out_of_domain",),
           "a mask without values conditions on zeros", {"diffuser.sample": _sample_values_default_zero}),
]
