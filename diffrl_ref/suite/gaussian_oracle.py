"""Exact oracles from Gaussian data.

For data x_0 ~ N(m, diag(s2)) everything a diffusion model needs has a closed form: the
marginal q(x_t) = N(sqrt(ab) m, ab s2 + 1 - ab), the exact noise prediction
eps*(x, ab) = E[eps | x_t = x], the exact score, and the probability-flow ODE's map between
two noise levels. A sampler driven by eps* is an affine map of its input plus Gaussian noise,
so the exact law of its output can be propagated step by step (``propagate_affine``).
These are written independently of diffrl_ref.reference so they can check it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F = NDArray[np.float64]


@dataclass(frozen=True)
class GaussianData:
    """x_0 ~ N(mean, diag(var)); ``mean`` and ``var`` have shape (d,)."""

    mean: F
    var: F

    @staticmethod
    def of(mean: F | list[float], var: F | list[float]) -> GaussianData:
        m = np.asarray(mean, dtype=np.float64)
        return GaussianData(m, np.broadcast_to(np.asarray(var, dtype=np.float64), m.shape).copy())

    def marginal(self, alpha_bar: float | F) -> tuple[F, F]:
        """Mean and variance of q(x_t) at signal rate alpha_bar (per coordinate)."""
        ab = np.asarray(alpha_bar, dtype=np.float64)
        if ab.ndim == 1:
            ab = ab[:, None]
        return np.sqrt(ab) * self.mean, ab * self.var + (1 - ab)

    def eps(self, x: F, alpha_bar: float | F) -> F:
        """E[eps | x_t = x] = sqrt(1 - ab) (x - sqrt(ab) m) / (ab s2 + 1 - ab)."""
        ab = np.asarray(alpha_bar, dtype=np.float64)
        if ab.ndim == 1:
            ab = ab[:, None]
        mu, v = self.marginal(ab)
        return np.sqrt(1 - ab) * (x - mu) / v

    def score(self, x: F, alpha_bar: float | F) -> F:
        """grad_x log q_t(x) = -(x - sqrt(ab) m) / (ab s2 + 1 - ab)."""
        mu, v = self.marginal(alpha_bar)
        return -(x - mu) / v

    def flow(self, x: F, ab_from: float, ab_to: float) -> F:
        """Probability-flow ODE solution from noise level ab_from to ab_to (exact).

        For Gaussian data the flow is affine and keeps the standardised variable fixed:
        (x_to - mu_to) / sd_to = (x_from - mu_from) / sd_from.
        """
        mu_a, v_a = self.marginal(ab_from)
        mu_b, v_b = self.marginal(ab_to)
        return mu_b + np.sqrt(v_b / v_a) * (x - mu_a)


def affine_coefficients(step: Callable[[F], F], d: int) -> tuple[F, F]:
    """For a step x -> A x + b that acts coordinatewise, recover (A, b) per coordinate."""
    zero = np.zeros((1, d))
    one = np.ones((1, d))
    b = step(zero)[0]
    return step(one)[0] - b, b


def propagate_affine(mean: F, var: F, A: F, b: F, noise_var: F | float) -> tuple[F, F]:
    """Law of A x + b + sqrt(noise_var) z for x ~ N(mean, diag(var)), z ~ N(0, I) independent."""
    return A * mean + b, A**2 * var + noise_var
