"""RALW weights: min-max to [-1, 1], clipped at 0; ablations; degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covr_ray.config import RALWSection
from covr_ray.errors import FinetuneDataError
from covr_ray.select.ralw import minmax_signed, ralw_weights


def test_ralw_hand_computed():
    # returns 0..4 -> g_norm [-1, -0.5, 0, 0.5, 1] -> w [0, 0, 0, 0.5, 1]
    w, m = ralw_weights(np.array([2.0, 0.0, 4.0, 1.0, 3.0]), RALWSection())
    assert w.tolist() == [0.0, 0.0, 1.0, 0.0, 0.5]
    assert w.dtype == np.float32
    assert m["ralw/zero_frac"] == pytest.approx(0.6)
    assert m["ralw/mean_weight"] == pytest.approx(0.3)
    assert m["ralw/effective_n"] == pytest.approx(1.5 ** 2 / 1.25)


def test_ralw_equal_returns_all_one_and_empty():
    w, _ = ralw_weights(np.full(5, -3.0), RALWSection())
    assert (w == 1).all()
    w, m = ralw_weights(np.zeros(0), RALWSection())
    assert w.size == 0 and m["ralw/mean_weight"] == 0.0


def test_ralw_ablations():
    g = np.linspace(-5, 5, 101)
    w, _ = ralw_weights(g, RALWSection(mode="none"))
    assert (w == 1).all()
    w1, _ = ralw_weights(g, RALWSection(mode="random"), np.random.default_rng(3))
    w2, _ = ralw_weights(g, RALWSection(mode="random"), np.random.default_rng(3))
    assert (w1 == w2).all() and (w1 >= 0).all() and (w1 < 1).all()
    assert abs(np.corrcoef(g, w1)[0, 1]) < 0.3  # unrelated to the return


def test_ralw_rejects_nan():
    with pytest.raises(FinetuneDataError, match="non-finite"):
        ralw_weights(np.array([1.0, np.nan]), RALWSection())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e5, 1e5, allow_nan=False), min_size=1, max_size=50))
def test_ralw_properties(values):
    g = np.array(values)
    w, _ = ralw_weights(g, RALWSection())
    assert ((w >= 0) & (w <= 1)).all()
    norm = minmax_signed(g)
    assert ((norm >= -1) & (norm <= 1)).all()
    if g.max() - g.min() > 1e-6 * max(1, abs(g).max()):
        assert w[np.argmax(g)] == 1.0 and w[np.argmin(g)] == 0.0
        order = np.argsort(g, kind="stable")
        assert (np.diff(w[order]) >= -1e-6).all()  # monotone in the return
