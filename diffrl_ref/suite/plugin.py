"""pytest plugin behind ``diffrl conform`` and ``pytest --pyargs diffrl_ref.conformance``.

Options: ``--impl NAME`` (or env ``DIFFRL_IMPL``), ``--impl-dtype``, ``--impl-device``,
``--deviations PATH``, ``--diffrl-report PATH``; the hypothesis profile comes from
``--hypothesis-profile`` (``ci`` by default, or env ``DIFFRL_PROFILE``).
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


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--impl")
    try:
        impl = resolve(name, dtype=config.getoption("--impl-dtype"), device=config.getoption("--impl-device"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[IMPL_KEY] = impl
    config.stash[STATE_KEY] = report_mod.RunState(
        impl_arg=name, impl=impl, deviations=report_mod.load_deviations(impl, config.getoption("--deviations")))


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
        dev = state.match_deviation(cid, prop)
        if dev is not None:
            item.add_marker(pytest.mark.xfail(reason=f"deviation ({dev.category}): {dev.reason}", strict=False))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _STATE_REPORTS.append(report)


_STATE_REPORTS: list[pytest.TestReport] = []


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash[STATE_KEY]
    result = state.build(_STATE_REPORTS)
    report_mod.print_table(result, terminalreporter.write_line)
    for w in result["warnings"]:
        terminalreporter.write_line(f"WARNING: {w}", yellow=True)
    path = config.getoption("--diffrl-report")
    if path:
        Path(path).write_text(report_mod.to_json(result))
        terminalreporter.write_line(f"report written to {path}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    from .check import NOT_IMPLEMENTED, SUPPORTED_CALLS

    if call.when == "setup":
        NOT_IMPLEMENTED.clear()
        SUPPORTED_CALLS[0] = 0
    outcome = yield
    rep = outcome.get_result()
    if call.when == "call" and rep.failed and call.excinfo is not None and NOT_IMPLEMENTED:
        from hypothesis.errors import Unsatisfiable

        if call.excinfo.errisinstance(Unsatisfiable):
            # Every example was outside what the implementation supports.
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), item.location[1] or 0, NOT_IMPLEMENTED[0])
    mark = item.get_closest_marker("clause")
    if mark is not None and call.when == "call":
        from .check import WORST

        # Reports travel to the pytest-xdist controller; user_properties travel with them.
        rep.user_properties.append(("diffrl_clause", list(mark.args)))
        rep.user_properties.append(("diffrl_worst", WORST.get(mark.args[0])))
