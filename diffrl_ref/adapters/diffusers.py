"""Adapters for the schedulers of HuggingFace diffusers (``diffrl conform --impl diffusers-ddim`` etc.).

Each factory returns an :class:`~diffrl_ref.suite.adapter.Adapter` whose clause callables drive
one diffusers scheduler through its public behaviour only: the constructor's configuration,
``betas``/``alphas_cumprod``, ``add_noise``, ``set_timesteps`` and ``step``. Nothing here
re-implements a clause's equation; the adapters only translate conventions:

* steps: the spec's k = 1..K is diffusers' timestep t = k - 1; a step to k_prev = 0 (the clean
  sample, alpha_bar_0 = 1) is diffusers' "final" step (``set_alpha_to_one=True``);
* schedules: the spec passes ``betas``; the scheduler gets them as ``trained_betas`` with
  ``num_train_timesteps = K``, and the spec's alpha_bar is ``alphas_cumprod`` with 1 prepended;
* noise is an argument: DDIM's ``step`` takes it as ``variance_noise``; DDPM's ``step`` draws it
  itself, so the adapter hands it over by replacing the ``randn_tensor`` name of the scheduler's
  module for the duration of the call (see :func:`_injected_noise`);
* the samplers' options are set to the clause: ``clip_sample=False``, ``prediction_type`` as
  needed, no thresholding;
* a per-row k is served by one ``step`` call per distinct k (diffusers' ``step`` takes one
  timestep per call);
* noise levels (the ``dpm_solver`` clauses) become a schedule in which each level sits at an
  integer timestep, the cleanest at timestep 0 (:func:`schedule_of_levels`).

Where the library cannot express a clause's arguments (DDIM's k_prev is fixed by
``num_inference_steps``; the cosine schedule exists only for s = 0.008 and max_beta = 0.999)
the callable raises ``NotImplementedError`` naming the limitation. Inputs are not validated
here: whatever diffusers does with bad input (accept it, or raise an ``IndexError``) is what
the suite reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..suite.adapter import Adapter

INSTALL_HINT = "pip install 'diffrl-ref[diffusers]'"

F32 = NDArray[np.float32]
Array = NDArray[np.float64]


def _modules() -> tuple[Any, Any]:
    """(diffusers, torch), imported lazily so diffrl-ref does not depend on them."""
    try:
        import diffusers
        import torch
    except ImportError as exc:
        raise ValueError(f"the diffusers adapters need diffusers and torch ({exc}); install them with "
                         f"{INSTALL_HINT}") from None
    return diffusers, torch


@contextlib.contextmanager
def _injected_noise(module: Any, z: Any) -> Iterator[None]:
    """Make ``module.randn_tensor`` return ``z`` while the block runs.

    ``DDPMScheduler.step`` has no argument for its noise: it calls the ``randn_tensor`` imported
    into ``diffusers.schedulers.scheduling_ddpm``. Rebinding that module attribute (and restoring
    it afterwards) is the only way to hand the step the spec's explicit z without copying its
    code. ``z`` is returned as given (cast to the requested dtype and device), so a z of the
    wrong shape meets diffusers' own broadcasting exactly as ``variance_noise`` does in DDIM.
    """
    original = module.randn_tensor

    def randn_tensor(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None,
                     layout: Any = None) -> Any:
        return z.to(device=device, dtype=dtype)

    module.randn_tensor = randn_tensor
    try:
        yield
    finally:
        module.randn_tensor = original


class _Family(SimpleNamespace):
    """A family namespace with a one-line repr (hypothesis prints the adapter in failure reports)."""

    def __repr__(self) -> str:
        return f"<{', '.join(sorted(vars(self)))}>"


class _Backend:
    """A diffusers scheduler class plus the torch device and the conversions to and from NumPy."""

    def __init__(self, cls_name: str, device: str) -> None:
        self.diffusers, self.torch = _modules()
        self.cls = getattr(self.diffusers, cls_name)
        self.device = device

    # ---- conversions -----------------------------------------------------------------------

    def tensor(self, x: ArrayLike) -> Any:
        return self.torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)

    def numpy(self, t: Any) -> F32:
        return np.asarray(t.detach().cpu().numpy(), dtype=np.float32)

    def timesteps(self, k: ArrayLike) -> Any:
        """The spec's 1-based k as diffusers' 0-based timestep tensor (no range check: diffusers does none)."""
        return self.torch.as_tensor(np.asarray(k) - 1, device=self.device)

    # ---- schedulers --------------------------------------------------------------------------

    def scheduler(self, betas: ArrayLike, **config: Any) -> Any:
        """The scheduler for the schedule ``betas``: ``trained_betas`` with ``num_train_timesteps = K``."""
        b = np.asarray(betas, dtype=np.float64)
        return self.cls(num_train_timesteps=int(b.size), trained_betas=b, **config)

    # ---- family ``schedule`` -------------------------------------------------------------------

    def alpha_bar(self, betas: ArrayLike) -> F32:
        """``alphas_cumprod`` with alpha_bar_0 = 1 prepended (diffusers stores alpha_bar_1..alpha_bar_K)."""
        s = self.scheduler(betas)
        return np.concatenate([np.ones(1, np.float32), self.numpy(s.alphas_cumprod)])

    def linear(self, K: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> F32:
        """``beta_schedule="linear"``."""
        s = self.cls(num_train_timesteps=K, beta_start=beta_start, beta_end=beta_end, beta_schedule="linear")
        return self.numpy(s.betas)

    def cosine(self, K: int, s: float = 0.008, max_beta: float = 0.999) -> F32:
        """``beta_schedule="squaredcos_cap_v2"``, which hard-codes s = 0.008 and max_beta = 0.999."""
        if (s, max_beta) != (0.008, 0.999):
            raise NotImplementedError(
                f"schedule.cosine: diffusers' squaredcos_cap_v2 fixes s = 0.008 and max_beta = 0.999; "
                f"s = {s!r}, max_beta = {max_beta!r} cannot be configured")
        return self.numpy(self.cls(num_train_timesteps=K, beta_schedule="squaredcos_cap_v2").betas)

    def schedule_family(self) -> _Family:
        return _Family(alpha_bar=self.alpha_bar, linear=self.linear, cosine=self.cosine)

    # ---- family ``ddpm``: forward process through add_noise ----------------------------------

    def batch_timesteps(self, k: ArrayLike, x: Any) -> Any:
        """Timesteps for ``add_noise``, which documents one timestep per sample: a scalar k is repeated B times."""
        t = self.timesteps(k)
        return t.expand(x.shape[0]) if t.ndim == 0 and x.ndim >= 1 else t

    def noise(self, x0: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F32:
        """``add_noise(x0, eps, t)``."""
        s = self.scheduler(betas)
        x = self.tensor(x0)
        return self.numpy(s.add_noise(x, self.tensor(eps), self.batch_timesteps(k, x)))

    def marginal(self, x0: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F32, F32]:
        """Mean ``add_noise(x0, 0, t)``; variance the square of ``add_noise(0, 1, t)`` (the noise coefficient)."""
        s = self.scheduler(betas)
        x = self.tensor(x0)
        t = self.batch_timesteps(k, x)
        mean = s.add_noise(x, self.torch.zeros_like(x), t)
        col = self.torch.zeros((x.shape[0], 1), dtype=x.dtype, device=x.device)
        std = s.add_noise(col, self.torch.ones_like(col), t)
        return self.numpy(mean), self.numpy(std) ** 2


def _row_groups(k: ArrayLike) -> list[tuple[Any, Any]]:
    """(step value, row selector) pairs: diffusers' ``step`` takes one timestep per call."""
    kk = np.asarray(k)
    if kk.ndim == 0:
        return [(kk.item(), slice(None))]
    return [(v.item(), np.flatnonzero(kk == v)) for v in np.unique(kk)]


