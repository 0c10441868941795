"""Compact pixel replay: each uint8 frame stored once, priors as columns, late priors by step id.

Observations are frame stacks ``(k * c, H, W)`` (``k`` = ``frame_stack`` frames of ``c`` channels,
newest last, stacked by the env wrapper). Consecutive observations share ``k - 1`` frames, and a
transition's ``next_obs`` is the following transition's ``obs``, so storing ``obs`` and ``next_obs``
per transition (or whole observations per step) keeps every frame ``2k`` (or ``k``) times. Here:

- a **frame pool** ``(M, c, H, W)`` uint8 holds each frame once, with a reference count per slot and a
  free list; ``M = capacity + slack`` (episode starts need ``k - 1`` extra frames);
- a **transition ring** of ``capacity`` rows holds, per transition, the pool slots of its ``k`` obs
  frames and ``k`` next-obs frames (int32), the action, reward, done flags, the step id, and the prior
  columns ``prior_action (A,)`` / ``prior_mask`` / ``prior_version`` (int32: the adapter version that
  answered the prior, -1 = base model or no prior);
- the newest frame of each step is the only one written, checked by comparing ``next_obs[:-c]`` with
  ``obs[c:]``; an env whose observations do not shift that way is still stored correctly (all ``k``
  frames written, counted in ``replay/stack_mismatches``), only less compactly;
- an episode delivered in chunks (RLlib env runners cut episodes) continues from the previous chunk's
  last frames, which stay pinned until the episode ends (at most ``max_open_episodes`` are kept);
- a bounded index ``step_id -> row`` (one entry per live transition, removed on eviction) lets a
  prior that arrives late attach to its transition.

Prior ageing: the buffer holds a whole run, so without ageing the untuned VLM's cold-start answers
would regularise the actor to the end. :meth:`PixelReplay.set_prior_age_limit` (``serving_version``
``s``, ``max_age``) makes :meth:`~PixelReplay.sample` return ``prior_mask = 0`` (and a zero
``prior_action``) for a prior answered by version ``v`` when ``ord(s) - ord(v) > max_age``, with
``ord(v) = max(v, 0)`` (the base model, -1, counts as version 0). The stored priors are never changed,
so a later limit (or ``max_age=None``: never aged, the default until a limit is set) applies to them
afresh. The limit is a setting of the buffer, not part of its saved state: the caller sets it again
after a restore (the orchestrator does so at setup and after every hot swap).

Memory: ``capacity * c * H * W`` bytes of frames plus ~50 bytes per transition: 100 K steps of
84x84 RGB frames = 2.1 GB (RLlib's episode buffer keeps every 9x84x84 observation: 6.4 GB).
The pool is allocated with ``np.zeros`` (pages are committed only when first written).

Sampling into reused buffers: a batch's ``obs`` and ``next_obs`` are the largest arrays the training loop
makes (2 x 32.5 MB at batch 512, 9x84x84), and a fresh array that large is fresh memory to the allocator,
mapped page by page as the gather first writes it: ~900-1,000 page faults a sample, measured, 40-70 % of the
gather's CPU time (2-core box: 4.0 vs 1.3 ms a sample at batch 128, 17.2 vs 9.9 ms at 512, CPU time).
``sample(..., reuse_buffers=True)`` gathers the frames into two pairs of arrays the buffer keeps and hands
out in turn: a batch stays valid until the second sample after it. The training loops consume each batch
before they sample the next (the columnar training step, :class:`~covr_ray.rl.plain_train.PlainLoop`) and
ask for it; the default returns fresh arrays.

What enters: :func:`parse_step_infos` reads a chunk's per-step infos (keys in :mod:`covr_ray.columns`)
into the step-id and prior columns of :meth:`PixelReplay.add_chunk`, and :func:`late_priors` the late
``(step_id, a_v, version)`` triples for :meth:`PixelReplay.attach_priors`.

Plain numpy, no RLlib (the plain-PyTorch trainer uses it without Ray): :mod:`covr_ray.rl.rllib_replay`
is the RLlib-facing adapter.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Hashable, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from covr_ray.columns import PRIOR_ACTION, PRIOR_MASK
from covr_ray.errors import CheckpointError, ReplayError
from covr_ray.io import atomic_directory, atomic_write_text
from covr_ray.log import get_logger
from covr_ray.rl.prior_infos import (BASE_VERSION, check_prior, check_prior_age_limit, check_version,
                                     version_ordinal)

log = get_logger(__name__)

#: 2 added the per-row ``prior_version`` array; format 1 (no versions) still loads, versions read as -1.
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_META = "meta.json"
_ARRAYS = ("obs_idx", "next_idx", "action", "reward", "terminated", "truncated", "step_id", "prior",
           "prior_mask", "prior_version", "refs", "frame_slots", "frames")
#: arrays that format 1 did not have.
_NEW_IN_V2 = ("prior_version",)
class PixelReplay:
    """Uniform replay over transitions of stacked uint8 frames. See the module docstring.

    Args:
        capacity: most transitions kept (oldest evicted first).
        obs_shape: ``(k * c, H, W)`` of one observation.
        action_dim: ``A``.
        frame_stack: ``k``; ``obs_shape[0]`` must be divisible by it.
        seed: seed of the sampling RNG (its state is saved with the buffer).
        frame_slack: extra pool slots as a share of ``capacity`` (for episode starts).
        max_open_episodes: most unfinished episodes whose last frames are kept for their next chunk.
    """

    def __init__(self, capacity: int, obs_shape: Sequence[int], action_dim: int, frame_stack: int = 1,
                 seed: Optional[int] = None, frame_slack: float = 0.125, max_open_episodes: int = 1024) -> None:
        obs_shape = tuple(int(v) for v in obs_shape)
        if capacity < 1:
            raise ReplayError(f"replay capacity must be >= 1, got {capacity}")
        if len(obs_shape) != 3 or frame_stack < 1 or obs_shape[0] % frame_stack:
            raise ReplayError(f"observation shape {obs_shape} is not (frame_stack * c, H, W) with "
                              f"frame_stack={frame_stack}")
        if action_dim < 1:
            raise ReplayError(f"action_dim must be >= 1, got {action_dim}")
        self.capacity, self.obs_shape, self.action_dim, self.frame_stack = capacity, obs_shape, action_dim, frame_stack
        self.frame_shape = (obs_shape[0] // frame_stack, obs_shape[1], obs_shape[2])
        self.max_open_episodes = max_open_episodes
        self.pool_size = capacity + max(2 * frame_stack + 2, int(capacity * frame_slack))
        k, n = frame_stack, capacity
        self._frames = np.zeros((self.pool_size,) + self.frame_shape, np.uint8)
        self._refs = np.zeros(self.pool_size, np.int32)
        self._free = list(range(self.pool_size - 1, -1, -1))
        self._obs_idx = np.zeros((n, k), np.int32)
        self._next_idx = np.zeros((n, k), np.int32)
        self._action = np.zeros((n, action_dim), np.float32)
        self._reward = np.zeros(n, np.float32)
        self._terminated = np.zeros(n, bool)
        self._truncated = np.zeros(n, bool)
        self._step_id = np.full(n, -1, np.int64)
        self._prior = np.zeros((n, action_dim), np.float32)
        self._prior_mask = np.zeros(n, np.float32)
        self._prior_version = np.full(n, BASE_VERSION, np.int32)
        self._serving_version = BASE_VERSION
        self._max_age: Optional[int] = None  # None = priors never age
        self._start = 0
        self._size = 0
        self._id_to_row: Dict[int, int] = {}
        self._tails: "OrderedDict[Hashable, Tuple[int, ...]]" = OrderedDict()
        self._rng = np.random.default_rng(seed)
        self._sample_buffers: Dict[int, list] = {}  # batch size -> two (obs, next_obs) pairs, handed out in turn
        self._sample_turn = 0
        self.counters = {"added": 0, "evicted": 0, "stack_mismatches": 0, "late_priors_attached": 0,
                         "late_priors_missed": 0, "sampled": 0, "priors_added": 0, "stale_priors_masked": 0}

    # --- sizes -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    def frames_in_use(self) -> int:
        return self.pool_size - len(self._free)

    def nbytes(self) -> int:
        """Bytes of frames in use plus the transition columns (what a full buffer costs in RAM)."""
        per_row = (2 * self.frame_stack * 4 + 2 * self.action_dim * 4 + 4 + 2 + 8 + 4 + 4)
        return self.frames_in_use() * int(np.prod(self.frame_shape)) + self.capacity * per_row

    # --- frame pool ----------------------------------------------------------------------------------
    def _alloc(self) -> int:
        while not self._free:
            if self._size:
                self._evict_oldest()
            elif self._tails:
                self._unpin(self._tails.popitem(last=False)[1])
            else:  # pragma: no cover - pool_size > 2k + 1 guarantees a free slot
                raise ReplayError("frame pool exhausted with an empty buffer")
        return self._free.pop()

    def _write_frame(self, frame: np.ndarray) -> int:
        slot = self._alloc()
        self._frames[slot] = frame
        self._refs[slot] = 1  # pinned by the caller until stored in a transition
        return slot

    def _pin(self, slots: Sequence[int]) -> None:
        self._refs[list(slots)] += 1

    def _unpin(self, slots: Sequence[int]) -> None:
        for slot in slots:
            self._refs[slot] -= 1
            if self._refs[slot] == 0:
                self._free.append(slot)

    def _split(self, obs: np.ndarray) -> np.ndarray:
        return obs.reshape((self.frame_stack,) + self.frame_shape)

    # --- transitions ---------------------------------------------------------------------------------
    def _evict_oldest(self) -> None:
        row = self._start
        self._unpin(self._obs_idx[row].tolist())
        self._unpin(self._next_idx[row].tolist())
        sid = int(self._step_id[row])
        if sid >= 0 and self._id_to_row.get(sid) == row:
            del self._id_to_row[sid]
        self._start = (row + 1) % self.capacity
        self._size -= 1
        self.counters["evicted"] += 1

    def _store(self, cur: Tuple[int, ...], nxt: Tuple[int, ...], action: np.ndarray, reward: float,
               terminated: bool, truncated: bool, step_id: int, prior: np.ndarray, mask: float,
               version: int) -> None:
        if self._size == self.capacity:
            self._evict_oldest()
        row = (self._start + self._size) % self.capacity
        self._obs_idx[row], self._next_idx[row] = cur, nxt
        self._pin(cur)
        self._pin(nxt)
        self._action[row], self._reward[row] = action, reward
        self._terminated[row], self._truncated[row] = terminated, truncated
        self._step_id[row] = step_id
        self._prior[row], self._prior_mask[row] = prior, mask
        self._prior_version[row] = version if mask else BASE_VERSION
        if step_id >= 0:
            self._id_to_row[step_id] = row
        self._size += 1
        self.counters["added"] += 1
        if mask:
            self.counters["priors_added"] += 1

    def add_chunk(self, key: Hashable, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                  terminated: bool, truncated: bool, step_ids: Optional[np.ndarray] = None,
                  prior_actions: Optional[np.ndarray] = None, prior_masks: Optional[np.ndarray] = None,
                  prior_versions: Optional[np.ndarray] = None) -> int:
        """Store the ``T`` transitions of one episode chunk; returns ``T``.

        Shapes: ``observations: (T+1, k*c, H, W)`` uint8, ``actions: (T, A)``, ``rewards: (T,)``,
        ``step_ids: (T,)`` int64 (-1 = none), ``prior_actions: (T, A)`` in [-1, 1], ``prior_masks: (T,)``,
        ``prior_versions: (T,)`` int, the adapter version of each prior (-1 = base model; None = all -1;
        stored as -1 where the mask is 0). ``terminated`` / ``truncated`` describe the chunk's last
        transition. ``key`` identifies the episode: a later chunk with the same key continues from this
        chunk's last observation.
        """
        obs = np.asarray(observations)
        t_len = len(actions)
        if obs.dtype != np.uint8 or obs.shape != (t_len + 1,) + self.obs_shape:
            raise ReplayError(f"episode chunk observations must be uint8 {(t_len + 1,) + self.obs_shape} for "
                              f"{t_len} actions, got {obs.dtype} {obs.shape}")
        actions = np.asarray(actions, np.float32).reshape(t_len, -1)
        if actions.shape[1] != self.action_dim:
            raise ReplayError(f"actions must be (T, {self.action_dim}), got {actions.shape}")
        rewards = np.asarray(rewards, np.float32).reshape(t_len)
        step_ids = np.full(t_len, -1, np.int64) if step_ids is None else np.asarray(step_ids, np.int64).reshape(t_len)
        if prior_actions is None or prior_masks is None:
            prior_actions = np.zeros((t_len, self.action_dim), np.float32)
            prior_masks = np.zeros(t_len, np.float32)
        prior_actions = np.asarray(prior_actions, np.float32).reshape(t_len, self.action_dim)
        prior_masks = np.asarray(prior_masks, np.float32).reshape(t_len)
        if prior_versions is None:
            prior_versions = np.full(t_len, BASE_VERSION, np.int64)
        prior_versions = np.asarray(prior_versions)
        if (prior_versions.shape != (t_len,) or not np.issubdtype(prior_versions.dtype, np.integer)
                or (t_len and int(prior_versions.min()) < BASE_VERSION)):
            raise ReplayError(f"prior_versions must be ({t_len},) integers >= {BASE_VERSION}, got "
                              f"{prior_versions.dtype} {prior_versions.shape}: {prior_versions.tolist()!r}")

        cur = self._tails.pop(key, None)
        if cur is not None and not np.array_equal(self._frames[list(cur)].reshape(self.obs_shape), obs[0]):
            self._unpin(cur)
            cur = None
        if cur is None:
            cur = tuple(self._write_frame(f) for f in self._split(obs[0]))
        c = self.frame_shape[0]
        for t in range(t_len):
            if self.frame_stack > 1 and np.array_equal(obs[t + 1][:-c], obs[t][c:]):
                nxt = cur[1:] + (self._write_frame(obs[t + 1][-c:]),)
                self._pin(cur[1:])
            else:
                if self.frame_stack > 1:
                    self.counters["stack_mismatches"] += 1
                nxt = tuple(self._write_frame(f) for f in self._split(obs[t + 1]))
            last = t == t_len - 1
            self._store(cur, nxt, actions[t], float(rewards[t]), bool(terminated and last),
                        bool(truncated and last), int(step_ids[t]), prior_actions[t], float(prior_masks[t]),
                        int(prior_versions[t]))
            self._unpin(cur)
            cur = nxt
        if terminated or truncated:
            self._unpin(cur)
        else:
            self._tails[key] = cur
            while len(self._tails) > self.max_open_episodes:
                self._unpin(self._tails.popitem(last=False)[1])
        return t_len

    def attach_priors(self, entries: Iterable[Sequence[Any]]) -> int:
        """Attach priors that arrived late: ``(step_id, a_v, version)`` triples (``a_v``: ``(A,)``;
        ``version``: the adapter that answered, -1 = base model). A ``(step_id, a_v)`` pair, from older
        code, stores version -1. Returns how many found their step; the others (evicted or unknown ids)
        are counted in ``replay/late_priors_missed``."""
        attached = 0
        for entry in entries:
            if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
                raise ReplayError(f"late prior {entry!r} is not a (step_id, action, version) triple "
                                  "or a (step_id, action) pair")
            step_id, action = entry[0], entry[1]
            version = check_version(entry[2], f"late prior for step {step_id}") if len(entry) == 3 else BASE_VERSION
            row = self._id_to_row.get(int(step_id))
            if row is None:
                self.counters["late_priors_missed"] += 1
                continue
            self._prior[row] = check_prior(action, self.action_dim, f"late prior for step {step_id}")
            self._prior_mask[row] = 1.0
            self._prior_version[row] = version
            attached += 1
        self.counters["late_priors_attached"] += attached
        self.counters["priors_added"] += attached
        return attached

    def end_episode(self, key: Hashable) -> None:
        """Release the kept last frames of an episode that will get no further chunk."""
        tail = self._tails.pop(key, None)
        if tail is not None:
            self._unpin(tail)

    # --- prior ageing ----------------------------------------------------------------------------------
    def set_prior_age_limit(self, serving_version: int, max_age: Optional[int]) -> None:
        """Mask, at sampling time, priors more than ``max_age`` adapter versions older than
        ``serving_version`` (the version the prior service answers with now; -1 = base model).

        A prior of version ``v`` is masked when ``max(s, 0) - max(v, 0) > max_age``; ``max_age=None``
        masks nothing. Stored priors are not changed (see the module docstring). Raises ReplayError for
        a version below -1 or a negative ``max_age``.
        """
        self._serving_version, self._max_age = check_prior_age_limit(serving_version, max_age)

    @property
    def prior_age_limit(self) -> Tuple[int, Optional[int]]:
        """``(serving_version, max_age)`` as last set (``(-1, None)``: no ageing)."""
        return self._serving_version, self._max_age

    def _usable_mask(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(mask, aged)`` of ``rows (N,)``: the stored ``prior_mask (N,)`` float32 with aged priors set
        to 0, and ``aged (N,)`` bool, True where a stored prior was masked by age."""
        mask = self._prior_mask[rows]  # fancy indexing: a copy, the stored mask is not touched
        if self._max_age is None:
            return mask, np.zeros(len(mask), bool)
        age = version_ordinal(self._serving_version) - version_ordinal(self._prior_version[rows].astype(np.int64))
        aged = (age > self._max_age) & (mask > 0)
        mask[aged] = 0.0
        return mask, aged

    # --- sampling ------------------------------------------------------------------------------------
    def _gather(self, slots: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
        """Frames of ``slots (B, k)`` as observations ``(B, k*c, H, W)``, into ``out`` when given."""
        if out is None:
            return self._frames[slots].reshape((len(slots),) + self.obs_shape)
        np.take(self._frames, slots.reshape(-1), axis=0, out=out.reshape((-1,) + self.frame_shape), mode="clip")
        return out

    def _next_buffers(self, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
        pairs = self._sample_buffers.get(batch_size)
        if pairs is None:
            self._sample_buffers = {batch_size: [tuple(np.empty((batch_size,) + self.obs_shape, np.uint8)
                                                       for _ in range(2)) for _ in range(2)]}
            pairs = self._sample_buffers[batch_size]
        self._sample_turn ^= 1
        return pairs[self._sample_turn]

    def sample(self, batch_size: int, reuse_buffers: bool = False) -> Dict[str, np.ndarray]:
        """Uniform sample with replacement.

        Returns ``obs``/``next_obs: (B, k*c, H, W)`` uint8, ``actions: (B, A)``, ``rewards: (B,)``,
        ``terminateds``/``truncateds: (B,)`` bool, ``step_ids: (B,)``, ``prior_action: (B, A)``,
        ``prior_mask: (B,)`` float32, ``prior_version: (B,)`` int32 (as stored). ``prior_mask`` is 0 and
        ``prior_action`` zero where no prior is stored or the stored one is too old for the limit of
        :meth:`set_prior_age_limit` (counted in ``replay/stale_priors_masked``). With ``reuse_buffers``
        ``obs`` and ``next_obs`` are buffers of this replay, valid until the second sample after this one
        (see the module docstring); the other columns are always fresh.
        """
        if batch_size < 1:
            raise ReplayError(f"batch size must be >= 1, got {batch_size}")
        if self._size == 0:
            raise ReplayError("cannot sample from an empty replay buffer; add transitions first")
        rows = (self._start + self._rng.integers(0, self._size, size=batch_size)) % self.capacity
        self.counters["sampled"] += batch_size
        b = batch_size
        mask, aged = self._usable_mask(rows)
        prior = self._prior[rows]
        if aged.any():
            prior[aged] = 0.0
            self.counters["stale_priors_masked"] += int(aged.sum())
        obs_out, next_out = self._next_buffers(b) if reuse_buffers else (None, None)
        return {
            "obs": self._gather(self._obs_idx[rows], obs_out),
            "next_obs": self._gather(self._next_idx[rows], next_out),
            "actions": self._action[rows],
            "rewards": self._reward[rows],
            "terminateds": self._terminated[rows],
            "truncateds": self._truncated[rows],
            "step_ids": self._step_id[rows],
            PRIOR_ACTION: prior,
            PRIOR_MASK: mask,
            "prior_version": self._prior_version[rows],
        }

    def stats(self) -> Dict[str, float]:
        """Namespaced metrics of the buffer (``replay/...``): the counters, ``size``, ``frames``,
        ``bytes``, ``prior_coverage`` (share of live rows with a stored prior, any age) and
        ``usable_prior_coverage`` (share of live rows whose prior passes the current age limit)."""
        live = self._live_rows()
        out = {f"replay/{k}": float(v) for k, v in self.counters.items()}
        usable = self._usable_mask(live)[0]
        out.update({"replay/size": float(self._size), "replay/frames": float(self.frames_in_use()),
                    "replay/bytes": float(self.nbytes()),
                    "replay/prior_coverage": float(self._prior_mask[live].mean()) if self._size else 0.0,
                    "replay/usable_prior_coverage": float(usable.mean()) if self._size else 0.0})
        return out

    def _live_rows(self) -> np.ndarray:
        return (self._start + np.arange(self._size)) % self.capacity

    # --- state -----------------------------------------------------------------------------------------
    def meta(self) -> Dict[str, Any]:
        return {"version": FORMAT_VERSION, "capacity": self.capacity, "obs_shape": list(self.obs_shape),
                "action_dim": self.action_dim, "frame_stack": self.frame_stack, "pool_size": self.pool_size}

    def get_state(self) -> Dict[str, Any]:
        """Everything needed to continue exactly: contents, counters, open episodes, RNG state.
        Only pool slots in use are included."""
        used = np.flatnonzero(self._refs > 0).astype(np.int64)
        return {
            "meta": self.meta(),
            "start": self._start, "size": self._size,
            "tails": [[str(k) if not isinstance(k, (str, int)) else k, list(map(int, v))]
                      for k, v in self._tails.items()],
            "counters": dict(self.counters),
            "rng": self._rng.bit_generator.state,
            "arrays": {"obs_idx": self._obs_idx.copy(), "next_idx": self._next_idx.copy(),
                       "action": self._action.copy(), "reward": self._reward.copy(),
                       "terminated": self._terminated.copy(), "truncated": self._truncated.copy(),
                       "step_id": self._step_id.copy(), "prior": self._prior.copy(),
                       "prior_mask": self._prior_mask.copy(), "prior_version": self._prior_version.copy(),
                       "refs": self._refs.copy(),
                       "frame_slots": used, "frames": self._frames[used]},
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`get_state` output (format 2, or format 1 whose priors then all read as
        version -1, with one warning). The age limit of :meth:`set_prior_age_limit` is kept as it is.
        Raises CheckpointError when the state does not fit this buffer."""
        meta = dict(state.get("meta", {}))
        mine = self.meta()
        version = meta.get("version")
        if version not in _READABLE_VERSIONS:
            raise CheckpointError(f"replay state format version {version!r} is not one this code reads "
                                  f"({', '.join(map(str, _READABLE_VERSIONS))})")
        for key in ("capacity", "obs_shape", "action_dim", "frame_stack", "pool_size"):
            if meta.get(key) != mine[key]:
                raise CheckpointError(f"replay state field {key!r} is {meta.get(key)!r}, this buffer has "
                                      f"{mine[key]!r}: build the buffer with the run's config before restoring")
        arrays = dict(state["arrays"])
        if version == 1:
            log.warning("replay state is format 1 (saved before priors carried their adapter version): its "
                        "priors are read as version -1 (base model) and age out once the serving version "
                        "is more than prior.max_age_versions past 0")
            arrays["prior_version"] = np.full(self.capacity, BASE_VERSION, np.int32)
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise CheckpointError(f"replay state (format {version}) lacks the arrays {missing}")
        expected = {"obs_idx": self._obs_idx, "next_idx": self._next_idx, "action": self._action,
                    "reward": self._reward, "terminated": self._terminated, "truncated": self._truncated,
                    "step_id": self._step_id, "prior": self._prior, "prior_mask": self._prior_mask,
                    "prior_version": self._prior_version, "refs": self._refs}
        for name, target in expected.items():
            arr = np.asarray(arrays[name])
            if arr.shape != target.shape:
                raise CheckpointError(f"replay state array {name!r} has shape {arr.shape}, expected {target.shape}")
        slots = np.asarray(arrays["frame_slots"], np.int64)
        frames = np.asarray(arrays["frames"])
        if frames.shape != (len(slots),) + self.frame_shape or frames.dtype != np.uint8:
            raise CheckpointError(f"replay state frames are {frames.dtype} {frames.shape}, expected uint8 "
                                  f"{(len(slots),) + self.frame_shape}")
        for name, target in expected.items():
            target[...] = np.asarray(arrays[name])
        self._frames[slots] = frames
        self._free = [int(s) for s in np.flatnonzero(self._refs == 0)[::-1]]
        self._start, self._size = int(state["start"]), int(state["size"])
        self._tails = OrderedDict((k, tuple(v)) for k, v in state["tails"])
        self.counters.update(state["counters"])
        self._rng.bit_generator.state = state["rng"]
        live = self._live_rows()
        self._id_to_row = {int(self._step_id[r]): int(r) for r in live if self._step_id[r] >= 0}

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the state to directory ``path`` atomically (``meta.json`` + one ``.npy`` per array).

        An existing ``path`` is refused unless ``overwrite``; then the new copy is complete on disk before
        the old one is removed.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise CheckpointError(f"replay directory {path} already exists; pass overwrite=True to replace it")
        state = self.get_state()
        target = path.with_name(f".{path.name}.new") if path.exists() else path
        if target.exists():
            shutil.rmtree(target)
        with atomic_directory(target) as tmp:
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", state["arrays"][name], allow_pickle=False)
            meta = {k: v for k, v in state.items() if k != "arrays"}
            atomic_write_text(tmp / _META, json.dumps(meta))
        if target != path:
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.rename(path, old)
            os.rename(target, path)
            shutil.rmtree(old)
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Restore the state saved by :meth:`save` into this buffer (same config required; a format-1
        directory loads with all prior versions -1, see :meth:`set_state`)."""
        path = Path(path)
        try:
            meta = json.loads((path / _META).read_text())
            version = meta.get("meta", {}).get("version") if isinstance(meta, dict) else None
            names = [n for n in _ARRAYS if not (version == 1 and n in _NEW_IN_V2)]
            arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in names}
        except (OSError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"replay directory {path} is missing or unreadable: {exc}") from exc
        self.set_state({**meta, "arrays": arrays})


def saved_replay_meta(path: str | os.PathLike) -> Dict[str, Any]:
    """The ``meta`` block of a saved replay directory (shapes, capacity), to build a matching buffer."""
    try:
        return dict(json.loads((Path(path) / _META).read_text())["meta"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"replay directory {path} has no readable {_META}: {exc}") from exc
