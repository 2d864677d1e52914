"""LanceDB tables: their schemas, and the few write patterns every stage uses."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lancedb
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col

from embedding_assets import locations

LOCKS_FOLDER = ".locks"  # beside the tables: writer_lock's lock files

TIMESTAMP = pa.timestamp("us", tz="UTC")
IN_LIST_BATCH = 500
KEY_SEPARATOR = "\x1f"  # between the parts of a joined key: a unit separator, in no id or hash
LOOKUP_LIMIT = 20_000  # up to this many keys are looked up with IN lists; more, and one streamed scan
SCAN_BATCH = 65_536

DOCUMENTS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("source_uri", pa.string()),
        ("doc_checksum", pa.string()),
        ("size", pa.int64()),
        ("updated_at", TIMESTAMP),
        ("mtime_ns", pa.int64()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("source_uri", pa.string()), ("reason", pa.string()), ("seen_at", TIMESTAMP)]
)

CHUNKS_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("source_uri", pa.string()),
        ("doc_checksum", pa.string()),
        ("chunk_ordinal", pa.int32()),
        ("chunk_hash", pa.string()),
        ("text", pa.string()),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("token_count", pa.int32()),
        ("pipeline_config_hash", pa.string()),
    ]
)


def vector_type(dimension: int) -> pa.DataType:
    return pa.list_(pa.float32(), dimension)


def cache_schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            ("chunk_hash", pa.string()),
            ("model_fingerprint", pa.string()),
            ("embedded_at", TIMESTAMP),
            ("vector", vector_type(dimension)),
        ]
    )


def index_schema(dimension: int) -> pa.Schema:
    """One row per live chunk: the vector and every provenance column."""
    return pa.schema(
        [
            ("doc_id", pa.string()),
            ("source_uri", pa.string()),
            ("doc_checksum", pa.string()),
            ("chunk_id", pa.string()),
            ("chunk_ordinal", pa.int32()),
            ("chunk_hash", pa.string()),
            ("text", pa.string()),
            ("model_version", pa.string()),
            ("model_fingerprint", pa.string()),
            ("pipeline_config_hash", pa.string()),
            ("embedded_at", TIMESTAMP),
            ("indexed_at", TIMESTAMP),
            ("vector", vector_type(dimension)),
        ]
    )


@dataclass(frozen=True)
class WriteStats:
    """Rows a merge wrote, and the Lance table version it produced."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    table_version: int | None = None


def connect(uri: str | Path, storage_options: dict[str, str] | None = None) -> lancedb.DBConnection:
    """The database at `uri` (a folder or an object-store URI), reached with `storage_options`. A local
    folder is made private (`locations.private_folder`)."""
    if "://" not in str(uri) or str(uri).startswith("file://"):
        locations.private_folder(Path(urlparse(str(uri)).path if "://" in str(uri) else uri))
    return lancedb.connect(str(uri), storage_options=storage_options or None)


def writer_lock(
    db: lancedb.DBConnection, name: str, waiting: Callable[[], None] | None = None
) -> AbstractContextManager[None]:
    """One writer at a time of `name` (a table, or a model version's tables) in processes on this machine.

    LanceDB's commit checks do not stop two writers that both find a key absent from inserting it twice
    (lance-format/lance#8949), so a read-then-write step holds this. The lock file sits in a local
    database's `.locks` folder; for an object store, in this machine's temporary folder. Across
    machines, the instance's concurrency limits (one run per version, one corpus sync) do the same."""
    uri = str(db.uri)
    if "://" in uri and not uri.startswith("file://"):
        folder = Path(tempfile.gettempdir()) / LOCKS_FOLDER / hashlib.sha256(uri.encode()).hexdigest()[:16]
    else:
        folder = Path(urlparse(uri).path if "://" in uri else uri) / LOCKS_FOLDER
    return locations.exclusive(folder / f"{name}.lock", waiting)


def is_s3(uri: str | Path) -> bool:
    """Whether `uri` names an S3 (or S3-compatible) location: s3://, s3a://, s3+ddb://."""
    return urlparse(str(uri)).scheme.startswith("s3")


def table_names(db: lancedb.DBConnection) -> list[str]:
    names: list[str] = []
    page = db.list_tables()
    while True:
        names.extend(page.tables)
        if not page.page_token:
            return names
        page = db.list_tables(page_token=page.page_token)


def open_table(db: lancedb.DBConnection, name: str, schema: pa.Schema) -> lancedb.table.Table:
    """Open `name`, creating it empty with `schema` if it does not exist yet; a table written by an older
    release gains the columns it lacks, as nulls (one schema-evolution commit, no rewrite)."""
    if name not in table_names(db):
        return db.create_table(name, schema=schema, exist_ok=True)
    table = db.open_table(name)
    missing = [f for f in schema if f.name not in table.schema.names]
    if missing:
        table.add_columns(pa.schema(missing))
    return table


