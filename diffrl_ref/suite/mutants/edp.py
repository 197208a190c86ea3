"""Planted bugs for the ``edp`` family: mistakes seen in EDP-style training code."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import edp as ref
from diffrl_ref.reference.diffusion_ql import StateEpsFn

from . import Mutant

F = NDArray[np.float64]


def _sched(betas: ArrayLike, k: ArrayLike, B: int) -> tuple[F, F, F]:
    """beta_k, alpha_bar_k, alpha_bar_{k-1} as (B, 1) columns (no checks)."""
    b = np.asarray(betas, dtype=np.float64)
    ab = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    kk = np.broadcast_to(np.asarray(k), (B,)).astype(np.int64)
    return b[kk - 1][:, None], ab[kk][:, None], ab[kk - 1][:, None]


# ---- action_approx --------------------------------------------------------------------


def _approx_no_sqrt(a_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F:
    ref.action_approx(a_k, eps_hat, betas, k)
    x, e = np.asarray(a_k, dtype=np.float64), np.asarray(eps_hat, dtype=np.float64)
    _, ab, _ = _sched(betas, k, x.shape[0])
    return (x - (1.0 - ab) * e) / ab  # square roots missing


def _approx_alpha_for_alpha_bar(a_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F:
    ref.action_approx(a_k, eps_hat, betas, k)
    x, e = np.asarray(a_k, dtype=np.float64), np.asarray(eps_hat, dtype=np.float64)
    beta, _, _ = _sched(betas, k, x.shape[0])
    alpha = 1.0 - beta  # alphas[t] where alphas_cumprod[t] belongs
    return (x - np.sqrt(1.0 - alpha) * e) / np.sqrt(alpha)


def _approx_prev_alpha_bar(a_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F:
    ref.action_approx(a_k, eps_hat, betas, k)
    x, e = np.asarray(a_k, dtype=np.float64), np.asarray(eps_hat, dtype=np.float64)
    _, _, ab_prev = _sched(betas, k, x.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        return (x - np.sqrt(1.0 - ab_prev) * e) / np.sqrt(ab_prev)  # alphas_cumprod_prev by mistake


def _approx_unchecked(a_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F:
    x, e = np.asarray(a_k, dtype=np.float64), np.asarray(eps_hat, dtype=np.float64)
    b = np.asarray(betas, dtype=np.float64)
    ab = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    with np.errstate(all="ignore"):
        abk = ab[np.clip(np.asarray(k), 0, b.size)]
        abk = abk[:, None] if np.ndim(abk) else abk
        return np.asarray((x - np.sqrt(1.0 - abk) * e) / np.sqrt(abk))


# ---- weighted_elbo --------------------------------------------------------------------


def _elbo_terms(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike, eps: ArrayLike,
                noised: bool = True) -> tuple[F, F, F, F]:
    """(squared error, beta_k, alpha_bar_k) after the reference's checks; noised=False feeds the clean a."""
    ref.weighted_elbo(a, s, eps_fn, betas, k, eps)
    a0, e = np.asarray(a, dtype=np.float64), np.asarray(eps, dtype=np.float64)
    B = a0.shape[0]
    beta, ab, _ = _sched(betas, k, B)
    kk = np.broadcast_to(np.asarray(k), (B,)).astype(np.int64)
    x = np.sqrt(ab) * a0 + np.sqrt(1.0 - ab) * e if noised else a0
    e_hat = np.asarray(eps_fn(x, kk, np.asarray(s, dtype=np.float64)), dtype=np.float64)
    return np.sum((e - e_hat) ** 2, axis=1), beta[:, 0], ab[:, 0], e_hat


def _elbo_alpha_bar_for_alpha(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike,
                              eps: ArrayLike) -> F:
    se, beta, ab, _ = _elbo_terms(a, s, eps_fn, betas, k, eps)
    return beta / (2.0 * ab * (1.0 - ab)) * se


