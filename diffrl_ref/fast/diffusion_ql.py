"""Diffusion-QL on the production path (family ``diffusion_ql``).

Wang, Hunt and Zhou, ICLR 2023. The policy pi_theta(a | s) is the DDPM reverse chain over
actions conditioned on the state, eps_fn(a_k (B, da), k (B,) int64, s (B, ds)) -> (B, da), with
1-based steps. Training minimises L = L_d + L_q: the noise-prediction loss on dataset actions
and a Q-learning term whose weight eta / E|Q'| is a stop-gradient constant. Inputs are
validated once in the clause's name; the verified ``ddpm`` pieces then run unchecked, and the
sampling chain is :class:`~diffrl_ref.fast.ddpm.AncestralSampler` with ``clip = max_action``.
:class:`ActionSampler` and :class:`PolicyLoss` hold their float64-derived coefficients, so a
training loop builds them once (and can ``torch.compile`` their calls).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import ddpm
from ._checks import batch, checking, finite, finite_flag, require, require_finite, require_values, scalar, unchecked
from .schedule import Schedule

#: eps_fn(a_k (B, da), k (B,) int64, s (B, ds)) -> eps_hat (B, da): the state-conditioned noise network.
StateEpsFn = Callable[[Tensor, Tensor, Tensor], Tensor]
#: q_fn(s (B, ds), a (B, da)) -> (B,): a critic.
QFn = Callable[[Tensor, Tensor], Tensor]

#: Reverse-chain variances: "beta_tilde" (official code, the default) or "beta" (the paper).
VARIANCES = ddpm.VARIANCES


def _states(s: Tensor, B: int, cid: str) -> Tensor:
    batch(s, cid, "s")
    require(s.shape[0] == B, cid, f"s must have {B} rows (one state per action), got shape {tuple(s.shape)}")
    return s


def nonnegative(v: float, cid: str, name: str) -> float:
    """A finite Python float >= 0 (a loss weight, a bound)."""
    return scalar(v, cid, name, 0.0, math.inf)  # _checks.scalar needs both bounds (it formats them eagerly)


def positive(v: float, cid: str, name: str) -> float:
    """A finite Python float > 0 (a bound, a temperature)."""
    f = scalar(v, cid, name, -math.inf, math.inf)
    require(f > 0, cid, f"{name} must be > 0, got {v!r}")
    return f


def _network(eps_fn: StateEpsFn, x: Tensor, k: Tensor, s: Tensor, cid: str) -> Tensor:
    """eps_fn(x, k, s), checked: shaped like x and finite."""
    e = eps_fn(x, k, s)
    require(e.shape == x.shape, cid, f"eps_fn returned shape {tuple(e.shape)}, expected {tuple(x.shape)}")
    require_finite(e, cid, "eps_fn returned non-finite values")
    return e


class Conditioned:
    """eps_fn(x, k, s) with the state bound, as a sampler's eps_fn(x, k).

    Each output's shape is checked; in checked mode its finiteness is accumulated on the device
    and tested once by :meth:`check` (a clipped chain would otherwise hide an infinite eps_hat).
    """

    def __init__(self, eps_fn: StateEpsFn, s: Tensor, cid: str, record: bool) -> None:
        self.eps_fn, self.s, self.cid, self.record = eps_fn, s, cid, record
        self.finite: Tensor | None = None

    def __call__(self, x: Tensor, k: Tensor) -> Tensor:
        e = self.eps_fn(x, k, self.s)
        require(e.shape == x.shape, self.cid, f"eps_fn returned shape {tuple(e.shape)}, expected {tuple(x.shape)}")
        if self.record:
            ok = finite_flag(e)
            self.finite = ok if self.finite is None else self.finite & ok
        return e

    def check(self) -> None:
        if self.finite is not None:
            require_values(self.finite, self.cid, "eps_fn returned non-finite values")


def noise_prediction(a: Tensor, s: Tensor, eps_fn: StateEpsFn, sched: Schedule, k: int | Tensor, eps: Tensor,
                     cid: str) -> tuple[Tensor, Tensor, Tensor]:
    """(eps, eps_fn(a_k, k, s), k as (B,)) with a_k = ddpm.noise(a, eps, k), checked in the name of ``cid``.

    The shared first half of the eps-matching losses (diffusion_ql.bc_loss, edp.weighted_elbo).
    """
    batch(a, cid, "a")
    batch(eps, cid, "eps")
    require(a.shape == eps.shape, cid, f"shapes must match, got a{tuple(a.shape)}, eps{tuple(eps.shape)}")
    B = a.shape[0]
    _states(s, B, cid)
    kk = sched.steps(k, B, cid)
    with unchecked():  # validated above
        a_k = ddpm.noise(a, eps, sched, kk)
    return eps, _network(eps_fn, a_k, kk, s, cid), kk


def _bc_loss(a: Tensor, s: Tensor, eps_fn: StateEpsFn, sched: Schedule, k: int | Tensor, eps: Tensor,
             cid: str) -> Tensor:
    e, e_hat, kk = noise_prediction(a, s, eps_fn, sched, k, eps, cid)
    with unchecked():
        return ddpm.simple_loss(e, e_hat, sched, kk, "simple")


def bc_loss(a: Tensor, s: Tensor, eps_fn: StateEpsFn, sched: Schedule, k: int | Tensor, eps: Tensor) -> Tensor:
    """Clause ``diffusion_ql.bc_loss``: L_d = ||eps - eps_theta(sqrt(ab_k) a + sqrt(1 - ab_k) eps, k, s)||^2 per row.

    One network call on the whole batch; differentiable in the network's parameters.
    """
    return _bc_loss(a, s, eps_fn, sched, k, eps, "diffusion_ql.bc_loss")


class ActionSampler:
    """Clause ``diffusion_ql.sample_action``: a^0 from the reverse chain k = K..1, x_0 clipped to +-max_action.

    Each step is mu_tilde(clip(x0_hat), a^k) + sigma_k z_k (the official clip_denoised; the plain
    ddpm.reverse_step when max_action is None), and a^0 is clipped once more. The chain is
    differentiable, so the Q term's gradient reaches the network through it.
    """

    def __init__(self, sched: Schedule, max_action: float | None = 1.0, variance: str = "beta_tilde", *,
                 clause: str = "diffusion_ql.sample_action") -> None:
        require(variance in VARIANCES, clause, f"variance must be one of {VARIANCES}, got {variance!r}")
        self.clause = clause
        self.max_action = None if max_action is None else positive(max_action, clause, "max_action")
        self.chain = ddpm.AncestralSampler(sched, variance, clip=self.max_action)

    def __call__(self, s: Tensor, eps_fn: StateEpsFn, a_K: Tensor, noises: Tensor) -> Tensor:
        """s (B, ds), a_K (B, da), noises (K, B, da) with noises[k - 1] = z_k (unused at k = 1)."""
        cid, K = self.clause, self.chain.sched.K
        batch(a_K, cid, "a_K")
        B, d = a_K.shape
        _states(s, B, cid)
        require(tuple(noises.shape) == (K, B, d), cid,
                f"noises must have shape (K, B, da) = {(K, B, d)}, got {tuple(noises.shape)}")
        finite(noises, cid, "noises")
        net = Conditioned(eps_fn, s, cid, record=checking())
        with unchecked():  # inputs validated above; the network's outputs are checked by net
            a0 = self.chain(a_K, net, noises)
        net.check()
        return a0 if self.max_action is None else a0.clamp(-self.max_action, self.max_action)


def sample_action(s: Tensor, eps_fn: StateEpsFn, sched: Schedule, a_K: Tensor, noises: Tensor,
                  max_action: float | None = 1.0, variance: str = "beta_tilde") -> Tensor:
    """Clause ``diffusion_ql.sample_action``: a^{k-1} = reverse_step(a^k, eps_hat(clip(x0_hat)), k, z_k); clip(a^0)."""
    return ActionSampler(sched, max_action, variance)(s, eps_fn, a_K, noises)


def _q_loss(q: Tensor, q_norm: Tensor, eta: float, cid: str) -> Tensor:
    require(q.ndim == 1 and q.numel() >= 1, cid, f"q must have shape (B,) with B >= 1, got {tuple(q.shape)}")
    require(q_norm.ndim == 1 and q_norm.numel() >= 1, cid,
            f"q_norm must have shape (M,) with M >= 1, got {tuple(q_norm.shape)}")
    finite(q, cid, "q")
    finite(q_norm, cid, "q_norm")
    e = nonnegative(eta, cid, "eta")
    scale = q_norm.detach().abs().mean()  # E|Q'|: a constant, no gradient
    require_values(scale > 0, cid, "the normaliser E|Q| = mean(|q_norm|) must be > 0")
    return -(e / scale) * q


def q_loss(q: Tensor, q_norm: Tensor, eta: float = 1.0) -> Tensor:
    """Clause ``diffusion_ql.q_loss``: L_q = -alpha Q(s, a^0) per row, alpha = eta / mean|q_norm| (stop-gradient)."""
    return _q_loss(q, q_norm, eta, "diffusion_ql.q_loss")


def q_loss_grad(q: Tensor, q_norm: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Clause ``diffusion_ql.q_loss_grad``: autograd of mean_i L_q,i w.r.t. q and q_norm (the latter 0)."""
    cid = "diffusion_ql.q_loss_grad"
    q_leaf, qn_leaf = q.detach().requires_grad_(True), q_norm.detach().requires_grad_(True)
    with torch.enable_grad():
        mean_loss = _q_loss(q_leaf, qn_leaf, eta, cid).mean()
        g_q, g_qn = torch.autograd.grad(mean_loss, (q_leaf, qn_leaf), allow_unused=True, materialize_grads=True)
    return g_q, g_qn


