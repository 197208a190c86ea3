"""The production path: batched PyTorch implementations of the spec's clauses.

Clause ``family.name`` is ``diffrl_ref.fast.family.name`` (tensors in and out, a
:class:`~diffrl_ref.fast.schedule.Schedule` instead of ``betas``). Nothing here imports the
float64 reference: the reference stays an independent oracle, and ``diffrl conform`` (whose
default implementation is this package) checks every clause against it.

Design rules: float32 by default, any dtype and device; schedule coefficients computed once in
float64 and cast; samplers fold each step into a few scalar multiply-adds and run under
``torch.compile(fullgraph=True)`` and CUDA-graph capture (:mod:`diffrl_ref.fast.graphs`); input
checks that need a device sync are skipped while compiling or capturing and inside
:func:`unchecked`.
"""

from __future__ import annotations

from ._checks import DomainError, checking, unchecked
from .schedule import Schedule

__all__ = ["DomainError", "Schedule", "checking", "unchecked"]