def read_columns(
    db: lancedb.DBConnection, name: str, columns: list[str], where: str | None = None
) -> pa.Table:
    """Selected columns of a table, or an empty table if it does not exist."""
    if name not in table_names(db):
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    query = db.open_table(name).search().select(columns)
    if where:
        query = query.where(where)
    return scanned(query)


def scanned(query: lancedb.query.LanceQueryBuilder) -> pa.Table:
    """All rows of a query, read SCAN_BATCH rows per batch. `to_arrow()` reads 1,024 rows per batch: at
    248,971 rows of four key columns that took 0.24 s and left 246 chunks, which every compute kernel then
    walks one by one (joining two key columns 0.16-0.45 s); this took 0.075 s and left 9."""
    return query.to_batches(SCAN_BATCH).read_all()


def absent(values: pa.Array | pa.ChunkedArray, present: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The distinct `values` that are not among `present` (an anti-join of two key columns). The
    membership test comes first, so only what is absent (usually few) is made distinct."""
    values = flat(values)
    return pc.unique(values.filter(pc.invert(pc.is_in(values, value_set=flat(present)))))


def joined_key(rows: pa.Table | pa.RecordBatch, *columns: str) -> pa.Array:
    """The `columns` of each row as one string, KEY_SEPARATOR apart (null where one is null): a composite
    key for `is_in`, which compares one column. Each column is made contiguous first: the kernel on
    columns of many chunks costs per chunk (246 chunks of 248,971 keys: 0.16 s against 0.02 s)."""
    return pc.binary_join_element_wise(*(flat(rows[c]) for c in columns), KEY_SEPARATOR)


def flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (a value set for `is_in` must be one)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def rows_for_keys(
    db: lancedb.DBConnection, name: str, key: str, values: pa.Array | pa.ChunkedArray, columns: list[str]
) -> pa.Table:
    """The rows of table `name` whose `key` is one of `values`, `columns` only: IN-list lookups for a
    few keys, one streamed scan (filtered batch by batch) for many, so a small change reads little and a
    large one reads the table once."""
    schema = _schema_of(db, name, columns)
    parts = list(batches_for_keys(db, name, key, values, columns))
    return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()


def batches_for_keys(
    db: lancedb.DBConnection,
    name: str,
    key: str,
    values: pa.Array | pa.ChunkedArray,
    columns: list[str],
    batch_rows: int | None = None,
) -> Iterator[pa.Table]:
    """`rows_for_keys` a part at a time (at most `batch_rows` rows each, default SCAN_BATCH), so no
    caller holds them all: rows of large values (document texts) want fewer per part."""
    if name in table_names(db):
        yield from table_batches_for_keys(db.open_table(name), key, values, columns, batch_rows)


def table_batches_for_keys(
    table: lancedb.table.Table,
    key: str,
    values: pa.Array | pa.ChunkedArray,
    columns: list[str],
    batch_rows: int | None = None,
) -> Iterator[pa.Table]:
    """`batches_for_keys` on a table already open (at the version it has checked out)."""
    batch_rows = batch_rows or SCAN_BATCH
    wanted = pc.unique(values)
    if len(wanted) == 0:
        return
    if len(wanted) <= LOOKUP_LIMIT and (len(wanted) <= IN_LIST_BATCH or scalar_indexed(table, key)):
        keys = wanted.to_pylist()
        per_lookup = min(IN_LIST_BATCH, batch_rows)
        for start in range(0, len(keys), per_lookup):
            wanted_here = col(key).isin(keys[start : start + per_lookup])  # typed literals, never SQL text
            yield table.search().where(wanted_here).select(columns).limit(None).to_arrow()
        return
    if len(wanted) <= LOOKUP_LIMIT:  # no index to look keys up in: one scan of the key, then a take
        found = scanned(table.search().select([key]).with_row_id(True).limit(None))
        row_ids = found.filter(pc.is_in(found[key], value_set=flat(wanted)))["_rowid"].to_pylist()
        for start in range(0, len(row_ids), batch_rows):
            yield table.take_row_ids(row_ids[start : start + batch_rows]).select(columns).to_arrow()
        return
    value_set = flat(wanted)
    read = columns if key in columns else [*columns, key]  # the key is read to filter on, even if not asked
    for batch in table.search().select(read).limit(None).to_batches(batch_rows):
        found = pa.Table.from_batches([batch]).filter(pc.is_in(batch[key], value_set=value_set))
        if found.num_rows:
            yield found.select(columns)


def scalar_indexed(table: lancedb.table.Table, column: str) -> bool:
    """Whether `column` has a scalar index (a BTREE) that an IN list can look keys up in."""
    return any(list(index.columns) == [column] for index in table.list_indices())


def regrouped(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """`batches` gathered into tables of at least `rows` rows (the last may hold fewer): a scan yields a
    batch per data file at most, and a table written in small commits has many small files."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        if held >= rows:
            yield pa.Table.from_batches(pending)
            pending, held = [], 0
    if held:
        yield pa.Table.from_batches(pending)


def _schema_of(db: lancedb.DBConnection, name: str, columns: list[str]) -> pa.Schema:
    if name not in table_names(db):
        return pa.schema([(c, pa.string()) for c in columns])
    table = db.open_table(name)
    return pa.schema([table.schema.field(c) for c in columns])


def upsert(
    table: lancedb.table.Table, rows: pa.Table, key: str, *, changed_when: str | None = None
) -> WriteStats:
    """Insert new keys and update existing ones (only where `changed_when` holds) in one commit."""
    if rows.num_rows == 0:
        return WriteStats(table_version=table.version)
    builder = (
        table.merge_insert(key).when_matched_update_all(where=changed_when).when_not_matched_insert_all()
    )
    result = builder.execute(rows.cast(table.schema))
    return WriteStats(result.num_inserted_rows, result.num_updated_rows, 0, table.version)


def append_or_upsert(
    table: lancedb.table.Table,
    rows: pa.Table,
    key: str,
    existing: pa.Array,
    *,
    changed_when: str | None = None,
) -> WriteStats:
    """Write `rows`: those whose `key` is not among `existing` (the table's keys, read by the caller) are
    appended, which costs the rows alone; the rest are merged (`upsert`), which joins against the table.
    A first build of a large table so appends instead of merging against all it wrote before."""
    if rows.num_rows == 0:
        return WriteStats(table_version=table.version)
    new = pc.invert(pc.is_in(rows[key], value_set=flat(existing)))
    fresh, known = rows.filter(new), rows.filter(pc.invert(new))
    if fresh.num_rows:
        table.add(fresh.cast(table.schema))
    merged = upsert(table, known, key, changed_when=changed_when)
    return WriteStats(fresh.num_rows + merged.inserted, merged.updated, 0, table.version)


def delete_keys(table: lancedb.table.Table, key: str, values: Iterable[str]) -> int:
    """Delete rows whose `key` is in `values`; call only after the replacements were written."""
    values = sorted(set(values))
    before = table.count_rows()
    for start in range(0, len(values), IN_LIST_BATCH):
        batch = values[start : start + IN_LIST_BATCH]
        table.delete(col(key).isin(batch).to_sql())  # SQL rendered by LanceDB from typed literals
    return before - table.count_rows()


class VersionMemo:
    """Values read from one version of a table, kept in this process while that version's transaction
    (one small file) has the same uuid: each commit draws a new one, so a table dropped and made again
    under the same name (its version numbers restart) misses and is read afresh."""

    def __init__(self, kept: int = 4096):
        self._kept = kept
        self._values: dict[tuple[str, int], tuple[str, Any]] = {}  # (dataset uri, version) -> (uuid, value)

    def get(self, table: lancedb.table.Table, version: int, read: Callable[[], Any]) -> Any:
        """The value `read()` gives for `version` of `table`, read once while that version stands."""
        dataset = table.to_lance()
        uuid = _transaction_uuid(dataset, version)
        key = (dataset.uri, version)
        kept = self._values.get(key)
        if uuid is not None and kept is not None and kept[0] == uuid:
            return kept[1]
        value = read()
        if uuid is not None and value is not None:
            if len(self._values) >= self._kept:
                self._values.clear()
            self._values[key] = (uuid, value)
        return value


def _transaction_uuid(dataset: Any, version: int) -> str | None:
    """The uuid of the transaction that committed `version` of a Lance dataset, or None where none can
    be read (its file cleaned up, or written by a format that kept none)."""
    try:
        return dataset.read_transaction(version).uuid
    except Exception:
        return None


_COMMIT_TIMES = VersionMemo()


def version_committed_at(table: lancedb.table.Table, version: int) -> datetime | None:
    """When `version` of the table was committed: with the number, it identifies a table state even if
    the table was dropped and recreated (version numbers restart, timestamps do not). Only the list of
    every version's manifest gives the time, and it costs more with each version kept (a refresh at 248k
    rows asked 45 times: 0.72 s), so each is listed once per process (`VersionMemo`)."""
    return _COMMIT_TIMES.get(
        table,
        version,
        lambda: next((v["timestamp"] for v in table.list_versions() if v["version"] == version), None),
    )


def table_state(db: lancedb.DBConnection, name: str) -> str:
    """A table's state as `version@commit time` ("" if there is no such table): with the time, it names
    one state even if the table is dropped and recreated (version numbers restart)."""
    if name not in table_names(db):
        return ""
    return table_state_of(db.open_table(name))


def table_state_of(table: lancedb.table.Table) -> str:
    """`table_state` of a table already open, at the version it has checked out."""
    return version_state(table, table.version)


def version_state(table: lancedb.table.Table, version: int) -> str:
    """`table_state` naming `version` of the table (its commit time None once cleaned up)."""
    return f"{version}@{version_committed_at(table, version)}"
