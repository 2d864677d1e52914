"""Approximate nearest-neighbour search for large versions.

A version's index table gets an IVF_HNSW_SQ vector index once it holds ANN_MIN_ROWS rows; below that,
exact search is fast enough and always right. Rows written after the index was trained are searched
exactly beside it (LanceDB merges both), so results stay correct as a table grows; `optimize()` folds
them into the index (and compacts the table) once they are more than OPTIMIZE_UNINDEXED of it. Each
optimize adds a delta segment to the index, and every segment is searched, so once the index has more
than MAX_INDEX_SEGMENTS it is trained again from all rows of a compacted table (one segment). Served
table versions are tagged, so compaction and cleanup never remove what serving or a rollback reads. The
index type and its parameters come from the measurements in docs/performance.md (`embedding-assets bench`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import lancedb
import numpy as np
import pyarrow.compute as pc
from lancedb.index import BTree, HnswSq
from tqdm.auto import tqdm

VECTOR_COLUMN = "vector"
KEY_COLUMNS = ("chunk_id", "doc_id")  # BTREE indexes: merges find keys, filters find their rows fast
ANN_MIN_ROWS = 100_000
INDEX_TYPE = "IVF_HNSW_SQ"
# Measured at 882,205 static vectors (256-d) on 2 cores, query encode included: IVF_PQ (940 partitions,
# one code per 4 dimensions) with nprobes 40 and refine 10 gave recall@10 0.92 at 26 ms, and needed refine
# 30 for 0.98 (29 ms). On the 119 judged queries, whose answers are the shipped documents' few chunks among
# 880,000 synthetic ones, a walk of 256 candidates missed whole regions (two queries found none of their
# ten). A walk's cost hardly depends on its candidates (ef 128 to 1,024 within 1 ms), but each graph
# searched costs its own: on the same 882,205 rows (219 queries, no AVX-512, refine 5), four graphs of
# 220,000 gave recall@10 0.971 at 24.0 ms (ef 512) after a 263 s build; one graph gave 0.967 at 12.8 ms
# (ef 512), 0.972 at 13.1 ms (ef 768) and 0.977 at 14.0 ms (ef 1,024) after a 460 s build. So one graph
# per million rows, walked with 768 candidates: half the latency for 200 s more of build at a million.
ROWS_PER_PARTITION = 1_000_000  # one HNSW graph per partition, every partition probed
# Graph build: 16 links per node and 120 candidates while linking built 100,000 rows 4.4x faster than
# LanceDB's defaults (20, 300) with the same recall@10 (0.993 at ef 256) and latency.
GRAPH_LINKS = 16
GRAPH_BUILD_EF = 120
NPROBES = 8  # at least the partitions of 8,000,000 rows; LanceDB probes only those a table has
EF = 768  # HNSW candidates kept while walking each graph
REFINE_FACTOR = 5  # re-rank 5x k candidates by their full vectors (SQ codes are 8-bit)
# Every segment is searched, and the data files of each are kept apart by compaction: at 100,000 rows 13
# segments searched 2.5x slower than a fresh index. One delta is allowed; the next optimize retrains.
MAX_INDEX_SEGMENTS = 2
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
    action: str  # "exact" (too small), "created", "optimized", "retrained" or "current"
    seconds: float

    def to_metadata(self) -> dict:
        return {f"ann_{k}": ("" if v is None else v) for k, v in asdict(self).items()}


def vector_index_name(table: lancedb.table.Table) -> str | None:
    """The name of the table's index on its vector column, at the table version checked out."""
    for config in table.list_indices():
        if VECTOR_COLUMN in config.columns and config.index_type.upper().startswith("IVF"):
            return config.name
    return None


def index_config(rows: int) -> HnswSq:
    """The vector index for `rows` vectors: one HNSW graph per ROWS_PER_PARTITION rows, cosine."""
    return HnswSq(
        distance_type="cosine",
        num_partitions=max(1, round(rows / ROWS_PER_PARTITION)),
        m=GRAPH_LINKS,
        ef_construction=GRAPH_BUILD_EF,
    )


