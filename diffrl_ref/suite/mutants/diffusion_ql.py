"""Planted bugs for the ``diffusion_ql`` family: mistakes seen in diffusion-policy code."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import ddpm
from diffrl_ref.reference import diffusion_ql as ref

from . import Mutant

F = NDArray[np.float64]


def _ab(betas: ArrayLike) -> F:
    return np.concatenate([[1.0], np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))])


def _steps(k: ArrayLike, B: int) -> NDArray[np.int64]:
    return np.broadcast_to(np.asarray(k), (B,)).astype(np.int64)


# ---- bc_loss --------------------------------------------------------------------------


def _bc_swapped(a: ArrayLike, s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, k: ArrayLike,
                eps: ArrayLike) -> F:
    ref.bc_loss(a, s, eps_fn, betas, k, eps)  # the domain checks
    a0, e = np.asarray(a, dtype=np.float64), np.asarray(eps, dtype=np.float64)
    steps = _steps(k, a0.shape[0])
    ab = _ab(betas)[steps][:, None]
    x = np.sqrt(ab) * e + np.sqrt(1.0 - ab) * a0  # signal and noise coefficients exchanged
    return np.asarray(np.sum((e - np.asarray(eps_fn(x, steps, np.asarray(s, dtype=np.float64)))) ** 2, axis=1))


def _bc_zero_based(a: ArrayLike, s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, k: ArrayLike,
                   eps: ArrayLike) -> F:
    # The noising is right but the network is handed the 0-based timestep t = k - 1.
    def shifted(x: F, kk: NDArray[np.int64], st: F) -> Any:
        return eps_fn(x, kk - 1, st)
    return ref.bc_loss(a, s, shifted, betas, k, eps)


def _bc_mean_over_dims(a: ArrayLike, s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, k: ArrayLike,
                       eps: ArrayLike) -> F:
    # F.mse_loss(..., reduction='none').mean() per row: the squared norm divided by da.
    return np.asarray(ref.bc_loss(a, s, eps_fn, betas, k, eps) / np.asarray(a).shape[1], dtype=np.float64)


def _bc_unchecked(a: ArrayLike, s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, k: ArrayLike,
                  eps: ArrayLike) -> F:
    a0, e, st = (np.asarray(v, dtype=np.float64) for v in (a, eps, s))
    steps = _steps(k, a0.shape[0] if a0.ndim == 2 else 1)
    with np.errstate(all="ignore"):
        ab = _ab(betas)[np.clip(steps, 0, len(np.asarray(betas)))][:, None]
        x = np.sqrt(ab) * a0 + np.sqrt(1.0 - ab) * e
        return np.asarray(np.sum((e - np.asarray(eps_fn(x, steps, st))) ** 2, axis=-1), dtype=np.float64)


# ---- sample_action --------------------------------------------------------------------


def _chain(s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, a_K: ArrayLike, noises: ArrayLike,
           max_action: float | None, variance: str, *, clip_x0: bool, clip_out: bool, last: int = 1,
           noise_at_1: bool = False) -> F:
    """The sampler with switchable parts (checks by the reference first)."""
    ref.sample_action(s, eps_fn, betas, a_K, noises, max_action, variance)
    b = np.asarray(betas, dtype=np.float64)
    ab = _ab(b)
    x = np.asarray(a_K, dtype=np.float64)
    st = np.asarray(s, dtype=np.float64)
    z = np.asarray(noises, dtype=np.float64)
    B = x.shape[0]
    for k in range(b.size, last - 1, -1):
        e = np.asarray(eps_fn(x, np.full(B, k, dtype=np.int64), st), dtype=np.float64)
        if clip_x0 and max_action is not None:
            x0 = (x - np.sqrt(1.0 - ab[k]) * e) / np.sqrt(ab[k])
            x0c = np.clip(x0, -max_action, max_action)
            e = np.where(x0c != x0, (x - np.sqrt(ab[k]) * x0c) / np.sqrt(1.0 - ab[k]), e)
        x = ddpm.reverse_step(x, e, b, k, z[k - 1], variance)
        if noise_at_1 and k == 1:
            x = x + np.sqrt(b[0]) * z[0]
    if clip_out and max_action is not None:
        x = np.clip(x, -max_action, max_action)
    return x


def _sample_no_clip(s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, a_K: ArrayLike, noises: ArrayLike,
                    max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    return _chain(s, eps_fn, betas, a_K, noises, max_action, variance, clip_x0=False, clip_out=False)


def _sample_final_clamp_only(s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, a_K: ArrayLike, noises: ArrayLike,
                             max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    return _chain(s, eps_fn, betas, a_K, noises, max_action, variance, clip_x0=False, clip_out=True)


def _sample_noise_at_k1(s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, a_K: ArrayLike, noises: ArrayLike,
                        max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    return _chain(s, eps_fn, betas, a_K, noises, max_action, variance, clip_x0=True, clip_out=True, noise_at_1=True)


def _sample_always_beta(s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, a_K: ArrayLike, noises: ArrayLike,
                        max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    ref.sample_action(s, eps_fn, betas, a_K, noises, max_action, variance)
    return ref.sample_action(s, eps_fn, betas, a_K, noises, max_action, "beta")  # variance argument ignored


def _sample_stops_at_1(s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, a_K: ArrayLike, noises: ArrayLike,
                       max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    # range(K - 1, 0, -1) over 0-based t, read as 1-based k: the step leaving k = 1 is skipped.
    return _chain(s, eps_fn, betas, a_K, noises, max_action, variance, clip_x0=True, clip_out=True, last=2)


def _sample_unchecked(s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, a_K: ArrayLike, noises: ArrayLike,
                      max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    b = np.asarray(betas, dtype=np.float64)
    ab = _ab(b)
    x = np.asarray(a_K, dtype=np.float64)
    z = np.asarray(noises, dtype=np.float64)
    with np.errstate(all="ignore"):
        for k in range(b.size, 0, -1):
            e = np.asarray(eps_fn(x, np.full(x.shape[0], k, dtype=np.int64), np.asarray(s, dtype=np.float64)))
            mean = (x - b[k - 1] / np.sqrt(1.0 - ab[k]) * e) / np.sqrt(1.0 - b[k - 1])
            sig = 0.0 if k == 1 else np.sqrt(b[k - 1])
            x = mean + sig * z[min(k - 1, z.shape[0] - 1)]
        return np.asarray(x if max_action is None else np.clip(x, -abs(max_action), abs(max_action)))


# ---- q_loss / q_loss_grad -------------------------------------------------------------


def _q_not_normalised(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> F:
    ref.q_loss(q, q_norm, eta)
    return np.asarray(-eta * np.asarray(q, dtype=np.float64))  # alpha = eta


def _q_same_critic(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> F:
    ref.q_loss(q, q_norm, eta)
    qq = np.asarray(q, dtype=np.float64)
    with np.errstate(all="ignore"):
        return np.asarray(-eta * qq / np.mean(np.abs(qq)))  # normalised by the critic being maximised


def _q_no_abs(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> F:
    ref.q_loss(q, q_norm, eta)
    with np.errstate(all="ignore"):
        return np.asarray(-eta * np.asarray(q, dtype=np.float64) / np.mean(np.asarray(q_norm, dtype=np.float64)))


def _q_sign(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> F:
    return -ref.q_loss(q, q_norm, eta)  # + alpha Q: minimises the value


def _q_unchecked(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> F:
    with np.errstate(all="ignore"):
        qn = np.asarray(q_norm, dtype=np.float64)
        return np.asarray(-eta * np.asarray(q, dtype=np.float64) / np.mean(np.abs(qn)))


def _grad_through_normaliser(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> tuple[F, F]:
    g_q, _ = ref.q_loss_grad(q, q_norm, eta)
    qq, qn = np.asarray(q, dtype=np.float64), np.asarray(q_norm, dtype=np.float64)
    n = np.mean(np.abs(qn))
    # d/dq_norm_j of -eta mean(q) / mean|q_norm|: the .detach() forgotten.
    return g_q, eta * np.mean(qq) * np.sign(qn) / (qn.size * n**2)


def _grad_same_critic_with_grad(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> tuple[F, F]:
    ref.q_loss_grad(q, q_norm, eta)
    qq, qn = np.asarray(q, dtype=np.float64), np.asarray(q_norm, dtype=np.float64)
    B, n = qq.size, float(np.mean(np.abs(qq))) or 1.0
    # -eta mean(q) / mean|q|, differentiated through both.
    return -eta / (B * n) + eta * np.mean(qq) * np.sign(qq) / (B * n**2), np.zeros_like(qn)


def _grad_of_sum(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> tuple[F, F]:
    g_q, g_n = ref.q_loss_grad(q, q_norm, eta)
    return g_q * np.asarray(q).size, g_n  # gradient of the batch sum, not the mean


def _grad_unchecked(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> tuple[F, F]:
    qq, qn = np.asarray(q, dtype=np.float64), np.asarray(q_norm, dtype=np.float64)
    with np.errstate(all="ignore"):
        return np.full(qq.shape, -eta / (max(qq.size, 1) * np.mean(np.abs(qn)))), np.zeros(qn.shape)


# ---- loss -----------------------------------------------------------------------------


def _loss_parts(a: ArrayLike, s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, k: ArrayLike, eps: ArrayLike,
                a_K: ArrayLike, noises: ArrayLike, max_action: float | None, variance: str) -> tuple[F, F, F]:
    l_d = ref.bc_loss(a, s, eps_fn, betas, k, eps)
    a0 = ref.sample_action(s, eps_fn, betas, a_K, noises, max_action, variance)
    return l_d, a0, np.asarray(s, dtype=np.float64)


def _loss_critics_swapped(a: ArrayLike, s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, k: ArrayLike,
                          eps: ArrayLike, a_K: ArrayLike, noises: ArrayLike, q_fn: ref.QFn, q_norm_fn: ref.QFn,
                          eta: float = 1.0, max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    ref.loss(a, s, eps_fn, betas, k, eps, a_K, noises, q_fn, q_norm_fn, eta, max_action, variance)
    return ref.loss(a, s, eps_fn, betas, k, eps, a_K, noises, q_norm_fn, q_fn, eta, max_action, variance)


def _loss_q_on_data_actions(a: ArrayLike, s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, k: ArrayLike,
                            eps: ArrayLike, a_K: ArrayLike, noises: ArrayLike, q_fn: ref.QFn, q_norm_fn: ref.QFn,
                            eta: float = 1.0, max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    ref.loss(a, s, eps_fn, betas, k, eps, a_K, noises, q_fn, q_norm_fn, eta, max_action, variance)
    l_d, _, st = _loss_parts(a, s, eps_fn, betas, k, eps, a_K, noises, max_action, variance)
    a0 = np.asarray(a, dtype=np.float64)  # the batch actions, not the policy's samples
    return l_d + ref.q_loss(np.asarray(q_fn(st, a0)), np.asarray(q_norm_fn(st, a0)), eta)


def _loss_minus(a: ArrayLike, s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, k: ArrayLike,
                eps: ArrayLike, a_K: ArrayLike, noises: ArrayLike, q_fn: ref.QFn, q_norm_fn: ref.QFn,
                eta: float = 1.0, max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    ref.loss(a, s, eps_fn, betas, k, eps, a_K, noises, q_fn, q_norm_fn, eta, max_action, variance)
    l_d, a0, st = _loss_parts(a, s, eps_fn, betas, k, eps, a_K, noises, max_action, variance)
    return l_d - ref.q_loss(np.asarray(q_fn(st, a0)), np.asarray(q_norm_fn(st, a0)), eta)


def _loss_normaliser_on_data_actions(a: ArrayLike, s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike,
                                     k: ArrayLike, eps: ArrayLike, a_K: ArrayLike, noises: ArrayLike, q_fn: ref.QFn,
                                     q_norm_fn: ref.QFn, eta: float = 1.0, max_action: float | None = 1.0,
                                     variance: str = "beta_tilde") -> F:
    ref.loss(a, s, eps_fn, betas, k, eps, a_K, noises, q_fn, q_norm_fn, eta, max_action, variance)
    l_d, a0, st = _loss_parts(a, s, eps_fn, betas, k, eps, a_K, noises, max_action, variance)
    # The paper's formula read literally: alpha = eta / E_{(s,a)~D}|Q(s, a)|, the normaliser at the batch
    # actions, where the official code evaluates the other critic at the policy's sample a^0.
    data_a = np.asarray(a, dtype=np.float64)
    return l_d + ref.q_loss(np.asarray(q_fn(st, a0)), np.asarray(q_norm_fn(st, data_a)), eta)


def _loss_unchecked(a: ArrayLike, s: ArrayLike, eps_fn: ref.StateEpsFn, betas: ArrayLike, k: ArrayLike,
                    eps: ArrayLike, a_K: ArrayLike, noises: ArrayLike, q_fn: ref.QFn, q_norm_fn: ref.QFn,
                    eta: float = 1.0, max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    l_d = _bc_unchecked(a, s, eps_fn, betas, k, eps)
    a0 = _sample_unchecked(s, eps_fn, betas, a_K, noises, max_action, variance)
    st = np.asarray(s, dtype=np.float64)
    with np.errstate(all="ignore"):
        q = np.asarray(q_fn(st, a0), dtype=np.float64)
        qn = np.asarray(q_norm_fn(st, a0), dtype=np.float64)
        return np.asarray(l_d - eta * q.reshape(q.shape[0], -1)[:, 0] / np.mean(np.abs(qn)))


MUTANTS = [
    Mutant("dql_bc_signal_noise_swapped", "diffusion_ql.bc_loss",
           ("true_noise_residual", "network_inputs", "matches_reference"),
           "a_k = sqrt(ab_k) eps + sqrt(1 - ab_k) a: the coefficients of action and noise exchanged",
           {"diffusion_ql.bc_loss": _bc_swapped}),
    Mutant("dql_bc_zero_based_step", "diffusion_ql.bc_loss", ("network_inputs", "matches_reference"),
           "the network is handed the 0-based timestep k - 1 while the noising uses k",
           {"diffusion_ql.bc_loss": _bc_zero_based}),
    Mutant("dql_bc_mean_over_action_dims", "diffusion_ql.bc_loss", ("true_noise_residual", "matches_reference"),
           "squared error averaged over action dimensions (official WeightedL2) instead of summed",
           {"diffusion_ql.bc_loss": _bc_mean_over_dims}),
    Mutant("dql_bc_no_domain_check", "diffusion_ql.bc_loss", ("rejects_out_of_domain",),
           "no validation of k, shapes, NaN or the network output", {"diffusion_ql.bc_loss": _bc_unchecked}),
    Mutant("dql_sample_no_clip", "diffusion_ql.sample_action",
           ("clip_denoised", "action_bounds", "matches_reference"),
           "neither x0_hat nor the final action clipped to [-max_action, max_action]",
           {"diffusion_ql.sample_action": _sample_no_clip}),
    Mutant("dql_sample_final_clamp_only", "diffusion_ql.sample_action", ("clip_denoised", "matches_reference"),
           "clip_denoised off: only the returned action is clamped",
           {"diffusion_ql.sample_action": _sample_final_clamp_only}),
    Mutant("dql_sample_noise_at_k1", "diffusion_ql.sample_action", ("reverse_chain_composition", "matches_reference"),
           "noise sqrt(beta_1) z added on the last step too (nonzero_mask forgotten)",
           {"diffusion_ql.sample_action": _sample_noise_at_k1}),
    Mutant("dql_sample_variance_ignored", "diffusion_ql.sample_action",
           ("reverse_chain_composition", "exact_law", "matches_reference"),
           "always samples with sigma_k^2 = beta_k whatever variance is asked",
           {"diffusion_ql.sample_action": _sample_always_beta}),
    Mutant("dql_sample_stops_at_k1", "diffusion_ql.sample_action",
           ("reverse_chain_composition", "clip_denoised", "exact_law", "matches_reference"),
           "loop over range(K - 1, 0, -1) read as 1-based steps: the step leaving k = 1 is skipped",
           {"diffusion_ql.sample_action": _sample_stops_at_1}),
    Mutant("dql_sample_no_domain_check", "diffusion_ql.sample_action", ("rejects_out_of_domain",),
           "no validation of shapes, NaN, max_action, variance or the network output",
           {"diffusion_ql.sample_action": _sample_unchecked}),
    Mutant("dql_q_not_normalised", "diffusion_ql.q_loss",
           ("scale_invariant", "constant_critic", "closed_form", "matches_reference"),
           "alpha = eta: the Q term not divided by E|Q|", {"diffusion_ql.q_loss": _q_not_normalised}),
    Mutant("dql_q_normalised_by_own_critic", "diffusion_ql.q_loss", ("closed_form", "matches_reference"),
           "normaliser taken from the critic being maximised instead of the given q_norm",
           {"diffusion_ql.q_loss": _q_same_critic}),
    Mutant("dql_q_normaliser_without_abs", "diffusion_ql.q_loss",
           ("constant_critic", "closed_form", "matches_reference"),
           "alpha = eta / mean(Q) without the absolute value", {"diffusion_ql.q_loss": _q_no_abs}),
    Mutant("dql_q_sign_flipped", "diffusion_ql.q_loss", ("constant_critic", "closed_form", "matches_reference"),
           "+alpha Q: the policy is pushed towards low values", {"diffusion_ql.q_loss": _q_sign}),
    Mutant("dql_q_no_domain_check", "diffusion_ql.q_loss", ("rejects_out_of_domain",),
           "no validation: an all-zero normaliser divides by zero", {"diffusion_ql.q_loss": _q_unchecked}),
    Mutant("dql_grad_through_normaliser", "diffusion_ql.q_loss_grad", ("stop_gradient", "matches_reference"),
           "normaliser without .detach(): gradient flows into the other critic's values",
           {"diffusion_ql.q_loss_grad": _grad_through_normaliser}),
    Mutant("dql_grad_own_critic_normaliser", "diffusion_ql.q_loss_grad", ("closed_form", "matches_reference"),
           "normaliser from the maximised critic itself, with gradient: L_q = -eta mean(q) / mean|q|",
           {"diffusion_ql.q_loss_grad": _grad_same_critic_with_grad}),
    Mutant("dql_grad_of_sum", "diffusion_ql.q_loss_grad", ("closed_form", "matches_reference"),
           "gradient of the batch sum instead of the batch mean", {"diffusion_ql.q_loss_grad": _grad_of_sum}),
    Mutant("dql_grad_no_domain_check", "diffusion_ql.q_loss_grad", ("rejects_out_of_domain",),
           "no validation of the critic values", {"diffusion_ql.q_loss_grad": _grad_unchecked}),
    Mutant("dql_loss_critics_swapped", "diffusion_ql.loss", ("composition", "point_mass_policy", "matches_reference"),
           "the normaliser's critic maximised and the maximised critic used as normaliser",
           {"diffusion_ql.loss": _loss_critics_swapped}),
    Mutant("dql_loss_q_on_dataset_actions", "diffusion_ql.loss",
           ("composition", "point_mass_policy", "matches_reference"),
           "Q evaluated at the batch actions a instead of the policy's sample a^0 (no policy improvement)",
           {"diffusion_ql.loss": _loss_q_on_data_actions}),
    Mutant("dql_loss_q_term_subtracted", "diffusion_ql.loss",
           ("composition", "constant_critic", "point_mass_policy", "matches_reference"),
           "L = L_d - L_q: the sign of the Q term doubled", {"diffusion_ql.loss": _loss_minus}),
    Mutant("dql_loss_normaliser_on_dataset_actions", "diffusion_ql.loss",
           ("composition", "point_mass_policy", "matches_reference"),
           "alpha = eta / mean|Q'(s, a)| at the batch actions (the paper's E_(s,a)~D read literally) instead of "
           "at the policy's sample a^0", {"diffusion_ql.loss": _loss_normaliser_on_data_actions}),
    Mutant("dql_loss_no_domain_check", "diffusion_ql.loss", ("rejects_out_of_domain",),
           "no validation of the pieces or the critic outputs", {"diffusion_ql.loss": _loss_unchecked}),
]
