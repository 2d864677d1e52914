"""Chunks stage: re-chunk only documents whose checksum or pipeline config changed."""

from __future__ import annotations

from dataclasses import dataclass

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.index import staging, store, tables
from embedding_assets.index.chunking import Chunker
from embedding_assets.models.registry import ModelVersion


@dataclass(frozen=True)
class ChunkSync:
    documents_chunked: int
    chunks_written: int
    chunks_deleted: int
    chunks_total: int
    max_tokens_seen: int
    table_version: int
    chunks_from_shards: int = 0  # of chunks_written: cut by corpus shards, folded in from staging


def chunk_id(doc_id: str, ordinal: int) -> str:
    return f"{doc_id}#{ordinal}"


CHUNKED_AS = ["doc_id", "doc_checksum", "pipeline_config_hash"]  # what a chunk was cut from, and how


def chunked_as(existing: pa.Table, config_hash: str) -> set[tuple[str, str]]:
    """(doc_id, doc_checksum) of every document `existing` (CHUNKED_AS columns) holds chunks of, cut
    with `config_hash`."""
    return {
        (d, c)
        for d, c, h in zip(
            *(existing[k].to_pylist() for k in ("doc_id", "doc_checksum", "pipeline_config_hash")),
            strict=True,
        )
        if h == config_hash
    }


def sync_chunks(db: lancedb.DBConnection, version: ModelVersion, chunker: Chunker) -> ChunkSync:
    """Bring `chunks__<version>` in line with the documents table; writes before it deletes.

    Documents that corpus shards already cut (`shard_vectors`) are taken from their staging tables, if
    staged from the same checksum and config; the rest are chunked here."""
    config_hash = version.pipeline_config_hash()
    name = tables.chunks_table(version.id)
    docs = store.read_columns(db, tables.DOCUMENTS_TABLE, ["doc_id", "doc_checksum"])
    existing = store.read_columns(db, name, ["chunk_id", *CHUNKED_AS])
    current = existing.filter(pc.equal(existing["pipeline_config_hash"], config_hash))
    stale_rows = docs.join(
        current.select(["doc_id", "doc_checksum"]).group_by(["doc_id", "doc_checksum"]).aggregate([]),
        keys=["doc_id", "doc_checksum"],
        join_type="left anti",
    )
    stale = list(zip(stale_rows["doc_id"].to_pylist(), stale_rows["doc_checksum"].to_pylist(), strict=True))
    stale_docs = [d for d, _ in stale]

    staged = staging.staged_chunks(db, version.id, set(stale), config_hash)
    from_shards = set(staged["doc_id"].to_pylist())
    rows = pa.concat_tables(
        [staged, chunk_documents(db, [d for d in stale_docs if d not in from_shards], chunker, config_hash)]
    )
    table = store.open_table(db, name, store.CHUNKS_SCHEMA)
    written = store.upsert(
        table,
        rows,
        "chunk_id",
        changed_when="target.chunk_hash != source.chunk_hash "
        "OR target.doc_checksum != source.doc_checksum "
        "OR target.pipeline_config_hash != source.pipeline_config_hash "
        "OR target.char_start != source.char_start OR target.char_end != source.char_end",
    )
    gone = pc.invert(pc.is_in(existing["doc_id"], value_set=store.flat(docs["doc_id"])))
    replaced = pc.and_(
        pc.is_in(existing["doc_id"], value_set=pa.array(stale_docs, pa.string())),
        pc.invert(pc.is_in(existing["chunk_id"], value_set=store.flat(rows["chunk_id"]))),
    )
    obsolete = existing.filter(pc.or_(gone, replaced))["chunk_id"].to_pylist()
    deleted = store.delete_keys(table, "chunk_id", obsolete)
    staging.drop_staged(db, version.id, staging.CHUNKS)  # folded in, or stale: written, so never needed
    tokens = rows["token_count"]
    return ChunkSync(
        documents_chunked=len(stale_docs),
        chunks_written=written.inserted + written.updated,
        chunks_deleted=deleted,
        chunks_total=table.count_rows(),
        max_tokens_seen=int(pc.max(tokens).as_py() or 0) if rows.num_rows else 0,
        table_version=table.version,
        chunks_from_shards=staged.num_rows,
    )


def chunk_documents(
    db: lancedb.DBConnection, doc_ids: list[str], chunker: Chunker, config_hash: str
) -> pa.Table:
    """Chunk rows (CHUNKS_SCHEMA) of the documents `doc_ids`, read from the documents table."""
    records = []
    for start in range(0, len(doc_ids), store.IN_LIST_BATCH):
        batch = doc_ids[start : start + store.IN_LIST_BATCH]
        where = f"doc_id IN ({', '.join(store.sql_literal(d) for d in batch)})"
        docs = store.read_columns(
            db, tables.DOCUMENTS_TABLE, ["doc_id", "text", "source_uri", "doc_checksum"], where
        )
        for doc in docs.to_pylist():
            for chunk in chunker.chunk(doc["doc_id"], doc["text"]):
                records.append(
                    {
                        "chunk_id": chunk_id(doc["doc_id"], chunk.ordinal),
                        "doc_id": doc["doc_id"],
                        "source_uri": doc["source_uri"],
                        "doc_checksum": doc["doc_checksum"],
                        "chunk_ordinal": chunk.ordinal,
                        "chunk_hash": chunk.chunk_hash,
                        "text": chunk.text,
                        "char_start": chunk.char_start,
                        "char_end": chunk.char_end,
                        "token_count": chunk.token_count,
                        "pipeline_config_hash": config_hash,
                    }
                )
    return pa.Table.from_pylist(records, schema=store.CHUNKS_SCHEMA)
