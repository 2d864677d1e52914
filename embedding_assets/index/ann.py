"""Approximate nearest-neighbour search for large versions.

A version's index table gets an IVF_RQ vector index once it holds ANN_MIN_ROWS rows; below that,
exact search is fast enough and always right. Rows written after the index was trained are searched
exactly beside it (LanceDB merges both), so results stay correct as a table grows; `fold_in` indexes
them once they are more than OPTIMIZE_UNINDEXED of the table (index maintenance after a refresh folds
in any). Folding in adds the rows to each index with the trained partitions kept, merging its segments
into one past MAX_INDEX_SEGMENTS (a delta segment below), and once the table's size calls for other
partitions than the index has, it is trained again. Served table versions are tagged, so compaction and
cleanup never remove what serving or a rollback reads. The index type and its parameters come from the
measurements in docs/performance.md (`embedding-assets bench`).

Maintenance goes through Lance's own optimizer (pylance, the Lance release LanceDB 0.40 is built on),
not LanceDB's `optimize()`: that compacts every fragment of fewer than a million rows, so folding in a
1% edit rewrote the whole table (9.4 s at 248,861 rows), and it trained the vector index again with other
partitions than it was built with (499 became 16 at 248,861 rows; 939 became 428 at 882,205).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import BTree, IvfRq
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import lance

VECTOR_COLUMN = "vector"
KEY_COLUMNS = ("chunk_id", "doc_id")  # BTREE indexes: merges find keys, filters find their rows fast
ANN_MIN_ROWS = 100_000
INDEX_TYPE = "IVF_RQ"
# Measured at 882,205 static vectors (256-d) on 2 cores, 60 queries, query encode included. IVF_HNSW_SQ
# (one graph, ef 768, refine 5) gave recall@10 0.97 at 10-13 ms after a 460 s build, but any deleted row
# in its fragments (one was enough) made every walk 7 ms slower, each index segment 4 ms more, and a 1%
# edit left it at 38-45 ms until a compaction and a new 460 s build. IVF_RQ (RaBitQ codes of 4 bits per
# dimension, about sqrt(rows) partitions) built in 38 s and, with 9,810 rows deleted, gave recall@10 0.982
# at 10.5 ms probing 80 partitions with refine 5 (0.94 with 40 probes; 1-bit codes needed refine 20 and 80
# probes for 0.96 at 15 ms). After a 1% edit (8,723 rows rewritten) it searched in 16-17 ms, and 9-11.5 ms
# once `optimize()` (11 s) folded them in, recall 0.992.
# At 1,022,229 rows as three 1% edits and their maintenance left them (4,517 deleted, one segment; 100
# queries on 2 cores with AVX-512): 80 probes gave recall@10 0.969 at 11.4 ms, 100 0.975 at 12.0 ms, 120
# 0.978 at 12.5 ms, 160 0.986 at 14.3 ms (refine 10 instead of 5: the same recall, 0.6-1 ms slower).
RQ_BITS = 4
NPROBES = 100
REFINE_FACTOR = 5  # re-rank 5x k candidates by their full vectors
# Every segment is searched: on the 882,205 rows a second segment cost 2.5 ms, at 1,022,229 rows 1.6 ms
# (12.5 against 10.9 ms). So each fold-in merges the new rows and the segment into one, on the trained
# partitions: after a 1% edit at 1,022,229 rows the maintenance took 5.8 s merging, 1.5 s adding a delta.
MAX_INDEX_SEGMENTS = 1
# The index is trained again (from all rows) once sqrt(rows) partitions and the partitions it has differ
# by more than this factor: its partitions follow the table's growth.
RETRAIN_PARTITIONS_RATIO = 2.0
# Compaction rewrites only fragments of fewer rows than this, and those with more than
# MATERIALIZE_DELETIONS of their rows deleted: a refresh's small fragments are merged, the large ones a
# build wrote are left alone until enough of their rows are replaced.
COMPACT_TARGET_ROWS = 32_768
MATERIALIZE_DELETIONS = 0.1
# Any deleted row costs every ANN query of the table, and each more a little: at 1,022,229 static vectors
# in 9 fragments with one index segment, p50 7.6 ms with none deleted, 11.5 ms with 2,531, 12.1 ms with
# 5,055 and 10,090, 17.5 ms with 30,129 (2 cores with AVX-512; nprobes 80, refine 5). A 1% edit there
# deletes 10,000 rows spread over every fragment, far under MATERIALIZE_DELETIONS of each, and three
# left the served table at 18.3 ms. Once a table holds more deleted rows than this, compaction also
# rewrites the fragments with the largest shares of deleted rows until those left hold at most half.
MAX_DELETED_ROWS = 10_000
KEEP_VERSIONS = timedelta(days=7)  # untagged table versions older than this are cleaned up
# A filter matching at most this many rows is searched exactly over those rows (through the BTREE on the
# key): an IVF probe of a few partitions misses most of a selective filter's rows (recall 0.79-0.90).
EXACT_FILTER_ROWS = 50_000
OPTIMIZE_UNINDEXED = 0.05
RECALL_K = 10
EXACT_BATCH = 65_536  # rows scored against every query at a time by the exact pass
RECALL_WARN = 0.95
LATENCY_QUERIES = 10  # queries a recall measurement also times one at a time (its ann_ms_p50)


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


def index_config(rows: int) -> IvfRq:
    """The vector index for `rows` vectors: about sqrt(rows) IVF partitions of RQ_BITS-bit RaBitQ codes,
    cosine."""
    return IvfRq(distance_type="cosine", num_partitions=partitions_for(rows), num_bits=RQ_BITS)


def partitions_for(rows: int) -> int:
    """IVF partitions for `rows` vectors: about sqrt(rows), so a probe scans a few hundred to a few
    thousand codes."""
    return max(1, round(math.sqrt(rows)))


def ensure_vector_index(
    table: lancedb.table.Table, fold_share: float = OPTIMIZE_UNINDEXED
) -> VectorIndexState:
    """Create the vector index once the table is large enough; fold unindexed rows in when they are more
    than `fold_share` of the table (0: any), or train it again instead when its partitions no longer fit
    the table's size; replace an index of another type."""
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
        if _index_type(table, name) != INDEX_TYPE:  # built before INDEX_TYPE was chosen
            name, action = retrain(table, name, rows), "retrained"
        elif unindexed_in(table, name) > fold_share * rows:
            if _off_partitions(table, name, rows):  # too many or too few for the table as it is now
                name, action = retrain(table, name, rows), "retrained"
            else:
                fold_in(table, name)
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


