"""D_f recording inside the env runners: every finished episode becomes (o_i, a_r_i, g_i) rows on disk.

An RLlib callback (:class:`DfRecorderCallback`) runs in each env runner (a Ray actor). When an episode
ends it walks the episode's chunks (RLlib cuts episodes into fragments for the replay buffer; the callback
gets the earlier chunks too) and writes one row per step into that runner's
:class:`~covr_ray.df.writer.FilterBuffer` directory ``<run_dir>/df/runner-<index>/``:

- the frame the VLM sees for step i is the newest RGB frame of observation o_i (the last 3 channels of
  the channel-first stack, identical to ``env.render()`` at that step);
- a_r_i is, in the normalised space [-1, 1], the policy's deterministic action ``tanh(mean)`` at that step
  (``lora.teach_action=mean``, the default: what the VLM should learn is the policy, not its exploration
  noise) or the sampled action the env received (``taken``);
- the per-step entropy is the entropy of the policy's pre-squash Gaussian (sum of log std plus
  ``0.5 * log(2 pi e)`` per dimension), or ``A * log 2`` for the uniform warm-up actions;
- warm-up steps (uniform-random actions before ``sac.learning_starts``, flagged per step by the module's
  exploration forward, :data:`~covr_ray.columns.EXTRA_WARMUP`) are written with ``warmup`` = True: they stay in
  the episode (later rows' frame stacks need their frames) but a round never selects them, so the VLM is
  not taught random actions;
- the return-to-go g_i is computed by the buffer when the episode ends (discount = ``sac.gamma``). A true
  termination ends the return there. A time-limit truncation (every DMControl episode ends so) is not the
  end of the task: the recorder stores the newest frame of the final observation o_T and the round adds
  ``gamma^(T-i) V(o_T)`` with the learner's critic (the env runners' modules have no critic).

Each finished episode is flushed as its own shard (written atomically), so the orchestrator can build a
round from complete files at any time; no env runner state has to be gathered.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns

from covr_envs.rllib import RUN_CONTEXT_KEY
from covr_ray.columns import EXTRA_WARMUP
from covr_ray.df.writer import FilterBuffer
from covr_ray.frames import latest_frame
from covr_ray.log import get_logger
from covr_ray.run_dir import RunDir

log = get_logger(__name__)

#: key of the run context (``env_config[covr_envs.rllib.RUN_CONTEXT_KEY]``) holding the recorder's settings
#: (dict: run_dir, gamma, action_dim, teach_action).
ENV_CONFIG_KEY = "covr_df"
_HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)


def gaussian_entropy(dist_inputs: np.ndarray) -> np.ndarray:
    """Entropy of the pre-squash Gaussian per row: ``dist_inputs: (T, 2A)`` = [mean, log_std] -> ``(T,)``."""
    log_std = np.asarray(dist_inputs, dtype=np.float64)[:, dist_inputs.shape[1] // 2:]
    return log_std.sum(axis=1) + log_std.shape[1] * _HALF_LOG_2PIE


def _extra(chunk: Any, key: str, n: int) -> Optional[np.ndarray]:
    try:
        return np.asarray(chunk.get_extra_model_outputs(key, slice(0, n)))
    except KeyError:  # not produced by this runner's connectors (e.g. an algorithm built without them)
        return None


def episode_rows(chunks: list[Any], action_dim: int, teach_action: str = "mean"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps of an episode given as its chunks in order.

    Args:
        teach_action: ``lora.teach_action``: ``mean`` records the policy's ``tanh(mean)`` at each policy
            step (from the step's action-distribution inputs), ``taken`` the sampled action the env got.
            Warm-up steps, and steps without distribution inputs, record the taken action.

    Returns:
        frames: (T, S, S, 3) uint8; actions: (T, A) float32; rewards: (T,) float32; entropy: (T,) float64;
        warmup: (T,) bool (uniform-random warm-up actions).
    """
    frames, actions, rewards, entropy, warmup = [], [], [], [], []
    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        obs = np.asarray(chunk.get_observations(slice(0, n)))
        frames.append(np.ascontiguousarray(obs[:, -3:].transpose(0, 2, 3, 1)))
        acts = np.asarray(chunk.get_actions(slice(0, n)), dtype=np.float32).reshape(n, action_dim)
        actions.append(acts)
        rewards.append(np.asarray(chunk.get_rewards(slice(0, n)), dtype=np.float32).reshape(n))
        warm = _extra(chunk, EXTRA_WARMUP, n)
        warm = np.zeros(n, bool) if warm is None else warm.reshape(n) > 0.5
        ent = np.full(n, action_dim * math.log(2.0))
        dist = _extra(chunk, Columns.ACTION_DIST_INPUTS, n)
        if dist is not None and dist.ndim == 2 and dist.shape == (n, 2 * action_dim):
            ent = np.where(warm, ent, gaussian_entropy(dist.astype(np.float64)))
            if teach_action == "mean":
                mean = np.tanh(dist[:, :action_dim].astype(np.float64)).astype(np.float32)
                actions[-1] = np.where(warm[:, None], acts, mean)  # a new array: the chunk's stay as they are
        entropy.append(ent)
        warmup.append(warm)
    if not frames:
        empty = np.zeros((0,), np.float32)
        return (np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, action_dim), np.float32), empty, empty,
                np.zeros(0, bool))
    return (np.concatenate(frames), np.concatenate(actions), np.concatenate(rewards),
            np.concatenate(entropy), np.concatenate(warmup))


