"""DoF on the production path (family ``dof``): diffusion factorisation for offline MARL.

Li et al., ICLR 2025. The joint noise and the joint noise prediction are factorised over the
N agents, eps_tot = f(eps_1..eps_N) and eps_theta_tot = f(eps_theta_1(x_1^k, k), ...), so
training is centralised (Algorithm 1) and sampling decentralised (Algorithm 2). Agent data are
(B, N, d) tensors; joint vectors are (B, N*d) with agent i (0-based) in columns i*d..(i+1)*d - 1.
Agent networks are tensor callables eps_fn(x_i (B, d), k (B,) int64[, c (B, dy)]) -> (B, d),
one per agent (an ``nn.Module`` works). Every piece reuses :mod:`~diffrl_ref.fast.ddpm`
(``noise``, ``simple_loss``, ``reverse_mean``) and :func:`~diffrl_ref.fast.qmix.mix`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import ddpm, qmix
from ._checks import DomainError, batch, finite, require, require_finite, require_values, scalar
from .schedule import Schedule

#: An agent's noise network: eps_fn(x_i (B, d), k (B,) int64) -> (B, d).
AgentEpsFn = Callable[[Tensor, Tensor], Tensor]
#: A conditional one (DoF as planner): eps_fn(x_i (B, d), k (B,) int64, c (B, dy)) -> (B, d).
CondEpsFn = Callable[[Tensor, Tensor, Tensor], Tensor]

NOISE_MODES = ("concat", "wconcat")
DATA_MODES = ("concat", "wconcat", "atten", "qmix")


def _agents(x: Tensor, cid: str, name: str) -> Tensor:
    require(x.ndim == 3 and x.shape[1] >= 1 and x.shape[2] >= 1, cid,
            f"{name} must have shape (B, N, d) with N, d >= 1, got {tuple(x.shape)}")
    return finite(x, cid, name)


def agent_weights(mode: str, weights: Tensor | None, N: int, cid: str = "dof.noise_factorisation") -> Tensor | None:
    """w_1..w_N of f: None for Concat (no product at all); given, finite and nonzero for WConcat (f invertible)."""
    require(mode in NOISE_MODES, cid, f"mode must be one of {NOISE_MODES}, got {mode!r}")
    if mode == "concat":
        require(weights is None, cid, "Concat takes no weights (pass mode='wconcat' for w_i x_i)")
        return None
    if weights is None:
        raise DomainError(cid, "WConcat needs weights w_1..w_N")
    require(tuple(weights.shape) == (N,), cid, f"weights must have shape (N,) = ({N},), got {tuple(weights.shape)}")
    finite(weights, cid, "weights")
    require_values(weights != 0, cid, "every w_i must be nonzero (WConcat must be invertible)")
    return weights


def factorise(parts: Tensor, w: Tensor | None) -> Tensor:
    """f: x_tot[:, i d : (i+1) d] = w_i x_i, (B, N, d) -> (B, N*d)."""
    B, N, d = parts.shape
    return (parts if w is None else parts * w.unsqueeze(-1)).reshape(B, N * d)


def split(x_tot: Tensor, w: Tensor | None, N: int) -> Tensor:
    """f^{-1}: x_i = x_tot[:, i d : (i+1) d] / w_i, (B, N*d) -> (B, N, d)."""
    parts = x_tot.reshape(x_tot.shape[0], N, -1)
    return parts if w is None else parts / w.unsqueeze(-1)


def noise_factorisation(eps_agents: Tensor, mode: str = "concat", weights: Tensor | None = None) -> Tensor:
    """Clause ``dof.noise_factorisation``: eps_tot[(i-1)d : id] = eps_i (Concat) or w_i eps_i (WConcat)."""
    cid = "dof.noise_factorisation"
    e = _agents(eps_agents, cid, "eps_agents")
    return factorise(e, agent_weights(mode, weights, e.shape[1], cid))


def data_factorisation(x_agents: Tensor, mode: str = "concat", weights: Tensor | None = None,
                       s: Tensor | None = None, hyper: qmix.Hypernetworks | None = None) -> Tensor:
    """Clause ``dof.data_factorisation``: x_tot = h(x_1..x_N), h = Concat, WConcat, Atten or QMIX.

    Atten: block i = sum_j softmax_j(a_ij) x_j, scores a (N, N) or (B, N, N). QMIX: coordinate c
    of the (B, d) output is qmix.mixer(s, x_1[c], ..., x_N[c]); the hypernetworks run once per row.
    """
    cid = "dof.data_factorisation"
    x = _agents(x_agents, cid, "x_agents")
    B, N, d = x.shape
    require(mode in DATA_MODES, cid, f"mode must be one of {DATA_MODES}, got {mode!r}")
    require((mode == "qmix") == (s is not None or hyper is not None), cid,
            "s and hyper are required for mode 'qmix' and only for it")
    if mode in NOISE_MODES:
        return factorise(x, agent_weights(mode, weights, N, cid))
    if mode == "atten":
        if weights is None:
            raise DomainError(cid, "Atten needs attention scores of shape (N, N) or (B, N, N)")
        require(tuple(weights.shape) in ((N, N), (B, N, N)), cid,
                f"attention scores must have shape ({N}, {N}) or ({B}, {N}, {N}), got {tuple(weights.shape)}")
        w = torch.softmax(finite(weights, cid, "weights"), dim=-1)  # w_ij = softmax_j(a_ij)
        return torch.matmul(w, x).reshape(B, N * d)
    require(weights is None, cid, "mode 'qmix' takes hypernetworks, not weights")
    if s is None or hyper is None:
        raise DomainError(cid, "mode 'qmix' needs both s and hyper")
    require(s.ndim == 2 and s.shape[0] == B, cid, f"s must have shape ({B}, ds), got {tuple(s.shape)}")
    return qmix.mix(x.transpose(1, 2), qmix.mixing_weights(s, hyper, N, cid))


def _networks(eps_fns: Sequence[Callable[..., Tensor]], N: int, cid: str) -> None:
    require(len(eps_fns) == N and all(callable(f) for f in eps_fns), cid,
            f"eps_fns must be N = {N} callables, one per agent")


def _call(fn: Callable[..., Tensor], x: Tensor, k: Tensor, i: int, cid: str, *cond: Tensor) -> Tensor:
    out = fn(x, k, *cond)
    require(isinstance(out, Tensor) and out.shape == x.shape, cid,
            f"eps_fns[{i}] must return a tensor of shape {tuple(x.shape)}")
    return out


def joint_eps(eps_fns: Sequence[Callable[..., Tensor]], x_tot: Tensor, k: Tensor, w: Tensor | None,
              cid: str, *cond: Tensor) -> Tensor:
    """The centralised network f(eps_theta_1(x_1, k), ..., eps_theta_N(x_N, k)), x_i = f^{-1}(x_tot)_i."""
    N = len(eps_fns)
    parts = split(x_tot, w, N)
    return factorise(torch.stack([_call(eps_fns[i], parts[:, i], k, i, cid, *cond) for i in range(N)], 1), w)


def _loss(x0_tot: Tensor, k: int | Tensor, eps: Tensor, eps_fns: Sequence[Callable[..., Tensor]], sched: Schedule,
          mode: str, weights: Tensor | None, cid: str, *cond: Tensor) -> Tensor:
    """Algorithm 1, lines 3-8: ||eps_tot - f(eps_theta_i(x_i^k, k[, c]))||^2 per row."""
    e = _agents(eps, cid, "eps")
    B, N, d = e.shape
    batch(x0_tot, cid, "x0_tot")
    require(tuple(x0_tot.shape) == (B, N * d), cid,
            f"x0_tot must have shape (B, N*d) = ({B}, {N * d}), got {tuple(x0_tot.shape)}")
    _networks(eps_fns, N, cid)
    kk = sched.steps(k, B, cid)
    w = agent_weights(mode, weights, N, cid)
    eps_tot = factorise(e, w)                                          # eps_tot = f(eps_1..eps_N)
    x_tot_k = ddpm.noise(x0_tot, eps_tot, sched, kk)                   # sqrt(ab_k) x^0 + sqrt(1 - ab_k) eps_tot
    eps_hat_tot = joint_eps(eps_fns, x_tot_k, kk, w, cid, *cond)       # f(eps_theta_i(f^{-1}(x_tot^k)_i, k))
    require_finite(eps_hat_tot, cid, "eps_fns returned non-finite values")
    return ddpm.simple_loss(eps_tot, eps_hat_tot, sched, kk)


def train_step(x0_tot: Tensor, k: int | Tensor, eps: Tensor, eps_fns: Sequence[AgentEpsFn], sched: Schedule,
               mode: str = "concat", weights: Tensor | None = None) -> Tensor:
    """Clause ``dof.train_step``: L = ||f(eps_1..eps_N) - f(eps_theta_1(x_1^k, k), ..., eps_theta_N(x_N^k, k))||^2.

    Per row, shape (B,); differentiable in the networks' parameters and in WConcat weights.
    """
    return _loss(x0_tot, k, eps, eps_fns, sched, mode, weights, "dof.train_step")


def _sigmas(sched: Schedule, variance: str, cid: str) -> Tensor:
    """sigma_k for k = 0..K (sigma_0 and sigma_1 are 0: no noise at the last step), as in ddpm.reverse_step."""
    require(variance in ddpm.VARIANCES, cid, f"variance must be one of {ddpm.VARIANCES}, got {variance!r}")
    s2 = sched.beta if variance == "beta" else sched.beta_tilde
    k = torch.arange(sched.K + 1, device=s2.device)
    return torch.where(k > 1, torch.sqrt(s2), torch.zeros_like(s2))


def _noises(z: Tensor, shape: tuple[int, ...], cid: str, name: str) -> Tensor:
    require(tuple(z.shape) == shape, cid, f"{name} must have shape {shape}, got {tuple(z.shape)}")
    return finite(z, cid, name)


def decentralised_sample(x_K: Tensor, eps_fns: Sequence[AgentEpsFn], sched: Schedule, z: Tensor,
                         variance: str = "beta") -> Tensor:
    """Clause ``dof.decentralised_sample``: x_i^{k-1} = mu_theta_i(x_i^k, k) + sigma_k z_i^k, k = K..1 (Alg. 2).

    Each agent runs the DDPM reverse chain with its own network, start x_K[:, i] and noises
    z[:, :, i] (z[k - 1] at step k, unused at k = 1); returns the agents' samples (B, N, d).
    """
    cid = "dof.decentralised_sample"
    _agents(x_K, cid, "x_K")
    B, N, d = x_K.shape
    _networks(eps_fns, N, cid)
    K = sched.K
    _noises(z, (K, B, N, d), cid, "z")
    sigma = _sigmas(sched, variance, cid)
    steps = torch.arange(K + 1, device=x_K.device).unsqueeze(-1).expand(-1, B)
    x = list(x_K.unbind(1))
    for k in range(K, 0, -1):
        for i in range(N):  # agent i sees only its own x_i^k, network and noise
            eps_hat = _call(eps_fns[i], x[i], steps[k], i, cid)
            x[i] = torch.addcmul(ddpm.reverse_mean(x[i], eps_hat, sched, steps[k]), sigma[k], z[k - 1, :, i])
    out = torch.stack(x, 1)
    require_finite(out, cid, "eps_fns returned non-finite values")
    return out


def igd(x_tot_K: Tensor, eps_fns: Sequence[AgentEpsFn], sched: Schedule, z_tot: Tensor, mode: str = "concat",
        weights: Tensor | None = None, variance: str = "beta") -> Tensor:
    """Clause ``dof.igd``: x_tot^{k-1} = mu(x_tot^k, f(eps_theta_i(f^{-1}(x_tot^k)_i, k))) + sigma_k z_tot^k.

    The centralised chain of the factorised model, (B, N*d) with N = len(eps_fns).
    """
    cid = "dof.igd"
    batch(x_tot_K, cid, "x_tot_K")
    B, Nd = x_tot_K.shape
    N = len(eps_fns)
    require(N >= 1 and Nd % N == 0, cid, f"x_tot_K has {Nd} columns, not a multiple of N = {N} agents")
    _networks(eps_fns, N, cid)
    w = agent_weights(mode, weights, N, cid)
    K = sched.K
    _noises(z_tot, (K, B, Nd), cid, "z_tot")
    sigma = _sigmas(sched, variance, cid)
    steps = torch.arange(K + 1, device=x_tot_K.device).unsqueeze(-1).expand(-1, B)
    x = x_tot_K
    for k in range(K, 0, -1):
        eps_hat_tot = joint_eps(eps_fns, x, steps[k], w, cid)
        x = torch.addcmul(ddpm.reverse_mean(x, eps_hat_tot, sched, steps[k]), sigma[k], z_tot[k - 1])
    require_finite(x, cid, "eps_fns returned non-finite values")
    return x


def policy_loss(x0_tot: Tensor, k: int | Tensor, eps: Tensor, eps_fns: Sequence[AgentEpsFn], sched: Schedule,
                q_new: Tensor, eta: float, mode: str = "concat", weights: Tensor | None = None,
                q_norm: Tensor | None = None) -> Tensor:
    """Clause ``dof.policy_loss``: L = L_BC - sum_i eta Q_i(o_i, a_i^0) / E|Q_i'| per row (Diffusion-QL per agent).

    The normaliser E abs(Q_i') (the mean of ``abs(q_norm[:, i])``, or of q_new when q_norm is None) is detached:
    a constant, as in Diffusion-QL; the gradient reaches q_new and the networks.
    """
    cid = "dof.policy_loss"
    bc = _loss(x0_tot, k, eps, eps_fns, sched, mode, weights, cid)
    B, N = bc.shape[0], len(eps_fns)
    batch(q_new, cid, "q_new")
    require(tuple(q_new.shape) == (B, N), cid, f"q_new must have shape (B, N) = ({B}, {N}), got {tuple(q_new.shape)}")
    qn = q_new if q_norm is None else batch(q_norm, cid, "q_norm")
    require(qn.shape[1] == N, cid, f"q_norm must have shape (M, N) with N = {N}, got {tuple(qn.shape)}")
    e = scalar(eta, cid, "eta", 0.0, math.inf)  # hi given: _checks.scalar formats both bounds
    norm = qn.detach().abs().mean(dim=0)
    require_values(norm > 0, cid, "the normaliser E|Q_i| must be > 0 for every agent")
    return bc - torch.sum(e / norm * q_new, dim=1)


def planner_loss(x0_tot: Tensor, k: int | Tensor, eps: Tensor, eps_fns: Sequence[CondEpsFn], sched: Schedule,
                 y: Tensor, drop: Tensor, mode: str = "concat", weights: Tensor | None = None,
                 empty: Tensor | None = None) -> Tensor:
    """Clause ``dof.planner_loss``: ||eps_tot - f(eps_theta_i(x_i^k, (1 - b) y + b empty, k))||^2 per row.

    ``drop`` is b (B,) with entries 0 or 1 (1: the empty condition, zeros unless given).
    """
    cid = "dof.planner_loss"
    batch(y, cid, "y")
    B, dy = y.shape
    require(eps.ndim != 3 or eps.shape[0] == B, cid, f"y must have one row per sample, got shape {tuple(y.shape)}")
    require(tuple(drop.shape) == (B,), cid, f"drop must have shape ({B},), got {tuple(drop.shape)}")
    require_values((drop == 0) | (drop == 1), cid, "drop entries must be 0 (keep y) or 1 (use empty)")
    nothing = torch.zeros(dy, dtype=y.dtype, device=y.device) if empty is None else finite(empty, cid, "empty")
    require(tuple(nothing.shape) == (dy,), cid, f"empty must have shape ({dy},), got {tuple(nothing.shape)}")
    c = torch.where(drop.unsqueeze(-1) == 1, nothing, y)  # b in {0, 1}: the selection is exact
    return _loss(x0_tot, k, eps, eps_fns, sched, mode, weights, cid, c)


__all__ = ["AgentEpsFn", "CondEpsFn", "NOISE_MODES", "DATA_MODES", "agent_weights", "factorise", "split",
           "joint_eps", "noise_factorisation", "data_factorisation", "train_step", "decentralised_sample", "igd",
           "policy_loss", "planner_loss"]
