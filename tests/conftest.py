"""Shared by the whole test suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
#: the modules whose tests need the self-test's clean trace of the whole suite on the reference
_NEED_TRACE = {_TESTS, _TESTS / "test_planted_bugs.py", _TESTS / "test_cli.py"}
_state: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    """In the controlling process (not an xdist worker): give the session one folder for the self-test's clean traces
    (DIFFRL_SELFTEST_CACHE, keyed by a hash of the code; the workers and the CLI runs they start inherit it; a folder
    set by the caller is kept) and, when the planted-bug tests are selected, compute the reference's trace there in
    the background from the start, so that no worker sits idle waiting for it (it takes a minute on one core)."""
    if hasattr(config, "workerinput"):
        return
    if not os.environ.get("DIFFRL_SELFTEST_CACHE"):
        folder = tempfile.mkdtemp(prefix="diffrl-selftest-")
        _state["made"] = folder
        os.environ["DIFFRL_SELFTEST_CACHE"] = folder
    selected = {(config.invocation_params.dir / str(a).split("::")[0]).resolve() for a in config.args}
    if selected & _NEED_TRACE:
        _state["trace"] = subprocess.Popen(
            [sys.executable, "-c", "from diffrl_ref.suite import selftest; selftest.cached_trace('reference')"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=_TESTS.parent)


def pytest_unconfigure(config: pytest.Config) -> None:
    proc = _state.pop("trace", None)
    if isinstance(proc, subprocess.Popen) and proc.poll() is None:  # a short run that never needed it
        proc.terminate()
        proc.wait()
    made = _state.pop("made", None)
    if isinstance(made, str):
        shutil.rmtree(made, ignore_errors=True)
