"""Per-clause results: deviations, status table and JSON report."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import __version__, spec
from .adapter import DEVICES, DTYPES

#: Status of one property of one clause in a run.
PROPERTY_STATUSES = ("pass", "fail", "deviation", "not-implemented", "not-checked", "not-run")
#: Status of a clause, from its properties' statuses (first rule that applies):
#: fail (a property failed), incomplete (a property was not checked: skipped, with its reason),
#: not-run (none was selected), not-implemented (every selected property is), deviation (a listed
#: deviation occurred), partial (some properties not implemented, or not selected by -k / -m,
#: the rest pass), pass (every property passed).
STATUSES = ("pass", "fail", "deviation", "incomplete", "partial", "not-implemented", "not-run")
CATEGORIES = ("bug", "convention", "unsupported")


@dataclass(frozen=True)
class Deviation:
    """A known failure of one property: it applies only when the failure is the one described.

    ``expect`` is a regular expression searched in the failure's message (or, for a property the
    implementation cannot let the suite check, in the reason it was not checked);
    ``max_error_ratio`` bounds the worst error/allowed ratio the failing test may reach. Any
    other failure of the same test is reported as a failure.
    """

    clause: str
    prop: str
    category: str
    reason: str
    expect: str | None = None
    max_error_ratio: float | None = None

    def matches(self, clause_id: str, prop: str) -> bool:
        return self.clause == clause_id and self.prop == prop

    def explains(self, message: str, ratio: float | None) -> bool:
        if self.expect is not None and not re.search(self.expect, message, flags=re.S):
            return False
        if self.max_error_ratio is not None and (ratio is None or not ratio <= self.max_error_ratio):
            return False
        return True

    def describe(self) -> str:
        parts = [f"/{self.expect}/"] if self.expect is not None else []
        if self.max_error_ratio is not None:
            parts.append(f"error/allowed <= {self.max_error_ratio:g}")
        return " and ".join(parts)


def deviations_dir() -> Path:
    here = Path(__file__).resolve().parent.parent.parent / "conformance" / "deviations"
    if here.is_dir():
        return here
    import importlib.resources

    return Path(str(importlib.resources.files("diffrl_ref") / "conformance" / "deviations"))


def load_deviations(impl: Any, path: str | None) -> list[Deviation]:
    """The deviations file for ``impl`` (``<impl.name>.yaml``) or an explicit path.

    An entry names its clause and property and the failure it expects (``expect``, a regular
    expression, and/or ``max_error_ratio``). It may name the ``dtype`` (or list of dtypes) and
    ``device`` it holds for; it is ignored for other runs, so it is neither applied nor reported
    stale there.
    """
    p = Path(path) if path else deviations_dir() / f"{impl.name}.yaml"
    if not p.is_file():
        if path:
            raise ValueError(f"--deviations {path}: no such file")
        return []
    raw = yaml.safe_load(p.read_text()) or {}
    out = []
    known = spec.clauses()
    for i, e in enumerate(raw.get("deviations", [])):
        where = f"{p.name} entry {i}"
        for key in ("clause", "property", "category", "reason"):
            if not e.get(key):
                raise ValueError(f"{where}: missing {key!r}")
        if e["category"] not in CATEGORIES:
            raise ValueError(f"{where}: category must be one of {CATEGORIES}, got {e['category']!r}")
        if e["clause"] not in known:
            raise ValueError(f"{where}: clause {e['clause']!r} is not in the spec")
        if e["property"] not in {q.name for q in known[e["clause"]].properties}:
            raise ValueError(f"{where}: clause {e['clause']} has no property {e['property']!r}")
        expect, bound = e.get("expect"), e.get("max_error_ratio")
        if expect is None and bound is None:
            raise ValueError(f"{where}: give the expected failure: 'expect' (a regular expression the failure "
                             "message matches) and/or 'max_error_ratio'")
        if expect is not None:
            try:
                re.compile(str(expect))
            except re.error as exc:
                raise ValueError(f"{where}: expect is not a regular expression ({exc})") from None
        if bound is not None and not (isinstance(bound, (int, float)) and bound > 0):
            raise ValueError(f"{where}: max_error_ratio must be a positive number, got {bound!r}")
        scope = {}
        for key, allowed in (("dtype", DTYPES), ("device", DEVICES)):
            vals = e.get(key)
            vals = [vals] if isinstance(vals, str) else list(vals or [])
            bad = [v for v in vals if v not in allowed]
            if bad:
                raise ValueError(f"{where}: {key} must be among {allowed}, got {bad}")
            scope[key] = vals
        if (scope["dtype"] and impl.dtype not in scope["dtype"]) or (scope["device"]
                                                                      and impl.device not in scope["device"]):
            continue
        out.append(Deviation(e["clause"], str(e["property"]), e["category"], str(e["reason"]).strip(),
                             None if expect is None else str(expect), None if bound is None else float(bound)))
    return out


@dataclass
class RunState:
    impl_arg: str
    impl: Any
    deviations: list[Deviation]
    filtered: bool = False  # -k / -m given: unmatched entries are not stale, just not selected

    def match_deviation(self, clause_id: str, prop: str) -> Deviation | None:
        return next((d for d in self.deviations if d.matches(clause_id, prop)), None)

    def classify(self, clause_id: str, prop: str, outcome: str, message: str,
                 ratio: float | None) -> tuple[str, str]:
        """(outcome, reason) of one test: a failure, or a skip that left the property not checked,
        becomes a deviation only where an entry for this property explains it."""
        dev = self.match_deviation(clause_id, prop)
        if dev is None:
            return outcome, message
        if outcome in ("fail", "not-checked"):
            if dev.explains(message, ratio):
                return "deviation", f"deviation ({dev.category}): {dev.reason}"
            note = (f"a deviation is listed for {clause_id}:{prop}, but it expects {dev.describe()}; "
                    "this is another failure")
            return outcome, f"{message}\n{note}" if message else note
        if outcome == "pass":
            return "xpass", message
        return outcome, message

    def build(self, reports: list[Any]) -> dict[str, Any]:
        from hypothesis import settings

        per: dict[str, dict[str, Any]] = {}
        for cid, c in spec.clauses().items():
            per[cid] = {"id": cid, "title": c.title, "status": "not-run", "tests": [], "failures": [],
                        "deviations": [], "max_error_ratio": None, "max_abs_error": None,
                        "properties": [{"name": p.name, "status": "not-run", "reason": "", "worst_error_ratio": None,
                                        "tests": []} for p in c.properties]}
        warnings: list[str] = []
        matched: dict[int, list[str]] = {}  # deviation index -> outcomes of the tests it covers
        n_checks, level_sum = 0, 0.0
        for r in reports:
            props = dict(r.user_properties)
            if "diffrl_clause" not in props:
                continue
            n, lv = props.get("diffrl_levels", (0, 0.0))
            n_checks, level_sum = n_checks + n, level_sum + lv
            cid, prop = props["diffrl_clause"]
            outcome, reason = props.get("diffrl_outcome", "fail"), props.get("diffrl_reason", "")
            for i, d in enumerate(self.deviations):
                if d.matches(cid, prop):
                    matched.setdefault(i, []).append(outcome)
            entry = per[cid]
            test_id = r.nodeid.split("/")[-1]
            entry["tests"].append({"id": test_id, "outcome": outcome})
            pentry = next(p for p in entry["properties"] if p["name"] == prop)
            pentry["tests"].append({"id": test_id, "outcome": outcome, "reason": reason})
            worst = props.get("diffrl_worst")
            if worst:
                if pentry["worst_error_ratio"] is None or worst["ratio"] > pentry["worst_error_ratio"]:
                    pentry["worst_error_ratio"] = worst["ratio"]
                if entry["max_error_ratio"] is None or worst["ratio"] > entry["max_error_ratio"]:
                    entry["max_error_ratio"], entry["max_abs_error"] = worst["ratio"], worst["abs_error"]
            if outcome == "fail":
                entry["failures"].append(_failure(r, cid, self.impl_arg, reason))
            elif outcome == "deviation":
                entry["deviations"].append(reason)
            elif outcome == "xpass":
                warnings.append(f"{r.nodeid}: passes although a deviation is listed for it (stale entry?)")
        for entry in per.values():
            for p in entry["properties"]:
                p["status"], p["reason"] = _property_status(p["tests"])
            entry["status"] = _clause_status([p["status"] for p in entry["properties"]])
        for i, d in enumerate(self.deviations):
            dev_outs = matched.get(i, [])
            if not dev_outs:
                if not self.filtered:
                    warnings.append(f"deviation entry {d.clause}:{d.prop} matches no test (stale entry?)")
            elif "deviation" not in dev_outs:
                seen = sorted(set(dev_outs))
                warnings.append(f"deviation entry {d.clause}:{d.prop} did not occur (its tests: "
                                f"{', '.join(seen)}); stale entry?")
        counts = {s: sum(1 for e in per.values() if e["status"] == s) for s in STATUSES}
        pcounts = {s: sum(1 for e in per.values() for p in e["properties"] if p["status"] == s)
                   for s in PROPERTY_STATUSES}
        return {
            "suite": {"name": "diffrl-ref", "version": __version__, "spec_version": spec.version(),
                      "hypothesis_profile": str(settings._current_profile)},  # noqa: SLF001
            "implementation": {"arg": self.impl_arg, "name": self.impl.name, "version": self.impl.version,
                               "dtype": self.impl.dtype, "device": self.impl.device},
            "run": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
                    "python": platform.python_version(), "filtered": self.filtered},
            "summary": counts,
            "property_summary": pcounts,
            "statistical_checks": {"checks": n_checks, "false_alarm_bound": level_sum},
            "clauses": list(per.values()),
            "warnings": warnings,
        }


def _property_status(tests: list[dict[str, str]]) -> tuple[str, str]:
    """(status, reason) of a property from the outcomes of its tests (an xpass counts as a pass)."""
    if not tests:
        return "not-run", ""
    for status in ("fail", "not-checked", "deviation", "not-implemented"):
        hit = next((t for t in tests if t["outcome"] == status), None)
        if hit is not None:
            text = hit["reason"].strip()
            return status, text.splitlines()[0] if text else ""
    return "pass", ""


def _clause_status(props: list[str]) -> str:
    s = set(props)
    if "fail" in s:
        return "fail"
    if "not-checked" in s:
        return "incomplete"
    if s == {"not-run"}:
        return "not-run"
    if s <= {"not-implemented", "not-run"}:
        return "not-implemented"
    if "deviation" in s:
        return "deviation"
    if s & {"not-implemented", "not-run"}:
        return "partial"
    return "pass"


def outcome_of(rep: Any, message: str) -> str:
    """The suite's outcome of one pytest report, before deviations are applied."""
    if rep.passed:
        return "pass"
    if rep.skipped:
        return "not-implemented" if message.startswith("not implemented") else "not-checked"
    return "fail"


