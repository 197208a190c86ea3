"""Shared by the whole test suite."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _shared_selftest_traces(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The planted-bug tests need the clean run of the whole suite (selftest.cached_trace); compute it once for
    all xdist workers and the CLI runs they start, not once per process (DIFFRL_SELFTEST_CACHE, keyed by a hash
    of the code). A folder set by the caller is kept."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common folder
    os.environ.setdefault("DIFFRL_SELFTEST_CACHE", str(shared / "selftest-traces"))
