"""Shards of fine-tune samples: schema v2, an atomic writer, a validating reader.

A shard is one Parquet file written through pyarrow (``ray.data.read_parquet`` and ``pandas.read_parquet``
read it as it is; ray.data has no reader for Arrow IPC files, hence Parquet). One row per env step:

===================  ======================  ========================================================
column               arrow type              meaning
===================  ======================  ========================================================
``episode_id``       string                  episode the step belongs to
``step_index``       int32                   index of the step within its episode
``frame_png``        binary                  the single frame the VLM sees, PNG (mode ``L`` or ``RGB``)
``rl_action``        list<float32>           the RL agent's action a_r in [-1, 1], ``action_dim`` long
``return_to_go``     float32                 discounted return-to-go g_i (bootstrapped, see below)
``reward``           float32                 immediate reward r_i
``q_value``          float32                 Q(o_i, a_r_i); NaN when not provided (see select.critic)
``entropy``          float32                 policy entropy estimate at collection time, nats
``sample_weight``    float32                 RALW weight w_b; NaN in raw D_f shards (not yet weighted)
``warmup``           bool                    a uniform-random warm-up step: never selected for fine-tuning
``bootstrap_value``  float32                 V(o_T) included in ``return_to_go``; 0 = terminal; NaN =
                                             truncated episode not bootstrapped yet
``final_frame_png``  binary, nullable        newest frame of o_T on a truncated episode's last row
===================  ======================  ========================================================

The schema's metadata carries ``covr.schema_version`` (``"2"``), ``covr.kind`` (``df`` = raw D_f rows,
``kept`` = rows EDDF kept, weighted by RALW) and ``covr.action_dim``. Data pages carry CRC checksums and
the reader verifies them, so a flipped byte is caught as well as a truncated file. Version-1 shards (no
``warmup`` / ``bootstrap_value`` / ``final_frame_png``) still read: they come back as v2 tables with no
warm-up rows and returns taken as final (``bootstrap_value`` 0).

A *shard set* is a directory of shards plus ``_manifest.json`` (file names, row counts, sha256 and, for a
kept set, the D_f shards it was built from), written with :func:`covr_ray.io.atomic_directory`: it exists
completely or not at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from covr_ray import columns as C
from covr_ray.errors import FinetuneDataError, ShardError
from covr_ray.io import atomic_directory, atomic_write_bytes, atomic_write_text
from covr_ray.log import get_logger

log = get_logger(__name__)

SCHEMA_VERSION = "2"
#: older versions :func:`read_shard` upgrades on read.
READABLE_OLD_VERSIONS = ("1",)
META_VERSION = b"covr.schema_version"
META_KIND = b"covr.kind"
META_ACTION_DIM = b"covr.action_dim"
SHARD_SUFFIX = ".parquet"
MANIFEST = "_manifest.json"  # "_" prefix: pyarrow/pandas/ray.data dataset readers skip it

ShardKind = Literal["df", "kept"]

#: Schema v1 without metadata (fields and types in file order); read and upgraded, never written.
FIELDS_V1 = pa.schema([
    pa.field(C.EPISODE_ID, pa.string(), nullable=False),
    pa.field(C.STEP_INDEX, pa.int32(), nullable=False),
    pa.field(C.FRAME_PNG, pa.binary(), nullable=False),
    # "element": the list item name Parquet stores (pyarrow's default "item" is renamed on write).
    pa.field(C.RL_ACTION, pa.list_(pa.field("element", pa.float32())), nullable=False),
    pa.field(C.RETURN_TO_GO, pa.float32(), nullable=False),
    pa.field(C.REWARD, pa.float32(), nullable=False),
    pa.field(C.Q_VALUE, pa.float32(), nullable=False),
    pa.field(C.ENTROPY, pa.float32(), nullable=False),
    pa.field(C.SAMPLE_WEIGHT, pa.float32(), nullable=False),
])

#: Schema v2 without metadata: v1 plus the warm-up flag and the truncation bootstrap.
FIELDS = pa.schema(list(FIELDS_V1) + [
    pa.field(C.WARMUP, pa.bool_(), nullable=False),
    pa.field(C.BOOTSTRAP_VALUE, pa.float32(), nullable=False),
    pa.field(C.FINAL_FRAME_PNG, pa.binary(), nullable=True),
])

#: Columns holding one float per row (score and weight columns).
FLOAT_COLUMNS = (C.RETURN_TO_GO, C.REWARD, C.Q_VALUE, C.ENTROPY, C.SAMPLE_WEIGHT, C.BOOTSTRAP_VALUE)
#: Columns :func:`build_table` fills with a default when the caller leaves them out.
OPTIONAL_COLUMNS = (C.WARMUP, C.BOOTSTRAP_VALUE, C.FINAL_FRAME_PNG)


def shard_schema(kind: ShardKind, action_dim: int) -> pa.Schema:
    """Schema v2 with its metadata for a shard of ``kind`` holding ``action_dim``-long actions."""
    if kind not in ("df", "kept"):
        raise FinetuneDataError(f"shard kind {kind!r} is not one of 'df', 'kept'")
    if action_dim < 1:
        raise FinetuneDataError(f"action_dim {action_dim!r} must be an integer >= 1")
    return FIELDS.with_metadata({META_VERSION: SCHEMA_VERSION.encode(), META_KIND: kind.encode(),
                                 META_ACTION_DIM: str(int(action_dim)).encode()})


def build_table(rows: dict[str, Sequence], kind: ShardKind, action_dim: int) -> pa.Table:
    """Arrow table of schema v2 from column lists.

    Args:
        rows: every column of :data:`FIELDS`; ``rl_action`` as (N, action_dim) float array or list of
            lists, the float columns as (N,) arrays, ``frame_png`` as a list of PNG bytes. The columns in
            :data:`OPTIONAL_COLUMNS` may be left out: ``warmup`` then is all False, ``bootstrap_value`` all
            0 (returns are final), ``final_frame_png`` all null.
        kind: ``df`` or ``kept``.
        action_dim: length of every ``rl_action``.
    """
    missing = [f.name for f in FIELDS if f.name not in rows and f.name not in OPTIONAL_COLUMNS]
    if missing:
        raise FinetuneDataError(f"rows lack columns {missing}; schema v{SCHEMA_VERSION} needs {FIELDS.names}")
    n = len(rows[C.EPISODE_ID])
    actions = np.asarray(rows[C.RL_ACTION], dtype=np.float32).reshape(n, -1) if n else \
        np.zeros((0, action_dim), np.float32)
    if actions.shape != (n, action_dim):
        raise FinetuneDataError(f"rl_action has shape {actions.shape}; expected ({n}, {action_dim})")
    arrays = {
        C.EPISODE_ID: pa.array(list(rows[C.EPISODE_ID]), pa.string()),
        C.STEP_INDEX: pa.array(np.asarray(rows[C.STEP_INDEX], dtype=np.int32)),
        C.FRAME_PNG: pa.array(list(rows[C.FRAME_PNG]), pa.binary()),
        C.RL_ACTION: pa.ListArray.from_arrays(
            pa.array(np.arange(0, (n + 1) * action_dim, action_dim, dtype=np.int32)),
            pa.array(actions.reshape(-1)), type=FIELDS.field(C.RL_ACTION).type),
        C.WARMUP: pa.array(np.asarray(rows.get(C.WARMUP, np.zeros(n, bool)), dtype=bool).reshape(-1)),
        C.FINAL_FRAME_PNG: pa.array(list(rows.get(C.FINAL_FRAME_PNG, [None] * n)), pa.binary()),
    }
    for name in FLOAT_COLUMNS:
        values = rows.get(name, np.zeros(n)) if name in OPTIONAL_COLUMNS else rows[name]
        arrays[name] = pa.array(np.asarray(values, dtype=np.float32).reshape(-1))
    for name, arr in arrays.items():
        if len(arr) != n:
            raise FinetuneDataError(f"column {name!r} has {len(arr)} rows; {C.EPISODE_ID!r} has {n}")
    schema = shard_schema(kind, action_dim)
    return pa.Table.from_arrays([arrays[f.name] for f in FIELDS], schema=schema)


def upgrade_v1(table: pa.Table) -> pa.Table:
    """A schema-v1 table as v2: no warm-up rows, returns final (``bootstrap_value`` 0), no final frames.
    Works on a column subset too (only the v2 columns are added)."""
    n = table.num_rows
    meta = dict(table.schema.metadata or {})
    meta[META_VERSION] = SCHEMA_VERSION.encode()
    extra = {C.WARMUP: pa.array(np.zeros(n, bool)), C.BOOTSTRAP_VALUE: pa.array(np.zeros(n, np.float32)),
             C.FINAL_FRAME_PNG: pa.nulls(n, pa.binary())}
    for name, arr in extra.items():
        table = table.append_column(FIELDS.field(name), arr)
    return table.replace_schema_metadata(meta)


def write_shard(path: Path, table: pa.Table) -> dict:
    """Write ``table`` (schema v2) to ``path`` atomically: the file is complete or absent.

    Returns ``{"file", "rows", "sha256", "bytes"}`` for a manifest.
    """
    check_schema(table.schema, str(path))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_page_checksum=True)
    data = buf.getvalue()
    atomic_write_bytes(Path(path), data)
    return {"file": Path(path).name, "rows": table.num_rows, "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data)}


def check_schema(schema: pa.Schema, where: str, allow_old: bool = False) -> tuple[ShardKind, int]:
    """Raise :class:`ShardError` unless ``schema`` is schema v2 (or, with ``allow_old``, an older version
    :func:`read_shard` upgrades); return ``(kind, action_dim)``."""
    meta = schema.metadata or {}
    version = meta.get(META_VERSION, b"").decode(errors="replace")
    readable = (SCHEMA_VERSION,) + (READABLE_OLD_VERSIONS if allow_old else ())
    if version not in readable:
        raise ShardError(f"shard {where}: schema version {version or 'missing'!r}; this reader reads "
                         f"version {' or '.join(map(repr, readable))} (was it written by another COVR-Ray release?)")
    fields = FIELDS if version == SCHEMA_VERSION else FIELDS_V1
    if not schema.remove_metadata().equals(fields):
        raise ShardError(f"shard {where}: columns {schema.remove_metadata()} differ from schema v{version} "
                         f"{fields}")
    kind = meta.get(META_KIND, b"").decode(errors="replace")
    if kind not in ("df", "kept"):
        raise ShardError(f"shard {where}: kind {kind!r}; allowed: 'df', 'kept'")
    try:
        action_dim = int(meta.get(META_ACTION_DIM, b""))
    except ValueError as exc:
        raise ShardError(f"shard {where}: action_dim metadata {meta.get(META_ACTION_DIM)!r} is not an "
                         "integer") from exc
    return kind, action_dim  # type: ignore[return-value]


def read_shard(path: Path, columns: Optional[list[str]] = None,
               kind: Optional[ShardKind] = None) -> pa.Table:
    """Read one shard, checking schema version, columns, page checksums and action lengths.

    Args:
        path: a ``.parquet`` shard.
        columns: read only these columns (default: all).
        kind: if given, refuse a shard of the other kind.

    Raises:
        ShardError: missing, truncated, corrupted, not Parquet, wrong schema or wrong kind.
    """
    path = Path(path)
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        shard_kind, action_dim = check_schema(pf.schema_arrow, str(path), allow_old=True)
        old = pf.schema_arrow.metadata[META_VERSION].decode() != SCHEMA_VERSION
        wanted = None if columns is None else [c for c in columns if not (old and c in OPTIONAL_COLUMNS)]
        table = pf.read(columns=wanted)
    except ShardError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"shard {path}: unreadable ({type(exc).__name__}: {exc}); it is truncated, "
                         "corrupted or not a Parquet file") from exc
    if old:
        table = upgrade_v1(table)
        if columns is not None:
            table = table.select(columns)
    if kind is not None and shard_kind != kind:
        raise ShardError(f"shard {path}: kind {shard_kind!r}; expected {kind!r}")
    if C.RL_ACTION in table.column_names and table.num_rows:
        lengths = pc.list_value_length(table.column(C.RL_ACTION)).to_numpy(zero_copy_only=False)
        if not np.all(lengths == action_dim):
            raise ShardError(f"shard {path}: rl_action lengths {sorted(set(lengths.tolist()))} differ from "
                             f"the declared action_dim {action_dim}")
    return table


def read_shards(paths: Iterable[Path], columns: Optional[list[str]] = None,
                kind: Optional[ShardKind] = None) -> tuple[Optional[pa.Table], list[tuple[str, str]]]:
    """Read and concatenate shards, skipping (with a warning) each one :func:`read_shard` refuses.

    Returns ``(table or None when nothing was readable, [(path, reason), ...] of skipped shards)``.
    """
    tables, skipped = [], []
    for path in paths:
        try:
            tables.append(read_shard(Path(path), columns=columns, kind=kind))
        except ShardError as exc:
            log.warning("skipping shard: %s", exc)
            skipped.append((str(path), str(exc)))
    if not tables:
        return None, skipped
    dims = {t.schema.metadata.get(META_ACTION_DIM) for t in tables}
    if len(dims) > 1:
        raise ShardError(f"shards disagree on action_dim {sorted(d.decode() for d in dims)}; a round's "
                         "shards must come from one env")
    return pa.concat_tables(tables), skipped


def shard_action_dim(table: pa.Table) -> int:
    """``action_dim`` recorded in a table read by :func:`read_shard`."""
    return int(table.schema.metadata[META_ACTION_DIM])


# --- shard sets ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardSet:
    """A complete directory of shards with its manifest (written by :func:`write_shard_set`)."""

    path: Path
    """The set's directory."""
    files: tuple[str, ...]
    """Shard file names, in order."""
    rows: int
    """Rows over all shards."""
    kind: str
    """``df`` or ``kept``."""
    action_dim: int
    """Length of every action."""
    sources: tuple[Path, ...] = ()
    """The shards the set was built from, as its writer recorded them (a kept set: every D_f shard its round
    read, which that round consumes when it completes); empty when none were recorded."""

    def shard_paths(self) -> list[Path]:
        return [self.path / f for f in self.files]


