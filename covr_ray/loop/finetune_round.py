"""One fine-tune round of the COVR loop: D_f -> critic scoring -> EDDF + RALW -> LoRA -> hot swap.

:func:`fine_tune_round` does the work of one round and reports what happened; the orchestrator applies it
(schedule, guidance, clearing D_f; :mod:`covr_ray.loop.rounds`), so a failed round changes nothing that
cannot be redone. It is :func:`prepare_round` (steps 1-2, on the driver: they need the learner's critic),
the trainer's remote call (step 3) and :func:`finish_round` (step 4); an asynchronous round
(``schedule.async_rounds``) runs the same three with the learner training between the call and its result:

1. the learner's critic completes D_f: time-limit-truncated episodes get their return-to-go bootstrapped
   (always), and with ``eddf.signal=q_value`` every row gets ``Q(o_i, a_r_i)``
   (:mod:`covr_ray.select.critic`; shards are rewritten atomically, each at most once);
2. EDDF + RALW write the round's kept shard set (warm-up rows are never candidates);
3. the LoRA trainer actor trains on it and saves adapter ``v<N>`` (within ``lora.max_round_s``);
4. every prior replica hot-swaps ``v<N>``.

A round *completes* when a new adapter was trained: then the D_f shards it read are consumed (the caller
deletes them) and it counts toward ``schedule.cold_start_rounds``. When the trainer fails or times out
(``round/failed`` = 1), or trains nothing (``round/trained`` = 0: an empty kept set), D_f is kept for the
next attempt and the round does not count. Shards the critic could not score are left out of the round
but are not consumed either (they are cleared with D_f after a completed round, as the docs say).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from covr_ray.config import CovrConfig
from covr_ray.df.shards import ShardSet
from covr_ray.errors import LoRATrainerError
from covr_ray.log import get_logger
from covr_ray.lora.actor import train_round_remote
from covr_ray.lora.trainer import RoundResult
from covr_ray.prior.service import load_adapter_everywhere
from covr_ray.select.critic import bootstrap_truncated_shards, score_df_shards
from covr_ray.select.kept import build_kept_set

log = get_logger(__name__)


@dataclass
class RoundOutcome:
    """What one round did."""

    completed: bool
    """A new adapter was trained (the round counts; its D_f shards are consumed)."""
    version: Optional[int]
    """The adapter version now serving on at least one replica after this round; None = unchanged."""
    df_shards: list[Path] = field(default_factory=list)
    """Every D_f shard present when the round started (deleted by the caller when ``completed``)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """``round/*``, ``df/*``, ``eddf/*``, ``ralw/*``, ``lora/*`` metrics of the round."""


def prepare_round(cfg: CovrConfig, *, df_shards: list[Path], out_dir: Path, round_index: int,
                  value_fn: Callable[[np.ndarray], np.ndarray],
                  q_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], action_dim: int,
                  entropy: Optional[float], initial_entropy: Optional[float]) -> tuple[ShardSet, dict[str, float]]:
    """Steps 1-2 of a round: the critic completes D_f, EDDF + RALW write the kept shard set to ``out_dir``.
    Returns the kept set and the ``df/*``, ``round/*``, ``eddf/*``, ``ralw/*`` metrics (arguments as in
    :func:`fine_tune_round`)."""
    metrics: dict[str, float] = {}
    shards, boot_metrics = bootstrap_truncated_shards(df_shards, cfg.env.frame_stack, value_fn, cfg.sac.gamma)
    metrics.update(boot_metrics)
    if cfg.eddf.signal == "q_value":  # the ablation: score D_f with the critic first
        shards, q_metrics = score_df_shards(shards, cfg.env.frame_stack, q_fn, action_dim)
        metrics.update(q_metrics)
    kept, data_metrics = build_kept_set(shards, out_dir, cfg.eddf, cfg.ralw, action_dim, entropy=entropy,
                                        seed=cfg.seed + round_index, initial_entropy=initial_entropy,
                                        sources=df_shards)
    metrics.update(data_metrics)
    return kept, metrics