def _elbo_missing_half(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike,
                       eps: ArrayLike) -> F:
    se, beta, ab, _ = _elbo_terms(a, s, eps_fn, betas, k, eps)
    return beta / ((1.0 - beta) * (1.0 - ab)) * se


def _elbo_clean_action(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike,
                       eps: ArrayLike) -> F:
    se, beta, ab, _ = _elbo_terms(a, s, eps_fn, betas, k, eps, noised=False)
    return beta / (2.0 * (1.0 - beta) * (1.0 - ab)) * se


def _elbo_unchecked(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike,
                    eps: ArrayLike) -> F:
    a0, e = np.asarray(a, dtype=np.float64), np.asarray(eps, dtype=np.float64)
    B = a0.shape[0] if a0.ndim == 2 else 1
    b = np.asarray(betas, dtype=np.float64)
    kk = np.clip(np.broadcast_to(np.asarray(k), (B,)).astype(np.int64), 1, b.size)
    with np.errstate(all="ignore"):
        beta, ab, _ = _sched(b, kk, B)
        x = np.sqrt(ab) * a0 + np.sqrt(1.0 - ab) * e
        e_hat = np.asarray(eps_fn(x, kk, np.asarray(s, dtype=np.float64)), dtype=np.float64)
        w = beta[:, 0] / (2.0 * (1.0 - beta[:, 0]) * (1.0 - ab[:, 0]))
        return np.asarray(w * np.sum((e - e_hat) ** 2, axis=-1))


# ---- weights --------------------------------------------------------------------------


def _weights_awr_no_clip(q: ArrayLike, v: ArrayLike, kind: str, temperature: float,
                         w_max: float | None = None) -> F:
    w = ref.weights(q, v, kind, temperature, w_max)
    if kind != "awr":
        return w
    adv = np.asarray(q, dtype=np.float64) - np.asarray(v, dtype=np.float64)
    return np.asarray(np.exp(adv / temperature))  # AWR weights left unclipped


def _weights_crr_ge(q: ArrayLike, v: ArrayLike, kind: str, temperature: float, w_max: float | None = None) -> F:
    w = ref.weights(q, v, kind, temperature, w_max)
    if kind != "crr_binary":
        return w
    return (np.asarray(q, dtype=np.float64) >= np.asarray(v, dtype=np.float64)).astype(np.float64)  # ties count


def _weights_iql_divides(q: ArrayLike, v: ArrayLike, kind: str, temperature: float,
                         w_max: float | None = None) -> F:
    if kind != "iql":
        return ref.weights(q, v, kind, temperature, w_max)
    # IQL's beta is an inverse temperature; dividing by it treats it like AWR's lambda.
    return ref.weights(q, v, kind, 1.0 / temperature, w_max)


def _weights_q_not_advantage(q: ArrayLike, v: ArrayLike, kind: str, temperature: float,
                             w_max: float | None = None) -> F:
    ref.weights(q, v, kind, temperature, w_max)
    return ref.weights(q, np.zeros_like(np.asarray(q, dtype=np.float64)), kind, temperature, w_max)  # V dropped


def _weights_adv_sign(q: ArrayLike, v: ArrayLike, kind: str, temperature: float, w_max: float | None = None) -> F:
    ref.weights(q, v, kind, temperature, w_max)
    return ref.weights(v, q, kind, temperature, w_max)  # A = V - Q


def _weights_crr_sign(q: ArrayLike, v: ArrayLike, kind: str, temperature: float, w_max: float | None = None) -> F:
    w = ref.weights(q, v, kind, temperature, w_max)
    if kind != "crr_binary":
        return w
    return np.sign(np.asarray(q, dtype=np.float64) - np.asarray(v, dtype=np.float64))  # sign(A), not 1[A > 0]


def _weights_unchecked(q: ArrayLike, v: ArrayLike, kind: str, temperature: float, w_max: float | None = None) -> F:
    adv = np.asarray(q, dtype=np.float64) - np.asarray(v, dtype=np.float64)
    with np.errstate(all="ignore"):
        if kind == "crr_binary":
            return np.asarray(adv > 0, dtype=np.float64)
        cap = {"iql": 100.0}.get(kind, 20.0) if w_max is None else w_max
        x = adv * temperature if kind == "iql" else adv / temperature
        return np.asarray(np.minimum(np.exp(x), cap))


