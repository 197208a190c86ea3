"""Networks of the production path.

:class:`DiffusionQLNet` is the noise network of Diffusion-QL (Wang, Hunt and Zhou, ICLR 2023;
official code ``Zhendong-Wang/Diffusion-Policies-for-Offline-RL``, ``agents/model.py``): the
step k goes through a sinusoidal embedding of width 16 and a two-layer Mish MLP, is
concatenated with the noisy action and the state, and passes through three hidden layers of
256 units with Mish activations.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


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
        self.time = nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, 2 * t_dim), nn.Mish(),
                                  nn.Linear(2 * t_dim, t_dim))
        layers: list[nn.Module] = []
        width = action_dim + t_dim + state_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Mish()]
            width = hidden
        self.mid = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, action_dim)

    def forward(self, a_k: Tensor, k: Tensor, s: Tensor) -> Tensor:
        out: Tensor = self.out(self.mid(torch.cat([a_k, self.time(k), s], dim=-1)))
        return out
