"""Statistics over seeds and tasks: mean +- std, and rliable's interval estimates, seeded and checked.

The estimates and their confidence intervals are rliable's (Agarwal et al. 2021, "Deep RL at the edge of
the statistical precipice"), through :func:`rliable.library.get_interval_estimates` (stratified bootstrap,
percentile intervals):

- **IQM**: :func:`rliable.metrics.aggregate_iqm`, ``scipy.stats.trim_mean(scores, 0.25)`` over every run
  of every task (it drops ``int(0.25 * n)`` whole scores at each end);
- **mean**: :func:`rliable.metrics.aggregate_mean`, the mean over tasks of each task's mean over runs;
- **probability of improvement** P(X > Y): :func:`rliable.metrics.probability_of_improvement`, the
  Mann-Whitney U statistic over ``n_x * n_y`` (ties count one half), averaged over tasks.

What this module adds is what rliable does not do:

- typed errors (:class:`~covr_ray.errors.ReportError`) for empty or non-finite scores and bad options;
- tasks with different numbers of runs: the scores go to rliable as one ``(n_k, 1)`` array per task (its
  independent stratified bootstrap), so every replicate resamples runs *within* each task;
- reproducible intervals: rliable's bootstrap draws its resampling indices from NumPy's *global* RNG
  (``np.random.choice`` in its ``update_indices``; its ``random_state`` argument does not reach them), so
  each call here seeds the global RNG with ``seed`` and restores the caller's RNG state afterwards;
- mean and population standard deviation over runs (ddof 0, as RL papers report over seeds).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import numpy as np

from covr_ray.errors import ReportError

Scores = Sequence[float] | np.ndarray


def _as_scores(scores: Scores, what: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ReportError(f"{what}: need at least one score, got none")
    if not np.all(np.isfinite(arr)):
        raise ReportError(f"{what}: scores must be finite, got {arr.tolist()}")
    return arr


def mean_std(scores: Scores) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0, as RL papers report over seeds)."""
    arr = _as_scores(scores)
    return float(arr.mean()), float(arr.std())


@contextlib.contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _check_options(reps: int, confidence: float, seed: int) -> None:
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ReportError(f"bootstrap: reps {reps!r} must be an integer >= 1")
    if not 0.0 < confidence < 1.0:
        raise ReportError(f"bootstrap: confidence {confidence!r} must be in (0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ReportError(f"bootstrap: seed {seed!r} must be an integer in [0, 2**32)")


def _interval(arrays: list[np.ndarray], func: Callable[..., np.ndarray], reps: int, confidence: float,
              seed: int) -> tuple[float, float, float]:
    from rliable import library

    with _seeded_global_rng(seed):
        points, intervals = library.get_interval_estimates({"x": arrays}, func, reps=reps,
                                                           confidence_interval_size=confidence)
    low, high = np.asarray(intervals["x"], dtype=np.float64).reshape(2, -1)[:, 0]
    return float(np.asarray(points["x"]).reshape(-1)[0]), float(low), float(high)


def _strata(strata: Sequence[Scores]) -> list[np.ndarray]:
    if len(strata) == 0:
        raise ReportError("stratified bootstrap: need at least one stratum (task), got none")
    return [_as_scores(s, f"stratum {i}").reshape(-1, 1) for i, s in enumerate(strata)]


def iqm_ci(strata: Sequence[Scores], reps: int = 2000, confidence: float = 0.95,
           seed: int = 0) -> tuple[float, float, float]:
    """IQM of the pooled scores of every stratum (task) and its stratified-bootstrap percentile interval.

    Args:
        strata: one 1-D score array per task (e.g. final returns of each seed on one preset).
        reps: bootstrap replicates.
        confidence: interval mass, e.g. 0.95.
        seed: seed of the resampling (same inputs and seed -> same interval).

    Returns:
        ``(point, low, high)``.

    Raises:
        ReportError: no strata, an empty or non-finite stratum, bad ``reps``, ``confidence`` or ``seed``.
    """
    from rliable import metrics

    _check_options(reps, confidence, seed)
    arrays = _strata(strata)
    return _interval(arrays, lambda *xs: np.array([metrics.aggregate_iqm(np.concatenate(xs))]), reps,
                     confidence, seed)


def mean_ci(strata: Sequence[Scores], reps: int = 2000, confidence: float = 0.95,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean over tasks of each task's mean score, and its stratified-bootstrap percentile interval
    (arguments, returns and errors as :func:`iqm_ci`)."""
    from rliable import metrics

    _check_options(reps, confidence, seed)
    arrays = _strata(strata)
    return _interval(arrays, lambda *xs: np.array([np.mean([metrics.aggregate_mean(x) for x in xs])]), reps,
                     confidence, seed)


def improvement_probability_ci(scores_x: Scores, scores_y: Scores, reps: int = 2000, confidence: float = 0.95,
                               seed: int = 0) -> tuple[float, float, float]:
    """P(X > Y): the probability that a run of X scores above a run of Y on the same task (ties count one
    half), and its bootstrap percentile interval (X's and Y's runs resampled independently).

    Raises:
        ReportError: empty or non-finite scores, bad ``reps``, ``confidence`` or ``seed``.
    """
    from rliable import metrics

    _check_options(reps, confidence, seed)
    x = _as_scores(scores_x, "X").reshape(-1, 1)
    y = _as_scores(scores_y, "Y").reshape(-1, 1)
    return _interval([x, y], lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps,
                     confidence, seed)
