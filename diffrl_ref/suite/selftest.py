"""Run the whole conformance suite against every planted bug and report which clauses fail.

A planted bug (:mod:`diffrl_ref.suite.mutants`) replaces some clause callables of a correct
implementation (the float64 reference, or the production path in float32). It is *caught on
its clause* when every property it names in ``caught_by`` fails, in a test of that clause, by an
assertion or by an error whose message names the clause. Every other failure is reported too:
tests of other clauses that fail (the blame would land elsewhere), and crashes whose message
names no clause (a user could not tell which equation is wrong).

Every test of the suite is considered for every bug. A first run on the unmodified
implementation records which clause callables each test calls (and that it passes). A test that
calls none of the bug's patched callables executes exactly as in that run (the examples are
derandomized and the code deterministic), so it passes without being re-run; ``prune=False``
re-runs it anyway.

The clean traces are the self-test's fixed cost (one run of the whole suite per target). With
``DIFFRL_SELFTEST_CACHE=DIR`` a trace is kept in DIR and shared by every process that sets it (the
test suite's workers and the CLI runs it starts), keyed by a hash of every module of the package and
the conformance suite, every file of the spec, and the versions of Python and the libraries the suite runs on:
any change to the code or its environment computes it anew.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import pickle
import pkgutil
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import spec
from .adapter import Adapter, reference_adapter
from .clause import REGISTRY, Registered
from .mutants import Mutant, all_mutants

TARGETS = ("reference", "fast")


def load_conformance() -> dict[tuple[str, str], Registered]:
    """Import every conformance module (registering its tests) and return the registry."""
    pkg = importlib.import_module("diffrl_ref.conformance")
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("test_"):
            importlib.import_module(f"diffrl_ref.conformance.{info.name}")
    return REGISTRY


def base_adapter(target: str) -> Adapter:
    if target == "fast":
        from ..adapters.fast import adapter as fast_adapter

        return fast_adapter("float32", "cpu")
    if target == "reference":
        return reference_adapter()
    raise ValueError(f"unknown planted-bug target {target!r}; known: {TARGETS}")


@dataclass(frozen=True)
class Failure:
    """One test that failed under a planted bug."""

    test: str
    clause: str
    prop: str
    kind: str  # "assertion", "error" (an exception naming the test's clause) or "crash" (naming none)
    message: str


def _run_test(reg: Registered, impl: Any) -> Failure | None | str:
    """Run one registered test: None if it passed, the skip reason if it skipped, else the failure."""
    import pytest
    from hypothesis.errors import Unsatisfiable

    from . import check

    check.reset_test_state()
    try:
        reg.func(impl=impl, clause_id=reg.clause_id)
    except pytest.skip.Exception as exc:
        return f"skipped: {exc}"
    except Unsatisfiable as exc:
        if check.NOT_IMPLEMENTED or check.NOT_OBSERVABLE:  # as the plugin reports it: not a failure
            return f"skipped: {(check.NOT_IMPLEMENTED or check.NOT_OBSERVABLE)[0]}"
        return Failure(reg.test_id, reg.clause_id, reg.prop, "crash", f"Unsatisfiable: {_first_line(exc)}")
    except AssertionError as exc:
        return Failure(reg.test_id, reg.clause_id, reg.prop, "assertion", _first_line(exc))
    except Exception as exc:
        kind = "error" if reg.clause_id in str(exc) else "crash"
        return Failure(reg.test_id, reg.clause_id, reg.prop, kind, f"{type(exc).__name__}: {_first_line(exc)}")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class Trace:
    """The unmodified implementation's run: clause callables each test calls, and what did not pass."""

    target: str
    calls: dict[str, frozenset[str]]
    not_passed: dict[str, str]  # test id -> failure or skip on the unmodified implementation


def _load_meta_profile() -> None:
    from hypothesis import settings

    from . import profiles  # noqa: F401 - registers the profiles

    settings.load_profile("meta")


