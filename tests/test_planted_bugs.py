"""Every planted bug is caught, on its own clause, by every property it names.

This is how the suite proves each of its checks can fail: together the mutants cover every
(clause, property) pair of the spec.
"""

from __future__ import annotations

import pytest

from diffrl_ref.suite import selftest
from diffrl_ref.suite.mutants import Mutant, all_mutants

MUTANTS = all_mutants()


@pytest.mark.parametrize("mutant", MUTANTS, ids=[f"{m.clause}:{m.name}" for m in MUTANTS])
def test_planted_bug_is_caught(mutant: Mutant) -> None:
    v = selftest.run_mutant(mutant)
    assert not v.errors, "\n".join(v.errors)
    assert not v.missed, (f"{mutant.clause}: planted bug {mutant.name!r} ({mutant.description}) "
                          f"was not caught by properties {v.missed}; caught by {sorted(v.failed_props)}")


def test_every_property_has_a_planted_bug() -> None:
    gaps = selftest.coverage_gaps()
    assert not gaps, f"properties that no planted bug exercises (cannot show they can fail): {gaps}"


def test_the_reference_itself_passes() -> None:
    """A mutant with no patch must be caught by nothing: the self-test is not trivially failing."""
    clean = Mutant("no_bug", "schedule.alpha_bar", ("boundary",), "unchanged reference", {})
    v = selftest.run_mutant(clean)
    assert v.failed_props == {}, v.failed_props
