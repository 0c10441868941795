"""Shards: schema v1 round trip, atomic writes, corruption detection, readable by pandas and ray.data."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covr_ray import columns as C
from covr_ray.errors import FinetuneDataError, ShardError
from covr_ray import frames as F
from covr_ray.df import shards as S
from support.ray_local import local_ray


def make_rows(n: int, action_dim: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, 12, 10, 3), dtype=np.uint8)
    return {
        C.EPISODE_ID: [f"ep{i // 4}" for i in range(n)], C.STEP_INDEX: [i % 4 for i in range(n)],
        C.FRAME_PNG: [F.encode_frame(f) for f in frames],
        C.RL_ACTION: rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
        C.RETURN_TO_GO: rng.normal(size=n), C.REWARD: rng.normal(size=n),
        C.Q_VALUE: np.full(n, np.nan), C.ENTROPY: np.full(n, -1.5), C.SAMPLE_WEIGHT: np.full(n, np.nan),
        "_frames": frames,
    }


def test_round_trip_frames_actions_and_metadata(tmp_path):
    rows = make_rows(9)
    table = S.build_table(rows, kind="df", action_dim=2)
    entry = S.write_shard(tmp_path / "a.parquet", table)
    assert entry["rows"] == 9 and len(entry["sha256"]) == 64
    back = S.read_shard(tmp_path / "a.parquet", kind="df")
    assert back.schema.equals(table.schema, check_metadata=True)
    for name in (C.EPISODE_ID, C.STEP_INDEX, C.FRAME_PNG, C.RETURN_TO_GO, C.REWARD, C.ENTROPY):
        assert back.column(name).equals(table.column(name)), name
    assert S.shard_action_dim(back) == 2
    frames = [F.decode_frame(b) for b in back.column(C.FRAME_PNG).to_pylist()]
    assert all((f == g).all() for f, g in zip(frames, rows["_frames"]))
    acts = np.array(back.column(C.RL_ACTION).to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(acts, rows[C.RL_ACTION])
    assert all(math.isnan(q) for q in back.column(C.Q_VALUE).to_pylist())
    with pytest.raises(ShardError, match="kind 'df'; expected 'kept'"):
        S.read_shard(tmp_path / "a.parquet", kind="kept")


def test_grayscale_frames_and_latest_frame():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    rgb = F.decode_frame(F.encode_frame(gray[..., None]))
    assert rgb.shape == (4, 5, 3) and (rgb[..., 1] == gray).all()
    stack = np.stack([np.full((4, 5), i, np.uint8) for i in range(9)])  # (9, 4, 5): 3 RGB frames
    last = F.latest_frame(stack)
    assert last.shape == (4, 5, 3) and (last[..., 0] == 6).all() and (last[..., 2] == 8).all()
    with pytest.raises(FinetuneDataError, match="uint8"):
        F.encode_frame(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(FinetuneDataError, match=r"\(3, 84, 84\)"):
        F.encode_frame(np.zeros((3, 84, 84), np.uint8))


def test_build_table_rejects_bad_rows():
    rows = make_rows(4)
    with pytest.raises(FinetuneDataError, match=r"rl_action has shape \(4, 2\); expected \(4, 3\)"):
        S.build_table(rows, kind="df", action_dim=3)
    del rows[C.REWARD]
    with pytest.raises(FinetuneDataError, match="reward"):
        S.build_table(rows, kind="df", action_dim=2)


def test_truncated_flipped_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "a.parquet"
    S.write_shard(path, S.build_table(make_rows(40), kind="df", action_dim=2))
    data = path.read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="truncated"):
        S.read_shard(tmp_path / "trunc.parquet")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside a data page: caught by the page CRC
    (tmp_path / "flip.parquet").write_bytes(bytes(flipped))
    with pytest.raises(ShardError):
        S.read_shard(tmp_path / "flip.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(ShardError, match="not a Parquet file"):
        S.read_shard(tmp_path / "text.parquet")
    with pytest.raises(ShardError):
        S.read_shard(tmp_path / "missing.parquet")


def test_wrong_schema_version_and_columns_are_refused(tmp_path):
    table = S.build_table(make_rows(4), kind="df", action_dim=2)
    meta = dict(table.schema.metadata)
    meta[S.META_VERSION] = b"0"
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "v0.parquet")
    with pytest.raises(ShardError, match="schema version '0'"):
        S.read_shard(tmp_path / "v0.parquet")
    pq.write_table(table.drop_columns([C.ENTROPY]), tmp_path / "cols.parquet")
    with pytest.raises(ShardError, match="differ from schema v2"):
        S.read_shard(tmp_path / "cols.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(ShardError, match="missing"):
        S.read_shard(tmp_path / "plain.parquet")


def test_read_shards_skips_bad_ones_with_warning(tmp_path, caplog):
    good = [tmp_path / f"g{i}.parquet" for i in range(2)]
    for i, p in enumerate(good):
        S.write_shard(p, S.build_table(make_rows(5, seed=i), kind="df", action_dim=2))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good[0].read_bytes()[:100])
    caplog.set_level("WARNING", logger="covr_ray")
    table, skipped = S.read_shards([good[0], bad, good[1]])
    assert table.num_rows == 10
    assert [p for p, _ in skipped] == [str(bad)]
    assert "skipping shard" in caplog.text


def test_shard_set_atomic_manifest_and_readers(tmp_path):
    t1 = S.build_table(make_rows(6, seed=1), kind="kept", action_dim=2)
    t2 = S.build_table(make_rows(3, seed=2), kind="kept", action_dim=2)
    out = tmp_path / "set"
    ss = S.write_shard_set(out, [t1, t2.slice(0, 0), t2], kind="kept", action_dim=2)
    assert ss.rows == 9 and ss.files == ("part-00000.parquet", "part-00001.parquet")
    assert S.open_shard_set(out, verify_checksums=True).rows == 9
    manifest = json.loads((out / S.MANIFEST).read_text())
    assert manifest["schema_version"] == S.SCHEMA_VERSION and manifest["kind"] == "kept"
    # pandas and ray.data read the shards as they are
    df = pd.read_parquet(out)
    assert len(df) == 9 and set(S.FIELDS_V1.names) <= set(df.columns)
    # a failure inside the block leaves nothing behind, and a set is never overwritten
    with pytest.raises(RuntimeError):
        with S.ShardSetWriter(tmp_path / "half", kind="kept", action_dim=2) as w:
            w.write(t1)
            raise RuntimeError("killed mid-write")
    assert not (tmp_path / "half").exists() and list(tmp_path.iterdir()) == [out]
    with pytest.raises(FileExistsError):
        S.write_shard_set(out, [t1], kind="kept", action_dim=2)
    with pytest.raises(ShardError, match="kind 'df'"):
        with S.ShardSetWriter(tmp_path / "mixed", kind="kept", action_dim=2) as w:
            w.write(S.build_table(make_rows(2), kind="df", action_dim=2))
    # a shard altered after the manifest was written is caught
    part = out / ss.files[1]
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(ShardError, match="truncated or replaced"):
        S.open_shard_set(out)
    with pytest.raises(ShardError, match="incomplete"):
        S.open_shard_set(tmp_path / "nothing")


def test_a_kept_set_records_its_sources_relative_to_itself(tmp_path):
    """The D_f shards a kept set was built from (what its round consumes) survive a move of the run directory."""
    import shutil

    run = tmp_path / "run"
    sources = [run / "df" / "runner-1" / f"df-{i}.parquet" for i in range(2)]
    table = S.build_table(make_rows(3), kind="kept", action_dim=2)
    with S.ShardSetWriter(run / "rounds" / "round-000-step150", kind="kept", action_dim=2, sources=sources) as w:
        w.write(table)
    assert w.result.sources == tuple(sources)
    manifest = json.loads((run / "rounds" / "round-000-step150" / S.MANIFEST).read_text())
    assert manifest["sources"] == ["../../df/runner-1/df-0.parquet", "../../df/runner-1/df-1.parquet"]
    shutil.move(run, tmp_path / "moved")
    moved = S.open_shard_set(tmp_path / "moved" / "rounds" / "round-000-step150")
    assert moved.sources == tuple(tmp_path / "moved" / "df" / "runner-1" / f"df-{i}.parquet" for i in range(2))
    assert S.write_shard_set(tmp_path / "plain", [table], kind="kept", action_dim=2).sources == ()


def test_ray_data_reads_a_shard_set(tmp_path):
    pytest.importorskip("ray")
    out = S.write_shard_set(tmp_path / "set", [S.build_table(make_rows(5), kind="kept", action_dim=2)],
                            kind="kept", action_dim=2)
    with local_ray(num_cpus=1) as ray:
        rows = ray.data.read_parquet(str(out.path)).take_all()
    assert len(rows) == 5 and rows[0][C.EPISODE_ID] == "ep0"
    assert len(rows[0][C.RL_ACTION]) == 2


def test_a_version_1_shard_reads_as_version_2(tmp_path):
    """Shards written before schema v2 (no warm-up flag, no bootstrap columns) stay readable: no warm-up rows,
    returns final (bootstrap value 0), no final frames; a column subset upgrades too."""
    table = S.build_table(make_rows(5), kind="df", action_dim=2)
    v1 = table.select(S.FIELDS_V1.names)
    meta = dict(table.schema.metadata)
    meta[S.META_VERSION] = b"1"
    pq.write_table(v1.replace_schema_metadata(meta), tmp_path / "v1.parquet")
    read = S.read_shard(tmp_path / "v1.parquet", kind="df")
    assert read.schema.remove_metadata().equals(S.FIELDS) and read.schema.metadata[S.META_VERSION] == b"2"
    assert not any(read.column(C.WARMUP).to_pylist()) and read.column(C.BOOTSTRAP_VALUE).to_pylist() == [0.0] * 5
    assert read.column(C.FINAL_FRAME_PNG).null_count == 5
    assert read.column(C.RETURN_TO_GO).equals(table.column(C.RETURN_TO_GO))
    sub = S.read_shard(tmp_path / "v1.parquet", columns=[C.RETURN_TO_GO, C.WARMUP])
    assert sub.column_names == [C.RETURN_TO_GO, C.WARMUP] and sub.num_rows == 5
