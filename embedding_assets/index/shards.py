"""Corpus shards: a stable split of the documents by a hash of their id, so a backfill fans out.

Shard `i-of-n` owns every document whose id hashes to `i` modulo `n`; the same id lands in the same
shard on every machine and every run. A shard cuts its stale documents and encodes their unseen chunk
texts into its own staging tables (see `staging`); the version's stages fold them in."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import lancedb

from embedding_assets.index import staging, store, tables
from embedding_assets.index.chunking import Chunker
from embedding_assets.index.chunks import CHUNKED_AS, chunk_documents, chunked_as
from embedding_assets.index.embeddings import encode_into, texts_of, unseen_hashes
from embedding_assets.models.embedders import Embedder

SHARD_KEY = re.compile(r"^(\d+)-of-(\d+)$")
STAGE_BATCH_DOCS = 2000  # documents cut per staging commit: a shard interrupted keeps what it staged


class ShardKeyError(ValueError):
    """A shard key that does not read `i-of-n` with 0 <= i < n."""


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`."""

    index: int
    count: int

    @property
    def key(self) -> str:
        return f"{self.index}-of-{self.count}"

    @classmethod
    def parse(cls, key: str) -> Shard:
        match = SHARD_KEY.match(key)
        if not match or not int(match[1]) < int(match[2]):
            raise ShardKeyError(f"shard key {key!r} is not i-of-n with 0 <= i < n (for example 0-of-4)")
        return cls(int(match[1]), int(match[2]))

    def owns(self, doc_id: str) -> bool:
        return shard_of(doc_id, self.count) == self.index


def shard_of(doc_id: str, count: int) -> int:
    """The shard of `doc_id` among `count`: the first 8 bytes of its SHA-256, modulo `count`."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") % count


def shard_keys(count: int) -> list[str]:
    """The keys of `count` shards: 0-of-N ... N-1-of-N."""
    if count < 1:
        raise ShardKeyError(f"a corpus needs at least one shard, not {count}")
    return [Shard(i, count).key for i in range(count)]


@dataclass(frozen=True)
class ShardStage:
    """What one shard staged."""

    documents: int  # the shard's documents in the corpus
    docs_chunked: int
    chunks_staged: int
    vectors_encoded: int
    seconds_chunking: float
    seconds_encoding: float

    @property
    def chunks_per_second(self) -> float:
        return self.vectors_encoded / self.seconds_encoding if self.seconds_encoding else 0.0


def stage_shard(
    db: lancedb.DBConnection,
    embedder: Embedder,
    chunker: Chunker,
    shard: Shard,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> ShardStage:
    """Cut the shard's documents that neither the version's chunks nor this shard's staging hold as they
    are now, then encode the staged texts that neither the cache nor the staging holds; resumable."""
    version = embedder.version
    config_hash = version.pipeline_config_hash()
    docs = store.read_columns(db, tables.DOCUMENTS_TABLE, ["doc_id", "doc_checksum"])
    mine = [
        (d, c)
        for d, c in zip(docs["doc_id"].to_pylist(), docs["doc_checksum"].to_pylist(), strict=True)
        if shard.owns(d)
    ]
    chunks_name = tables.staging_table(version.id, staging.CHUNKS, shard.key)
    done = chunked_as(store.read_columns(db, tables.chunks_table(version.id), CHUNKED_AS), config_hash)
    done |= chunked_as(store.read_columns(db, chunks_name, CHUNKED_AS), config_hash)
    todo_docs = [d for d, c in mine if (d, c) not in done]

    started = time.perf_counter()
    staged = store.open_table(db, chunks_name, store.CHUNKS_SCHEMA)
    chunks_staged = 0
    for start in range(0, len(todo_docs), STAGE_BATCH_DOCS):
        rows = chunk_documents(db, todo_docs[start : start + STAGE_BATCH_DOCS], chunker, config_hash)
        written = store.upsert(staged, rows, "chunk_id")
        chunks_staged += written.inserted + written.updated
        if log is not None:
            log(
                f"[{version.id} {shard.key}] cut {min(start + STAGE_BATCH_DOCS, len(todo_docs))}/"
                f"{len(todo_docs)} documents"
            )
    seconds_chunking = time.perf_counter() - started

    vectors_name = tables.staging_table(version.id, staging.VECTORS, shard.key)
    _, todo = unseen_hashes(db, chunks_name, [tables.cache_table(version.encoder_key()), vectors_name])
    vectors = store.open_table(db, vectors_name, store.cache_schema(version.dimension))
    seconds_encoding = encode_into(
        vectors, texts_of(db, chunks_name, todo), len(todo), embedder, progress=progress, log=log
    )
    return ShardStage(
        documents=len(mine),
        docs_chunked=len(todo_docs),
        chunks_staged=chunks_staged,
        vectors_encoded=len(todo),
        seconds_chunking=seconds_chunking,
        seconds_encoding=seconds_encoding,
    )