def retrain(table: lancedb.table.Table, name: str, rows: int) -> str | None:
    """Train the vector index `name` again from all rows, as one segment; returns its new name.

    Compaction keeps apart the data files that different index segments cover, so the index is dropped
    first (from the latest table version only: tagged versions keep theirs), the table compacted, and the
    index built on that (14 s instead of 46-85 s on 100,000 churned rows)."""
    table.drop_index(name)
    table.checkout_latest()
    _compact(table)
    table.create_index(VECTOR_COLUMN, config=index_config(rows))
    table.checkout_latest()
    return vector_index_name(table)


def fold_in(table: lancedb.table.Table, name: str) -> None:
    """Index every row the indexes do not cover, assigned to the trained partitions: as a delta segment
    of each index, or, once the vector index has MAX_INDEX_SEGMENTS, merged with its segments into one.
    Then compact and clean up."""
    segments = index_segments(table, name)
    merged = segments if segments >= MAX_INDEX_SEGMENTS else 0  # 0: the new rows as a delta segment
    table.to_lance().optimize.optimize_indices(num_indices_to_merge=merged)
    table.checkout_latest()
    _compact(table)


def _compact(table: lancedb.table.Table) -> None:
    """Merge the small fragments, rewrite those with many deleted rows (the indexes follow the rows they
    moved), and clean up untagged versions older than KEEP_VERSIONS."""
    dataset = table.to_lance()
    dataset.optimize.compact_files(
        target_rows_per_fragment=COMPACT_TARGET_ROWS,
        materialize_deletions_threshold=deletions_threshold(dataset),
    )
    dataset.cleanup_old_versions(older_than=KEEP_VERSIONS, error_if_tagged_old_versions=False)
    table.checkout_latest()


def deletions_threshold(dataset: lance.LanceDataset) -> float:
    """The share of a fragment's rows deleted past which compaction rewrites it: MATERIALIZE_DELETIONS
    while the table has at most MAX_DELETED_ROWS deleted; past that, low enough that the fragments with
    the largest shares are rewritten until the rest hold at most half of it."""
    fragments = [
        (
            f.metadata.deletion_file.num_deleted_rows if f.metadata.deletion_file else 0,
            f.metadata.physical_rows,
        )
        for f in dataset.get_fragments()
    ]
    left = sum(deleted for deleted, _ in fragments)
    if left <= MAX_DELETED_ROWS:
        return MATERIALIZE_DELETIONS
    threshold = MATERIALIZE_DELETIONS
    for deleted, physical in sorted(fragments, key=lambda f: f[0] / max(f[1], 1), reverse=True):
        if left <= MAX_DELETED_ROWS / 2:
            break
        # under this fragment's share, by more than float32 rounding: Lance rewrites the fragments whose
        # share exceeds its (float32) threshold
        threshold, left = deleted / physical * 0.999, left - deleted
    return min(threshold, MATERIALIZE_DELETIONS)


