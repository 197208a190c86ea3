"""Statistical checks with bounds derived from the sample size, never tuned.

Every check is a set of exact-level tests (z for means with known variance, chi-square for
variances with known mean) with a Bonferroni-corrected total false-failure probability
``alpha``; with a fixed seed the outcome is deterministic.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

#: Total probability that a correct implementation fails one statistical check.
ALPHA = 1e-6

#: Levels of the statistical checks evaluated in the current test (the plugin resets it per test
#: and the report adds them up over the run: by the union bound, the probability that a correct
#: implementation fails any statistical check of the run is at most that sum).
TEST_LEVELS: list[float] = []


def spend(alpha: float) -> None:
    """Record one statistical check at level ``alpha`` (every check of the suite calls this)."""
    TEST_LEVELS.append(alpha)


def assert_gaussian_moments(
    clause_id: str,
    samples: ArrayLike,
    mean: ArrayLike,
    var: ArrayLike,
    *,
    alpha: float = ALPHA,
    what: str = "",
) -> None:
    """Samples (n, d) come from independent coordinates with the given means and variances.

    Per coordinate: a two-sided z-test of the sample mean (known variance) and a two-sided
    chi-square test of the sample variance about the known mean, 2d tests in all, each at
    level alpha / (2d).
    """
    spend(alpha)
    x = np.asarray(samples, dtype=np.float64)
    n, d = x.shape
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (d,))
    v = np.broadcast_to(np.asarray(var, dtype=np.float64), (d,))
    level = alpha / (2 * d)
    z_crit = stats.norm.isf(level / 2)
    xbar = x.mean(axis=0)
    z = (xbar - m) / np.sqrt(v / n)
    ss = ((x - m) ** 2).sum(axis=0) / v  # ~ chi2(n) under the hypothesis
    lo, hi = stats.chi2.ppf(level / 2, n), stats.chi2.isf(level / 2, n)
    label = f"{clause_id}{f' [{what}]' if what else ''}"
    i = int(np.argmax(np.abs(z)))
    if abs(z[i]) > z_crit:
        raise AssertionError(
            f"{label}: sample mean of coordinate {i} is {xbar[i]:.6g}, expected {m[i]:.6g} "
            f"(|z| = {abs(z[i]):.2f} > {z_crit:.2f}; n = {n}, Bonferroni level {level:.1e})")
    j = int(np.argmax(np.abs(np.log(ss / n))))
    if not lo <= ss[j] <= hi:
        raise AssertionError(
            f"{label}: sample variance of coordinate {j} is {ss[j] / n * v[j]:.6g}, expected {v[j]:.6g} "
            f"(chi2 statistic {ss[j]:.1f} outside [{lo:.1f}, {hi:.1f}]; n = {n}, level {level:.1e})")


def assert_mean_within(
    clause_id: str,
    samples: ArrayLike,
    mean: float,
    sd_bound: float,
    *,
    alpha: float = ALPHA,
    rounding: float = 0.0,
    what: str = "",
) -> None:
    """The mean of i.i.d. samples whose standard deviation is at most ``sd_bound`` equals ``mean``.

    A two-sided z bound at level alpha: exact for Gaussian samples, the central-limit
    approximation otherwise (the samples the suite passes are sums of many bounded terms or
    Gaussian quadratic forms at n >= 10^4). ``rounding`` is an absolute allowance added to the
    half-width for the implementation's rounding of each sample (derived by the caller).
    """
    spend(alpha)
    x = np.asarray(samples, dtype=np.float64).ravel()
    n = x.size
    half = stats.norm.isf(alpha / 2) * sd_bound / np.sqrt(n) + rounding
    xbar = float(x.mean())
    if not abs(xbar - mean) <= half:
        label = f"{clause_id}{f' [{what}]' if what else ''}"
        extra = f", rounding allowance {rounding:.3g}" if rounding else ""
        raise AssertionError(
            f"{label}: sample mean {xbar:.6g}, expected {mean:.6g} +- {half:.3g} (n = {n}, level {alpha:.0e}{extra})")