def _pair_groups(k: ArrayLike, k_prev: ArrayLike) -> list[tuple[Any, Any, Any]]:
    """(k, k_prev, row selector) triples for a per-row pair of steps."""
    kk, kp = np.asarray(k), np.asarray(k_prev)
    if kk.ndim == 0 and kp.ndim == 0:
        return [(kk.item(), kp.item(), slice(None))]
    kk, kp = np.broadcast_arrays(kk, kp)
    pairs = np.stack([kk.ravel(), kp.ravel()], axis=1)
    return [(a.item(), b.item(), np.flatnonzero((kk == a) & (kp == b))) for a, b in np.unique(pairs, axis=0)]


# =================================================================================================
# DDPMScheduler
# =================================================================================================

#: The spec's reverse variances and diffusers' names for them (Ho et al. Sec. 3.2).
DDPM_VARIANCE_TYPES = {"beta": "fixed_large", "beta_tilde": "fixed_small"}


class _DDPM(_Backend):
    """``diffusers.DDPMScheduler``."""

    def __init__(self, device: str) -> None:
        super().__init__("DDPMScheduler", device)
        import diffusers.schedulers.scheduling_ddpm as module

        self.module = module

    def _step(self, s: Any, model_output: Any, k: ArrayLike, sample: Any, z: Any) -> tuple[Any, Any]:
        """``step`` per distinct k with the noise z injected; returns (prev_sample, pred_original_sample)."""
        prev = self.torch.empty_like(sample)
        x0 = self.torch.empty_like(sample)
        for kv, rows in _row_groups(k):
            sel = rows if isinstance(rows, slice) else self.torch.as_tensor(rows, device=sample.device)
            with _injected_noise(self.module, z[sel]):
                out = s.step(model_output[sel], kv - 1, sample[sel])
            prev[sel], x0[sel] = out.prev_sample, out.pred_original_sample
        return prev, x0

    def x0_from_eps(self, x_k: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F32:
        """``pred_original_sample`` of ``step`` with ``prediction_type="epsilon"``, no clipping."""
        s = self.scheduler(betas, clip_sample=False, prediction_type="epsilon")
        x = self.tensor(x_k)
        _, x0 = self._step(s, self.tensor(eps), k, x, self.torch.zeros_like(x))
        return self.numpy(x0)

    def posterior(self, x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike) -> tuple[F32, F32]:
        """``step`` with ``prediction_type="sample"`` (the model output is x0 itself), ``variance_type="fixed_small"``.

        The mean is the step's output with z = 0. The variance is read off the same step at
        x_k = x0 = 0 with z = 1, where the output is exactly the standard deviation it adds
        (0 at k = 1, where diffusers adds no noise).
        """
        s = self.scheduler(betas, clip_sample=False, prediction_type="sample", variance_type="fixed_small")
        x, xk = self.tensor(x0), self.tensor(x_k)
        mean, _ = self._step(s, x, k, xk, self.torch.zeros_like(xk))
        col = self.torch.zeros((xk.shape[0], 1), dtype=xk.dtype, device=xk.device)
        std, _ = self._step(s, col, k, col, self.torch.ones_like(col))
        return self.numpy(mean), self.numpy(std) ** 2

    def reverse_step(self, x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, z: ArrayLike,
                     variance: str = "beta") -> F32:
        """``step`` with eps prediction; ``variance_type`` fixed_large (beta) or fixed_small (beta_tilde)."""
        if variance not in DDPM_VARIANCE_TYPES:
            raise ValueError(f"ddpm.reverse_step: variance must be one of {sorted(DDPM_VARIANCE_TYPES)} "
                             f"(diffusers' fixed_large / fixed_small), got {variance!r}")
        s = self.scheduler(betas, clip_sample=False, prediction_type="epsilon",
                           variance_type=DDPM_VARIANCE_TYPES[variance])
        prev, _ = self._step(s, self.tensor(eps_hat), k, self.tensor(x_k), self.tensor(z))
        return self.numpy(prev)

    def ddpm_family(self) -> _Family:
        return _Family(noise=self.noise, marginal=self.marginal, x0_from_eps=self.x0_from_eps,
                               posterior=self.posterior, reverse_step=self.reverse_step)


# =================================================================================================
# DDIMScheduler
# =================================================================================================


def ddim_inference_steps(K: int, k: Any, k_prev: Any) -> int:
    """The ``num_inference_steps`` M for which ``DDIMScheduler.step`` goes from t = k - 1 to k_prev - 1.

    ``step`` always goes from t to t - K // M (K = num_train_timesteps), whatever the spacing of
    ``set_timesteps``; a target below 0 means the final alpha_bar = 1 (``set_alpha_to_one``),
    i.e. k_prev = 0. So k_prev = 0 needs K // M >= k (M = 1 will do) and k_prev >= 1 needs
    K // M == k - k_prev exactly, which not every difference allows (K = 10: 4 is impossible).
    """
    if float(k).is_integer() and float(k_prev).is_integer():
        step, prev = int(k), int(k_prev)
        if prev == 0 and 1 <= step <= K:
            return 1
        delta = step - prev
        if 1 <= delta <= K and 1 <= prev:
            M = K // delta
            if K // M == delta:
                return M
    raise NotImplementedError(
        f"ddim: DDIMScheduler.step always steps from timestep t to t - num_train_timesteps // num_inference_steps; "
        f"no num_inference_steps gives the step k = {k} -> k_prev = {k_prev} with K = {K}")


class _DDIM(_Backend):
    """``diffusers.DDIMScheduler`` with ``clip_sample=False``, ``set_alpha_to_one=True``, eps prediction."""

    CONFIG: dict[str, Any] = dict(clip_sample=False, set_alpha_to_one=True, prediction_type="epsilon",
                                  thresholding=False)

    def __init__(self, device: str) -> None:
        super().__init__("DDIMScheduler", device)

    def x0_from_eps(self, x_k: ArrayLike, eps: ArrayLike, betas: ArrayLike, k: ArrayLike) -> F32:
        """``pred_original_sample`` of ``step`` (eta = 0)."""
        s = self.scheduler(betas, **self.CONFIG)
        s.set_timesteps(1)
        x, e = self.tensor(x_k), self.tensor(eps)
        out = self.torch.empty_like(x)
        for kv, rows in _row_groups(k):
            sel = rows if isinstance(rows, slice) else self.torch.as_tensor(rows, device=x.device)
            out[sel] = s.step(e[sel], kv - 1, x[sel], eta=0.0).pred_original_sample
        return self.numpy(out)

    def _step(self, s: Any, k: Any, k_prev: Any, model_output: Any, sample: Any, eta: float, z: Any) -> Any:
        s.set_timesteps(ddim_inference_steps(int(s.config.num_train_timesteps), k, k_prev))
        return s.step(model_output, k - 1, sample, eta=eta, variance_noise=z).prev_sample

    def sigma(self, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float) -> F32:
        """The noise ``step`` adds: its output at x_k = eps_hat = 0 with ``variance_noise`` = 1 is sigma."""
        s = self.scheduler(betas, **self.CONFIG)
        kk, kp = np.broadcast_arrays(np.asarray(k), np.asarray(k_prev))
        out = np.empty(kk.shape, dtype=np.float32)
        zero = self.torch.zeros((1, 1), device=self.device)
        one = self.torch.ones((1, 1), device=self.device)
        for idx in np.ndindex(kk.shape):
            out[idx] = self.numpy(self._step(s, kk[idx].item(), kp[idx].item(), zero, zero, eta, one)).item()
        return out

    def step(self, x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike,
             eta: float, z: ArrayLike) -> F32:
        """``step(eps_hat, k - 1, x_k, eta, variance_noise=z)`` after ``set_timesteps(M)`` (ddim_inference_steps)."""
        s = self.scheduler(betas, **self.CONFIG)
        x, e, zz = self.tensor(x_k), self.tensor(eps_hat), self.tensor(z)
        out = self.torch.empty_like(x)
        for kv, kpv, rows in _pair_groups(k, k_prev):
            sel = rows if isinstance(rows, slice) else self.torch.as_tensor(rows, device=x.device)
            out[sel] = self._step(s, kv, kpv, e[sel], x[sel], eta, zz[sel])
        return self.numpy(out)

    def posterior(self, x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike,
                  sigma: ArrayLike) -> tuple[F32, F32]:
        """``step`` with ``prediction_type="sample"``: fed x0, it returns the q_sigma posterior mean (DDIM Eq. 7).

        diffusers parameterises sigma by eta = sigma / sigma(eta = 1); sigma(eta = 1) is read off
        the scheduler itself (see :meth:`sigma`). The variance is read off the step at
        x_k = x0 = 0 with ``variance_noise`` = 1, where the output is the sigma it adds.
        """
        s = self.scheduler(betas, **{**self.CONFIG, "prediction_type": "sample"})
        x, xk = self.tensor(x0), self.tensor(x_k)
        B = xk.shape[0]
        sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (B,))
        kk, kp = np.broadcast_to(np.asarray(k), (B,)), np.broadcast_to(np.asarray(k_prev), (B,))
        mean = self.torch.empty_like(xk)
        var = np.empty((B, 1), dtype=np.float32)
        zero, one = self.torch.zeros((1, 1), device=self.device), self.torch.ones((1, 1), device=self.device)
        for i in range(B):
            ki, kpi = kk[i].item(), kp[i].item()
            sigma_1 = float(self.numpy(self._step(s, ki, kpi, zero, zero, 1.0, one)).item())
            if sig[i] != 0 and sigma_1 == 0:
                raise NotImplementedError(f"ddim.posterior: diffusers' sigma is eta * sigma(eta = 1) = 0 for the step "
                                          f"k = {ki} -> k_prev = {kpi}; sigma = {float(sig[i])!r} cannot be expressed")
            eta = float(sig[i]) / sigma_1 if sig[i] != 0 else 0.0
            mean[i:i + 1] = self._step(s, ki, kpi, x[i:i + 1], xk[i:i + 1], eta, self.torch.zeros_like(xk[i:i + 1]))
            var[i, 0] = self.numpy(self._step(s, ki, kpi, zero, zero, eta, one)).item() ** 2
        return self.numpy(mean), var

    def sample(self, x_K: ArrayLike, eps_fn: Callable[..., Any], betas: ArrayLike, tau: ArrayLike, eta: float,
               noises: ArrayLike) -> F32:
        """The usual diffusers loop ``for t in scheduler.timesteps: x = step(eps_fn(x, t + 1), t, x, eta, z)``.

        The scheduler is configured so that ``set_timesteps(len(tau))`` produces exactly tau - 1
        (descending): ``timestep_spacing`` "leading" (with the ``steps_offset`` that makes the
        first timestep K - 1), then "trailing", then "linspace". Sub-sequences no spacing
        produces raise NotImplementedError. noises[i] is the z of the step from tau[i].
        """
        b = np.asarray(betas, dtype=np.float64)
        K = int(b.size)
        steps = np.asarray(tau)
        S = int(steps.size)
        target = steps[::-1] - 1
        s = None
        for spacing in ("leading", "trailing", "linspace"):
            offset = K - 1 - (S - 1) * (K // S) if spacing == "leading" and 0 < S <= K else 0
            cand = self.scheduler(b, **self.CONFIG, timestep_spacing=spacing, steps_offset=offset)
            cand.set_timesteps(S)
            if np.array_equal(cand.timesteps.cpu().numpy(), target):
                s = cand
                break
        if s is None:
            raise NotImplementedError(
                f"ddim.sample: no timestep_spacing of DDIMScheduler.set_timesteps({S}) gives the sub-sequence "
                f"tau = {steps.tolist()} (K = {K})")
        x = self.tensor(x_K)
        z = self.tensor(noises)
        B = x.shape[0]
        for j, t in enumerate(s.timesteps):
            k = int(t) + 1
            e = self.tensor(eps_fn(self.numpy(x).astype(np.float64), np.full(B, k, dtype=np.int64)))
            x = s.step(e, t, x, eta=eta, variance_noise=z[S - 1 - j]).prev_sample
        return self.numpy(x)

    def ddpm_family(self) -> _Family:
        return _Family(noise=self.noise, marginal=self.marginal, x0_from_eps=self.x0_from_eps)

    def ddim_family(self) -> _Family:
        return _Family(sigma=self.sigma, step=self.step, posterior=self.posterior, sample=self.sample)


# =================================================================================================
# DPMSolverMultistepScheduler
# =================================================================================================


#: Largest beta the level-to-schedule map uses: alpha = 1 - beta >= 1/2 is then exact to one rounding.
MAX_BETA = 0.5


def schedule_of_levels(ab_grid: ArrayLike) -> tuple[Array, list[int]]:
    """A schedule (betas) in which the levels ab_grid sit at integer timesteps, and those timesteps.

    diffusers takes noise levels only as a schedule: ``alphas_cumprod[t]`` for timesteps t, with
    the last level of a solve at t = 0 (``final_sigmas_type="sigma_min"``). The cleanest level
    ab_grid[M] therefore becomes timestep 0 (beta_1 = 1 - ab_grid[M]), and each further level one
    or more timesteps later: where two levels differ by more than a factor 2, geometric filler
    timesteps are inserted, so that every beta is <= 1/2 and its float32 alpha = 1 - beta is
    exact to one rounding (one beta close to 1 would carry a relative error eps / alpha into
    every later level). Only the grid's timesteps are passed to ``set_timesteps``; the fillers are
    never visited. Returns (betas, timesteps of ab_grid[0..M-1], descending). This is the
    convention map from the clause's levels to diffusers' input, not part of the solver.
    """
    a = np.asarray(ab_grid, dtype=np.float64)[::-1]
    levels = [float(a[0])] if a.size else []
    timesteps = []
    for prev, nxt in zip(a[:-1], a[1:], strict=True):
        ratio = nxt / prev
        n = 1
        if np.isfinite(ratio) and 0 < ratio < MAX_BETA:
            n = int(np.ceil(np.log(ratio) / np.log(1.0 - MAX_BETA)))
        levels += [float(prev * ratio ** (i / n)) for i in range(1, n)] + [float(nxt)]
        timesteps.append(len(levels) - 1)
    lv = np.asarray(levels)
    betas = np.concatenate([1.0 - lv[:1], 1.0 - lv[1:] / lv[:-1]])
    return betas, timesteps[::-1]


class _DPMSolver(_Backend):
    """``diffusers.DPMSolverMultistepScheduler``: DPM-Solver++ (data prediction), 2nd-order multistep.

    Configured as Algorithm 2 of Lu et al. (2022b): ``algorithm_type="dpmsolver++"``,
    ``solver_order=2``, ``solver_type="midpoint"``, eps prediction, no thresholding,
    ``lower_order_final=False`` (diffusers' default drops to first order on the last step when
    fewer than 15 steps are taken) and ``final_sigmas_type="sigma_min"`` (the last level is
    ``alphas_cumprod[0]``, not sigma = 0: the clause ends at a level ab < 1).
    """

    CONFIG: dict[str, Any] = dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                  prediction_type="epsilon", thresholding=False, lower_order_final=False,
                                  euler_at_final=False, final_sigmas_type="sigma_min")

    def __init__(self, device: str) -> None:
        super().__init__("DPMSolverMultistepScheduler", device)

    def _solver(self, ab_grid: ArrayLike) -> tuple[Any, dict[int, float]]:
        """The scheduler over the levels after ``set_timesteps(timesteps=...)``, and timestep -> level."""
        grid = np.asarray(ab_grid, dtype=np.float64)
        betas, timesteps = schedule_of_levels(grid)
        s = self.scheduler(betas, **self.CONFIG)
        s.set_timesteps(timesteps=timesteps)
        return s, {t: float(level) for t, level in zip(timesteps, grid, strict=False)}

    def first_order(self, x: ArrayLike, eps_hat: ArrayLike, ab_s: float, ab_t: float) -> F32:
        """One ``step`` of the solver over the two levels [ab_s, ab_t]: the first step is first order."""
        s, _ = self._solver([ab_s, ab_t])
        return self.numpy(s.step(self.tensor(eps_hat), s.timesteps[0], self.tensor(x)).prev_sample)

    def pp_2m(self, x_T: ArrayLike, eps_fn: Callable[..., Any], ab_grid: ArrayLike) -> F32:
        """The usual loop ``for t in scheduler.timesteps: x = step(eps_fn(x, level of t), t, x)``.

        The network gets the level of timestep t (the clause's eps_fn takes alpha_bar where a
        diffusers model takes t).
        """
        s, level_of = self._solver(ab_grid)
        x = self.tensor(x_T)
        for t in s.timesteps:
            e = self.tensor(eps_fn(self.numpy(x).astype(np.float64), level_of[int(t)]))
            x = s.step(e, t, x).prev_sample
        return self.numpy(x)

    def dpm_family(self) -> _Family:
        return _Family(first_order=self.first_order, pp_2m=self.pp_2m)

    def ddpm_family(self) -> _Family:
        return _Family(noise=self.noise, marginal=self.marginal)