class ShardSetWriter:
    """Writes shards into a temp directory that becomes ``path`` only when :meth:`close` succeeds.

    Use as a context manager; on error nothing appears at ``path``::

        with ShardSetWriter(out, kind="kept", action_dim=2) as w:
            w.write(table)
        shard_set = w.result
    """

    def __init__(self, path: Path, kind: ShardKind, action_dim: int, sources: Sequence[Path] = ()) -> None:
        self.path = Path(path)
        # relative to the set's own directory, so a run directory moved as a whole still resolves them
        self.sources = [os.path.relpath(Path(p).resolve(), self.path.resolve()) for p in sources]
        self.kind = kind
        self.action_dim = int(action_dim)
        shard_schema(kind, action_dim)  # validates kind and action_dim
        self._entries: list[dict] = []
        self._ctx = atomic_directory(self.path)
        self._tmp: Optional[Path] = None
        self.result: Optional[ShardSet] = None

    def __enter__(self) -> "ShardSetWriter":
        self._tmp = self._ctx.__enter__()
        return self

    def write(self, table: pa.Table) -> None:
        """Add one shard (a schema-v2 table of this set's kind and action_dim); empty tables are skipped."""
        if self._tmp is None:
            raise ShardError(f"shard set {self.path}: write() outside its `with` block")
        kind, dim = check_schema(table.schema, f"<table for {self.path}>")
        if (kind, dim) != (self.kind, self.action_dim):
            raise ShardError(f"shard set {self.path}: table of kind {kind!r}, action_dim {dim}; the set "
                             f"holds kind {self.kind!r}, action_dim {self.action_dim}")
        if table.num_rows == 0:
            return
        name = f"part-{len(self._entries):05d}{SHARD_SUFFIX}"
        self._entries.append(write_shard(self._tmp / name, table))

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            manifest = {"schema_version": SCHEMA_VERSION, "kind": self.kind, "action_dim": self.action_dim,
                        "rows": sum(e["rows"] for e in self._entries), "shards": self._entries}
            if self.sources:
                manifest["sources"] = self.sources
            try:
                atomic_write_text(self._tmp / MANIFEST, json.dumps(manifest, indent=1))
            except BaseException as err:  # remove the temp directory, then re-raise
                self._ctx.__exit__(type(err), err, err.__traceback__)
                raise
        done = self._ctx.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.result = open_shard_set(self.path)
        return bool(done)


