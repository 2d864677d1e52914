"""Embeddings stage: a content-addressed cache, (encoder, chunk_hash) -> vector; only unseen hashes encode."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import lancedb
import numpy as np
import pyarrow as pa

from embedding_assets.index import store, tables
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

    `progress` draws a terminal bar; `log` (a run's logger) gets a line at about every tenth of the work.
    """
    version = embedder.version
    chunks = store.read_columns(db, tables.chunks_table(version.id), ["chunk_hash", "text"])
    name = tables.cache_table(version.encoder_key())
    cached = set(store.read_columns(db, name, ["chunk_hash"])["chunk_hash"].to_pylist())
    todo: dict[str, str] = {}
    for h, text in zip(chunks["chunk_hash"].to_pylist(), chunks["text"].to_pylist(), strict=True):
        if h not in cached:
            todo.setdefault(h, text)

    table = store.open_table(db, name, store.cache_schema(version.dimension))
    hashes = list(todo)
    started = time.perf_counter()
    report = _progress_log(log, len(hashes), version.id, started)
    for start in range(0, len(hashes), CACHE_WRITE_BATCH):
        batch = hashes[start : start + CACHE_WRITE_BATCH]
        vectors = embedder.encode(
            [todo[h] for h in batch], progress=progress, on_batch=lambda done, _, s=start: report(s + done)
        )
        _check_vectors(vectors, version.dimension, version.id)
        store.upsert(
            table, _cache_rows(batch, vectors, embedder.fingerprint, version.dimension), "chunk_hash"
        )
    seconds = time.perf_counter() - started
    unique = len(set(chunks["chunk_hash"].to_pylist()))
    return EmbedSync(
        chunks=chunks.num_rows,
        encoded=len(hashes),
        reused=unique - len(hashes),
        cached_total=table.count_rows(),
        seconds_encoding=seconds,
        table_version=table.version,
    )


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
