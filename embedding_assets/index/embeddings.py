"""Embeddings stage: a content-addressed cache, (encoder, chunk_hash) -> vector; only unseen hashes encode."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from embedding_assets import faults
from embedding_assets.index import change_log, compaction, staging, store, tables
from embedding_assets.models.embedders import Embedder

CACHE_WRITE_BATCH = 2048
ENCODE_WINDOW = 65_536  # texts held, and ordered by token count, at a time
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
    every tenth of the work. When the change logs can tell, only the chunk hashes of documents whose chunks
    changed since this version's last pass are compared with the cache (`reused` counts among those).
    Versions that share the encoder share its cache: one of them writes it at a time, so a text is
    encoded once (`store.writer_lock`).
    """
    name = tables.cache_table(embedder.version.encoder_key())
    waiting = (lambda: log(f"waiting for another writer of {name}")) if log else None
    with store.writer_lock(db, name, waiting):
        return _sync(db, embedder, name, progress=progress, log=log)


def _sync(
    db: lancedb.DBConnection,
    embedder: Embedder,
    name: str,
    *,
    progress: bool,
    log: Callable[[str], None] | None,
) -> EmbedSync:
    version = embedder.version
    chunk_table = tables.chunks_table(version.id)
    settings = f"{version.id}/{embedder.fingerprint}"  # the cache is shared: its log tells versions apart
    scope = change_log.scope(db, chunk_table, name, settings)
    if scope.docs is None:
        hashes, unseen = unseen_hashes(db, chunk_table, [name])
    else:  # only the chunks of documents changed since this version's last pass can be new
        hashes = change_log.read_scoped(db, chunk_table, ["chunk_hash"], scope.docs)["chunk_hash"]
        unseen = store.absent(
            hashes, store.rows_for_keys(db, name, "chunk_hash", hashes, ["chunk_hash"])["chunk_hash"]
        )
    table = store.open_table(db, name, store.cache_schema(version.dimension))
    with change_log.ChangeLog(db, name).write(settings, scope.input_seq):
        folded = staging.fold_staged_vectors(db, version.id, table, unseen, embedder.fingerprint)
        to_encode = store.absent(unseen, folded)
        seconds = encode_into(
            table, texts_of(db, chunk_table, to_encode), len(to_encode), embedder, progress=progress, log=log
        )
    if len(to_encode) > CACHE_WRITE_BATCH * compaction.MAX_SMALL_FRAGMENTS:  # a build: one fragment a batch
        with change_log.ChangeLog(db, name).same_rows():
            compaction.compact(table)
    staging.drop_staged(db, version.id, staging.VECTORS)  # folded in: the cache holds them now
    unique = len(pc.unique(hashes))
    return EmbedSync(
        chunks=len(hashes) if scope.docs is None else db.open_table(chunk_table).count_rows(),
        encoded=len(to_encode),
        reused=unique - len(unseen),
        cached_total=table.count_rows(),
        seconds_encoding=seconds,
        table_version=table.version,
        from_shards=len(folded),
    )


def unseen_hashes(
    db: lancedb.DBConnection, chunk_table: str, vector_tables: list[str]
) -> tuple[pa.ChunkedArray, pa.Array]:
    """The chunk hashes of `chunk_table`, and the distinct ones that none of `vector_tables` (a cache, a
    staging table) holds a vector for; key columns only, compared in Arrow."""
    hashes = store.read_columns(db, chunk_table, ["chunk_hash"])["chunk_hash"]
    seen = [store.read_columns(db, name, ["chunk_hash"])["chunk_hash"] for name in vector_tables]
    return hashes, store.absent(hashes, pa.chunked_array([c for s in seen for c in s.chunks], pa.string()))


def texts_of(
    db: lancedb.DBConnection, chunk_table: str, wanted: pa.Array
) -> Iterator[tuple[list[str], list[str]]]:
    """(hashes, texts) of the chunk hashes `wanted`, each once, in parts of at most ENCODE_WINDOW: read
    from `chunk_table` in streamed parts, so the texts of a whole corpus are never held at once."""
    done: set[str] = set()
    hashes: list[str] = []
    texts: list[str] = []
    for rows in store.batches_for_keys(db, chunk_table, "chunk_hash", wanted, ["chunk_hash", "text"]):
        for h, text in zip(rows["chunk_hash"].to_pylist(), rows["text"].to_pylist(), strict=True):
            if h not in done:
                done.add(h)
                hashes.append(h)
                texts.append(text)
        if len(hashes) >= ENCODE_WINDOW:
            yield hashes, texts
            hashes, texts = [], []
    if hashes:
        yield hashes, texts


def encode_into(
    table: lancedb.table.Table,
    parts: Iterable[tuple[list[str], list[str]]],
    total: int,
    embedder: Embedder,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> float:
    """Encode the (hashes, texts) `parts` (`total` texts in all) and upsert them into `table` (cache
    schema), one commit per CACHE_WRITE_BATCH, so an interrupted run keeps what it finished; the seconds
    it took.

    Each part (up to ENCODE_WINDOW texts, the whole work list of a refresh) is ordered by token count
    first (longest first), so every forward pass holds texts of like length however the cache batches
    cut it."""
    version = embedder.version
    started = time.perf_counter()
    report = _progress_log(log, total, version.id, started)
    done = 0
    with tqdm(total=total, desc=f"embedding [{version.id}]", unit="chunk", disable=not progress) as bar:
        for hashes, texts in parts:
            lengths = None
            if embedder.pads_batches:
                counted = embedder.token_lengths(texts)
                order = np.argsort(-counted, kind="stable")
                hashes, texts, lengths = [hashes[i] for i in order], [texts[i] for i in order], counted[order]
            for start in range(0, len(hashes), CACHE_WRITE_BATCH):
                batch = slice(start, start + CACHE_WRITE_BATCH)
                vectors = embedder.encode(
                    texts[batch],
                    lengths=None if lengths is None else lengths[batch],
                    on_batch=lambda n, _, at=done: (report(at + n), bar.update(at + n - bar.n)),
                )
                _check_vectors(vectors, version.dimension, version.id, hashes[batch], texts[batch])
                # Hashes the table lacks, by construction (`unseen_hashes`): appended, not merged.
                rows = _cache_rows(hashes[batch], vectors, embedder.fingerprint, version.dimension)
                faults.failpoint(faults.EMBEDDINGS_ENCODED)
                table.add(rows.cast(table.schema))
                faults.failpoint(faults.EMBEDDINGS_CACHED)
                done += len(vectors)
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


def _check_vectors(
    vectors: np.ndarray, dimension: int, version_id: str, hashes: list[str], texts: list[str]
) -> None:
    """Refuse a batch before it is cached: the wrong width, or any vector that is NaN, infinite or zero
    (a cosine means nothing for those). ValueError names how many, and the first one's hash and text."""
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise ValueError(
            f"model version {version_id!r} produced shape {vectors.shape}, registry says {dimension}-d"
        )
    for bad, what in (
        (~np.isfinite(vectors).all(axis=1), "NaN or infinite"),
        (~(np.abs(vectors) > 0).any(axis=1), "all-zero"),
    ):
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                f"model version {version_id!r} produced {int(bad.sum())} {what} vector(s) in a batch of "
                f"{len(vectors)} (first: chunk_hash {hashes[first]}, text {texts[first]!r:.80}); this "
                "batch was not cached"
            )


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
