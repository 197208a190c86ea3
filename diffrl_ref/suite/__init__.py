"""Conformance harness: adapters, tolerance checks, statistics, the pytest plugin and reports.

Test modules live in ``conformance/`` (installed as ``diffrl_ref.conformance``); everything
they share lives here and is imported by absolute name, so a module collected twice under
different names still sees one harness.
"""
