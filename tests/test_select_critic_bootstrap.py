"""D_f returns of time-limit truncations are bootstrapped with the critic's value of o_T; true terminations are
not; warm-up rows never reach the VLM's training data.

The value function here is a deterministic function of the observation, so the test can say exactly which
observation was valued; the real learner's ``state_values`` is tested in test_rl_algo.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covr_ray import columns as C
from covr_ray.config import EDDFSection, RALWSection
from covr_ray.df.writer import FilterBuffer
from covr_ray.select.kept import build_kept_set
from covr_ray.df.shards import read_shard, write_shard
from covr_ray.select.critic import bootstrap_truncated_shards, final_observation
from support.df import episode
from support.numerics import assert_close_within, cast_atol, sum_atol

GAMMA = 0.9


def _value(obs: np.ndarray) -> np.ndarray:
    """Depends on every slot of the stack: (N, 3k, S, S) -> (N,)."""
    weights = np.arange(1, obs.shape[1] + 1, dtype=np.float64)[None, :]
    return (obs.astype(np.float64).mean(axis=(2, 3)) * weights).sum(axis=1) / 100.0


def _truncated(steps: int, seed: int, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An episode of ``steps`` steps and its final observation: (obs (T+1, 3k, S, S), frames (T+1, S, S, 3),
    actions (T, 1), rewards (T,))."""
    obs, frames, actions = episode(steps + 1, seed, k)
    rewards = np.random.default_rng(seed).uniform(0, 1, steps).astype(np.float32)
    return obs, frames, actions[:steps], rewards


def _discounted(rewards: np.ndarray, tail: float) -> np.ndarray:
    g, acc = np.zeros(len(rewards)), tail
    for i in range(len(rewards) - 1, -1, -1):
        acc = rewards[i] + GAMMA * acc
        g[i] = acc
    return g


@pytest.mark.parametrize("k", [1, 3])
def test_final_observation_is_the_env_stack_after_the_last_step(k: int) -> None:
    for steps in (1, 2, 6):  # shorter than the stack: the reset frame fills the missing slots
        obs, frames, _a, _r = _truncated(steps, seed=steps, k=k)
        from covr_ray.frames import encode_frame

        pngs = [encode_frame(f) for f in frames[:-1]]
        assert np.array_equal(final_observation(pngs, encode_frame(frames[-1]), k), obs[-1])


def test_truncated_returns_get_the_critics_tail_and_terminated_ones_do_not(tmp_path: Path) -> None:
    buf = FilterBuffer(tmp_path / "df", action_dim=1, gamma=GAMMA, rows_per_shard=1 << 30)
    cut_obs, cut_frames, cut_actions, cut_rewards = _truncated(7, seed=1)
    buf.add_episode("cut", cut_frames[:-1], cut_actions, cut_rewards, 0.5, final_frame=cut_frames[-1])
    _o, end_frames, end_actions, end_rewards = _truncated(5, seed=2)
    buf.add_episode("end", end_frames[:-1], end_actions, end_rewards, 0.5)  # a true termination
    shard = buf.flush()
    raw = read_shard(shard, kind="df")
    ids = np.asarray(raw.column(C.EPISODE_ID).to_pylist())
    boot = raw.column(C.BOOTSTRAP_VALUE).to_numpy()
    assert np.isnan(boot[ids == "cut"]).all() and (boot[ids == "end"] == 0).all()
    finals = raw.column(C.FINAL_FRAME_PNG).to_pylist()
    assert finals[int(np.flatnonzero(ids == "cut")[-1])] is not None and sum(f is not None for f in finals) == 1

    calls: list[int] = []

    def value(obs: np.ndarray) -> np.ndarray:
        calls.append(len(obs))
        return _value(obs)

    done, metrics = bootstrap_truncated_shards([shard], 3, value, GAMMA)
    assert done == [shard] and calls == [1]  # one final observation, of the truncated episode only
    assert metrics == {"df/bootstrapped_episodes": 1.0, "df/bootstrap_failed_shards": 0.0}
    table = read_shard(shard, kind="df")
    g = table.column(C.RETURN_TO_GO).to_numpy().astype(np.float64)
    v = float(_value(cut_obs[-1:])[0])
    expected_cut = _discounted(cut_rewards.astype(np.float64), v)  # g_i = ... + gamma^(T-i) V(o_T)
    mc_cut = _discounted(cut_rewards.astype(np.float64), 0.0)
    # The recorder stores the Monte-Carlo part in float32 (one rounding), the round adds the tail in float64 and
    # stores the sum in float32 (a second rounding); the float64 sums of <= 8 terms add next to nothing.
    cut_atol = cast_atol(mc_cut, np.float32) + cast_atol(expected_cut, np.float32) + sum_atol(9, expected_cut + 1, np.float64)
    assert_close_within(g[ids == "cut"], expected_cut, cut_atol, "bootstrapped returns")
    end = _discounted(end_rewards.astype(np.float64), 0.0)
    assert_close_within(g[ids == "end"], end, cast_atol(end, np.float32) + sum_atol(6, end, np.float64),
                        "terminated returns")
    assert np.abs(g[ids == "cut"] - mc_cut).min() > 1e3 * cut_atol.max()  # the tail did move every return
    assert_close_within(table.column(C.BOOTSTRAP_VALUE).to_numpy()[ids == "cut"], v, cast_atol(v, np.float32),
                        "stored bootstrap value")

    # bootstrapped once: a second round (the same shard, a round that failed and is retried) adds nothing
    before = shard.read_bytes()
    assert bootstrap_truncated_shards([shard], 3, value, GAMMA)[1]["df/bootstrapped_episodes"] == 0.0
    assert shard.read_bytes() == before and calls == [1]