def index_partitions(table: lancedb.table.Table, name: str) -> int:
    """The IVF partitions of the vector index `name` (of its largest segment)."""
    segments = table.to_lance().stats.index_stats(name)["indices"]
    return max(segments, key=lambda s: sum(p["size"] for p in s["partitions"]))["num_partitions"]


def _off_partitions(table: lancedb.table.Table, name: str, rows: int) -> bool:
    """Whether the vector index's partitions (of its largest segment) are more than
    RETRAIN_PARTITIONS_RATIO away from the `partitions_for(rows)` the table's size calls for."""
    trained, wanted = index_partitions(table, name), partitions_for(rows)
    return max(trained, wanted) > RETRAIN_PARTITIONS_RATIO * min(trained, wanted)


def index_segments(table: lancedb.table.Table, name: str) -> int:
    """How many segments (the trained index and the deltas optimize() added) the index `name` has."""
    return next((config.num_segments for config in table.list_indices() if config.name == name), 0)


def _index_type(table: lancedb.table.Table, name: str) -> str | None:
    stats = table.index_stats(name)
    return str(stats.index_type) if stats else None


def unindexed_in(table: lancedb.table.Table, name: str) -> int:
    """Rows the index `name` does not cover yet (every row if it has no statistics)."""
    stats = table.index_stats(name)
    return int(stats.num_unindexed_rows) if stats else table.count_rows()


def unindexed_rows(table: lancedb.table.Table) -> int:
    """Rows searched exactly beside the table's vector index (0 without an index: every row is)."""
    name = vector_index_name(table)
    return unindexed_in(table, name) if name else 0


def tuned(query, has_index: bool, filtered_rows: int | None = None):
    """A vector query with the measured search parameters when the table has an ANN
    index; a filter that matches `filtered_rows` <= EXACT_FILTER_ROWS is searched exactly over its rows
    instead."""
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


def measure_recall(
    table: lancedb.table.Table,
    vectors: Sequence[np.ndarray],
    k: int = RECALL_K,
    exact: tuple[list[list[str]], float] | None = None,
) -> RecallReport:
    """recall@k of the table's ANN index against exact search, over the query `vectors`. The exact top-k
    of every query comes from one streamed pass over the table's vectors (not one full scan per query),
    or from `exact` (ids and the seconds they took) when the caller has them; the ANN top-k from one
    multi-vector query. Latency is timed on LATENCY_QUERIES of them searched one at a time, as served."""
    exact_ids, exact_seconds = exact if exact is not None else exact_top_k(table, vectors, k)
    approximate = ann_top_k(table, vectors, k)
    recalls = [
        len(set(truth) & set(found)) / max(len(truth), 1)
        for truth, found in zip(exact_ids, approximate, strict=True)
    ]
    ann_ms = []
    for vector in vectors[:LATENCY_QUERIES]:
        started = time.perf_counter()
        _ids(tuned(table.search(vector).distance_type("cosine"), True), k)
        ann_ms.append((time.perf_counter() - started) * 1000)
    return RecallReport(
        queries=len(recalls),
        recall=round(statistics.mean(recalls), 4) if recalls else 1.0,
        worst=round(min(recalls), 4) if recalls else 1.0,
        exact_ms_p50=round(exact_seconds * 1000 / max(len(recalls), 1), 2),
        ann_ms_p50=round(statistics.median(ann_ms), 2) if ann_ms else 0.0,
    )


def ann_top_k(table: lancedb.table.Table, vectors: Sequence[np.ndarray], k: int) -> list[list[str]]:
    """Each query's top-k chunk ids through the ANN index with the measured search parameters, all
    queries in one multi-vector query (one plan, one pass over the probed partitions)."""
    if not len(vectors):
        return []
    query = tuned(table.search([np.asarray(v, np.float32) for v in vectors]).distance_type("cosine"), True)
    hits = query.select(["chunk_id"]).limit(k).to_arrow()
    owner = hits["query_index"].to_pylist() if "query_index" in hits.column_names else [0] * hits.num_rows
    found: list[list[str]] = [[] for _ in vectors]
    for i, chunk_id in zip(owner, hits["chunk_id"].to_pylist(), strict=True):
        found[i].append(chunk_id)
    return found


