"""Compact pixel replay: frames stored once, exact reconstruction, chunked episodes, eviction, late priors
by step id, typed errors, save/load and the RLlib adapter (episode chunks in, columns out; no Ray cluster
needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from covr_ray.columns import INFO_PRIOR_ACTION, INFO_PRIOR_LATE, INFO_PRIOR_MASK, INFO_STEP_ID, PRIOR_ACTION, PRIOR_MASK
from covr_ray.errors import CheckpointError, ReplayError
from covr_ray.rl.replay import PixelReplay
from covr_ray.rl.rllib_replay import CovrEpisodeReplayBuffer

K, C, S, A = 3, 3, 16, 2


def stacked_episode(t_len: int, rng: np.random.Generator) -> np.ndarray:
    """``(T+1, K*C, S, S)`` observations of a frame-stacked episode (reset repeats the first frame)."""
    frames = rng.integers(0, 256, (t_len + 1, C, S, S), dtype=np.uint8)
    padded = np.concatenate([frames[:1]] * (K - 1) + [frames])
    return np.stack([padded[t:t + K].reshape(K * C, S, S) for t in range(t_len + 1)])


def add(buf: PixelReplay, key: str, obs: np.ndarray, first_id: int, done: bool = True, prior_every: int = 0) -> None:
    t_len = len(obs) - 1
    priors = np.tile(np.array([0.5, -0.5], np.float32), (t_len, 1))
    masks = np.array([1.0 if prior_every and t % prior_every == 0 else 0.0 for t in range(t_len)], np.float32)
    buf.add_chunk(key, obs, np.full((t_len, A), 0.1, np.float32), np.arange(t_len, dtype=np.float32), done, False,
                  step_ids=np.arange(first_id, first_id + t_len), prior_actions=priors, prior_masks=masks)


def check_sample(buf: PixelReplay, episodes: dict[int, np.ndarray], n: int = 64) -> dict:
    """Every sampled obs / next_obs equals the original observation of its step id."""
    s = buf.sample(n)
    for i, sid in enumerate(s["step_ids"]):
        first = max(f for f in episodes if f <= sid)
        np.testing.assert_array_equal(s["obs"][i], episodes[first][sid - first])
        np.testing.assert_array_equal(s["next_obs"][i], episodes[first][sid - first + 1])
    return s


def test_each_frame_is_stored_once_and_observations_are_exact() -> None:
    rng = np.random.default_rng(0)
    buf = PixelReplay(100, (K * C, S, S), A, K, seed=0)
    obs = stacked_episode(30, rng)
    add(buf, "e0", obs, first_id=0)
    assert len(buf) == 30 and buf.frames_in_use() == 30 + K  # K frames at reset, then one per step
    s = check_sample(buf, {0: obs})
    assert s["obs"].dtype == np.uint8 and s["obs"].shape == (64, K * C, S, S)
    assert s["terminateds"].sum() == np.sum(s["step_ids"] == 29)  # only the last step is terminal


def test_samples_into_reused_buffers_are_exact_and_live_until_the_second_sample_after() -> None:
    rng = np.random.default_rng(1)
    episodes = {0: stacked_episode(40, rng), 100: stacked_episode(25, rng)}
    fresh, reused = (PixelReplay(200, (K * C, S, S), A, K, seed=3) for _ in range(2))
    for buf in (fresh, reused):
        for first, obs in episodes.items():
            add(buf, f"e{first}", obs, first_id=first)
    batches = []
    for _ in range(3):
        want, got = fresh.sample(32), reused.sample(32, reuse_buffers=True)  # same seed: the same rows
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
        batches.append((want, got))
    first_live, (second_fresh, second_live), (third_fresh, third_live) = batches[0][1], batches[1], batches[2]
    # the batch after one is in other arrays (a loop may hold the previous batch while it samples the next)
    assert not np.shares_memory(first_live["obs"], second_live["obs"])
    assert not np.shares_memory(first_live["obs"], first_live["next_obs"])
    # the second sample after it writes into its arrays: the documented lifetime, no longer
    assert np.shares_memory(first_live["obs"], third_live["obs"])
    np.testing.assert_array_equal(third_live["obs"], third_fresh["obs"])
    np.testing.assert_array_equal(second_live["next_obs"], second_fresh["next_obs"])  # untouched by the third
    # observations stay exact through the reused path too
    s = reused.sample(64, reuse_buffers=True)
    for i, sid in enumerate(s["step_ids"]):
        first = max(f for f in episodes if f <= sid)
        np.testing.assert_array_equal(s["obs"][i], episodes[first][sid - first])
        np.testing.assert_array_equal(s["next_obs"][i], episodes[first][sid - first + 1])


def test_chunked_episode_continues_without_rewriting_frames() -> None:
    rng = np.random.default_rng(1)
    buf = PixelReplay(100, (K * C, S, S), A, K, seed=0)
    obs = stacked_episode(30, rng)
    add(buf, "e0", obs[:11], 0, done=False)
    add(buf, "e0", obs[10:21], 10, done=False)
    add(buf, "e0", obs[20:], 20, done=True)
    assert len(buf) == 30 and buf.frames_in_use() == 30 + K
    check_sample(buf, {0: obs})
    assert not buf._tails  # the finished episode released its kept frames


def test_non_shifting_observations_are_still_exact() -> None:
    rng = np.random.default_rng(2)
    buf = PixelReplay(50, (K * C, S, S), A, K, seed=0)
    obs = rng.integers(0, 256, (11, K * C, S, S), dtype=np.uint8)  # no frame-stack structure
    add(buf, "e0", obs, 0)
    assert buf.counters["stack_mismatches"] == 10 and buf.frames_in_use() == 11 * K
    check_sample(buf, {0: obs})


def test_eviction_keeps_capacity_bounds_frames_and_contents() -> None:
    rng = np.random.default_rng(3)
    buf = PixelReplay(40, (K * C, S, S), A, K, seed=0, frame_slack=0.5)
    tight = PixelReplay(40, (K * C, S, S), A, K, seed=0, frame_slack=0.0)  # pool of 40 + 2K + 2 frames
    episodes, first = {}, 0
    for e in range(6):
        obs = stacked_episode(15, rng)
        episodes[first] = obs
        add(buf, f"e{e}", obs, first)
        add(tight, f"e{e}", obs, first)
        first += 15
    assert len(buf) == 40 and buf.counters["evicted"] == 90 - 40
    assert buf.frames_in_use() <= 40 + 3 * K  # 40 newest frames + the starts of the 3 episodes they span
    s = check_sample(buf, episodes, n=200)
    assert s["step_ids"].min() >= 90 - 40  # only the newest 40 transitions are left
    assert set(buf._id_to_row) == set(range(50, 90))  # the step-id index is bounded by the live rows
    # short episodes with no frame slack: the pool evicts a few more transitions, contents stay exact
    assert 30 <= len(tight) < 40 and tight.frames_in_use() <= tight.pool_size
    check_sample(tight, episodes, n=200)


def test_late_priors_attach_by_step_id() -> None:
    rng = np.random.default_rng(4)
    buf = PixelReplay(100, (K * C, S, S), A, K, seed=0)
    add(buf, "e0", stacked_episode(10, rng), 100, prior_every=0)
    assert buf.stats()["replay/prior_coverage"] == 0.0
    assert buf.attach_priors([(103, [0.25, -1.0]), (107, np.array([1.0, 0.0])), (999, [0.0, 0.0])]) == 2
    assert buf.counters["late_priors_missed"] == 1
    s = buf.sample(200)
    for sid, prior, mask in zip(s["step_ids"], s[PRIOR_ACTION], s[PRIOR_MASK]):
        expected = {103: [0.25, -1.0], 107: [1.0, 0.0]}.get(int(sid))
        assert mask == (1.0 if expected else 0.0)
        if expected:
            np.testing.assert_allclose(prior, expected)
    with pytest.raises(ReplayError, match="prior action"):
        buf.attach_priors([(104, [2.0, 0.0])])
    with pytest.raises(ReplayError, match="prior action"):
        buf.attach_priors([(104, [0.1])])


def test_bad_input_raises_typed_errors() -> None:
    with pytest.raises(ReplayError):
        PixelReplay(10, (8, S, S), A, frame_stack=3)  # 8 channels are not 3 frames
    buf = PixelReplay(10, (K * C, S, S), A, K)
    with pytest.raises(ReplayError, match="empty"):
        buf.sample(4)
    with pytest.raises(ReplayError, match="uint8"):
        buf.add_chunk("e", np.zeros((3, K * C, S, S), np.float32), np.zeros((2, A)), np.zeros(2), True, False)
    with pytest.raises(ReplayError, match="uint8"):
        buf.add_chunk("e", np.zeros((2, K * C, S, S), np.uint8), np.zeros((2, A)), np.zeros(2), True, False)


def test_save_load_round_trip_and_mismatch(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    buf = PixelReplay(60, (K * C, S, S), A, K, seed=7)
    add(buf, "e0", stacked_episode(25, rng), 0, prior_every=3)
    add(buf, "e1", stacked_episode(25, rng)[:11], 25, done=False)  # an open episode is kept too
    buf.sample(8)
    buf.save(tmp_path / "rb")
    with pytest.raises(CheckpointError):
        buf.save(tmp_path / "rb")
    buf.save(tmp_path / "rb", overwrite=True)
    other = PixelReplay(60, (K * C, S, S), A, K, seed=123)
    other.load(tmp_path / "rb")
    assert other.stats() == buf.stats() and list(other._tails) == ["e1"]
    a, b = buf.sample(32), other.sample(32)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="capacity"):
        PixelReplay(61, (K * C, S, S), A, K).load(tmp_path / "rb")
    with pytest.raises(CheckpointError):
        other.load(tmp_path / "missing")


def test_memory_per_100k_steps_is_a_few_gb() -> None:
    buf = PixelReplay(1000, (9, 84, 84), 6, 3)
    rng = np.random.default_rng(6)
    frames = rng.integers(0, 256, (126, 3, 84, 84), dtype=np.uint8)
    padded = np.concatenate([frames[:1]] * 2 + [frames])
    obs = np.stack([padded[t:t + 3].reshape(9, 84, 84) for t in range(126)])
    for e in range(8):  # 8 episodes of 125 steps (cartpole: 1000 frames / action repeat 8)
        buf.add_chunk(f"e{e}", obs, np.zeros((125, 6)), np.zeros(125), True, False)
    per_step = buf.nbytes() / len(buf)
    assert per_step < 1.03 * 84 * 84 * 3 + 200  # one RGB frame (+ 2 per episode start) + columns
    assert per_step * 100_000 < 2.3e9


def episode_chunk(obs: np.ndarray, infos: list, first_t: int = 0, eps_id: str = "ep", done: bool = True) -> SingleAgentEpisode:
    t_len = len(obs) - 1
    import gymnasium as gym

    return SingleAgentEpisode(
        id_=eps_id, observations=list(obs), actions=[np.full(A, 0.2, np.float32)] * t_len,
        rewards=[1.0] * t_len, infos=infos, truncated=done, t_started=first_t, len_lookback_buffer=0,
        observation_space=gym.spaces.Box(0, 255, (K * C, S, S), np.uint8),
        action_space=gym.spaces.Box(-1, 1, (A,), np.float32))


def test_episode_adapter_reads_step_infos_and_samples_priors_as_columns() -> None:
    rng = np.random.default_rng(7)
    obs = stacked_episode(8, rng)
    infos = [{INFO_STEP_ID: -1, INFO_PRIOR_MASK: 0.0}]
    for t in range(8):
        info = {INFO_STEP_ID: 50 + t, INFO_PRIOR_ACTION: [0.0, 0.0], INFO_PRIOR_MASK: 0.0}
        if t == 2:
            info.update({INFO_PRIOR_ACTION: [0.3, 0.4], INFO_PRIOR_MASK: 1.0})
        if t == 6:
            info[INFO_PRIOR_LATE] = [(53, [-0.5, 0.5])]
        infos.append(info)
    buf = CovrEpisodeReplayBuffer(100, frame_stack=K, seed=0)
    # the first chunk stops mid-episode; the second continues it (its first info is the last one again)
    buf.add([episode_chunk(obs[:5], infos[:5], 0, done=False)])
    # a reset info of the next episode may carry late priors for this one; listed before it here
    late = episode_chunk(stacked_episode(1, rng), [{INFO_PRIOR_LATE: [(57, [1.0, 1.0])]}, {}], 0, eps_id="next",
                         done=False)
    buf.add([late, episode_chunk(obs[4:], infos[4:], 4, done=True)])
    core = buf.core
    assert len(buf) == 9 and core.counters["late_priors_attached"] == 2 and core.counters["late_priors_missed"] == 0
    expected = {52: [0.3, 0.4], 53: [-0.5, 0.5], 57: [1.0, 1.0]}
    s = buf.sample(60)
    assert s[PRIOR_ACTION].shape == (60, A) and s[PRIOR_MASK].shape == (60,) and s["obs"].shape == (60, K * C, S, S)
    assert {int(sid) for sid in s["step_ids"]} == set(range(50, 58)) | {-1}  # all drawn (-1: the "next" step)
    for i, sid in enumerate(s["step_ids"].tolist()):
        assert s[PRIOR_MASK][i] == (1.0 if sid in expected else 0.0)
        np.testing.assert_allclose(s[PRIOR_ACTION][i], expected.get(sid, [0.0, 0.0]))
        if sid >= 50:
            np.testing.assert_array_equal(s["obs"][i], obs[sid - 50])
            np.testing.assert_array_equal(s["next_obs"][i], obs[sid - 50 + 1])
            assert s["terminateds"][i] == 0 and s["truncateds"][i] == (sid == 57)
    # RLlib's other sample forms: there is no episode sampling path
    for kwargs in ({"n_step": 3}, {"sample_episodes": True}, {"batch_length_T": 4}):
        with pytest.raises(ReplayError, match="columns only"):
            buf.sample(4, **kwargs)
    with pytest.raises(ReplayError, match="num_items"):
        buf.sample(0)
    with pytest.raises(ReplayError, match="empty"):
        CovrEpisodeReplayBuffer(10, frame_stack=K).sample(4)
    bad = [{}, {INFO_STEP_ID: 1, INFO_PRIOR_ACTION: [float("nan"), 0.0], INFO_PRIOR_MASK: 1.0}]
    with pytest.raises(ReplayError, match="step 1"):
        buf.add([episode_chunk(stacked_episode(1, rng), bad, 0, eps_id="bad")])