def test_a_shard_that_cannot_be_bootstrapped_is_left_out_untouched(tmp_path: Path) -> None:
    buf = FilterBuffer(tmp_path / "df", action_dim=1, gamma=GAMMA, rows_per_shard=1 << 30)
    _o, frames, actions, rewards = _truncated(4, seed=3)
    buf.add_episode("cut", frames[:-1], actions, rewards, 0.5, final_frame=frames[-1])
    shard = buf.flush()
    table = read_shard(shard)
    idx = table.schema.get_field_index(C.FINAL_FRAME_PNG)  # the final frame lost
    import pyarrow as pa

    write_shard(shard, table.set_column(idx, table.schema.field(idx), pa.nulls(table.num_rows, pa.binary())))
    before = shard.read_bytes()
    done, metrics = bootstrap_truncated_shards([shard], 3, _value, GAMMA)
    assert done == [] and metrics["df/bootstrap_failed_shards"] == 1.0 and shard.read_bytes() == before
    # and the round builder never selects rows whose return lacks its tail
    _kept, m = build_kept_set([shard], tmp_path / "round", EDDFSection(), RALWSection(), action_dim=1, entropy=0.0)
    assert m["round/unbootstrapped_rows"] == 4 and m["round/candidate_rows"] == 0 and m["round/kept_rows"] == 0


def test_warmup_rows_are_never_selected_and_do_not_shape_the_threshold(tmp_path: Path) -> None:
    """Uniform-random warm-up actions stay in D_f (their frames rebuild later stacks) but never reach the
    kept set, even when their returns are the best: the VLM is not taught random actions."""
    buf = FilterBuffer(tmp_path / "df", action_dim=1, gamma=GAMMA, rows_per_shard=1 << 30)
    _o, frames, actions, _r = _truncated(20, seed=4)
    warm = np.arange(20) < 8
    rewards = np.where(warm, 10.0, np.linspace(0.0, 1.0, 20)).astype(np.float32)
    buf.add_episode("straddles", frames[:-1], actions, rewards, 0.5, warmup=warm)
    shard = buf.flush()
    assert read_shard(shard).column(C.WARMUP).to_pylist() == warm.tolist()
    for mode in ("eddf", "topk", "random"):
        out = tmp_path / f"round-{mode}"
        kept, m = build_kept_set([shard], out, EDDFSection(mode=mode, topk_keep=0.9), RALWSection(), action_dim=1,
                                 entropy=0.0)
        steps = np.concatenate([read_shard(p).column(C.STEP_INDEX).to_numpy() for p in kept.shard_paths()])
        assert len(steps) and steps.min() >= 8, mode
        assert m["round/warmup_rows"] == 8 and m["round/candidate_rows"] == 12 and m["eddf/n"] == 12