# ---- policy_objective -----------------------------------------------------------------


def _objective_sign(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike, eps: ArrayLike,
                    f: ArrayLike) -> F:
    return -ref.policy_objective(a, s, eps_fn, betas, k, eps, f)  # + f * elbo: a loss returned as the objective


def _objective_self_normalised(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike,
                               eps: ArrayLike, f: ArrayLike) -> F:
    ff = np.asarray(f, dtype=np.float64)
    J = ref.policy_objective(a, s, eps_fn, betas, k, eps, f)
    return J / np.mean(ff) if np.mean(ff) > 0 else J  # weights divided by their batch mean


def _objective_plus_bc(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike, eps: ArrayLike,
                       f: ArrayLike) -> F:
    J = ref.policy_objective(a, s, eps_fn, betas, k, eps, f)
    return J - ref.weighted_elbo(a, s, eps_fn, betas, k, eps)  # an unweighted ELBO term added to every row


def _objective_unchecked(a: ArrayLike, s: ArrayLike, eps_fn: StateEpsFn, betas: ArrayLike, k: ArrayLike, eps: ArrayLike,
                         f: ArrayLike) -> Any:
    return -np.asarray(f, dtype=np.float64) * _elbo_unchecked(a, s, eps_fn, betas, k, eps)



# ---- expectile_loss -------------------------------------------------------------------


def _residual(q: ArrayLike, v: ArrayLike) -> F:
    return np.asarray(q, dtype=np.float64) - np.asarray(v, dtype=np.float64)


def _expectile_weights_swapped(q: ArrayLike, v: ArrayLike, tau: float) -> F:
    ref.expectile_loss(q, v, tau)
    u = _residual(q, v)
    return np.where(u < 0, tau, 1.0 - tau) * u**2  # tau on V above Q: fits the lower (1 - tau)-expectile


def _expectile_abs_residual(q: ArrayLike, v: ArrayLike, tau: float) -> F:
    ref.expectile_loss(q, v, tau)
    u = _residual(q, v)
    return np.where(u < 0, 1.0 - tau, tau) * np.abs(u)  # the quantile (pinball) loss: fits the tau-quantile


def _expectile_weight_squared(q: ArrayLike, v: ArrayLike, tau: float) -> F:
    ref.expectile_loss(q, v, tau)
    u = _residual(q, v)
    return (np.where(u < 0, 1.0 - tau, tau) * u) ** 2  # (weight * diff)**2: weights tau^2 and (1 - tau)^2


def _expectile_unchecked(q: ArrayLike, v: ArrayLike, tau: float) -> Any:
    with np.errstate(all="ignore"):
        u = np.asarray(q, dtype=np.float64) - np.asarray(v, dtype=np.float64)
        return np.where(u < 0, 1.0 - float(tau), float(tau)) * u**2


# ---- iql_q_target ---------------------------------------------------------------------


def _target_done_ignored(r: ArrayLike, done: ArrayLike, v_next: ArrayLike, gamma: float) -> F:
    ref.iql_q_target(r, done, v_next, gamma)
    return ref.iql_q_target(r, np.zeros(np.shape(done)), v_next, gamma)  # bootstraps through terminal states


def _target_done_inverted(r: ArrayLike, done: ArrayLike, v_next: ArrayLike, gamma: float) -> F:
    ref.iql_q_target(r, done, v_next, gamma)
    return ref.iql_q_target(r, 1.0 - np.asarray(done, dtype=np.float64), v_next, gamma)  # d where 1 - d belongs


def _target_reward_masked(r: ArrayLike, done: ArrayLike, v_next: ArrayLike, gamma: float) -> F:
    y = ref.iql_q_target(r, done, v_next, gamma)
    return np.asarray((1.0 - np.asarray(done, dtype=np.float64)) * y)  # (1 - d)(r + gamma V): terminal reward lost


