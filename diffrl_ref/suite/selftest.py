"""Run the conformance tests against every planted bug and report what was caught."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from .adapter import reference_adapter
from .clause import REGISTRY, Registered
from .mutants import Mutant, all_mutants


def load_conformance() -> dict[tuple[str, str], Registered]:
    """Import every conformance module (registering its tests) and return the registry."""
    pkg = importlib.import_module("diffrl_ref.conformance")
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("test_"):
            importlib.import_module(f"diffrl_ref.conformance.{info.name}")
    return REGISTRY


@dataclass
class Verdict:
    mutant: Mutant
    failed_props: dict[str, str] = field(default_factory=dict)  # property -> first failure message
    errors: list[str] = field(default_factory=list)

    @property
    def caught(self) -> bool:
        """Caught on the right clause by every property it names."""
        return all(p in self.failed_props for p in self.mutant.caught_by) and not self.errors

    @property
    def missed(self) -> list[str]:
        return [p for p in self.mutant.caught_by if p not in self.failed_props]


def run_mutant(m: Mutant) -> Verdict:
    from hypothesis import settings

    from . import profiles  # noqa: F401 - registers the profiles

    settings.load_profile("meta")
    impl = reference_adapter().with_overrides(f"mutant:{m.name}", m.patch)
    v = Verdict(m)
    for reg in load_conformance().values():
        if reg.clause_id != m.clause or reg.prop in v.failed_props:
            continue
        try:
            reg.func(impl=impl, clause_id=reg.clause_id)
        except AssertionError as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if m.clause not in str(exc):
                v.errors.append(f"{reg.test_id}: failure message does not name {m.clause}: {msg}")
            v.failed_props[reg.prop] = msg
        except Exception as exc:  # a crash is a catch too, but must still name the clause
            v.failed_props[reg.prop] = f"{type(exc).__name__}: {exc}"
    return v


def run_all(clause_prefix: str = "") -> list[Verdict]:
    return [run_mutant(m) for m in all_mutants() if m.clause.startswith(clause_prefix)]


def coverage_gaps() -> list[str]:
    """(clause, property) pairs no mutant claims to be caught by."""
    from .. import spec

    claimed = {(m.clause, p) for m in all_mutants() for p in m.caught_by}
    return [f"{c.id}:{p.name}" for c in spec.clauses().values() for p in c.properties if (c.id, p.name) not in claimed]


def summary(verdicts: list[Verdict]) -> dict[str, Any]:
    caught = sum(v.caught for v in verdicts)
    return {"mutants": len(verdicts), "caught": caught,
            "fraction": caught / len(verdicts) if verdicts else 1.0,
            "missed": [{"mutant": v.mutant.name, "clause": v.mutant.clause, "missed": v.missed, "errors": v.errors}
                       for v in verdicts if not v.caught]}
