"""ANN recall: the version's vector index against exact search on the judged queries; warns, never blocks.

It is measured once per state of the index: a run whose index is the one the last measurement saw (a
refresh changes no index; its new rows are searched exactly beside it) reports that measurement again.
The exact lists come from a memo of their own (`exact_memo`), so measuring again after maintenance, which
folds a refresh's rows into the index, scores only the rows written since the last measurement."""

from __future__ import annotations

import hashlib
import json
import time

import lancedb

from embedding_assets.index import ann, tables
from embedding_assets.models.embedders import Embedder
from embedding_assets.quality.exact_memo import exact_top_k_memoized
from embedding_assets.quality.gates.outcome import GateOutcome

INDEX_STATE = "index_state"  # what the measurement was taken on: the index build, search settings, queries
MEASURED_AGAIN = "measured_again"
MEMO = "ann_recall"  # the exact lists of its queries, kept between measurements (`exact_memo`)
CARRIED = ("queries", "recall@10", "worst_query_recall@10", "exact_ms_per_query", "ann_ms_p50")


def index_state(table: lancedb.table.Table, name: str, queries: list[str]) -> str:
    """A digest of the index as built (its uuid, creation time and segments: an optimize adds a segment,
    a retrain makes a new index), the search settings and the queries: two recall measurements with the
    same digest measure the same thing. Rows deleted or added since do not change it."""
    config = next(c for c in table.list_indices() if c.name == name)
    parts = [
        str(config.index_uuid),
        str(config.created_at),
        config.num_segments,
        [ann.NPROBES, ann.REFINE_FACTOR],
        queries,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def ann_recall(
    db: lancedb.DBConnection, embedder: Embedder, queries: list[str], previous: dict | None = None
) -> GateOutcome:
    """recall@10 of the ANN index against exact search on `queries`; warn below RECALL_WARN. `previous`
    is this check's last metadata on the version: reported again when it measured this same index."""
    table = db.open_table(tables.index_table(embedder.version.id))
    rows = table.count_rows()
    name = ann.vector_index_name(table)
    metadata: dict = {"rows": rows, "ann_min_rows": ann.ANN_MIN_ROWS, "recall@10_warn": ann.RECALL_WARN}
    if name is None:
        summary = f"exact search ({rows} rows; an ANN index from {ann.ANN_MIN_ROWS} rows)"
        return GateOutcome("pass", summary, metadata)
    stats = table.index_stats(name)
    state = index_state(table, name, queries)
    metadata.update(
        {
            "index": name,
            "index_type": str(stats.index_type) if stats else "",
            "unindexed_rows": int(stats.num_unindexed_rows) if stats else rows,
            "nprobes": ann.NPROBES,
            "index_segments": ann.index_segments(table, name),
            "refine_factor": ann.REFINE_FACTOR,
            INDEX_STATE: state,
        }
    )
    previous = previous or {}
    if previous.get(INDEX_STATE) == state and all(k in previous for k in CARRIED):
        metadata.update({**{k: previous[k] for k in CARRIED}, MEASURED_AGAIN: False})
        summary = (
            f"recall@10 {previous['recall@10']:.3f} as last measured: the index is unchanged since (rows "
            "written after it are searched exactly beside it)"
        )
    else:
        vectors = list(embedder.encode_queries(queries))
        started = time.perf_counter()
        exact, how = exact_top_k_memoized(
            db, embedder.version.id, table, vectors, ann.RECALL_K, "chunk_id", purpose=MEMO
        )
        report = ann.measure_recall(table, vectors, exact=(exact, time.perf_counter() - started))
        metadata.update(
            {
                "queries": report.queries,
                "recall@10": report.recall,
                "worst_query_recall@10": report.worst,
                "exact_ms_per_query": report.exact_ms_p50,
                "ann_ms_p50": report.ann_ms_p50,
                "exact_from": how,  # the memo (rows written since it scored) or a full pass
                MEASURED_AGAIN: True,
            }
        )
        summary = (
            f"recall@10 {report.recall:.3f} against exact on {report.queries} queries "
            f"(worst {report.worst:.2f}); {report.ann_ms_p50} ms a query, exact "
            f"{report.exact_ms_p50} ms a query ({how})"
        )
    return GateOutcome("warn" if metadata["recall@10"] < ann.RECALL_WARN else "pass", summary, metadata)
