"""D_f rows scored by the learner's critic when a round reads them: truncation bootstraps and EDDF's Q ablation.

**Bootstrapping time-limit truncations** (every round, :func:`bootstrap_truncated_shards`). A D_f
episode cut by a time limit (every DMControl episode ends so) did not end the task: its return-to-go gets
``gamma^(T-i) V(o_T)`` added, ``V(o) = min(Q1, Q2)(o, tanh(mean(o)))`` from the learner's current critic
and policy; a true termination keeps 0. The recorder stored the newest frame of o_T on the episode's last
row (``final_frame_png``); o_T's stack is rebuilt from it and the episode's last ``k - 1`` frames. The value
is written into ``bootstrap_value`` (NaN before), so a shard is bootstrapped once, whatever round reads it.

**The Q-value ablation** (``eddf.signal=q_value``, :func:`score_df_shards`).

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
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from covr_ray import columns as C
from covr_ray.errors import FinetuneDataError, ShardError
from covr_ray.df.shards import read_shard, write_shard
from covr_ray.frames import decode_frame
from covr_ray.log import get_logger

log = get_logger(__name__)

#: ``q_fn(obs (N, 3k, S, S) uint8, actions (N, A) float32) -> (N,)`` (e.g. :func:`covr_ray.rl.algo.q_values`).
QFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: ``v_fn(obs (N, 3k, S, S) uint8) -> (N,)`` (e.g. :func:`covr_ray.rl.algo.state_values`).
VFunction = Callable[[np.ndarray], np.ndarray]


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


def _episode_rows(table: pa.Table, where: str) -> Iterator[tuple[str, np.ndarray]]:
    """``(episode id, its row indices in step order)`` for each episode of ``table``; raises
    FinetuneDataError for an episode whose steps are not exactly 0..T-1 (its frame stacks cannot be rebuilt)."""
    episode_ids = np.asarray(table.column(C.EPISODE_ID).to_pylist(), dtype=object)
    steps = table.column(C.STEP_INDEX).to_numpy(zero_copy_only=False)
    for episode_id in dict.fromkeys(episode_ids):
        rows = np.flatnonzero(episode_ids == episode_id)
        rows = rows[np.argsort(steps[rows], kind="stable")]
        if not np.array_equal(steps[rows], np.arange(len(rows))):
            raise FinetuneDataError(f"{where}: episode {episode_id!r} has steps {steps[rows][:3].tolist()}... "
                                    f"({len(rows)} rows), not 0..{len(rows) - 1}: its frame stacks cannot be "
                                    "rebuilt")
        yield str(episode_id), rows


def _score_table(table: pa.Table, frame_stack: int, q_fn: QFunction, action_dim: int, where: str) -> pa.Table:
    """``table`` with every non-finite ``q_value`` replaced by ``q_fn`` of its rebuilt observation."""
    q = table.column(C.Q_VALUE).to_numpy(zero_copy_only=False).astype(np.float32, copy=True)
    actions = np.asarray(table.column(C.RL_ACTION).to_pylist(), dtype=np.float32).reshape(len(q), action_dim)
    pngs = table.column(C.FRAME_PNG)
    for episode_id, rows in _episode_rows(table, where):
        if np.all(np.isfinite(q[rows])):
            continue
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


#: ``transform(table, where) -> (rewritten table or None when nothing to do, count)`` of :func:`_rewrite_shards`.
ShardTransform = Callable[[pa.Table, str], "tuple[Optional[pa.Table], int]"]


def _rewrite_shards(shards: Sequence[Path], transform: ShardTransform, why_left_out: str
                    ) -> tuple[list[Path], int, int]:
    """Apply ``transform`` to every D_f shard and rewrite the ones it changed, atomically, one at a time.

    Returns ``(shards complete after it, sum of its counts, shards left out)``: a shard that is unreadable or
    that ``transform`` refuses (FinetuneDataError) is left out of the round with a warning, untouched.
    """
    kept: list[Path] = []
    count, left_out = 0, 0
    for path in shards:
        path = Path(path)
        try:
            table, n = transform(read_shard(path, kind="df"), str(path))
            if table is not None:
                write_shard(path, table)
                count += n
        except (ShardError, FinetuneDataError) as exc:
            log.warning("round: D_f shard left out (%s): %s", why_left_out, exc)
            left_out += 1
            continue
        kept.append(path)
    return kept, count, left_out


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
    def score(table: pa.Table, where: str) -> tuple[Optional[pa.Table], int]:
        missing = ~np.isfinite(table.column(C.Q_VALUE).to_numpy(zero_copy_only=False))
        if not missing.any():
            return None, 0
        return _score_table(table, frame_stack, q_fn, action_dim, where), int(missing.sum())

    scored, rows_scored, unscored = _rewrite_shards(shards, score, "cannot be scored by the critic")
    return scored, {"df/q_scored_rows": float(rows_scored), "df/q_unscored_shards": float(unscored)}


def final_observation(pngs: Sequence[bytes], final_png: bytes, frame_stack: int) -> np.ndarray:
    """o_T, the observation after an episode's last step, from the PNG frames of its last rows and of o_T.

    Args:
        pngs: the newest frames of o_0..o_{T-1} in step order (only the last ``frame_stack - 1`` are decoded).
        final_png: the newest frame of o_T.
        frame_stack: k.

    Returns:
        ``(3k, S, S)`` uint8, the reset frame filling missing slots of a short episode, as the env does.
    """
    tail = [decode_frame(p) for p in list(pngs)[max(0, len(pngs) - frame_stack + 1):]]
    return episode_observations(np.stack(tail + [decode_frame(final_png)]), frame_stack)[-1]


def _bootstrap_table(table: pa.Table, frame_stack: int, v_fn: VFunction, gamma: float,
                     where: str) -> tuple[pa.Table, int]:
    """``table`` with every truncated, not yet bootstrapped episode's return-to-go completed; returns the
    table and the number of episodes bootstrapped."""
    boot = table.column(C.BOOTSTRAP_VALUE).to_numpy(zero_copy_only=False).astype(np.float32, copy=True)
    g = table.column(C.RETURN_TO_GO).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    pngs, finals = table.column(C.FRAME_PNG), table.column(C.FINAL_FRAME_PNG)
    todo: list[tuple[np.ndarray, np.ndarray]] = []
    for episode_id, rows in _episode_rows(table, where):
        if not np.isnan(boot[rows]).any():
            continue
        final_png = finals[int(rows[-1])].as_py()
        if final_png is None:
            raise FinetuneDataError(f"{where}: truncated episode {episode_id!r} has no final frame on its last "
                                    "row; its return cannot be bootstrapped")
        todo.append((rows, final_observation([pngs[int(i)].as_py() for i in rows], final_png, frame_stack)))
    if not todo:
        return table, 0
    values = np.asarray(v_fn(np.stack([obs for _, obs in todo])), dtype=np.float64).reshape(-1)
    if values.shape != (len(todo),) or not np.all(np.isfinite(values)):
        raise FinetuneDataError(f"{where}: the critic gave {values.shape} values for {len(todo)} final "
                                "observations, or a non-finite one")
    for (rows, _obs), value in zip(todo, values):
        t = len(rows)
        g[rows] += gamma ** (t - np.arange(t, dtype=np.float64)) * value
        boot[rows] = value
    for name, arr in ((C.RETURN_TO_GO, g), (C.BOOTSTRAP_VALUE, boot)):
        idx = table.schema.get_field_index(name)
        table = table.set_column(idx, table.schema.field(idx), pa.array(arr.astype(np.float32), pa.float32()))
    return table, len(todo)


def bootstrap_truncated_shards(shards: Sequence[Path], frame_stack: int, v_fn: VFunction,
                               gamma: float) -> tuple[list[Path], dict[str, float]]:
    """Complete the return-to-go of truncated D_f episodes in place (atomically, shard by shard).

    Args:
        shards: D_f shard paths (kind ``df``).
        frame_stack: the env's frame stack k.
        v_fn: the critic's state value (see :data:`VFunction`).
        gamma: the discount of the return-to-go (``sac.gamma``).

    Returns:
        ``(shards whose returns are now complete, metrics)``: ``df/bootstrapped_episodes``,
        ``df/bootstrap_failed_shards`` (left out of the round with a warning; cleared with D_f).
    """
    def bootstrap(table: pa.Table, where: str) -> tuple[Optional[pa.Table], int]:
        if not np.isnan(table.column(C.BOOTSTRAP_VALUE).to_numpy(zero_copy_only=False)).any():
            return None, 0
        return _bootstrap_table(table, frame_stack, v_fn, gamma, where)

    done, episodes, failed = _rewrite_shards(shards, bootstrap, "its truncated returns cannot be bootstrapped")
    return done, {"df/bootstrapped_episodes": float(episodes), "df/bootstrap_failed_shards": float(failed)}
