"""Comparisons of two algorithms over seeds, from kept libraries: SciPy's bootstrap per task, rliable's IQM.

Per task: the difference of the mean final scores with a 95% percentile-bootstrap interval over seeds
(``scipy.stats.bootstrap``, the two algorithms' seeds resampled independently), and a verdict: ahead
(interval above 0), behind (below 0) or not distinguishable. Aggregate: the interquartile mean of
scores normalised per task as (score - random) / (reference - random), with the random policy's
return and the reference algorithm's mean final score, and rliable's stratified-bootstrap interval
(Agarwal et al., NeurIPS 2021). With 3 seeds a bootstrap sees at most 10 distinct resamples of each
algorithm: the intervals are coarse, and the tables say how many seeds they rest on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000  # per-task bootstrap replications (SciPy's default 9,999, rounded)
REPS = 50_000  # rliable's default stratified-bootstrap replications
SEED = 0  # fixed, so a table regenerates byte for byte


def mean_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """mean(a) - mean(b) with its percentile-bootstrap interval; each needs 2 or more values."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"a bootstrap interval needs 2 or more seeds per algorithm, got {len(x)} and {len(y)}")

    def diff(u: np.ndarray, v: np.ndarray, axis: int) -> np.ndarray:
        out: np.ndarray = u.mean(axis=axis) - v.mean(axis=axis)
        return out

    res = stats.bootstrap((x, y), diff, paired=False, vectorized=True, confidence_level=CONFIDENCE,
                          n_resamples=RESAMPLES, method="percentile", rng=np.random.default_rng(SEED))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"difference": float(x.mean() - y.mean()), "low": lo, "high": hi, "verdict": verdict(lo, hi),
            "n": [len(x), len(y)]}


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "ahead"
    if high < 0:
        return "behind"
    return "not distinguishable"


def normalise(scores: np.ndarray, random: float, reference: float) -> np.ndarray:
    """(score - random) / (reference - random): 0 for the random policy, 1 for the reference's mean."""
    if reference == random:
        raise ValueError(f"the reference score equals the random policy's ({random!r}): no scale to normalise by")
    out: np.ndarray = (np.asarray(scores, dtype=float) - random) / (reference - random)
    return out


def iqm(normalised: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per algorithm, the IQM over runs and tasks of a (runs, tasks) matrix and its stratified-bootstrap interval."""
    import warnings

    from rliable import library, metrics

    out: dict[str, dict[str, float]] = {}
    saved = np.random.get_state()  # noqa: NPY002 - see below
    try:
        for k, scores in normalised.items():
            # rliable 1.2's StratifiedBootstrap draws its indices from NumPy's global generator and ignores
            # random_state (update_indices calls np.random.choice), so the global state is seeded per
            # algorithm and restored afterwards: a committed table regenerates byte for byte.
            np.random.seed(SEED)  # noqa: NPY002
            with warnings.catch_warnings():  # rliable hands arch a RandomState, which arch 7 deprecates
                warnings.simplefilter("ignore", FutureWarning)
                point, interval = library.get_interval_estimates(
                    {k: scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=REPS,
                    confidence_interval_size=CONFIDENCE, random_state=np.random.RandomState(SEED))
            out[k] = {"iqm": float(point[k][0]), "low": float(interval[k][0][0]), "high": float(interval[k][1][0])}
    finally:
        np.random.set_state(saved)  # noqa: NPY002
    return out


def random_returns(env_ids: Sequence[str], cache: Path, episodes: int = 10) -> dict[str, float]:
    """The uniform random policy's mean evaluation metric per env, measured once and kept in ``cache``
    (committed with a batch, so its comparison regenerates without simulating again)."""
    known: dict[str, float] = json.loads(cache.read_text()) if cache.is_file() else {}
    missing = [e for e in env_ids if e not in known]
    if missing:
        from . import datasets, envs

        for env in missing:
            da = envs.make(env, 0, evaluation=True).action_space.shape[0]
            res = datasets.evaluate(datasets.random_actor(0, da, stream=99), env, 0, episodes)
            known[env] = float(res["success_rate"] if envs.is_metaworld(env) else res["return_mean"])
        cache.write_text(json.dumps(dict(sorted(known.items())), indent=1) + "\n")
    return {e: known[e] for e in env_ids}
