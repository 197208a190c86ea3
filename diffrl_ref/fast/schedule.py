"""Noise schedules and their coefficient tables (production path, family ``schedule``).

A :class:`Schedule` is built once from beta_1..beta_K: every table is computed in float64 on
the host and then cast to the working dtype and device, so a float32 or bfloat16 run carries
one rounding per coefficient instead of a cumulative product's K roundings. Tables have K + 1
entries and are indexed by the step itself (k = 0..K; entry 0 is alpha_bar_0 = 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import DomainError, require, require_values

F64 = torch.float64


def _host64(betas: Tensor | Sequence[float]) -> Tensor:
    return torch.as_tensor(betas).detach().to(device="cpu", dtype=F64)


def _check_betas(b: Tensor, cid: str) -> Tensor:
    require(b.ndim == 1 and b.numel() >= 1, cid, f"betas must have shape (K,) with K >= 1, got {tuple(b.shape)}")
    if not bool(torch.isfinite(b).all()):
        raise DomainError(cid, "betas must be finite (no NaN or inf)")
    if not bool(((b > 0) & (b < 1)).all()):
        raise DomainError(cid, "every beta_k must lie in (0, 1)")
    return b


def alpha_bar(betas: Tensor | Sequence[float]) -> Tensor:
    """Clause ``schedule.alpha_bar``: [1, alpha_bar_1, ..., alpha_bar_K], alpha_bar_k = prod_{i<=k} (1 - beta_i).

    Returned in the dtype and on the device of ``betas`` (float64 for a sequence), computed in float64.
    """
    b = torch.as_tensor(betas)
    alpha = 1.0 - _check_betas(_host64(b), "schedule.alpha_bar")
    out = torch.cumprod(torch.cat([torch.ones(1, dtype=F64), alpha]), 0)
    return out.to(device=b.device, dtype=b.dtype if b.is_floating_point() else F64)


def _K(K: int, lo: int, cid: str) -> int:
    require(isinstance(K, int) or (isinstance(K, float) and K.is_integer()), cid, f"K must be an integer, got {K!r}")
    require(int(K) >= lo, cid, f"K must be an integer >= {lo}, got {K!r}")
    return int(K)


def linear(K: int, beta_start: float = 1e-4, beta_end: float = 0.02, *, dtype: torch.dtype = F64) -> Tensor:
    """Clause ``schedule.linear``: beta_k linear from beta_start (k = 1) to beta_end (k = K)."""
    cid = "schedule.linear"
    K = _K(K, 2, cid)
    require(0 < beta_start <= beta_end < 1, cid, "need 0 < beta_start <= beta_end < 1")
    k = torch.arange(1, K + 1, dtype=F64)
    return (beta_start + (k - 1) / (K - 1) * (beta_end - beta_start)).to(dtype)


def cosine(K: int, s: float = 0.008, max_beta: float = 0.999, *, dtype: torch.dtype = F64) -> Tensor:
    """Clause ``schedule.cosine``: alpha_bar(k) = f(k)/f(0), f(k) = cos^2((k/K + s)/(1 + s) pi/2), capped betas."""
    cid = "schedule.cosine"
    K = _K(K, 1, cid)
    require(s > 0, cid, "s must be > 0")
    require(0 < max_beta < 1, cid, "max_beta must lie in (0, 1)")
    f = torch.cos((torch.arange(0, K + 1, dtype=F64) / K + s) / (1 + s) * (math.pi / 2)) ** 2
    return torch.clamp(1.0 - f[1:] / f[:-1], max=max_beta).to(dtype)


def vp(K: int, beta_min: float = 0.1, beta_max: float = 10.0, *, dtype: torch.dtype = F64) -> Tensor:
    """Clause ``schedule.vp``: beta_k = 1 - exp(-beta_min/K - (beta_max - beta_min)(2k - 1)/(2K^2))."""
    cid = "schedule.vp"
    K = _K(K, 1, cid)
    require(0 < beta_min <= beta_max, cid, "need 0 < beta_min <= beta_max")
    k = torch.arange(1, K + 1, dtype=F64)
    return (-torch.expm1(-beta_min / K - 0.5 * (beta_max - beta_min) * (2 * k - 1) / K**2)).to(dtype)


@dataclass(frozen=True, eq=False)
class Schedule:
    """Coefficient tables of a discrete VP schedule, each of shape (K + 1,), indexed by k.

    ``beta[0]`` and ``beta_tilde[0]`` are unused padding (0). ``one_minus_alpha_bar`` is
    computed as -expm1(sum log(1 - beta)), exact where alpha_bar is close to 1.
    """

    beta: Tensor
    alpha_bar: Tensor
    one_minus_alpha_bar: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor
    beta_tilde: Tensor
    # float64 on the host, for the samplers' per-step scalar coefficients
    betas64: Tensor  # beta_1..beta_K, (K,)
    alpha_bar64: Tensor  # (K + 1,)
    one_minus_alpha_bar64: Tensor  # (K + 1,)

    @property
    def K(self) -> int:
        return int(self.betas64.numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.alpha_bar.dtype

    @property
    def device(self) -> torch.device:
        return self.alpha_bar.device

    @classmethod
    def from_betas(cls, betas: Tensor | Sequence[float], *, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu", clause: str = "schedule.alpha_bar") -> Schedule:
        """Validate beta_1..beta_K (each in (0, 1), 0 < alpha_bar_K) and build every table."""
        b = _check_betas(_host64(betas), clause)
        log_ab = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(torch.log1p(-b), 0)])
        ab = torch.exp(log_ab)
        one_m = -torch.expm1(log_ab)
        if not bool((ab[1:] > 0).all()):
            raise DomainError(clause, "need 0 < alpha_bar_k < 1 in float64 for every k (alpha_bar underflows)")
        beta = torch.cat([torch.zeros(1, dtype=F64), b])
        beta_tilde = torch.zeros_like(beta)
        beta_tilde[1:] = one_m[:-1] / one_m[1:] * b

        def cast(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype)

        return cls(cast(beta), cast(ab), cast(one_m), cast(ab.sqrt()), cast(one_m.sqrt()), cast(beta_tilde), b, ab,
                   one_m)

    @classmethod
    def linear(cls, K: int, beta_start: float = 1e-4, beta_end: float = 0.02, **kw: object) -> Schedule:
        return cls.from_betas(linear(K, beta_start, beta_end), **kw)  # type: ignore[arg-type]

    @classmethod
    def vp(cls, K: int, beta_min: float = 0.1, beta_max: float = 10.0, **kw: object) -> Schedule:
        return cls.from_betas(vp(K, beta_min, beta_max), **kw)  # type: ignore[arg-type]

    @classmethod
    def cosine(cls, K: int, s: float = 0.008, max_beta: float = 0.999, **kw: object) -> Schedule:
        return cls.from_betas(cosine(K, s, max_beta), **kw)  # type: ignore[arg-type]

    def ab64(self, k: int) -> float:
        """alpha_bar_k as a Python float (float64 table)."""
        return float(self.alpha_bar64[k])

    def om64(self, k: int) -> float:
        """1 - alpha_bar_k as a Python float (float64 table, no cancellation near alpha_bar = 1)."""
        return float(self.one_minus_alpha_bar64[k])

    def steps(self, k: int | Tensor, B: int, clause: str, lo: int = 1) -> Tensor:
        """Steps as a (B,) int64 tensor on the schedule's device; k is an int or a scalar/(B,) tensor."""
        if isinstance(k, int):
            require(lo <= k <= self.K, clause, f"k must lie in [{lo}, {self.K}], got {k!r}")
            return torch.full((B,), k, dtype=torch.int64, device=self.device)
        require(not k.is_floating_point() and not k.is_complex(), clause, f"k must be an integer tensor, got {k.dtype}")
        require(k.ndim == 0 or tuple(k.shape) == (B,), clause,
                f"k must be a scalar or shape ({B},), got {tuple(k.shape)}")
        require_values((k >= lo) & (k <= self.K), clause, f"k must lie in [{lo}, {self.K}]")
        return k.to(device=self.device, dtype=torch.int64).expand(B)


def at(table: Tensor, k: Tensor) -> Tensor:
    """table[k] as a (B, 1) column, so it broadcasts over the feature axis."""
    return table[k].unsqueeze(-1)