def _target_unchecked(r: ArrayLike, done: ArrayLike, v_next: ArrayLike, gamma: float) -> Any:
    with np.errstate(all="ignore"):
        rr, d, vn = (np.asarray(x, dtype=np.float64) for x in (r, done, v_next))
        return rr + float(gamma) * (1.0 - d) * vn


MUTANTS = [
    Mutant("edp_a0_missing_sqrt", "edp.action_approx",
           ("exact_for_true_noise", "tweedie", "ddim_jump_to_zero", "matches_reference"),
           "a0_hat = (a^k - (1 - ab_k) eps_hat) / ab_k: the square roots forgotten",
           {"edp.action_approx": _approx_no_sqrt}),
    Mutant("edp_a0_alpha_for_alpha_bar", "edp.action_approx",
           ("exact_for_true_noise", "tweedie", "ddim_jump_to_zero", "matches_reference"),
           "alpha_k used where alpha_bar_k belongs", {"edp.action_approx": _approx_alpha_for_alpha_bar}),
    Mutant("edp_a0_previous_alpha_bar", "edp.action_approx",
           ("exact_for_true_noise", "tweedie", "ddim_jump_to_zero", "matches_reference"),
           "alpha_bar_{k-1} (alphas_cumprod_prev) used in the reconstruction",
           {"edp.action_approx": _approx_prev_alpha_bar}),
    Mutant("edp_a0_no_domain_check", "edp.action_approx", ("rejects_out_of_domain",),
           "no validation of k, shapes or NaN", {"edp.action_approx": _approx_unchecked}),
    Mutant("edp_elbo_alpha_bar_for_alpha", "edp.weighted_elbo",
           ("weight_closed_form", "equals_vlb_weighting", "matches_reference"),
           "weight beta_k / (2 alpha_bar_k (1 - alpha_bar_k)): alpha_bar_k for alpha_k",
           {"edp.weighted_elbo": _elbo_alpha_bar_for_alpha}),
    Mutant("edp_elbo_missing_half", "edp.weighted_elbo",
           ("weight_closed_form", "equals_vlb_weighting", "matches_reference"),
           "weight beta_k / (alpha_k (1 - alpha_bar_k)): the 1/2 of the Gaussian KL dropped",
           {"edp.weighted_elbo": _elbo_missing_half}),
    Mutant("edp_elbo_network_sees_clean_action", "edp.weighted_elbo",
           ("weight_closed_form", "equals_vlb_weighting", "matches_reference"),
           "the network is evaluated at the clean action a instead of the noised a^k",
           {"edp.weighted_elbo": _elbo_clean_action}),
    Mutant("edp_elbo_no_domain_check", "edp.weighted_elbo", ("rejects_out_of_domain",),
           "no validation of the inputs or the network output", {"edp.weighted_elbo": _elbo_unchecked}),
    Mutant("edp_awr_no_clip", "edp.weights", ("non_negative_bounded", "clip_limits", "matches_reference"),
           "AWR weights exp(A / lambda) without the clip at w_max", {"edp.weights": _weights_awr_no_clip}),
    Mutant("edp_crr_indicator_ge", "edp.weights", ("crr_step", "matches_reference"),
           "CRR indicator 1[A >= 0]: ties get weight 1", {"edp.weights": _weights_crr_ge}),
    Mutant("edp_crr_sign_for_step", "edp.weights", ("non_negative_bounded", "crr_step", "matches_reference"),
           "CRR binary weight sign(A) instead of the step 1[A > 0]", {"edp.weights": _weights_crr_sign}),
    Mutant("edp_iql_divides_by_beta", "edp.weights", ("exp_closed_form", "matches_reference"),
           "IQL weight exp(A / beta): the inverse temperature used as a temperature",
           {"edp.weights": _weights_iql_divides}),
    Mutant("edp_weights_of_q_not_advantage", "edp.weights", ("exp_closed_form", "matches_reference"),
           "exp(Q / T): the baseline V left out of the advantage", {"edp.weights": _weights_q_not_advantage}),
    Mutant("edp_advantage_sign_flipped", "edp.weights",
           ("monotone", "crr_step", "exp_closed_form", "matches_reference"),
           "A = V - Q: weights favour the worse actions", {"edp.weights": _weights_adv_sign}),
    Mutant("edp_weights_no_domain_check", "edp.weights", ("rejects_out_of_domain",),
           "no validation of kind, temperature, w_max or shapes", {"edp.weights": _weights_unchecked}),
    Mutant("edp_objective_sign", "edp.policy_objective", ("composition", "candidate_ranking", "matches_reference"),
           "returns f * elbo (the loss) where the objective f * log pi = -f * elbo is meant",
           {"edp.policy_objective": _objective_sign}),
    Mutant("edp_objective_self_normalised", "edp.policy_objective", ("composition", "matches_reference"),
           "weights divided by their batch mean (self-normalised): a rescaled objective",
           {"edp.policy_objective": _objective_self_normalised}),
    Mutant("edp_objective_unweighted_bc_added", "edp.policy_objective",
           ("composition", "candidate_ranking", "matches_reference"),
           "an unweighted ELBO term added: zero-weight samples still shape the policy",
           {"edp.policy_objective": _objective_plus_bc}),
    Mutant("edp_objective_no_domain_check", "edp.policy_objective", ("rejects_out_of_domain",),
           "negative or NaN weights accepted", {"edp.policy_objective": _objective_unchecked}),
    Mutant("edp_expectile_weights_swapped", "edp.expectile_loss",
           ("asymmetric_square", "expectile_minimiser", "monotone_in_tau", "matches_reference"),
           "weight tau where Q < V and 1 - tau where Q > V: V fits the lower (1 - tau)-expectile",
           {"edp.expectile_loss": _expectile_weights_swapped}),
    Mutant("edp_expectile_abs_residual", "edp.expectile_loss",
           ("asymmetric_square", "expectile_minimiser", "matches_reference"),
           "|tau - 1(u < 0)| |u|: the quantile (pinball) loss in place of the expectile's square",
           {"edp.expectile_loss": _expectile_abs_residual}),
    Mutant("edp_expectile_weight_squared", "edp.expectile_loss",
           ("asymmetric_square", "expectile_minimiser", "matches_reference"),
           "(weight * u)^2: the weights squared to tau^2 and (1 - tau)^2, another expectile",
           {"edp.expectile_loss": _expectile_weight_squared}),
    Mutant("edp_expectile_no_domain_check", "edp.expectile_loss", ("rejects_out_of_domain",),
           "no validation of tau, shapes or NaN", {"edp.expectile_loss": _expectile_unchecked}),
    Mutant("edp_iql_target_done_ignored", "edp.iql_q_target",
           ("done_masks_bootstrap", "fixed_point", "matches_reference"),
           "terminal flag ignored: y = r + gamma V(s') through the end of episodes",
           {"edp.iql_q_target": _target_done_ignored}),
    Mutant("edp_iql_target_done_inverted", "edp.iql_q_target",
           ("done_masks_bootstrap", "fixed_point", "matches_reference"),
           "mask inverted: gamma d V(s') bootstraps only at terminal states",
           {"edp.iql_q_target": _target_done_inverted}),
    Mutant("edp_iql_target_terminal_reward_dropped", "edp.iql_q_target",
           ("done_masks_bootstrap", "fixed_point", "matches_reference"),
           "(1 - d)(r + gamma V(s')): the mask applied to the reward too, terminal rewards lost",
           {"edp.iql_q_target": _target_reward_masked}),
    Mutant("edp_iql_target_no_domain_check", "edp.iql_q_target", ("rejects_out_of_domain",),
           "no validation: gamma = 1, done = 0.5, NaN and mismatched shapes pass",
           {"edp.iql_q_target": _target_unchecked}),
]
