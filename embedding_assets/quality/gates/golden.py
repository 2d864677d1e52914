"""Golden quality: nDCG@10 and recall@10 on judged queries, against a floor and the served version."""

from __future__ import annotations

import lancedb

from embedding_assets.index import store, tables
from embedding_assets.models.registry import GateThresholds, ModelRegistry, ModelVersion
from embedding_assets.quality.evaluation import JudgedQueries, evaluate, restrict_to
from embedding_assets.quality.gates.outcome import GateOutcome, markdown_table
from embedding_assets.serving.pointer import ServingPointer
from embedding_assets.serving.search import Searcher, searcher_for_state

METRICS = ("ndcg@10", "recall@10", "recall@100")


def golden_quality(
    db: lancedb.DBConnection,
    version: ModelVersion,
    pointer: ServingPointer,
    registry: ModelRegistry,
    judged: JudgedQueries,
    thresholds: GateThresholds,
) -> GateOutcome:
    """Score this version's index and the served state on the same judged queries (those whose judged
    documents are in the corpus now); block under the floors or more than the margin below served."""
    corpus_ids = set(store.read_columns(db, tables.DOCUMENTS_TABLE, ["doc_id"])["doc_id"].to_pylist())
    scoped = restrict_to(judged, corpus_ids)
    metadata: dict = {
        "judged_queries": len(judged.queries),
        "queries_scored": len(scoped.queries),
        "ndcg@10_floor": thresholds.golden_ndcg_floor,
        "recall@10_floor": thresholds.golden_recall_floor,
        "ndcg@10_margin": thresholds.golden_ndcg_margin,
    }
    if not scoped.queries:
        return GateOutcome("block", "no judged query has a judged document in this corpus", metadata)
    candidate = evaluate(Searcher(db, version), scoped, progress=False)
    metadata.update({m: candidate[m] for m in METRICS})
    reasons = []
    if candidate["ndcg@10"] < thresholds.golden_ndcg_floor:
        reasons.append(f"nDCG@10 {candidate['ndcg@10']:.4f} < floor {thresholds.golden_ndcg_floor}")
    if candidate["recall@10"] < thresholds.golden_recall_floor:
        reasons.append(f"recall@10 {candidate['recall@10']:.4f} < floor {thresholds.golden_recall_floor}")
    rows = [[version.id, "candidate", *(candidate[m] for m in METRICS)]]
    served = pointer.current()
    if served is not None:
        baseline = evaluate(searcher_for_state(served, db, registry), scoped, progress=False)
        drop = baseline["ndcg@10"] - candidate["ndcg@10"]
        metadata.update(
            {
                "served_version": served.version,
                "served_table_version": served.table_version,
                **{f"served_{m}": baseline[m] for m in METRICS},
                "ndcg@10_drop_vs_served": round(drop, 4),
            }
        )
        rows.append(
            [served.version, f"served (table v{served.table_version})", *(baseline[m] for m in METRICS)]
        )
        if drop > thresholds.golden_ndcg_margin:
            reasons.append(
                f"nDCG@10 {candidate['ndcg@10']:.4f} is {drop:.4f} below served {served.version} "
                f"({baseline['ndcg@10']:.4f}); margin {thresholds.golden_ndcg_margin}"
            )
    metadata["comparison"] = markdown_table(["version", "state", *METRICS], rows)
    if reasons:
        return GateOutcome("block", "; ".join(reasons), metadata)
    return GateOutcome(
        "pass", f"nDCG@10 {candidate['ndcg@10']:.4f}, recall@10 {candidate['recall@10']:.4f}", metadata
    )
