"""Conversions between the suite's NumPy signatures and the production path's tensors.

The bridge only translates: NumPy float64 in, tensors of the adapter's dtype and device to the
production function, float64 NumPy out; networks given as NumPy callables become tensor
callables. Steps are checked to be integers here (a float 2.5 must not be truncated to 2).
Every domain check of a clause lives in :mod:`diffrl_ref.fast` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from ...fast._checks import DomainError
from ...fast.schedule import Schedule

Array = NDArray[np.float64]


class Bridge:
    def __init__(self, dtype: str, device: str) -> None:
        self.dtype: torch.dtype = getattr(torch, dtype)
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return f"<bridge {self.dtype} {self.device}>"

    def x(self, a: ArrayLike, cid: str = "", name: str = "input") -> Tensor:
        """A float tensor in the working dtype (non-numeric input is a DomainError)."""
        try:
            arr = np.asarray(a, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DomainError(cid, f"{name} must be numeric ({exc})") from None
        return torch.as_tensor(arr, device=self.device).to(self.dtype)

    def opt(self, a: ArrayLike | None, cid: str = "", name: str = "input") -> Tensor | None:
        return None if a is None else self.x(a, cid, name)

    def k(self, a: ArrayLike, cid: str, name: str = "k") -> Tensor:
        """Integer step(s) as an int64 tensor; an integral float is accepted, 2.5 is not."""
        arr = np.asarray(a)
        if arr.dtype.kind == "f":
            if not bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))):
                raise DomainError(cid, f"{name} must be an integer, got {a!r}")
        elif arr.dtype.kind not in "iu":
            raise DomainError(cid, f"{name} must be an integer, got {a!r}")
        return torch.as_tensor(arr.astype(np.int64), device=self.device)

    def sched(self, betas: ArrayLike, cid: str) -> Schedule:
        return Schedule.from_betas(self.x64(betas, cid, "betas"), dtype=self.dtype, device=self.device, clause=cid)

    def x64(self, a: ArrayLike, cid: str, name: str) -> Tensor:
        try:
            return torch.as_tensor(np.asarray(a, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise DomainError(cid, f"{name} must be numeric ({exc})") from None

    @staticmethod
    def out(t: Tensor) -> Any:
        """A tensor as NumPy: floats as float64, integers and booleans as they are."""
        t = t.detach().cpu()
        if t.is_floating_point():
            return t.to(torch.float64).numpy()
        return t.numpy()

    def args_out(self, args: tuple[Any, ...]) -> list[Any]:
        return [self.out(a) if isinstance(a, Tensor) else a for a in args]

    def net(self, fn: Callable[..., Any], cid: str = "", name: str = "network") -> Callable[..., Tensor]:
        """A NumPy network as a tensor network: tensor arguments go out as NumPy, the output comes back."""

        def call(*args: Any) -> Tensor:
            return self.x(fn(*self.args_out(args)), cid, f"{name} output")

        return call