def exact_top_k(
    table: lancedb.table.Table,
    vectors: Sequence[np.ndarray],
    k: int,
    id_column: str = "chunk_id",
    *,
    progress: bool = False,
) -> tuple[list[list[str]], float]:
    """Each query's k nearest rows by cosine similarity over every row (their `id_column`, best first),
    in one pass of batches; and the seconds the pass took."""
    started = time.perf_counter()
    top = TopK(np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1), k)
    with tqdm(
        total=table.count_rows() if progress else None, desc="exact search", unit="rows", disable=not progress
    ) as bar:
        scan_into(top, table, [id_column], lambda rows: rows[id_column].to_numpy(zero_copy_only=False), bar)
    return top.ids(), time.perf_counter() - started


def scan_into(top: TopK, table: lancedb.table.Table, columns: list[str], ids_of, bar=None) -> None:
    """Score every row of `table` into `top`, EXACT_BATCH rows at a time; `ids_of(rows)` names them
    (from `columns`); `bar`, a progress bar, counts the rows."""
    for batch in table.search().select([*columns, VECTOR_COLUMN]).limit(None).to_batches(EXACT_BATCH):
        if bar is not None:
            bar.update(batch.num_rows)
        batch, matrix = vectors_of(batch)
        top.add(matrix, ids_of(batch))


def vectors_of(batch: pa.RecordBatch | pa.Table) -> tuple[pa.RecordBatch | pa.Table, np.ndarray]:
    """The rows of `batch` that have a vector (a row without one ranks nowhere), and those vectors."""
    batch = batch.filter(pc.is_valid(batch[VECTOR_COLUMN]))
    flat = batch[VECTOR_COLUMN]
    flat = flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat
    matrix = np.asarray(flat.flatten().to_numpy(zero_copy_only=False), np.float32)
    return batch, matrix.reshape(batch.num_rows, -1)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


class TopK:
    """The k best rows per query by cosine similarity, merged batch by batch. Once a query holds k rows,
    a batch gives it only the rows scoring above its k-th best (a comparison, not a sort, for the rest);
    ties keep the row seen first. A query may start from a list it already had (`seed`)."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = unit_rows(queries), k
        self.scores = [np.empty(0, np.float32) for _ in range(len(queries))]
        self.rows: list[np.ndarray] = [np.empty(0, object) for _ in range(len(queries))]

    def seed(self, query: int, rows: np.ndarray, scores: np.ndarray) -> None:
        order = np.argsort(-scores, kind="stable")[: self.k]
        self.rows[query], self.scores[query] = rows[order], scores[order].astype(np.float32)

    def add(self, matrix: np.ndarray, ids: np.ndarray, floors: np.ndarray | None = None) -> None:
        """Score the rows `matrix` (their `ids`) against every query; a query takes only rows above its
        k-th best, and above its entry in `floors` when given."""
        if not len(matrix) or not len(self.queries):
            return
        scores = self.queries @ unit_rows(matrix).T
        bars = self.floors() if floors is None else np.maximum(self.floors(), floors)
        above = scores > bars[:, None]
        counts = above.sum(axis=1)
        for query in np.flatnonzero(counts):
            columns = np.flatnonzero(above[query])
            if len(columns) > self.k:  # a partial sort: only the batch's own k best can enter
                columns = columns[np.argpartition(-scores[query, columns], self.k - 1)[: self.k]]
                columns.sort()  # back in row order, so ties keep the row seen first
            merged = np.concatenate([self.scores[query], scores[query, columns]])
            keep = np.argsort(-merged, kind="stable")[: self.k]
            self.scores[query] = merged[keep]
            self.rows[query] = np.concatenate([self.rows[query], ids[columns]])[keep]

    def floors(self) -> np.ndarray:
        """Per query, a score no row left out of its list exceeds (-inf while the list is not full)."""
        return np.array([s[-1] if len(s) == self.k else -np.inf for s in self.scores], np.float32)

    def ids(self) -> list[list[str]]:
        return [list(rows) for rows in self.rows]


def _ids(query, k: int) -> list[str]:
    return query.select(["chunk_id"]).limit(k).to_arrow()["chunk_id"].to_pylist()
