"""Float64 NumPy/SciPy reference implementation: one function per spec clause.

Clause ``family.name`` is implemented by ``diffrl_ref.reference.family.name``. This package
imports nothing from any production path, so it stays an independent oracle.
"""

from ._checks import DomainError

__all__ = ["DomainError"]
