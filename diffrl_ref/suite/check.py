"""Comparisons with spec-derived tolerances and failure messages that print the worst point."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import spec
from .adapter import clause_callable

#: Reasons of examples discarded because the implementation raised NotImplementedError.
NOT_IMPLEMENTED: list[str] = []
#: Calls of the implementation that returned, in the current test (reset by the plugin).
SUPPORTED_CALLS = [0]
#: Examples of the current test where its property could not be observed at the implementation's
#: precision (reasons), and the number where it could (reset by the plugin).
NOT_OBSERVABLE: list[str] = []
OBSERVED = [0]
#: Unobservable examples in a row, with none observable yet, after which the test stops drawing.
MAX_UNOBSERVED = 10


def reset_test_state() -> None:
    """Per-test bookkeeping, cleared before every test (by the plugin and the self-test)."""
    NOT_IMPLEMENTED.clear()
    SUPPORTED_CALLS[0] = 0
    NOT_OBSERVABLE.clear()
    OBSERVED[0] = 0
    TEST_WORST.clear()


def observable(ok: bool, reason: str) -> None:
    """Go on with this example only if the property can be observed here at this precision.

    Some properties (a convergence order, a limit) can be told from their negation only where the
    rounding the implementation's dtype allows is small against the effect: the test decides that
    from the problem and the dtype alone, never from the implementation's output, so a bug cannot
    make itself unobservable. An unobservable example is discarded (hypothesis draws another) and
    the property is checked on the others. If none of the first MAX_UNOBSERVED is observable, the
    test skips with ``reason`` (which must begin "not observable"): the report shows the property
    as not-checked, never as passed.
    """
    import pytest

    if ok:
        OBSERVED[0] += 1
        return
    NOT_OBSERVABLE.append(reason)
    from hypothesis import currently_in_test_context, reject

    if currently_in_test_context() and (OBSERVED[0] > 0 or len(NOT_OBSERVABLE) < MAX_UNOBSERVED):
        reject()
    pytest.skip(reason)

#: Largest error/allowed ratio and absolute error seen per clause in this process.
WORST: dict[str, dict[str, Any]] = {}
#: The same, for the current test only (reset by the plugin at each test's setup): the report's
#: per-property worst error ratio, and what a deviation's ``max_error_ratio`` is compared with.
TEST_WORST: dict[str, dict[str, Any]] = {}


class NotImplementedClause(Exception):
    """The implementation under test has no callable for a clause this test needs."""


def need(impl: Any, clause_id: str) -> Callable[..., Any]:
    """The implementation's callable for ``clause_id``; skips the test as not implemented if absent."""
    import pytest

    spec.clause(clause_id)  # a typo in a test is an error, not a skip
    fn = clause_callable(impl, clause_id)
    if fn is None:
        pytest.skip(f"not implemented: {clause_id}")

    def call(*args: Any, **kwargs: Any) -> Any:
        # An adapter that supports a clause only for some arguments (a library with a fixed
        # constant, say) raises NotImplementedError for the rest. Inside hypothesis only that
        # example is discarded, so a failure found on supported arguments still counts; the
        # plugin reports not-implemented when every example was discarded.
        try:
            out = fn(*args, **kwargs)
        except NotImplementedError as exc:
            reason = f"not implemented: {clause_id} for these arguments ({exc})"
            NOT_IMPLEMENTED.append(reason)
            from hypothesis import currently_in_test_context, reject

            # Never supported so far in this test: no failure can have come from it, so stop
            # drawing examples the implementation cannot express.
            if currently_in_test_context() and (SUPPORTED_CALLS[0] > 0 or len(NOT_IMPLEMENTED) < 20):
                reject()
            pytest.skip(reason)
        SUPPORTED_CALLS[0] += 1
        return out

    return call


def round_to(dtype: str, x: ArrayLike) -> NDArray[np.float64]:
    """Round float64 values to the nearest value representable in ``dtype`` (kept as float64).

    Inputs are rounded before both the implementation and the oracle see them, so the
    comparison measures the computation, not the cast of the inputs.
    """
    a = np.asarray(x, dtype=np.float64)
    if dtype == "float64":
        return a
    if dtype in ("float32", "float16"):
        return a.astype(dtype).astype(np.float64)
    if dtype == "bfloat16":
        bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16  # round half to even
        return rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    raise ValueError(f"unknown dtype {dtype!r}")


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    try:
        a = np.asarray(v)
    except ValueError:  # ragged
        return repr(v)
    if a.size == 1:
        return f"{a.item():.17g}" if a.dtype.kind == "f" else repr(a.item())
    if a.size <= 8:
        return np.array2string(a, precision=17, separator=", ")
    return f"array{a.shape}"


