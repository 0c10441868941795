"""The report's statistics (rliable through covr_ray.stats) against hand-computed cases and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covr_ray.errors import ReportError
from covr_ray.stats import improvement_probability_ci, iqm_ci, mean_ci, mean_std


@pytest.mark.parametrize("scores, expected", [
    ([1, 2, 3, 4], 2.5),                 # middle two of four
    ([4, 1, 3, 2], 2.5),                 # order does not matter
    ([1, 2, 3, 4, 5], 3.0),              # trim_mean drops int(0.25 * 5) = 1 score at each end: mean of 2, 3, 4
    ([0, 0, 0, 100], 0.0),               # one outlier does not move it
    ([1, 2, 3, 4, 5, 6, 7, 100], 4.5),   # mean of 3, 4, 5, 6
    ([1, 2, 3], 2.0),                    # nothing dropped below n = 4
    ([7], 7.0),
    ([1, 3], 2.0),
])
def test_iqm_point_is_rliables_trimmed_mean(scores: list[float], expected: float) -> None:
    assert iqm_ci([scores], reps=10)[0] == pytest.approx(expected)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=12))
def test_iqm_point_equals_scipy_trim_mean(scores: list[float]) -> None:
    from scipy.stats import trim_mean

    assert iqm_ci([scores], reps=2)[0] == pytest.approx(float(trim_mean(scores, 0.25)), rel=1e-9, abs=1e-6)


def test_mean_is_the_mean_of_task_means_and_std_is_population() -> None:
    assert mean_std([1, 3]) == (2.0, 1.0)
    point, low, high = mean_ci([[1.0, 2.0], [10.0, 20.0, 30.0]], reps=300)
    assert point == pytest.approx((1.5 + 20.0) / 2) and low <= point <= high


def test_bootstrap_is_seeded_and_leaves_the_global_rng_alone() -> None:
    scores = [3.0, 7.0, 1.0, 9.0, 4.0, 6.0, 5.0, 2.0]
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a = iqm_ci([scores], reps=500, seed=1)
    assert np.random.rand() == expected_next  # rliable draws from the global RNG: restored after the call
    b = iqm_ci([scores], reps=500, seed=1)
    c = iqm_ci([scores], reps=500, seed=2)
    assert a == b and a != c
    point, low, high = a
    assert low <= point <= high and low < high


def test_constant_scores_give_a_degenerate_interval() -> None:
    assert iqm_ci([[5.0] * 4, [5.0] * 3], reps=200) == (5.0, 5.0, 5.0)


def test_bootstrap_resamples_within_strata() -> None:
    # Task A scores 0, task B scores 100. Stratified resampling always draws 2 runs from each task, so every
    # pooled replicate is [0, 0, 100, 100] and its IQM is exactly 50; pooled (unstratified) resampling
    # would often draw 3 or 4 runs of one task and give IQM 0 or 100.
    assert iqm_ci([[0.0, 0.0], [100.0, 100.0]], reps=300, seed=0) == (50.0, 50.0, 50.0)


def test_interval_narrows_with_more_runs() -> None:
    rng = np.random.default_rng(0)
    small = iqm_ci([rng.normal(0, 1, 8)], reps=1000, seed=0)
    large = iqm_ci([rng.normal(0, 1, 200)], reps=1000, seed=0)
    assert (large[2] - large[1]) < (small[2] - small[1])


@pytest.mark.parametrize("x, y, expected", [
    ([3.0, 4.0, 5.0], [1.0, 2.0], 1.0),      # every run of X beats every run of Y
    ([1.0, 2.0], [3.0, 4.0], 0.0),
    ([1.0, 2.0], [1.0, 2.0], 0.5),           # the same scores
    ([2.0, 4.0, 6.0], [1.0, 3.0, 5.0], 6 / 9),
    ([1.0, 2.0, 3.0], [2.0], 0.5),           # a tie counts one half: (0 + 0.5 + 1) / 3
])
def test_probability_of_improvement_hand_cases(x: list[float], y: list[float], expected: float) -> None:
    point, low, high = improvement_probability_ci(x, y, reps=300)
    assert point == pytest.approx(expected) and 0.0 <= low <= point <= high <= 1.0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=6), st.lists(st.integers(-5, 5), min_size=1, max_size=6))
def test_probability_of_improvement_is_the_pairwise_win_rate(x: list[int], y: list[int]) -> None:
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(x, y))
    assert improvement_probability_ci(x, y, reps=2)[0] == pytest.approx(wins / (len(x) * len(y)))


@pytest.mark.parametrize("call, match", [
    (lambda: mean_std([]), "at least one"),
    (lambda: iqm_ci([[1.0, float("nan")]]), "finite"),
    (lambda: iqm_ci([]), "stratum"),
    (lambda: iqm_ci([[1.0], []]), "stratum 1"),
    (lambda: iqm_ci([[1.0]], reps=0), "reps"),
    (lambda: mean_ci([[1.0]], confidence=1.5), "confidence"),
    (lambda: iqm_ci([[1.0]], seed=-1), "seed"),
    (lambda: improvement_probability_ci([], [1.0]), "X"),
])
def test_bad_input_is_a_report_error(call, match: str) -> None:
    with pytest.raises(ReportError, match=match):
        call()
