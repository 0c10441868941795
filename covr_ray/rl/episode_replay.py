"""RLlib face of :class:`covr_ray.rl.replay.PixelReplay`: episodes in, 1-step episodes with priors out.

RLlib's SAC ``training_step`` calls ``add(episodes)`` with the env runners' episode chunks and
``sample(num_items=B, n_step=1, ..., sample_episodes=True)`` for a list of 1-step episodes that the
learner connector turns into the train batch. This adapter:

- reads each chunk's per-step infos (keys in :mod:`covr_ray.columns`): the info returned by
  ``step(a_t)`` describes transition ``t`` = ``(o_t, a_t, r_t, o_t+1)``: ``INFO_STEP_ID`` is its id,
  ``INFO_PRIOR_ACTION`` / ``INFO_PRIOR_MASK`` / ``INFO_PRIOR_VERSION`` its prior ``a_v`` for ``o_t``
  and the adapter version that answered it; ``INFO_PRIOR_LATE`` in any info lists
  ``(step_id, a_v, version)`` for earlier steps (a ``(step_id, a_v)`` pair from older code means version
  -1), attached after the chunk is stored. Envs without the prior wrapper carry none of these keys:
  mask 0.
- returns sampled transitions as 1-step episodes whose step info holds the *stored* prior (late ones
  included) after the age mask (:meth:`CovrEpisodeReplayBuffer.set_prior_age_limit`: a prior too old
  for the serving adapter carries mask 0), with ``n_step`` and ``weights`` extra outputs as RLlib's own
  buffer does; the learner connector :class:`covr_ray.rl.connectors.PriorColumns` makes the
  ``prior_action`` / ``prior_mask`` columns from it.

The buffer is created at the first ``add`` (or ``load``), when the observation shape is known.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import gymnasium as gym
import numpy as np
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger
from ray.rllib.utils.replay_buffers.base import ReplayBufferInterface

from covr_ray.columns import INFO_PRIOR_ACTION, INFO_PRIOR_LATE, INFO_PRIOR_MASK, INFO_PRIOR_VERSION, INFO_STEP_ID
from covr_ray.errors import CheckpointError, ReplayError
from covr_ray.rl.replay import (
    BASE_VERSION,
    PixelReplay,
    check_prior,
    check_prior_age_limit,
    check_version,
    saved_replay_meta,
)

#: a late prior: ``(step_id, a_v (A,), adapter version)``.
LatePrior = Tuple[int, Any, int]


def parse_step_infos(infos: List[Dict[str, Any]], action_dim: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                              np.ndarray, List[LatePrior]]:
    """Per-transition step ids and priors from the ``T`` step infos (``infos[t]`` from ``step(a_t)``),
    plus the late ``(step_id, a_v, version)`` triples found in them.

    Returns ``step_ids: (T,)`` int64 (-1 = none), ``prior_actions: (T, A)``, ``prior_masks: (T,)``,
    ``prior_versions: (T,)`` int32 (the adapter that answered; -1 = base model, and where there is no
    prior or the info has no ``INFO_PRIOR_VERSION``), late triples. A malformed prior or version raises
    ReplayError naming the step.
    """
    n = len(infos)
    step_ids = np.full(n, -1, np.int64)
    actions = np.zeros((n, action_dim), np.float32)
    masks = np.zeros(n, np.float32)
    versions = np.full(n, BASE_VERSION, np.int32)
    for t, info in enumerate(infos):
        if not info:
            continue
        if INFO_STEP_ID in info:
            step_ids[t] = int(info[INFO_STEP_ID])
        mask = float(info.get(INFO_PRIOR_MASK, 0.0))
        if mask not in (0.0, 1.0):
            raise ReplayError(f"step {step_ids[t]}: {INFO_PRIOR_MASK} must be 0.0 or 1.0, got {mask!r}")
        if mask == 1.0:
            if INFO_PRIOR_ACTION not in info:
                raise ReplayError(f"step {step_ids[t]}: {INFO_PRIOR_MASK} is 1 but {INFO_PRIOR_ACTION} is missing")
            actions[t] = check_prior(info[INFO_PRIOR_ACTION], action_dim, f"step {step_ids[t]}")
            masks[t] = 1.0
            versions[t] = check_version(info.get(INFO_PRIOR_VERSION, BASE_VERSION), f"step {step_ids[t]}")
    return step_ids, actions, masks, versions, late_priors(infos)


def late_priors(infos: List[Dict[str, Any]]) -> List[LatePrior]:
    """All late priors under ``INFO_PRIOR_LATE`` in the given infos, as ``(step_id, a_v, version)``
    triples; a ``(step_id, a_v)`` pair (older wrappers) gets version -1. Raises ReplayError on any other
    entry or a version that is not an integer >= -1."""
    out: List[LatePrior] = []
    for info in infos:
        for item in (info or {}).get(INFO_PRIOR_LATE, ()) or ():
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ReplayError(f"{INFO_PRIOR_LATE} entries must be (step_id, action, version) triples "
                                  f"(or (step_id, action) pairs), got {item!r}")
            version = check_version(item[2], f"late prior for step {item[0]}") if len(item) == 3 else BASE_VERSION
            out.append((int(item[0]), item[1], version))
    return out


class CovrEpisodeReplayBuffer(ReplayBufferInterface):
    """Uniform replay for RLlib's SAC with compact frames and prior columns (module docstring).

    Args:
        capacity: transitions kept.
        frame_stack: frames per observation (``EnvSection.frame_stack``); 1 for non-stacked envs.
        seed: seed of the sampling RNG.
        frame_slack, max_open_episodes: see :class:`PixelReplay`.
    """

    def __init__(self, capacity: int = 100_000, *, frame_stack: int = 1, seed: Optional[int] = None,
                 frame_slack: float = 0.125, max_open_episodes: int = 1024, **_ignored: Any) -> None:
        self.capacity = int(capacity)
        self.frame_stack = int(frame_stack)
        self.seed = seed
        self.frame_slack = frame_slack
        self.max_open_episodes = max_open_episodes
        self.core: Optional[PixelReplay] = None
        self.prior_age_limit: Optional[Tuple[int, Optional[int]]] = None  # (serving version, max age) once set
        self.observation_space: Optional[gym.Space] = None
        self.action_space: Optional[gym.Space] = None
        self.metrics = MetricsLogger(root=False)

    def _ensure_core(self, obs_shape: Tuple[int, ...], action_dim: int) -> PixelReplay:
        if self.core is None:
            self.core = PixelReplay(self.capacity, obs_shape, action_dim, self.frame_stack, seed=self.seed,
                                    frame_slack=self.frame_slack, max_open_episodes=self.max_open_episodes)
            if self.prior_age_limit is not None:
                self.core.set_prior_age_limit(*self.prior_age_limit)
        elif self.core.obs_shape != tuple(obs_shape) or self.core.action_dim != action_dim:
            raise ReplayError(f"episode with obs {tuple(obs_shape)} / action_dim {action_dim} does not match "
                              f"the buffer's {self.core.obs_shape} / {self.core.action_dim}")
        return self.core

    def __len__(self) -> int:
        return 0 if self.core is None else len(self.core)

    def set_prior_age_limit(self, serving_version: int, max_age: Optional[int]) -> None:
        """Age limit of the stored priors (:meth:`PixelReplay.set_prior_age_limit`): applied now, and kept
        for the buffer created later (first ``add``, ``load``, ``set_state``). Raises ReplayError for a
        version below -1 or a negative ``max_age``."""
        serving, limit = check_prior_age_limit(serving_version, max_age)
        if self.core is not None:
            self.core.set_prior_age_limit(serving, limit)
        self.prior_age_limit = (serving, limit)

    def add(self, episodes: Union[SingleAgentEpisode, List[SingleAgentEpisode]], **kwargs: Any) -> None:
        """Store env-runner episode chunks (each: ``T+1`` observations, ``T`` actions, ``T+1`` infos)."""
        late: List[LatePrior] = []
        for ep in episodes if isinstance(episodes, list) else [episodes]:
            if not isinstance(ep, SingleAgentEpisode):
                raise ReplayError(f"CovrEpisodeReplayBuffer stores SingleAgentEpisode chunks, got {type(ep).__name__}")
            n = len(ep)
            obs = np.asarray(ep.get_observations())
            actions = np.asarray(ep.get_actions(), np.float32).reshape(n, -1)
            if self.observation_space is None:
                self.observation_space, self.action_space = ep.observation_space, ep.action_space
            core = self._ensure_core(obs.shape[1:], actions.shape[1])
            infos = list(ep.get_infos())
            step_ids, priors, masks, versions, chunk_late = parse_step_infos(infos[1:n + 1], core.action_dim)
            if ep.t_started == 0:  # a continuing chunk's first info is the previous chunk's last one
                chunk_late = late_priors(infos[:1]) + chunk_late
            late += chunk_late
            core.add_chunk(ep.id_, obs, actions, np.asarray(ep.get_rewards(), np.float32), ep.is_terminated,
                           ep.is_truncated, step_ids, priors, masks, versions)
        # Late priors after every chunk of this call is stored: a reset info may carry priors for the
        # finished episode listed after it.
        if late and self.core is not None:
            self.core.attach_priors(late)
        if self.core is not None:
            self.metrics.log_dict({k.split("/", 1)[1]: v for k, v in self.core.stats().items()}, window=1)

    def sample(self, num_items: Optional[int] = None, *, batch_size_B: Optional[int] = None,
               n_step: Union[int, Tuple[int, int], None] = 1, batch_length_T: Optional[int] = None,
               sample_episodes: bool = True, **kwargs: Any) -> List[SingleAgentEpisode]:
        """``num_items`` uniform transitions as 1-step episodes (only ``n_step == 1``, no sequences)."""
        b = num_items or batch_size_B
        if not b:
            raise ReplayError(f"sample needs num_items >= 1, got {num_items!r}")
        if n_step not in (None, 1) or batch_length_T or not sample_episodes:
            raise ReplayError(f"CovrEpisodeReplayBuffer samples 1-step transitions as episodes only; got "
                              f"n_step={n_step!r}, batch_length_T={batch_length_T!r}, sample_episodes={sample_episodes!r}")
        if self.core is None or len(self.core) == 0:
            raise ReplayError("cannot sample from an empty replay buffer")
        s = self.core.sample(int(b))
        one, n1 = np.ones(1, np.float32), np.ones(1, np.int64)
        return [
            SingleAgentEpisode(
                observations=[s["obs"][i], s["next_obs"][i]],
                actions=[s["actions"][i]],
                rewards=[float(s["rewards"][i])],
                infos=[{}, {INFO_STEP_ID: int(s["step_ids"][i]), INFO_PRIOR_ACTION: s["prior_action"][i],
                            INFO_PRIOR_MASK: float(s["prior_mask"][i]),
                            INFO_PRIOR_VERSION: int(s["prior_version"][i])}],
                terminated=bool(s["terminateds"][i]),
                truncated=bool(s["truncateds"][i]),
                observation_space=self.observation_space,
                action_space=self.action_space,
                extra_model_outputs={"n_step": n1, "weights": one},
                t_started=0,
                len_lookback_buffer=0,
            )
            for i in range(int(b))
        ]

    def get_metrics(self) -> Dict[str, Any]:
        """The buffer's metrics as of the last ``add`` (sizes, coverages), with the counters refreshed
        now (``stale_priors_masked`` and ``sampled`` change while sampling, after the ``add``)."""
        if self.core is not None:
            self.metrics.log_dict({k: float(v) for k, v in self.core.counters.items()}, window=1)
        return self.metrics.reduce()

    # --- state -----------------------------------------------------------------------------------------
    def get_state(self) -> Dict[str, Any]:
        return {"core": None if self.core is None else self.core.get_state(),
                "spaces": (self.observation_space, self.action_space)}

    def set_state(self, state: Dict[str, Any]) -> None:
        core_state = state.get("core")
        if core_state is None:
            self.core = None
            return
        meta = core_state["meta"]
        self.core = None
        self._ensure_core(tuple(meta["obs_shape"]), int(meta["action_dim"])).set_state(core_state)
        self.observation_space, self.action_space = state.get("spaces", (None, None))

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Optional[Path]:
        """Save to directory ``path`` (nothing is written for a buffer that never received data)."""
        if self.core is None:
            return None
        return self.core.save(path, overwrite=overwrite)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a directory written by :meth:`save`; capacity and frame stack must match."""
        meta = saved_replay_meta(path)
        if int(meta["capacity"]) != self.capacity or int(meta["frame_stack"]) != self.frame_stack:
            raise CheckpointError(f"saved replay at {path} has capacity {meta['capacity']} / frame_stack "
                                  f"{meta['frame_stack']}; this run's buffer has {self.capacity} / {self.frame_stack}")
        self.core = None
        core = self._ensure_core(tuple(meta["obs_shape"]), int(meta["action_dim"]))
        core.load(path)
        if self.observation_space is None:
            self.observation_space = gym.spaces.Box(0, 255, core.obs_shape, np.uint8)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (core.action_dim,), np.float32)
