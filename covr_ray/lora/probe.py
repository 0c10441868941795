"""The frame probe: how much of ``a_r`` one frame shows to a linear reader of its pixels.

A round's held-out fit compares the VLM with the best constant answer (:mod:`covr_ray.lora.loss`). When the
VLM only matches the constant, two causes look alike: the fine-tune failed to teach a frame -> action
mapping, or the rows hold little such mapping to learn (the RL action depends on the stacked frames' motion,
on what one small frame does not show, or is noise of an early policy). The probe separates them: a ridge
regression from the frame's pixels (resized to :data:`PROBE_SIDE` px a side) to ``a_r``, fitted on the
round's *training* rows only and scored on the same held-out rows as the VLM. Its ridge strength is chosen
by leave-episodes-out cross-validation inside the training rows, so the held-out rows are never looked at.

The same ridge on the policy's own input (:func:`observation_features`: its stacked frames) tells how much
of the action one frame loses: the motion between frames, which the policy sees and the VLM does not.

A VLM reads the frame through a far richer model than a linear map of pixels, so the probe is not a bound;
it is a reference: a probe well below the constant says the frames carry a signal the VLM did not learn; a
probe at the constant says a single frame hardly tells the action at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from covr_ray.lora.loss import constant_references, heldout_action_error

#: Frames are resized to this many pixels a side (RGB) before the ridge regression: 3,072 features.
PROBE_SIDE = 32
#: Ridge strengths tried, as multiples of the feature count (features are standardised).
ALPHA_FACTORS = (0.1, 1.0, 10.0, 100.0, 1000.0)
#: At most this many training rows enter the fit (a seeded subsample): the dual solve is O(rows^3).
MAX_FIT_ROWS = 1024
#: Cross-validation folds of the training rows (by episode when there are at least two episodes).
FOLDS = 4


@dataclass
class ProbeResult:
    """A fitted probe scored on held-out rows.

    Attributes:
        err: mean over held-out rows and action dimensions of ``|clip(prediction) - a_r|``.
        answer_err: the same after the codec's round trip of each prediction (the error of a frame-reading
            VLM limited to the codec's answers), comparable with ``lora/heldout_const_answer_err``.
        alpha_factor: the chosen ridge strength, a multiple of the feature count.
        fit_rows: training rows the final fit used.
    """

    err: float
    answer_err: float
    alpha_factor: float
    fit_rows: int


def pixel_features(frames: Iterable[np.ndarray], side: int = PROBE_SIDE) -> np.ndarray:
    """(N, side * side * 3) float64 in [0, 1]: each uint8 (H, W, 3) frame resized (bilinear) and flattened
    (frames may come one at a time from a generator: only the small features are kept)."""
    from PIL import Image

    def one(frame: np.ndarray) -> np.ndarray:
        img = Image.fromarray(np.asarray(frame, dtype=np.uint8)).convert("RGB").resize((side, side), Image.BILINEAR)
        return np.asarray(img, dtype=np.float64).reshape(-1) / 255.0

    rows = [one(f) for f in frames]
    return np.stack(rows) if rows else np.zeros((0, side * side * 3))


def observation_features(observations: Iterable[np.ndarray], side: int = PROBE_SIDE) -> np.ndarray:
    """(N, features) float64: the policy's own inputs for the same ridge probe. An image observation
    (3-D: channels first, ``(C, H, W)`` with C < W, as the pixel envs stack their frames, or channels last) has
    each of its C planes resized (bilinear) to ``side`` x ``side``, scaled by 255 when uint8, and
    flattened, so k stacked RGB frames give 3k planes and the probe sees the motion between them; any other
    observation (a state vector) is flattened as it is.

    Raises:
        ValueError: observations of different shapes.
    """
    from PIL import Image

    def one(obs: np.ndarray) -> np.ndarray:
        o = np.asarray(obs)
        scale = 255.0 if o.dtype == np.uint8 else 1.0
        if o.ndim != 3:
            return o.astype(np.float64).reshape(-1) / scale
        planes = o if o.shape[0] < o.shape[-1] else np.moveaxis(o, -1, 0)
        resized = [Image.fromarray(plane.astype(np.float32)).resize((side, side), Image.BILINEAR) for plane in planes]
        return np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in resized]) / scale

    rows = [one(o) for o in observations]
    if len({r.shape for r in rows}) > 1:
        raise ValueError(f"observation probe: observations of different shapes {sorted({r.shape for r in rows})}")
    return np.stack(rows) if rows else np.zeros((0, 0))


def _dual_ridge(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, alphas: Sequence[float]) -> list[np.ndarray]:
    """Predictions on ``x_eval`` of ridge fits (standardised features, centred targets) for every alpha,
    from one eigendecomposition of the fit rows' Gram matrix."""
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    a, b = (x_fit - mu) / sd, (x_eval - mu) / sd
    y_mean = y_fit.mean(0)
    evals, evecs = np.linalg.eigh(a @ a.T)
    evals = np.clip(evals, 0.0, None)
    proj = evecs.T @ (y_fit - y_mean)
    cross = b @ a.T @ evecs
    return [cross @ (proj / (evals + alpha)[:, None]) + y_mean for alpha in alphas]


