"""Pieces of the suite's harness that decide what a report may claim."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffrl_ref.suite import check, stats


def test_unobservable_examples_are_discarded_not_passed() -> None:
    """Examples where a property cannot be observed are dropped; the others are checked."""
    checked: list[int] = []

    @settings(max_examples=20, derandomize=True, database=None, deadline=None)
    @given(st.integers(0, 99))
    def prop(i: int) -> None:
        check.observable(i % 2 == 0, "not observable: odd i")
        checked.append(i)

    check.reset_test_state()
    prop()
    assert checked and all(i % 2 == 0 for i in checked) and check.OBSERVED[0] >= len(checked)


def test_a_property_never_observable_is_skipped_with_its_reason() -> None:
    """With no observable example the test ends in a skip (reported not-checked), never a pass."""

    @settings(max_examples=20, derandomize=True, database=None, deadline=None)
    @given(st.integers(0, 99))
    def prop(i: int) -> None:
        check.observable(False, "not observable: never")

    check.reset_test_state()
    with pytest.raises(pytest.skip.Exception, match="not observable: never"):
        prop()
    assert len(check.NOT_OBSERVABLE) == check.MAX_UNOBSERVED


def test_statistical_checks_record_their_level() -> None:
    """Every statistical check spends its level, so the report's false-alarm bound counts it."""
    import numpy as np

    stats.TEST_LEVELS.clear()
    x = np.random.default_rng(0).standard_normal((1000, 2))
    stats.assert_gaussian_moments("ddpm.noise", x, 0.0, 1.0, alpha=1e-6)
    stats.assert_mean_within("ddpm.noise", x[:, 0], 0.0, 1.0, alpha=2e-6)
    assert stats.TEST_LEVELS == [1e-6, 2e-6]
    with pytest.raises(AssertionError, match="ddpm.noise"):
        stats.assert_mean_within("ddpm.noise", x[:, 0] + 1.0, 0.0, 1.0)
