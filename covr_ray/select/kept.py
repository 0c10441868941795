"""The data side of one fine-tune round: D_f -> EDDF -> RALW -> a kept shard set.

Reads only the score columns of D_f to decide (EDDF over all of D_f at once), then streams D_f shard by
shard into the kept set, adding each kept row's RALW weight, so RAM holds one shard's frames at a time.
The kept set is written atomically (:class:`~covr_ray.df.shards.ShardSetWriter`); D_f is left as it is
(the loop clears it with :func:`covr_ray.df.writer.delete_consumed` only after the round's adapter is
trained). Shards that fail validation are skipped with a warning and counted in
``round/skipped_shards``.

Candidates: rows of uniform-random warm-up actions (``warmup``) are never selected, so the VLM is not
taught random actions, and neither are rows whose truncated episode has not been bootstrapped yet
(``bootstrap_value`` NaN: their return-to-go lacks the tail the critic would add; the round bootstraps D_f
before it builds the kept set, see :mod:`covr_ray.select.critic`). EDDF's statistics (z-score,
median, IQR) are taken over the candidates only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from covr_ray import columns as C
from covr_ray.config import EDDFSection, RALWSection
from covr_ray.errors import FinetuneDataError, ShardError
from covr_ray.select.eddf import SIGNAL_COLUMN, eddf_select
from covr_ray.select.ralw import ralw_weights
from covr_ray.df.shards import (META_KIND, ShardSet, ShardSetWriter, build_table, read_shard, shard_action_dim,
                                write_shard_set)
from covr_ray.frames import encode_frame
from covr_ray.log import get_logger

log = get_logger(__name__)

_SCORE_COLUMNS = [C.RETURN_TO_GO, C.REWARD, C.Q_VALUE, C.ENTROPY, C.WARMUP, C.BOOTSTRAP_VALUE]


def build_kept_set(df_shards: Sequence[Path], out_dir: Path, eddf: EDDFSection, ralw: RALWSection,
                   action_dim: int, entropy: Optional[float] = None, seed: int = 0,
                   initial_entropy: Optional[float] = None,
                   sources: Optional[Sequence[Path]] = None) -> tuple[ShardSet, dict[str, float]]:
    """Filter and weight D_f's shards into a new kept shard set at ``out_dir`` (must not exist).

    Args:
        df_shards: D_f shard paths (kind ``df``).
        out_dir: directory of the kept set.
        action_dim: the env's action dimension (shards with another one are skipped).
        entropy: the policy's entropy now (nats) for EDDF's threshold; None = mean of D_f's ``entropy``
            over the candidate rows.
        seed: seeds the ``random`` ablations.
        initial_entropy: the run's initial policy entropy (``eddf.slope=run``'s high reference point).
        sources: the D_f shards the round consumes when it completes, recorded in the kept set's manifest
            (:attr:`ShardSet.sources`: a resumed run finishes a round completed after its checkpoint with
            them); None = ``df_shards``.

    Returns:
        ``(kept set, metrics)`` with ``eddf/*``, ``ralw/*``, ``round/df_rows``, ``round/candidate_rows``,
        ``round/warmup_rows``, ``round/unbootstrapped_rows``, ``round/kept_rows``, ``round/skipped_shards``.
    """
    rng = np.random.default_rng(seed)
    valid: list[tuple[Path, int]] = []
    scores: list[pa.Table] = []
    skipped = 0
    for path in df_shards:
        try:
            table = read_shard(Path(path), columns=_SCORE_COLUMNS, kind="df")
            if shard_action_dim(table) != action_dim:
                raise ShardError(f"shard {path}: action_dim {shard_action_dim(table)}; this run's is {action_dim}")
        except ShardError as exc:
            log.warning("round: skipping D_f shard: %s", exc)
            skipped += 1
            continue
        valid.append((Path(path), table.num_rows))
        scores.append(table)
    n = sum(rows for _p, rows in valid)

    def col(name: str) -> np.ndarray:
        if not scores:
            return np.zeros(0, np.float32)
        return np.concatenate([t.column(name).to_numpy(zero_copy_only=False) for t in scores])

    warm = col(C.WARMUP).astype(bool)
    pending = np.isnan(col(C.BOOTSTRAP_VALUE).astype(np.float64))
    candidate = ~warm & ~pending
    if entropy is None:
        ent_rows = col(C.ENTROPY)[candidate]
        entropy = float(ent_rows.mean()) if ent_rows.size else 0.0
    keep = np.zeros(n, bool)
    sub_keep, metrics = eddf_select(col(SIGNAL_COLUMN[eddf.signal])[candidate], entropy, eddf, action_dim, rng,
                                    initial_entropy=initial_entropy)
    keep[np.flatnonzero(candidate)[sub_keep]] = True
    weights, ralw_metrics = ralw_weights(col(C.RETURN_TO_GO)[keep].astype(np.float64), ralw, rng)
    metrics.update(ralw_metrics)

    offset, w_offset = 0, 0
    with ShardSetWriter(Path(out_dir), kind="kept", action_dim=action_dim,
                        sources=df_shards if sources is None else sources) as writer:
        for path, rows in valid:
            mask = keep[offset:offset + rows]
            offset += rows
            k = int(mask.sum())
            if k == 0:
                continue
            w = weights[w_offset:w_offset + k]
            w_offset += k
            try:  # the first pass read only score columns; a frame page may still be corrupt
                table = read_shard(path, kind="df").filter(pa.array(mask))
            except ShardError as exc:
                log.warning("round: skipping D_f shard on full read: %s", exc)
                skipped += 1
                continue
            idx = table.schema.get_field_index(C.SAMPLE_WEIGHT)
            table = table.set_column(idx, table.schema.field(idx), pa.array(w, pa.float32()))
            meta = dict(table.schema.metadata)
            meta[META_KIND] = b"kept"
            writer.write(table.replace_schema_metadata(meta))
    assert writer.result is not None
    if w_offset != len(weights):
        raise FinetuneDataError(f"kept {w_offset} rows but computed {len(weights)} weights (a D_f shard changed "
                                "while the round read it)")
    metrics.update({"round/df_rows": float(n), "round/candidate_rows": float(candidate.sum()),
                    "round/warmup_rows": float(warm.sum()), "round/unbootstrapped_rows": float((pending & ~warm).sum()),
                    "round/kept_rows": float(writer.result.rows), "round/skipped_shards": float(skipped)})
    return writer.result, metrics


def kept_set_from_arrays(path: Path, frames: Sequence[np.ndarray], actions: np.ndarray,
                         weights: Optional[np.ndarray] = None, returns: Optional[np.ndarray] = None,
                         episode_id: str = "given") -> ShardSet:
    """Write a kept shard set from arrays (benchmarks, tests, or supervising the VLM with given pairs).

    Args:
        frames: N frames (H, W, 3) uint8.
        actions: (N, action_dim) float in [-1, 1].
        weights: (N,) sample weights (default 1).
        returns: (N,) returns stored beside them (default 0).
    """
    acts = np.asarray(actions, dtype=np.float32)
    n = len(frames)
    if acts.ndim != 2 or len(acts) != n:
        raise FinetuneDataError(f"actions shape {acts.shape}; expected ({n}, action_dim)")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    g = np.zeros(n) if returns is None else np.asarray(returns, dtype=np.float64)
    rows = {C.EPISODE_ID: [episode_id] * n, C.STEP_INDEX: list(range(n)),
            C.FRAME_PNG: [encode_frame(f) for f in frames], C.RL_ACTION: acts, C.RETURN_TO_GO: g,
            C.REWARD: np.zeros(n), C.Q_VALUE: np.full(n, np.nan), C.ENTROPY: np.zeros(n), C.SAMPLE_WEIGHT: w}
    return write_shard_set(Path(path), [build_table(rows, "kept", acts.shape[1])], "kept", acts.shape[1])
