"""Staging tables: what a corpus shard cut and encoded, in tables only that shard writes.

Shards of one version run at the same time, in separate processes or pods; concurrent `merge_insert`s
into one table can duplicate rows (LanceDB issue 3377). So a shard never commits to a shared table: it
commits to its own staging tables, and the version's chunks and embeddings stages, one writer per
version, fold what was staged into the shared tables in one commit each and then drop the staging.
Staged rows are a head start, never the truth: a chunk is folded only if it was cut from the document's
current checksum with the version's config, a vector only if the same model fingerprint encoded it.
"""

from __future__ import annotations

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.index import store, tables

CHUNKS = "chunks"
VECTORS = "vectors"


def staged_tables(db: lancedb.DBConnection, version_id: str, kind: str) -> list[str]:
    """Every shard's staging table of `kind` for `version_id`, in name order."""
    prefix = tables.staging_prefix(version_id, kind)
    return sorted(n for n in store.table_names(db) if n.startswith(prefix))


def staged_chunks(
    db: lancedb.DBConnection, version_id: str, wanted: set[tuple[str, str]], config_hash: str
) -> pa.Table:
    """Staged chunk rows of the documents in `wanted` ((doc_id, doc_checksum)) cut with `config_hash`;
    each document's rows come from one staging table, so a document staged twice is taken once."""
    parts: list[pa.Table] = []
    covered: set[str] = set()
    for name in staged_tables(db, version_id, CHUNKS):
        rows = store.read_columns(db, name, store.CHUNKS_SCHEMA.names)
        keep = [
            (d, c) in wanted and h == config_hash and d not in covered
            for d, c, h in zip(
                *(rows[k].to_pylist() for k in ("doc_id", "doc_checksum", "pipeline_config_hash")),
                strict=True,
            )
        ]
        taken = rows.filter(pa.array(keep, pa.bool_())) if rows.num_rows else rows
        covered |= set(taken["doc_id"].to_pylist())
        parts.append(taken.cast(store.CHUNKS_SCHEMA))
    return pa.concat_tables(parts) if parts else store.CHUNKS_SCHEMA.empty_table()


def fold_staged_vectors(
    db: lancedb.DBConnection,
    version_id: str,
    cache: lancedb.table.Table,
    wanted: pa.Array,
    fingerprint: str,
) -> pa.Array:
    """Write into `cache` the staged vectors of the hashes `wanted` that `fingerprint` encoded, one commit
    per staging table; the hashes folded."""
    folded = pa.array([], pa.string())
    for name in staged_tables(db, version_id, VECTORS):
        rows = store.read_columns(db, name, cache.schema.names)
        if rows.num_rows == 0:
            continue
        fresh = pc.and_(
            pc.is_in(rows["chunk_hash"], value_set=store.flat(wanted)),
            pc.invert(pc.is_in(rows["chunk_hash"], value_set=folded)),
        )
        taken = rows.filter(pc.and_(fresh, pc.equal(rows["model_fingerprint"], fingerprint)))
        store.upsert(cache, taken, "chunk_hash")
        folded = pa.concat_arrays([folded, store.flat(taken["chunk_hash"]).cast(pa.string())])
    return folded


def drop_staged(db: lancedb.DBConnection, version_id: str, kind: str) -> int:
    """Drop every shard's staging table of `kind` for `version_id` (after its rows were folded in or
    found stale); how many were dropped."""
    names = staged_tables(db, version_id, kind)
    for name in names:
        db.drop_table(name)
    return len(names)
