"""Implementations under test.

An *adapter* is any object with these attributes:

``name``, ``version``
    shown in the report header;
``dtype``
    ``"float64"``, ``"float32"`` or ``"bfloat16"``: the precision the implementation computes
    in; each clause's tolerance rule is evaluated with this dtype's eps;
``device``
    ``"cpu"`` or ``"cuda"``;
``<family>.<name>`` for each clause it implements
    a callable with the reference function's signature
    (``diffrl_ref.reference.<family>.<name>``): NumPy float64 arrays in, NumPy arrays out.
    It may compute internally in any framework, dtype and device. A clause whose callable is
    missing is reported as *not implemented*, not as a failure.

:class:`Adapter` is a convenient concrete form; ``diffrl conform --impl pkg.module:obj``
accepts an adapter object, or a zero-argument callable returning one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any, Protocol, runtime_checkable

DTYPES = ("float64", "float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")


@runtime_checkable
class Implementation(Protocol):
    """The typed part of the adapter protocol; clause callables are looked up by name."""

    name: str
    version: str
    dtype: str
    device: str


@dataclass(repr=False)
class Adapter:
    """An implementation: metadata plus one namespace per spec family."""

    name: str
    version: str
    dtype: str = "float64"
    device: str = "cpu"
    families: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"adapter {self.name}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise ValueError(f"adapter {self.name}: device must be one of {DEVICES}, got {self.device!r}")

    def __repr__(self) -> str:
        # Short: hypothesis prints the adapter in every failing example.
        return f"<adapter {self.name} {self.version} dtype={self.dtype} device={self.device}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        # hypothesis's pretty-printer expands dataclasses field by field unless told otherwise.
        p.text(repr(self))

    def __getattr__(self, family: str) -> Any:
        fams = self.__dict__.get("families", {})
        if family in fams:
            return fams[family]
        raise AttributeError(family)

    def with_overrides(self, name: str, overrides: Mapping[str, Callable[..., Any]]) -> Adapter:
        """A copy with some clause callables replaced (used to plant bugs)."""
        fams: dict[str, Any] = {}
        for fam, ns in self.families.items():
            fams[fam] = SimpleNamespace(**{k: getattr(ns, k) for k in dir(ns) if not k.startswith("_")})
        for cid, fn in overrides.items():
            fam, fname = cid.split(".")
            fams.setdefault(fam, SimpleNamespace())
            setattr(fams[fam], fname, fn)
        return Adapter(name, self.version, self.dtype, self.device, fams, self.description)


def clause_callable(impl: Any, clause_id: str) -> Callable[..., Any] | None:
    """The implementation's callable for ``clause_id``, or None when it does not provide one."""
    fam, fname = clause_id.split(".")
    ns = getattr(impl, fam, None)
    fn = getattr(ns, fname, None) if ns is not None else None
    return fn if callable(fn) else None


def reference_adapter(dtype: str = "float64", device: str = "cpu") -> Adapter:
    """The float64 NumPy reference, adapted to itself."""
    from .. import __version__, spec

    if (dtype, device) != ("float64", "cpu"):
        raise ValueError(f"the reference computes in float64 on cpu only, not {dtype} on {device}")

    fams: dict[str, ModuleType] = {}
    for fam in spec.families():
        try:
            fams[fam.name] = importlib.import_module(f"diffrl_ref.reference.{fam.name}")
        except ModuleNotFoundError:
            continue
    return Adapter("reference", __version__, "float64", "cpu", fams,
                   "diffrl_ref.reference: float64 NumPy/SciPy oracle")


#: Built-in implementations: name -> (factory path, one-line description).
BUILTINS: dict[str, tuple[str, str]] = {
    "fast": ("diffrl_ref.adapters.fast:adapter",
             "PyTorch production path, diffrl_ref.fast (float32 on cpu unless --dtype/--device)"),
    "reference": ("diffrl_ref.suite.adapter:reference_adapter", "float64 NumPy/SciPy reference (the oracle itself)"),
    "diffusers-ddpm": ("diffrl_ref.adapters.diffusers:ddpm",
                       "HuggingFace diffusers DDPMScheduler (needs diffusers, torch)"),
    "diffusers-ddim": ("diffrl_ref.adapters.diffusers:ddim",
                       "HuggingFace diffusers DDIMScheduler (needs diffusers, torch)"),
    "diffusers-dpmsolver": ("diffrl_ref.adapters.diffusers:dpmsolver",
                            "HuggingFace diffusers DPMSolverMultistepScheduler (needs diffusers, torch)"),
}


def _load_object(path: str) -> Any:
    if ":" not in path:
        raise ValueError(f"--impl {path!r}: expected a built-in name ({', '.join(BUILTINS)}) or package.module:object")
    mod_name, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"--impl {path!r}: cannot import {mod_name!r} ({exc})") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--impl {path!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def resolve(name: str, *, dtype: str | None = None, device: str | None = None) -> Any:
    """Turn ``--impl NAME`` into an adapter object, checking the protocol's metadata."""
    target = BUILTINS[name][0] if name in BUILTINS else name
    obj = _load_object(target)
    if not isinstance(obj, Implementation) and callable(obj):
        kwargs = {k: v for k, v in (("dtype", dtype), ("device", device)) if v is not None}
        obj = obj(**kwargs)
    elif dtype is not None or device is not None:
        raise ValueError(f"--impl {name!r} is an adapter object; it cannot take --dtype/--device")
    if not isinstance(obj, Implementation):
        raise ValueError(f"--impl {name!r}: object lacks the adapter attributes name, version, dtype, device")
    if obj.dtype not in DTYPES:
        raise ValueError(f"--impl {name!r}: dtype {obj.dtype!r} is not one of {DTYPES}")
    if obj.device not in DEVICES:
        raise ValueError(f"--impl {name!r}: device {obj.device!r} is not one of {DEVICES}")
    return obj
