"""Planted bugs for the ``dom2`` family: mistakes seen in multi-agent diffusion-policy code."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import logsumexp

from diffrl_ref.reference import diffusion_ql
from diffrl_ref.reference import dom2 as ref
from diffrl_ref.reference.diffusion_ql import StateEpsFn

from . import Mutant

F = NDArray[np.float64]


# ---- cql_loss -------------------------------------------------------------------------


def _cql_parts(q_all: ArrayLike, a_idx: ArrayLike, y: ArrayLike, alpha: float) -> tuple[F, F, F]:
    ref.cql_loss(q_all, a_idx, y, alpha)  # the domain checks
    q = np.asarray(q_all, dtype=np.float64)
    q_data = q[np.arange(q.shape[0]), np.asarray(a_idx)]
    return q, q_data, (q_data - np.asarray(y, dtype=np.float64)) ** 2


def _cql_max(q_all: ArrayLike, a_idx: ArrayLike, y: ArrayLike, alpha: float) -> F:
    q, q_data, td = _cql_parts(q_all, a_idx, y, alpha)
    return np.asarray(td + alpha * (np.max(q, axis=1) - q_data))  # hard max in place of the soft maximum


def _cql_sign(q_all: ArrayLike, a_idx: ArrayLike, y: ArrayLike, alpha: float) -> F:
    q, q_data, td = _cql_parts(q_all, a_idx, y, alpha)
    return np.asarray(td + alpha * (q_data - logsumexp(q, axis=1)))  # pushes unseen actions up, data down


def _cql_log_mean_exp(q_all: ArrayLike, a_idx: ArrayLike, y: ArrayLike, alpha: float) -> F:
    q, q_data, td = _cql_parts(q_all, a_idx, y, alpha)
    return np.asarray(td + alpha * (logsumexp(q, axis=1) - np.log(q.shape[1]) - q_data))  # 0 for constant Q


def _cql_half_td(q_all: ArrayLike, a_idx: ArrayLike, y: ArrayLike, alpha: float) -> F:
    q, q_data, td = _cql_parts(q_all, a_idx, y, alpha)
    return np.asarray(0.5 * td + alpha * (logsumexp(q, axis=1) - q_data))  # Kumar et al.'s 1/2 on the TD term


def _cql_mean_for_data(q_all: ArrayLike, a_idx: ArrayLike, y: ArrayLike, alpha: float) -> F:
    q, _, td = _cql_parts(q_all, a_idx, y, alpha)
    return np.asarray(td + alpha * (logsumexp(q, axis=1) - np.mean(q, axis=1)))  # uniform mean for the data term


def _cql_unchecked(q_all: ArrayLike, a_idx: ArrayLike, y: ArrayLike, alpha: float) -> F:
    q = np.asarray(q_all, dtype=np.float64)
    with np.errstate(all="ignore"):
        q2 = q.reshape(q.shape[0], -1) if q.ndim else q.reshape(1, 1)
        idx = np.mod(np.asarray(a_idx).astype(np.int64), q2.shape[1])[: q2.shape[0]]
        idx = np.resize(idx, q2.shape[0])
        q_data = q2[np.arange(q2.shape[0]), idx]
        yy = np.resize(np.asarray(y, dtype=np.float64), q2.shape[0])
        return np.asarray((q_data - yy) ** 2 + alpha * (logsumexp(q2, axis=1) - q_data))


# ---- cql_sampled ----------------------------------------------------------------------


def _cqls_parts(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike,
                alpha: float) -> tuple[F, F, F, F]:
    ref.cql_sampled(q_data, q_samples, log_p, y, alpha)  # the domain checks
    qd, qs, lp = (np.asarray(v, dtype=np.float64) for v in (q_data, q_samples, log_p))
    return qd, qs, lp, (qd - np.asarray(y, dtype=np.float64)) ** 2


def _cqls_no_mean(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike, alpha: float) -> F:
    qd, qs, lp, td = _cqls_parts(q_data, q_samples, log_p, y, alpha)
    return np.asarray(td + alpha * (logsumexp(qs - lp, axis=1) - qd))  # CQL code's convention: no 1/M


def _cqls_density_sign(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike, alpha: float) -> F:
    qd, qs, lp, td = _cqls_parts(q_data, q_samples, log_p, y, alpha)
    return np.asarray(td + alpha * (logsumexp(qs + lp, axis=1) - np.log(qs.shape[1]) - qd))  # exp(Q) p, not exp(Q)/p


def _cqls_mean(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike, alpha: float) -> F:
    qd, qs, lp, td = _cqls_parts(q_data, q_samples, log_p, y, alpha)
    return np.asarray(td + alpha * (np.mean(qs - lp, axis=1) - qd))  # mean of the log-weights (Jensen's bound)


def _cqls_max(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike, alpha: float) -> F:
    qd, qs, lp, td = _cqls_parts(q_data, q_samples, log_p, y, alpha)
    return np.asarray(td + alpha * (np.max(qs - lp, axis=1) - qd))  # hard max in place of the log-mean-exp


def _cqls_half_td(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike, alpha: float) -> F:
    qd, qs, lp, td = _cqls_parts(q_data, q_samples, log_p, y, alpha)
    return np.asarray(0.5 * td + alpha * (logsumexp(qs - lp, axis=1) - np.log(qs.shape[1]) - qd))


def _cqls_sign(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike, alpha: float) -> F:
    qd, qs, lp, td = _cqls_parts(q_data, q_samples, log_p, y, alpha)
    return np.asarray(td + alpha * (qd - logsumexp(qs - lp, axis=1) + np.log(qs.shape[1])))  # penalty reversed


def _cqls_unchecked(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike, alpha: float) -> F:
    with np.errstate(all="ignore"):
        qs = np.atleast_2d(np.asarray(q_samples, dtype=np.float64))
        B = qs.shape[0]
        qd = np.resize(np.asarray(q_data, dtype=np.float64), B)
        lp = np.resize(np.asarray(log_p, dtype=np.float64), qs.shape)
        yy = np.resize(np.asarray(y, dtype=np.float64), B)
        M = max(qs.shape[1], 1)
        lz = logsumexp(qs - lp, axis=1) - np.log(M) if qs.shape[1] else np.zeros(B)
        return np.asarray((qd - yy) ** 2 + alpha * (lz - qd))


# ---- policy_loss ----------------------------------------------------------------------


def _shared_critic(agents: Sequence[ref.Agent], betas: ArrayLike, eta: float = 1.0, max_action: float | None = 1.0,
                   variance: str = "beta_tilde") -> F:
    ref.policy_loss(agents, betas, eta, max_action, variance)
    first = agents[0]

    def same_type(ag: ref.Agent) -> bool:
        return bool(np.shape(ag.obs)[1:] == np.shape(first.obs)[1:] and np.shape(ag.action)[1:] ==
                    np.shape(first.action)[1:])

    # Parameter sharing gone wrong: every agent of agent 0's type (same observation and action widths,
    # where a shared critic can be called at all) is scored by agent 0's critics.
    shared = [ag._replace(q_fn=first.q_fn, q_norm_fn=first.q_norm_fn) if same_type(ag) else ag for ag in agents]
    return ref.policy_loss(shared, betas, eta, max_action, variance)


def _pooled_normaliser(agents: Sequence[ref.Agent], betas: ArrayLike, eta: float = 1.0,
                       max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    ref.policy_loss(agents, betas, eta, max_action, variance)
    rows, q_vals, qn_vals = [], [], []
    for ag in agents:
        s = np.asarray(ag.obs, dtype=np.float64)
        rows.append(diffusion_ql.bc_loss(ag.action, s, ag.eps_fn, betas, ag.k, ag.eps))
        a0 = diffusion_ql.sample_action(s, ag.eps_fn, betas, ag.a_K, ag.noises, max_action, variance)
        q_vals.append(np.asarray(ag.q_fn(s, a0), dtype=np.float64))
        qn_vals.append(np.asarray(ag.q_norm_fn(s, a0), dtype=np.float64))
    pooled = np.concatenate(qn_vals)  # E|Q| over all agents: a centralised normaliser
    return np.stack([r + diffusion_ql.q_loss(q, pooled, eta) for r, q in zip(rows, q_vals, strict=True)])


def _eta_over_agents(agents: Sequence[ref.Agent], betas: ArrayLike, eta: float = 1.0,
                     max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    ref.policy_loss(agents, betas, eta, max_action, variance)
    # The Q term averaged over the agents (eta / N), as when a joint actor loss is a mean over agents.
    return ref.policy_loss(agents, betas, eta / len(agents), max_action, variance)


def _policy_unchecked(agents: Sequence[ref.Agent], betas: ArrayLike, eta: float = 1.0,
                      max_action: float | None = 1.0, variance: str = "beta_tilde") -> F:
    from .diffusion_ql import _loss_unchecked

    if len(agents) == 0:
        return np.zeros((0, 0))
    rows = [_loss_unchecked(ag[1], ag[0], ag[2], betas, ag[5], ag[6], ag[7], ag[8], ag[3], ag[4], eta, max_action,
                            variance) for ag in agents]
    B = min(r.size for r in rows)
    return np.stack([r[:B] for r in rows])


# ---- sample ---------------------------------------------------------------------------


def _solver(x_K: ArrayLike, eps_fn: StateEpsFn, obs: ArrayLike, betas: ArrayLike, tau: ArrayLike, *,
            expm1: bool = True, sigma_start: bool = False, skip_last: bool = False) -> F:
    ref.sample(x_K, eps_fn, obs, betas, tau)
    b = np.asarray(betas, dtype=np.float64)
    ab = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    t = np.asarray(tau).astype(np.int64)
    x = np.asarray(x_K, dtype=np.float64)
    o = np.asarray(obs, dtype=np.float64)
    last = 2 if skip_last else 1
    for i in range(t.size - 1, last - 1, -1):
        k, kp = int(t[i]), int(t[i - 1])
        e = np.asarray(eps_fn(x, np.full(x.shape[0], k, dtype=np.int64), o), dtype=np.float64)
        a, s = np.sqrt(ab[k]), np.sqrt(1.0 - ab[k])
        if kp == 0:
            x = (x - s * e) / a
            continue
        ap, sp = np.sqrt(ab[kp]), np.sqrt(1.0 - ab[kp])
        h = np.log(ap / sp) - np.log(a / s)
        factor = np.expm1(h) if expm1 else h  # e^h - 1, or its truncation h
        x = (ap / a) * x - (s if sigma_start else sp) * factor * e
    return x


def _sample_h_for_expm1(x_K: ArrayLike, eps_fn: StateEpsFn, obs: ArrayLike, betas: ArrayLike, tau: ArrayLike) -> F:
    return _solver(x_K, eps_fn, obs, betas, tau, expm1=False)


def _sample_sigma_start(x_K: ArrayLike, eps_fn: StateEpsFn, obs: ArrayLike, betas: ArrayLike, tau: ArrayLike) -> F:
    return _solver(x_K, eps_fn, obs, betas, tau, sigma_start=True)


def _sample_skips_last(x_K: ArrayLike, eps_fn: StateEpsFn, obs: ArrayLike, betas: ArrayLike, tau: ArrayLike) -> F:
    return _solver(x_K, eps_fn, obs, betas, tau, skip_last=True)


def _sample_unchecked(x_K: ArrayLike, eps_fn: StateEpsFn, obs: ArrayLike, betas: ArrayLike, tau: ArrayLike) -> F:
    b = np.asarray(betas, dtype=np.float64)
    ab = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    t = np.clip(np.sort(np.unique(np.asarray(tau).astype(np.int64))), 0, b.size)
    x = np.asarray(x_K, dtype=np.float64)
    with np.errstate(all="ignore"):
        for i in range(t.size - 1, 0, -1):
            k, kp = int(t[i]), int(t[i - 1])
            e = np.asarray(eps_fn(x, np.full(x.shape[0], k, dtype=np.int64), np.asarray(obs, dtype=np.float64)))
            x0 = (x - np.sqrt(1.0 - ab[k]) * e) / np.sqrt(ab[k])
            x = np.sqrt(ab[kp]) * x0 + np.sqrt(1.0 - ab[kp]) * e
        return np.asarray(x, dtype=np.float64)


MUTANTS = [
    Mutant("dom2_cqls_no_1_over_M", "dom2.cql_sampled",
           ("finite_set_reduces", "exact_for_ideal_proposal", "matches_reference"),
           "log sum_i exp(Q_i - log p_i) without the 1/M (the CQL code's convention, a constant log M)",
           {"dom2.cql_sampled": _cqls_no_mean}),
    Mutant("dom2_cqls_density_multiplies", "dom2.cql_sampled",
           ("finite_set_reduces", "exact_for_ideal_proposal", "proposal_density_enters_inverted",
            "matches_reference"),
           "importance weights exp(Q) p instead of exp(Q) / p", {"dom2.cql_sampled": _cqls_density_sign}),
    Mutant("dom2_cqls_mean_log_weight", "dom2.cql_sampled", ("finite_set_reduces", "matches_reference"),
           "the mean of Q - log p (Jensen's lower bound) in place of the log-mean-exp",
           {"dom2.cql_sampled": _cqls_mean}),
    Mutant("dom2_cqls_max_log_weight", "dom2.cql_sampled",
           ("finite_set_reduces", "suppresses_unseen", "matches_reference"),
           "max_i (Q_i - log p_i) in place of the log-mean-exp", {"dom2.cql_sampled": _cqls_max}),
    Mutant("dom2_cqls_half_td", "dom2.cql_sampled",
           ("td_term", "finite_set_reduces", "exact_for_ideal_proposal", "matches_reference"),
           "(1/2)(Q - y)^2 (CQL paper's convention) where DOM2 writes (Q - y)^2", {"dom2.cql_sampled": _cqls_half_td}),
    Mutant("dom2_cqls_penalty_sign_flipped", "dom2.cql_sampled",
           ("finite_set_reduces", "exact_for_ideal_proposal", "proposal_density_enters_inverted",
            "suppresses_unseen", "matches_reference"),
           "alpha (Q_data - log-mean-exp): the conservative penalty reversed", {"dom2.cql_sampled": _cqls_sign}),
    Mutant("dom2_cqls_no_domain_check", "dom2.cql_sampled", ("rejects_out_of_domain",),
           "NaN, negative alpha, M = 0 and mismatched shapes accepted", {"dom2.cql_sampled": _cqls_unchecked}),
    Mutant("dom2_cql_max_for_logsumexp", "dom2.cql_loss",
           ("constant_q_gives_log_n", "uniform_behaviour_jensen", "matches_reference"),
           "max_a Q in place of log sum_a exp Q", {"dom2.cql_loss": _cql_max}),
    Mutant("dom2_cql_penalty_sign_flipped", "dom2.cql_loss",
           ("penalty_bounds", "constant_q_gives_log_n", "uniform_behaviour_jensen", "suppresses_unseen",
            "matches_reference"),
           "alpha (Q_data - logsumexp Q): the conservative penalty reversed", {"dom2.cql_loss": _cql_sign}),
    Mutant("dom2_cql_log_mean_exp", "dom2.cql_loss",
           ("penalty_bounds", "constant_q_gives_log_n", "uniform_behaviour_jensen", "matches_reference"),
           "logsumexp - log n (log-mean-exp), the reading under which a constant Q gives 0",
           {"dom2.cql_loss": _cql_log_mean_exp}),
    Mutant("dom2_cql_half_td", "dom2.cql_loss", ("td_term", "matches_reference"),
           "(1/2)(Q - y)^2 (CQL paper's convention) where DOM2 writes (Q - y)^2", {"dom2.cql_loss": _cql_half_td}),
    Mutant("dom2_cql_mean_q_for_data_action", "dom2.cql_loss", ("suppresses_unseen", "matches_reference"),
           "the data term E_{a~D} Q(o, a) replaced by the mean of Q over the action set",
           {"dom2.cql_loss": _cql_mean_for_data}),
    Mutant("dom2_cql_no_domain_check", "dom2.cql_loss", ("rejects_out_of_domain",),
           "action indices wrapped around, NaN and negative alpha accepted", {"dom2.cql_loss": _cql_unchecked}),
    Mutant("dom2_shared_critic", "dom2.policy_loss",
           ("decentralised", "per_agent_diffusion_ql", "point_mass_agents", "matches_reference"),
           "every agent of agent 0's type has its Q term from agent 0's critics (parameter sharing across agents)",
           {"dom2.policy_loss": _shared_critic}),
    Mutant("dom2_pooled_normaliser", "dom2.policy_loss",
           ("decentralised", "per_agent_diffusion_ql", "point_mass_agents", "matches_reference"),
           "E|Q| pooled over all agents' critics: a centralised normaliser", {"dom2.policy_loss": _pooled_normaliser}),
    Mutant("dom2_policy_eta_over_agents", "dom2.policy_loss",
           ("per_agent_diffusion_ql", "point_mass_agents", "matches_reference"),
           "each agent's Q term weighted eta / N (the Q loss averaged over the agents)",
           {"dom2.policy_loss": _eta_over_agents}),
    Mutant("dom2_policy_no_domain_check", "dom2.policy_loss", ("rejects_out_of_domain",),
           "no validation of the agent records", {"dom2.policy_loss": _policy_unchecked}),
    Mutant("dom2_dpm_h_for_expm1", "dom2.sample", ("equals_ddim", "exact_for_point_mass", "matches_reference"),
           "DPM-Solver-1 with h in place of e^h - 1", {"dom2.sample": _sample_h_for_expm1}),
    Mutant("dom2_dpm_sigma_of_start", "dom2.sample", ("equals_ddim", "exact_for_point_mass", "matches_reference"),
           "sigma_k of the start level multiplies (e^h - 1) instead of sigma_{k'} of the target",
           {"dom2.sample": _sample_sigma_start}),
    Mutant("dom2_sample_stops_before_tau0", "dom2.sample", ("equals_ddim", "exact_for_point_mass", "matches_reference"),
           "the last solver step (to tau_0) is skipped", {"dom2.sample": _sample_skips_last}),
    Mutant("dom2_sample_no_domain_check", "dom2.sample", ("rejects_out_of_domain",),
           "tau sorted and clipped silently; NaN accepted", {"dom2.sample": _sample_unchecked}),
]
