"""The production path (:mod:`diffrl_ref.fast`) as an implementation under test: ``--impl fast``.

One bridge module per spec family, ``diffrl_ref.adapters.fast.<family>``, with a function per
clause that takes the reference signature (NumPy in, NumPy out) plus the :class:`Bridge` as its
first argument; :func:`adapter` binds them for a dtype and a device.
"""

from __future__ import annotations

import functools
import importlib
from types import SimpleNamespace
from typing import Any

from ...suite.adapter import Adapter


class _Family(SimpleNamespace):
    def __repr__(self) -> str:
        return f"<{', '.join(sorted(vars(self)))}>"


def adapter(dtype: str = "float32", device: str = "cpu") -> Adapter:
    """The production path in ``dtype`` on ``device`` (float32 on cpu by default)."""
    from ... import __version__, spec

    try:
        import torch
    except ImportError as exc:
        raise ValueError(f"the production path needs torch ({exc}); install it, or run --impl reference") from None
    if dtype not in ("float64", "float32", "bfloat16", "float16"):
        raise ValueError(f"--impl fast: dtype must be float64, float32, bfloat16 or float16, got {dtype!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--impl fast --device cuda: torch sees no CUDA device")
    from ._bridge import Bridge

    bridge = Bridge(dtype, device)
    fams: dict[str, Any] = {}
    for fam in spec.families():
        mod_name = f"{__name__}.{fam.name}"
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name != mod_name:
                raise
            continue
        fns = {}
        for c in fam.clauses:
            name = c.id.split(".", 1)[1]
            fn = getattr(mod, name, None)
            if callable(fn):
                fns[name] = functools.update_wrapper(functools.partial(fn, bridge), fn)
        fams[fam.name] = _Family(**fns)
    return Adapter("fast", f"{__version__} (torch {torch.__version__})", dtype, device, fams,
                   "diffrl_ref.fast: batched PyTorch production path")
