"""Networks of the production path.

:class:`DiffusionQLNet` is the noise network of Diffusion-QL (Wang, Hunt and Zhou, ICLR 2023;
official code ``Zhendong-Wang/Diffusion-Policies-for-Offline-RL``, ``agents/model.py``): the
step k goes through a sinusoidal embedding of width 16 and a two-layer Mish MLP, is
concatenated with the noisy action and the state, and passes through three hidden layers of
256 units with Mish activations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


class _OneExpMish(torch.autograd.Function):
    """mish(x) = x tanh(softplus(x)) from one exponential: with e = exp(x) and n = e (e + 2),
    tanh(log(1 + e)) = n / (n + 2); mish'(x) = t + x (1 - t^2) e / (1 + e), t = n / (n + 2).

    ATen's CPU kernel evaluates exp, log1p and tanh per element and its backward recomputes them; on the
    2-core AMD EPYC machine it took 600 us forward and backward on a 256 x 256 float32 block against 322 us
    here (one thread, 2026-12-06), and Mish is about half of a Diffusion-QL step's time. x is clamped at
    20 inside the exponential: there t = 1 in float32 and float64, so mish(x) = x exactly as ATen's.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        e = torch.exp(x.clamp(max=20.0))
        n = e * (e + 2.0)
        t = n / (n + 2.0)
        ctx.save_for_backward(x, e, t)
        return x * t

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        x, e, t = ctx.saved_tensors
        out: Tensor = g * (t + x * (1.0 - t * t) * (e / (1.0 + e)))
        return out


class Mish(nn.Module):
    """nn.Mish with a faster CPU evaluation (:class:`_OneExpMish`) in float32 and float64; ATen's kernel
    elsewhere (one fused kernel on CUDA; half precisions, where exp(20) overflows float16)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
            out: Tensor = _OneExpMish.apply(x)  # type: ignore[no-untyped-call]
            return out
        return nn.functional.mish(x)


class SinusoidalEmbedding(nn.Module):
    """[sin(k w_j), cos(k w_j)], w_j = 10000^(-j / (dim/2 - 1)), j = 0..dim/2 - 1 (Vaswani et al. 2017)."""

    freqs: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalEmbedding: dim must be even and >= 4, got {dim}")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.arange(half) * (-math.log(10000.0) / (half - 1))),
                             persistent=False)

    def forward(self, k: Tensor) -> Tensor:
        angle = k.to(self.freqs.dtype).unsqueeze(-1) * self.freqs
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


class DiffusionQLNet(nn.Module):
    """eps_theta(a_k, k, s): Diffusion-QL's MLP (3 x 256, Mish, time embedding of width t_dim)."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256, t_dim: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.time = nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, 2 * t_dim), Mish(),
                                  nn.Linear(2 * t_dim, t_dim))
        layers: list[nn.Module] = []
        width = action_dim + t_dim + state_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), Mish()]
            width = hidden
        self.mid = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, action_dim)

    def forward(self, a_k: Tensor, k: Tensor, s: Tensor) -> Tensor:
        out: Tensor = self.out(self.mid(torch.cat([a_k, self.time(k), s], dim=-1)))
        return out
