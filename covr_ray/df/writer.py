"""D_f's writer and its clearing: finished episodes become ``(o_i, a_r_i, g_i)`` rows in shards.

:class:`FilterBuffer` takes whole finished episodes (:meth:`FilterBuffer.add_episode`; the recorder in
each env runner calls it). Each episode's discounted return-to-go is computed backwards,
``g_i = r_i + gamma * g_{i+1}`` with ``g_T = bootstrap_value`` (0 for a terminal episode), and its rows
join the pending rows. A time-limit truncation is not an end of the task: pass the newest frame of the
observation after the last step as ``final_frame`` and the bootstrap is deferred to the round, which has
the critic (``bootstrap_value`` NaN until then, see :mod:`covr_ray.select.critic`). Pending rows are
written as one shard (``df-NNNNNN.parquet``, kind ``df``) whenever ``rows_per_shard`` accumulate or on
:meth:`FilterBuffer.flush`; frames are held PNG-encoded.

The buffer's directory *is* D_f: a new :class:`FilterBuffer` on the same directory resumes with the shards
already there. :func:`delete_consumed` clears the shards a completed round read (only after the round's
kept set is written and its adapter trained).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from covr_ray import columns as C
from covr_ray.errors import FinetuneDataError, ShardError
from covr_ray.df.shards import SHARD_SUFFIX, build_table, check_schema, write_shard
from covr_ray.frames import encode_frame
from covr_ray.log import get_logger

log = get_logger(__name__)

_SHARD_RE = re.compile(r"^df-(\d{6,})" + re.escape(SHARD_SUFFIX) + "$")


def discounted_return_to_go(rewards: np.ndarray, gamma: float, bootstrap_value: float = 0.0) -> np.ndarray:
    """``g_i = sum_{k>=i} gamma^(k-i) r_k + gamma^(T-i) * bootstrap_value``.

    Args:
        rewards: (T,) float.
        gamma: discount in (0, 1].

    Returns:
        (T,) float64.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if not 0 < gamma <= 1:
        raise FinetuneDataError(f"gamma {gamma!r}; allowed: 0 < gamma <= 1")
    if not np.all(np.isfinite(r)) or not math.isfinite(bootstrap_value):
        raise FinetuneDataError(f"rewards/bootstrap_value must be finite; got rewards {r.tolist()[:8]}..., "
                                f"bootstrap_value {bootstrap_value!r}")
    g = np.empty_like(r)
    acc = float(bootstrap_value)
    for i in range(len(r) - 1, -1, -1):
        acc = r[i] + gamma * acc
        g[i] = acc
    return g


