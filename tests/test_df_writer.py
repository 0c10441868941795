"""D_f writer: return-to-go, flushes to shards, resume, clearing after a round; the round's kept set."""

from __future__ import annotations

import numpy as np
import pytest

from covr_ray import columns as C
from covr_ray.config import EDDFSection, RALWSection
from covr_ray.errors import FinetuneDataError
from covr_ray.df.shards import open_shard_set, read_shard, read_shards
from covr_ray.df.writer import FilterBuffer, delete_consumed, discounted_return_to_go
from covr_ray.frames import decode_frame
from covr_ray.select.kept import build_kept_set


def frame(v: int) -> np.ndarray:
    return np.full((8, 6, 3), v % 256, np.uint8)


def test_return_to_go_hand_computed():
    g = discounted_return_to_go(np.array([1.0, 0.0, 2.0]), 0.5)
    assert g.tolist() == [1.5, 1.0, 2.0]  # 2; 0 + .5*2; 1 + .5*1
    g = discounted_return_to_go(np.array([1.0, 1.0]), 0.9, bootstrap_value=10.0)
    assert g.tolist() == pytest.approx([1 + 0.9 * (1 + 9.0), 1 + 9.0])
    with pytest.raises(FinetuneDataError, match="gamma"):
        discounted_return_to_go(np.ones(2), 1.5)


def test_episodes_flush_and_resume(tmp_path):
    buf = FilterBuffer(tmp_path / "df", action_dim=2, gamma=0.5, rows_per_shard=5)
    buf.add_episode("a", [frame(t) for t in range(3)], [[0.1 * t, -0.1] for t in range(3)], np.ones(3),
                    entropy=-1.0, q_values=2.0 + np.arange(3))
    assert len(buf.shard_paths()) == 0 and len(buf) == 3
    buf.add_episode("b", [frame(100 + t) for t in range(3)], [[0.0, 0.5]] * 3, np.arange(3.0), entropy=-2.0)
    assert len(buf.shard_paths()) == 1 and len(buf) == 6  # 6 rows >= rows_per_shard: flushed
    table = read_shard(buf.shard_paths()[0], kind="df")
    rows = table.to_pylist()
    a = [r for r in rows if r[C.EPISODE_ID] == "a"]
    assert [r[C.RETURN_TO_GO] for r in a] == [1.75, 1.5, 1.0]
    assert [r[C.Q_VALUE] for r in a] == [2.0, 3.0, 4.0]
    b = [r for r in rows if r[C.EPISODE_ID] == "b"]
    assert [r[C.RETURN_TO_GO] for r in b] == [1.0, 2.0, 2.0] and np.isnan(b[0][C.Q_VALUE])
    assert [r[C.STEP_INDEX] for r in b] == [0, 1, 2]
    assert (decode_frame(b[2][C.FRAME_PNG]) == 102).all()
    np.testing.assert_allclose(a[2][C.RL_ACTION], [0.2, -0.1], rtol=1e-6)
    # a new buffer on the same directory resumes with the shards already there
    again = FilterBuffer(tmp_path / "df", action_dim=2, gamma=0.5, rows_per_shard=5)
    assert len(again) == 6
    again.add_episode("c", np.stack([frame(7)] * 2), np.zeros((2, 2)), np.ones(2), entropy=-1.0)
    assert again.flush().name == "df-000001.parquet"
    (again.directory / ".df-000002.parquet.tmp").write_bytes(b"half")  # a writer killed mid-write
    assert delete_consumed(again.shard_paths()) == 2
    assert again.shard_paths() == [] and list(again.directory.iterdir()) == []


def test_bad_episodes_raise(tmp_path):
    buf = FilterBuffer(tmp_path, action_dim=2, gamma=0.9)
    with pytest.raises(FinetuneDataError, match=r"\[1.5, 0.0\].*in \[-1, 1\]"):
        buf.add_episode("a", [frame(0)], [[1.5, 0.0]], [0.0], 0.0)
    with pytest.raises(FinetuneDataError, match="must be finite"):
        buf.add_episode("a", [frame(0)], [[0.0, 0.0]], [float("nan")], 0.0)
    with pytest.raises(FinetuneDataError, match=r"actions shape \(2, 3\)"):
        buf.add_episode("c", [frame(0)] * 2, np.zeros((2, 3)), np.zeros(2), 0.0)
    with pytest.raises(FinetuneDataError, match="2 frames for 3 rewards"):
        buf.add_episode("c", [frame(0)] * 2, np.zeros((3, 2)), np.zeros(3), 0.0)
    assert len(buf) == 0


def fill(buf: FilterBuffer, episodes: int, length: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        quality = rng.normal()
        buf.add_episode(f"ep{e}", np.stack([frame(e * length + t) for t in range(length)]),
                        rng.uniform(-1, 1, (length, buf.action_dim)), np.full(length, quality), entropy=-1.0)


def test_kept_set_filters_and_weights_then_df_is_cleared(tmp_path):
    buf = FilterBuffer(tmp_path / "df", action_dim=2, gamma=0.9, rows_per_shard=16)
    fill(buf, episodes=12, length=5)
    buf.flush()
    shard_set, m = build_kept_set(buf.shard_paths(), tmp_path / "round-000", EDDFSection(), RALWSection(),
                                  action_dim=2, entropy=5.0)
    assert m["round/df_rows"] == 60
    assert 0 < m["round/kept_rows"] == m["eddf/kept"] < 60
    assert delete_consumed(buf.shard_paths()) == 3 and buf.shard_paths() == []  # 20 rows a shard
    assert open_shard_set(shard_set.path, verify_checksums=True).rows == shard_set.rows
    kept, skipped = read_shards(shard_set.shard_paths(), kind="kept")
    assert not skipped
    w = np.array(kept.column(C.SAMPLE_WEIGHT).to_pylist())
    g = np.array(kept.column(C.RETURN_TO_GO).to_pylist())
    assert w.max() == pytest.approx(1.0) and w.min() == 0.0 and w[np.argmax(g)] == pytest.approx(1.0)
    # with s = 0 (high entropy) at least about half of D_f is kept
    assert m["eddf/keep_frac"] >= 0.45


def test_kept_set_skips_corrupt_df_shard_and_keeps_df_on_failure(tmp_path, caplog):
    buf = FilterBuffer(tmp_path / "df", action_dim=2, gamma=0.9, rows_per_shard=10)
    fill(buf, episodes=6, length=5)
    buf.flush()
    paths = buf.shard_paths()
    assert len(paths) == 3
    paths[1].write_bytes(paths[1].read_bytes()[:200])
    caplog.set_level("WARNING", logger="covr_ray")
    shard_set, m = build_kept_set(paths, tmp_path / "kept", EDDFSection(mode="topk", topk_keep=1.0),
                                  RALWSection(mode="none"), action_dim=2)
    assert m["round/skipped_shards"] == 1 and shard_set.rows == 20
    assert "skipping D_f shard" in caplog.text
    # the kept set's directory already exists: building it fails and D_f is left intact
    with pytest.raises(FileExistsError):
        build_kept_set(paths, tmp_path / "kept", EDDFSection(), RALWSection(), action_dim=2)
    assert len(buf.shard_paths()) == 3
