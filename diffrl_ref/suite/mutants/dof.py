"""Planted bugs for the ``dof`` family: mistakes seen in factorised multi-agent diffusion code."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffrl_ref.reference import ddpm, qmix
from diffrl_ref.reference import dof as ref

from . import Mutant

F = NDArray[np.float64]
Net = Callable[..., ArrayLike]


def _f(a: ArrayLike) -> F:
    return np.asarray(a, dtype=np.float64)


# ---- noise_factorisation --------------------------------------------------------------


def _noise_reversed(eps_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None) -> F:
    ref.noise_factorisation(eps_agents, mode, weights)  # domain checks
    e = _f(eps_agents)
    w = ref._agent_weights(mode, weights, e.shape[1], "dof.noise_factorisation")  # noqa: SLF001
    return ref._concat(e[:, ::-1], w)  # noqa: SLF001 - agents stacked in reverse order


def _noise_weight_squared(eps_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None) -> F:
    ref.noise_factorisation(eps_agents, mode, weights)
    e = _f(eps_agents)
    w = ref._agent_weights(mode, weights, e.shape[1], "dof.noise_factorisation")  # noqa: SLF001
    return ref._concat(e, w**2)  # noqa: SLF001 - weights used as variances


def _noise_unchecked(eps_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None) -> F:
    e = np.atleast_3d(_f(eps_agents))
    B, N, d = e.shape
    w = np.ones(N) if weights is None else np.resize(_f(weights), N)
    out: F = (w[None, :, None] * e).reshape(B, N * d)
    return out


# ---- data_factorisation ---------------------------------------------------------------


def _data_roll(x_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None,
               s: ArrayLike | None = None, hyper: qmix.Hypernetworks | None = None) -> F:
    out = ref.data_factorisation(x_agents, mode, weights, s, hyper)
    if mode not in ref.NOISE_MODES:
        return out
    x = _f(x_agents)
    B, N, d = x.shape
    blocks = out.reshape(B, N, d)
    rolled: F = np.roll(blocks, 1, axis=1).reshape(B, N * d)  # slice (i-1)d:id filled from agent i-1
    return rolled


def _atten_weights(x: F, scores: ArrayLike, normalise: bool, transpose: bool) -> F:
    B, N, d = x.shape
    a = np.broadcast_to(_f(scores), (B, N, N))
    z = np.exp(a - np.max(a, axis=-1, keepdims=True))
    w = z / np.sum(z, axis=-1, keepdims=True) if normalise else np.exp(a)
    if transpose:
        w = w.transpose(0, 2, 1)
    out: F = np.einsum("bij,bjc->bic", w, x).reshape(B, N * d)
    return out


def _data_atten_unnormalised(x_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None,
                             s: ArrayLike | None = None, hyper: qmix.Hypernetworks | None = None) -> F:
    out = ref.data_factorisation(x_agents, mode, weights, s, hyper)
    if mode != "atten" or weights is None:
        return out
    return _atten_weights(_f(x_agents), weights, normalise=False, transpose=False)  # exp(a_ij), rows not summed


def _data_atten_transposed(x_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None,
                           s: ArrayLike | None = None, hyper: qmix.Hypernetworks | None = None) -> F:
    out = ref.data_factorisation(x_agents, mode, weights, s, hyper)
    if mode != "atten" or weights is None:
        return out
    return _atten_weights(_f(x_agents), weights, normalise=True, transpose=True)  # sum_j w_ji x_j


def _data_qmix_flatten(x_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None,
                       s: ArrayLike | None = None, hyper: qmix.Hypernetworks | None = None) -> F:
    out = ref.data_factorisation(x_agents, mode, weights, s, hyper)
    if mode != "qmix" or s is None or hyper is None:
        return out
    x = _f(x_agents)
    B, N, d = x.shape
    rows = x.reshape(B * d, N)  # (B, N, d) flattened without moving the agent axis last
    mixed: F = qmix.mixer(rows, np.repeat(_f(s), d, axis=0), hyper).reshape(B, d)
    return mixed


def _data_qmix_signed(x_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None,
                      s: ArrayLike | None = None, hyper: qmix.Hypernetworks | None = None) -> F:
    out = ref.data_factorisation(x_agents, mode, weights, s, hyper)
    if mode != "qmix" or s is None or hyper is None:
        return out
    x = _f(x_agents)
    B, N, d = x.shape
    rows = x.transpose(0, 2, 1).reshape(B * d, N)
    q, w1, b1, w2, v = qmix._weights(rows, np.repeat(_f(s), d, axis=0), hyper)  # noqa: SLF001
    hidden = qmix._elu(np.einsum("bn,bnh->bh", q, w1) + b1)  # noqa: SLF001 - own mixer without abs
    mixed: F = (np.sum(hidden * w2, axis=1) + v[:, 0]).reshape(B, d)
    return mixed


def _data_unchecked(x_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None,
                    s: ArrayLike | None = None, hyper: qmix.Hypernetworks | None = None) -> F:
    x = np.atleast_3d(_f(x_agents))
    B, N, d = x.shape
    if mode == "atten" and weights is not None and np.size(weights) == N * N:
        return _atten_weights(x, np.reshape(_f(weights), (N, N)), normalise=True, transpose=False)
    if mode == "qmix" and s is not None and hyper is not None:
        try:
            return ref.data_factorisation(x, mode, None, s, hyper)
        except ValueError:
            return np.zeros((B, d))
    w = np.ones(N) if weights is None or np.size(weights) != N else _f(weights)
    out: F = (w[None, :, None] * x).reshape(B, N * d)
    return out


# ---- train_step -----------------------------------------------------------------------


def _loss_parts(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, betas: ArrayLike, mode: str,
                weights: ArrayLike | None) -> tuple[F, F, F, NDArray[np.int64], F]:
    """Validated eps (B, N, d), x^0, betas, steps and w, as the reference reads them."""
    e, x0, b = _f(eps), _f(x0_tot), _f(betas)
    B, N, _ = e.shape
    steps = np.broadcast_to(np.asarray(k), (B,)).astype(np.int64)
    return e, x0, b, steps, ref._agent_weights(mode, weights, N, "dof.train_step")  # noqa: SLF001


def _train_eps_reversed(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike,
                        mode: str = "concat", weights: ArrayLike | None = None) -> F:
    ref.train_step(x0_tot, k, eps, eps_fns, betas, mode, weights)  # domain checks
    e, x0, b, steps, w = _loss_parts(x0_tot, k, eps, betas, mode, weights)
    N, d = e.shape[1], e.shape[2]
    eps_tot = ref._concat(e[:, ::-1], w)  # noqa: SLF001 - agents' noises stacked in the wrong order
    x_k = ref._split(ddpm.noise(x0, eps_tot, b, steps), w, d)  # noqa: SLF001
    eps_hat = np.stack([_f(eps_fns[i](x_k[:, i], steps.copy())) for i in range(N)], axis=1)
    return ddpm.simple_loss(eps_tot, ref._concat(eps_hat, w), b, steps)  # noqa: SLF001


def _train_slice_off_by_one(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net],
                            betas: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None) -> F:
    ref.train_step(x0_tot, k, eps, eps_fns, betas, mode, weights)
    e, x0, b, steps, w = _loss_parts(x0_tot, k, eps, betas, mode, weights)
    N, d = e.shape[1], e.shape[2]
    eps_tot = ref._concat(e, w)  # noqa: SLF001
    x_k = ref._split(ddpm.noise(x0, eps_tot, b, steps), w, d)  # noqa: SLF001
    x_k = np.roll(x_k, -1, axis=1)  # agent i reads x_tot[i d : (i+1) d] with i one too far
    eps_hat = np.stack([_f(eps_fns[i](x_k[:, i], steps.copy())) for i in range(N)], axis=1)
    return ddpm.simple_loss(eps_tot, ref._concat(eps_hat, w), b, steps)  # noqa: SLF001


def _train_raw_slice(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike,
                     mode: str = "concat", weights: ArrayLike | None = None) -> F:
    ref.train_step(x0_tot, k, eps, eps_fns, betas, mode, weights)
    e, x0, b, steps, w = _loss_parts(x0_tot, k, eps, betas, mode, weights)
    B, N, d = e.shape
    eps_tot = ref._concat(e, w)  # noqa: SLF001
    x_k = ddpm.noise(x0, eps_tot, b, steps).reshape(B, N, d)  # WConcat weight applied to eps, not undone on x
    eps_hat = np.stack([_f(eps_fns[i](x_k[:, i], steps.copy())) for i in range(N)], axis=1)
    return ddpm.simple_loss(eps_tot, ref._concat(eps_hat, w), b, steps)  # noqa: SLF001


def _train_feature_mean(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike,
                        mode: str = "concat", weights: ArrayLike | None = None) -> F:
    out = ref.train_step(x0_tot, k, eps, eps_fns, betas, mode, weights)
    e = _f(eps)
    mean: F = out / (e.shape[1] * e.shape[2])  # F.mse_loss: mean over the N d entries
    return mean


def _train_unchecked(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike,
                     mode: str = "concat", weights: ArrayLike | None = None) -> F:
    e, x0, b = _f(eps), _f(x0_tot), _f(betas)
    B, N, d = e.shape
    w = np.ones(N) if weights is None else np.resize(_f(weights), N)
    a_bar = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    kk = np.broadcast_to(np.asarray(k).astype(np.int64), (B,))
    ab = a_bar[np.clip(kk, 0, b.size)][:, None]
    eps_tot = (w[None, :, None] * e).reshape(B, N * d)
    with np.errstate(all="ignore"):
        x_tot = np.sqrt(ab) * np.resize(x0, (B, N * d)) + np.sqrt(1.0 - ab) * eps_tot
        x_k = x_tot.reshape(B, N, d) / w[None, :, None]
        outs = [np.resize(_f(eps_fns[i % len(eps_fns)](x_k[:, i], kk.copy())), (B, d)) for i in range(N)]
        eps_hat = (w[None, :, None] * np.stack(outs, axis=1)).reshape(B, N * d)
        loss: F = np.sum((eps_tot - eps_hat) ** 2, axis=1)
    return loss


# ---- decentralised_sample -------------------------------------------------------------


def _dec_loop(x_K: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike, z: ArrayLike, variance: str,
              net_of: Callable[[int], int], noise_of: Callable[[int], int], step_noise: Callable[[int, int], int],
              var_used: Callable[[str], str]) -> F:
    ref.decentralised_sample(x_K, eps_fns, betas, z, variance)  # domain checks
    x, b, zz = _f(x_K).copy(), _f(betas), _f(z)
    B, N, _ = x.shape
    K = b.size
    for k in range(K, 0, -1):
        steps = np.full(B, k, dtype=np.int64)
        for i in range(N):
            e_i = _f(eps_fns[net_of(i)](x[:, i], steps.copy()))
            x[:, i] = ddpm.reverse_step(x[:, i], e_i, b, k, zz[step_noise(k, K)][:, noise_of(i)], var_used(variance))
    return x


def _dec_shared_noise(x_K: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike, z: ArrayLike,
                      variance: str = "beta") -> F:
    return _dec_loop(x_K, eps_fns, betas, z, variance, lambda i: i, lambda i: 0,  # one noise for every agent
                     lambda k, K: k - 1, lambda v: v)


def _dec_shared_network(x_K: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike, z: ArrayLike,
                        variance: str = "beta") -> F:
    return _dec_loop(x_K, eps_fns, betas, z, variance, lambda i: 0, lambda i: i,  # agent 1's network for all
                     lambda k, K: k - 1, lambda v: v)


def _dec_noise_index(x_K: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike, z: ArrayLike,
                     variance: str = "beta") -> F:
    return _dec_loop(x_K, eps_fns, betas, z, variance, lambda i: i, lambda i: i,
                     lambda k, K: k % K, lambda v: v)  # z[k] at step k (0-based indexing mixed with 1-based k)


def _dec_variance_ignored(x_K: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike, z: ArrayLike,
                          variance: str = "beta") -> F:
    return _dec_loop(x_K, eps_fns, betas, z, variance, lambda i: i, lambda i: i,
                     lambda k, K: k - 1, lambda v: "beta")  # sigma_k^2 = beta_k whatever was asked


def _dec_unchecked(x_K: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike, z: ArrayLike,
                   variance: str = "beta") -> F:
    x, b = _f(x_K).copy(), _f(betas)
    B, N, d = x.shape
    zz = np.resize(_f(z), (b.size, B, N, d))
    a_bar = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    with np.errstate(all="ignore"):
        for k in range(b.size, 0, -1):
            beta, ab, ab_prev = b[k - 1], a_bar[k], a_bar[k - 1]
            s2 = beta if variance == "beta" else (1.0 - ab_prev) / (1.0 - ab) * beta
            for i in range(N):
                e_i = np.resize(_f(eps_fns[i % len(eps_fns)](x[:, i], np.full(B, k))), (B, d))
                mean = (x[:, i] - beta / np.sqrt(1.0 - ab) * e_i) / np.sqrt(1.0 - beta)
                x[:, i] = mean + (np.sqrt(s2) if k > 1 else 0.0) * zz[k - 1][:, i]
    return x


# ---- igd ------------------------------------------------------------------------------


def _igd_loop(x_tot_K: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike, z_tot: ArrayLike, mode: str,
              weights: ArrayLike | None, variance: str, divide: bool, reverse: bool) -> F:
    ref.igd(x_tot_K, eps_fns, betas, z_tot, mode, weights, variance)  # domain checks
    x, b, zz = _f(x_tot_K).copy(), _f(betas), _f(z_tot)
    B, Nd = x.shape
    N = len(eps_fns)
    d = Nd // N
    w = ref._agent_weights(mode, weights, N, "dof.igd")  # noqa: SLF001
    for k in range(b.size, 0, -1):
        steps = np.full(B, k, dtype=np.int64)
        x_k = ref._split(x, w, d) if divide else x.reshape(B, N, d)  # noqa: SLF001
        eps_hat = np.stack([_f(eps_fns[i](x_k[:, i], steps.copy())) for i in range(N)], axis=1)
        if reverse:
            eps_hat = eps_hat[:, ::-1]
        x = ddpm.reverse_step(x, ref._concat(eps_hat, w), b, k, zz[k - 1], variance)  # noqa: SLF001
    return x


def _igd_raw_slice(x_tot_K: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike, z_tot: ArrayLike,
                   mode: str = "concat", weights: ArrayLike | None = None, variance: str = "beta") -> F:
    return _igd_loop(x_tot_K, eps_fns, betas, z_tot, mode, weights, variance, divide=False, reverse=False)


def _igd_agent_order(x_tot_K: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike, z_tot: ArrayLike,
                     mode: str = "concat", weights: ArrayLike | None = None, variance: str = "beta") -> F:
    return _igd_loop(x_tot_K, eps_fns, betas, z_tot, mode, weights, variance, divide=True, reverse=True)


def _igd_unchecked(x_tot_K: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike, z_tot: ArrayLike,
                   mode: str = "concat", weights: ArrayLike | None = None, variance: str = "beta") -> F:
    x, b = _f(x_tot_K).copy(), _f(betas)
    B, Nd = x.shape
    N = len(eps_fns)
    d = max(Nd // N, 1)
    w = np.ones(N) if weights is None else np.resize(_f(weights), N)
    zz = np.resize(_f(z_tot), (b.size, B, Nd))
    a_bar = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    with np.errstate(all="ignore"):
        for k in range(b.size, 0, -1):
            parts = np.resize(x, (B, N, d)) / w[None, :, None]
            outs = [np.resize(_f(eps_fns[i](parts[:, i], np.full(B, k))), (B, d)) for i in range(N)]
            eps_hat = np.resize((w[None, :, None] * np.stack(outs, axis=1)).reshape(B, N * d), (B, Nd))
            beta, ab = b[k - 1], a_bar[k]
            sigma = np.sqrt(beta) if k > 1 else 0.0
            x = (x - beta / np.sqrt(1.0 - ab) * eps_hat) / np.sqrt(1.0 - beta) + sigma * zz[k - 1]
    return x


# ---- policy_loss ----------------------------------------------------------------------


def _policy_no_normaliser(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net],
                          betas: ArrayLike, q_new: ArrayLike, eta: float, mode: str = "concat",
                          weights: ArrayLike | None = None, q_norm: ArrayLike | None = None) -> F:
    ref.policy_loss(x0_tot, k, eps, eps_fns, betas, q_new, eta, mode, weights, q_norm)  # domain checks
    bc = ref.train_step(x0_tot, k, eps, eps_fns, betas, mode, weights)
    out: F = bc - eta * np.sum(_f(q_new), axis=1)  # alpha = eta: the 1 / E|Q| normalisation forgotten
    return out


def _policy_global_normaliser(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net],
                              betas: ArrayLike, q_new: ArrayLike, eta: float, mode: str = "concat",
                              weights: ArrayLike | None = None, q_norm: ArrayLike | None = None) -> F:
    out = ref.policy_loss(x0_tot, k, eps, eps_fns, betas, q_new, eta, mode, weights, q_norm)
    if q_norm is not None:
        return out
    q = _f(q_new)
    bc = ref.train_step(x0_tot, k, eps, eps_fns, betas, mode, weights)
    glob: F = bc - eta * np.sum(q, axis=1) / np.mean(np.abs(q))  # one E|Q| over all agents' critics
    return glob


def _policy_sign(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike,
                 q_new: ArrayLike, eta: float, mode: str = "concat", weights: ArrayLike | None = None,
                 q_norm: ArrayLike | None = None) -> F:
    out = ref.policy_loss(x0_tot, k, eps, eps_fns, betas, q_new, eta, mode, weights, q_norm)
    bc = ref.train_step(x0_tot, k, eps, eps_fns, betas, mode, weights)
    flipped: F = 2.0 * bc - out  # + eta Q / E|Q|: Q minimised instead of maximised
    return flipped


def _policy_q_mean_over_agents(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net],
                               betas: ArrayLike, q_new: ArrayLike, eta: float, mode: str = "concat",
                               weights: ArrayLike | None = None, q_norm: ArrayLike | None = None) -> F:
    out = ref.policy_loss(x0_tot, k, eps, eps_fns, betas, q_new, eta, mode, weights, q_norm)
    bc = ref.train_step(x0_tot, k, eps, eps_fns, betas, mode, weights)
    averaged: F = bc + (out - bc) / len(eps_fns)  # L_QL = mean_i L_q,i (a joint actor loss averaged over agents)
    return averaged


def _policy_unchecked(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike,
                      q_new: ArrayLike, eta: float, mode: str = "concat", weights: ArrayLike | None = None,
                      q_norm: ArrayLike | None = None) -> F:
    bc = _train_unchecked(x0_tot, k, eps, eps_fns, betas, mode, weights)
    q = np.atleast_2d(_f(q_new))
    with np.errstate(all="ignore"):
        scale = np.mean(np.abs(q if q_norm is None else np.atleast_2d(_f(q_norm))), axis=0)
        out: F = bc - np.resize(np.sum(eta * q / scale, axis=1), bc.shape)
    return out


# ---- planner_loss ---------------------------------------------------------------------


def _planner_parts(x0_tot: ArrayLike, eps: ArrayLike, mode: str, weights: ArrayLike | None, y: ArrayLike,
                   empty: ArrayLike | None) -> tuple[F, F, F, F, F]:
    e, yy = _f(eps), _f(y)
    w = ref._agent_weights(mode, weights, e.shape[1], "dof.planner_loss")  # noqa: SLF001
    nothing = np.zeros(yy.shape[1]) if empty is None else _f(empty)
    return _f(x0_tot), e, w, yy, nothing


def _planner_mask_inverted(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net],
                           betas: ArrayLike, y: ArrayLike, drop: ArrayLike, mode: str = "concat",
                           weights: ArrayLike | None = None, empty: ArrayLike | None = None) -> F:
    ref.planner_loss(x0_tot, k, eps, eps_fns, betas, y, drop, mode, weights, empty)  # domain checks
    x0, e, w, yy, nothing = _planner_parts(x0_tot, eps, mode, weights, y, empty)
    b = 1.0 - _f(drop)  # b y + (1 - b) empty: the dropout mask the wrong way round
    return ref._dropout_loss(x0, e, w, eps_fns, betas, k, yy, b, nothing, "dof.planner_loss")  # noqa: SLF001


def _planner_empty_zero(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike,
                        y: ArrayLike, drop: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None,
                        empty: ArrayLike | None = None) -> F:
    ref.planner_loss(x0_tot, k, eps, eps_fns, betas, y, drop, mode, weights, empty)
    x0, e, w, yy, nothing = _planner_parts(x0_tot, eps, mode, weights, y, empty)
    zeros = np.zeros_like(nothing)  # y * mask: the given empty token is ignored, zeros used instead
    return ref._dropout_loss(x0, e, w, eps_fns, betas, k, yy, _f(drop), zeros, "dof.planner_loss")  # noqa: SLF001


def _planner_target_unweighted(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net],
                               betas: ArrayLike, y: ArrayLike, drop: ArrayLike, mode: str = "concat",
                               weights: ArrayLike | None = None, empty: ArrayLike | None = None) -> F:
    ref.planner_loss(x0_tot, k, eps, eps_fns, betas, y, drop, mode, weights, empty)
    x0, e, w, yy, nothing = _planner_parts(x0_tot, eps, mode, weights, y, empty)
    # The agents' noises stacked as eps_tot without f: WConcat weights missing on the noise and the target.
    return ref._dropout_loss(x0, e / w[None, :, None], w, eps_fns, betas, k, yy, _f(drop), nothing,  # noqa: SLF001
                             "dof.planner_loss")


def _planner_unchecked(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Net], betas: ArrayLike,
                       y: ArrayLike, drop: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None,
                       empty: ArrayLike | None = None) -> F:
    yy = _f(y)
    b = np.resize(_f(drop), yy.shape[0])
    nothing = np.resize(np.zeros(yy.shape[1]) if empty is None else _f(empty), yy.shape[1])
    cond = (1.0 - b[:, None]) * yy + b[:, None] * nothing
    nets = [lambda x, kk, f=f: f(x, kk, np.resize(cond, (np.shape(x)[0], cond.shape[1]))) for f in eps_fns]
    return _train_unchecked(x0_tot, k, eps, nets, betas, mode, weights)


MUTANTS = [
    Mutant("dof_noise_agents_reversed", "dof.noise_factorisation", ("block_layout", "matches_reference"),
           "eps_tot built from the agents in reverse order", {"dof.noise_factorisation": _noise_reversed}),
    Mutant("dof_noise_weight_squared", "dof.noise_factorisation",
           ("block_layout", "gaussian_law", "matches_reference"),
           "WConcat weights applied as w_i^2 (treated as variances)",
           {"dof.noise_factorisation": _noise_weight_squared}),
    Mutant("dof_noise_unchecked", "dof.noise_factorisation", ("rejects_out_of_domain",),
           "no domain checks: zero or missing weights, unknown modes and NaN accepted",
           {"dof.noise_factorisation": _noise_unchecked}),
    Mutant("dof_data_concat_slice_off_by_one", "dof.data_factorisation", ("linear_blocks", "matches_reference"),
           "Concat slice off by one agent: block i holds agent i - 1 (wrapping)",
           {"dof.data_factorisation": _data_roll}),
    Mutant("dof_data_atten_unnormalised", "dof.data_factorisation", ("atten_rows_stochastic", "matches_reference"),
           "Atten rows not normalised: exp(a_ij) without the softmax denominator",
           {"dof.data_factorisation": _data_atten_unnormalised}),
    Mutant("dof_data_atten_transposed", "dof.data_factorisation", ("atten_rows_stochastic", "matches_reference"),
           "Atten weights transposed: block i = sum_j w_ji x_j", {"dof.data_factorisation": _data_atten_transposed}),
    Mutant("dof_data_qmix_flatten", "dof.data_factorisation", ("qmix_coordinatewise_monotone", "matches_reference"),
           "QMIX rows built by reshape(B d, N) without moving the agent axis: coordinates mixed across agents",
           {"dof.data_factorisation": _data_qmix_flatten}),
    Mutant("dof_data_qmix_signed", "dof.data_factorisation", ("qmix_coordinatewise_monotone", "matches_reference"),
           "QMIX data factorisation with its own mixer whose weights are not passed through abs",
           {"dof.data_factorisation": _data_qmix_signed}),
    Mutant("dof_data_unchecked", "dof.data_factorisation", ("rejects_out_of_domain",),
           "no domain checks: missing weights default to ones, stray s/hyper ignored",
           {"dof.data_factorisation": _data_unchecked}),
    Mutant("dof_train_eps_tot_wrong_order", "dof.train_step", ("sum_of_agent_losses", "matches_reference"),
           "eps_tot built from the agents' noises in reverse order", {"dof.train_step": _train_eps_reversed}),
    Mutant("dof_train_slice_off_by_one", "dof.train_step",
           ("zero_iff_true_noise", "sum_of_agent_losses", "matches_reference"),
           "x_i^k sliced one agent too far: agent i sees agent i + 1's data",
           {"dof.train_step": _train_slice_off_by_one}),
    Mutant("dof_train_wconcat_raw_slice", "dof.train_step",
           ("zero_iff_true_noise", "sum_of_agent_losses", "matches_reference"),
           "WConcat weight applied to eps but not undone on x: agent i is fed w_i x_i^k",
           {"dof.train_step": _train_raw_slice}),
    Mutant("dof_train_feature_mean", "dof.train_step",
           ("zero_iff_true_noise", "sum_of_agent_losses", "matches_reference"),
           "mean over the N d entries (F.mse_loss) instead of the squared norm",
           {"dof.train_step": _train_feature_mean}),
    Mutant("dof_train_unchecked", "dof.train_step", ("rejects_out_of_domain",),
           "no domain checks: k = 0, short networks lists and wrong widths pass", {"dof.train_step": _train_unchecked}),
    Mutant("dof_decentralised_shared_noise", "dof.decentralised_sample",
           ("reproduces_centralised_step", "independent_agents", "exact_law", "matches_reference"),
           "one noise z shared by all agents (agent 1's) instead of one per agent",
           {"dof.decentralised_sample": _dec_shared_noise}),
    Mutant("dof_decentralised_shared_network", "dof.decentralised_sample",
           ("reproduces_centralised_step", "independent_agents", "exact_law", "matches_reference"),
           "every agent denoises with agent 1's network", {"dof.decentralised_sample": _dec_shared_network}),
    Mutant("dof_decentralised_noise_index", "dof.decentralised_sample",
           ("reproduces_centralised_step", "matches_reference"),
           "z[k] instead of z[k-1] at step k (0-based index with a 1-based step)",
           {"dof.decentralised_sample": _dec_noise_index}),
    Mutant("dof_decentralised_variance_ignored", "dof.decentralised_sample",
           ("reproduces_centralised_step", "exact_law", "matches_reference"),
           "variance argument ignored: sigma_k^2 = beta_k always", {"dof.decentralised_sample": _dec_variance_ignored}),
    Mutant("dof_decentralised_unchecked", "dof.decentralised_sample", ("rejects_out_of_domain",),
           "no domain checks: short z resized, NaN and unknown variance names pass",
           {"dof.decentralised_sample": _dec_unchecked}),
    Mutant("dof_igd_raw_slice", "dof.igd", ("equals_decentralised", "product_law", "matches_reference"),
           "centralised chain feeds agent i the raw slice w_i x_i^k (WConcat not undone)",
           {"dof.igd": _igd_raw_slice}),
    Mutant("dof_igd_agent_order", "dof.igd", ("equals_decentralised", "product_law", "matches_reference"),
           "eps_hat_tot assembled from the agents' predictions in reverse order", {"dof.igd": _igd_agent_order}),
    Mutant("dof_igd_unchecked", "dof.igd", ("rejects_out_of_domain",),
           "no domain checks: widths not divisible by N, zero weights and unknown modes pass",
           {"dof.igd": _igd_unchecked}),
    Mutant("dof_policy_no_normaliser", "dof.policy_loss",
           ("composition", "constant_networks", "q_scale_invariant", "matches_reference"),
           "alpha = eta: Diffusion-QL's 1 / E|Q| normalisation forgotten", {"dof.policy_loss": _policy_no_normaliser}),
    Mutant("dof_policy_global_normaliser", "dof.policy_loss",
           ("composition", "constant_networks", "q_scale_invariant", "matches_reference"),
           "one E|Q| over all agents' critics instead of one per agent",
           {"dof.policy_loss": _policy_global_normaliser}),
    Mutant("dof_policy_sign", "dof.policy_loss", ("composition", "constant_networks", "matches_reference"),
           "+ eta Q / E|Q|: the Q term minimised", {"dof.policy_loss": _policy_sign}),
    Mutant("dof_policy_q_mean_over_agents", "dof.policy_loss",
           ("composition", "constant_networks", "matches_reference"),
           "L_QL averaged over the agents instead of summed (eta / N per agent)",
           {"dof.policy_loss": _policy_q_mean_over_agents}),
    Mutant("dof_policy_unchecked", "dof.policy_loss", ("rejects_out_of_domain",),
           "no domain checks: eta < 0, E|Q| = 0 (inf) and wrong shapes pass", {"dof.policy_loss": _policy_unchecked}),
    Mutant("dof_planner_mask_inverted", "dof.planner_loss", ("condition_dropout", "matches_reference"),
           "condition dropout mask inverted: b = 1 keeps y", {"dof.planner_loss": _planner_mask_inverted}),
    Mutant("dof_planner_empty_ignored", "dof.planner_loss", ("condition_dropout", "matches_reference"),
           "dropped rows get zeros (y * mask) even when an empty token is given",
           {"dof.planner_loss": _planner_empty_zero}),
    Mutant("dof_planner_target_unfactorised", "dof.planner_loss",
           ("condition_dropout", "reduces_to_train_step", "matches_reference"),
           "eps_tot is the stacked eps_i, not f(eps_1..eps_N): WConcat weights missing on the noise and target",
           {"dof.planner_loss": _planner_target_unweighted}),
    Mutant("dof_planner_unchecked", "dof.planner_loss", ("rejects_out_of_domain",),
           "no domain checks: soft masks b = 0.5 and wrong shapes pass", {"dof.planner_loss": _planner_unchecked}),
]
