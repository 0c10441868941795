"""EDDF: threshold math against hand-computed cases, entropy direction, ablations, keep-fraction bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covr_ray.config import EDDFSection
from covr_ray.errors import FinetuneDataError
from covr_ray.select.eddf import eddf_select, entropy_slope, zscore


def cfg(**kw) -> EDDFSection:
    c = EDDFSection(**kw)
    c.validate("eddf")
    return c


def test_threshold_hand_computed_raw_scores():
    # G = 1..5 without z-score: median 3, q25 2, q75 4 -> IQR 2. Center 0, T 1 at entropy 0: s = 0.5.
    c = cfg(zscore=False, slope="logistic", entropy_center=0.0, entropy_temperature=1.0)
    keep, m = eddf_select(np.array([5.0, 1.0, 4.0, 2.0, 3.0]), 0.0, c, action_dim=2)
    assert m["eddf/s"] == pytest.approx(0.5)
    assert m["eddf/median"] == pytest.approx(3.0) and m["eddf/iqr"] == pytest.approx(2.0)
    assert m["eddf/tau"] == pytest.approx(4.0)
    assert keep.tolist() == [True, False, True, False, False]
    assert m["eddf/keep_frac"] == pytest.approx(0.4)


def test_threshold_hand_computed_zscore():
    # G = [0, 0, 0, 10]: mean 2.5, std sqrt(18.75) = 4.330; G_z = [-z, -z, -z, 3z] with z = 0.577.
    # Linear percentiles of 4 sorted values: q25 at position 0.75 -> -z, median -z,
    # q75 at position 2.25 -> -z + 0.25 * 4z = 0; IQR = z.
    # s_min = s_max = 1 -> tau = -z + z = 0: only the 10 is kept.
    c = cfg(s_min=1.0, s_max=1.0)
    keep, m = eddf_select(np.array([0.0, 0.0, 0.0, 10.0]), -3.0, c, action_dim=1)
    z = 2.5 / math.sqrt(18.75)
    assert m["eddf/median"] == pytest.approx(-z)
    assert m["eddf/iqr"] == pytest.approx(z)
    assert m["eddf/tau"] == pytest.approx(0.0, abs=1e-12)
    assert keep.tolist() == [False, False, False, True]
    # s = 0 -> tau = median: ties at the median are kept.
    keep0, m0 = eddf_select(np.array([0.0, 0.0, 0.0, 10.0]), 0.0, cfg(s_min=0.0, s_max=0.0), 1)
    assert keep0.all() and m0["eddf/keep_frac"] == 1.0


def test_entropy_slope_is_logistic_in_entropy_deficit():
    c = cfg(slope="logistic", s_min=0.2, s_max=1.4, entropy_temperature=0.5)  # center = -action_dim = -3
    assert entropy_slope(-3.0, c, 3) == pytest.approx(0.8)
    assert entropy_slope(-3.0 + 0.5 * math.log(3), c, 3) == pytest.approx(0.2 + 1.2 * 0.25)
    assert entropy_slope(1e6, c, 3) == pytest.approx(0.2)
    assert entropy_slope(-1e6, c, 3) == pytest.approx(1.4)
    with pytest.raises(FinetuneDataError, match="nan"):
        entropy_slope(float("nan"), c, 3)


def test_lower_entropy_is_stricter():
    """Monotone direction (logistic slope): as SAC's entropy falls, s rises and fewer samples are kept."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=2000)
    c = cfg(slope="logistic")
    entropies = [4.0, 1.0, 0.0, -1.0, -2.0, -3.0, -5.0, -8.0]
    s = [entropy_slope(e, c, action_dim=2) for e in entropies]
    fracs = [eddf_select(g, e, c, action_dim=2)[1]["eddf/keep_frac"] for e in entropies]
    assert all(a < b for a, b in zip(s, s[1:]))
    assert all(a >= b for a, b in zip(fracs, fracs[1:]))
    assert fracs[0] > 0.45 and fracs[-1] < 0.15  # ~half kept while exploring, ~a tenth when collapsed


