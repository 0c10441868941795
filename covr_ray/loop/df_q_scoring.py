"""EDDF's Q-value ablation in ``covr train``: D_f rows scored by the learner's critic when a round reads them.

The paper's ablation filters D_f by ``Q(o_i, a_r_i)`` instead of the return-to-go (``eddf.signal=q_value``).
The env runners cannot score rows as they record them: their RLModule is inference-only (encoder and actor,
no critic). So at each fine-tune round, before EDDF reads D_f, the orchestrator scores every D_f row that
has no Q yet with the learner's current critic (``min(Q1, Q2)``, the same network SAC trains):

- o_i is rebuilt exactly from the episode's frames: a D_f row stores the newest RGB frame of o_i, and the
  env's frame stack (:class:`covr_envs.wrappers.FrameStackCHW`) is the last ``k`` frames, oldest first,
  with the reset frame filling every slot. So ``o_i = [f_max(i-k+1, 0), ..., f_i]``: this needs the
  episode's rows from step 0 on, which the recorder guarantees (it writes whole episodes);
- each scored shard is rewritten atomically with its ``q_value`` column filled, so the kept set carries the
  Q-values EDDF used; rows that already have a finite Q keep it;
- a shard that cannot be scored (unreadable, an episode that does not start at step 0 or has a gap) is left
  out of the round with a warning and counted in ``df/q_unscored_shards``; it is cleared with D_f.

Q is the critic's at the round, not at collection: early in training both are what the paper calls
unstable (its ablation: ER 200 with Q instead of return).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from covr_ray import columns as C
from covr_ray.errors import FinetuneDataError, ShardError
from covr_ray.finetune.shards import decode_frame, read_shard, write_shard
from covr_ray.log import get_logger

log = get_logger(__name__)

#: ``q_fn(obs (N, 3k, S, S) uint8, actions (N, A) float32) -> (N,)`` (e.g. :func:`covr_ray.rl.algo.q_values`).
QFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


def episode_observations(frames: np.ndarray, frame_stack: int) -> np.ndarray:
    """The policy's observations of one episode from its per-step newest frames.

    Args:
        frames: ``(T, S, S, 3)`` uint8, frame i = the newest frame of o_i, from the episode's step 0.
        frame_stack: k, the env's ``frame_stack``.

    Returns:
        ``(T, 3k, S, S)`` uint8, oldest frame first (what :class:`~covr_envs.wrappers.FrameStackCHW` gives).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise FinetuneDataError(f"episode frames must be (T, S, S, 3) uint8, got {frames.shape} {frames.dtype}")
    if frame_stack < 1:
        raise FinetuneDataError(f"frame_stack must be >= 1, got {frame_stack}")
    chw = frames.transpose(0, 3, 1, 2)
    t = np.arange(len(frames))
    slots = [chw[np.maximum(t - lag, 0)] for lag in range(frame_stack - 1, -1, -1)]
    return np.ascontiguousarray(np.concatenate(slots, axis=1))


def _score_table(table: pa.Table, frame_stack: int, q_fn: QFunction, action_dim: int, where: str) -> pa.Table:
    """``table`` with every non-finite ``q_value`` replaced by ``q_fn`` of its rebuilt observation."""
    episode_ids = np.asarray(table.column(C.EPISODE_ID).to_pylist(), dtype=object)
    steps = table.column(C.STEP_INDEX).to_numpy(zero_copy_only=False)
    q = table.column(C.Q_VALUE).to_numpy(zero_copy_only=False).astype(np.float32, copy=True)
    actions = np.asarray(table.column(C.RL_ACTION).to_pylist(), dtype=np.float32).reshape(len(q), action_dim)
    pngs = table.column(C.FRAME_PNG)
    for episode_id in dict.fromkeys(episode_ids):
        rows = np.flatnonzero(episode_ids == episode_id)
        rows = rows[np.argsort(steps[rows], kind="stable")]
        if np.all(np.isfinite(q[rows])):
            continue
        if not np.array_equal(steps[rows], np.arange(len(rows))):
            raise FinetuneDataError(f"{where}: episode {episode_id!r} has steps {steps[rows][:3].tolist()}... "
                                    f"({len(rows)} rows), not 0..{len(rows) - 1}: its frame stacks cannot be "
                                    "rebuilt")
        frames = np.stack([decode_frame(pngs[int(i)].as_py()) for i in rows])
        scores = np.asarray(q_fn(episode_observations(frames, frame_stack), actions[rows]),
                            dtype=np.float32).reshape(-1)
        if scores.shape != (len(rows),) or not np.all(np.isfinite(scores)):
            raise FinetuneDataError(f"{where}: the critic gave {scores.shape} scores for {len(rows)} rows of "
                                    f"episode {episode_id!r}, or a non-finite one")
        todo = ~np.isfinite(q[rows])
        q[rows[todo]] = scores[todo]
    idx = table.schema.get_field_index(C.Q_VALUE)
    return table.set_column(idx, table.schema.field(idx), pa.array(q, pa.float32()))


def score_df_shards(shards: Sequence[Path], frame_stack: int, q_fn: QFunction,
                    action_dim: int) -> tuple[list[Path], dict[str, float]]:
    """Fill the ``q_value`` column of D_f shards in place (atomically, shard by shard).

    Args:
        shards: D_f shard paths (kind ``df``).
        frame_stack: the env's frame stack k.
        q_fn: the critic (see :data:`QFunction`).
        action_dim: the env's action dimension.

    Returns:
        ``(shards every row of which now has a Q, metrics)``: ``df/q_scored_rows``, ``df/q_unscored_shards``.
    """
    scored: list[Path] = []
    rows_scored, unscored = 0, 0
    for path in shards:
        path = Path(path)
        try:
            table = read_shard(path, kind="df")
            before = np.isfinite(table.column(C.Q_VALUE).to_numpy(zero_copy_only=False))
            if not before.all():
                table = _score_table(table, frame_stack, q_fn, action_dim, str(path))
                write_shard(path, table)
                rows_scored += int((~before).sum())
        except (ShardError, FinetuneDataError) as exc:
            log.warning("round: D_f shard left out of the Q-value round: %s", exc)
            unscored += 1
            continue
        scored.append(path)
    return scored, {"df/q_scored_rows": float(rows_scored), "df/q_unscored_shards": float(unscored)}
