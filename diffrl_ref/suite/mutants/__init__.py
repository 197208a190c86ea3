"""Planted bugs: realistic wrong implementations the suite must reject.

Each :class:`Mutant` replaces one or more clause callables of the reference adapter with a
buggy version. The self-test (``diffrl selftest`` and ``tests/test_planted_bugs.py``) runs the
conformance tests of the mutant's clause against it and checks that every property named in
``caught_by`` fails. Together the mutants cover every property of every clause, which is how
the suite shows that each of its checks can fail.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mutant:
    name: str
    clause: str
    caught_by: tuple[str, ...]
    description: str
    patch: Mapping[str, Callable[..., Any]]
    #: The implementation the bug is planted in: ``"reference"`` (the float64 oracle) or
    #: ``"fast"`` (the production path in float32 on cpu; patches take the adapter's NumPy
    #: signature and usually wrap a buggy copy of a :mod:`diffrl_ref.fast` function).
    target: str = "reference"


def all_mutants() -> list[Mutant]:
    """Every mutant defined in this package's family modules, in a stable order."""
    out: list[Mutant] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        out.extend(getattr(mod, "MUTANTS", []))
    names = [m.name for m in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate mutant names: {sorted(dup)}")
    return out
