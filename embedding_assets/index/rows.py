"""Index stage: one row per live chunk with its vector and provenance, upserted then pruned."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.index import store, tables
from embedding_assets.models.registry import ModelVersion

# Columns whose difference between chunks and index means the row must be rewritten.
PROVENANCE_KEYS = ("chunk_hash", "doc_checksum", "pipeline_config_hash", "model_fingerprint")
CHUNK_COLUMNS = ["chunk_id", "doc_id", "source_uri", "doc_checksum", "chunk_ordinal", "chunk_hash", "text"]


@dataclass(frozen=True)
class IndexSync:
    rows_upserted: int
    rows_deleted: int
    rows_total: int
    documents: int
    table_version: int
    docs_written: list[str]


class MissingEmbeddingsError(RuntimeError):
    """The cache lacks vectors for chunks the index needs: the embeddings stage did not finish."""


def sync_index(db: lancedb.DBConnection, version: ModelVersion) -> IndexSync:
    """Write rows for new or changed chunks, then delete rows of chunks that no longer exist."""
    fingerprint = version.pinned_fingerprint()
    config_hash = version.pipeline_config_hash()
    name = tables.index_table(version.id)
    chunks = store.read_columns(db, tables.chunks_table(version.id), CHUNK_COLUMNS)
    indexed = store.read_columns(db, name, ["chunk_id", *PROVENANCE_KEYS])
    current = {
        cid: key
        for cid, *key in zip(*(indexed[c].to_pylist() for c in ["chunk_id", *PROVENANCE_KEYS]), strict=True)
    }
    wanted = [
        i
        for i, (cid, h, c) in enumerate(
            zip(*(chunks[k].to_pylist() for k in ("chunk_id", "chunk_hash", "doc_checksum")), strict=True)
        )
        if current.get(cid) != [h, c, config_hash, fingerprint]
    ]
    table = store.open_table(db, name, store.index_schema(version.dimension))
    ids = indexed["chunk_id"].to_pylist()
    duplicated = {cid for cid, n in Counter(ids).items() if n > 1}
    if duplicated:
        # Duplicate keys cannot be told apart, so they are removed and rewritten; serving reads a pinned
        # table version, so this window never reaches queries.
        store.delete_keys(table, "chunk_id", duplicated)
        wanted = sorted(
            set(wanted) | {i for i, cid in enumerate(chunks["chunk_id"].to_pylist()) if cid in duplicated}
        )
    to_write = chunks.take(pa.array(wanted, pa.int64()))
    rows = _index_rows(db, version, to_write, fingerprint, config_hash)
    written = store.upsert(table, rows, "chunk_id")
    live = set(chunks["chunk_id"].to_pylist())
    deleted = store.delete_keys(table, "chunk_id", [cid for cid in current if cid not in live])
    return IndexSync(
        rows_upserted=written.inserted + written.updated,
        rows_deleted=deleted,
        rows_total=table.count_rows(),
        documents=len(set(chunks["doc_id"].to_pylist())),
        table_version=table.version,
        docs_written=sorted(set(to_write["doc_id"].to_pylist())),
    )


def _index_rows(
    db: lancedb.DBConnection, version: ModelVersion, chunks: pa.Table, fingerprint: str, config_hash: str
) -> pa.Table:
    schema = store.index_schema(version.dimension)
    if chunks.num_rows == 0:
        return schema.empty_table()
    cache = store.read_columns(
        db,
        tables.cache_table(version.encoder_key()),
        ["chunk_hash", "vector", "embedded_at", "model_fingerprint"],
    )
    position = {h: i for i, h in enumerate(cache["chunk_hash"].to_pylist())}
    rows = [position.get(h) for h in chunks["chunk_hash"].to_pylist()]
    missing = rows.count(None)
    if missing:
        raise MissingEmbeddingsError(
            f"{missing} chunks of {version.id!r} have no cached vector; materialize embeddings first"
        )
    vectors = cache.take(pa.array(rows, pa.int64()))
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
        schema=schema,
    )