# =================================================================================================
# factories
# =================================================================================================


def _check(name: str, dtype: str, device: str) -> None:
    if dtype != "float32":
        raise ValueError(f"{name}: diffusers' schedulers compute betas and alphas_cumprod in float32; "
                         f"only dtype='float32' is meaningful, not {dtype!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"{name}: device must be 'cpu' or 'cuda', got {device!r}")
    _, torch = _modules()
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: device 'cuda' requested but torch.cuda.is_available() is False")


def ddpm(dtype: str = "float32", device: str = "cpu") -> Adapter:
    """``diffusers.DDPMScheduler``: schedules, forward process (add_noise), x0 prediction, posterior, reverse step."""
    _check("diffusers-ddpm", dtype, device)
    be = _DDPM(device)
    return Adapter("diffusers-ddpm", be.diffusers.__version__, dtype, device,
                   {"schedule": be.schedule_family(), "ddpm": be.ddpm_family()},
                   "HuggingFace diffusers DDPMScheduler (trained_betas, clip_sample=False)")


def ddim(dtype: str = "float32", device: str = "cpu") -> Adapter:
    """``diffusers.DDIMScheduler``: schedules, add_noise, DDIM sigma/step/posterior/sampling."""
    _check("diffusers-ddim", dtype, device)
    be = _DDIM(device)
    return Adapter("diffusers-ddim", be.diffusers.__version__, dtype, device,
                   {"schedule": be.schedule_family(), "ddpm": be.ddpm_family(), "ddim": be.ddim_family()},
                   "HuggingFace diffusers DDIMScheduler (trained_betas, clip_sample=False, set_alpha_to_one=True)")


def dpmsolver(dtype: str = "float32", device: str = "cpu") -> Adapter:
    """``diffusers.DPMSolverMultistepScheduler``: schedules, add_noise, DPM-Solver-1 step, DPM-Solver++(2M)."""
    _check("diffusers-dpmsolver", dtype, device)
    be = _DPMSolver(device)
    return Adapter("diffusers-dpmsolver", be.diffusers.__version__, dtype, device,
                   {"schedule": be.schedule_family(), "ddpm": be.ddpm_family(), "dpm_solver": be.dpm_family()},
                   "HuggingFace diffusers DPMSolverMultistepScheduler (dpmsolver++, order 2, lower_order_final=False)")
