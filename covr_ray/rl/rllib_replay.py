"""RLlib face of :class:`covr_ray.rl.replay.PixelReplay`: env-runner episode chunks in, columns out.

:class:`~covr_ray.rl.algo.CovrSAC` creates this buffer as its ``local_replay_buffer`` (RLlib's
``SACConfig.validate`` accepts only built-in buffer names, so the config names one and the algorithm
builds this one). Its training iteration (:mod:`covr_ray.rl.training_step`) calls ``add(episodes)``
with the env runners' episode chunks and ``sample(B)`` for a train batch's arrays. This adapter:

- reads each chunk's per-step infos with :func:`~covr_ray.rl.replay.parse_step_infos` (step ids,
  priors and their adapter versions) and stores the chunk; late priors (``INFO_PRIOR_LATE`` in any
  info, :func:`~covr_ray.rl.replay.late_priors`) are attached by step id after every chunk of the call
  is stored;
- samples uniform 1-step transitions as the columns of :meth:`PixelReplay.sample
  <covr_ray.rl.replay.PixelReplay.sample>`, ``prior_action`` / ``prior_mask`` after the age mask
  (:meth:`CovrEpisodeReplayBuffer.set_prior_age_limit`: a prior too old for the serving adapter
  carries mask 0 and a zero action);
- reports the buffer's metrics to RLlib (``get_metrics``) and saves / loads it with algorithm
  checkpoints (``save`` / ``load``; RLlib's new stack does not checkpoint replay buffers).

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

from covr_ray.errors import CheckpointError, ReplayError
from covr_ray.rl.prior_infos import LatePrior, check_prior_age_limit, late_priors, parse_step_infos
from covr_ray.rl.replay import PixelReplay, saved_replay_meta


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

    def sample(self, num_items: Optional[int] = None, **kwargs: Any) -> Dict[str, np.ndarray]:
        """``num_items`` uniform 1-step transitions as columns (:meth:`PixelReplay.sample`'s arrays, the
        priors after the age mask). Raises ReplayError for an empty buffer and for RLlib's other sample
        forms (``n_step`` other than 1, ``batch_length_T``, ``sample_episodes``): there is no episode
        sampling path. ``reuse_buffers=True``: see :meth:`PixelReplay.sample`."""
        n_step, length = kwargs.get("n_step", 1), kwargs.get("batch_length_T")
        as_episodes = kwargs.get("sample_episodes")
        if n_step not in (None, 1) or length or as_episodes:
            raise ReplayError(f"CovrEpisodeReplayBuffer samples 1-step transitions as columns only; got "
                              f"n_step={n_step!r}, batch_length_T={length!r}, sample_episodes={as_episodes!r}")
        if not num_items or num_items < 1:
            raise ReplayError(f"sample needs num_items >= 1, got {num_items!r}")
        if self.core is None or len(self.core) == 0:
            raise ReplayError("cannot sample from an empty replay buffer")
        return self.core.sample(int(num_items), reuse_buffers=bool(kwargs.get("reuse_buffers", False)))

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
