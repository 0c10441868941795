"""Statistics over seeds and tasks: mean +- std, IQM, stratified bootstrap confidence intervals (numpy only).

IQM (interquartile mean, Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice") is the
mean of the middle 50 % of the scores. Here it is computed exactly for any count ``n``: the sorted scores
are read as ``n`` equal slices of probability mass, and the mean is taken over the mass between the 25 %
and 75 % quantiles, a score straddling a boundary counting with the part of its slice inside. When ``n`` is
a multiple of 4 this is the mean of the middle ``n / 2`` scores (the same as ``scipy.stats.trim_mean(x,
0.25)``); otherwise it differs slightly from ``trim_mean``, which drops whole scores.

The stratified bootstrap resamples runs with replacement *within* each task (stratum), pools the
resampled scores of all tasks, and recomputes the statistic; the percentile interval of those replicates is
the confidence interval. With one task it is the ordinary bootstrap.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from covr_ray.errors import ReportError

Statistic = Callable[[np.ndarray], float]


def _as_scores(scores: Sequence[float] | np.ndarray, what: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ReportError(f"{what}: need at least one score, got none")
    if not np.all(np.isfinite(arr)):
        raise ReportError(f"{what}: scores must be finite, got {arr.tolist()}")
    return arr


def mean_std(scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0, as RL papers report over seeds)."""
    arr = _as_scores(scores)
    return float(arr.mean()), float(arr.std())


def iqm(scores: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean of ``scores`` (1-D, any order, n >= 1); see the module docstring.

    Examples: ``iqm([1, 2, 3, 4]) == 2.5``; ``iqm([1, 2, 3, 4, 5]) == 3.0`` (weights 0.25, 1, 0.25 on
    2, 3, 4 after the 1.25-score trims); ``iqm([0, 0, 0, 100]) == 0.0``.
    """
    arr = np.sort(_as_scores(scores, "iqm"))
    n = arr.size
    lo, hi = 0.25 * n, 0.75 * n  # the kept mass, in units of one score's slice
    starts = np.arange(n, dtype=np.float64)
    weights = np.clip(np.minimum(starts + 1.0, hi) - np.maximum(starts, lo), 0.0, 1.0)
    return float(np.dot(weights, arr) / weights.sum())


def stratified_bootstrap_ci(strata: Sequence[Sequence[float] | np.ndarray], statistic: Statistic = iqm,
                            reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap interval of ``statistic`` over pooled strata.

    Args:
        strata: one 1-D score array per task (e.g. final returns of each seed on one preset).
        statistic: function of the pooled 1-D scores (default :func:`iqm`).
        reps: bootstrap replicates.
        confidence: interval mass, e.g. 0.95.
        seed: seed of the resampling RNG (same inputs and seed -> same interval).

    Returns:
        ``(point, low, high)``: the statistic of the pooled scores and the interval bounds.

    Raises:
        ReportError: no strata, an empty or non-finite stratum, bad ``reps`` or ``confidence``.
    """
    if len(strata) == 0:
        raise ReportError("stratified bootstrap: need at least one stratum (task), got none")
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ReportError(f"stratified bootstrap: reps {reps!r} must be an integer >= 1")
    if not 0.0 < confidence < 1.0:
        raise ReportError(f"stratified bootstrap: confidence {confidence!r} must be in (0, 1)")
    arrays = [_as_scores(s, f"stratum {i}") for i, s in enumerate(strata)]
    point = float(statistic(np.concatenate(arrays)))
    rng = np.random.default_rng(seed)
    replicates = np.empty(reps, dtype=np.float64)
    # Draw each stratum's resample indices for all replicates at once: (reps, n_k).
    draws = [arr[rng.integers(0, arr.size, size=(reps, arr.size))] for arr in arrays]
    pooled = np.concatenate(draws, axis=1)
    for r in range(reps):
        replicates[r] = statistic(pooled[r])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return point, float(low), float(high)
