"""Planted bugs in the production path (``target="fast"``): PyTorch mistakes, run in float32 on cpu.

Every other mutant module plants its bug in a copy of the float64 reference; these plant it in
:mod:`diffrl_ref.fast`, the code users run. Each patch is a buggy copy of a production function
(tensors in, tensors out), called through the same :class:`~diffrl_ref.adapters.fast._bridge.Bridge`
conversions as the real bridge function in ``diffrl_ref/adapters/fast/<family>.py``, so the suite
sees it exactly as it sees ``--impl fast --dtype float32``. The bugs are the ones PyTorch code gets
wrong: a table indexed at k - 1, ``repeat`` where ``repeat_interleave`` belongs, ``torch.lerp``'s
arguments swapped, ``randn_like`` instead of the passed-in noise, a reduction over the wrong dim,
``reshape`` of a stacked batch in the wrong order, an in-place update of a tensor used later, an
unshifted log-sum-exp, a detach on the wrong branch, value checks skipped with ``unchecked()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from numpy.typing import ArrayLike
from torch import Tensor

from ...adapters.fast import diffuser as bridge_diffuser
from ...adapters.fast import dof as bridge_dof
from ...adapters.fast import dom2 as bridge_dom2
from ...adapters.fast import qmix as bridge_qmix
from ...adapters.fast._bridge import Bridge
from ...fast import ddim as f_ddim
from ...fast import ddpm as f_ddpm
from ...fast import decision_diffuser as f_dd
from ...fast import diffsr as f_diffsr
from ...fast import diffuser as f_diffuser
from ...fast import diffusion_ql as f_dql
from ...fast import dof as f_dof
from ...fast import dom2 as f_dom2
from ...fast import dpm_solver as f_dpm
from ...fast import edp as f_edp
from ...fast import elbo as f_elbo
from ...fast import gaussian as f_gaussian
from ...fast import guidance as f_guidance
from ...fast import madiff as f_madiff
from ...fast import qmix as f_qmix
from ...fast import schedule as f_schedule
from ...fast import sde as f_sde
from ...fast import spectral as f_spectral
from ...fast._checks import batch, integer, require, require_values, same_shape, scalar, unchecked
from ...fast.schedule import Schedule, at
from . import Mutant

#: The conversions of ``adapter("float32", "cpu")``: NumPy float64 in, float32 tensors in, float64 NumPy out.
BR = Bridge("float32", "cpu")


def _sched(betas: ArrayLike, cid: str) -> Schedule:
    return BR.sched(betas, cid)


# ---- schedule -----------------------------------------------------------------------------------


def _alpha_bar_no_leading_one(betas: ArrayLike) -> Any:
    """torch.cumprod(1 - betas) as the table: alpha_bar_0 = 1 never prepended, so entry k holds alpha_bar_{k+1}."""
    cid = "schedule.alpha_bar"
    b = BR.x(betas, cid, "betas")
    alpha = 1.0 - f_schedule._check_betas(f_schedule._host64(b), cid)
    return BR.out(torch.cumprod(alpha, 0).to(b.dtype))


def _linear_linspace(K: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Any:
    """torch.linspace(start, end, K + 1)[1:]: K + 1 points, the first dropped, so beta_1 != beta_start."""
    cid = "schedule.linear"
    K = f_schedule._K(K, 2, cid)
    require(0 < beta_start <= beta_end < 1, cid, "need 0 < beta_start <= beta_end < 1")
    return BR.out(torch.linspace(beta_start, beta_end, K + 1, dtype=torch.float64)[1:].to(BR.dtype))


def _cosine_unclipped(K: int, s: float = 0.008, max_beta: float = 0.999) -> Any:
    """The cosine schedule's betas without the clamp at max_beta (the last beta is 1: alpha_bar_K = 0)."""
    cid = "schedule.cosine"
    K = f_schedule._K(K, 1, cid)
    require(s > 0, cid, "s must be > 0")
    require(0 < max_beta < 1, cid, "max_beta must lie in (0, 1)")
    f = torch.cos((torch.arange(0, K + 1, dtype=torch.float64) / K + s) / (1 + s) * (math.pi / 2)) ** 2
    return BR.out((1.0 - f[1:] / f[:-1]).to(BR.dtype))


def _vp_right_endpoint(K: int, beta_min: float = 0.1, beta_max: float = 10.0) -> Any:
    """beta(t) sampled at t = k/K (right endpoint) instead of integrated over [(k-1)/K, k/K]."""
    cid = "schedule.vp"
    K = f_schedule._K(K, 1, cid)
    require(0 < beta_min <= beta_max, cid, "need 0 < beta_min <= beta_max")
    k = torch.arange(1, K + 1, dtype=torch.float64)
    return BR.out((-torch.expm1(-(beta_min + (beta_max - beta_min) * k / K) / K)).to(BR.dtype))


# ---- ddpm ---------------------------------------------------------------------------------------


