"""Domain checks shared by the reference functions.

Every violation raises :class:`DomainError` (a ``ValueError``) whose message starts with the
clause ID, so a user can look the condition up in the spec.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]


class DomainError(ValueError):
    """Input outside a clause's valid domain."""

    def __init__(self, clause: str, condition: str) -> None:
        super().__init__(f"{clause}: {condition}")
        self.clause = clause
        self.condition = condition


def require(ok: bool | np.bool_, clause: str, condition: str) -> None:
    if not bool(ok):
        raise DomainError(clause, condition)


def as_f64(x: ArrayLike, clause: str, name: str) -> Array:
    """Convert to float64 and reject NaN/inf, naming the argument."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DomainError(clause, f"{name} must be numeric ({exc})") from None
    require(bool(np.all(np.isfinite(a))), clause, f"{name} must be finite (no NaN or inf)")
    return a


def as_batch(x: ArrayLike, clause: str, name: str) -> Array:
    """A batch of vectors, shape (B, d)."""
    a = as_f64(x, clause, name)
    require(a.ndim == 2, clause, f"{name} must have shape (B, d), got shape {a.shape}")
    return a


def same_shape(clause: str, **arrays: Any) -> None:
    shapes = {n: np.shape(a) for n, a in arrays.items()}
    first = next(iter(shapes.values()))
    require(
        all(s == first for s in shapes.values()),
        clause,
        "shapes must match, got " + ", ".join(f"{n}{s}" for n, s in shapes.items()),
    )


def as_betas(betas: ArrayLike, clause: str) -> Array:
    """beta_1..beta_K, each strictly inside (0, 1)."""
    b = as_f64(betas, clause, "betas")
    require(b.ndim == 1 and b.size >= 1, clause, f"betas must have shape (K,) with K >= 1, got {b.shape}")
    require(bool(np.all((b > 0) & (b < 1))), clause, "every beta_k must lie in (0, 1)")
    return b


def as_alpha_bar(alpha_bar: ArrayLike, clause: str) -> Array:
    """alpha_bar_0..alpha_bar_K with alpha_bar_0 = 1, strictly decreasing, inside (0, 1]."""
    a = as_f64(alpha_bar, clause, "alpha_bar")
    require(a.ndim == 1 and a.size >= 2, clause, f"alpha_bar must have shape (K+1,), got {a.shape}")
    require(a[0] == 1.0, clause, "alpha_bar[0] must equal 1 (alpha_bar_0 = 1, no noise)")
    require(bool(np.all(a > 0)), clause, "every alpha_bar_k must be > 0")
    require(bool(np.all(np.diff(a) < 0)), clause, "alpha_bar must be strictly decreasing in k")
    return a


def as_step(k: ArrayLike, K: int, clause: str, *, lo: int = 1, batch: int | None = None) -> NDArray[np.int64]:
    """Diffusion step(s) k, integers in [lo, K]; a scalar or one per batch row."""
    a = np.asarray(k)
    require(
        a.dtype.kind in "iu" or (a.dtype.kind == "f" and bool(np.all(a == np.round(a)))),
        clause,
        f"k must be an integer, got {k!r}",
    )
    a = a.astype(np.int64)
    require(bool(np.all((a >= lo) & (a <= K))), clause, f"k must lie in [{lo}, {K}], got {k!r}")
    if batch is not None:
        require(a.ndim == 0 or a.shape == (batch,), clause, f"k must be a scalar or shape ({batch},), got {a.shape}")
    return a


def column(c: NDArray[Any]) -> NDArray[Any]:
    """Per-row coefficient as a column, so it broadcasts over the feature axis of (B, d)."""
    return c[..., None] if c.ndim == 1 else c