def test_run_slope_spans_its_range_between_the_runs_reference_points():
    """slope=run: s_min at the run's initial entropy, s_max at SAC's target entropy (-action_dim), linear
    between, clipped outside. Over the entropies of a measured smoke run (+1.1 -> -1.2 nats, action_dim 2) s
    moves over most of its range."""
    c = cfg(s_min=0.0, s_max=1.0)
    h0 = 1.1
    assert entropy_slope(h0, c, 2, initial_entropy=h0) == 0.0
    assert entropy_slope(-2.0, c, 2, initial_entropy=h0) == pytest.approx(1.0)
    assert entropy_slope(-0.45, c, 2, initial_entropy=h0) == pytest.approx(0.5)
    assert entropy_slope(5.0, c, 2, initial_entropy=h0) == 0.0 and entropy_slope(-9.0, c, 2, initial_entropy=h0) == 1.0
    assert entropy_slope(-1.2, c, 2, initial_entropy=h0) == pytest.approx(2.3 / 3.1)
    # no earlier measurement: the run is at its start
    assert entropy_slope(-1.0, c, 2) == 0.0
    # a run that started at or below the target: strict at/below it, loose above it
    assert entropy_slope(-2.5, c, 2, initial_entropy=-2.2) == 1.0 and entropy_slope(-1.0, c, 2, initial_entropy=-2.2) == 0.0
    rng = np.random.default_rng(1)
    g = rng.normal(size=2000)
    fracs = [eddf_select(g, h, c, 2, initial_entropy=h0)[1]["eddf/keep_frac"] for h in (1.1, 0.0, -1.0, -2.0)]
    assert all(a > b for a, b in zip(fracs, fracs[1:]))
    assert fracs[0] > 0.45 and fracs[-1] < 0.3
    with pytest.raises(FinetuneDataError, match="initial"):
        entropy_slope(0.0, c, 2, initial_entropy=float("inf"))


def test_paper_slope_is_the_literal_sigmoid_and_loosens_as_entropy_falls():
    """slope=paper reproduces Sigmoid(entropy) as written: it falls with the entropy, i.e. keeps MORE samples as
    the policy sharpens, which is why it is not the default."""
    c = cfg(slope="paper", s_min=0.3, s_max=0.7)  # s_min/s_max play no part
    assert entropy_slope(0.0, c, 2) == pytest.approx(0.5)
    assert entropy_slope(1.1, c, 2) == pytest.approx(1.0 / (1.0 + math.exp(-1.1)))
    assert entropy_slope(-1.2, c, 2) == pytest.approx(1.0 / (1.0 + math.exp(1.2)))
    g = np.random.default_rng(2).normal(size=2000)
    early = eddf_select(g, 1.1, c, 2)[1]["eddf/keep_frac"]
    late = eddf_select(g, -1.2, c, 2)[1]["eddf/keep_frac"]
    assert late > early


def test_topk_ablation_keeps_best_share():
    g = np.arange(100, dtype=float)[::-1].copy()
    for share in (0.8, 0.9, 0.95):
        keep, m = eddf_select(g, 0.0, cfg(mode="topk", topk_keep=share), 2)
        assert keep.sum() == round(100 * share)
        assert g[keep].min() > g[~keep].max()
        assert m["eddf/keep_frac"] == pytest.approx(share)


def test_random_ablation_ignores_scores_and_is_seeded():
    g = np.arange(1000, dtype=float)
    c = cfg(mode="random", topk_keep=0.5)
    k1, m = eddf_select(g, 0.0, c, 2, np.random.default_rng(1))
    k2, _ = eddf_select(g, 0.0, c, 2, np.random.default_rng(1))
    assert (k1 == k2).all() and k1.sum() == 500
    assert 350 < g[k1].mean() < 650  # not the top half (whose mean is 749.5)


