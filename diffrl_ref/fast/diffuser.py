"""Diffuser on the production path (family ``diffuser``): batched, dtype- and device-generic.

Janner, Du, Tenenbaum and Levine, Planning with Diffusion for Flexible Behavior Synthesis,
ICML 2022. A batch of plans has shape (B, L, ds + da), column t holding s_t followed by a_t.
The reverse step is the DDPM step of :mod:`diffrl_ref.fast.ddpm` on the flattened plan, its
mean shifted by classifier guidance along Sigma_k grad J(mu) (:func:`diffrl_ref.fast.guidance.classifier`);
known entries are imposed by inpainting after every step. Networks are tensor callables:
``eps_fn(tau (B, L, D), k (B,) int64) -> (B, L, D)`` and ``grad_J(tau (B, L, D)) -> (B, L, D)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import ddpm, guidance
from ._checks import checking, finite, finite_flag, integer, require, require_finite, require_values, same_shape, scalar
from .schedule import Schedule, at

#: eps_fn(tau (B, L, D), k (B,) int64) -> eps_hat (B, L, D)
TrajEpsFn = Callable[[Tensor, Tensor], Tensor]
#: grad_J(tau (B, L, D)) -> dJ/dtau (B, L, D)
GradFn = Callable[[Tensor], Tensor]


def _plans(x: Tensor, cid: str, name: str) -> Tensor:
    """A batch of plans (B, L, D) with non-empty axes and finite entries."""
    require(x.ndim == 3 and min(x.shape) >= 1, cid, f"{name} must have shape (B, L, D) with non-empty axes, "
            f"got shape {tuple(x.shape)}")
    return finite(x, cid, name)


def _variance(variance: str, cid: str) -> str:
    require(variance in ddpm.VARIANCES, cid, f"variance must be one of {ddpm.VARIANCES}, got {variance!r}")
    return variance


def _mask(mask: Tensor, shape: tuple[int, ...], cid: str) -> Tensor:
    require(mask.dtype == torch.bool, cid, f"mask must be a boolean tensor, got {mask.dtype}")
    require(tuple(mask.shape) in (shape, shape[1:]), cid,
            f"mask must have shape {shape} or {shape[1:]}, got {tuple(mask.shape)}")
    return mask


def _condition(mask: Tensor, values: Tensor, shape: tuple[int, ...], cid: str) -> tuple[Tensor, Tensor]:
    _plans(values, cid, "values")
    require(tuple(values.shape) == shape, cid, f"values must have shape {shape}, got {tuple(values.shape)}")
    return _mask(mask, shape, cid), values


def trajectory(states: Tensor, actions: Tensor) -> Tensor:
    """Clause ``diffuser.trajectory``: tau[:, t] = [s_t, a_t], shape (B, L, ds + da)."""
    cid = "diffuser.trajectory"
    _plans(states, cid, "states")
    _plans(actions, cid, "actions")
    require(states.shape[:2] == actions.shape[:2], cid, f"states and actions must share (B, L), got "
            f"{tuple(states.shape[:2])} and {tuple(actions.shape[:2])}")
    return torch.cat([states, actions], dim=2)


def split_trajectory(tau: Tensor, state_dim: int) -> tuple[Tensor, Tensor]:
    """Clause ``diffuser.split_trajectory``: (s, a) = (tau[..., :ds], tau[..., ds:]), as views of tau."""
    cid = "diffuser.split_trajectory"
    _plans(tau, cid, "tau")
    D = tau.shape[2]
    ds = integer(state_dim, cid, "state_dim")
    require(1 <= ds < D, cid, f"state_dim must lie in [1, D - 1] = [1, {D - 1}], got {ds}")
    return tau[..., :ds], tau[..., ds:]


def inpaint(tau: Tensor, mask: Tensor, values: Tensor) -> Tensor:
    """Clause ``diffuser.inpaint``: tau with tau[M] replaced by V[M] (a new tensor; M is (B, L, D) or (L, D))."""
    cid = "diffuser.inpaint"
    _plans(tau, cid, "tau")
    m, v = _condition(mask, values, tuple(tau.shape), cid)
    return torch.where(m, v, tau)


def _transition_variance(sched: Schedule, kk: Tensor, variance: str) -> Tensor:
    """Sigma_k as a (B, 1) column: sigma_k^2 in {beta_k, beta_tilde_k} for k >= 2, 0 at k = 1 (no noise)."""
    sigma2 = at(sched.beta if variance == "beta" else sched.beta_tilde, kk)
    return torch.where(kk.unsqueeze(-1) > 1, sigma2, 0.0)


def _grad(grad_J: GradFn, mu: Tensor, cid: str) -> Tensor:
    g = grad_J(mu)
    require(g.shape == mu.shape, cid, f"grad_J must return shape {tuple(mu.shape)}, got {tuple(g.shape)}")
    require_finite(g, cid, "grad_J must return finite values")
    return g


def guided_step(tau_k: Tensor, eps_hat: Tensor, sched: Schedule, k: int | Tensor, z: Tensor,
                grad_J: GradFn | None = None, scale: float = 1.0, variance: str = "beta") -> Tensor:
    """Clause ``diffuser.guided_step``: tau^{k-1} = mu + s Sigma_k grad J(mu) + sqrt(Sigma_k) z (Janner Sec. 3.2).

    mu is the DDPM reverse mean (Ho et al., Eq. 11) of the flattened plan; Sigma_1 = 0, so the
    last step returns the mean unguided and without noise.
    """
    cid = "diffuser.guided_step"
    for name, t in (("tau_k", tau_k), ("eps_hat", eps_hat), ("z", z)):
        _plans(t, cid, name)
    same_shape(cid, tau_k=tau_k, eps_hat=eps_hat, z=z)
    B = tau_k.shape[0]
    kk = sched.steps(k, B, cid)
    Sigma = _transition_variance(sched, kk, _variance(variance, cid))
    s = scalar(scale, cid, "scale", 0.0)
    mu = ddpm.reverse_mean(tau_k.reshape(B, -1), eps_hat.reshape(B, -1), sched, kk)
    if grad_J is not None:
        g = _grad(grad_J, mu.reshape(tau_k.shape), cid)
        mu = guidance.classifier(mu, Sigma, g.reshape(B, -1), s)
    return torch.addcmul(mu, torch.sqrt(Sigma), z.reshape(B, -1)).reshape(tau_k.shape)


class GuidedSampler:
    """Algorithm 1 of Janner et al.: the guided DDPM chain k = K..1 with inpainting after every step.

    Each step is tau^{k-1} = C(a_k tau^k - c_k eps_hat + s Sigma_k grad J(mu) + sqrt(Sigma_k) z_k),
    mu = a_k tau^k - c_k eps_hat, with a_k, c_k and Sigma_k the float64-derived scalars of
    :class:`diffrl_ref.fast.ddpm.AncestralSampler` (Sigma_1 = 0: the last step is neither
    guided nor noised, and grad_J is not called there, nor when scale = 0). C overwrites the known entries. The loop
    has no data-dependent control flow, so it runs under ``torch.compile`` and graph capture.
    """

    def __init__(self, sched: Schedule, variance: str = "beta", scale: float = 1.0) -> None:
        cid = "diffuser.sample"
        self.sched, self.variance = sched, _variance(variance, cid)
        self.scale = scalar(scale, cid, "scale", 0.0)
        #: (k, a_k, c_k, sqrt(Sigma_k)) for k = K..1
        self.coef = [(k, a, c, sigma) for k, a, c, _, _, sigma in ddpm.AncestralSampler(sched, variance).coef]

    def __call__(self, tau_K: Tensor, eps_fn: TrajEpsFn, z: Tensor, grad_J: GradFn | None = None,
                 mask: Tensor | None = None, values: Tensor | None = None, *, record_chain: bool = True) -> Tensor:
        """The chain (K + 1, B, L, D), chain[k] = tau^k (or only tau^0 when ``record_chain`` is False).

        z: (K, B, L, D), z[k - 1] drives the step k -> k - 1 (z[0] is unused).
        """
        cid = "diffuser.sample"
        _plans(tau_K, cid, "tau_K")
        shape = tuple(tau_K.shape)
        B, K = shape[0], self.sched.K
        require(tuple(z.shape) == (K, *shape), cid, f"z must have shape (K, B, L, D) = {(K, *shape)}, "
                f"got {tuple(z.shape)}")
        finite(z, cid, "z")
        require((mask is None) == (values is None), cid, "mask and values must be given together")
        cond = None if mask is None or values is None else _condition(mask, values, shape, cid)

        def constrain(t: Tensor) -> Tensor:
            return t if cond is None else torch.where(cond[0], cond[1], t)

        guide = grad_J if self.scale > 0 else None
        check = checking()
        ok = torch.ones((), dtype=torch.bool, device=tau_K.device)
        steps = torch.arange(K + 1, device=tau_K.device).unsqueeze(-1).expand(-1, B)
        x = constrain(tau_K)
        chain = [x]
        for k, a, c, sigma in self.coef:
            eps_hat = eps_fn(x, steps[k])
            require(eps_hat.shape == x.shape, cid, f"eps_fn must return shape {shape}, got {tuple(eps_hat.shape)}")
            x = torch.add(x * a, eps_hat, alpha=-c)  # mu, the DDPM reverse mean
            if sigma:  # Sigma_k > 0: guide and noise (k >= 2)
                if guide is not None:
                    g = guide(x)
                    require(g.shape == x.shape, cid, f"grad_J must return shape {shape}, got {tuple(g.shape)}")
                    x = torch.add(x, g, alpha=self.scale * sigma * sigma)  # guidance.classifier, Sigma_k scalar
                x = torch.add(x, z[k - 1], alpha=sigma)
            if check:  # one sync at the end; NaN from eps_fn or grad_J reaches x before the overwrite
                ok = ok & finite_flag(x)
            x = constrain(x)
            if record_chain:
                chain.append(x)
        require_values(ok, cid, "eps_fn and grad_J must return finite values")
        return torch.stack(chain[::-1]) if record_chain else x


def sample(tau_K: Tensor, eps_fn: TrajEpsFn, sched: Schedule, z: Tensor, grad_J: GradFn | None = None,
           scale: float = 1.0, mask: Tensor | None = None, values: Tensor | None = None,
           variance: str = "beta") -> Tensor:
    """Clause ``diffuser.sample``: tau^K <- C(tau^K), tau^{k-1} = C(guided_step(tau^k, eps_theta(tau^k, k), k, z_k)).

    Returns the chain (K + 1, B, L, D) with chain[k] = tau^k; C = inpaint(.; mask, values).
    """
    return GuidedSampler(sched, variance, scale)(tau_K, eps_fn, z, grad_J, mask, values)


__all__ = ["TrajEpsFn", "GradFn", "trajectory", "split_trajectory", "inpaint", "guided_step", "GuidedSampler",
           "sample"]
