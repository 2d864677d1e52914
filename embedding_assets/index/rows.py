"""Index stage: one row per live chunk with its vector and provenance, upserted then pruned."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets import faults
from embedding_assets.index import change_log, store, tables
from embedding_assets.models.registry import ModelVersion

# Columns whose difference between chunks and index means the row must be rewritten.
PROVENANCE_KEYS = ("chunk_hash", "doc_checksum", "pipeline_config_hash", "model_fingerprint")
CHUNK_COLUMNS = ["chunk_id", "doc_id", "source_uri", "doc_checksum", "chunk_ordinal", "chunk_hash", "text"]
CHUNK_KEYS = ["chunk_hash", "doc_checksum"]  # what a chunk row says that its index row must match
WRITE_BATCH = 65_536  # cached vectors read, and index rows upserted, at a time (one commit each)
VECTOR_COLUMNS = ["chunk_hash", "vector", "embedded_at", "model_fingerprint"]


@dataclass(frozen=True)
class IndexSync:
    rows_upserted: int
    rows_deleted: int
    rows_total: int
    table_version: int
    docs_written: list[str]


class MissingEmbeddingsError(RuntimeError):
    """The cache lacks vectors for chunks the index needs: the embeddings stage did not finish."""


def sync_index(db: lancedb.DBConnection, version: ModelVersion) -> IndexSync:
    """Write rows for new or changed chunks, then delete rows of chunks that no longer exist.

    The diff compares key columns in Arrow, of only the documents whose chunks changed since the last
    sync when the change logs can tell (`change_log`); text and vectors are read only for the rows written."""
    fingerprint = version.pinned_fingerprint()
    config_hash = version.pipeline_config_hash()
    name = tables.index_table(version.id)
    chunk_table = tables.chunks_table(version.id)
    settings = f"{config_hash}/{fingerprint}"  # what every index row carries from its chunk and model
    scope = change_log.scope(db, chunk_table, name, settings)
    keys = change_log.read_scoped(db, chunk_table, ["chunk_id", "doc_id", *CHUNK_KEYS], scope.docs)
    indexed = change_log.read_scoped(db, name, ["chunk_id", "doc_id", *PROVENANCE_KEYS], scope.docs)
    table = store.open_table(db, name, store.index_schema(version.dimension))
    duplicated = duplicate_keys(indexed, "chunk_id")
    stale = pa.concat_arrays([_stale_chunk_ids(keys, indexed, config_hash, fingerprint), duplicated])
    to_write = store.rows_for_keys(db, chunk_table, "chunk_id", stale, CHUNK_COLUMNS)
    obsolete = store.absent(indexed["chunk_id"], keys["chunk_id"])
    leaving = indexed.filter(
        pc.is_in(indexed["chunk_id"], value_set=pa.concat_arrays([obsolete, duplicated]))
    )
    written = 0
    with change_log.ChangeLog(db, name).write(settings, scope.input_seq) as logged:
        logged.touches(pa.concat_arrays([store.flat(to_write["doc_id"]), store.flat(leaving["doc_id"])]))
        if len(duplicated):
            # Duplicate keys cannot be told apart, so they are removed and rewritten; serving reads a
            # pinned table version, so this window never reaches queries.
            store.delete_keys(table, "chunk_id", duplicated.to_pylist())
        ids = store.flat(indexed["chunk_id"])
        present = ids.filter(pc.invert(pc.is_in(ids, value_set=duplicated)))  # keys the table still holds
        for rows in _index_row_batches(db, version, to_write, fingerprint, config_hash):
            stats = store.append_or_upsert(table, rows, "chunk_id", present)
            written += stats.inserted + stats.updated
        faults.failpoint(faults.INDEX_UPSERTED)
        deleted = store.delete_keys(table, "chunk_id", obsolete.to_pylist())
    faults.failpoint(faults.INDEX_DELETED)
    return IndexSync(
        rows_upserted=written,
        rows_deleted=deleted,
        rows_total=table.count_rows(),
        table_version=table.version,
        docs_written=sorted(pc.unique(to_write["doc_id"]).to_pylist()),
    )


def duplicate_keys(rows: pa.Table, key: str) -> pa.Array:
    """Values of `key` that more than one row of `rows` holds: equal neighbours once sorted."""
    values = store.flat(rows[key]).cast(pa.string())
    if len(values) < 2:
        return pa.array([], pa.string())
    ordered = values.take(pc.sort_indices(values))
    repeated = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))
    return pc.unique(ordered.slice(1).filter(pc.fill_null(repeated, False)))


def _stale_chunk_ids(keys: pa.Table, indexed: pa.Table, config_hash: str, fingerprint: str) -> pa.Array:
    """chunk_id of every chunk (`keys`: chunk_id, chunk_hash, doc_checksum) that has no index row, or one
    whose provenance (chunk hash, document checksum, config hash, fingerprint) differs: the chunks' key
    triples not among those of the index rows written with this config and fingerprint."""
    if keys.num_rows == 0:
        return pa.array([], pa.string())
    current = indexed.filter(
        pc.and_(
            pc.equal(indexed["pipeline_config_hash"], config_hash),
            pc.equal(indexed["model_fingerprint"], fingerprint),
        )
    )
    wanted, held = (store.joined_key(t, "chunk_id", *CHUNK_KEYS) for t in (keys, current))
    unmatched = pc.invert(pc.is_in(wanted, value_set=held, skip_nulls=True))
    return pc.unique(store.flat(keys["chunk_id"]).filter(unmatched))


def _index_row_batches(
    db: lancedb.DBConnection, version: ModelVersion, chunks: pa.Table, fingerprint: str, config_hash: str
) -> Iterator[pa.Table]:
    """Index rows for `chunks` (CHUNK_COLUMNS) with their cached vectors, a batch at a time: for a few
    chunks their vectors are looked up; for many, the cache is read once, batch by batch. Every vector
    is checked to exist before the first row is written."""
    cache = tables.cache_table(version.encoder_key())
    if chunks.num_rows == 0:
        return
    if chunks.num_rows <= store.LOOKUP_LIMIT:  # a refresh: look the few vectors up, scan nothing
        vectors = store.rows_for_keys(db, cache, "chunk_hash", chunks["chunk_hash"], VECTOR_COLUMNS)
        _refuse_missing(version, chunks, vectors["chunk_hash"])
        yield _index_rows(version, chunks, vectors, fingerprint, config_hash)
        return
    _refuse_missing(version, chunks, store.read_columns(db, cache, ["chunk_hash"])["chunk_hash"])
    scan = db.open_table(cache).search().select(VECTOR_COLUMNS).limit(None).to_batches(WRITE_BATCH)
    for vectors in store.regrouped(scan, WRITE_BATCH):
        matching = chunks.filter(pc.is_in(chunks["chunk_hash"], value_set=store.flat(vectors["chunk_hash"])))
        if matching.num_rows:
            yield _index_rows(version, matching, vectors, fingerprint, config_hash)


def _refuse_missing(version: ModelVersion, chunks: pa.Table, cached: pa.ChunkedArray) -> None:
    """Raise before anything is written if a chunk's hash has no vector among `cached`."""
    missing = len(store.absent(chunks["chunk_hash"], cached))
    if missing:
        raise MissingEmbeddingsError(
            f"{missing} chunk hashes of {version.id!r} have no cached vector; materialize embeddings first"
        )


def _index_rows(
    version: ModelVersion, chunks: pa.Table, vectors: pa.Table, fingerprint: str, config_hash: str
) -> pa.Table:
    """One index row per chunk of `chunks`, its vector taken from `vectors` (VECTOR_COLUMNS)."""
    position = pc.index_in(chunks["chunk_hash"], value_set=store.flat(vectors["chunk_hash"]))
    vectors = vectors.take(position)
    wrong = pc.sum(pc.not_equal(vectors["model_fingerprint"], fingerprint)).as_py() or 0
    if wrong:
        raise ValueError(f"{wrong} cached vectors of {version.id!r} carry another model fingerprint")
    n = chunks.num_rows
    now = datetime.now(UTC)
    return pa.table(
        {
            **{c: chunks[c] for c in CHUNK_COLUMNS},
            "model_version": pa.array([version.id] * n, pa.string()),
            "model_fingerprint": vectors["model_fingerprint"],
            "pipeline_config_hash": pa.array([config_hash] * n, pa.string()),
            "embedded_at": vectors["embedded_at"],
            "indexed_at": pa.array([now] * n, store.TIMESTAMP),
            "vector": vectors["vector"],
        },
        schema=store.index_schema(version.dimension),
    )