@settings(max_examples=100, deadline=None)
@given(scores=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=50),
       entropy=st.floats(-5, 5), mode=st.sampled_from(["eddf", "topk"]), share=st.sampled_from([0.8, 0.9, 0.95]))
def test_zscore_off_keeps_exactly_the_same_samples(scores, entropy, mode, share):
    """median + s * IQR, top-k and the cap at the max are affine-equivariant: `eddf.zscore=false` cannot be the
    paper's "no z-score" ablation (the docs and README say so). Ties within float round-off aside."""
    g = np.round(np.array(scores, dtype=float), 3)
    kz, _ = eddf_select(g, entropy, cfg(mode=mode, topk_keep=share, zscore=True), 2, initial_entropy=1.0)
    kr, _ = eddf_select(g, entropy, cfg(mode=mode, topk_keep=share, zscore=False), 2, initial_entropy=1.0)
    assert (kz == kr).all()


def test_no_zscore_thresholds_raw_scores():
    # z-scoring is affine, so for s fixed the kept set is the same; tau is reported in raw units.
    g = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    kz, mz = eddf_select(g, 0.0, cfg(zscore=True, slope="logistic", entropy_center=0.0), 1)
    kr, mr = eddf_select(g, 0.0, cfg(zscore=False, slope="logistic", entropy_center=0.0), 1)
    assert (kz == kr).all()
    assert mr["eddf/tau"] == pytest.approx(3.0 + 0.5 * 2.0)
    assert mz["eddf/tau"] == pytest.approx((4.0 - g.mean()) / g.std())


def test_q_value_signal_nan_never_kept_and_all_nan_refused():
    q = np.array([np.nan, 5.0, 1.0, np.nan, 3.0])
    keep, m = eddf_select(q, 0.0, cfg(signal="q_value", s_min=0.0, s_max=0.0), 1)
    assert keep.tolist() == [False, True, False, False, True]
    assert m["eddf/nonfinite"] == 2
    with pytest.raises(FinetuneDataError, match="q_value"):
        eddf_select(np.full(3, np.nan), 0.0, cfg(signal="q_value"), 1)


def test_zscore_constant_is_zero():
    assert (zscore(np.full(4, 7.0)) == 0).all()


@settings(max_examples=150, deadline=None)
@given(scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=0, max_size=60),
       entropy=st.floats(-50, 50), mode=st.sampled_from(["eddf", "random", "topk"]),
       zs=st.booleans(), share=st.sampled_from([0.8, 0.9, 0.95, 0.3, 1.0]),
       s_lo=st.floats(-2, 2), s_span=st.floats(0, 3))
def test_keep_fraction_in_unit_interval(scores, entropy, mode, zs, share, s_lo, s_span):
    c = cfg(mode=mode, zscore=zs, topk_keep=share, s_min=s_lo, s_max=s_lo + s_span)
    g = np.array(scores, dtype=float)
    keep, m = eddf_select(g, entropy, c, 2, np.random.default_rng(0))
    assert keep.shape == g.shape and keep.dtype == bool
    assert 0.0 <= m["eddf/keep_frac"] <= 1.0
    assert m["eddf/kept"] == keep.sum()
    if len(g) and mode in ("random", "topk"):
        assert keep.sum() == max(1, math.ceil(share * len(g) - 1e-9))
    if len(g) and mode == "eddf" and s_lo + s_span <= 0:
        assert keep.sum() >= 1  # tau <= median keeps at least the top half
    if len(g) and mode == "eddf":
        assert g[keep].max() == g.max()  # the best sample is never filtered out (s <= ~range)


def test_tau_capped_at_best_score_when_top_is_tied():
    # [-10, 0, 0, 0] raw, s = 1: median 0, q25 -2.5, q75 0 -> median + IQR = 2.5 > max; capped at 0.
    keep, m = eddf_select(np.array([-10.0, 0.0, 0.0, 0.0]), 0.0, cfg(zscore=False, s_min=1.0, s_max=1.0), 1)
    assert m["eddf/tau"] == 0.0 and keep.tolist() == [False, True, True, True]