_EXAMPLE_START = re.compile(r"^(Falsifying (explicit )?example|Failing test case):")
_BLOB = re.compile(r"(@reproduce_failure\([^)]*\))")


def _failure(r: Any, cid: str, impl_arg: str, reason: str = "") -> dict[str, Any]:
    text = str(r.longreprtext)
    elines = [ln[4:].rstrip() if ln.startswith("E   ") else ln[2:].rstrip() for ln in text.splitlines()
              if ln.startswith("E ")]
    start = next((i for i, ln in enumerate(elines) if _EXAMPLE_START.match(ln)), None)
    example = None
    if start is not None:
        end = next((j for j in range(start, len(elines)) if elines[j] == ")"), len(elines) - 1)
        example = "\n".join(elines[start:end + 1])
    detail = elines[: start if start is not None else 8][:8]
    msg = next((ln.strip() for ln in detail if cid in ln), detail[0] if detail else "")
    test = r.nodeid.split("::")[-1].split("[")[0]
    blob = _BLOB.search(text)
    if "a deviation is listed for" in reason:
        detail = [*detail, reason.splitlines()[-1]]
    return {
        "test": r.nodeid.split("/")[-1],
        "message": msg,
        "detail": detail,
        "falsifying_example": example,
        "reproduce": f"diffrl conform --impl {shlex.quote(impl_arg)} -k {shlex.quote(test)}",
        "reproduce_failure": blob.group(1) if blob else None,
    }


