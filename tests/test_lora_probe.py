"""The frame probe (:mod:`covr_ray.lora.probe`): a ridge regression from a frame's pixels to ``a_r`` that
reads a frame-dependent action and does not invent one where the action ignores the frame."""

from __future__ import annotations

import numpy as np
import pytest

from covr_ray.lora.loss import constant_action_error
from covr_ray.lora.probe import (
    ALPHA_FACTORS,
    MAX_FIT_ROWS,
    cross_validated_probe,
    fit_rows,
    frame_probe,
    observation_features,
    pixel_features,
)
from covr_ray.prior.codecs import get_codec


def _frames(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames with a bright square whose column is uniform in [0, 1]; the rest is pixel noise."""
    pos = rng.uniform(0, 1, n)
    frames = []
    for p in pos:
        f = rng.integers(0, 60, (48, 48, 3)).astype(np.uint8)
        col = int(4 + 36 * p)
        f[18:30, col:col + 8] = 230
        frames.append(f)
    return frames, pos


def _episodes(n: int, size: int) -> list[str]:
    return [f"ep{i // size}" for i in range(n)]


def test_pixel_features_resize_and_scale():
    x = pixel_features([np.full((64, 80, 3), 255, np.uint8), np.zeros((20, 20, 3), np.uint8)], side=8)
    assert x.shape == (2, 8 * 8 * 3) and np.allclose(x[0], 1.0) and np.allclose(x[1], 0.0)


def test_probe_reads_an_action_that_the_frame_shows():
    rng = np.random.default_rng(0)
    frames, pos = _frames(rng, 160)
    actions = np.stack([2 * pos - 1, 1 - pos], axis=1)  # steer follows the square, throttle too
    codec = get_codec("driving", 2)
    x = pixel_features(frames)
    result = frame_probe(x[:120], actions[:120], _episodes(120, 10), x[120:], actions[120:], codec,
                         rng=np.random.default_rng(1))
    _, const_err = constant_action_error(actions[:120], actions[120:])
    assert const_err > 0.25
    assert result.err < 0.5 * const_err, (result, const_err)
    assert result.answer_err < 0.5 * const_err + 1 / 6  # the codec's 7 levels add at most half a step
    assert result.alpha_factor in ALPHA_FACTORS and result.fit_rows == 120


def test_probe_does_not_beat_the_constant_where_the_action_ignores_the_frame():
    rng = np.random.default_rng(2)
    frames, _pos = _frames(rng, 160)
    actions = rng.uniform(-1, 1, (160, 2))  # independent of the frame
    x = pixel_features(iter(frames))  # a generator works: frames are decoded one at a time in a round
    result = frame_probe(x[:120], actions[:120], _episodes(120, 10), x[120:], actions[120:],
                         get_codec("driving", 2), rng=np.random.default_rng(3))
    _, const_err = constant_action_error(actions[:120], actions[120:])
    assert result.err > 0.85 * const_err, (result, const_err)  # cross-validation picks a strong ridge


def test_probe_with_one_episode_folds_by_row_and_rejects_too_few_rows():
    rng = np.random.default_rng(4)
    frames, pos = _frames(rng, 60)
    actions = np.stack([2 * pos - 1, 2 * pos - 1], axis=1)
    codec = get_codec("driving", 2)
    x = pixel_features(frames)
    result = frame_probe(x[:50], actions[:50], ["one"] * 50, x[50:], actions[50:], codec, rng=np.random.default_rng(5))
    assert np.isfinite(result.err) and result.err < constant_action_error(actions[:50], actions[50:])[1]
    with pytest.raises(ValueError, match="frame probe needs"):
        frame_probe(x[:1], actions[:1], ["one"], x[50:], actions[50:], codec, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="groups"):
        frame_probe(x[:50], actions[:40], ["one"] * 50, x[50:], actions[50:], codec, rng=np.random.default_rng(0))


def test_fit_rows_caps_the_training_rows_with_a_seeded_subsample():
    rows = np.arange(5, 5 + 3 * MAX_FIT_ROWS)
    small = fit_rows(rows[:10], np.random.default_rng(0))
    assert np.array_equal(small, rows[:10])
    picked = fit_rows(rows, np.random.default_rng(0))
    assert len(picked) == MAX_FIT_ROWS and np.all(np.diff(picked) > 0) and set(picked) <= set(rows)
    assert np.array_equal(picked, fit_rows(rows, np.random.default_rng(0)))


def _moving_square(rng: np.random.Generator, n: int, stack: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacked observations (n, 3 * stack, 48, 48) of a square that moves at a constant speed v in [-1, 1]
    between frames, its last position uniform and independent of v; the last RGB frames; v."""
    speed = rng.uniform(-1, 1, n)
    last = rng.uniform(0.25, 0.75, n)
    obs = np.zeros((n, 3 * stack, 48, 48), np.uint8)
    for i in range(n):
        for k in range(stack):
            col = int(round(4 + 36 * (last[i] - 0.12 * speed[i] * (stack - 1 - k))))
            frame = rng.integers(0, 40, (48, 48, 3)).astype(np.uint8)
            frame[18:30, col:col + 8] = 230
            obs[i, 3 * k:3 * k + 3] = np.moveaxis(frame, -1, 0)
    return obs, np.moveaxis(obs[:, -3:], 1, -1), speed


def test_observation_features_read_each_plane_and_pass_vectors_through():
    stacked = np.zeros((9, 20, 30), np.uint8)
    stacked[3:6] = 255  # the middle frame white
    x = observation_features([stacked], side=4)
    assert x.shape == (1, 9 * 16)
    assert np.allclose(x[0, :48], 0) and np.allclose(x[0, 48:96], 1) and np.allclose(x[0, 96:], 0)
    last = observation_features([np.moveaxis(stacked, 0, -1)], side=4)  # channels last: the same planes
    assert np.allclose(last, x)
    state = observation_features([np.array([0.5, -2.0], np.float32)])
    assert state.shape == (1, 2) and np.allclose(state, [[0.5, -2.0]])
    with pytest.raises(ValueError, match="different shapes"):
        observation_features([np.zeros(2), np.zeros(3)])


def test_the_observation_probe_reads_the_motion_one_frame_does_not_show():
    obs, frames, speed = _moving_square(np.random.default_rng(6), 300)
    actions = np.stack([speed, -speed], axis=1)  # the action follows the motion, not the position
    groups, codec = _episodes(300, 10), get_codec("driving", 2)
    one = cross_validated_probe(pixel_features(frames), actions, groups, codec, rng=np.random.default_rng(7))
    own = cross_validated_probe(observation_features(obs), actions, groups, codec, rng=np.random.default_rng(7))
    assert one["const_err"] == own["const_err"] > 0.4  # the same folds
    assert one["probe_over_const"] > 0.8, one  # one frame: the position, never the direction
    assert own["probe_over_const"] < 0.5, own  # the stacked frames: the motion (0.35-0.36 on two data seeds)
