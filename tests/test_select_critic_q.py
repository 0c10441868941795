"""EDDF's Q-value ablation in `covr train`: D_f rows get Q-values from the rebuilt observations.

The critic here is a deterministic function of (obs, action), so the test can say exactly which observation
each row was scored on; the real critic on this path is tested in test_rl_algo.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from covr_ray import columns as C
from covr_ray.config import EDDFSection, RALWSection
from covr_ray.errors import FinetuneDataError
from covr_ray.df.writer import FilterBuffer
from covr_ray.select.kept import build_kept_set
from covr_ray.df.shards import read_shard, write_shard
from covr_ray.select.critic import episode_observations, score_df_shards
from support.df import episode
from support.numerics import assert_close_within, cast_atol, sum_atol


def _critic(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Depends on every slot of the stack and on the action."""
    weights = np.arange(1, obs.shape[1] + 1, dtype=np.float64)[None, :]
    return (obs.astype(np.float64).mean(axis=(2, 3)) * weights).sum(axis=1) + 100.0 * actions[:, 0]


def _critic_atol(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """How far the stored Q of :func:`_critic` may be from ``_critic`` recomputed here: numpy may sum the
    rebuilt (equal, but separately allocated) observations in another order, twice the float64 bound
    of its ``H W + 3k + 2`` sums of non-negative terms plus ``100 |a|``, and the shard stores Q as float32
    (one rounding)."""
    q = _critic(obs, actions)
    terms = _critic(obs, np.zeros_like(actions)) + 100.0 * np.abs(actions[:, 0])  # sum of |terms|
    n = obs.shape[2] * obs.shape[3] + obs.shape[1] + 2
    return 2.0 * sum_atol(n, terms, np.float64) + cast_atol(q, np.float32)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_rebuilt_observations_equal_the_env_frame_stack(k: int) -> None:
    obs, frames, _ = episode(7, seed=k, k=k)
    assert np.array_equal(episode_observations(frames, k), obs)


def test_rebuilt_observations_refuse_bad_frames() -> None:
    with pytest.raises(FinetuneDataError, match="uint8"):
        episode_observations(np.zeros((3, 8, 8, 3), np.float32), 3)
    with pytest.raises(FinetuneDataError, match="frame_stack"):
        episode_observations(np.zeros((3, 8, 8, 3), np.uint8), 0)


def test_shards_are_scored_in_place_on_the_observations_the_policy_saw(tmp_path: Path) -> None:
    buf = FilterBuffer(tmp_path / "df", action_dim=1, gamma=0.9, rows_per_shard=1 << 30)
    truth: dict[str, np.ndarray] = {}
    bounds: dict[str, np.ndarray] = {}
    for e, steps in enumerate([5, 9]):  # two episodes in one shard
        obs, frames, actions = episode(steps, seed=10 + e)
        buf.add_episode(f"ep{e}", frames, actions, np.ones(steps, np.float32), 0.5)
        truth[f"ep{e}"] = _critic(obs, actions)
        bounds[f"ep{e}"] = _critic_atol(obs, actions)
    shard_two = buf.flush()
    obs, frames, actions = episode(4, seed=20)
    given = np.array([7.0, 8.0, 9.0, 10.0], np.float32)  # already scored: kept as it is
    buf.add_episode("ep2", frames, actions, np.ones(4, np.float32), 0.5, q_values=given)
    shard_given = buf.flush()
    calls: list[int] = []

    def critic(o: np.ndarray, a: np.ndarray) -> np.ndarray:
        calls.append(len(o))
        return _critic(o, a)

    kept, metrics = score_df_shards([shard_two, shard_given], 3, critic, action_dim=1)
    assert kept == [shard_two, shard_given]
    assert metrics == {"df/q_scored_rows": 14.0, "df/q_unscored_shards": 0.0}
    assert sorted(calls) == [5, 9]  # one call per unscored episode, none for the scored shard
    table = read_shard(shard_two, kind="df")  # rewritten as a valid shard, every other column as it was
    ids, q = table.column(C.EPISODE_ID).to_pylist(), table.column(C.Q_VALUE).to_numpy()
    for episode_id, expected in truth.items():
        assert_close_within(q[np.asarray(ids) == episode_id], expected, bounds[episode_id], episode_id)
    assert table.column(C.REWARD).to_pylist() == [1.0] * 14
    np.testing.assert_array_equal(read_shard(shard_given).column(C.Q_VALUE).to_numpy(), given)

    # EDDF on the Q column now keeps the best-scored rows
    out, round_metrics = build_kept_set(kept, tmp_path / "round", EDDFSection(signal="q_value"), RALWSection(),
                                        action_dim=1, entropy=0.0)
    assert 0 < round_metrics["round/kept_rows"] < 18
    kept_q = read_shard(next((tmp_path / "round").glob("*.parquet"))).column(C.Q_VALUE).to_numpy()
    assert kept_q.min() >= np.median(np.concatenate([*truth.values(), given])) - 1e-3


def test_unscorable_shards_are_left_out_untouched(tmp_path: Path) -> None:
    buf = FilterBuffer(tmp_path / "df", action_dim=1, gamma=0.9, rows_per_shard=1 << 30)
    _, frames, actions = episode(6, seed=1)
    buf.add_episode("whole", frames, actions, np.ones(6, np.float32), 0.5)
    good = buf.flush()
    buf.add_episode("cut", frames, actions, np.ones(6, np.float32), 0.5)
    cut = buf.flush()
    table = read_shard(cut)
    idx = table.schema.get_field_index(C.STEP_INDEX)  # an episode that does not start at step 0
    shifted = pa.array(table.column(C.STEP_INDEX).to_numpy() + 2, pa.int32())
    write_shard(cut, table.set_column(idx, table.schema.field(idx), shifted))
    cut_bytes = cut.read_bytes()
    corrupt = tmp_path / "df" / "df-000099.parquet"
    corrupt.write_bytes(good.read_bytes()[:100])

    kept, metrics = score_df_shards([good, cut, corrupt], 3, _critic, action_dim=1)
    assert kept == [good]
    assert metrics["df/q_unscored_shards"] == 2.0 and metrics["df/q_scored_rows"] == 6.0
    assert cut.read_bytes() == cut_bytes

    def broken(o: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.full(len(o), np.nan)

    buf.add_episode("nan", frames, actions, np.ones(6, np.float32), 0.5)
    nan_shard = buf.flush()
    before = nan_shard.read_bytes()
    assert score_df_shards([nan_shard], 3, broken, action_dim=1)[0] == []
    assert nan_shard.read_bytes() == before
