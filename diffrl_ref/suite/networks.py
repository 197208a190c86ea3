"""Small networks given as arrays, for feeding the very same function to two implementations.

The RL clauses take their networks (eps_theta, Q_phi, psi, nu, mixers) as plain callables.
Conformance tests build them here from a fixed seed, so a failure is reproducible and an
implementation in any framework can be handed the same weights (``MLP.params``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F = NDArray[np.float64]

ACTIVATIONS: dict[str, Callable[[F], F]] = {
    "mish": lambda x: x * np.tanh(np.logaddexp(0.0, x)),
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


@dataclass(frozen=True)
class MLP:
    """y = W_L act(... act(W_1 x + b_1) ...) + b_L, weights as float64 arrays (row-vector convention).

    Batch-invariant: a row's output is bitwise the same whatever rows it is evaluated with
    (einsum's plain loops, not BLAS, whose blocking depends on the batch), so an implementation
    may batch network calls (conditional and unconditional together, say) without changing them.
    """

    params: tuple[tuple[F, F], ...]
    activation: str = "mish"

    @staticmethod
    def init(seed: int, sizes: list[int], activation: str = "mish", scale: float = 1.0) -> MLP:
        """LeCun-normal weights scaled by ``scale``, small random biases; deterministic in ``seed``."""
        rng = np.random.default_rng(seed)
        params = tuple(
            (rng.standard_normal((n_in, n_out)) * scale / np.sqrt(n_in), 0.1 * rng.standard_normal(n_out))
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        return MLP(params, activation)

    def __call__(self, x: F) -> F:
        act = ACTIVATIONS[self.activation]
        h = np.asarray(x, dtype=np.float64)
        for i, (w, b) in enumerate(self.params):
            h = np.einsum("bi,io->bo", h, w, optimize=False) + b
            if i < len(self.params) - 1:
                h = act(h)
        return h


def time_embedding(k: NDArray[np.int64] | int, dim: int = 8) -> F:
    """Sinusoidal embedding of the diffusion step (Vaswani et al.), shape (B, dim)."""
    kk = np.atleast_1d(np.asarray(k, dtype=np.float64))[:, None]
    freqs = np.exp(-np.log(10000.0) * np.arange(dim // 2) / max(dim // 2 - 1, 1))
    return np.concatenate([np.sin(kk * freqs), np.cos(kk * freqs)], axis=1)


def eps_network(seed: int, x_dim: int, cond_dim: int = 0, hidden: int = 16, emb: int = 8,
                scale: float = 1.0) -> Callable[..., F]:
    """A noise-prediction network eps(x, k[, c]) -> (B, x_dim): an MLP on [x, emb(k), c]."""
    net = MLP.init(seed, [x_dim + emb + cond_dim, hidden, hidden, x_dim], "mish", scale)

    def eps(x: F, k: NDArray[np.int64] | int, c: F | None = None) -> F:
        x = np.asarray(x, dtype=np.float64)
        e = np.broadcast_to(time_embedding(k, emb), (x.shape[0], emb))
        parts = [x, e] + ([np.asarray(c, dtype=np.float64)] if cond_dim else [])
        return net(np.concatenate(parts, axis=1))

    return eps


def q_network(seed: int, s_dim: int, a_dim: int, hidden: int = 16, scale: float = 1.0) -> Callable[[F, F], F]:
    """A critic Q(s, a) -> (B,)."""
    net = MLP.init(seed, [s_dim + a_dim, hidden, hidden, 1], "mish", scale)

    def q(s: F, a: F) -> F:
        return net(np.concatenate([np.asarray(s, np.float64), np.asarray(a, np.float64)], axis=1))[:, 0]

    return q