def _folds(groups: np.ndarray, rng: np.random.Generator, folds: int = FOLDS) -> list[np.ndarray]:
    """``folds`` validation index sets: whole groups (episodes) dealt in a random order when there are two or
    more groups (fewer sets when there are fewer groups), else random rows."""
    names = list(dict.fromkeys(groups.tolist()))
    if len(names) >= 2:
        order = [names[i] for i in rng.permutation(len(names))]
        k = min(folds, len(order))
        return [np.flatnonzero(np.isin(groups, np.asarray(order[f::k], dtype=object))) for f in range(k)]
    rows = rng.permutation(len(groups))
    return [np.sort(rows[f::folds]) for f in range(min(folds, len(rows)))]


def frame_probe(train_x: np.ndarray, train_actions: np.ndarray, train_groups: Sequence[str],
                heldout_x: np.ndarray, heldout_actions: np.ndarray, codec: Any, *,
                rng: np.random.Generator) -> ProbeResult:
    """Fit the probe on the training rows and score it on the held-out rows (see the module docstring).

    Args:
        train_x / heldout_x: :func:`pixel_features` of the frames (the caller subsamples the training rows
            to at most :data:`MAX_FIT_ROWS`, :func:`fit_rows`, before decoding them).
        train_actions / heldout_actions: (N, action_dim) ``a_r``.
        train_groups: the episode of each training row (cross-validation keeps episodes whole).
        codec: the env's action codec (``encode``/``decode``), for ``answer_err``.
        rng: the round's generator (the folds).

    Raises:
        ValueError: fewer than two training rows, no held-out row, or rows and actions of different lengths.
    """
    y = np.asarray(train_actions, dtype=np.float64)
    target = np.asarray(heldout_actions, dtype=np.float64)
    groups = np.asarray(list(train_groups), dtype=object)
    if len(y) < 2 or len(target) == 0:
        raise ValueError(f"the frame probe needs >= 2 training rows and >= 1 held-out row "
                         f"(got {len(y)} and {len(target)})")
    if not len(train_x) == len(y) == len(groups) or len(heldout_x) != len(target):
        raise ValueError(f"frame probe: {len(train_x)} training feature rows, {len(y)} actions, {len(groups)} "
                         f"groups; {len(heldout_x)} held-out feature rows, {len(target)} actions")
    alphas = [f * train_x.shape[1] for f in ALPHA_FACTORS]
    cv_err = np.zeros(len(alphas))
    for val in _folds(groups, rng):
        fit = np.setdiff1d(np.arange(len(y)), val)
        if len(fit) < 2:
            continue
        for j, pred in enumerate(_dual_ridge(train_x[fit], y[fit], train_x[val], alphas)):
            cv_err[j] += np.abs(np.clip(pred, -1, 1) - y[val]).sum()
    best = int(np.argmin(cv_err))
    pred = np.clip(_dual_ridge(train_x, y, heldout_x, [alphas[best]])[0], -1.0, 1.0)
    answer_err = heldout_action_error([codec.encode(p) for p in pred], target, codec)["action_err"]
    return ProbeResult(err=float(np.abs(pred - target).mean()), answer_err=answer_err,
                       alpha_factor=ALPHA_FACTORS[best], fit_rows=len(y))


def fit_rows(train_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The training rows the probe fits on: all of them, or a seeded sorted subsample of :data:`MAX_FIT_ROWS`."""
    rows = np.asarray(train_rows)
    return rows if len(rows) <= MAX_FIT_ROWS else np.sort(rng.choice(rows, size=MAX_FIT_ROWS, replace=False))


def cross_validated_probe(x: np.ndarray, actions: np.ndarray, groups: Sequence[str], codec: Any, *,
                          folds: int = 5, rng: np.random.Generator) -> dict[str, float]:
    """The probe against the constants on one set of rows, every row held out once: the rows are split into
    ``folds`` parts (whole groups when there are at least two, :func:`_folds`), and each part is scored by a
    probe and by the best constants fitted on the other parts (at most :data:`MAX_FIT_ROWS` of them, a seeded
    subsample, :func:`fit_rows`).

    Returns:
        ``probe_err``, ``probe_answer_err``, ``const_err``, ``const_answer_err``, ``codec_err`` (row-weighted
        means over the parts), ``probe_over_const`` and ``rows``, ``groups``, ``folds``.

    Raises:
        ValueError: fewer than 3 rows.
    """
    y = np.asarray(actions, dtype=np.float64)
    ids = np.asarray(list(groups), dtype=object)
    if len(y) < 3:
        raise ValueError(f"cross-validating the frame probe needs >= 3 rows (got {len(y)})")
    sums = dict.fromkeys(("probe_err", "probe_answer_err", "const_err", "const_answer_err", "codec_err"), 0.0)
    parts = [p for p in _folds(ids, rng, folds) if 0 < len(p) <= len(y) - 2]
    for held in parts:
        train = fit_rows(np.setdiff1d(np.arange(len(y)), held), rng)  # at most MAX_FIT_ROWS
        probe = frame_probe(x[train], y[train], ids[train].tolist(), x[held], y[held], codec, rng=rng)
        sums["probe_err"] += probe.err * len(held)
        sums["probe_answer_err"] += probe.answer_err * len(held)
        for key, value in constant_references(y[train], y[held], codec).items():
            sums[key] += value * len(held)
    n = sum(len(p) for p in parts)
    out = {k: v / n for k, v in sums.items()}
    out["probe_over_const"] = out["probe_err"] / out["const_err"] if out["const_err"] > 0 else float("nan")
    out.update(rows=float(len(y)), groups=float(len(set(ids.tolist()))), folds=float(len(parts)))
    return out
