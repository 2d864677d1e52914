"""Sentinel drift: a fixed sample of chunks, stored with their vectors at a version's first build, is
re-embedded with the model as loaded now; the cosine distance to the stored vectors shows whether the
same version id still maps text to the same space (weights, tokenizer, preprocessing or library changes).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets import faults
from embedding_assets.index import store, tables
from embedding_assets.models.registry import GateThresholds, ModelVersion
from embedding_assets.quality.gates.outcome import GateOutcome, level_for, markdown_table

WORST_SHOWN = 5
DISTANCES = "distances"  # every sentinel's distance, in metadata for the migration report's histogram


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


def _one_per_hash(rows: pa.Table, hashes: pa.Array) -> pa.Table:
    """One row of `rows` per hash of `hashes`, in that order: the first of `rows` holding it."""
    first: dict[str, int] = {}
    for i, h in enumerate(rows["chunk_hash"].to_pylist()):
        first.setdefault(h, i)
    return rows.take(pa.array([first[h] for h in hashes.to_pylist()], pa.int64()))


def sentinel_schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            ("chunk_hash", pa.string()),
            ("chunk_id", pa.string()),
            ("text", pa.string()),
            ("token_count", pa.int32()),
            ("model_fingerprint", pa.string()),
            ("encoder_key", pa.string()),
            ("created_at", store.TIMESTAMP),
            ("vector", store.vector_type(dimension)),
        ]
    )


def sentinel_hashes(hashes: pa.Array | pa.ChunkedArray, count: int) -> pa.Array:
    """The sentinel sample of chunk `hashes`: the `count` distinct ones that sort first (sha256, so a
    uniform, deterministic sample)."""
    distinct = pc.unique(hashes)
    return distinct.take(pc.sort_indices(distinct)[:count])


def ensure_sentinels(db: lancedb.DBConnection, version: ModelVersion) -> tuple[int, bool]:
    """Store the version's sentinels if it has none yet; return (how many it has, whether just created).

    The sample is the distinct chunk hashes that sort first: hashes are sha256, so this is a uniform,
    deterministic sample. The vectors are the ones the build cached, never re-encoded here.
    """
    name = tables.sentinels_table(version.id)
    if name in store.table_names(db) and (n := db.open_table(name).count_rows()):
        return n, False
    hashes = store.read_columns(db, tables.chunks_table(version.id), ["chunk_hash"])["chunk_hash"]
    chosen = sentinel_hashes(hashes, version.gates.sentinel_count)
    if not len(chosen):
        return 0, False
    # Only the chosen hashes' rows are read (no table of texts or vectors); per hash, its lowest chunk id.
    columns = ["chunk_hash", "chunk_id", "text", "token_count"]
    found = store.rows_for_keys(db, tables.chunks_table(version.id), "chunk_hash", chosen, columns)
    sample = _one_per_hash(found.sort_by("chunk_id"), chosen)
    cached = store.rows_for_keys(
        db,
        tables.cache_table(version.encoder_key()),
        "chunk_hash",
        chosen,
        ["chunk_hash", "vector", "model_fingerprint"],
    )
    vectors = _one_per_hash(cached, chosen)
    n = len(chosen)
    rows = pa.table(
        {
            "chunk_hash": sample["chunk_hash"],
            "chunk_id": sample["chunk_id"],
            "text": sample["text"],
            "token_count": sample["token_count"],
            "model_fingerprint": vectors["model_fingerprint"],
            "encoder_key": pa.array([version.encoder_key()] * n, pa.string()),
            "created_at": pa.array([datetime.now(UTC)] * n, store.TIMESTAMP),
            "vector": vectors["vector"],
        },
        schema=sentinel_schema(version.dimension),
    )
    db.create_table(name, rows, mode="overwrite")
    faults.failpoint(faults.SENTINELS_WRITTEN)
    return n, True


def cosine_distances(stored: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Row-wise 1 - cosine similarity; a zero or non-finite row counts as the maximum distance, 2."""
    stored, current = np.asarray(stored, np.float64), np.asarray(current, np.float64)
    norms = np.linalg.norm(stored, axis=1) * np.linalg.norm(current, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        distances = 1.0 - np.einsum("ij,ij->i", stored, current) / norms
    return np.clip(np.where(np.isfinite(distances), distances, 2.0), 0.0, 2.0)


def sentinel_drift(
    db: lancedb.DBConnection, version: ModelVersion, encoder: Encoder, thresholds: GateThresholds
) -> GateOutcome:
    """Re-embed the sentinels with `encoder`; block when the p95 cosine distance exceeds the threshold.

    p95 is the gated statistic: a change that moves only part of the texts (long chunks under a shorter
    max_seq_length) still shows, while one odd text does not block a whole version.
    """
    name = tables.sentinels_table(version.id)
    if name not in store.table_names(db) or not db.open_table(name).count_rows():
        return GateOutcome("block", f"{version.id} has no sentinels: materialize its index first")
    sentinels = db.open_table(name).to_arrow()
    stored = np.asarray(sentinels["vector"].combine_chunks().values, np.float32).reshape(
        sentinels.num_rows, -1
    )
    texts = sentinels["text"].to_pylist()
    current = encoder.encode(texts)
    if current.shape != stored.shape:
        return GateOutcome(
            "block",
            f"the model now produces {current.shape[1]}-d vectors; sentinels hold {stored.shape[1]}-d",
            {"sentinels": len(texts), "current_dimension": int(current.shape[1])},
        )
    distances = cosine_distances(stored, current)
    p50, p95, worst = (float(np.percentile(distances, q)) for q in (50, 95, 100))
    level = level_for(p95, warn=thresholds.sentinel_warn, block=thresholds.sentinel_block)
    order = np.argsort(-distances)[:WORST_SHOWN]
    tokens = sentinels["token_count"].to_pylist()
    ids = sentinels["chunk_id"].to_pylist()
    return GateOutcome(
        level,
        f"sentinel cosine distance p50 {p50:.5f}, p95 {p95:.5f}, max {worst:.5f} "
        f"(warn > {thresholds.sentinel_warn}, block > {thresholds.sentinel_block} on p95)",
        {
            "sentinels": len(texts),
            "p50_distance": round(p50, 6),
            "p95_distance": round(p95, 6),
            "max_distance": round(worst, 6),
            "mean_distance": round(float(distances.mean()), 6),
            DISTANCES: [round(float(d), 6) for d in distances],
            "warn_above": thresholds.sentinel_warn,
            "block_above": thresholds.sentinel_block,
            "stored_fingerprint": sentinels["model_fingerprint"][0].as_py(),
            "sentinels_created_at": str(sentinels["created_at"][0].as_py()),
            "worst_sentinels": markdown_table(
                ["chunk", "tokens", "cosine distance"],
                [[ids[i], tokens[i], float(distances[i])] for i in order],
            ),
        },
    )
