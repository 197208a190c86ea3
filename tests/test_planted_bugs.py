"""The self-test's machinery measures what it says.

The whole self-test (every planted bug against the whole suite, ``diffrl selftest -n 2``) runs
in CI as tox's ``selftest`` env and fails unless every bug is caught on its own clause. These
tests check the machinery that verdict rests on: blame is read off the failing tests, a crash
that names no clause is not a catch, skipping the tests a bug cannot reach changes nothing, and
every property and every production module has a planted bug.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from diffrl_ref import spec
from diffrl_ref.suite import selftest
from diffrl_ref.suite.mutants import Mutant, all_mutants

MUTANTS = {m.name: m for m in all_mutants()}


def test_every_property_has_a_planted_bug() -> None:
    gaps = selftest.coverage_gaps()
    assert not gaps, f"properties that no planted bug exercises (cannot show they can fail): {gaps}"


def test_every_production_module_has_a_planted_bug() -> None:
    """At least one bug is planted in the production path (float32) per family module of diffrl_ref.fast."""
    planted = {m.clause.split(".")[0] for m in MUTANTS.values() if m.target == "fast"}
    missing = sorted({f.name for f in spec.families()} - planted)
    assert not missing, f"families whose production module has no planted bug: {missing}"


def test_a_real_bug_is_caught_on_its_clause() -> None:
    v = selftest.run_mutant(MUTANTS["alpha_bar_shifted_by_one"])
    assert v.status == "caught" and "boundary" in v.failed_props, v.failed_clauses()
    assert v.ran < len(selftest.load_conformance())  # tests that never call alpha_bar were not re-run


def test_blame_is_read_off_the_failing_tests() -> None:
    """A bug in schedule.alpha_bar filed under another clause is reported as caught elsewhere, not caught."""
    wrong_label = replace(MUTANTS["alpha_bar_shifted_by_one"], name="mislabelled", clause="schedule.linear",
                          caught_by=("endpoints",))
    v = selftest.run_mutant(wrong_label)
    assert not v.caught and v.status == "elsewhere", v.failed_clauses()
    assert "schedule.alpha_bar" in v.elsewhere


def _raising(exc: BaseException) -> Any:
    def fn(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fn


def test_a_crash_naming_no_clause_is_not_a_catch() -> None:
    m = Mutant("crash", "schedule.alpha_bar", ("boundary",), "raises RuntimeError('boom')",
               {"schedule.alpha_bar": _raising(RuntimeError("boom"))})
    v = selftest.run_mutant(m)
    assert not v.caught and v.status == "crash-only" and v.crashes, v.failed_clauses()


def test_an_error_naming_the_clause_is_a_catch() -> None:
    m = Mutant("refuses", "schedule.alpha_bar", ("boundary",), "raises ValueError naming the clause",
               {"schedule.alpha_bar": _raising(ValueError("schedule.alpha_bar: refused"))})
    v = selftest.run_mutant(m)
    assert v.caught and v.failed_props["boundary"].startswith("ValueError: schedule.alpha_bar"), v.failed_clauses()


def test_pruning_changes_no_verdict() -> None:
    """Re-running every test of the suite gives the same failures as running only those the bug can reach (one
    bug whose patched callable most tests never call, so that most of the suite is skipped when pruned)."""
    m = MUTANTS["ddpm_noise_no_sqrt"]
    pruned, full = selftest.run_mutant(m), selftest.run_mutant(m, prune=False)
    assert full.ran == len(selftest.load_conformance()) > pruned.ran
    assert sorted(map(repr, pruned.failures)) == sorted(map(repr, full.failures))


def test_the_unmodified_reference_passes_every_test() -> None:
    """The self-test's baseline: with no bug planted, no test of the suite fails or is skipped."""
    tr = selftest.cached_trace("reference")
    assert tr.not_passed == {}, tr.not_passed
    assert set(tr.calls) == {r.test_id for r in selftest.load_conformance().values()}
