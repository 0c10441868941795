"""EDDF, the exploration-driven dynamic filter: which D_f samples the VLM is fine-tuned on.

Paper: z-score the returns, ``G_z = (G - mean(G)) / std(G)``; threshold
``tau = median(G_z) + s(eps_t) * IQR(G_z)``; keep samples with ``G_z >= tau``. High policy entropy (early,
exploring) should loosen the threshold and keep more; low entropy (late) should tighten it.

The choice of ``s`` (the paper writes ``Sigmoid(eps_t)``; ``eddf.slope`` selects):

- ``run`` (default): reference points taken from the run itself. SAC's automatic temperature drives the
  policy entropy from its initial value ``H_0`` (the first entropy the learner measures; persisted with
  the run) toward SAC's target entropy ``H_T = -action_dim``. ``s`` is linear between them, clipped::

      s(H) = s_min + (s_max - s_min) * clip((H_0 - H) / (H_0 - H_T), 0, 1)

  so ``s`` spans its whole range over a run: ``s_min`` (loosest) while the policy still explores as at the
  start, ``s_max`` (strictest) once it has collapsed to the target. (A run whose ``H_0`` is already at or
  below ``H_T`` gets ``s_max`` at or below ``H_T`` and ``s_min`` above it.) docs/finetune.md shows ``s``
  and the kept share over a run.
- ``logistic``: ``s_min + (s_max - s_min) * sigmoid((H_center - H) / temperature)`` with fixed
  ``entropy_center`` (default ``-action_dim``) and ``entropy_temperature``. Monotone in the right
  direction, but measured in three runs it stayed within 0.04-0.19 while the entropy went from +1.1 to
  -1.2 nats: SAC's temperature keeps H above the centre, where the logistic is nearly flat.
- ``paper``: the literal ``Sigmoid(H)``. Not the default because it moves the wrong way: SAC's entropy
  estimate of a tanh-squashed Gaussian falls as the policy sharpens (often below 0), so ``Sigmoid(H)``
  *falls* too and loosens the filter late in training, the opposite of the paper's stated intent (loose
  early while exploring, strict late). Kept for reproducing the formula as written.

Ablations (``EDDFSection``): ``mode=random`` keeps a random ``topk_keep`` share, ``mode=topk`` the best
``topk_keep`` share, ``signal=reward|q_value`` scores by the immediate reward or the critic's Q-value
instead of the return-to-go. Non-finite scores (a Q-value that was not provided) are never kept.
``zscore=False`` thresholds raw scores, which keeps exactly the same samples: ``median + s * IQR``, top-k
and the cap at the maximum are all affine-equivariant, and the z-score is an increasing affine map. It only
changes the units of ``eddf/tau``; it cannot reproduce the paper's "no z-score" ablation (ER 210 vs 248),
whose difference must come from something the paper does not describe.

One guard beyond the paper: ``tau`` is capped at ``max(G_z)``. When the top quarter of the scores is tied
(e.g. many episodes that all hit the reward ceiling) ``median + s * IQR`` can exceed every score; the cap
keeps the best samples instead of an empty round.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from covr_ray import columns as C
from covr_ray.config import EDDFSection
from covr_ray.errors import FinetuneDataError

#: EDDFSection.signal -> the shard column holding that score.
SIGNAL_COLUMN = {"return": C.RETURN_TO_GO, "reward": C.REWARD, "q_value": C.Q_VALUE}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def target_entropy(action_dim: int) -> float:
    """SAC's target entropy ``-action_dim`` (RLlib's ``target_entropy="auto"``)."""
    return -float(action_dim)


def entropy_slope(entropy: float, cfg: EDDFSection, action_dim: int,
                  initial_entropy: Optional[float] = None) -> float:
    """``s(entropy)`` per ``cfg.slope`` (module docstring).

    Args:
        entropy: the policy's entropy now, nats.
        cfg: the EDDF section.
        action_dim: sets SAC's target entropy ``-action_dim``.
        initial_entropy: the run's initial policy entropy (``slope=run``); None = ``entropy`` itself, i.e.
            a run with no earlier measurement is at its start (``s = s_min``).

    ``run`` and ``logistic`` are monotone non-increasing in ``entropy`` within ``[s_min, s_max]``;
    ``paper`` is the increasing ``Sigmoid(entropy)``.
    """
    if not math.isfinite(entropy):
        raise FinetuneDataError(f"policy entropy {entropy!r} is not finite")
    if cfg.slope == "paper":
        return _sigmoid(float(entropy))
    if cfg.slope == "logistic":
        center = target_entropy(action_dim) if cfg.entropy_center is None else float(cfg.entropy_center)
        frac = _sigmoid((center - float(entropy)) / cfg.entropy_temperature)
    else:  # run
        high = float(entropy) if initial_entropy is None else float(initial_entropy)
        if not math.isfinite(high):
            raise FinetuneDataError(f"initial policy entropy {initial_entropy!r} is not finite")
        low = target_entropy(action_dim)
        if high - low > 1e-6:
            frac = min(1.0, max(0.0, (high - float(entropy)) / (high - low)))
        else:
            frac = 1.0 if entropy <= low else 0.0
    return cfg.s_min + (cfg.s_max - cfg.s_min) * frac


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


def eddf_select(scores: np.ndarray, entropy: float, cfg: EDDFSection, action_dim: int,
                rng: Optional[np.random.Generator] = None,
                initial_entropy: Optional[float] = None) -> tuple[np.ndarray, dict[str, float]]:
    """Which samples EDDF (or the configured ablation) keeps.

    Args:
        scores: (N,) float, the ``cfg.signal`` column of D_f; NaN = not available (never kept).
        entropy: the policy's entropy now, nats (for ``mode=eddf``).
        cfg: the EDDF section.
        action_dim: sets SAC's target entropy ``-action_dim``.
        rng: for ``mode=random``.
        initial_entropy: the run's initial policy entropy (``slope=run``; see :func:`entropy_slope`).

    Returns:
        ``(keep, metrics)``: keep is (N,) bool; metrics ``eddf/keep_frac``, ``eddf/kept``, ``eddf/n``,
        ``eddf/tau`` (threshold in the thresholded units; NaN for ``random``), ``eddf/s``,
        ``eddf/entropy``, ``eddf/initial_entropy`` (NaN when not given), ``eddf/median``, ``eddf/iqr``,
        ``eddf/nonfinite``.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1:
        raise FinetuneDataError(f"scores shape {x.shape}; expected (N,)")
    n = x.size
    finite = np.isfinite(x)
    keep = np.zeros(n, dtype=bool)
    s = entropy_slope(entropy, cfg, action_dim, initial_entropy)
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
        else:  # pragma: no cover - EDDFSection.mode is a checked Literal
            raise FinetuneDataError(f"eddf.mode {cfg.mode!r}; allowed: eddf, random, topk")
        keep[np.flatnonzero(finite)[sub]] = True
    elif n and cfg.mode != "random":
        raise FinetuneDataError(f"no sample of {n} has a finite {cfg.signal!r} score "
                                f"(column {SIGNAL_COLUMN[cfg.signal]!r}); with eddf.signal=q_value the "
                                "collector must pass Q-values or the round score them (select.critic)")
    kept = int(keep.sum())
    metrics = {"eddf/keep_frac": kept / n if n else 0.0, "eddf/kept": float(kept), "eddf/n": float(n),
               "eddf/tau": tau, "eddf/s": s, "eddf/entropy": float(entropy),
               "eddf/initial_entropy": math.nan if initial_entropy is None else float(initial_entropy),
               "eddf/median": median,
               "eddf/iqr": iqr, "eddf/nonfinite": float(n - int(finite.sum()))}
    return keep, metrics