def print_table(result: dict[str, Any], write: Callable[[str], Any]) -> None:
    impl = result["implementation"]
    write("")
    write(f"diffrl-ref {result['suite']['version']} conformance report (spec {result['suite']['spec_version']})")
    write(f"implementation: {impl['name']} {impl['version']}  dtype={impl['dtype']}  device={impl['device']}  "
          f"profile={result['suite']['hypothesis_profile']}")
    if result["run"].get("filtered"):
        write("filtered run (-k / -m): properties not selected are not-run")
    width = max(len(c["id"]) for c in result["clauses"])
    write(f"{'clause / property'.ljust(width)}  {'status':15}  {'passed':>6}  max err/allowed")
    for c in result["clauses"]:
        ratio = "" if c["max_error_ratio"] is None else f"{c['max_error_ratio']:.3g}"
        passed = f"{sum(p['status'] == 'pass' for p in c['properties'])}/{len(c['properties'])}"
        write(f"{c['id'].ljust(width)}  {c['status']:15}  {passed:>6}  {ratio}")
        for p in c["properties"]:
            pr = "" if p["worst_error_ratio"] is None else f"{p['worst_error_ratio']:.3g}"
            short = p["reason"] if len(p["reason"]) <= 100 else p["reason"][:99] + "…"  # the JSON has all of it
            why = f"  ({short})" if short and p["status"] not in ("pass", "fail") else ""
            write(f"{('  ' + p['name']).ljust(width)}  {p['status']:15}  {'':>6}  {pr}{why}".rstrip())
    write("clauses: " + "  ".join(f"{k}: {v}" for k, v in result["summary"].items()))
    write("properties: " + "  ".join(f"{k}: {v}" for k, v in result["property_summary"].items()))
    st = result["statistical_checks"]
    write(f"statistical checks: {st['checks']} evaluated; probability that a correct implementation fails one "
          f"<= {st['false_alarm_bound']:.2g} (union bound over their levels)")
    for c in result["clauses"]:
        for f in c["failures"]:
            write("")
            write(f"FAIL {c['id']}  ({f['test']})")
            for ln in f["detail"]:
                write(f"    {ln}")
            if f["falsifying_example"]:
                for ln in f["falsifying_example"].splitlines():
                    write(f"    {ln}")
            write(f"    reproduce: {f['reproduce']}")
            if f["reproduce_failure"]:
                write(f"    or decorate the test with {f['reproduce_failure']}")
    incomplete = [c["id"] for c in result["clauses"] if c["status"] == "incomplete"]
    if incomplete:
        write("")
        write(f"INCOMPLETE: {len(incomplete)} clause(s) have properties that were not checked: "
              f"{', '.join(incomplete)}")


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str)
