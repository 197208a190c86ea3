"""Load the diffrl-ref plugin for plain ``pytest`` runs of this directory."""

from diffrl_ref.suite.plugin import (  # noqa: F401 - pytest discovers hooks by name
    impl,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_report_header,
    pytest_runtest_logreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