def write_shard_set(path: Path, tables: Iterable[pa.Table], kind: ShardKind, action_dim: int) -> ShardSet:
    """Write ``tables`` as one shard set at ``path`` (which must not exist) atomically."""
    with ShardSetWriter(path, kind, action_dim) as writer:
        for table in tables:
            writer.write(table)
    assert writer.result is not None
    return writer.result


def open_shard_set(path: Path, verify_checksums: bool = False) -> ShardSet:
    """Open a shard set directory via its manifest.

    Args:
        verify_checksums: also hash every shard against the manifest's sha256 (reads every byte).

    Raises:
        ShardError: no or malformed manifest, wrong schema version, a listed shard missing or altered.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ShardError(f"shard set {path}: no readable {MANIFEST} ({exc}); the set is incomplete") from exc
    readable = (SCHEMA_VERSION,) + READABLE_OLD_VERSIONS
    if not isinstance(manifest, dict) or manifest.get("schema_version") not in readable:
        raise ShardError(f"shard set {path}: manifest schema version "
                         f"{manifest.get('schema_version') if isinstance(manifest, dict) else manifest!r}; "
                         f"this reader reads {' or '.join(map(repr, readable))}")
    try:
        entries = list(manifest["shards"])
        files = tuple(str(e["file"]) for e in entries)
        kind, action_dim, rows = str(manifest["kind"]), int(manifest["action_dim"]), int(manifest["rows"])
        sources = tuple(Path(os.path.normpath(path / str(s))) for s in manifest.get("sources", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"shard set {path}: malformed manifest ({exc!r})") from exc
    for entry in entries:
        file = path / entry["file"]
        if not file.is_file():
            raise ShardError(f"shard set {path}: listed shard {entry['file']!r} is missing")
        if file.stat().st_size != entry.get("bytes", file.stat().st_size):
            raise ShardError(f"shard set {path}: shard {entry['file']!r} has {file.stat().st_size} bytes; "
                             f"the manifest says {entry['bytes']} (truncated or replaced)")
        if verify_checksums and hashlib.sha256(file.read_bytes()).hexdigest() != entry.get("sha256"):
            raise ShardError(f"shard set {path}: shard {entry['file']!r} fails its sha256 check")
    return ShardSet(path=path, files=files, rows=rows, kind=kind, action_dim=action_dim, sources=sources)
