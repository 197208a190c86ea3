"""Hypothesis profiles of the suite: ``ci`` (default), ``thorough`` and ``meta``."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, settings

CI_EXAMPLES = 25


def register() -> None:
    common: dict[str, Any] = dict(
        deadline=None,
        print_blob=True,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    # ci: derandomized (the same examples every run, so safe under pytest-xdist), few examples.
    settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, database=None, **common)
    # thorough: 10x the examples, fresh random examples each run.
    settings.register_profile("thorough", max_examples=10 * CI_EXAMPLES, **common)
    # meta: the planted-bug self-test; derandomized, no shrinking (only the verdict matters).
    settings.register_profile("meta", max_examples=CI_EXAMPLES, derandomize=True, database=None,
                              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target], **common)


register()