def trace(target: str) -> Trace:
    """Run every test once on the unmodified ``target``, recording the clause callables it calls."""
    _load_meta_profile()
    base = base_adapter(target)
    called: set[str] = set()

    def spy(cid: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            called.add(cid)
            return fn(*args, **kwargs)

        return call

    from .adapter import clause_callable

    overrides = {cid: spy(cid, fn) for cid in spec.clauses() if (fn := clause_callable(base, cid)) is not None}
    impl = base.with_overrides(f"{base.name} (traced)", overrides)
    calls, not_passed = {}, {}
    for reg in load_conformance().values():
        called.clear()
        out = _run_test(reg, impl)
        calls[reg.test_id] = frozenset(called)
        if out is not None:
            not_passed[reg.test_id] = out if isinstance(out, str) else f"{out.kind}: {out.message}"
    return Trace(target, calls, not_passed)


def _source_key(target: str) -> str:
    """A hash of everything a trace depends on: every module of the package and its conformance suite (by module
    name, so a checkout and the installed wheel, whose trees differ in layout and in generated files, agree), every
    file of the spec, and versions."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256(f"{target} {sys.version}".encode())
    for lib in ("hypothesis", "numpy", "scipy", "torch"):
        try:
            h.update(f"{lib} {version(lib)}".encode())
        except PackageNotFoundError:
            h.update(f"{lib} absent".encode())
    sources: dict[str, bytes] = {}
    for pkg in ("diffrl_ref", "diffrl_ref.conformance"):
        for folder in importlib.import_module(pkg).__path__:
            for f in Path(folder).rglob("*.py"):
                rel = f.relative_to(folder).with_suffix("").parts
                sources[".".join((pkg, *rel))] = f.read_bytes()
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name])
    spec_root = spec.spec_dir()
    for f in sorted(spec_root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(spec_root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:32]


@functools.cache
def cached_trace(target: str) -> Trace:
    """The clean trace of ``target``, computed once per process, or once per DIFFRL_SELFTEST_CACHE folder."""
    folder = os.environ.get("DIFFRL_SELFTEST_CACHE")
    if not folder:
        return trace(target)
    import fcntl

    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"trace-{target}-{_source_key(target)}.pickle"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first one's trace
        if path.exists():
            with open(path, "rb") as fh:
                cached: Trace = pickle.load(fh)
            return cached
        tr = trace(target)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(tr))
        os.replace(tmp, path)
        return tr


@dataclass
class Verdict:
    mutant: Mutant
    failures: list[Failure] = field(default_factory=list)
    ran: int = 0  # tests run against the bug (the others provably pass, see the module docstring)

    def _counts(self, f: Failure) -> bool:
        return f.kind in ("assertion", "error")

    @property
    def failed_props(self) -> dict[str, str]:
        """Properties of the bug's own clause that caught it (by assertion or an error naming it)."""
        out: dict[str, str] = {}
        for f in self.failures:
            if f.clause == self.mutant.clause and self._counts(f):
                out.setdefault(f.prop, f.message)
        return out

    @property
    def missed(self) -> list[str]:
        return [p for p in self.mutant.caught_by if p not in self.failed_props]

    @property
    def caught(self) -> bool:
        """Caught on the right clause by every property it names."""
        return not self.missed

    @property
    def elsewhere(self) -> dict[str, list[str]]:
        """Other clauses whose tests failed (clause -> properties)."""
        out: dict[str, list[str]] = {}
        for f in self.failures:
            if f.clause != self.mutant.clause and self._counts(f):
                out.setdefault(f.clause, []).append(f.prop)
        return out

    @property
    def crashes(self) -> list[Failure]:
        return [f for f in self.failures if f.kind == "crash"]

    @property
    def status(self) -> str:
        if self.caught:
            return "caught"
        if self.failed_props:
            return "partly"  # some of the named properties caught it, not all
        if self.elsewhere:
            return "elsewhere"
        if self.crashes:
            return "crash-only"
        return "missed"

    def failed_clauses(self) -> dict[str, list[str]]:
        """Every clause with a failing test (clause -> 'property (kind)')."""
        out: dict[str, list[str]] = {}
        for f in self.failures:
            out.setdefault(f.clause, []).append(f"{f.prop} ({f.kind})")
        return out

    def to_json(self) -> dict[str, Any]:
        m = self.mutant
        return {"mutant": m.name, "clause": m.clause, "target": m.target, "description": m.description,
                "status": self.status, "caught_by": list(m.caught_by), "missed": self.missed,
                "tests_run": self.ran, "failed_clauses": self.failed_clauses(),
                "failures": [f.__dict__ for f in self.failures]}


def run_mutant(m: Mutant, *, prune: bool = True, tr: Trace | None = None) -> Verdict:
    """Run the suite against one planted bug (every test whose outcome it can change)."""
    _load_meta_profile()
    tr = tr if tr is not None else cached_trace(m.target)
    impl = base_adapter(m.target).with_overrides(f"mutant:{m.name}", m.patch)
    patched = set(m.patch)
    v = Verdict(m)
    for reg in load_conformance().values():
        if prune and reg.test_id not in tr.not_passed and not tr.calls.get(reg.test_id, frozenset()) & patched:
            continue
        v.ran += 1
        out = _run_test(reg, impl)
        if isinstance(out, Failure):
            v.failures.append(out)
    return v


def _run_named(args: tuple[str, bool, Trace]) -> dict[str, Any]:
    name, prune, tr = args
    m = next(x for x in all_mutants() if x.name == name)
    v = run_mutant(m, prune=prune, tr=tr)
    return {"name": name, "failures": v.failures, "ran": v.ran}


def _one_thread() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def run_all(clause_prefix: str = "", *, workers: int = 1, prune: bool = True,
            targets: Iterable[str] = TARGETS) -> tuple[list[Verdict], dict[str, Trace]]:
    """Every planted bug whose clause starts with ``clause_prefix``; also returns the clean traces."""
    chosen = [m for m in all_mutants() if m.clause.startswith(clause_prefix) and m.target in set(targets)]
    needed = sorted({m.target for m in chosen})
    traces: dict[str, Trace]
    if workers <= 1:
        traces = {t: cached_trace(t) for t in needed}
        return [run_mutant(m, prune=prune, tr=traces[m.target]) for m in chosen], traces
    import multiprocessing

    # spawn, not fork: torch's thread pools do not survive a fork; one thread per worker.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        # A target's bugs are queued as soon as its clean trace is in (one may come from DIFFRL_SELFTEST_CACHE at
        # once while the other is computed); within a target slowest first (larger patches) so the workers finish
        # together.
        pending = {pool.submit(cached_trace, t): t for t in needed}
        traces = {}
        runs: list[Future[dict[str, Any]]] = []
        for done in as_completed(pending):
            t = pending[done]
            traces[t] = done.result()
            order = sorted((m for m in chosen if m.target == t), key=lambda m: -len(m.patch))
            runs += [pool.submit(_run_named, (m.name, prune, traces[t])) for m in order]
        results = {r["name"]: r for r in (f.result() for f in runs)}
    verdicts = []
    for m in chosen:
        r = results[m.name]
        verdicts.append(Verdict(m, r["failures"], r["ran"]))
    return verdicts, traces


def coverage_gaps() -> list[str]:
    """(clause, property) pairs no mutant claims to be caught by."""
    claimed = {(m.clause, p) for m in all_mutants() for p in m.caught_by}
    return [f"{c.id}:{p.name}" for c in spec.clauses().values() for p in c.properties if (c.id, p.name) not in claimed]


def summary(verdicts: list[Verdict], traces: dict[str, Trace] | None = None) -> dict[str, Any]:
    caught = sum(v.caught for v in verdicts)
    by_status = {s: sum(v.status == s for v in verdicts) for s in ("caught", "partly", "elsewhere", "crash-only",
                                                                     "missed")}
    return {"mutants": len(verdicts), "caught": caught,
            "fraction": caught / len(verdicts) if verdicts else 1.0,
            "by_status": by_status,
            "by_target": {t: sum(v.mutant.target == t for v in verdicts) for t in TARGETS},
            "also_failing_other_clauses": sum(bool(v.elsewhere) for v in verdicts),
            "with_crashes_naming_no_clause": sum(bool(v.crashes) for v in verdicts),
            "clean_implementation_not_passing": {t: tr.not_passed for t, tr in (traces or {}).items()},
            "missed": [{"mutant": v.mutant.name, "clause": v.mutant.clause, "status": v.status, "missed": v.missed,
                        "failed_clauses": v.failed_clauses()} for v in verdicts if not v.caught],
            "bugs": [v.to_json() for v in verdicts]}
