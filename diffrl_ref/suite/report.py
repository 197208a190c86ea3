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

STATUSES = ("pass", "fail", "deviation", "not-implemented", "not-run")
CATEGORIES = ("bug", "convention", "unsupported")


@dataclass(frozen=True)
class Deviation:
    clause: str
    prop: str  # a property name or "*"
    category: str
    reason: str

    def matches(self, clause_id: str, prop: str) -> bool:
        return self.clause == clause_id and self.prop in ("*", prop)


def deviations_dir() -> Path:
    here = Path(__file__).resolve().parent.parent.parent / "conformance" / "deviations"
    if here.is_dir():
        return here
    import importlib.resources

    return Path(str(importlib.resources.files("diffrl_ref") / "conformance" / "deviations"))


def load_deviations(impl: Any, path: str | None) -> list[Deviation]:
    """The deviations file for ``impl`` (``<impl.name>.yaml``) or an explicit path.

    An entry may name the ``dtype`` (or list of dtypes) and ``device`` it holds for; it is
    ignored for other runs, so it is neither applied nor reported stale there.
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
        for key in ("clause", "category", "reason"):
            if not e.get(key):
                raise ValueError(f"{where}: missing {key!r}")
        if e["category"] not in CATEGORIES:
            raise ValueError(f"{where}: category must be one of {CATEGORIES}, got {e['category']!r}")
        if e["clause"] not in known:
            raise ValueError(f"{where}: clause {e['clause']!r} is not in the spec")
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
        out.append(Deviation(e["clause"], str(e.get("property", "*")), e["category"], str(e["reason"]).strip()))
    return out


@dataclass
class RunState:
    impl_arg: str
    impl: Any
    deviations: list[Deviation]
    filtered: bool = False  # -k / -m given: unmatched entries are not stale, just not selected

    def match_deviation(self, clause_id: str, prop: str) -> Deviation | None:
        return next((d for d in self.deviations if d.matches(clause_id, prop)), None)

    def build(self, reports: list[Any]) -> dict[str, Any]:
        from hypothesis import settings

        per: dict[str, dict[str, Any]] = {
            cid: {"id": cid, "title": c.title, "status": "not-run", "tests": [], "failures": [],
                  "deviations": [], "max_error_ratio": None, "max_abs_error": None}
            for cid, c in spec.clauses().items()
        }
        warnings: list[str] = []
        matched: dict[int, list[str]] = {}  # deviation index -> outcomes of the tests it covers
        for r in reports:
            props = dict(r.user_properties)
            if "diffrl_clause" not in props:
                continue
            cid, prop = props["diffrl_clause"]
            outcome = _outcome(r)
            for i, d in enumerate(self.deviations):
                if d.matches(cid, prop):
                    matched.setdefault(i, []).append(outcome)
            entry = per[cid]
            entry["tests"].append({"id": r.nodeid.split("/")[-1], "outcome": outcome})
            for k, v in r.user_properties:
                best = entry["max_error_ratio"]
                if k == "diffrl_worst" and v and (best is None or v["ratio"] > best):
                    entry["max_error_ratio"], entry["max_abs_error"] = v["ratio"], v["abs_error"]
            if outcome == "fail":
                entry["failures"].append(_failure(r, cid, self.impl_arg))
            elif outcome == "deviation":
                entry["deviations"].append(str(getattr(r, "wasxfail", "")))
            elif outcome == "xpass":
                warnings.append(f"{r.nodeid}: passes although a deviation is listed for it (stale entry?)")
        for entry in per.values():
            outs = {t["outcome"] for t in entry["tests"]}
            entry["status"] = (
                "fail" if "fail" in outs else
                "deviation" if "deviation" in outs else
                "pass" if outs & {"pass", "xpass"} else
                "not-implemented" if "not-implemented" in outs else
                "not-run")
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
        return {
            "suite": {"name": "diffrl-ref", "version": __version__, "spec_version": spec.version(),
                      "hypothesis_profile": str(settings._current_profile)},  # noqa: SLF001
            "implementation": {"arg": self.impl_arg, "name": self.impl.name, "version": self.impl.version,
                               "dtype": self.impl.dtype, "device": self.impl.device},
            "run": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
                    "python": platform.python_version()},
            "summary": counts,
            "clauses": list(per.values()),
            "warnings": warnings,
        }


def _outcome(r: Any) -> str:
    if hasattr(r, "wasxfail"):
        return "xpass" if r.passed else "deviation"
    if r.skipped:
        reason = r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)
        return "not-implemented" if "not implemented" in reason else "skipped"
    return "pass" if r.passed else "fail"


_EXAMPLE_START = re.compile(r"^(Falsifying (explicit )?example|Failing test case):")
_BLOB = re.compile(r"(@reproduce_failure\([^)]*\))")


def _failure(r: Any, cid: str, impl_arg: str) -> dict[str, Any]:
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
    width = max(len(c["id"]) for c in result["clauses"])
    write(f"{'clause'.ljust(width)}  {'status':15}  tests  max err/allowed")
    for c in result["clauses"]:
        ratio = "" if c["max_error_ratio"] is None else f"{c['max_error_ratio']:.3g}"
        write(f"{c['id'].ljust(width)}  {c['status']:15}  {len(c['tests']):5}  {ratio}")
    s = result["summary"]
    write("  ".join(f"{k}: {v}" for k, v in s.items()))
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


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str)