def _critic(q_fn: QFn, s: Tensor, a: Tensor, name: str, cid: str) -> Tensor:
    q = q_fn(s, a)
    require(tuple(q.shape) == (a.shape[0],), cid, f"{name} returned shape {tuple(q.shape)}, expected ({a.shape[0]},)")
    require_finite(q, cid, f"{name} returned non-finite values")
    return q


class PolicyLoss:
    """Clause ``diffusion_ql.loss``: L = L_d + L_q per row, L_q at the policy's own sample a^0 = sample_action(s).

    The action sampler is built once; a call makes one network call for L_d and K for a^0.
    """

    def __init__(self, sched: Schedule, eta: float = 1.0, max_action: float | None = 1.0,
                 variance: str = "beta_tilde", *, clause: str = "diffusion_ql.loss") -> None:
        self.sched, self.clause, self.eta = sched, clause, nonnegative(eta, clause, "eta")
        self.sampler = ActionSampler(sched, max_action, variance, clause=clause)

    def __call__(self, a: Tensor, s: Tensor, eps_fn: StateEpsFn, k: int | Tensor, eps: Tensor, a_K: Tensor,
                 noises: Tensor, q_fn: QFn, q_norm_fn: QFn) -> Tensor:
        cid = self.clause
        l_d = _bc_loss(a, s, eps_fn, self.sched, k, eps, cid)
        a0 = self.sampler(s, eps_fn, a_K, noises)  # s has the rows of a, so a_K does too
        q, q_norm = _critic(q_fn, s, a0, "q_fn", cid), _critic(q_norm_fn, s, a0, "q_norm_fn", cid)
        return l_d + _q_loss(q, q_norm, self.eta, cid)


def loss(a: Tensor, s: Tensor, eps_fn: StateEpsFn, sched: Schedule, k: int | Tensor, eps: Tensor, a_K: Tensor,
         noises: Tensor, q_fn: QFn, q_norm_fn: QFn, eta: float = 1.0, max_action: float | None = 1.0,
         variance: str = "beta_tilde") -> Tensor:
    """Clause ``diffusion_ql.loss``: L = L_d + L_q, L_q = -eta Q(s, a^0) / E|Q'(s, a^0)|, a^0 = sample_action(s)."""
    return PolicyLoss(sched, eta, max_action, variance)(a, s, eps_fn, k, eps, a_K, noises, q_fn, q_norm_fn)


__all__ = ["StateEpsFn", "QFn", "VARIANCES", "nonnegative", "positive", "Conditioned", "noise_prediction",
           "bc_loss", "ActionSampler", "sample_action", "q_loss", "q_loss_grad", "PolicyLoss", "loss"]
