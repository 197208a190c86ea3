"""The ``@clause`` decorator: ties a conformance test to one property of one spec clause."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Registered:
    clause_id: str
    prop: str
    func: Callable[..., Any]

    @property
    def test_id(self) -> str:
        return f"{self.func.__module__.rsplit('.', 1)[-1]}::{self.func.__name__}[{self.clause_id}]"


#: Every conformance test in import order, keyed by (module basename, function name).
REGISTRY: dict[tuple[str, str], Registered] = {}


def clause(clause_id: str, prop: str) -> Callable[[F], F]:
    """Mark a test as checking property ``prop`` of clause ``clause_id``.

    The test receives ``clause_id`` as a parameter, so its pytest id ends in ``[<clause id>]``
    and a failure names the clause. It must take only ``impl``, ``clause_id`` and the arguments
    hypothesis draws, so the planted-bug meta-tests can call it directly.
    """
    import pytest

    def deco(func: F) -> F:
        key = (func.__module__.rsplit(".", 1)[-1], func.__name__)
        REGISTRY[key] = Registered(clause_id, prop, func)
        marked = pytest.mark.clause(clause_id, prop)(func)
        return pytest.mark.parametrize("clause_id", [clause_id], ids=[clause_id])(marked)  # type: ignore[no-any-return]

    return deco


def for_clause(clause_id: str) -> list[Registered]:
    return [r for r in REGISTRY.values() if r.clause_id == clause_id]