def finish_round(result: "RoundResult | LoRATrainerError", *, df_shards: list[Path], round_index: int,
                 kept_rows: int, prior: list[Any], serving_version: int, timeout_s: float) -> RoundOutcome:
    """Step 4 and the verdict: given the trainer's result (or the error its call ended with), hot-swap a new
    adapter into every prior replica and say whether the round completed.

    Args:
        result: what the trainer's call returned, or the :class:`LoRATrainerError` it ended with.
        df_shards: the D_f shards the round's kept set was built from (consumed if it completes).
        round_index: ``c``.
        kept_rows: rows of the round's kept set (for the log).
        prior: the prior-service replica handles.
        serving_version: the version the replicas serve now; a version not newer (a round collected after a
            resume, whose adapter the restarted service already loaded) is not swapped again.
        timeout_s: the longest wait for each hot swap.
    """
    if isinstance(result, LoRATrainerError):
        log.error("fine-tune round %d failed (%s); D_f is kept for the next attempt and the previous adapter "
                  "keeps serving", round_index, result)
        return RoundOutcome(False, None, list(df_shards), {"round/failed": 1.0, "round/trained": 0.0})
    metrics = dict(result.metrics)
    metrics["round/failed"] = 0.0
    metrics["round/trained"] = float(result.trained)
    # the version this round's adapter has (``lora/adapter_version`` is the one the run serves: at a resume the
    # service already serves the newest while the rounds done since the checkpoint are collected, oldest first)
    metrics["round/adapter_version"] = float(result.version)
    if not (result.trained and result.adapter_path):
        log.warning("fine-tune round %d trained nothing (kept %d rows); it does not count and D_f is kept",
                    round_index, kept_rows)
        return RoundOutcome(False, None, list(df_shards), metrics)
    if result.version <= serving_version:
        metrics["lora/swap_failures"] = 0.0
        return RoundOutcome(True, serving_version, list(df_shards), metrics)
    answers = load_adapter_everywhere(prior, result.adapter_path, result.version, timeout_s)
    failed = [a for a in answers if isinstance(a, BaseException)]
    for err in failed:
        log.error("a prior replica refused adapter v%d: %s", result.version, err)
    metrics["lora/swap_failures"] = float(len(failed))
    serving = result.version if len(failed) < len(answers) else None
    return RoundOutcome(True, serving, list(df_shards), metrics)


def fine_tune_round(cfg: CovrConfig, *, df_shards: list[Path], out_dir: Path, round_index: int, lora: Any,
                    prior: list[Any], value_fn: Callable[[np.ndarray], np.ndarray],
                    q_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], action_dim: int,
                    entropy: Optional[float], initial_entropy: Optional[float], timeout_s: float,
                    serving_version: int = -1, version: Optional[int] = None) -> RoundOutcome:
    """Run one round synchronously (see the module docstring).

    Args:
        cfg: the run's config.
        df_shards: D_f's complete shards now (``RunDir.df_shards()``).
        out_dir: directory for the round's kept shard set (must not exist).
        round_index: ``c``, the index of the round (seeds the ``random`` ablations).
        lora: the LoRA trainer actor handle.
        prior: the prior-service replica handles.
        value_fn: ``obs (N, 3k, S, S) uint8 -> V(o) (N,)`` (the learner's critic).
        q_fn: ``obs, actions (N, A) -> Q(o, a) (N,)`` (the learner's critic; ``eddf.signal=q_value`` only).
        action_dim: the env's action dimension.
        entropy: the policy's entropy now (``learner/entropy``), None before the first update.
        initial_entropy: the run's first measured policy entropy (``eddf.slope=run``).
        timeout_s: the longest wait for the trainer and each hot swap.
        serving_version: the adapter version the prior replicas serve now.
        version: the adapter version to write; None = the trainer's next.
    """
    kept, metrics = prepare_round(cfg, df_shards=df_shards, out_dir=out_dir, round_index=round_index,
                                  value_fn=value_fn, q_fn=q_fn, action_dim=action_dim, entropy=entropy,
                                  initial_entropy=initial_entropy)
    result: RoundResult | LoRATrainerError
    try:
        result = train_round_remote(lora, kept.path, timeout_s=timeout_s, version=version)
    except LoRATrainerError as exc:
        result = exc
    outcome = finish_round(result, df_shards=df_shards, round_index=round_index, kept_rows=kept.rows, prior=prior,
                           serving_version=serving_version, timeout_s=timeout_s)
    outcome.metrics = {**metrics, **outcome.metrics}
    return outcome
