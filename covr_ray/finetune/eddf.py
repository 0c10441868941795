"""EDDF, the exploration-driven dynamic filter: which D_f samples the VLM is fine-tuned on.

Paper: z-score the returns, ``G_z = (G - mean(G)) / std(G)``; threshold
``tau = median(G_z) + s(eps_t) * IQR(G_z)``; keep samples with ``G_z >= tau``. High policy entropy (early,
exploring) should loosen the threshold and keep more; low entropy (late) should tighten it.

The choice of ``s`` (the paper writes ``Sigmoid(eps_t)``): SAC's entropy estimate of a tanh-squashed
Gaussian is often negative and *falls* as the policy sharpens, so ``Sigmoid(eps_t)`` falls too and the
literal formula loosens the filter late in training, the opposite of the stated intent. We use a logistic
in the entropy *deficit* below a reference entropy instead::

    s(eps) = s_min + (s_max - s_min) * sigmoid((eps_center - eps) / temperature)

which is monotone non-increasing in ``eps``: ``s -> s_min`` (loosest) for an exploring high-entropy policy,
``s -> s_max`` (strictest) for a collapsed low-entropy one, midway at ``eps_center`` (default SAC's target
entropy ``-action_dim``). With the defaults ``s_min=0, s_max=1``, a Gaussian score keeps about half the
samples at high entropy and about a tenth at low entropy.

Ablations (``EDDFConfig``): ``mode=random`` keeps a random ``topk_keep`` share, ``mode=topk`` the best
``topk_keep`` share, ``zscore=False`` thresholds raw scores, ``signal=reward|q_value`` scores by the
immediate reward or the critic's Q-value instead of the return-to-go. Non-finite scores (a Q-value that was
not provided) are never kept.

One guard beyond the paper: ``tau`` is capped at ``max(G_z)``. When the top quarter of the scores is tied
(e.g. many episodes that all hit the reward ceiling) ``median + s * IQR`` can exceed every score; the cap
keeps the best samples instead of an empty round.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from covr_ray import columns as C
from covr_ray.config import EDDFConfig
from covr_ray.errors import FinetuneDataError

#: EDDFConfig.signal -> the shard column holding that score.
SIGNAL_COLUMN = {"return": C.RETURN_TO_GO, "reward": C.REWARD, "q_value": C.Q_VALUE}


def entropy_slope(entropy: float, cfg: EDDFConfig, action_dim: int) -> float:
    """``s(entropy)``: monotone non-increasing map from policy entropy (nats) to [s_min, s_max]."""
    if not math.isfinite(entropy):
        raise FinetuneDataError(f"policy entropy {entropy!r} is not finite")
    center = -float(action_dim) if cfg.entropy_center is None else float(cfg.entropy_center)
    x = (center - float(entropy)) / cfg.entropy_temperature
    sig = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
    return cfg.s_min + (cfg.s_max - cfg.s_min) * sig


def zscore(x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` (population std); all zeros when std is 0. x: (N,) finite."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    std = float(x.std())
    if std <= 1e-12 * max(1.0, float(np.abs(x).max())):
        return np.zeros_like(x)
    return (x - x.mean()) / std


def _keep_count(share: float, n: int) -> int:
    return min(n, max(1, math.ceil(share * n - 1e-9))) if n else 0


def eddf_select(scores: np.ndarray, entropy: float, cfg: EDDFConfig, action_dim: int,
                rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, dict[str, float]]:
    """Which samples EDDF (or the configured ablation) keeps.

    Args:
        scores: (N,) float, the ``cfg.signal`` column of D_f; NaN = not available (never kept).
        entropy: the policy's entropy now, nats (for ``mode=eddf``).
        cfg: the EDDF section.
        action_dim: sets the default entropy center ``-action_dim``.
        rng: for ``mode=random``.

    Returns:
        ``(keep, metrics)``: keep is (N,) bool; metrics ``eddf/keep_frac``, ``eddf/kept``, ``eddf/n``,
        ``eddf/tau`` (threshold in the thresholded units; NaN for ``random``), ``eddf/s``,
        ``eddf/entropy``, ``eddf/median``, ``eddf/iqr``, ``eddf/nonfinite``.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1:
        raise FinetuneDataError(f"scores shape {x.shape}; expected (N,)")
    n = x.size
    finite = np.isfinite(x)
    keep = np.zeros(n, dtype=bool)
    s = entropy_slope(entropy, cfg, action_dim)
    median = iqr = tau = math.nan
    if cfg.mode == "random":
        rng = rng if rng is not None else np.random.default_rng()
        keep[rng.choice(n, size=_keep_count(cfg.topk_keep, n), replace=False)] = True
    elif finite.any():
        g = zscore(x[finite]) if cfg.zscore else x[finite]
        if cfg.mode == "topk":
            k = _keep_count(cfg.topk_keep, g.size)
            order = np.argsort(-g, kind="stable")
            sub = np.zeros(g.size, dtype=bool)
            sub[order[:k]] = True
            tau = float(g[order[k - 1]])
        elif cfg.mode == "eddf":
            q25, median, q75 = (float(v) for v in np.percentile(g, [25, 50, 75]))
            iqr = q75 - q25
            tau = min(median + s * iqr, float(g.max()))  # capped: the best samples are always kept
            sub = g >= tau - 1e-12 * max(1.0, abs(tau))
        else:  # pragma: no cover - EDDFConfig.mode is a checked Literal
            raise FinetuneDataError(f"eddf.mode {cfg.mode!r}; allowed: eddf, random, topk")
        keep[np.flatnonzero(finite)[sub]] = True
    elif n and cfg.mode != "random":
        raise FinetuneDataError(f"no sample of {n} has a finite {cfg.signal!r} score "
                                f"(column {SIGNAL_COLUMN[cfg.signal]!r}); with eddf.signal=q_value the "
                                "collector must pass Q-values or the round score them (loop.df_q_scoring)")
    kept = int(keep.sum())
    metrics = {"eddf/keep_frac": kept / n if n else 0.0, "eddf/kept": float(kept), "eddf/n": float(n),
               "eddf/tau": tau, "eddf/s": s, "eddf/entropy": float(entropy), "eddf/median": median,
               "eddf/iqr": iqr, "eddf/nonfinite": float(n - int(finite.sum()))}
    return keep, metrics