def _at(v: Any, index: tuple[int, ...], shape: tuple[int, ...]) -> str:
    a = np.asarray(v)
    try:
        b = np.broadcast_to(a, shape)
    except ValueError:
        return _fmt(a)
    return _fmt(b[index]) if shape else _fmt(b)


def _record(clause_id: str, ratio: float, abs_err: float, what: str) -> None:
    for table in (WORST, TEST_WORST):
        w = table.setdefault(clause_id, {"ratio": 0.0, "abs_error": 0.0, "what": what})
        if ratio > w["ratio"]:
            w.update(ratio=ratio, abs_error=abs_err, what=what)
    try:
        from hypothesis import target

        target(ratio, label=f"{clause_id} error/allowed {what}".strip())
    except Exception:  # outside a hypothesis test, or target already set for this label
        pass


def assert_close(
    clause_id: str,
    got: ArrayLike,
    expected: ArrayLike,
    *,
    dtype: str,
    what: str = "",
    inputs: Mapping[str, Any] | None = None,
    **variables: Any,
) -> None:
    """``|got - expected| <= atol`` elementwise, atol from the clause's tolerance rule.

    ``variables`` are the names the rule's expression uses besides ``expected`` and ``eps``.
    On failure the message names the clause, the worst entry, the rule and the inputs there.
    """
    clause = spec.clause(clause_id)
    exp = np.asarray(expected, dtype=np.float64)
    g = np.asarray(got, dtype=np.float64)
    label = f"{clause_id}{f' [{what}]' if what else ''}"
    if g.shape != exp.shape:
        raise AssertionError(f"{label}: shape {g.shape}, expected {exp.shape}")
    atol = np.broadcast_to(clause.tolerance.atol(dtype, expected=exp, **variables), exp.shape)
    err = np.abs(g - exp)
    bad = ~(err <= atol)  # catches NaN in got
    ratio = np.where(atol > 0, err / np.where(atol > 0, atol, 1.0), np.where(err > 0, np.inf, 0.0))
    ratio = np.where(np.isnan(g), np.inf, ratio)
    worst = float(np.max(ratio)) if ratio.size else 0.0
    finite_err = err[np.isfinite(err)]
    _record(clause_id, worst, float(finite_err.max()) if finite_err.size else float("inf"), what)
    if not bool(np.any(bad)):
        return
    idx = np.unravel_index(int(np.argmax(ratio)), exp.shape) if exp.shape else ()
    lines = [
        f"{label}: {int(np.sum(bad))} of {exp.size} entries exceed the tolerance ({dtype})",
        f"  worst at index {tuple(int(i) for i in idx)}: got {_fmt(g[idx])}, expected {_fmt(exp[idx])}, "
        f"|error| {float(err[idx]):.3e} > allowed {float(atol[idx]):.3e} (error/allowed {worst:.3g})",
        f"  rule: atol = {clause.tolerance.expr}   with eps({dtype}) = {spec.EPS[dtype]:.3e}",
    ]
    if inputs:
        lines.append("  inputs at that point: " + ", ".join(
            f"{k}={_at(v, tuple(int(i) for i in idx), exp.shape)}" for k, v in inputs.items()))
    raise AssertionError("\n".join(lines))


def assert_that(ok: bool | np.bool_, clause_id: str, message: str) -> None:
    """A property with no tolerance (an exact or logical condition)."""
    spec.clause(clause_id)
    if not bool(ok):
        raise AssertionError(f"{clause_id}: {message}")


def assert_raises_domain(fn: Callable[..., Any], clause_id: str, *args: Any, **kwargs: Any) -> None:
    """The call must raise ValueError (bad input must never pass silently)."""
    try:
        out = fn(*args, **kwargs)
    except ValueError:
        return
    raise AssertionError(f"{clause_id}: out-of-domain input was accepted and returned {_fmt(out)}")
