"""Golden quality: nDCG@10 and recall@10 on judged queries, against a floor and the served version."""

from __future__ import annotations

import hashlib
import json

import lancedb

from embedding_assets import metadata as md
from embedding_assets.index import store, tables
from embedding_assets.models.registry import GateThresholds, ModelRegistry, ModelVersion
from embedding_assets.quality.evaluation import RANKING, JudgedQueries, evaluate, restrict_to
from embedding_assets.quality.gates.outcome import GateOutcome, markdown_table
from embedding_assets.serving.pointer import ServingPointer, ServingState
from embedding_assets.serving.search import Searcher, searcher_for_state

METRICS = ("ndcg@10", "recall@10", "recall@100")
JUDGED_SET = "judged_set"  # digest of the queries and judgments a score was measured on
TABLE_VERSION = "table_version"  # the table version a candidate's score was measured on
SERVED_SCORES_RECORDED = "served_scores_recorded"  # the served state's scores came from its own gate


def judged_digest(judged: JudgedQueries) -> int:
    """A digest of the queries, their judgments and how results are ranked (60 bits, a number so the
    serving history keeps it): two scores are comparable only if theirs match."""
    parts = [sorted(judged.queries.items()), sorted(judged.qrels.items()), RANKING]
    canonical = json.dumps(parts, sort_keys=True)
    return int(hashlib.sha256(canonical.encode()).hexdigest()[:15], 16)


def recorded_scores(served: ServingState, gate: str, digest: int) -> dict | None:
    """The served state's own scores, as its gate `gate` recorded them when it allowed that state, if
    they were measured on the table version it judged (that one, or one maintenance made of the same rows)
    with the same judged set; else None."""
    record = served.gates.get(gate) or {}
    same = record.get(TABLE_VERSION) == served.judged_version and record.get(JUDGED_SET) == digest
    return {m: record[m] for m in METRICS} if same and all(m in record for m in METRICS) else None


def golden_quality(
    db: lancedb.DBConnection,
    version: ModelVersion,
    pointer: ServingPointer,
    registry: ModelRegistry,
    judged: JudgedQueries,
    thresholds: GateThresholds,
    gate: str,
) -> GateOutcome:
    """Score this version's index and the served state on the same judged queries (those whose judged
    documents are in the corpus now); block under the floors or more than the margin below served.

    A table version's scores never change, so the served state is scored again only when its own gate
    `gate` did not record them on the same judged set (a refresh of the served version then evaluates
    one table, not two)."""
    corpus_ids = set(store.read_columns(db, tables.DOCUMENTS_TABLE, ["doc_id"])["doc_id"].to_pylist())
    scoped = restrict_to(judged, corpus_ids)
    digest = judged_digest(scoped)
    metadata: dict = {
        "judged_queries": len(judged.queries),
        "queries_scored": len(scoped.queries),
        JUDGED_SET: digest,
        "ndcg@10_floor": thresholds.golden_ndcg_floor,
        "recall@10_floor": thresholds.golden_recall_floor,
        "ndcg@10_margin": thresholds.golden_ndcg_margin,
    }
    if not scoped.queries:
        return GateOutcome("block", "no judged query has a judged document in this corpus", metadata)
    searcher = Searcher(db, version)
    candidate = evaluate(searcher, scoped, progress=False, memo=(db, version.id))
    metadata.update({TABLE_VERSION: searcher.table.version, **{m: candidate[m] for m in METRICS}})
    reasons = []
    if candidate["ndcg@10"] < thresholds.golden_ndcg_floor:
        reasons.append(f"nDCG@10 {candidate['ndcg@10']:.4f} < floor {thresholds.golden_ndcg_floor}")
    if candidate["recall@10"] < thresholds.golden_recall_floor:
        reasons.append(f"recall@10 {candidate['recall@10']:.4f} < floor {thresholds.golden_recall_floor}")
    rows = [[version.id, "candidate", *(candidate[m] for m in METRICS)]]
    served = pointer.current()
    if served is not None:
        recorded = recorded_scores(served, gate, digest)
        baseline = recorded or evaluate(searcher_for_state(served, db, registry), scoped, progress=False)
        drop = baseline["ndcg@10"] - candidate["ndcg@10"]
        metadata.update(
            {
                md.SERVED_VERSION: served.version,
                "served_table_version": served.table_version,
                SERVED_SCORES_RECORDED: recorded is not None,  # else evaluated now
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
