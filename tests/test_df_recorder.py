"""D_f rows from RLlib episodes (`covr_ray.df.recorder.episode_rows`), on real SingleAgentEpisode objects:
which action a_r is recorded (`lora.teach_action`), warm-up flags and per-step entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from covr_ray.columns import EXTRA_WARMUP
from covr_ray.config import load_config
from covr_ray.df.recorder import episode_rows
from covr_ray.errors import ConfigError

T, A = 6, 2


def _episode() -> tuple[SingleAgentEpisode, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (T + 1, 9, 8, 8), dtype=np.uint8)  # 3 stacked RGB frames, channel first
    mean = rng.normal(0, 1.5, (T, A)).astype(np.float32)
    log_std = np.full((T, A), -1.0, np.float32)
    taken = np.clip(np.tanh(mean + rng.normal(0, 0.4, (T, A))), -1, 1).astype(np.float32)
    warm = np.array([1, 1, 0, 0, 0, 0], np.float32)
    episode = SingleAgentEpisode(
        observations=list(obs), actions=list(taken), rewards=[1.0] * T, len_lookback_buffer=0,
        extra_model_outputs={Columns.ACTION_DIST_INPUTS: list(np.concatenate([mean, log_std], 1)),
                             EXTRA_WARMUP: list(warm)})
    return episode, obs, mean, taken


def test_mean_records_the_policys_deterministic_action_outside_warmup() -> None:
    episode, obs, mean, taken = _episode()
    frames, actions, rewards, entropy, warmup = episode_rows([episode], A, teach_action="mean")
    assert warmup.tolist() == [True, True, False, False, False, False]
    np.testing.assert_array_equal(actions[:2], taken[:2])  # uniform warm-up actions: as taken
    np.testing.assert_allclose(actions[2:], np.tanh(mean[2:]), rtol=0, atol=1e-6)  # float32 tanh vs float64
    assert np.abs(actions[2:] - taken[2:]).max() > 0.05  # the sampled noise is not what is taught
    np.testing.assert_array_equal(frames, obs[:T, -3:].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(entropy[2:], A * (-1.0 + 0.5 * math.log(2 * math.pi * math.e)), rtol=1e-12)
    np.testing.assert_allclose(entropy[:2], A * math.log(2.0), rtol=1e-12)
    # the episode's own actions are untouched (the replay buffer gets them after the callback)
    np.testing.assert_array_equal(np.asarray(episode.get_actions(slice(0, T))), taken)


def test_taken_records_the_sampled_action() -> None:
    episode, _, _, taken = _episode()
    _, actions, _, _, _ = episode_rows([episode], A, teach_action="taken")
    np.testing.assert_array_equal(actions, taken)


def test_teach_action_is_validated_by_name() -> None:
    assert load_config("smoke").lora.teach_action == "mean"
    with pytest.raises(ConfigError, match="teach_action"):
        load_config("smoke", overrides=["lora.teach_action=noisy"])