def _forward_kernel_std(x_prev: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    """The kernel's variance returned as its standard deviation sqrt(beta_k) (torch.distributions' scale)."""
    cid = "ddpm.forward_kernel"
    x, sched = BR.x(x_prev, cid, "x_prev"), _sched(betas, cid)
    batch(x, cid, "x_prev")
    beta_k = at(sched.beta, sched.steps(BR.k(k, cid), x.shape[0], cid))
    return BR.out(torch.sqrt(1.0 - beta_k) * x), BR.out(torch.sqrt(beta_k))


def _noise_randn_like(x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    """x_k built with torch.randn_like(x0), a fresh draw, instead of the eps passed in."""
    cid = "ddpm.noise"
    x, e, sched = BR.x(x0, cid, "x0"), BR.x(eps, cid, "eps"), _sched(betas, cid)
    f_ddpm._pair(x, e, ("x0", "eps"), cid)
    kk = sched.steps(BR.k(k, cid), x.shape[0], cid)
    return BR.out(at(sched.sqrt_alpha_bar, kk) * x + at(sched.sqrt_one_minus_alpha_bar, kk) * torch.randn_like(x))


def _noise_unchecked(x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    """The clause run inside fast.unchecked() (the hot-loop opt-out), k clamped into the table: NaN, k = 0 pass."""
    cid = "ddpm.noise"
    with unchecked():
        x, e, sched = BR.x(x0, cid, "x0"), BR.x(eps, cid, "eps"), _sched(betas, cid)
        return BR.out(f_ddpm.noise(x, e, sched, BR.k(k, cid).clamp(0, sched.K)))


def _marginal_k_minus_1(x0: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    """The (K + 1)-entry tables indexed at k - 1, as if they had K entries (alphas_cumprod[t - 1])."""
    cid = "ddpm.marginal"
    x, sched = BR.x(x0, cid, "x0"), _sched(betas, cid)
    batch(x, cid, "x0")
    kk = sched.steps(BR.k(k, cid), x.shape[0], cid)
    return BR.out(at(sched.sqrt_alpha_bar, kk - 1) * x), BR.out(at(sched.one_minus_alpha_bar, kk - 1))


def _x0_from_eps_repeat(x_k: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    """The per-row coefficient tiled to (B, d) with .repeat(d) where .repeat_interleave(d) belongs."""
    cid = "ddpm.x0_from_eps"
    x, e, sched = BR.x(x_k, cid, "x_k"), BR.x(eps, cid, "eps"), _sched(betas, cid)
    f_ddpm._pair(x, e, ("x_k", "eps"), cid)
    B, d = x.shape
    kk = sched.steps(BR.k(k, cid), B, cid)

    def tile(table: Tensor) -> Tensor:
        return table[kk].repeat(d).reshape(B, d)  # row-major: entry (i, j) holds row (i d + j) mod B

    return BR.out((x - tile(sched.sqrt_one_minus_alpha_bar) * e) / tile(sched.sqrt_alpha_bar))


def _posterior_sqrt_ab_k(x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    """The x_0 coefficient sqrt(alpha_bar_{k-1}) beta_k / (1 - alpha_bar_k) read at k instead of k - 1."""
    cid = "ddpm.posterior"
    x, xk, sched = BR.x(x0, cid, "x0"), BR.x(x_k, cid, "x_k"), _sched(betas, cid)
    f_ddpm._pair(x, xk, ("x0", "x_k"), cid)
    kk = sched.steps(BR.k(k, cid), x.shape[0], cid)
    beta_k = at(sched.beta, kk)
    one_m_k, one_m_prev = at(sched.one_minus_alpha_bar, kk), at(sched.one_minus_alpha_bar, kk - 1)
    c0 = at(sched.sqrt_alpha_bar, kk) * beta_k / one_m_k
    ck = torch.sqrt(1.0 - beta_k) * one_m_prev / one_m_k
    return BR.out(c0 * x + ck * xk), BR.out(at(sched.beta_tilde, kk))


def _reverse_step_noise_at_k1(x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                              variance: str = "beta") -> Any:
    """sigma_k z added at every step: the torch.where(k > 1, ...) that drops it at k = 1 is missing."""
    cid = "ddpm.reverse_step"
    x, e, zz, sched = BR.x(x_k, cid, "x_k"), BR.x(eps_hat, cid, "eps_hat"), BR.x(z, cid, "z"), _sched(betas, cid)
    for name, t in (("x_k", x), ("eps_hat", e), ("z", zz)):
        batch(t, cid, name)
    same_shape(cid, x_k=x, eps_hat=e, z=zz)
    kk = sched.steps(BR.k(k, cid), x.shape[0], cid)
    sigma = torch.sqrt(f_ddpm._sigma2(variance, sched, kk, cid))
    return BR.out(f_ddpm.reverse_mean(x, e, sched, kk) + sigma * zz)


def _reverse_step_randn_like(x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                             variance: str = "beta") -> Any:
    """The step draws torch.randn_like(x_k) instead of using the z passed in."""
    cid = "ddpm.reverse_step"
    x, e, zz, sched = BR.x(x_k, cid, "x_k"), BR.x(eps_hat, cid, "eps_hat"), BR.x(z, cid, "z"), _sched(betas, cid)
    for name, t in (("x_k", x), ("eps_hat", e), ("z", zz)):
        batch(t, cid, name)
    same_shape(cid, x_k=x, eps_hat=e, z=zz)
    kk = sched.steps(BR.k(k, cid), x.shape[0], cid)
    sigma = torch.where(kk.unsqueeze(-1) > 1, torch.sqrt(f_ddpm._sigma2(variance, sched, kk, cid)), 0.0)
    return BR.out(f_ddpm.reverse_mean(x, e, sched, kk) + sigma * torch.randn_like(x))


def _simple_loss_mean(eps: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike,
                      weighting: str = "simple", sigma2: str | ArrayLike | None = None) -> Any:
    """||eps - eps_hat||^2 taken as .mean(dim=1) (nn.MSELoss habit) where the clause sums over coordinates."""
    cid = "ddpm.simple_loss"
    e, eh, sched = BR.x(eps, cid, "eps"), BR.x(eps_hat, cid, "eps_hat"), _sched(betas, cid)
    s2 = sigma2 if sigma2 is None or isinstance(sigma2, str) else BR.x(sigma2, cid, "sigma2")
    d = e.shape[-1] if e.ndim == 2 else 1
    return BR.out(f_ddpm.simple_loss(e, eh, sched, BR.k(k, cid), weighting, s2) / d)


def _vlb_decoder_no_constant(x0: ArrayLike, eps_fn: Any, betas: ArrayLike, eps: ArrayLike,
                             variance: str = "beta") -> Any:
    """L_0 without its normalising constant d/2 log(2 pi beta_1) (dropped as "a constant")."""
    cid = "ddpm.vlb"
    x, sched = BR.x(x0, cid, "x0"), _sched(betas, cid)
    terms = f_ddpm.vlb(x, BR.net(eps_fn, cid, "eps_fn"), sched, BR.x(eps, cid, "eps"), variance)
    d = x.shape[1]
    decoder = terms[0] - 0.5 * d * torch.log(2.0 * torch.pi * sched.beta[1])
    return BR.out(torch.cat([decoder[None], terms[1:]], 0))


# ---- ddim ---------------------------------------------------------------------------------------


def _ddim_sigma_no_sqrt(betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float) -> Any:
    """DDIM Eq. 16 with the second square root forgotten: eta sqrt(...) (1 - ab_k / ab_prev)."""
    cid = "ddim.sigma"
    sched = _sched(betas, cid)
    e = f_ddim._eta(eta, cid)
    kt, kpt = BR.k(k, cid), BR.k(k_prev, cid, "k_prev")
    require(kt.ndim == 0 or kpt.ndim == 0 or kt.shape == kpt.shape, cid, "k and k_prev must have the same shape")
    shape = kt.shape if kt.ndim else kpt.shape
    kt, kpt = kt.expand(shape), kpt.expand(shape)
    kk, kp = f_ddim._steps(sched, kt.reshape(-1), kpt.reshape(-1), kt.numel(), cid)
    ab_k, ab_p = sched.alpha_bar[kk], sched.alpha_bar[kp]
    om_k, om_p = sched.one_minus_alpha_bar[kk], sched.one_minus_alpha_bar[kp]
    return BR.out((e * torch.sqrt(om_p / om_k) * (1.0 - ab_k / ab_p)).reshape(shape))


def _ddim_posterior_sigma_as_variance(x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike,
                                      k_prev: ArrayLike, sigma: ArrayLike) -> Any:
    """The variance returned as sigma (the standard deviation), not sigma^2."""
    cid = "ddim.posterior"
    mean, var = f_ddim.posterior(BR.x(x0, cid, "x0"), BR.x(x_k, cid, "x_k"), _sched(betas, cid), BR.k(k, cid),
                                 BR.k(k_prev, cid, "k_prev"), BR.x(sigma, cid, "sigma"))
    return BR.out(mean), BR.out(torch.sqrt(var))


def _ddim_step_randn_like(x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike,
                          eta: float, z: ArrayLike) -> Any:
    """sigma * torch.randn_like(x_k) instead of sigma * z."""
    cid = "ddim.step"
    x, eh, zz, sched = BR.x(x_k, cid, "x_k"), BR.x(eps_hat, cid, "eps_hat"), BR.x(z, cid, "z"), _sched(betas, cid)
    for name, t in (("x_k", x), ("eps_hat", eh), ("z", zz)):
        batch(t, cid, name)
    same_shape(cid, x_k=x, eps_hat=eh, z=zz)
    e = f_ddim._eta(eta, cid)
    kk, kp = f_ddim._steps(sched, BR.k(k, cid), BR.k(k_prev, cid, "k_prev"), x.shape[0], cid)
    ab_k, ab_prev = at(sched.alpha_bar, kk), at(sched.alpha_bar, kp)
    one_m_k, one_m_prev = at(sched.one_minus_alpha_bar, kk), at(sched.one_minus_alpha_bar, kp)
    sig = f_ddim._sigma(ab_k, ab_prev, one_m_k, one_m_prev, e)
    x0_hat = (x - at(sched.sqrt_one_minus_alpha_bar, kk) * eh) / at(sched.sqrt_alpha_bar, kk)
    direction = torch.sqrt(torch.clamp(one_m_prev - sig**2, min=0.0))
    return BR.out(at(sched.sqrt_alpha_bar, kp) * x0_hat + direction * eh + sig * torch.randn_like(x))


def _ddim_sample_noise_order(x_K: ArrayLike, eps_fn: Any, betas: ArrayLike, tau: ArrayLike, eta: float,
                             noises: ArrayLike) -> Any:
    """The loop (k descending) reads noises[i], the noise of tau[i] ascending: noises run in reverse order."""
    cid = "ddim.sample"
    sampler = f_ddim.DDIMSampler(_sched(betas, cid), np.asarray(tau).tolist(), eta)
    x, net, zs = BR.x(x_K, cid, "x_K"), BR.net(eps_fn, cid, "eps_fn"), BR.x(noises, cid, "noises")
    batch(x, cid, "x_K")
    B, d = x.shape
    S = len(sampler.tau)
    require(tuple(zs.shape) == (S, B, d), cid, f"noises must have shape {(S, B, d)}, got {tuple(zs.shape)}")
    for i, (_, c_x, c_eps, sig) in enumerate(sampler.coef):
        eps_hat = net(x, sampler.k_tensors[i].expand(B))
        x = torch.add(x * c_x, eps_hat, alpha=c_eps)
        if sig:
            x = torch.add(x, zs[i], alpha=sig)
    require_values(torch.isfinite(x), cid, "eps_fn returned non-finite values")
    return BR.out(x)


# ---- dpm_solver ---------------------------------------------------------------------------------


def _dpm_first_order_alpha_bar_ratio(x: ArrayLike, eps_hat: ArrayLike, ab_s: float, ab_t: float) -> Any:
    """x scaled by alpha_bar_t / alpha_bar_s (the cumulative products) instead of alpha_t / alpha_s."""
    cid = "dpm_solver.first_order"
    xx, e = BR.x(x, cid, "x"), BR.x(eps_hat, cid, "eps_hat")
    batch(xx, cid, "x")
    batch(e, cid, "eps_hat")
    same_shape(cid, x=xx, eps_hat=e)
    s, t = f_dpm._levels(ab_s, ab_t, cid)
    _, _, lam_s = f_dpm._asl(s)
    _, s_t, lam_t = f_dpm._asl(t)
    return BR.out(torch.add(xx * (t / s), e, alpha=-s_t * math.expm1(lam_t - lam_s)))


def _dpm_second_order_in_place(x: ArrayLike, eps_fn: Any, ab_s: float, ab_t: float, r: float = 0.5) -> Any:
    """The intermediate point u built in place on x (x.mul_().add_()), so the final update starts from u."""
    cid = "dpm_solver.second_order"
    xx, net = BR.x(x, cid, "x"), BR.net(eps_fn, cid, "eps_fn")
    batch(xx, cid, "x")
    s, t = f_dpm._levels(ab_s, ab_t, cid)
    r = scalar(r, cid, "r")
    require(0 < r <= 1, cid, f"r must lie in (0, 1], got {r!r}")
    a_s, _, lam_s = f_dpm._asl(s)
    a_t, s_t, lam_t = f_dpm._asl(t)
    h = lam_t - lam_s
    lam_u = lam_s + r * h
    ab_u = 1.0 / (1.0 + math.exp(-2.0 * lam_u))
    a_u, s_u = math.sqrt(ab_u), math.sqrt(1.0 / (1.0 + math.exp(2.0 * lam_u)))
    eps_s = f_dpm._eval(net, xx, s, cid)
    u = xx.mul_(a_u / a_s).add_(eps_s, alpha=-s_u * math.expm1(r * h))  # x is now u
    eps_u = f_dpm._eval(net, u, ab_u, cid)
    c = s_t * math.expm1(h)
    return BR.out(xx * (a_t / a_s) - (c * (1 - 1 / (2 * r))) * eps_s - (c / (2 * r)) * eps_u)


def _dpm_pp_2m_next_level(x_T: ArrayLike, eps_fn: Any, ab_grid: ArrayLike) -> Any:
    """The network at step i evaluated at the level it steps to, grid[i + 1], instead of grid[i]."""
    cid = "dpm_solver.pp_2m"
    x, net = BR.x(x_T, cid, "x_T"), BR.net(eps_fn, cid, "eps_fn")
    batch(x, cid, "x_T")
    g = BR.x64(ab_grid, cid, "ab_grid")
    require(g.ndim == 1 and g.numel() >= 2, cid, f"ab_grid must have shape (M+1,) with M >= 1, got {tuple(g.shape)}")
    grid = [float(v) for v in g.tolist()]
    require(all(0 < v < 1 for v in grid), cid, "every alpha_bar in ab_grid must lie in (0, 1)")
    solver = f_dpm.PP2M(grid, cid)
    return BR.out(solver(x, lambda y, i: f_dpm._eval(net, y, grid[min(i + 1, len(grid) - 1)], cid)))


# ---- gaussian -----------------------------------------------------------------------------------


def _reparam_randn_like(mu: ArrayLike, sigma: ArrayLike, eps: ArrayLike) -> Any:
    """z = mu + sigma * torch.randn_like(mu): the passed-in eps ignored (no pathwise reproducibility)."""
    cid = "gaussian.reparam"
    m, s, e = BR.x(mu, cid, "mu"), BR.x(sigma, cid, "sigma"), BR.x(eps, cid, "eps")
    for name, t in (("mu", m), ("sigma", s), ("eps", e)):
        batch(t, cid, name)
    same_shape(cid, mu=m, sigma=s, eps=e)
    require_values(s > 0, cid, "sigma (a standard deviation) must be > 0")
    return BR.out(torch.addcmul(m, s, torch.randn_like(m)))


def _kl_mean_over_coords(mu1: ArrayLike, var1: ArrayLike, mu2: ArrayLike, var2: ArrayLike) -> Any:
    """The per-coordinate KL reduced with .mean(dim=-1) instead of .sum(dim=-1)."""
    cid = "gaussian.kl"
    m1, v1, m2, v2 = (BR.x(a, cid, n) for a, n in ((mu1, "mu1"), (var1, "var1"), (mu2, "mu2"), (var2, "var2")))
    for name, t in (("mu1", m1), ("var1", v1), ("mu2", m2), ("var2", v2)):
        batch(t, cid, name)
    same_shape(cid, mu1=m1, var1=v1, mu2=m2, var2=v2)
    require_values((v1 > 0) & (v2 > 0), cid, "variances var1, var2 must be > 0")
    ratio = v1 / v2
    return BR.out(0.5 * torch.mean(ratio - 1.0 - torch.log(ratio) + (m1 - m2) ** 2 / v2, dim=-1))


def _kl_unchecked(mu1: ArrayLike, var1: ArrayLike, mu2: ArrayLike, var2: ArrayLike) -> Any:
    """The clause called inside fast.unchecked(): negative variances and NaN pass as values."""
    cid = "gaussian.kl"
    with unchecked():
        return BR.out(f_gaussian.kl(BR.x(mu1, cid, "mu1"), BR.x(var1, cid, "var1"), BR.x(mu2, cid, "mu2"),
                                    BR.x(var2, cid, "var2")))


# ---- guidance -----------------------------------------------------------------------------------


def _classifier_std(mean: ArrayLike, var: ArrayLike, grad_log_p: ArrayLike, s: float) -> Any:
    """The shift scaled by sqrt(var) (the standard deviation) instead of the covariance Sigma."""
    cid = "guidance.classifier"
    m, v, g = BR.x(mean, cid, "mean"), BR.x(var, cid, "var"), BR.x(grad_log_p, cid, "grad_log_p")
    batch(m, cid, "mean")
    batch(g, cid, "grad_log_p")
    same_shape(cid, mean=m, grad_log_p=g)
    B, d = m.shape
    require(tuple(v.shape) in ((B, 1), (B, d)), cid, f"var must have shape ({B}, 1) or ({B}, {d})")
    require_values(torch.isfinite(v) & (v >= 0), cid, "var is a (diagonal) covariance and must be finite and >= 0")
    return BR.out(torch.addcmul(m, torch.sqrt(v), g, value=scalar(s, cid, "s", 0.0)))


def _cfg_lerp_swapped(eps_uncond: ArrayLike, eps_cond: ArrayLike, omega: float) -> Any:
    """torch.lerp(eps_cond, eps_uncond, omega): start and end swapped."""
    cid = "guidance.cfg"
    u, c = BR.x(eps_uncond, cid, "eps_uncond"), BR.x(eps_cond, cid, "eps_cond")
    f_guidance._pair(u, c, cid)
    return BR.out(torch.lerp(c, u, scalar(omega, cid, "omega", 0.0)))


def _cfg_ho_salimans_w_as_omega(eps_uncond: ArrayLike, eps_cond: ArrayLike, w: float) -> Any:
    """Ho and Salimans' w passed to lerp as the decks' omega (omega = 1 + w forgotten)."""
    cid = "guidance.cfg_ho_salimans"
    u, c = BR.x(eps_uncond, cid, "eps_uncond"), BR.x(eps_cond, cid, "eps_cond")
    f_guidance._pair(u, c, cid)
    return BR.out(torch.lerp(u, c, scalar(w, cid, "w", -1.0)))


# ---- sde ----------------------------------------------------------------------------------------


def _sde_vp_g_is_beta(x: ArrayLike, t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> Any:
    """The diffusion coefficient returned as g^2 = beta(t), not g = sqrt(beta(t))."""
    cid = "sde.vp"
    xx, tt = BR.x(x, cid, "x"), BR.x(t, cid, "t")
    batch(xx, cid, "x")
    f_sde._time(tt, cid, xx.shape[0])
    f, g2 = f_sde._f_g2(xx, tt, *f_sde._range(beta_min, beta_max, cid))
    return BR.out(f), BR.out(g2)


def _vp_marginal_no_half(t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> Any:
    """exp(-int_0^t beta) with the integral of the linear part taken as (b1 - b0) t^2 (the 1/2 lost)."""
    cid = "sde.vp_marginal"
    tt = BR.x(t, cid, "t")
    f_sde._time(tt, cid)
    b0, b1 = f_sde._range(beta_min, beta_max, cid)
    return BR.out(torch.exp(-b0 * tt - (b1 - b0) * tt**2))


def _reverse_drift_sign(x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
                        beta_max: float = 20.0) -> Any:
    """f + g^2 score: the reverse drift's sign flipped."""
    cid = "sde.reverse_drift"
    return BR.out(f_sde._field(BR.x(x, cid, "x"), BR.x(t, cid, "t"), BR.x(score, cid, "score"), beta_min, beta_max,
                               cid, -1.0))


def _probability_flow_no_half(x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
                              beta_max: float = 20.0) -> Any:
    """f - g^2 score: the reverse SDE's drift used as the ODE's (the 1/2 lost)."""
    cid = "sde.probability_flow"
    return BR.out(f_sde._field(BR.x(x, cid, "x"), BR.x(t, cid, "t"), BR.x(score, cid, "score"), beta_min, beta_max,
                               cid, 1.0))


# ---- spectral -----------------------------------------------------------------------------------


def _transition_softmax(phi: ArrayLike, mu: ArrayLike) -> Any:
    """<phi, mu> treated as logits: softmax over next states instead of the inner product itself."""
    cid = "spectral.transition"
    f, m = f_spectral.features(BR.x(phi, cid, "phi"), BR.x(mu, cid, "mu"), cid)
    return BR.out(torch.softmax(f @ m.T, dim=1))


def _q_function_no_discount(r: ArrayLike, phi: ArrayLike, mu: ArrayLike, v: ArrayLike, gamma: float) -> Any:
    """gamma validated but never applied: Q = r + <phi, mu^T V>."""
    cid = "spectral.q_function"
    f, m = f_spectral.features(BR.x(phi, cid, "phi"), BR.x(mu, cid, "mu"), cid)
    rr = f_spectral.vector(BR.x(r, cid, "r"), f.shape[0], cid, "r")
    vv = f_spectral.vector(BR.x(v, cid, "v"), m.shape[0], cid, "v")
    f_spectral.discount(gamma, cid)
    return BR.out(rr + f @ (m.T @ vv))


# ---- elbo ---------------------------------------------------------------------------------------


def _elbo_logdet_half(x: ArrayLike, W: ArrayLike, b_: ArrayLike, s2: float, q_mean: ArrayLike,
                      q_cov: ArrayLike) -> Any:
    """log det from a Cholesky factor as sum(log diag L), without the factor 2 (det C = det(L)^2)."""
    cid = "elbo.identity"
    xx, WW, bb = BR.x(x, cid, "x"), BR.x(W, cid, "W"), BR.x(b_, cid, "b")
    qm, qc = BR.x(q_mean, cid, "q_mean"), BR.x(q_cov, cid, "q_cov")
    terms = f_elbo.identity(xx, WW, bb, s2, qm, qc)  # validates every input
    d, m = WW.shape
    noise = float(s2)
    L_C = torch.linalg.cholesky(WW @ WW.T + noise * torch.eye(d))
    white = torch.linalg.solve_triangular(L_C, (xx - bb).T, upper=False)
    half_logdet = torch.log(torch.diagonal(L_C)).sum()
    log_px = -0.5 * (d * math.log(2 * math.pi) + half_logdet + (white**2).sum(0))
    return type(terms)(BR.out(log_px), *(BR.out(t) for t in terms[1:]))


def _max_likelihood_unmasked_log_ratio(p_data: ArrayLike, p_theta: ArrayLike) -> Any:
    """KL as sum p log(p / q) without the p = 0 mask: 0 * log 0 = NaN where p_data has a zero."""
    cid = "elbo.max_likelihood"
    p, q = BR.x(p_data, cid, "p_data"), BR.x(p_theta, cid, "p_theta")
    terms = f_elbo.max_likelihood(p, q)  # validates the rows
    kl = (p * torch.log(p / q)).sum(-1)
    return type(terms)(BR.out(kl), BR.out(terms.cross_entropy), BR.out(terms.entropy))


# ---- edp ----------------------------------------------------------------------------------------


def _action_approx_prev(a_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    """a0_hat with alpha_bar_{k-1} (alphas_cumprod_prev) where alpha_bar_k belongs."""
    cid = "edp.action_approx"
    a, e, sched = BR.x(a_k, cid, "a_k"), BR.x(eps_hat, cid, "eps_hat"), _sched(betas, cid)
    batch(a, cid, "a_k")
    batch(e, cid, "eps_hat")
    same_shape(cid, a_k=a, eps_hat=e)
    kk = sched.steps(BR.k(k, cid), a.shape[0], cid)
    return BR.out((a - at(sched.sqrt_one_minus_alpha_bar, kk - 1) * e) / at(sched.sqrt_alpha_bar, kk - 1))


def _weighted_elbo_no_alpha(a: ArrayLike, s: ArrayLike, eps_fn: Any, betas: ArrayLike, k: ArrayLike,
                            eps: ArrayLike) -> Any:
    """EDP's weight as beta_k / (2 (1 - alpha_bar_k)): the alpha_k = 1 - beta_k of the denominator dropped."""
    cid = "edp.weighted_elbo"
    sched = _sched(betas, cid)
    e, e_hat, kk = f_dql.noise_prediction(BR.x(a, cid, "a"), BR.x(s, cid, "s"), BR.net(eps_fn, cid, "eps_fn"),
                                          sched, BR.k(k, cid), BR.x(eps, cid, "eps"), cid)
    w = at(sched.beta, kk)[:, 0] / (2.0 * at(sched.one_minus_alpha_bar, kk)[:, 0])
    return BR.out(w * torch.sum((e - e_hat) ** 2, dim=1))


def _weights_awr_times_temperature(q: ArrayLike, v: ArrayLike, kind: str, temperature: float,
                                   w_max: float | None = None) -> Any:
    """AWR/CRR's exp(A / T) computed as exp(A * T) (IQL's convention applied to every kind)."""
    cid = "edp.weights"
    qq, vv = BR.x(q, cid, "q"), BR.x(v, cid, "v")
    f_edp.weights(qq, vv, kind, temperature, w_max)  # validates
    t = float(temperature)
    cap = f_edp._w_max(kind, w_max, cid)
    adv = qq - vv
    if kind == "crr_binary":
        return BR.out((adv > 0).to(qq.dtype))
    return BR.out(torch.exp((adv * t).clamp(max=math.log(cap) + 1.0)).clamp(max=cap))


def _policy_objective_sign(a: ArrayLike, s: ArrayLike, eps_fn: Any, betas: ArrayLike, k: ArrayLike,
                           eps: ArrayLike, f: ArrayLike) -> Any:
    """J = f * weighted_elbo: the ELBO loss used as log pi without its minus sign."""
    cid = "edp.policy_objective"
    j = f_edp.policy_objective(BR.x(a, cid, "a"), BR.x(s, cid, "s"), BR.net(eps_fn, cid, "eps_fn"),
                               _sched(betas, cid), BR.k(k, cid), BR.x(eps, cid, "eps"), BR.x(f, cid, "f"))
    return BR.out(-j)



def _expectile_loss_no_abs(q: ArrayLike, v: ArrayLike, tau: float) -> Any:
    """(tau - (u < 0).float()) * u**2: the absolute value of |tau - 1(u < 0)| left out (negative where Q < V)."""
    cid = "edp.expectile_loss"
    qq, vv = BR.x(q, cid, "q"), BR.x(v, cid, "v")
    f_edp.expectile_loss(qq, vv, tau)  # validates
    u = qq - vv
    return BR.out((float(tau) - (u < 0).to(u.dtype)) * u**2)


def _expectile_loss_weight_squared(q: ArrayLike, v: ArrayLike, tau: float) -> Any:
    """(weight * diff) ** 2: the weight inside the square, so tau^2 and (1 - tau)^2 weigh the residuals."""
    cid = "edp.expectile_loss"
    qq, vv = BR.x(q, cid, "q"), BR.x(v, cid, "v")
    f_edp.expectile_loss(qq, vv, tau)  # validates
    u = qq - vv
    w = torch.where(u < 0, torch.full_like(u, 1.0 - float(tau)), torch.full_like(u, float(tau)))
    return BR.out((w * u) ** 2)


def _iql_q_target_value_column(r: ArrayLike, done: ArrayLike, v_next: ArrayLike, gamma: float) -> Any:
    """V(s') kept as the value network's (B, 1) output: r + gamma (1 - d) V broadcasts to a (B, B) matrix."""
    cid = "edp.iql_q_target"
    rr, dd_, vn = BR.x(r, cid, "r"), BR.x(done, cid, "done"), BR.x(v_next, cid, "v_next")
    f_edp.iql_q_target(rr, dd_, vn, gamma)  # validates
    return BR.out(rr + float(gamma) * (1.0 - dd_) * vn.unsqueeze(-1))


def _iql_q_target_no_done(r: ArrayLike, done: ArrayLike, v_next: ArrayLike, gamma: float) -> Any:
    """done validated, then never applied: the bootstrap runs through terminal states."""
    cid = "edp.iql_q_target"
    rr, dd_, vn = BR.x(r, cid, "r"), BR.x(done, cid, "done"), BR.x(v_next, cid, "v_next")
    f_edp.iql_q_target(rr, dd_, vn, gamma)  # validates
    return BR.out(rr + float(gamma) * vn)


# ---- diffusion_ql -------------------------------------------------------------------------------


def _bc_loss_mean(a: ArrayLike, s: ArrayLike, eps_fn: Any, betas: ArrayLike, k: ArrayLike, eps: ArrayLike) -> Any:
    """L_d reduced with nnf.mse_loss(reduction='none').mean(dim=1): a mean over action coordinates."""
    cid = "diffusion_ql.bc_loss"
    e, e_hat, _ = f_dql.noise_prediction(BR.x(a, cid, "a"), BR.x(s, cid, "s"), BR.net(eps_fn, cid, "eps_fn"),
                                         _sched(betas, cid), BR.k(k, cid), BR.x(eps, cid, "eps"), cid)
    return BR.out(nnf.mse_loss(e_hat, e, reduction="none").mean(dim=1))


def _sample_action_no_clip_denoised(s: ArrayLike, eps_fn: Any, betas: ArrayLike, a_K: ArrayLike,
                                    noises: ArrayLike, max_action: float | None = 1.0,
                                    variance: str = "beta_tilde") -> Any:
    """The chain built without clip (plain reverse steps); only the final action is clamped."""
    cid = "diffusion_ql.sample_action"
    sampler = f_dql.ActionSampler(_sched(betas, cid), max_action, variance)
    sampler.chain = f_ddpm.AncestralSampler(sampler.chain.sched, variance, clip=None)
    return BR.out(sampler(BR.x(s, cid, "s"), BR.net(eps_fn, cid, "eps_fn"), BR.x(a_K, cid, "a_K"),
                          BR.x(noises, cid, "noises")))


def _q_loss_signed_normaliser(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> Any:
    """The normaliser q_norm.mean() without .abs(): E[Q'] instead of E|Q'| (flips sign with the critic's)."""
    cid = "diffusion_ql.q_loss"
    qq, qn = BR.x(q, cid, "q"), BR.x(q_norm, cid, "q_norm")
    f_dql.q_loss(qq, qn, eta)  # validates
    return BR.out(-(float(eta) / qn.detach().mean()) * qq)


def _q_loss_grad_norm_attached(q: ArrayLike, q_norm: ArrayLike, eta: float = 1.0) -> Any:
    """The normaliser E|Q'| not detached: the gradient flows into q_norm (a stop-gradient missing)."""
    cid = "diffusion_ql.q_loss_grad"
    qq, qn = BR.x(q, cid, "q"), BR.x(q_norm, cid, "q_norm")
    f_dql.q_loss_grad(qq, qn, eta)  # validates
    q_leaf, qn_leaf = qq.detach().requires_grad_(True), qn.detach().requires_grad_(True)
    with torch.enable_grad():
        mean_loss = (-(float(eta) / qn_leaf.abs().mean()) * q_leaf).mean()
        g_q, g_qn = torch.autograd.grad(mean_loss, (q_leaf, qn_leaf))
    return BR.out(g_q), BR.out(g_qn)


def _dql_loss_q_at_data_action(a: ArrayLike, s: ArrayLike, eps_fn: Any, betas: ArrayLike, k: ArrayLike,
                               eps: ArrayLike, a_K: ArrayLike, noises: ArrayLike, q_fn: Any, q_norm_fn: Any,
                               eta: float = 1.0, max_action: float | None = 1.0, variance: str = "beta_tilde") -> Any:
    """The Q term evaluated at the dataset action a instead of the policy's sample a^0."""
    cid = "diffusion_ql.loss"
    sched = _sched(betas, cid)
    aa, ss, net = BR.x(a, cid, "a"), BR.x(s, cid, "s"), BR.net(eps_fn, cid, "eps_fn")
    f_dql.loss(aa, ss, net, sched, BR.k(k, cid), BR.x(eps, cid, "eps"), BR.x(a_K, cid, "a_K"),
               BR.x(noises, cid, "noises"), BR.net(q_fn, cid, "q_fn"), BR.net(q_norm_fn, cid, "q_norm_fn"),
               eta, max_action, variance)  # validates everything
    l_d = f_dql.bc_loss(aa, ss, net, sched, BR.k(k, cid), BR.x(eps, cid, "eps"))
    q = BR.net(q_fn, cid, "q_fn")(ss, aa)
    q_norm = BR.net(q_norm_fn, cid, "q_norm_fn")(ss, aa)
    return BR.out(l_d - (float(eta) / q_norm.abs().mean()) * q)


# ---- decision_diffuser --------------------------------------------------------------------------


def _state_trajectory_off_by_one(states: ArrayLike, t: int, H: int) -> Any:
    """The window starts at s_{t+1} (states[:, t + 1 : t + 1 + H]); clamped so the last window still runs."""
    cid = "decision_diffuser.state_trajectory"
    x = BR.x(states, cid, "states")
    f_dd.state_trajectory(x, t, H)  # validates
    start = min(int(t) + 1, x.shape[1] - int(H))
    return BR.out(x.narrow(1, start, int(H)))


def _cfg_eps_chunk_layout(x_k: Tensor, k: int | Tensor, y: Tensor, eps_fn: f_dd.CondEpsFn, omega: float,
                          y_null: Tensor | None, clause: str) -> Tensor:
    """The 2B-row output split with reshape(B, 2, -1) (rows interleaved) instead of reshape(2, B, -1)."""
    B = x_k.shape[0]
    kk = f_dd.steps(k, B, x_k.device, clause)
    c, empty = f_dd._conditions(y, y_null, B, clause)
    w = scalar(omega, clause, "omega", 0.0)
    both = f_dd._network(eps_fn, torch.cat([x_k, x_k]), torch.cat([kk, kk]), torch.cat([empty, c]), clause)
    eps_uncond, eps_cond = both.reshape(B, 2, -1).unbind(1)
    return f_guidance.cfg(eps_uncond, eps_cond, w).reshape(x_k.shape)


def _dd_guided_eps_chunk_layout(x_k: ArrayLike, k: ArrayLike, y: ArrayLike, eps_fn: Any, omega: float,
                                y_null: ArrayLike | None = None) -> Any:
    cid = "decision_diffuser.guided_eps"
    x = f_dd._states(BR.x(x_k, cid, "x_k"), cid, "x_k")
    return BR.out(_cfg_eps_chunk_layout(x, BR.k(k, cid), BR.x(y, cid, "y"), BR.net(eps_fn, cid, "eps_fn"), omega,
                                        BR.opt(y_null, cid, "y_null"), cid))


def _inverse_dynamics_swapped(x: ArrayLike, inv_fn: Any) -> Any:
    """f_phi(s_{t+1}, s_t): the model's two arguments swapped."""
    cid = "decision_diffuser.inverse_dynamics"
    xx, fn = BR.x(x, cid, "x"), BR.net(inv_fn, cid, "inv_fn")
    return BR.out(f_dd.inverse_dynamics(xx, lambda s_t, s_next: fn(s_next, s_t)))


def _inverse_dynamics_loss_mean(states: ArrayLike, actions: ArrayLike, next_states: ArrayLike, inv_fn: Any) -> Any:
    """nnf.mse_loss over the action coordinates (a mean) where the clause sums them."""
    cid = "decision_diffuser.inverse_dynamics_loss"
    s, a, s2 = BR.x(states, cid, "states"), BR.x(actions, cid, "actions"), BR.x(next_states, cid, "next_states")
    fn = BR.net(inv_fn, cid, "inv_fn")
    f_dd.inverse_dynamics_loss(s, a, s2, fn)  # validates
    return BR.out(nnf.mse_loss(fn(s, s2), a, reduction="none").mean(dim=1))


def _dropout_loss_inverted(x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike, y: ArrayLike,
                           b_drop: ArrayLike, eps_fn: Any, y_null: ArrayLike | None = None) -> Any:
    """torch.where(b, y, empty): b = 1 keeps the condition (the keep mask read as the drop mask)."""
    cid = "decision_diffuser.dropout_loss"
    bb = BR.x(b_drop, cid, "b")
    return BR.out(f_dd.dropout_loss(BR.x(x0, cid, "x0"), BR.x(eps, cid, "eps"), _sched(betas, cid), BR.k(k, cid),
                                    BR.x(y, cid, "y"), 1.0 - bb, BR.net(eps_fn, cid, "eps_fn"),
                                    BR.opt(y_null, cid, "y_null")))


# ---- madiff -------------------------------------------------------------------------------------


def _madiff_guided_eps_chunk_layout(x_k: ArrayLike, k: ArrayLike, y: ArrayLike, eps_fn: Any, omega: float,
                                    y_null: ArrayLike | None = None) -> Any:
    cid = "madiff.guided_eps"
    x = f_madiff._joint(BR.x(x_k, cid, "x_k"), cid, "x_k")
    return BR.out(_cfg_eps_chunk_layout(x, BR.k(k, cid), BR.x(y, cid, "y"), BR.net(eps_fn, cid, "eps_fn"), omega,
                                        BR.opt(y_null, cid, "y_null"), cid))


def _madiff_inverse_dynamics_first_model(x: ArrayLike, inv_fns: Any) -> Any:
    """Per-agent models given: every agent's actions come from models[0]."""
    cid = "madiff.inverse_dynamics"
    models = BR.net(inv_fns, cid, "inv_fn") if callable(inv_fns) else [
        BR.net(f, cid, "inv_fn") if callable(f) else f for f in inv_fns]
    xx = BR.x(x, cid, "x")
    out = f_madiff.inverse_dynamics(xx, models)  # validates
    if callable(models):
        return BR.out(out)
    return BR.out(f_madiff.inverse_dynamics(xx, [models[0]] * len(models)))


def _decentralised_action_agent_axis(x0: ArrayLike, i: int, inv_fn: Any, t: int = 0) -> Any:
    """Agent 0's slice x0[:, 0] read whatever i is: the agent index dropped."""
    cid = "madiff.decentralised_action"
    xx, fn = BR.x(x0, cid, "x0"), BR.net(inv_fn, cid, "inv_fn")
    f_madiff.decentralised_action(xx, i, fn, t)  # validates
    step = integer(t, cid, "t")
    own = xx[:, 0, step:step + 2]
    return BR.out(f_dd.inverse_dynamics(own, fn, clause=cid)[:, 0])


# ---- qmix ---------------------------------------------------------------------------------------


def _mixer_no_abs_w1(q: ArrayLike, s: ArrayLike, hyper: Any) -> Any:
    """abs() applied to w_2 only: the first layer's weights W_1(s) stay signed (monotonicity lost)."""
    cid = "qmix.mixer"
    qq, ss = BR.x(q, cid, "q"), BR.x(s, cid, "s")
    batch(qq, cid, "q")
    B, N = qq.shape
    require(ss.ndim == 2 and ss.shape[0] == B, cid, f"s must have shape ({B}, ds)")
    w = f_qmix.mixing_weights(ss, bridge_qmix._hyper(BR, hyper, cid), N, cid)
    hidden = nnf.elu(torch.einsum("bn,bnh->bh", qq, w.w1) + w.b1)
    return BR.out(torch.einsum("bh,bh->b", hidden, w.w2.abs()) + w.v[:, 0])


def _greedy_masked_zero(q_values: ArrayLike, avail: ArrayLike | None = None) -> Any:
    """Unavailable actions masked with 0 (q * mask) instead of -inf: they win where every Q is negative."""
    cid = "qmix.greedy_actions"
    q, mask = f_qmix._utilities(BR.x(q_values, cid, "q_values"), bridge_qmix._mask(BR, avail, cid), cid)
    return BR.out(torch.argmax(q * mask, dim=2))


def _igm_single_argmax(q_values: ArrayLike, q_tot: ArrayLike, avail: ArrayLike | None = None,
                       atol: float = 0.0) -> Any:
    """The individual side as the one-hot of torch.argmax per agent, not the set of all maximisers (ties lost)."""
    cid = "qmix.igm"
    qv, qt, m = BR.x(q_values, cid, "q_values"), BR.x(q_tot, cid, "q_tot"), bridge_qmix._mask(BR, avail, cid)
    f_qmix.igm(qv, qt, m, atol)  # validates
    q, mask = f_qmix._utilities(qv, m, cid)
    B, N, A = q.shape
    masked = q.masked_fill(~mask, -torch.inf)
    individual = f_qmix._outer(nnf.one_hot(masked.argmax(dim=2), A).bool())
    joint_avail = f_qmix._outer(mask)
    table = qt.masked_fill(~joint_avail, -torch.inf)
    top = table.reshape(B, -1).amax(dim=1).reshape((B,) + (1,) * N)
    joint = joint_avail & (top - table <= float(atol))
    return BR.out((joint == individual).reshape(B, -1).all(dim=1))


# ---- dof ----------------------------------------------------------------------------------------


def _noise_factorisation_interleaved(eps_agents: ArrayLike, mode: str = "concat",
                                     weights: ArrayLike | None = None) -> Any:
    """(B, N, d) flattened after .transpose(1, 2): coordinates interleaved across agents, not agent blocks."""
    cid = "dof.noise_factorisation"
    e = f_dof._agents(BR.x(eps_agents, cid, "eps_agents"), cid, "eps_agents")
    w = f_dof.agent_weights(mode, BR.opt(weights, cid, "weights"), e.shape[1], cid)
    parts = e if w is None else e * w.unsqueeze(-1)
    return BR.out(parts.transpose(1, 2).reshape(e.shape[0], -1))


def _data_factorisation_softmax_dim(x_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None,
                                    s: ArrayLike | None = None, hyper: Any = None) -> Any:
    """Atten's softmax over dim=-2 (columns) instead of dim=-1: the rows of w are not distributions."""
    cid = "dof.data_factorisation"
    x = BR.x(x_agents, cid, "x_agents")
    ww, ss = BR.opt(weights, cid, "weights"), BR.opt(s, cid, "s")
    hh = None if hyper is None else bridge_qmix._hyper(BR, hyper, cid)
    out = f_dof.data_factorisation(x, mode, ww, ss, hh)  # validates
    if mode != "atten" or ww is None:
        return BR.out(out)
    B, N, d = x.shape
    return BR.out(torch.matmul(torch.softmax(ww, dim=-2), x).reshape(B, N * d))


def _dof_train_step_split_without_weights(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Any],
                                          betas: ArrayLike, mode: str = "concat",
                                          weights: ArrayLike | None = None) -> Any:
    """f^{-1} as a plain reshape: agent i's network sees w_i x_i^k, not x_i^k (WConcat's division missing)."""
    cid = "dof.train_step"
    x0, kk_, e = BR.x(x0_tot, cid, "x0_tot"), BR.k(k, cid), BR.x(eps, cid, "eps")
    nets, sched, w_in = bridge_dof._nets(BR, eps_fns, cid), _sched(betas, cid), BR.opt(weights, cid, "weights")
    f_dof.train_step(x0, kk_, e, nets, sched, mode, w_in)  # validates
    B, N, d = e.shape
    kk = sched.steps(kk_, B, cid)
    w = f_dof.agent_weights(mode, w_in, N, cid)
    eps_tot = f_dof.factorise(e, w)
    x_k = f_ddpm.noise(x0, eps_tot, sched, kk)
    parts = x_k.reshape(B, N, d)
    eps_hat = f_dof.factorise(torch.stack([nets[i](parts[:, i], kk) for i in range(N)], 1), w)
    return BR.out(f_ddpm.simple_loss(eps_tot, eps_hat, sched, kk))


def _decentralised_sample_shared_net(x_K: ArrayLike, eps_fns: Sequence[Any], betas: ArrayLike, z: ArrayLike,
                                     variance: str = "beta") -> Any:
    """Every agent denoised with eps_fns[0] (parameter sharing assumed where the agents' networks differ)."""
    cid = "dof.decentralised_sample"
    nets = bridge_dof._nets(BR, eps_fns, cid)
    shared = [nets[0]] * len(nets) if nets and all(callable(f) for f in nets) else nets
    return BR.out(f_dof.decentralised_sample(BR.x(x_K, cid, "x_K"), shared, _sched(betas, cid), BR.x(z, cid, "z"),
                                             variance))


def _igd_noise_at_k1(x_tot_K: ArrayLike, eps_fns: Sequence[Any], betas: ArrayLike, z_tot: ArrayLike,
                     mode: str = "concat", weights: ArrayLike | None = None, variance: str = "beta") -> Any:
    """sigma_k z_tot^k added at every step, k = 1 included (sigma_1 not zeroed)."""
    cid = "dof.igd"
    x, nets, sched = BR.x(x_tot_K, cid, "x_tot_K"), bridge_dof._nets(BR, eps_fns, cid), _sched(betas, cid)
    zz, w_in = BR.x(z_tot, cid, "z_tot"), BR.opt(weights, cid, "weights")
    f_dof.igd(x, nets, sched, zz, mode, w_in, variance)  # validates
    B = x.shape[0]
    w = f_dof.agent_weights(mode, w_in, len(nets), cid)
    sigma = torch.sqrt(sched.beta if variance == "beta" else sched.beta_tilde)
    steps = torch.arange(sched.K + 1).unsqueeze(-1).expand(-1, B)
    for k in range(sched.K, 0, -1):
        eps_hat = f_dof.joint_eps(nets, x, steps[k], w, cid)
        x = torch.addcmul(f_ddpm.reverse_mean(x, eps_hat, sched, steps[k]), sigma[k], zz[k - 1])
    return BR.out(x)


def _dof_policy_loss_global_norm(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Any],
                                 betas: ArrayLike, q_new: ArrayLike, eta: float, mode: str = "concat",
                                 weights: ArrayLike | None = None, q_norm: ArrayLike | None = None) -> Any:
    """The normaliser q.abs().mean() over all agents at once, not per agent (.mean(dim=0))."""
    cid = "dof.policy_loss"
    x0, kk, e = BR.x(x0_tot, cid, "x0_tot"), BR.k(k, cid), BR.x(eps, cid, "eps")
    nets, sched, w_in = bridge_dof._nets(BR, eps_fns, cid), _sched(betas, cid), BR.opt(weights, cid, "weights")
    qn_in, qn_opt = BR.x(q_new, cid, "q_new"), BR.opt(q_norm, cid, "q_norm")
    f_dof.policy_loss(x0, kk, e, nets, sched, qn_in, eta, mode, w_in, qn_opt)  # validates
    bc = f_dof.train_step(x0, kk, e, nets, sched, mode, w_in)
    qn = qn_in if qn_opt is None else qn_opt
    return BR.out(bc - torch.sum(float(eta) / qn.detach().abs().mean() * qn_in, dim=1))


def _planner_loss_inverted_drop(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Any],
                                betas: ArrayLike, y: ArrayLike, drop: ArrayLike, mode: str = "concat",
                                weights: ArrayLike | None = None, empty: ArrayLike | None = None) -> Any:
    """torch.where(drop == 0, empty, y): the condition dropped where b = 0 and kept where b = 1."""
    cid = "dof.planner_loss"
    dd_ = BR.x(drop, cid, "drop")
    return BR.out(f_dof.planner_loss(BR.x(x0_tot, cid, "x0_tot"), BR.k(k, cid), BR.x(eps, cid, "eps"),
                                     bridge_dof._nets(BR, eps_fns, cid), _sched(betas, cid), BR.x(y, cid, "y"),
                                     1.0 - dd_, mode, BR.opt(weights, cid, "weights"), BR.opt(empty, cid, "empty")))


# ---- dom2 ---------------------------------------------------------------------------------------


def _cql_penalty_batch_mean(q_all: ArrayLike, a_idx: ArrayLike, y: ArrayLike, alpha: float) -> Any:
    """The CQL penalty reduced with .mean() over the batch (as in a scalar training loss) and added to every row."""
    cid = "dom2.cql_loss"
    q, idx, yy = BR.x(q_all, cid, "q_all"), torch.as_tensor(np.asarray(a_idx)), BR.x(y, cid, "y")
    f_dom2.cql_loss(q, idx, yy, alpha)  # validates
    q_data = q.gather(1, idx.to(torch.int64).unsqueeze(1)).squeeze(1)
    penalty = (torch.logsumexp(q, dim=1) - q_data).mean()
    return BR.out((q_data - yy) ** 2 + float(alpha) * penalty)


def _cqls_args(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike,
               alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The production tensors of dom2.cql_sampled's arguments, validated by the production function."""
    cid = "dom2.cql_sampled"
    qd, qs, lp, yy = (BR.x(q_data, cid, "q_data"), BR.x(q_samples, cid, "q_samples"), BR.x(log_p, cid, "log_p"),
                      BR.x(y, cid, "y"))
    f_dom2.cql_sampled(qd, qs, lp, yy, alpha)
    return qd, qs, lp, yy


def _cqls_penalty_batch_mean(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike,
                             alpha: float) -> Any:
    """The sampled CQL penalty reduced with .mean() over the batch and added to every row."""
    qd, qs, lp, yy = _cqls_args(q_data, q_samples, log_p, y, alpha)
    penalty = (torch.logsumexp(qs - lp, dim=1) - math.log(qs.shape[1]) - qd).mean()
    return BR.out((qd - yy) ** 2 + float(alpha) * penalty)


def _cqls_log_p_per_batch(q_data: ArrayLike, q_samples: ArrayLike, log_p: ArrayLike, y: ArrayLike,
                          alpha: float) -> Any:
    """The proposal's density taken from the first sample of each row (as for a uniform proposal) for all M."""
    qd, qs, lp, yy = _cqls_args(q_data, q_samples, log_p, y, alpha)
    return BR.out(f_dom2.cql_sampled(qd, qs, lp[:, :1].expand_as(qs), yy, alpha))


def _dom2_policy_loss_pooled_normaliser(agents: Sequence[Any], betas: ArrayLike, eta: float = 1.0,
                                        max_action: float | None = 1.0, variance: str = "beta_tilde") -> Any:
    """E|Q'| pooled over all agents' critics (torch.cat, one normaliser for the team), not each agent's own."""
    cid = "dom2.policy_loss"
    recs = [bridge_dom2._agent(BR, r, cid) for r in agents]
    sched = _sched(betas, cid)
    f_dom2.policy_loss(recs, sched, eta, max_action, variance)  # validates
    sampler = f_dql.ActionSampler(sched, max_action, variance, clause=cid)
    l_d, q, q_norm = [], [], []
    for ag in recs:
        l_d.append(f_dql._bc_loss(ag.action, ag.obs, ag.eps_fn, sched, ag.k, ag.eps, cid))
        a0 = sampler(ag.obs, ag.eps_fn, ag.a_K, ag.noises)
        q.append(f_dql._critic(ag.q_fn, ag.obs, a0, "q_fn", cid))
        q_norm.append(f_dql._critic(ag.q_norm_fn, ag.obs, a0, "q_norm_fn", cid))
    scale = torch.cat(q_norm).abs().mean()
    return BR.out(torch.stack([ld - (float(eta) / scale) * qj for ld, qj in zip(l_d, q, strict=True)]))


def _dom2_sample_to_x0(x_K: ArrayLike, eps_fn: Any, obs: ArrayLike, betas: ArrayLike, tau: ArrayLike) -> Any:
    """The chain always lands on x_0 (DDIMSampler's default) even when tau_0 > 0."""
    cid = "dom2.sample"
    sched = _sched(betas, cid)
    steps = f_dom2._tau(np.asarray(tau).tolist(), sched.K, cid)
    x, ob, net = BR.x(x_K, cid, "x_K"), BR.x(obs, cid, "obs"), BR.net(eps_fn, cid, "eps_fn")
    f_dom2.Solver(sched, steps)(x, net, ob)  # validates
    ddim_ = f_ddim.DDIMSampler(sched, steps[1:] if steps[0] == 0 else steps, eta=0.0)
    return BR.out(ddim_(x, f_dql.Conditioned(net, ob, cid, record=False)))


# ---- diffsr -------------------------------------------------------------------------------------


def _ebm_transition_softmax_dim0(psi: ArrayLike, nu: ArrayLike) -> Any:
    """Normalised over the batch of (s, a) (dim=0) instead of over next states (dim=1)."""
    cid = "diffsr.ebm_transition"
    p, n = BR.x(psi, cid, "psi"), BR.x(nu, cid, "nu")
    f_diffsr._pairwise(p, n, cid)
    energy = p @ n.T
    log_z = torch.logsumexp(energy, dim=0)
    return BR.out(torch.exp(energy - log_z)), BR.out(torch.logsumexp(energy, dim=1))


def _ebm_transition_unshifted(psi: ArrayLike, nu: ArrayLike) -> Any:
    """log Z as torch.log(torch.exp(E).sum(1)), no max shift: exp overflows float32 once an energy exceeds 88.7."""
    cid = "diffsr.ebm_transition"
    p, n = BR.x(psi, cid, "psi"), BR.x(nu, cid, "nu")
    f_diffsr._pairwise(p, n, cid)
    unnormalised = torch.exp(p @ n.T)
    z = unnormalised.sum(dim=1)
    return BR.out(unnormalised / z.unsqueeze(-1)), BR.out(torch.log(z))


def _ebm_identity_cdist(psi: ArrayLike, nu: ArrayLike) -> Any:
    """The kernel term as -torch.cdist(psi, nu) / 2: cdist is the distance, its square forgotten."""
    cid = "diffsr.ebm_identity"
    p, n = BR.x(psi, cid, "psi"), BR.x(nu, cid, "nu")
    f_diffsr._pairwise(p, n, cid)
    return BR.out(0.5 * torch.sum(p**2, dim=1)), BR.out(-0.5 * torch.cdist(p, n)), BR.out(0.5 * torch.sum(n**2, dim=1))


def _rff_phased_scale(psi: ArrayLike, nu: ArrayLike, log_z: ArrayLike, omegas: ArrayLike,
                      phases: ArrayLike | None = None) -> Any:
    """Both feature maps scaled by 1/sqrt(D) (the paired normalisation) where the phased one needs sqrt(2/D)."""
    cid = "diffsr.rff"
    p, n, lz, om = BR.x(psi, cid, "psi"), BR.x(nu, cid, "nu"), BR.x(log_z, cid, "log_z"), BR.x(omegas, cid, "omegas")
    ph = BR.opt(phases, cid, "phases")
    phi, mu = f_diffsr.rff(p, n, lz, om, ph)  # validates
    if ph is None:
        return BR.out(phi), BR.out(mu)
    return BR.out(phi / math.sqrt(2.0)), BR.out(mu / math.sqrt(2.0))


def _perturbed_transition_mean_scale(s_tilde: ArrayLike, means: ArrayLike, weights: ArrayLike, cov: ArrayLike,
                                     beta: ArrayLike) -> Any:
    """The mixture means shrunk by (1 - beta) instead of sqrt(1 - beta) (variance and scale confused)."""
    cid = "diffsr.perturbed_transition"
    st_ = BR.x(s_tilde, cid, "s_tilde")
    m_in, w_in, c_in = BR.x(means, cid, "means"), BR.x(weights, cid, "weights"), BR.x(cov, cid, "cov")
    b_in = beta if isinstance(beta, (int, float)) else BR.x(beta, cid, "beta")
    f_diffsr.perturbed_transition(st_, m_in, w_in, c_in, b_in)  # validates
    B, ds = st_.shape
    w, m, sigma = f_diffsr._mixture(w_in, m_in, c_in, B, ds, cid)
    b = f_diffsr._beta(b_in, B, st_, cid).unsqueeze(-1)
    L = torch.linalg.cholesky((1.0 - b) * sigma + b * torch.eye(ds))
    diff = st_.unsqueeze(1) - (1.0 - b) * m
    white = torch.linalg.solve_triangular(L.unsqueeze(1), diff.unsqueeze(-1), upper=False).squeeze(-1)
    log_det = 2.0 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(dim=1)
    log_norm = 0.5 * (log_det + ds * math.log(2 * math.pi)).unsqueeze(-1)
    log_comp = torch.log(w) - 0.5 * torch.sum(white**2, dim=2) - log_norm
    log_p = torch.logsumexp(log_comp, dim=1)
    post = torch.exp(log_comp - log_p.unsqueeze(-1))
    resid = st_ - (1.0 - b[:, :, 0]) * torch.einsum("bn,bnd->bd", post, m)
    return BR.out(log_p), BR.out(-torch.cholesky_solve(resid.unsqueeze(-1), L).squeeze(-1))


def _score_objective_target_sign(psi: ArrayLike, grad_nu: ArrayLike, s_tilde: ArrayLike, s_next: ArrayLike,
                                 beta: ArrayLike) -> Any:
    """||score - (s~' - sqrt(1 - beta) s') / beta||^2: the denoising target's sign flipped."""
    cid = "diffsr.score_objective"
    p, g = BR.x(psi, cid, "psi"), BR.x(grad_nu, cid, "grad_nu")
    st_, sn = BR.x(s_tilde, cid, "s_tilde"), BR.x(s_next, cid, "s_next")
    b_in = beta if isinstance(beta, (int, float)) else BR.x(beta, cid, "beta")
    f_diffsr.score_objective(p, g, st_, sn, b_in)  # validates
    b = f_diffsr._beta(b_in, p.shape[0], st_, cid)
    return BR.out(f_diffsr._dsm(-f_diffsr.model_score(p, g), st_, sn, torch.sqrt(1.0 - b), b))


def _train_step_beta_k(psi_fn: Any, grad_nu_fn: Any, s: ArrayLike, a: ArrayLike, s_next: ArrayLike,
                       eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> Any:
    """The noise level beta^k read from the per-step table beta_k instead of 1 - alpha_bar_k."""
    cid = "diffsr.train_step"
    pf, gf = BR.net(psi_fn, cid, "psi_fn"), BR.net(grad_nu_fn, cid, "grad_nu_fn")
    ss, aa, sn, e = BR.x(s, cid, "s"), BR.x(a, cid, "a"), BR.x(s_next, cid, "s_next"), BR.x(eps, cid, "eps")
    sched, kk_ = _sched(betas, cid), BR.k(k, cid)
    f_diffsr.train_step(pf, gf, ss, aa, sn, e, sched, kk_)  # validates
    kk = sched.steps(kk_, sn.shape[0], cid)
    s_tilde = f_ddpm.noise(sn, e, sched, kk)
    level = at(sched.beta, kk)
    psi = pf(ss, aa)
    grad_nu = gf(s_tilde, level[:, 0])
    return float(BR.out(f_diffsr._dsm(f_diffsr.model_score(psi, grad_nu), s_tilde, sn, torch.sqrt(1.0 - level),
                                      level).mean()))


def _critic_fast(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float, hidden_w: ArrayLike | None,
                 hidden_b: ArrayLike | None, out_w: ArrayLike,
                 out_b: ArrayLike) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor, Tensor]:
    """The bridge's tensors, validated by the production critic (its output is discarded)."""
    cid = "diffsr.critic"
    t = (BR.x(psi, cid, "psi"), BR.x(omegas, cid, "omegas"), BR.x(phases, cid, "phases"))
    hw, hb = BR.opt(hidden_w, cid, "hidden_w"), BR.opt(hidden_b, cid, "hidden_b")
    ow, ob = BR.x(out_w, cid, "out_w"), BR.x(out_b, cid, "out_b")
    f_diffsr.critic(*t, amplitude, hw, hb, ow, ob)  # validates
    return (*t, hw, hb, ow, ob)


def _critic_relu(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float, hidden_w: ArrayLike | None,
                 hidden_b: ArrayLike | None, out_w: ArrayLike, out_b: ArrayLike) -> Any:
    """nn.ReLU in the head where the critic has nn.ELU (the activation of the psi network and the actor)."""
    p, om, ph, hw, hb, ow, ob = _critic_fast(psi, omegas, phases, amplitude, hidden_w, hidden_b, out_w, out_b)
    qs = []
    for i in range(om.shape[0]):
        h = amplitude * torch.cos(p @ om[i].T + ph[i])
        if hw is not None and hb is not None:
            h = nnf.relu(nnf.linear(h, hw[i], hb[i]))
        qs.append(nnf.linear(h, ow[i].unsqueeze(0), ob[i].unsqueeze(0)).squeeze(-1))
    return BR.out(torch.stack(qs))


def _critic_amplitude_squared(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float,
                              hidden_w: ArrayLike | None, hidden_b: ArrayLike | None, out_w: ArrayLike,
                              out_b: ArrayLike) -> Any:
    """The amplitude applied twice (A = sqrt(2/D) as a variance-style factor 2/D): A^2 cos(omega psi + b)."""
    p, om, ph, hw, hb, ow, ob = _critic_fast(psi, omegas, phases, amplitude, hidden_w, hidden_b, out_w, out_b)
    return BR.out(f_diffsr.critic(p, om, ph, amplitude**2, hw, hb, ow, ob))


def _critic_first_frequencies(psi: ArrayLike, omegas: ArrayLike, phases: ArrayLike, amplitude: float,
                              hidden_w: ArrayLike | None, hidden_b: ArrayLike | None, out_w: ArrayLike,
                              out_b: ArrayLike) -> Any:
    """omegas[0] and phases[0] for every critic: the features of the first critic shared by all of them."""
    p, om, ph, hw, hb, ow, ob = _critic_fast(psi, omegas, phases, amplitude, hidden_w, hidden_b, out_w, out_b)
    return BR.out(f_diffsr.critic(p, om[:1].expand_as(om), ph[:1].expand_as(ph), amplitude, hw, hb, ow, ob))


def _td_target_no_done(r: ArrayLike, done: ArrayLike, q_next: ArrayLike, gamma: float, alpha: float = 0.0,
                       log_pi_next: ArrayLike | None = None) -> Any:
    """The bootstrap never masked: done validated, then dropped (y = r + gamma soft-min Q at terminal states)."""
    cid = "diffsr.td_target"
    rr, dd_, q = BR.x(r, cid, "r"), BR.x(done, cid, "done"), BR.x(q_next, cid, "q_next")
    lp = BR.opt(log_pi_next, cid, "log_pi_next")
    f_diffsr.td_target(rr, dd_, q, gamma, alpha, lp)  # validates
    return BR.out(rr + float(gamma) * f_diffsr._soft_min(q, alpha, lp, cid, "log_pi_next"))


def _critic_loss_mean(q: ArrayLike, y: ArrayLike) -> Any:
    """((Q_i - y)^2).mean(dim=0): the critics' losses averaged where the clause sums them."""
    cid = "diffsr.critic_loss"
    qq, yy = BR.x(q, cid, "q"), BR.x(y, cid, "y")
    f_diffsr.critic_loss(qq, yy)  # validates
    return BR.out(torch.mean((qq - yy.detach()) ** 2, dim=0))


def _policy_objective_amax(q: ArrayLike, alpha: float = 0.0, log_pi: ArrayLike | None = None) -> Any:
    """torch.amax over the critics where the clipped double-Q takes torch.amin."""
    cid = "diffsr.policy_objective"
    qq, lp = BR.x(q, cid, "q"), BR.opt(log_pi, cid, "log_pi")
    j = f_diffsr.policy_objective(qq, alpha, lp)  # validates
    return BR.out(j - torch.amin(qq, dim=0) + torch.amax(qq, dim=0))


# ---- diffuser -----------------------------------------------------------------------------------


def _trajectory_actions_first(states: ArrayLike, actions: ArrayLike) -> Any:
    """torch.cat([actions, states], dim=2): column t holds a_t before s_t."""
    cid = "diffuser.trajectory"
    s, a = BR.x(states, cid, "states"), BR.x(actions, cid, "actions")
    f_diffuser.trajectory(s, a)  # validates
    return BR.out(torch.cat([a, s], dim=2))


def _split_trajectory_chunk(tau: ArrayLike, state_dim: int) -> Any:
    """tau.chunk(2, dim=-1): the split assumes ds = da and ignores state_dim."""
    cid = "diffuser.split_trajectory"
    t = BR.x(tau, cid, "tau")
    f_diffuser.split_trajectory(t, state_dim)  # validates
    s_part, a_part = t.chunk(2, dim=-1)
    return BR.out(s_part), BR.out(a_part)


def _inpaint_where_swapped(tau: ArrayLike, mask: ArrayLike, values: ArrayLike) -> Any:
    """torch.where(mask, tau, values): the plan kept where the mask is set, the values everywhere else."""
    cid = "diffuser.inpaint"
    t, v = BR.x(tau, cid, "tau"), BR.x(values, cid, "values")
    m = bridge_diffuser._mask(BR, mask)
    f_diffuser.inpaint(t, m, v)  # validates
    return BR.out(torch.where(m, t, v))


def _guided_step_grad_at_tau(tau_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                             grad_J: Any = None, scale: float = 1.0, variance: str = "beta") -> Any:
    """grad J evaluated at the current plan tau^k instead of at the reverse mean mu."""
    cid = "diffuser.guided_step"
    t, e, zz, sched = BR.x(tau_k, cid, "tau_k"), BR.x(eps_hat, cid, "eps_hat"), BR.x(z, cid, "z"), _sched(betas, cid)
    g_fn = bridge_diffuser._grad(BR, grad_J, cid)
    f_diffuser.guided_step(t, e, sched, BR.k(k, cid), zz, g_fn, scale, variance)  # validates
    B = t.shape[0]
    kk = sched.steps(BR.k(k, cid), B, cid)
    Sigma = f_diffuser._transition_variance(sched, kk, variance)
    mu = f_ddpm.reverse_mean(t.reshape(B, -1), e.reshape(B, -1), sched, kk)
    if g_fn is not None:
        mu = f_guidance.classifier(mu, Sigma, g_fn(t).reshape(B, -1), scale)
    return BR.out(torch.addcmul(mu, torch.sqrt(Sigma), zz.reshape(B, -1)).reshape(t.shape))


def _sample_chain_aliased(tau_K: ArrayLike, eps_fn: Any, betas: ArrayLike, z: ArrayLike, grad_J: Any = None,
                          scale: float = 1.0, mask: ArrayLike | None = None, values: ArrayLike | None = None,
                          variance: str = "beta") -> Any:
    """The loop updates x in place (x.mul_().add_()) after appending it to the chain: every entry aliases x."""
    cid = "diffuser.sample"
    t0, net, zz, sched = BR.x(tau_K, cid, "tau_K"), BR.net(eps_fn, cid, "eps_fn"), BR.x(z, cid, "z"), _sched(betas, cid)
    g_fn = bridge_diffuser._grad(BR, grad_J, cid)
    m = None if mask is None else bridge_diffuser._mask(BR, mask)
    v = BR.opt(values, cid, "values")
    sampler = f_diffuser.GuidedSampler(sched, variance, scale)
    sampler(t0, net, zz, g_fn, m, v)  # validates
    B = t0.shape[0]

    def constrain(x: Tensor) -> Tensor:
        if m is None or v is None:
            return x
        return x.masked_scatter_(m.expand_as(x), v[m.expand_as(x)]) if m.shape == x.shape else x.copy_(
            torch.where(m, v, x))

    x = constrain(t0.clone())
    chain = [x]
    for k, a, c, sigma in sampler.coef:
        eps_hat = net(x, torch.full((B,), k))
        x.mul_(a).add_(eps_hat, alpha=-c)
        if sigma:
            if g_fn is not None and sampler.scale > 0:
                x.add_(g_fn(x), alpha=sampler.scale * sigma * sigma)
            x.add_(zz[k - 1], alpha=sigma)
        constrain(x)
        chain.append(x)
    return BR.out(torch.stack(chain[::-1]))


MUTANTS = [
    # schedule
    Mutant("fast_schedule_alpha_bar_no_leading_one", "schedule.alpha_bar",
           ("boundary", "ratio", "matches_reference"),
           "torch.cumprod(1 - betas) without alpha_bar_0 = 1 prepended: entry k holds alpha_bar_{k+1}",
           {"schedule.alpha_bar": _alpha_bar_no_leading_one}, target="fast"),
    Mutant("fast_schedule_linear_linspace", "schedule.linear",
           ("endpoints", "constant_increment", "matches_reference"),
           "torch.linspace(start, end, K + 1)[1:]: beta_1 is one increment above beta_start",
           {"schedule.linear": _linear_linspace}, target="fast"),
    Mutant("fast_schedule_cosine_unclipped", "schedule.cosine",
           ("clipped",),
           "the cosine betas without the clamp at max_beta", {"schedule.cosine": _cosine_unclipped}, target="fast"),
    Mutant("fast_schedule_vp_right_endpoint", "schedule.vp",
           ("continuous_limit", "matches_reference"),
           "beta(t) sampled at t = k/K instead of integrated over the step",
           {"schedule.vp": _vp_right_endpoint}, target="fast"),
    # ddpm
    Mutant("fast_ddpm_forward_kernel_std", "ddpm.forward_kernel",
           ("variance_preserving", "indexing", "matches_reference"),
           "the variance returned as the standard deviation sqrt(beta_k)",
           {"ddpm.forward_kernel": _forward_kernel_std}, target="fast"),
    Mutant("fast_ddpm_noise_randn_like", "ddpm.noise",
           ("signal_and_noise_parts", "matches_reference"),
           "torch.randn_like(x0) instead of the eps passed in", {"ddpm.noise": _noise_randn_like}, target="fast"),
    Mutant("fast_ddpm_noise_unchecked", "ddpm.noise",
           ("rejects_out_of_domain",),
           "the clause run inside fast.unchecked(): NaN data and k out of range pass",
           {"ddpm.noise": _noise_unchecked}, target="fast"),
    Mutant("fast_ddpm_marginal_k_minus_1", "ddpm.marginal",
           ("composition", "matches_reference"),
           "the (K + 1)-entry tables indexed at k - 1", {"ddpm.marginal": _marginal_k_minus_1}, target="fast"),
    Mutant("fast_ddpm_x0_from_eps_repeat", "ddpm.x0_from_eps",
           ("round_trip", "tweedie"),
           "per-row coefficients tiled with .repeat(d) instead of .repeat_interleave(d)",
           {"ddpm.x0_from_eps": _x0_from_eps_repeat}, target="fast"),
    Mutant("fast_ddpm_posterior_sqrt_ab_k", "ddpm.posterior",
           ("bayes_rule", "point_mass_at_k1", "total_law", "matches_reference"),
           "sqrt(alpha_bar) of the x_0 coefficient read at k instead of k - 1",
           {"ddpm.posterior": _posterior_sqrt_ab_k}, target="fast"),
    Mutant("fast_ddpm_reverse_step_noise_at_k1", "ddpm.reverse_step",
           ("z_unused_at_k1", "exact_law", "converges_to_data", "matches_reference"),
           "sigma_k z added at k = 1 too (the torch.where(k > 1) missing)",
           {"ddpm.reverse_step": _reverse_step_noise_at_k1}, target="fast"),
    Mutant("fast_ddpm_reverse_step_randn_like", "ddpm.reverse_step",
           ("posterior_mean_identity", "converges_to_data", "matches_reference"),
           "torch.randn_like(x_k) instead of the z passed in",
           {"ddpm.reverse_step": _reverse_step_randn_like}, target="fast"),
    Mutant("fast_ddpm_simple_loss_mean", "ddpm.simple_loss",
           ("simple_is_squared_error", "vlb_weight_is_kl_mean_term", "matches_reference"),
           "the squared error averaged over coordinates (.mean(dim=1)) instead of summed",
           {"ddpm.simple_loss": _simple_loss_mean}, target="fast"),
    Mutant("fast_ddpm_vlb_decoder_no_constant", "ddpm.vlb",
           ("terms_are_weighted_losses", "bound", "tight_when_model_is_exact", "matches_reference"),
           "L_0 without its normalising constant d/2 log(2 pi beta_1)",
           {"ddpm.vlb": _vlb_decoder_no_constant}, target="fast"),
    # ddim
    Mutant("fast_ddim_sigma_no_sqrt", "ddim.sigma",
           ("ddpm_equivalence", "matches_reference"),
           "sqrt missing on 1 - alpha_bar_k / alpha_bar_prev", {"ddim.sigma": _ddim_sigma_no_sqrt}, target="fast"),
    Mutant("fast_ddim_posterior_sigma_as_variance", "ddim.posterior",
           ("marginal_preservation", "ddpm_equivalence", "matches_reference"),
           "the variance returned as sigma instead of sigma^2",
           {"ddim.posterior": _ddim_posterior_sigma_as_variance}, target="fast"),
    Mutant("fast_ddim_step_randn_like", "ddim.step",
           ("ddpm_equivalence", "true_noise_posterior", "matches_reference"),
           "sigma * torch.randn_like(x_k) instead of sigma * z", {"ddim.step": _ddim_step_randn_like}, target="fast"),
    Mutant("fast_ddim_sample_noise_order", "ddim.sample",
           ("ddpm_equivalence", "matches_reference"),
           "noises[i] read in the descending loop: the noises of tau applied in reverse order",
           {"ddim.sample": _ddim_sample_noise_order}, target="fast"),
    # dpm_solver
    Mutant("fast_dpm_first_order_alpha_bar_ratio", "dpm_solver.first_order",
           ("equals_ddim", "exact_for_point_mass", "first_order_convergence", "matches_reference"),
           "x scaled by alpha_bar_t / alpha_bar_s instead of alpha_t / alpha_s",
           {"dpm_solver.first_order": _dpm_first_order_alpha_bar_ratio}, target="fast"),
    Mutant("fast_dpm_second_order_in_place", "dpm_solver.second_order",
           ("second_order_convergence", "reduces_to_first_order", "exact_for_point_mass", "matches_reference"),
           "the intermediate point built in place on x, so the final update starts from u",
           {"dpm_solver.second_order": _dpm_second_order_in_place}, target="fast"),
    Mutant("fast_dpm_pp_2m_next_level", "dpm_solver.pp_2m",
           ("second_order_convergence", "first_step_is_ddim", "exact_for_point_mass", "network_levels",
            "matches_reference"),
           "the network evaluated at the level being stepped to (grid[i + 1])",
           {"dpm_solver.pp_2m": _dpm_pp_2m_next_level}, target="fast"),
    # gaussian
    Mutant("fast_gaussian_reparam_randn_like", "gaussian.reparam",
           ("affine", "pathwise_gradient", "matches_reference"),
           "mu + sigma * torch.randn_like(mu): the eps passed in ignored",
           {"gaussian.reparam": _reparam_randn_like}, target="fast"),
    Mutant("fast_gaussian_kl_mean_over_coords", "gaussian.kl",
           ("full_covariance", "nonnegative", "asymmetry", "additivity", "matches_reference"),
           "the per-coordinate KL reduced with .mean(dim=-1) instead of .sum(dim=-1)",
           {"gaussian.kl": _kl_mean_over_coords}, target="fast"),
    Mutant("fast_gaussian_kl_unchecked", "gaussian.kl",
           ("rejects_out_of_domain",),
           "the clause run inside fast.unchecked(): NaN and non-positive variances pass",
           {"gaussian.kl": _kl_unchecked}, target="fast"),
    # guidance
    Mutant("fast_guidance_classifier_std", "guidance.classifier",
           ("gaussian_bayes", "matches_reference"),
           "the shift scaled by sqrt(var) instead of the covariance",
           {"guidance.classifier": _classifier_std}, target="fast"),
    Mutant("fast_guidance_cfg_lerp_swapped", "guidance.cfg",
           ("endpoints", "sharpened_gaussian", "matches_reference"),
           "torch.lerp(eps_cond, eps_uncond, omega): start and end swapped",
           {"guidance.cfg": _cfg_lerp_swapped}, target="fast"),
    Mutant("fast_guidance_cfg_ho_salimans_w_as_omega", "guidance.cfg_ho_salimans",
           ("convention_mapping", "w_zero_conditional", "matches_reference"),
           "w passed to lerp as omega (omega = 1 + w forgotten)",
           {"guidance.cfg_ho_salimans": _cfg_ho_salimans_w_as_omega}, target="fast"),
    # sde
    Mutant("fast_sde_vp_g_is_beta", "sde.vp",
           ("variance_preserving", "transition_kernel", "matches_reference"),
           "the diffusion coefficient returned as beta(t) instead of sqrt(beta(t))",
           {"sde.vp": _sde_vp_g_is_beta}, target="fast"),
    Mutant("fast_sde_vp_marginal_no_half", "sde.vp_marginal",
           ("moment_odes", "ddpm_limit", "matches_reference"),
           "the integral of the linear part of beta taken as (b1 - b0) t^2",
           {"sde.vp_marginal": _vp_marginal_no_half}, target="fast"),
    Mutant("fast_sde_reverse_drift_sign", "sde.reverse_drift",
           ("marginal_consistency", "em_first_order", "em_sample_law", "matches_reference"),
           "f + g^2 score: the sign of the score term flipped",
           {"sde.reverse_drift": _reverse_drift_sign}, target="fast"),
    Mutant("fast_sde_probability_flow_no_half", "sde.probability_flow",
           ("preserves_marginals", "flow_map", "matches_reference"),
           "f - g^2 score: the reverse SDE drift used for the ODE",
           {"sde.probability_flow": _probability_flow_no_half}, target="fast"),
    # spectral
    Mutant("fast_spectral_transition_softmax", "spectral.transition",
           ("exact_factorisation", "matches_reference"),
           "<phi, mu> treated as logits and softmax-normalised",
           {"spectral.transition": _transition_softmax}, target="fast"),
    Mutant("fast_spectral_q_function_no_discount", "spectral.q_function",
           ("bellman_exact", "constant_value", "matches_reference"),
           "gamma never applied to the bootstrap term",
           {"spectral.q_function": _q_function_no_discount}, target="fast"),
    # elbo
    Mutant("fast_elbo_identity_logdet_half", "elbo.identity",
           ("evidence_identity", "lower_bound", "matches_reference"),
           "log det C from its Cholesky factor without the factor 2",
           {"elbo.identity": _elbo_logdet_half}, target="fast"),
    Mutant("fast_elbo_max_likelihood_unmasked_log", "elbo.max_likelihood",
           ("kl_is_ce_minus_entropy", "gibbs_pinsker", "argmin_is_max_likelihood", "support", "matches_reference"),
           "KL as sum p log(p / q) without the p = 0 mask (0 log 0 = NaN)",
           {"elbo.max_likelihood": _max_likelihood_unmasked_log_ratio}, target="fast"),
    # edp
    Mutant("fast_edp_action_approx_prev_alpha_bar", "edp.action_approx",
           ("exact_for_true_noise", "tweedie", "ddim_jump_to_zero", "matches_reference"),
           "alpha_bar_{k-1} (alphas_cumprod_prev) where alpha_bar_k belongs",
           {"edp.action_approx": _action_approx_prev}, target="fast"),
    Mutant("fast_edp_weighted_elbo_no_alpha", "edp.weighted_elbo",
           ("weight_closed_form", "equals_vlb_weighting", "matches_reference"),
           "the weight beta_k / (2 (1 - alpha_bar_k)) without alpha_k",
           {"edp.weighted_elbo": _weighted_elbo_no_alpha}, target="fast"),
    Mutant("fast_edp_weights_awr_times_temperature", "edp.weights",
           ("exp_closed_form", "clip_limits", "matches_reference"),
           "exp(A * T) for every kind (IQL's convention) where AWR and CRR take exp(A / T)",
           {"edp.weights": _weights_awr_times_temperature}, target="fast"),
    Mutant("fast_edp_policy_objective_sign", "edp.policy_objective",
           ("composition", "candidate_ranking", "matches_reference"),
           "J = f * weighted_elbo: the minus sign of log pi ~ -ELBO loss dropped",
           {"edp.policy_objective": _policy_objective_sign}, target="fast"),
    Mutant("fast_edp_expectile_loss_no_abs", "edp.expectile_loss",
           ("asymmetric_square", "expectile_minimiser", "monotone_in_tau", "matches_reference"),
           "(tau - 1(u < 0)) u^2 without the absolute value: negative loss where Q < V",
           {"edp.expectile_loss": _expectile_loss_no_abs}, target="fast"),
    Mutant("fast_edp_expectile_loss_weight_squared", "edp.expectile_loss",
           ("asymmetric_square", "expectile_minimiser", "matches_reference"),
           "(weight * diff) ** 2 where weight * diff ** 2 is meant",
           {"edp.expectile_loss": _expectile_loss_weight_squared}, target="fast"),
    Mutant("fast_edp_iql_q_target_value_column", "edp.iql_q_target",
           ("done_masks_bootstrap", "fixed_point", "matches_reference"),
           "the value network's (B, 1) output not squeezed: r + gamma (1 - d) V broadcasts to (B, B)",
           {"edp.iql_q_target": _iql_q_target_value_column}, target="fast"),
    Mutant("fast_edp_iql_q_target_no_done", "edp.iql_q_target",
           ("done_masks_bootstrap", "fixed_point", "matches_reference"),
           "the bootstrap never masked by done", {"edp.iql_q_target": _iql_q_target_no_done}, target="fast"),
    # diffusion_ql
    Mutant("fast_dql_bc_loss_mean", "diffusion_ql.bc_loss",
           ("true_noise_residual", "matches_reference"),
           "mse_loss(reduction='none').mean(dim=1): a mean over action coordinates",
           {"diffusion_ql.bc_loss": _bc_loss_mean}, target="fast"),
    Mutant("fast_dql_sample_action_no_clip_denoised", "diffusion_ql.sample_action",
           ("clip_denoised",),
           "the chain without clip_denoised; only the final action clamped",
           {"diffusion_ql.sample_action": _sample_action_no_clip_denoised}, target="fast"),
    Mutant("fast_dql_q_loss_signed_normaliser", "diffusion_ql.q_loss",
           ("constant_critic", "closed_form", "matches_reference"),
           "the normaliser q_norm.mean() without .abs()",
           {"diffusion_ql.q_loss": _q_loss_signed_normaliser}, target="fast"),
    Mutant("fast_dql_q_loss_grad_norm_attached", "diffusion_ql.q_loss_grad",
           ("stop_gradient", "matches_reference"),
           "the normaliser E|Q'| not detached: a gradient flows into q_norm",
           {"diffusion_ql.q_loss_grad": _q_loss_grad_norm_attached}, target="fast"),
    Mutant("fast_dql_loss_q_at_data_action", "diffusion_ql.loss",
           ("composition", "matches_reference"),
           "the Q term at the dataset action a instead of the policy's sample a^0",
           {"diffusion_ql.loss": _dql_loss_q_at_data_action}, target="fast"),
    # decision_diffuser
    Mutant("fast_dd_state_trajectory_off_by_one", "decision_diffuser.state_trajectory",
           ("window", "matches_reference"), "the window starts at s_{t+1}",
           {"decision_diffuser.state_trajectory": _state_trajectory_off_by_one}, target="fast"),
    Mutant("fast_dd_guided_eps_chunk_layout", "decision_diffuser.guided_eps",
           ("endpoints", "matches_reference"),
           "the 2B-row network output split with reshape(B, 2, -1): rows interleaved",
           {"decision_diffuser.guided_eps": _dd_guided_eps_chunk_layout}, target="fast"),
    Mutant("fast_dd_inverse_dynamics_swapped", "decision_diffuser.inverse_dynamics",
           ("consecutive_pairs", "recovers_linear_dynamics", "matches_reference"),
           "f_phi(s_{t+1}, s_t): arguments swapped",
           {"decision_diffuser.inverse_dynamics": _inverse_dynamics_swapped}, target="fast"),
    Mutant("fast_dd_inverse_dynamics_loss_mean", "decision_diffuser.inverse_dynamics_loss",
           ("squared_error", "matches_reference"), "a mean over action coordinates where the clause sums",
           {"decision_diffuser.inverse_dynamics_loss": _inverse_dynamics_loss_mean}, target="fast"),
    Mutant("fast_dd_dropout_loss_inverted", "decision_diffuser.dropout_loss",
           ("b_one_is_unconditional", "b_zero_is_conditional", "dropout_rate", "matches_reference"),
           "the dropout draw read as a keep mask (b = 1 keeps y)",
           {"decision_diffuser.dropout_loss": _dropout_loss_inverted}, target="fast"),
    # madiff
    Mutant("fast_madiff_guided_eps_chunk_layout", "madiff.guided_eps",
           ("endpoints", "single_agent_is_decision_diffuser", "matches_reference"),
           "the 2B-row joint output split with reshape(B, 2, -1): rows interleaved",
           {"madiff.guided_eps": _madiff_guided_eps_chunk_layout}, target="fast"),
    Mutant("fast_madiff_inverse_dynamics_first_model", "madiff.inverse_dynamics",
           ("per_agent_pairs", "recovers_linear_dynamics", "matches_reference"), "every agent's actions from models[0]",
           {"madiff.inverse_dynamics": _madiff_inverse_dynamics_first_model}, target="fast"),
    Mutant("fast_madiff_decentralised_action_agent0", "madiff.decentralised_action",
           ("own_slice_only", "equals_joint_inverse_dynamics", "recovers_linear_dynamics", "matches_reference"),
           "agent 0's slice used for every agent (the agent index dropped)",
           {"madiff.decentralised_action": _decentralised_action_agent_axis}, target="fast"),
    # qmix
    Mutant("fast_qmix_mixer_no_abs_w1", "qmix.mixer",
           ("monotone", "absolute_weights", "affine_region", "matches_reference"),
           "abs() on w_2 only: W_1(s) stays signed", {"qmix.mixer": _mixer_no_abs_w1}, target="fast"),
    Mutant("fast_qmix_greedy_masked_zero", "qmix.greedy_actions",
           ("per_agent_argmax", "matches_reference"),
           "unavailable actions masked to 0 (q * mask) instead of -inf",
           {"qmix.greedy_actions": _greedy_masked_zero}, target="fast"),
    Mutant("fast_qmix_igm_single_argmax", "qmix.igm",
           ("monotone_mixing_implies_igm", "detects_violation", "set_equality_with_ties", "matches_reference"),
           "per-agent maximisers as the one-hot of torch.argmax: ties lost",
           {"qmix.igm": _igm_single_argmax}, target="fast"),
    # dof
    Mutant("fast_dof_noise_factorisation_interleaved", "dof.noise_factorisation",
           ("block_layout", "gaussian_law", "matches_reference"),
           "(B, N, d) flattened after .transpose(1, 2): coordinates interleaved",
           {"dof.noise_factorisation": _noise_factorisation_interleaved}, target="fast"),
    Mutant("fast_dof_data_factorisation_softmax_dim", "dof.data_factorisation",
           ("atten_rows_stochastic", "matches_reference"), "Atten's softmax over dim=-2 instead of dim=-1",
           {"dof.data_factorisation": _data_factorisation_softmax_dim}, target="fast"),
    Mutant("fast_dof_train_step_split_without_weights", "dof.train_step",
           ("zero_iff_true_noise", "sum_of_agent_losses", "matches_reference"),
           "f^{-1} as a plain reshape: WConcat's division by w_i missing",
           {"dof.train_step": _dof_train_step_split_without_weights}, target="fast"),
    Mutant("fast_dof_decentralised_sample_shared_net", "dof.decentralised_sample",
           ("reproduces_centralised_step", "independent_agents", "exact_law", "matches_reference",
            "rejects_out_of_domain"),
           "every agent denoised with eps_fns[0]",
           {"dof.decentralised_sample": _decentralised_sample_shared_net}, target="fast"),
    Mutant("fast_dof_igd_noise_at_k1", "dof.igd",
           ("equals_decentralised", "product_law", "matches_reference"),
           "sigma_1 z added at the last step", {"dof.igd": _igd_noise_at_k1}, target="fast"),
    Mutant("fast_dof_policy_loss_global_norm", "dof.policy_loss",
           ("composition", "q_scale_invariant", "matches_reference"),
           "the normaliser averaged over all agents at once, not per agent",
           {"dof.policy_loss": _dof_policy_loss_global_norm}, target="fast"),
    Mutant("fast_dof_planner_loss_inverted_drop", "dof.planner_loss",
           ("condition_dropout", "matches_reference"),
           "drop read as a keep mask", {"dof.planner_loss": _planner_loss_inverted_drop}, target="fast"),
    # dom2
    Mutant("fast_dom2_cql_penalty_batch_mean", "dom2.cql_loss",
           ("penalty_bounds", "uniform_behaviour_jensen", "suppresses_unseen", "matches_reference"),
           "the CQL penalty averaged over the batch and added to every row",
           {"dom2.cql_loss": _cql_penalty_batch_mean}, target="fast"),
    Mutant("fast_dom2_cqls_penalty_batch_mean", "dom2.cql_sampled",
           ("finite_set_reduces", "exact_for_ideal_proposal", "matches_reference"),
           "the sampled CQL penalty averaged over the batch and added to every row",
           {"dom2.cql_sampled": _cqls_penalty_batch_mean}, target="fast"),
    Mutant("fast_dom2_cqls_first_density_for_all", "dom2.cql_sampled",
           ("exact_for_ideal_proposal", "matches_reference"),
           "the first sample's log p used for all M samples (right only for a uniform proposal)",
           {"dom2.cql_sampled": _cqls_log_p_per_batch}, target="fast"),
    Mutant("fast_dom2_policy_loss_pooled_normaliser", "dom2.policy_loss",
           ("decentralised", "per_agent_diffusion_ql", "matches_reference"),
           "E|Q'| pooled over all agents' critics instead of each agent's own",
           {"dom2.policy_loss": _dom2_policy_loss_pooled_normaliser}, target="fast"),
    Mutant("fast_dom2_sample_to_x0", "dom2.sample",
           ("equals_ddim", "exact_for_point_mass", "matches_reference"),
           "the chain always lands on x_0, even when tau_0 > 0", {"dom2.sample": _dom2_sample_to_x0}, target="fast"),
    # diffsr
    Mutant("fast_diffsr_ebm_transition_softmax_dim0", "diffsr.ebm_transition",
           ("normalised", "shift_invariance", "matches_reference"),
           "normalised over the (s, a) batch (dim=0) instead of over next states",
           {"diffsr.ebm_transition": _ebm_transition_softmax_dim0}, target="fast"),
    Mutant("fast_diffsr_ebm_transition_unshifted", "diffsr.ebm_transition",
           ("shift_invariance",),
           "log-sum-exp without the max shift: exp(psi^T nu) overflows float32",
           {"diffsr.ebm_transition": _ebm_transition_unshifted}, target="fast"),
    Mutant("fast_diffsr_ebm_identity_cdist", "diffsr.ebm_identity",
           ("identity", "matches_reference"),
           "the kernel term as -torch.cdist(psi, nu) / 2: the distance where its square belongs",
           {"diffsr.ebm_identity": _ebm_identity_cdist}, target="fast"),
    Mutant("fast_diffsr_rff_phased_scale", "diffsr.rff",
           ("unbiased", "error_rate", "transition_in_expectation", "matches_reference"),
           "phased features scaled by 1/sqrt(D) instead of sqrt(2/D)",
           {"diffsr.rff": _rff_phased_scale}, target="fast"),
    Mutant("fast_diffsr_perturbed_transition_mean_scale", "diffsr.perturbed_transition",
           ("linear_gaussian_closed_form", "defining_integral", "stein", "matches_reference"),
           "means shrunk by (1 - beta) instead of sqrt(1 - beta)",
           {"diffsr.perturbed_transition": _perturbed_transition_mean_scale}, target="fast"),
    Mutant("fast_diffsr_score_objective_target_sign", "diffsr.score_objective",
           ("denoising_target", "vincent_identity", "matches_reference"), "the denoising target's sign flipped",
           {"diffsr.score_objective": _score_objective_target_sign}, target="fast"),
    Mutant("fast_diffsr_train_step_beta_k", "diffsr.train_step",
           ("composition", "vincent_minimum", "matches_reference"),
           "the noise level beta^k read from beta_k instead of 1 - alpha_bar_k",
           {"diffsr.train_step": _train_step_beta_k}, target="fast"),
    Mutant("fast_diffsr_critic_relu", "diffsr.critic", ("elu_head", "matches_reference"),
           "nnf.relu in the critic's hidden layer where it has elu", {"diffsr.critic": _critic_relu}, target="fast"),
    Mutant("fast_diffsr_critic_amplitude_squared", "diffsr.critic",
           ("gaussian_expectation", "symmetries", "matches_reference"),
           "the amplitude applied twice: A^2 cos(omega psi + b)", {"diffsr.critic": _critic_amplitude_squared},
           target="fast"),
    Mutant("fast_diffsr_critic_first_frequencies", "diffsr.critic", ("gaussian_expectation", "matches_reference"),
           "omegas[0] and phases[0] used for every critic", {"diffsr.critic": _critic_first_frequencies},
           target="fast"),
    Mutant("fast_diffsr_td_target_no_done", "diffsr.td_target",
           ("done_masks_bootstrap", "fixed_point", "matches_reference"),
           "the bootstrap never masked by done", {"diffsr.td_target": _td_target_no_done}, target="fast"),
    Mutant("fast_diffsr_critic_loss_mean", "diffsr.critic_loss",
           ("quadratic", "expected_loss", "matches_reference"),
           "the critics' squared errors averaged instead of summed",
           {"diffsr.critic_loss": _critic_loss_mean}, target="fast"),
    Mutant("fast_diffsr_policy_objective_amax", "diffsr.policy_objective",
           ("min_over_critics", "matches_reference"),
           "torch.amax over critics where the clipped double-Q takes the min",
           {"diffsr.policy_objective": _policy_objective_amax}, target="fast"),
    # diffuser
    Mutant("fast_diffuser_trajectory_actions_first", "diffuser.trajectory",
           ("layout", "round_trip", "matches_reference"),
           "torch.cat([actions, states], dim=2)",
           {"diffuser.trajectory": _trajectory_actions_first}, target="fast"),
    Mutant("fast_diffuser_split_trajectory_chunk", "diffuser.split_trajectory",
           ("layout", "round_trip", "matches_reference"),
           "tau.chunk(2, dim=-1): halves instead of ds state columns",
           {"diffuser.split_trajectory": _split_trajectory_chunk}, target="fast"),
    Mutant("fast_diffuser_inpaint_where_swapped", "diffuser.inpaint",
           ("conditioned_entries_set", "others_untouched", "matches_reference"),
           "torch.where(mask, tau, values): branches swapped",
           {"diffuser.inpaint": _inpaint_where_swapped}, target="fast"),
    Mutant("fast_diffuser_guided_step_grad_at_tau", "diffuser.guided_step",
           ("first_order_gaussian", "gradient_at_mean", "matches_reference"),
           "grad J evaluated at tau^k instead of at the mean mu",
           {"diffuser.guided_step": _guided_step_grad_at_tau}, target="fast"),
    Mutant("fast_diffuser_sample_chain_aliased", "diffuser.sample",
           ("composition", "matches_reference"),
           "x updated in place after being appended: every chain entry aliases the last",
           {"diffuser.sample": _sample_chain_aliased}, target="fast"),
]
