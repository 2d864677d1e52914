"""Chunks stage: re-chunk only documents whose checksum or pipeline config changed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets import faults
from embedding_assets.index import change_log, staging, store, tables
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


CHUNK_DOC_BATCH = 1024  # documents tokenized per call
CHUNK_WRITE_BATCH = 65_536  # chunk rows upserted per commit
# A chunk row is rewritten only if what it holds changed.
CHUNK_CHANGED = (
    "target.chunk_hash != source.chunk_hash OR target.doc_checksum != source.doc_checksum "
    "OR target.pipeline_config_hash != source.pipeline_config_hash "
    "OR target.char_start != source.char_start OR target.char_end != source.char_end"
)
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
    """Bring `chunks__<version>` in line with the documents table; writes before it deletes. When the
    change logs can tell, only the documents changed since the last sync are compared (`change_log`).

    Documents that corpus shards already cut (`shard_vectors`) are taken from their staging tables, if
    staged from the same checksum and config; the rest are chunked here."""
    config_hash = version.pipeline_config_hash()
    name = tables.chunks_table(version.id)
    scope = change_log.scope(db, tables.DOCUMENTS_TABLE, name, config_hash)
    docs = change_log.read_scoped(db, tables.DOCUMENTS_TABLE, ["doc_id", "doc_checksum"], scope.docs)
    existing = change_log.read_scoped(db, name, ["chunk_id", *CHUNKED_AS], scope.docs)
    current = existing.filter(pc.equal(existing["pipeline_config_hash"], config_hash))
    cut_from = store.joined_key(current, "doc_id", "doc_checksum")  # what the chunks were cut from
    stale_rows = docs.filter(
        pc.invert(
            pc.is_in(store.joined_key(docs, "doc_id", "doc_checksum"), value_set=cut_from, skip_nulls=True)
        )
    )
    stale = list(zip(stale_rows["doc_id"].to_pylist(), stale_rows["doc_checksum"].to_pylist(), strict=True))
    stale_docs = [d for d, _ in stale]
    gone = pc.invert(pc.is_in(existing["doc_id"], value_set=store.flat(docs["doc_id"])))

    staged = staging.staged_chunks(db, version.id, set(stale), config_hash)
    from_shards = pa.array(sorted(set(staged["doc_id"].to_pylist())), pa.string())
    to_cut = store.absent(stale_rows["doc_id"], from_shards)
    table = store.open_table(db, name, store.CHUNKS_SCHEMA)
    with change_log.ChangeLog(db, name).write(config_hash, scope.input_seq) as logged:
        logged.touches(
            pa.concat_arrays([store.flat(stale_rows["doc_id"]), store.flat(existing.filter(gone)["doc_id"])])
        )
        written = _ChunkWrites(table, existing["chunk_id"])
        written.add(staged)
        for rows in chunk_batches(db, to_cut, chunker, config_hash):
            written.add(rows)
        written.flush()
        faults.failpoint(faults.CHUNKS_WRITTEN)
        replaced = pc.and_(
            pc.is_in(existing["doc_id"], value_set=pa.array(stale_docs, pa.string())),
            pc.invert(pc.is_in(existing["chunk_id"], value_set=written.chunk_ids())),
        )
        obsolete = existing.filter(pc.or_(gone, replaced))["chunk_id"].to_pylist()
        deleted = store.delete_keys(table, "chunk_id", obsolete)
    staging.drop_staged(db, version.id, staging.CHUNKS)  # folded in, or stale: written, so never needed
    return ChunkSync(
        documents_chunked=len(stale_docs),
        chunks_written=written.rows,
        chunks_deleted=deleted,
        chunks_total=table.count_rows(),
        max_tokens_seen=written.max_tokens,
        table_version=table.version,
        chunks_from_shards=staged.num_rows,
    )


class _ChunkWrites:
    """Chunk rows written CHUNK_WRITE_BATCH at a time (a commit each), keeping only their ids: new ids
    appended, ids the table had (`existing`) merged."""

    def __init__(self, table: lancedb.table.Table, existing: pa.ChunkedArray):
        self.table = table
        self.existing = store.flat(existing).cast(pa.string())
        self.pending: list[pa.Table] = []
        self.ids: list[pa.ChunkedArray] = []
        self.rows = 0
        self.max_tokens = 0

    def add(self, rows: pa.Table) -> None:
        if rows.num_rows:
            self.pending.append(rows)
            self.ids.append(rows["chunk_id"])
            self.max_tokens = max(self.max_tokens, int(pc.max(rows["token_count"]).as_py()))
        if sum(p.num_rows for p in self.pending) >= CHUNK_WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        stats = store.append_or_upsert(
            self.table, pa.concat_tables(self.pending), "chunk_id", self.existing, changed_when=CHUNK_CHANGED
        )
        self.rows += stats.inserted + stats.updated
        self.pending = []

    def chunk_ids(self) -> pa.Array:
        return pa.concat_arrays([c for ids in self.ids for c in ids.chunks] or [pa.array([], pa.string())])


def chunk_documents(
    db: lancedb.DBConnection, doc_ids: list[str] | pa.Array, chunker: Chunker, config_hash: str
) -> pa.Table:
    """Chunk rows (CHUNKS_SCHEMA) of the documents `doc_ids`, read from the documents table."""
    parts = list(chunk_batches(db, pa.array(doc_ids, pa.string()), chunker, config_hash))
    return pa.concat_tables(parts) if parts else store.CHUNKS_SCHEMA.empty_table()


def chunk_batches(
    db: lancedb.DBConnection, doc_ids: pa.Array, chunker: Chunker, config_hash: str
) -> Iterator[pa.Table]:
    """Chunk rows of the documents `doc_ids`, CHUNK_DOC_BATCH documents at a time: their texts are read
    from the documents table in parts of that many (a part of long documents is large) and tokenized a
    batch per call."""
    columns = ["doc_id", "text", "source_uri", "doc_checksum"]
    for docs in store.batches_for_keys(
        db, tables.DOCUMENTS_TABLE, "doc_id", doc_ids, columns, batch_rows=CHUNK_DOC_BATCH
    ):
        for start in range(0, docs.num_rows, CHUNK_DOC_BATCH):
            yield _chunk_rows(docs.slice(start, CHUNK_DOC_BATCH), chunker, config_hash)


def _chunk_rows(docs: pa.Table, chunker: Chunker, config_hash: str) -> pa.Table:
    ids, sources, checksums = (docs[c].to_pylist() for c in ("doc_id", "source_uri", "doc_checksum"))
    cut = chunker.chunk_many(list(zip(ids, docs["text"].to_pylist(), strict=True)))
    owner = [i for i, chunks in enumerate(cut) for _ in chunks]
    chunks = [chunk for doc_chunks in cut for chunk in doc_chunks]
    return pa.table(
        {
            "chunk_id": [chunk_id(ids[i], c.ordinal) for i, c in zip(owner, chunks, strict=True)],
            "doc_id": [ids[i] for i in owner],
            "source_uri": [sources[i] for i in owner],
            "doc_checksum": [checksums[i] for i in owner],
            "chunk_ordinal": [c.ordinal for c in chunks],
            "chunk_hash": [c.chunk_hash for c in chunks],
            "text": [c.text for c in chunks],
            "char_start": [c.char_start for c in chunks],
            "char_end": [c.char_end for c in chunks],
            "token_count": [c.token_count for c in chunks],
            "pipeline_config_hash": [config_hash] * len(chunks),
        },
        schema=store.CHUNKS_SCHEMA,
    )
