"""Embeddings stage: a content-addressed cache, (encoder, chunk_hash) -> vector; only unseen hashes encode."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.index import staging, store, tables
from embedding_assets.models.embedders import Embedder

CACHE_WRITE_BATCH = 2048
PROGRESS_STEPS = 10


@dataclass(frozen=True)
class EmbedSync:
    chunks: int
    encoded: int
    reused: int
    cached_total: int
    seconds_encoding: float
    table_version: int
    from_shards: int = 0  # hashes whose vectors corpus shards staged, folded in instead of encoded

    @property
    def chunks_per_second(self) -> float:
        return self.encoded / self.seconds_encoding if self.seconds_encoding else 0.0


def sync_embeddings(
    db: lancedb.DBConnection,
    embedder: Embedder,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> EmbedSync:
    """Encode every chunk hash of the version that its encoder has not seen; each text once.

    Vectors that corpus shards staged (`shard_vectors`) with the same model fingerprint are folded in
    instead of encoded. `progress` draws a terminal bar; `log` (a run's logger) gets a line at about
    every tenth of the work.
    """
    version = embedder.version
    name = tables.cache_table(version.encoder_key())
    hashes, todo = unseen_texts(db, tables.chunks_table(version.id), [name])
    table = store.open_table(db, name, store.cache_schema(version.dimension))
    folded = staging.fold_staged_vectors(db, version.id, table, todo, embedder.fingerprint)
    encoded = {h: t for h, t in todo.items() if h not in folded}
    seconds = encode_into(table, encoded, embedder, progress=progress, log=log)
    staging.drop_staged(db, version.id, staging.VECTORS)  # folded in: the cache holds them now
    unique = len(pc.unique(hashes))
    return EmbedSync(
        chunks=len(hashes),
        encoded=len(encoded),
        reused=unique - len(todo),
        cached_total=table.count_rows(),
        seconds_encoding=seconds,
        table_version=table.version,
        from_shards=len(folded),
    )


def unseen_texts(
    db: lancedb.DBConnection, chunk_table: str, vector_tables: list[str]
) -> tuple[pa.ChunkedArray, dict[str, str]]:
    """The chunk hashes of `chunk_table`, and chunk_hash -> text for each one that none of
    `vector_tables` (a cache, a staging table) holds a vector for. Key columns are compared in Arrow;
    texts are read only for the hashes to encode."""
    hashes = store.read_columns(db, chunk_table, ["chunk_hash"])["chunk_hash"]
    seen = [store.read_columns(db, name, ["chunk_hash"])["chunk_hash"] for name in vector_tables]
    unseen = store.absent(hashes, pa.chunked_array([c for s in seen for c in s.chunks], pa.string()))
    rows = store.rows_for_keys(db, chunk_table, "chunk_hash", unseen, ["chunk_hash", "text"])
    todo: dict[str, str] = {}
    for h, text in zip(rows["chunk_hash"].to_pylist(), rows["text"].to_pylist(), strict=True):
        todo.setdefault(h, text)
    return hashes, todo


def encode_into(
    table: lancedb.table.Table,
    todo: dict[str, str],
    embedder: Embedder,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> float:
    """Encode the texts of `todo` (chunk_hash -> text) and upsert them into `table` (cache schema), one
    commit per CACHE_WRITE_BATCH, so an interrupted run keeps what it finished; the seconds it took.

    The whole work list is ordered by token count first (longest first), so every forward pass holds
    texts of like length however the cache batches cut it."""
    version = embedder.version
    hashes = list(todo)
    started = time.perf_counter()
    lengths = None
    if embedder.pads_batches and hashes:
        counted = embedder.token_lengths([todo[h] for h in hashes])
        order = np.argsort(-counted, kind="stable")
        hashes, lengths = [hashes[i] for i in order], counted[order]
    report = _progress_log(log, len(hashes), version.id, started)
    for start in range(0, len(hashes), CACHE_WRITE_BATCH):
        batch = hashes[start : start + CACHE_WRITE_BATCH]
        vectors = embedder.encode(
            [todo[h] for h in batch],
            lengths=None if lengths is None else lengths[start : start + CACHE_WRITE_BATCH],
            progress=progress,
            on_batch=lambda done, _, s=start: report(s + done),
        )
        _check_vectors(vectors, version.dimension, version.id)
        store.upsert(
            table, _cache_rows(batch, vectors, embedder.fingerprint, version.dimension), "chunk_hash"
        )
    return time.perf_counter() - started


def _progress_log(
    log: Callable[[str], None] | None, total: int, version_id: str, started: float
) -> Callable[[int], None]:
    """A callback that logs `done of total` each time another tenth of the work is done."""
    step = max(total // PROGRESS_STEPS, 1)
    last = [0]

    def report(done: int) -> None:
        if log is not None and (done - last[0] >= step or done == total):
            last[0] = done
            rate = done / max(time.perf_counter() - started, 1e-9)
            log(f"[{version_id}] embedded {done}/{total} chunks ({rate:.1f} chunks/s)")

    return report


def _check_vectors(vectors: np.ndarray, dimension: int, version_id: str) -> None:
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise ValueError(
            f"model version {version_id!r} produced shape {vectors.shape}, registry says {dimension}-d"
        )
    if not np.isfinite(vectors).all():
        raise ValueError(f"model version {version_id!r} produced non-finite vectors; nothing was cached")


def _cache_rows(hashes: list[str], vectors: np.ndarray, fingerprint: str, dimension: int) -> pa.Table:
    now = datetime.now(UTC)
    return pa.table(
        {
            "chunk_hash": pa.array(hashes, pa.string()),
            "model_fingerprint": pa.array([fingerprint] * len(hashes), pa.string()),
            "embedded_at": pa.array([now] * len(hashes), store.TIMESTAMP),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.astype(np.float32).ravel()), dimension
            ),
        }
    )
