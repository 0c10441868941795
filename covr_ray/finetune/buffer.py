"""D_f, the filter buffer: finished episodes as ``(o_i, a_r_i, g_i)`` rows, flushed to shards.

Steps arrive per episode (:meth:`FilterBuffer.add_step` then :meth:`FilterBuffer.end_episode`, or a whole
episode with :meth:`FilterBuffer.add_episode`). When an episode ends its discounted return-to-go is computed
backwards, ``g_i = r_i + gamma * g_{i+1}`` with ``g_T = bootstrap_value`` (0 for a terminal episode), and
its rows join the pending rows. A time-limit truncation is not an end of the task: pass the newest frame
of the observation after the last step as ``final_frame`` and the bootstrap is deferred to the round,
which has the critic (``bootstrap_value`` NaN until then, see :mod:`covr_ray.loop.df_q_scoring`).
Pending rows are written as one shard (``df-NNNNNN.parquet``, schema v1 kind ``df``) whenever
``rows_per_shard`` accumulate, so RAM holds at most ``rows_per_shard`` finished rows plus the open
episodes (capped by ``max_open_steps``); frames are held PNG-encoded.

The buffer's directory *is* D_f: a new :class:`FilterBuffer` on the same directory resumes with the shards
already there (open episodes are not persisted). :meth:`FilterBuffer.clear` deletes them after a round's
kept set has been written.
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
from covr_ray.finetune.shards import SHARD_SUFFIX, build_table, check_schema, encode_frame, write_shard
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


class _OpenEpisode:
    __slots__ = ("frames", "actions", "rewards", "entropy", "q_values", "warmup")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.entropy: list[float] = []
        self.q_values: list[float] = []
        self.warmup: list[bool] = []


class FilterBuffer:
    """D_f on disk with bounded RAM.

    Args:
        directory: where this buffer's ``df-*.parquet`` shards live (created if missing).
        action_dim: length of every action a_r.
        gamma: discount of the return-to-go (the SAC gamma).
        rows_per_shard: finished rows held in RAM before they are written as one shard.
        max_open_steps: most steps of not-yet-ended episodes held in RAM; more raises
            :class:`FinetuneDataError` (episodes that are never ended are a caller bug).
    """

    def __init__(self, directory: Union[str, Path], action_dim: int, gamma: float,
                 rows_per_shard: int = 2048, max_open_steps: int = 100_000) -> None:
        if action_dim < 1:
            raise FinetuneDataError(f"action_dim {action_dim!r}; allowed: an integer >= 1")
        if not 0 < gamma <= 1:
            raise FinetuneDataError(f"gamma {gamma!r}; allowed: 0 < gamma <= 1")
        if rows_per_shard < 1 or max_open_steps < 1:
            raise FinetuneDataError(f"rows_per_shard {rows_per_shard!r} and max_open_steps {max_open_steps!r}"
                                    " must be integers >= 1")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.action_dim = int(action_dim)
        self.gamma = float(gamma)
        self.rows_per_shard = int(rows_per_shard)
        self.max_open_steps = int(max_open_steps)
        self._open: dict[str, _OpenEpisode] = {}
        self._open_steps = 0
        self._pending: dict[str, list] = self._empty_columns()
        self._episodes = 0
        self._disk_rows = 0
        self._next_seq = 0
        for path in self.shard_paths():
            self._next_seq = max(self._next_seq, int(_SHARD_RE.match(path.name).group(1)) + 1)  # type: ignore
            self._disk_rows += self._rows_of(path)

    # --- collecting -----------------------------------------------------------------------------------

    def add_step(self, episode_id: str, frame: np.ndarray, action: np.ndarray, reward: float,
                 entropy: float, q_value: Optional[float] = None, warmup: bool = False) -> None:
        """Append one step to the open episode ``episode_id`` (opened on first use).

        Args:
            frame: (H, W, 3) / (H, W, 1) / (H, W) uint8, the frame the VLM would see for this step.
            action: (action_dim,) float, a_r in [-1, 1].
            reward: immediate reward r_i.
            entropy: the policy's entropy estimate when this step was collected, nats.
            q_value: Q(o_i, a_r_i) from the critic, or None.
            warmup: the action was a uniform-random warm-up action (never selected for fine-tuning).
        """
        if self._open_steps >= self.max_open_steps:
            raise FinetuneDataError(f"{self._open_steps} steps of {len(self._open)} open episodes exceed "
                                    f"max_open_steps={self.max_open_steps}; call end_episode() when an "
                                    "episode finishes (or drop_episode())")
        a = self._check_action(action, episode_id)
        ep = self._open.setdefault(str(episode_id), _OpenEpisode())
        ep.frames.append(encode_frame(frame))
        ep.actions.append(a)
        ep.rewards.append(self._finite(reward, "reward", episode_id))
        ep.entropy.append(self._finite(entropy, "entropy", episode_id))
        ep.q_values.append(math.nan if q_value is None else self._finite(q_value, "q_value", episode_id))
        ep.warmup.append(bool(warmup))
        self._open_steps += 1

    def end_episode(self, episode_id: str, bootstrap_value: float = 0.0,
                    final_frame: Optional[np.ndarray] = None) -> int:
        """Close ``episode_id``: compute its return-to-go and move its rows to D_f; return its length.

        Args:
            bootstrap_value: value of the state after the last step, added as ``gamma^(T-i) * value``
                (0 for a true termination).
            final_frame: for a time-limit truncation, the newest frame of the observation after the last
                step instead of a value: the bootstrap is left to the round (``bootstrap_value`` NaN).
        """
        ep = self._open.pop(str(episode_id), None)
        if ep is None:
            raise FinetuneDataError(f"episode {episode_id!r} is not open; open ones: {sorted(self._open)[:8]}")
        self._open_steps -= len(ep.rewards)
        value, final_png = self._bootstrap(bootstrap_value, final_frame, episode_id)
        g = discounted_return_to_go(np.asarray(ep.rewards), self.gamma, 0.0 if math.isnan(value) else value)
        self._append_rows(str(episode_id), ep.frames, np.stack(ep.actions), np.asarray(ep.rewards), g,
                          np.asarray(ep.entropy), np.asarray(ep.q_values), np.asarray(ep.warmup, bool), value,
                          final_png)
        return len(g)

    def drop_episode(self, episode_id: str) -> None:
        """Forget an open episode without storing it (e.g. its env runner crashed)."""
        ep = self._open.pop(str(episode_id), None)
        if ep is not None:
            self._open_steps -= len(ep.rewards)

    def add_episode(self, episode_id: str, frames: Union[np.ndarray, Sequence[np.ndarray]],
                    actions: np.ndarray, rewards: np.ndarray, entropy: Union[float, np.ndarray],
                    q_values: Optional[np.ndarray] = None, bootstrap_value: float = 0.0,
                    warmup: Optional[np.ndarray] = None, final_frame: Optional[np.ndarray] = None) -> int:
        """Store one finished episode at once; return its length T.

        Args:
            frames: (T, H, W, 3) uint8 (or a sequence of T frames as in :meth:`add_step`).
            actions: (T, action_dim) float a_r.
            rewards: (T,) float.
            entropy: scalar or (T,) policy entropy at collection time.
            q_values: (T,) float or None.
            bootstrap_value: value of the state after the last step (0 if terminal).
            warmup: (T,) bool, True for uniform-random warm-up steps; None = none.
            final_frame: (H, W, 3) uint8 newest frame of o_T for a time-limit truncation (see
                :meth:`end_episode`); None for a true termination.
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

    def clear(self) -> int:
        """Delete D_f's shards and pending rows (open episodes stay); return the rows removed.

        Call this only after the round's kept shard set is safely written.
        """
        removed = self._disk_rows + len(self._pending[C.EPISODE_ID])
        for path in self.shard_paths():
            path.unlink(missing_ok=True)
        for stale in self.directory.glob(".df-*.tmp"):  # temp files of a writer killed mid-write
            stale.unlink(missing_ok=True)
        self._pending = self._empty_columns()
        self._disk_rows = 0
        self._episodes = 0
        return removed

    def __len__(self) -> int:
        """Finished rows in D_f (on disk and pending)."""
        return self._disk_rows + len(self._pending[C.EPISODE_ID])

    def metrics(self) -> dict[str, float]:
        """``df/rows``, ``df/pending_rows``, ``df/open_steps``, ``df/open_episodes``, ``df/episodes``."""
        return {"df/rows": float(len(self)), "df/pending_rows": float(len(self._pending[C.EPISODE_ID])),
                "df/open_steps": float(self._open_steps), "df/open_episodes": float(len(self._open)),
                "df/episodes": float(self._episodes)}

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
        self._episodes += 1
        if len(p[C.EPISODE_ID]) >= self.rows_per_shard:
            self.flush()

    def _check_action(self, action: np.ndarray, episode_id: str) -> np.ndarray:
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (self.action_dim,) or not np.all(np.isfinite(a)) or np.any(np.abs(a) > 1 + 1e-5):
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
