"""The spec is complete: every clause has a reference, tests for every property, a docs page."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

from diffrl_ref import docgen, spec
from diffrl_ref.cli import _coverage
from diffrl_ref.suite.selftest import load_conformance

CLAUSES = list(spec.clauses().values())
IDS = [c.id for c in CLAUSES]


def test_spec_has_clauses() -> None:
    assert len(CLAUSES) >= 4
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("cid", IDS)
def test_reference_function_exists_and_cites_clause(cid: str) -> None:
    c = spec.clause(cid)
    mod_name, _, fn_name = c.reference_name.rpartition(".")
    fn = getattr(importlib.import_module(mod_name), fn_name, None)
    assert callable(fn), f"{cid}: no reference function {c.reference_name}"
    doc = inspect.getdoc(fn) or ""
    assert f"``{cid}``" in doc.splitlines()[0], f"{c.reference_name}: docstring must start by citing ``{cid}``"
    hints = inspect.get_annotations(fn)
    assert "return" in hints, f"{c.reference_name}: missing return annotation"


@pytest.mark.parametrize("cid", IDS)
def test_every_property_has_a_conformance_test(cid: str) -> None:
    registry = load_conformance()
    c = spec.clause(cid)
    tested = {r.prop for r in registry.values() if r.clause_id == cid}
    missing = [p.name for p in c.properties if p.name not in tested]
    assert not missing, f"{cid}: properties without a conformance test: {missing}"


def test_every_test_names_an_existing_clause_and_property() -> None:
    registry = load_conformance()
    bad = []
    for r in registry.values():
        if r.clause_id not in spec.clauses():
            bad.append(f"{r.test_id}: unknown clause {r.clause_id}")
        elif r.prop not in {p.name for p in spec.clause(r.clause_id).properties}:
            bad.append(f"{r.test_id}: clause {r.clause_id} has no property {r.prop}")
    assert not bad, "\n".join(bad)


def test_docs_pages_exist_and_are_fresh() -> None:
    pages = docgen.render()
    d = docgen._docs_dir()
    assert d is not None
    stale = [n for n, text in pages.items() if not (d / n).is_file() or (d / n).read_text() != text]
    assert not stale, f"docs/clauses out of date for {stale}: run `diffrl docs`"
    for cid in IDS:
        assert f".. _{spec.clause(cid).anchor}:" in pages[f"{cid}.rst"]


@pytest.mark.parametrize("cid", IDS)
def test_tolerance_rule_is_positive_for_every_dtype(cid: str) -> None:
    """The rule evaluates (with unit inputs for its free variables) to a positive bound that
    shrinks with the dtype's eps, so float64 is never held to the bfloat16 bound."""
    tol = spec.clause(cid).tolerance
    names = set(tol._code.co_names) - {"eps", "expected"} - set(spec._TOL_NAMESPACE)
    variables = {n: 1 for n in names}
    vals = [float(np.max(tol.atol(dt, expected=np.ones(3), **variables))) for dt in ("float64", "float32", "bfloat16")]
    assert all(v > 0 and np.isfinite(v) for v in vals), f"{cid}: tolerance {tol.expr} gives {vals}"
    assert vals[0] < vals[1] < vals[2], f"{cid}: tolerance must scale with eps, got {vals}"


def test_coverage_json_fields() -> None:
    rows = _coverage()
    for r in rows:
        assert set(r) >= {"id", "title", "source", "reference", "tests", "docs"}
        assert r["reference"] and r["tests"] and r["docs"], f"incomplete clause {r['id']}"


def test_bad_spec_is_rejected(tmp_path: pytest.TempPathFactory) -> None:
    raw = {"id": "Bad-ID", "title": "t"}
    with pytest.raises(spec.SpecError, match="missing required field|must match"):
        spec._clause(raw, "bad", "x.yaml")
