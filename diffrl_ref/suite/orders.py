"""Convergence-order checks whose acceptance band is derived, not tuned.

A test runs a scheme at several step counts N, once as the implementation and once itself in
float64 with the exact coefficients, and fits the order as the least-squares slope of
-log(error) against log(N). The implementation's errors may lie from the float64 scheme's only
by rounding, bounded per step count and entry by the test; the band of the fitted order
follows from that bound (:func:`order_band`). Where the band reaches half an order the check
could not tell order p from p +- 1/2, and the example is discarded as not observable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from .check import assert_that, observable

F = NDArray[np.float64]

#: A band of half an order or more could not tell order p from p +- 1/2.
MAX_BAND = 0.5


def fit_order(ns: F, errors: F) -> F:
    """Least-squares slopes of -log(error) against log(N), one per column: the observed orders."""
    return np.asarray(-np.polyfit(np.log(ns), np.log(errors), 1)[0])


def order_band(ns: F, e64: F, tol: F, p: int) -> F:
    """Half-width of the acceptance band of the fitted order, per entry.

    e64[n, j]: error of entry j at N = ns[n] of the scheme with the exact coefficients, in float64;
    tol[n, j]: bound on how far the implementation's error may lie from it by rounding alone. The
    log error then moves by at most rho = tol / (e64 - tol), and the least-squares slope, linear in
    the log errors with weights c_n = (x_n - mean) / sum (x - mean)^2 (x = log N), by at most
    sum_n |c_n| rho_n: band = |p64 - p| + sum_n |c_n| rho_n, p64 the float64 scheme's slope
    (infinite where e64 <= tol at some N).
    """
    logn = np.log(ns)
    c = (logn - logn.mean()) / ((logn - logn.mean()) ** 2).sum()
    ok = np.all(e64 > tol, axis=0)
    safe = np.where(e64 > tol, e64, 2 * tol + 1.0)  # placeholder where not observable (band = inf there)
    p64 = fit_order(ns, np.where(ok, safe, 1.0))
    return np.where(ok, np.abs(p64 - p) + np.abs(c) @ (tol / (safe - tol)), np.inf)


def check_order(clause_id: str, dtype: str, ranges: list[F], scheme64: Callable[[int], tuple[F, F]],
                run: Callable[[int], F], p: int, context: str) -> None:
    """Each observable entry's fitted order within p +- its band, on the candidate range that observes most.

    scheme64(N) gives, per entry, the error of the scheme with the exact coefficients (float64)
    and the rounding bound at N; run(N) the implementation's errors. Entries with band >= 1/2
    cannot tell order p from p +- 1/2 and are not checked. Of the candidate ranges (finest first)
    the one with the most checkable entries is used, the finest among equals: the choice depends
    on the problem and the dtype, never on the implementation's output. With no checkable entry
    the order is not observable at this precision: the example is discarded (check.observable).
    """
    cache: dict[int, tuple[F, F]] = {}
    best: tuple[int, F, F, F] | None = None
    for ns in ranges:
        pairs = [cache.setdefault(int(N), scheme64(int(N))) for N in ns]
        e64, tol = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
        band = order_band(ns, e64, tol, p)
        if best is None or int(np.sum(band < MAX_BAND)) > best[0]:
            best = (int(np.sum(band < MAX_BAND)), ns, e64, band)
    assert best is not None
    _, ns, e64, band = best
    checked = np.flatnonzero(band < MAX_BAND)
    observable(checked.size > 0,
               f"not observable: {clause_id} convergence order at {dtype}: no entry's rounding bound is small "
               f"against the float64 scheme's errors at any candidate N (smallest band {float(np.min(band)):.3g} "
               f">= {MAX_BAND}; at N = {ns}: largest errors {np.max(e64, axis=1)})")
    e = np.array([run(int(N)) for N in ns])[:, checked]
    assert_that(bool(np.all(e > 0)), clause_id, f"zero error at some N: {e} ({context})")
    order = fit_order(ns, e)
    p64 = fit_order(ns, e64[:, checked])
    worst = int(np.argmax(np.abs(order - p) - band[checked]))
    j = int(checked[worst])
    assert_that(bool(np.all(np.abs(order - p) <= band[checked])), clause_id,
                f"observed order {order[worst]:.3f} of entry {j}, expected {p} +- {band[j]:.3f} (its errors "
                f"{e[:, worst]} at N = {ns}; the float64 scheme: order {p64[worst]:.3f}, errors {e64[:, j]}; "
                f"{checked.size} entries checked; {context})")