def ensure_vector_index(table: lancedb.table.Table) -> VectorIndexState:
    """Create the vector index once the table is large enough; fold unindexed rows in when they are more
    than OPTIMIZE_UNINDEXED of the table; train it again once it has more than MAX_INDEX_SEGMENTS."""
    started = time.perf_counter()
    rows = table.count_rows()
    name = vector_index_name(table)
    if name is None and rows < ANN_MIN_ROWS:
        return VectorIndexState(rows, None, None, rows, "exact", 0.0)
    if name is None:
        for column in KEY_COLUMNS:
            if column in table.schema.names:
                table.create_index(column, config=BTree(), replace=True)
        table.create_index(VECTOR_COLUMN, config=index_config(rows))
        table.checkout_latest()
        name, action = vector_index_name(table), "created"
    else:
        action = "current"
        if _unindexed(table, name) > OPTIMIZE_UNINDEXED * rows:
            table.optimize()
            action = "optimized"
        if index_segments(table, name) > MAX_INDEX_SEGMENTS or _index_type(table, name) != INDEX_TYPE:
            # too many segments, or an index of another type (built before INDEX_TYPE was chosen)
            name, action = retrain(table, name, rows), "retrained"
    stats = table.index_stats(name)
    return VectorIndexState(
        rows,
        name,
        str(stats.index_type) if stats else INDEX_TYPE,
        int(stats.num_unindexed_rows) if stats else rows,
        action,
        round(time.perf_counter() - started, 2),
    )


def retrain(table: lancedb.table.Table, name: str, rows: int) -> str | None:
    """Train the vector index `name` again from all rows, as one segment; returns its new name.

    Compaction keeps apart the data files that different index segments cover, so the index is dropped
    first (from the latest table version only: tagged versions keep theirs), the table compacted into
    few files, and the index built on those (14 s instead of 46-85 s on 100,000 churned rows)."""
    table.drop_index(name)
    table.optimize()
    table.create_index(VECTOR_COLUMN, config=index_config(rows))
    table.checkout_latest()
    return vector_index_name(table)


def index_segments(table: lancedb.table.Table, name: str) -> int:
    """How many segments (the trained index and the deltas optimize() added) the index `name` has."""
    return next((config.num_segments for config in table.list_indices() if config.name == name), 0)


def _index_type(table: lancedb.table.Table, name: str) -> str | None:
    stats = table.index_stats(name)
    return str(stats.index_type) if stats else None


def _unindexed(table: lancedb.table.Table, name: str) -> int:
    stats = table.index_stats(name)
    return int(stats.num_unindexed_rows) if stats else table.count_rows()


def tuned(query, has_index: bool, filtered_rows: int | None = None, k: int = RECALL_K):
    """A vector query for the top `k` with the measured search parameters when the table has an ANN
    index; a filter that matches `filtered_rows` <= EXACT_FILTER_ROWS is searched exactly over its rows
    instead. HNSW keeps at least as many candidates as it is asked for (k times the refine factor): a
    golden-set evaluation asks for hundreds."""
    if not has_index:
        return query
    if filtered_rows is not None and filtered_rows <= EXACT_FILTER_ROWS:
        return query.bypass_vector_index()
    return query.nprobes(NPROBES).ef(max(EF, k * REFINE_FACTOR)).refine_factor(REFINE_FACTOR)


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
        approximate = _ids(tuned(table.search(vector).distance_type("cosine"), True, k=k), k)
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
    table: lancedb.table.Table,
    vectors: Sequence[np.ndarray],
    k: int,
    id_column: str = "chunk_id",
    *,
    progress: bool = False,
) -> tuple[list[list[str]], float]:
    """Each query's k nearest rows by cosine similarity over every row (their `id_column`, best first),
    in one pass of batches; and the seconds the pass took. Each batch gives up only its own top k per
    query (a partial sort), merged with the best so far."""
    started = time.perf_counter()
    queries = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(queries), 0), dtype=object)
    scan = table.search().select([id_column, VECTOR_COLUMN]).limit(None).to_batches(EXACT_BATCH)
    with tqdm(
        total=table.count_rows() if progress else None, desc="exact search", unit="rows", disable=not progress
    ) as bar:
        for batch in scan:
            bar.update(batch.num_rows)
            batch = batch.filter(pc.is_valid(batch[VECTOR_COLUMN]))  # a row without a vector ranks nowhere
            matrix = np.asarray(batch[VECTOR_COLUMN].flatten().to_numpy(zero_copy_only=False), np.float32)
            matrix = matrix.reshape(batch.num_rows, -1)
            matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
            scores = queries @ matrix.T
            top = _top_columns(scores, k)
            ids = np.asarray(batch[id_column].to_pylist(), dtype=object)
            scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
            every = np.concatenate([best_ids, ids[top]], axis=1)
            keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(scores, keep, axis=1)
            best_ids = np.take_along_axis(every, keep, axis=1)
    return [list(row) for row in best_ids], time.perf_counter() - started


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the k highest scores (in no particular order): a partial sort."""
    if scores.shape[1] <= k:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def _ids(query, k: int) -> list[str]:
    return query.select(["chunk_id"]).limit(k).to_arrow()["chunk_id"].to_pylist()