class FilterBuffer:
    """D_f on disk with bounded RAM.

    Args:
        directory: where this buffer's ``df-*.parquet`` shards live (created if missing).
        action_dim: length of every action a_r.
        gamma: discount of the return-to-go (the SAC gamma).
        rows_per_shard: finished rows held in RAM before they are written as one shard.
    """

    def __init__(self, directory: Union[str, Path], action_dim: int, gamma: float,
                 rows_per_shard: int = 2048) -> None:
        if action_dim < 1:
            raise FinetuneDataError(f"action_dim {action_dim!r}; allowed: an integer >= 1")
        if not 0 < gamma <= 1:
            raise FinetuneDataError(f"gamma {gamma!r}; allowed: 0 < gamma <= 1")
        if rows_per_shard < 1:
            raise FinetuneDataError(f"rows_per_shard {rows_per_shard!r}; allowed: an integer >= 1")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.action_dim = int(action_dim)
        self.gamma = float(gamma)
        self.rows_per_shard = int(rows_per_shard)
        self._pending: dict[str, list] = self._empty_columns()
        self._disk_rows = 0
        self._next_seq = 0
        for path in self.shard_paths():
            self._next_seq = max(self._next_seq, int(_SHARD_RE.match(path.name).group(1)) + 1)  # type: ignore
            self._disk_rows += self._rows_of(path)

    # --- collecting -----------------------------------------------------------------------------------

    def add_episode(self, episode_id: str, frames: Union[np.ndarray, Sequence[np.ndarray]],
                    actions: np.ndarray, rewards: np.ndarray, entropy: Union[float, np.ndarray],
                    q_values: Optional[np.ndarray] = None, bootstrap_value: float = 0.0,
                    warmup: Optional[np.ndarray] = None, final_frame: Optional[np.ndarray] = None) -> int:
        """Store one finished episode at once; return its length T.

        Args:
            frames: (T, H, W, 3) uint8, or a sequence of T (H, W, 3) / (H, W, 1) / (H, W) uint8 frames: the
                frame the VLM sees for each step.
            actions: (T, action_dim) float a_r.
            rewards: (T,) float.
            entropy: scalar or (T,) policy entropy at collection time.
            q_values: (T,) float or None.
            bootstrap_value: value of the state after the last step (0 if terminal).
            warmup: (T,) bool, True for uniform-random warm-up steps; None = none.
            final_frame: (H, W, 3) uint8 newest frame of o_T for a time-limit truncation (the
                bootstrap is deferred to the round); None for a true termination.
        """
        r = np.asarray(rewards, dtype=np.float64).reshape(-1)
        t = len(r)
        if t == 0:
            raise FinetuneDataError(f"episode {episode_id!r} has no steps")
        acts = np.asarray(actions, dtype=np.float32)
        if acts.shape != (t, self.action_dim):
            raise FinetuneDataError(f"episode {episode_id!r}: actions shape {acts.shape}; expected "
                                    f"({t}, {self.action_dim})")
        for a in acts:
            self._check_action(a, episode_id)
        if len(frames) != t:
            raise FinetuneDataError(f"episode {episode_id!r}: {len(frames)} frames for {t} rewards")
        ent = np.broadcast_to(np.asarray(entropy, dtype=np.float64), (t,)) if np.ndim(entropy) == 0 \
            else np.asarray(entropy, dtype=np.float64).reshape(-1)
        q = np.full(t, np.nan) if q_values is None else np.asarray(q_values, dtype=np.float64).reshape(-1)
        if len(ent) != t or len(q) != t:
            raise FinetuneDataError(f"episode {episode_id!r}: entropy/q_values lengths {len(ent)}/{len(q)}; "
                                    f"expected {t}")
        if not np.all(np.isfinite(ent)) or (q_values is not None and not np.all(np.isfinite(q))):
            raise FinetuneDataError(f"episode {episode_id!r}: entropy and q_values must be finite")
        warm = np.zeros(t, bool) if warmup is None else np.asarray(warmup, dtype=bool).reshape(-1)
        if len(warm) != t:
            raise FinetuneDataError(f"episode {episode_id!r}: warmup length {len(warm)}; expected {t}")
        value, final_png = self._bootstrap(bootstrap_value, final_frame, episode_id)
        g = discounted_return_to_go(r, self.gamma, 0.0 if math.isnan(value) else value)
        self._append_rows(str(episode_id), [encode_frame(f) for f in frames], acts, r, g, ent, q, warm, value,
                          final_png)
        return t

    # --- storage --------------------------------------------------------------------------------------

    def flush(self) -> Optional[Path]:
        """Write pending finished rows as one shard (atomic); return its path, None if nothing pending."""
        n = len(self._pending[C.EPISODE_ID])
        if n == 0:
            return None
        table = build_table(self._pending, kind="df", action_dim=self.action_dim)
        path = self.directory / f"df-{self._next_seq:06d}{SHARD_SUFFIX}"
        write_shard(path, table)
        self._next_seq += 1
        self._disk_rows += n
        self._pending = self._empty_columns()
        return path

    def shard_paths(self) -> list[Path]:
        """D_f shards on disk, oldest first (pending rows are not included: call :meth:`flush`)."""
        return sorted(p for p in self.directory.iterdir() if _SHARD_RE.match(p.name))

    def __len__(self) -> int:
        """Finished rows in D_f (on disk and pending)."""
        return self._disk_rows + len(self._pending[C.EPISODE_ID])

    # --- internals ------------------------------------------------------------------------------------

    @staticmethod
    def _empty_columns() -> dict[str, list]:
        return {name: [] for name in (C.EPISODE_ID, C.STEP_INDEX, C.FRAME_PNG, C.RL_ACTION, C.RETURN_TO_GO,
                                      C.REWARD, C.Q_VALUE, C.ENTROPY, C.SAMPLE_WEIGHT, C.WARMUP,
                                      C.BOOTSTRAP_VALUE, C.FINAL_FRAME_PNG)}

    def _bootstrap(self, value: float, final_frame: Optional[np.ndarray], episode_id: str
                   ) -> tuple[float, Optional[bytes]]:
        """``(bootstrap_value column, final frame PNG)``: a truncation with a final frame defers the value (NaN)."""
        if final_frame is not None:
            if value != 0.0:
                raise FinetuneDataError(f"episode {episode_id!r}: give a bootstrap_value or a final_frame, not both")
            return math.nan, encode_frame(final_frame)
        return self._finite(value, "bootstrap_value", episode_id), None

    def _append_rows(self, episode_id: str, frames: list[bytes], actions: np.ndarray, rewards: np.ndarray,
                     g: np.ndarray, entropy: np.ndarray, q: np.ndarray, warmup: np.ndarray, bootstrap_value: float,
                     final_png: Optional[bytes]) -> None:
        t = len(g)
        p = self._pending
        p[C.WARMUP].extend(np.asarray(warmup, bool).tolist())
        p[C.BOOTSTRAP_VALUE].extend([bootstrap_value] * t)
        p[C.FINAL_FRAME_PNG].extend([None] * (t - 1) + [final_png])
        p[C.EPISODE_ID].extend([episode_id] * t)
        p[C.STEP_INDEX].extend(range(t))
        p[C.FRAME_PNG].extend(frames)
        p[C.RL_ACTION].extend(np.asarray(actions, dtype=np.float32))
        p[C.RETURN_TO_GO].extend(g.tolist())
        p[C.REWARD].extend(np.asarray(rewards, dtype=np.float64).tolist())
        p[C.Q_VALUE].extend(np.asarray(q, dtype=np.float64).tolist())
        p[C.ENTROPY].extend(np.asarray(entropy, dtype=np.float64).tolist())
        p[C.SAMPLE_WEIGHT].extend([math.nan] * t)
        if len(p[C.EPISODE_ID]) >= self.rows_per_shard:
            self.flush()

    def _check_action(self, action: np.ndarray, episode_id: str) -> np.ndarray:
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (self.action_dim,) or not np.all(np.isfinite(a)) or np.any(np.abs(a) > 1 + C.ACTION_BOUND_TOLERANCE):
            raise FinetuneDataError(f"episode {episode_id!r}: action {np.asarray(action).tolist()}; expected "
                                    f"{self.action_dim} finite values in [-1, 1]")
        return np.clip(a, -1.0, 1.0)

    @staticmethod
    def _finite(value: float, name: str, episode_id: str) -> float:
        v = float(value)
        if not math.isfinite(v):
            raise FinetuneDataError(f"episode {episode_id!r}: {name} {value!r} is not finite")
        return v

    @staticmethod
    def _rows_of(path: Path) -> int:
        try:
            meta = pq.read_metadata(path)
            check_schema(meta.schema.to_arrow_schema(), str(path))
            return int(meta.num_rows)
        except ShardError as exc:
            log.warning("D_f shard %s will be skipped: %s", path, exc)
        except (OSError, pa.ArrowException) as exc:
            log.warning("D_f shard %s is unreadable and will be skipped: %s", path, exc)
        return 0


def delete_consumed(shards: Sequence[Path]) -> int:
    """Delete D_f shards a completed round consumed, and temp files of writers killed mid-write beside them.

    Call this only after the round's kept set is written and its adapter trained: a failed round keeps D_f.
    Returns the number of shards deleted (a shard already gone is not counted).
    """
    deleted = 0
    for path in map(Path, shards):
        if path.is_file():
            path.unlink()
            deleted += 1
    for directory in {Path(p).parent for p in shards}:
        for stale in directory.glob(".df-*.tmp"):
            stale.unlink(missing_ok=True)
    return deleted
