"""Bridge for family ``qmix``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from ...fast import qmix as F
from ._bridge import Bridge


def _hyper(b: Bridge, hyper: Any, cid: str) -> Any:
    """The suite's NumPy Hypernetworks as tensor ones (anything else goes on for the clause to reject)."""
    if isinstance(hyper, tuple) and len(hyper) == 4 and all(callable(f) for f in hyper):
        return F.Hypernetworks(*(b.net(f, cid, f"hyper.{n}") for n, f in zip(F.Hypernetworks._fields, hyper,
                                                                                strict=True)))
    return hyper


def _mask(b: Bridge, avail: ArrayLike | None, cid: str) -> torch.Tensor | None:
    """An availability mask: booleans stay boolean, numbers go in the working dtype (the clause checks 0/1)."""
    if avail is None:
        return None
    m = np.asarray(avail)
    return torch.as_tensor(m, device=b.device) if m.dtype == np.bool_ else b.x(m, cid, "avail")


def mixer(b: Bridge, q: ArrayLike, s: ArrayLike, hyper: Any) -> Any:
    cid = "qmix.mixer"
    return b.out(F.mixer(b.x(q, cid, "q"), b.x(s, cid, "s"), _hyper(b, hyper, cid)))


def greedy_actions(b: Bridge, q_values: ArrayLike, avail: ArrayLike | None = None) -> Any:
    cid = "qmix.greedy_actions"
    return b.out(F.greedy_actions(b.x(q_values, cid, "q_values"), _mask(b, avail, cid)))


def igm(b: Bridge, q_values: ArrayLike, q_tot: ArrayLike, avail: ArrayLike | None = None, atol: float = 0.0) -> Any:
    cid = "qmix.igm"
    return b.out(F.igm(b.x(q_values, cid, "q_values"), b.x(q_tot, cid, "q_tot"), _mask(b, avail, cid), atol))
