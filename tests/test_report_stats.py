"""IQM and the stratified bootstrap against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covr_ray.errors import ReportError
from covr_ray.stats import iqm, mean_std, stratified_bootstrap_ci


@pytest.mark.parametrize("scores, expected", [
    ([1, 2, 3, 4], 2.5),                 # middle two of four
    ([4, 1, 3, 2], 2.5),                 # order does not matter
    ([1, 2, 3, 4, 5], 3.0),              # 0.25 * 2 + 3 + 0.25 * 4 over 1.5
    ([0, 0, 0, 100], 0.0),               # one outlier does not move it
    ([1, 2, 3, 4, 5, 6, 7, 100], 4.5),   # mean of 3, 4, 5, 6
    ([1, 2, 3], 2.0),                    # 0.25 * 1 + 2 + 0.25 * 3 over 1.5
    ([7], 7.0),
    ([1, 3], 2.0),
    ([0, 10, 10, 10, 10, 1000], 10.0),   # n = 6: 0.5 * 10 + 10 + 10 + 0.5 * 10 over 3
])
def test_iqm_hand_cases(scores: list[float], expected: float) -> None:
    assert iqm(scores) == pytest.approx(expected)


def test_iqm_between_quartile_trims_n5_weights() -> None:
    # n = 5: the kept mass runs from 1.25 to 3.75 slices: 0.75 of the 2nd score, the 3rd, 0.75 of the 4th.
    assert iqm([0, 10, 20, 30, 1000]) == pytest.approx((0.75 * 10 + 20 + 0.75 * 30) / 2.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=10).map(lambda xs: xs * 4))
def test_iqm_equals_trim_mean_when_n_is_a_multiple_of_4(scores: list[float]) -> None:
    from scipy.stats import trim_mean

    assert iqm(scores) == pytest.approx(float(trim_mean(scores, 0.25)), rel=1e-9, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30))
def test_iqm_lies_between_the_quartiles(scores: list[float]) -> None:
    q1, q3 = np.quantile(scores, [0.25, 0.75], method="inverted_cdf")
    value = iqm(scores)
    assert min(scores) - 1e-6 <= value <= max(scores) + 1e-6
    assert q1 - 1e-6 * (1 + abs(q1)) <= value <= q3 + 1e-6 * (1 + abs(q3))


def test_mean_std_is_population_std() -> None:
    assert mean_std([1, 3]) == (2.0, 1.0)


def test_bootstrap_is_seeded_and_brackets_the_point() -> None:
    scores = [3.0, 7.0, 1.0, 9.0, 4.0, 6.0, 5.0]
    a = stratified_bootstrap_ci([scores], reps=500, seed=1)
    b = stratified_bootstrap_ci([scores], reps=500, seed=1)
    c = stratified_bootstrap_ci([scores], reps=500, seed=2)
    assert a == b and a != c
    point, low, high = a
    assert point == pytest.approx(iqm(scores)) and low <= point <= high and low < high


def test_constant_scores_give_a_degenerate_interval() -> None:
    assert stratified_bootstrap_ci([[5.0] * 4, [5.0] * 3], reps=200) == (5.0, 5.0, 5.0)


def test_bootstrap_resamples_within_strata() -> None:
    # Task A scores 0, task B scores 100. Stratified resampling always draws 2 runs from each task, so every
    # pooled replicate is [0, 0, 100, 100] and its IQM is exactly 50; pooled (unstratified) resampling
    # would often draw 3 or 4 runs of one task and give IQM 0 or 100.
    point, low, high = stratified_bootstrap_ci([[0.0, 0.0], [100.0, 100.0]], reps=300, seed=0)
    assert (point, low, high) == (50.0, 50.0, 50.0)


def test_interval_narrows_with_more_runs() -> None:
    rng = np.random.default_rng(0)
    small = stratified_bootstrap_ci([rng.normal(0, 1, 8)], reps=1000, seed=0)
    large = stratified_bootstrap_ci([rng.normal(0, 1, 200)], reps=1000, seed=0)
    assert (large[2] - large[1]) < (small[2] - small[1])


@pytest.mark.parametrize("call, match", [
    (lambda: iqm([]), "at least one"),
    (lambda: iqm([1.0, float("nan")]), "finite"),
    (lambda: stratified_bootstrap_ci([]), "stratum"),
    (lambda: stratified_bootstrap_ci([[1.0], []]), "stratum 1"),
    (lambda: stratified_bootstrap_ci([[1.0]], reps=0), "reps"),
    (lambda: stratified_bootstrap_ci([[1.0]], confidence=1.5), "confidence"),
])
def test_bad_input_is_a_report_error(call, match: str) -> None:
    with pytest.raises(ReportError, match=match):
        call()
