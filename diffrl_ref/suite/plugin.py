"""pytest plugin behind ``diffrl conform`` and ``pytest --pyargs diffrl_ref.conformance``.

Options: ``--impl NAME`` (or env ``DIFFRL_IMPL``), ``--impl-dtype``, ``--impl-device``,
``--deviations PATH``, ``--diffrl-report PATH``, ``--allow-incomplete``; the hypothesis
profile comes from ``--hypothesis-profile`` (``ci`` by default, or env ``DIFFRL_PROFILE``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from .. import spec
from . import profiles
from . import report as report_mod
from .adapter import BUILTINS, resolve

DEFAULT_IMPL = "fast"

profiles.register()
settings.load_profile(os.environ.get("DIFFRL_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("diffrl", "diffrl-ref conformance")
    g.addoption("--impl", default=os.environ.get("DIFFRL_IMPL", DEFAULT_IMPL),
                help=f"implementation under test: {', '.join(BUILTINS)} or package.module:object")
    g.addoption("--impl-dtype", default=os.environ.get("DIFFRL_DTYPE"), help="dtype for adapters that take one")
    g.addoption("--impl-device", default=os.environ.get("DIFFRL_DEVICE"), help="device for adapters that take one")
    g.addoption("--deviations", default=None, help="known-deviations YAML (default: the built-in file for --impl)")
    g.addoption("--diffrl-report", default=None, help="write the per-clause JSON report here")
    g.addoption("--allow-incomplete", action="store_true", default=False,
                help="exit 0 although some properties were not checked (skipped); they are still reported")


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--impl")
    try:
        impl = resolve(name, dtype=config.getoption("--impl-dtype"), device=config.getoption("--impl-device"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[IMPL_KEY] = impl
    _STATE_REPORTS.clear()
    try:
        deviations = report_mod.load_deviations(impl, config.getoption("--deviations"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[STATE_KEY] = report_mod.RunState(impl_arg=name, impl=impl, deviations=deviations)


IMPL_KEY = pytest.StashKey[Any]()
STATE_KEY = pytest.StashKey["report_mod.RunState"]()


@pytest.fixture(scope="session")
def impl(request: pytest.FixtureRequest) -> Any:
    """The implementation under test (resolved from --impl)."""
    return request.config.stash[IMPL_KEY]


def pytest_report_header(config: pytest.Config) -> list[str]:
    impl = config.stash[IMPL_KEY]
    profile = settings._current_profile  # noqa: SLF001 - hypothesis exposes no public getter
    return [
        f"diffrl-ref conformance suite {spec.version()} ({len(spec.clauses())} clauses)",
        f"implementation: {impl.name} {impl.version} (--impl {config.getoption('--impl')}) "
        f"dtype={impl.dtype} device={impl.device}",
        f"hypothesis profile: {profile}",
    ]


@pytest.hookimpl(trylast=True)  # after -k/-m deselection, so only selected tests count
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[STATE_KEY]
    state.filtered = bool(config.getoption("keyword") or config.getoption("markexpr"))
    known = spec.clauses()
    for item in items:
        mark = item.get_closest_marker("clause")
        if mark is None:
            continue
        cid, prop = mark.args
        if cid not in known:
            raise pytest.UsageError(f"{item.nodeid}: names clause {cid!r}, which is not in the spec")
        if prop not in {p.name for p in known[cid].properties}:
            raise pytest.UsageError(f"{item.nodeid}: clause {cid} has no property {prop!r}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # The call phase of every test, and the setup phase where it did not pass (then there is no call).
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _STATE_REPORTS.append(report)


_STATE_REPORTS: list[pytest.TestReport] = []
RESULT_KEY = pytest.StashKey[dict[str, Any]]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput") or STATE_KEY not in config.stash:
        return  # a pytest-xdist worker: the controller reports
    result = config.stash[STATE_KEY].build(_STATE_REPORTS)
    config.stash[RESULT_KEY] = result
    incomplete = result["summary"]["incomplete"]
    if incomplete and session.exitstatus == pytest.ExitCode.OK and not config.getoption("--allow-incomplete"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    result = config.stash.get(RESULT_KEY, None)
    if result is None:
        return
    report_mod.print_table(result, terminalreporter.write_line)
    for w in result["warnings"]:
        terminalreporter.write_line(f"WARNING: {w}", yellow=True)
    if result["summary"]["incomplete"]:
        how = ("--allow-incomplete given: exit status 0" if config.getoption("--allow-incomplete")
               else "exit status 1 (--allow-incomplete accepts it)")
        terminalreporter.write_line(f"{result['summary']['incomplete']} clause(s) incomplete: {how}", yellow=True)
    path = config.getoption("--diffrl-report")
    if path:
        Path(path).write_text(report_mod.to_json(result))
        terminalreporter.write_line(f"report written to {path}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    from . import stats
    from .check import NOT_IMPLEMENTED, NOT_OBSERVABLE, TEST_WORST, reset_test_state

    if call.when == "setup":
        reset_test_state()
        stats.TEST_LEVELS.clear()
    outcome = yield
    rep = outcome.get_result()
    if call.when == "call" and rep.failed and call.excinfo is not None and (NOT_IMPLEMENTED or NOT_OBSERVABLE):
        from hypothesis.errors import Unsatisfiable

        if call.excinfo.errisinstance(Unsatisfiable):
            # Every example was outside what the implementation supports, or where the property
            # cannot be observed at its precision.
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), item.location[1] or 0, (NOT_IMPLEMENTED or NOT_OBSERVABLE)[0])
    mark = item.get_closest_marker("clause")
    if mark is None or not (call.when == "call" or (call.when == "setup" and not rep.passed)):
        return
    cid, prop = mark.args
    if rep.skipped:
        message = str(rep.longrepr[2]) if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        message = message.removeprefix("Skipped: ")
    elif rep.failed and call.excinfo is not None:
        message = f"{call.excinfo.typename}: {call.excinfo.value}" if not call.excinfo.errisinstance(
            AssertionError) else str(call.excinfo.value)
    else:
        message = ""
    worst = TEST_WORST.get(cid)
    state = item.config.stash[STATE_KEY]
    result, reason = state.classify(cid, prop, report_mod.outcome_of(rep, message), message,
                                    None if worst is None else worst["ratio"])
    if result == "deviation":
        # Counted by pytest as an expected failure: the run's exit status stays 0.
        rep.outcome = "skipped"
        rep.wasxfail = reason
    # Reports travel to the pytest-xdist controller; user_properties travel with them.
    rep.user_properties += [("diffrl_clause", [cid, prop]), ("diffrl_outcome", result), ("diffrl_reason", reason),
                            ("diffrl_worst", worst), ("diffrl_levels", (len(stats.TEST_LEVELS),
                                                                        float(sum(stats.TEST_LEVELS))))]
