"""ANN recall: the version's vector index against exact search on the judged queries; warns, never blocks."""

from __future__ import annotations

import lancedb

from embedding_assets.index import ann, tables
from embedding_assets.models.embedders import Embedder
from embedding_assets.quality.gates.outcome import GateOutcome


def ann_recall(db: lancedb.DBConnection, embedder: Embedder, queries: list[str]) -> GateOutcome:
    """recall@10 of the ANN index against exact search on `queries`; warn below RECALL_WARN."""
    table = db.open_table(tables.index_table(embedder.version.id))
    rows = table.count_rows()
    name = ann.vector_index_name(table)
    metadata: dict = {"rows": rows, "ann_min_rows": ann.ANN_MIN_ROWS, "recall@10_warn": ann.RECALL_WARN}
    if name is None:
        summary = f"exact search ({rows} rows; an ANN index from {ann.ANN_MIN_ROWS} rows)"
        return GateOutcome("pass", summary, metadata)
    report = ann.measure_recall(table, list(embedder.encode_queries(queries)))
    stats = table.index_stats(name)
    metadata.update(
        {
            "index": name,
            "index_type": str(stats.index_type) if stats else "",
            "unindexed_rows": int(stats.num_unindexed_rows) if stats else rows,
            "nprobes": ann.NPROBES,
            "ef": ann.EF,
            "index_segments": ann.index_segments(table, name),
            "refine_factor": ann.REFINE_FACTOR,
            "queries": report.queries,
            "recall@10": report.recall,
            "worst_query_recall@10": report.worst,
            "exact_ms_per_query": report.exact_ms_p50,
            "ann_ms_p50": report.ann_ms_p50,
        }
    )
    summary = (
        f"recall@10 {report.recall:.3f} against exact on {report.queries} queries "
        f"(worst {report.worst:.2f}); {report.ann_ms_p50} ms a query, exact "
        f"{report.exact_ms_p50} ms a query in one pass"
    )
    return GateOutcome("warn" if report.recall < ann.RECALL_WARN else "pass", summary, metadata)
