"""RALW, return-aware adaptive loss weights for the kept samples.

Paper: min-max scale the kept samples' returns to [-1, 1], ``g_norm = 2 (g - min) / (max - min) - 1``, and
weight each sample ``w_b = max(g_norm_b, 0)``: the lower half of the return range gets weight 0 (it does not
move the model), the best sample weight 1. The loss that uses them is
``(1 / N_v) * sum_b w_b * sum_t -log p(y_bt | x_b, y_b,<t)`` (see :mod:`covr_ray.lora.trainer`).

When every kept return is equal the min-max scaling is undefined; all samples then get weight 1 (none is
better than another, and a round should not silently train on nothing).

Ablations (``RALWSection.mode``): ``none`` = all weights 1; ``random`` = uniform in [0, 1).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from covr_ray.config import RALWSection
from covr_ray.errors import FinetuneDataError


def minmax_signed(g: np.ndarray) -> np.ndarray:
    """Scale (K,) finite values to [-1, 1] (min -> -1, max -> 1); all ones when max == min."""
    g = np.asarray(g, dtype=np.float64)
    if g.size == 0:
        return g
    lo, hi = float(g.min()), float(g.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)):
        return np.ones_like(g)
    return np.clip(2.0 * (g - lo) / (hi - lo) - 1.0, -1.0, 1.0)


def ralw_weights(returns: np.ndarray, cfg: RALWSection,
                 rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, dict[str, float]]:
    """Sample weights of the kept samples.

    Args:
        returns: (K,) finite return-to-go of the samples EDDF kept.
        cfg: the RALW section.
        rng: for ``mode=random``.

    Returns:
        ``(w, metrics)``: w is (K,) float32 in [0, 1]; metrics ``ralw/mean_weight``, ``ralw/zero_frac``,
        ``ralw/effective_n`` (``(sum w)^2 / sum w^2``, samples that effectively teach), ``ralw/n``.
    """
    g = np.asarray(returns, dtype=np.float64)
    if g.ndim != 1 or not np.all(np.isfinite(g)):
        raise FinetuneDataError(f"returns must be a (K,) finite array; got shape {g.shape}, "
                                f"{int((~np.isfinite(g)).sum())} non-finite values")
    if cfg.mode == "ralw":
        w = np.maximum(minmax_signed(g), 0.0)
    elif cfg.mode == "none":
        w = np.ones_like(g)
    elif cfg.mode == "random":
        w = (rng if rng is not None else np.random.default_rng()).random(g.size)
    else:  # pragma: no cover - RALWSection.mode is a checked Literal
        raise FinetuneDataError(f"ralw.mode {cfg.mode!r}; allowed: ralw, none, random")
    w = w.astype(np.float32)
    sq = float(np.square(w, dtype=np.float64).sum())
    metrics = {"ralw/mean_weight": float(w.mean()) if w.size else 0.0,
               "ralw/zero_frac": float((w == 0).mean()) if w.size else 0.0,
               "ralw/effective_n": float(w.sum(dtype=np.float64)) ** 2 / sq if sq > 0 else 0.0,
               "ralw/n": float(w.size)}
    return w, metrics