def final_frame(episode: Any) -> np.ndarray:
    """Newest RGB frame ``(S, S, 3)`` uint8 of the episode's last observation (o_T, after its last step)."""
    return latest_frame(np.asarray(episode.get_observations(-1)))


class DfRecorderCallback(RLlibCallback):
    """Writes every finished episode of this env runner into its D_f directory (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer: Optional[Any] = None
        self._settings: Optional[dict[str, Any]] = None

    def _buffer_for(self, env_runner: Any) -> Optional[Any]:
        if self._buffer is not None:
            return self._buffer
        run_context = (env_runner.config.env_config or {}).get(RUN_CONTEXT_KEY) if env_runner else None
        settings = (run_context or {}).get(ENV_CONFIG_KEY)
        if not settings:
            return None  # not a COVR run (e.g. a bare algorithm in a test): nothing to record
        index = getattr(env_runner, "worker_index", 0)
        directory = RunDir(settings["run_dir"]).df_runner(index)
        self._buffer = FilterBuffer(directory, action_dim=int(settings["action_dim"]),
                                    gamma=float(settings["gamma"]), rows_per_shard=1 << 30)
        self._settings = settings
        return self._buffer

    def on_episode_end(self, *, episode: Any, prev_episode_chunks: Optional[list[Any]] = None,
                       env_runner: Any = None, metrics_logger: Any = None, **kwargs: Any) -> None:
        buffer = self._buffer_for(env_runner)
        if buffer is None:
            return
        chunks = list(prev_episode_chunks or []) + [episode]
        frames, actions, rewards, entropy, warmup = episode_rows(chunks, buffer.action_dim,
                                                                 self._settings.get("teach_action", "mean"))
        if len(rewards) == 0:
            return
        truncated = bool(episode.is_truncated) and not bool(episode.is_terminated)
        buffer.add_episode(episode.id_, frames, actions, rewards, entropy, warmup=warmup,
                           final_frame=final_frame(episode) if truncated else None)
        path = buffer.flush()
        if metrics_logger is not None:
            # lifetime sums over every env runner; the sink gets them as df/episodes_written, ...
            metrics_logger.log_value("covr_df/episodes_written", 1, reduce="lifetime_sum")
            metrics_logger.log_value("covr_df/rows_written", len(rewards), reduce="lifetime_sum")
            metrics_logger.log_value("covr_df/warmup_rows_written", int(warmup.sum()), reduce="lifetime_sum")
            metrics_logger.log_value("covr_df/truncated_episodes_written", int(truncated), reduce="lifetime_sum")
        log.debug("D_f: episode %s (%d steps) -> %s", episode.id_, len(rewards), path)
