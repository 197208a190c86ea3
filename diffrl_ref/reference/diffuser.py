"""Diffuser: planning by iteratively denoising trajectories (spec family ``diffuser``).

Janner, Du, Tenenbaum and Levine, Planning with Diffusion for Flexible Behavior Synthesis,
ICML 2022. A plan of L time steps is one array: column t holds the state s_t followed by the
action a_t, and a batch of plans has shape (B, L, ds + da). The planner is a DDPM over these
arrays (the reverse step is ``ddpm.reverse_step`` on the flattened plan), steered by the
gradient of a return model J (classifier guidance, ``guidance.classifier``) and conditioned
on known entries (the current state, a goal) by overwriting them after every step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import ddpm, guidance
from ._checks import Array, as_betas, as_f64, require, same_shape

#: A noise-prediction network over plans: eps_fn(tau (B, L, D), k (B,) int) -> eps_hat (B, L, D).
TrajEpsFn = Callable[[Array, NDArray[np.int64]], ArrayLike]

#: The gradient of the guide J: grad_J(tau (B, L, D)) -> dJ/dtau (B, L, D).
GradFn = Callable[[Array], ArrayLike]


def _plans(x: ArrayLike, cid: str, name: str) -> Array:
    """A batch of plans (B, L, D) with every axis non-empty."""
    a = as_f64(x, cid, name)
    require(a.ndim == 3, cid, f"{name} must have shape (B, L, D), got shape {a.shape}")
    require(min(a.shape) >= 1, cid, f"{name} must have non-empty axes, got shape {a.shape}")
    return a


def _scale(s: float, cid: str) -> float:
    a = as_f64(s, cid, "scale")
    require(a.ndim == 0 and float(a) >= 0, cid, f"scale must be a scalar >= 0, got {s!r}")
    return float(a)


def trajectory(states: ArrayLike, actions: ArrayLike) -> Array:
    """Clause ``diffuser.trajectory``: tau[:, t] = [s_t, a_t], shape (B, L, ds + da)."""
    cid = "diffuser.trajectory"
    s, a = _plans(states, cid, "states"), _plans(actions, cid, "actions")
    require(s.shape[:2] == a.shape[:2], cid,
            f"states and actions must share (B, L), got {s.shape[:2]} and {a.shape[:2]}")
    return np.concatenate([s, a], axis=2)


def split_trajectory(tau: ArrayLike, state_dim: int) -> tuple[Array, Array]:
    """Clause ``diffuser.split_trajectory``: (states, actions) = (tau[..., :ds], tau[..., ds:])."""
    cid = "diffuser.split_trajectory"
    x = _plans(tau, cid, "tau")
    D = x.shape[2]
    require(isinstance(state_dim, (int, np.integer)) and not isinstance(state_dim, bool), cid,
            f"state_dim must be an integer, got {state_dim!r}")
    require(1 <= state_dim < D, cid, f"state_dim must lie in [1, D - 1] = [1, {D - 1}], got {state_dim}")
    return x[..., :state_dim].copy(), x[..., state_dim:].copy()


def _mask(mask: ArrayLike, shape: tuple[int, ...], cid: str) -> NDArray[np.bool_]:
    m = np.asarray(mask)
    require(m.dtype == np.bool_, cid, f"mask must be boolean, got dtype {m.dtype}")
    require(m.shape in (shape, shape[1:]), cid, f"mask must have shape {shape} or {shape[1:]}, got {m.shape}")
    return m


def inpaint(tau: ArrayLike, mask: ArrayLike, values: ArrayLike) -> Array:
    """Clause ``diffuser.inpaint``: a copy of tau with tau[mask] replaced by values[mask]."""
    cid = "diffuser.inpaint"
    x, v = _plans(tau, cid, "tau"), _plans(values, cid, "values")
    same_shape(cid, tau=x, values=v)
    m = _mask(mask, x.shape, cid)
    return np.where(m, v, x)


def _transition_variance(x: Array, betas: ArrayLike, k: ArrayLike, variance: str) -> Array:
    """Sigma_k as a (B, 1) column: sigma_k^2 of the DDPM step for k >= 2, 0 at k = 1 (no noise)."""
    if variance == "beta":
        _, sigma2 = ddpm.forward_kernel(x, betas, k)        # beta_k
    else:
        _, sigma2 = ddpm.posterior(x, x, betas, k)          # beta_tilde_k
    steps = np.broadcast_to(np.asarray(k, dtype=np.int64), (x.shape[0],))
    return np.where(steps[:, None] > 1, sigma2, 0.0)


def guided_step(
    tau_k: ArrayLike,
    eps_hat: ArrayLike,
    betas: ArrayLike,
    k: ArrayLike,
    z: ArrayLike,
    grad_J: GradFn | None = None,
    scale: float = 1.0,
    variance: str = "beta",
) -> Array:
    """Clause ``diffuser.guided_step``: tau^{k-1} = mu + s Sigma grad J(mu) + sqrt(Sigma) z (Janner Eq. 3)."""
    cid = "diffuser.guided_step"
    x, e, zz = _plans(tau_k, cid, "tau_k"), _plans(eps_hat, cid, "eps_hat"), _plans(z, cid, "z")
    same_shape(cid, tau_k=x, eps_hat=e, z=zz)
    B = x.shape[0]
    ddpm._schedule(betas, k, B, cid)  # domain of betas and k, reported under this clause
    require(variance in ddpm.VARIANCES, cid, f"variance must be one of {ddpm.VARIANCES}, got {variance!r}")
    s = _scale(scale, cid)
    flat = (B, -1)
    mu = ddpm.reverse_step(x.reshape(flat), e.reshape(flat), betas, k, np.zeros(x.size).reshape(flat), variance)
    sigma2 = _transition_variance(x.reshape(flat), betas, k, variance)
    if grad_J is None:
        g = np.zeros_like(mu)
    else:
        g = as_f64(grad_J(mu.reshape(x.shape)), cid, "grad_J output")
        require(g.shape == x.shape, cid, f"grad_J must return shape {x.shape}, got {g.shape}")
    guided = guidance.classifier(mu, sigma2, g.reshape(flat), s)
    return np.asarray(guided + np.sqrt(sigma2) * zz.reshape(flat), dtype=np.float64).reshape(x.shape)


def sample(
    tau_K: ArrayLike,
    eps_fn: TrajEpsFn,
    betas: ArrayLike,
    z: ArrayLike,
    grad_J: GradFn | None = None,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    values: ArrayLike | None = None,
    variance: str = "beta",
) -> Array:
    """Clause ``diffuser.sample``: the guided, inpainted reverse chain; returns chain[k] = tau^k, k = 0..K."""
    cid = "diffuser.sample"
    x = _plans(tau_K, cid, "tau_K")
    B = x.shape[0]
    beta = as_betas(betas, cid)
    K = beta.size
    ddpm._schedule(beta, K, B, cid)
    zz = as_f64(z, cid, "z")
    require(zz.shape == (K, *x.shape), cid, f"z must have shape (K, B, L, D) = {(K, *x.shape)}, got {zz.shape}")
    require(variance in ddpm.VARIANCES, cid, f"variance must be one of {ddpm.VARIANCES}, got {variance!r}")
    _scale(scale, cid)
    require((mask is None) == (values is None), cid, "mask and values must be given together")

    def condition(t: Array) -> Array:
        return t if mask is None or values is None else inpaint(t, mask, values)

    chain = np.empty((K + 1, *x.shape))
    chain[K] = condition(x)
    for k in range(K, 0, -1):
        e_hat = as_f64(eps_fn(chain[k].copy(), np.full(B, k, dtype=np.int64)), cid, "eps_fn output")
        require(e_hat.shape == x.shape, cid, f"eps_fn must return shape {x.shape}, got {e_hat.shape}")
        chain[k - 1] = condition(guided_step(chain[k], e_hat, beta, k, zz[k - 1], grad_J, scale, variance))
    return chain
