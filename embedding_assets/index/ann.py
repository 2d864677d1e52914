"""Approximate nearest-neighbour search for large versions.

A version's index table gets an IVF vector index once it holds ANN_MIN_ROWS rows; below that, exact
search is fast enough and always right. Rows written after the index was trained are searched exactly
beside it (LanceDB merges both), so results stay correct as a table grows; `optimize()` folds them into
the index (and compacts the table) once they are more than OPTIMIZE_UNINDEXED of it. Served table
versions are tagged, so compaction and cleanup never remove what serving or a rollback reads. The index
type and its parameters come from the measurements in docs/performance.md (`embedding-assets bench`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import lancedb
import numpy as np
from lancedb.index import BTree, IvfPq

VECTOR_COLUMN = "vector"
KEY_COLUMNS = ("chunk_id", "doc_id")  # BTREE indexes: merges find keys, filters find their rows fast
ANN_MIN_ROWS = 100_000
INDEX_TYPE = "IVF_PQ"
# Measured at 250,000 static vectors (256-d) on 2 cores: 32 PQ codes with nprobes 20 and refine 10 gave
# recall@10 0.87; 64 codes, nprobes 40, refine 10 gave 0.975 at 8.7 ms (exact: 302 ms).
SUB_VECTOR_DIMS = 4  # PQ: one 8-bit code per 4 dimensions
NPROBES = 40
REFINE_FACTOR = 10  # re-rank 10x k candidates by their full vectors
# A filter matching at most this many rows is searched exactly over those rows (through the BTREE on the
# key): an IVF probe of a few partitions misses most of a selective filter's rows (recall 0.79-0.90).
EXACT_FILTER_ROWS = 50_000
OPTIMIZE_UNINDEXED = 0.05
RECALL_K = 10
EXACT_BATCH = 65_536  # rows scored against every query at a time by the exact pass
RECALL_WARN = 0.95


@dataclass(frozen=True)
class VectorIndexState:
    """What a version's table has after `ensure_vector_index`: the index (if any) and what was done."""

    rows: int
    index: str | None  # the vector index's name, None while the table is searched exactly
    index_type: str | None
    unindexed_rows: int
    action: str  # "exact" (too small), "created", "optimized" or "current"
    seconds: float

    def to_metadata(self) -> dict:
        return {f"ann_{k}": ("" if v is None else v) for k, v in asdict(self).items()}


def vector_index_name(table: lancedb.table.Table) -> str | None:
    """The name of the table's index on its vector column, at the table version checked out."""
    for config in table.list_indices():
        if VECTOR_COLUMN in config.columns and config.index_type.upper().startswith("IVF"):
            return config.name
    return None


def index_config(rows: int, dimension: int) -> IvfPq:
    """The vector index for `rows` vectors of `dimension`: about sqrt(rows) partitions, cosine."""
    return IvfPq(
        distance_type="cosine",
        num_partitions=max(1, round(math.sqrt(rows))),
        num_sub_vectors=max(1, dimension // SUB_VECTOR_DIMS),
    )


def ensure_vector_index(table: lancedb.table.Table, dimension: int) -> VectorIndexState:
    """Create the vector index once the table is large enough; fold unindexed rows in when they are more
    than OPTIMIZE_UNINDEXED of the table."""
    started = time.perf_counter()
    rows = table.count_rows()
    name = vector_index_name(table)
    if name is None and rows < ANN_MIN_ROWS:
        return VectorIndexState(rows, None, None, rows, "exact", 0.0)
    if name is None:
        for column in KEY_COLUMNS:
            if column in table.schema.names:
                table.create_index(column, config=BTree(), replace=True)
        table.create_index(VECTOR_COLUMN, config=index_config(rows, dimension))
        table.checkout_latest()
        name, action = vector_index_name(table), "created"
    else:
        action = "current"
        if _unindexed(table, name) > OPTIMIZE_UNINDEXED * rows:
            table.optimize()
            action = "optimized"
    stats = table.index_stats(name)
    return VectorIndexState(
        rows,
        name,
        str(stats.index_type) if stats else INDEX_TYPE,
        int(stats.num_unindexed_rows) if stats else rows,
        action,
        round(time.perf_counter() - started, 2),
    )


def _unindexed(table: lancedb.table.Table, name: str) -> int:
    stats = table.index_stats(name)
    return int(stats.num_unindexed_rows) if stats else table.count_rows()


def tuned(query, has_index: bool, filtered_rows: int | None = None):
    """A vector query with the measured search parameters when the table has an ANN index; a filter that
    matches `filtered_rows` <= EXACT_FILTER_ROWS is searched exactly over its rows instead."""
    if not has_index:
        return query
    if filtered_rows is not None and filtered_rows <= EXACT_FILTER_ROWS:
        return query.bypass_vector_index()
    return query.nprobes(NPROBES).refine_factor(REFINE_FACTOR)


@dataclass(frozen=True)
class RecallReport:
    """ANN top-k against exact top-k on the same queries: the mean overlap and the worst query."""

    queries: int
    recall: float
    worst: float
    exact_ms_p50: float
    ann_ms_p50: float


def measure_recall(table: lancedb.table.Table, vectors: Sequence[np.ndarray], k: int = RECALL_K):
    """recall@k of the table's ANN index against exact search, over the query `vectors`. The exact top-k
    of every query comes from one streamed pass over the table's vectors (not one full scan per query)."""
    exact, exact_seconds = exact_top_k(table, vectors, k)
    recalls, ann_ms = [], []
    for vector, truth in zip(vectors, exact, strict=True):
        started = time.perf_counter()
        approximate = _ids(tuned(table.search(vector).distance_type("cosine"), True), k)
        ann_ms.append((time.perf_counter() - started) * 1000)
        recalls.append(len(set(truth) & set(approximate)) / max(len(truth), 1))
    return RecallReport(
        queries=len(recalls),
        recall=round(statistics.mean(recalls), 4) if recalls else 1.0,
        worst=round(min(recalls), 4) if recalls else 1.0,
        exact_ms_p50=round(exact_seconds * 1000 / max(len(recalls), 1), 2),
        ann_ms_p50=round(statistics.median(ann_ms), 2) if ann_ms else 0.0,
    )


def exact_top_k(
    table: lancedb.table.Table, vectors: Sequence[np.ndarray], k: int
) -> tuple[list[list[str]], float]:
    """Each query's k nearest chunk ids by cosine similarity over every row, in one pass of batches; and
    the seconds the pass took."""
    started = time.perf_counter()
    queries = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(queries), 0), dtype=object)
    for batch in table.search().select(["chunk_id", VECTOR_COLUMN]).limit(None).to_batches(EXACT_BATCH):
        matrix = np.asarray(batch[VECTOR_COLUMN].flatten().to_numpy(zero_copy_only=False), np.float32)
        matrix = matrix.reshape(batch.num_rows, -1)
        matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        ids = np.asarray(batch["chunk_id"].to_pylist(), dtype=object)
        scores = np.concatenate([best_scores, queries @ matrix.T], axis=1)
        every = np.concatenate([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_ids = np.take_along_axis(every, keep, axis=1)
    return [list(row) for row in best_ids], time.perf_counter() - started


def _ids(query, k: int) -> list[str]:
    return query.select(["chunk_id"]).limit(k).to_arrow()["chunk_id"].to_pylist()
