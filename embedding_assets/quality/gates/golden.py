"""Golden quality: nDCG@10 and recall@10 on judged queries, against floors and the served version.

The comparison with the served version is paired: both answer the same queries, so the gate reads the
paired bootstrap interval of the mean nDCG@10 difference (quality/bootstrap.py), not the point estimate.
It blocks when the whole interval lies more than the margin below zero (the candidate is worse, not
unlucky on a few queries) and warns when only part of it does (such a drop cannot be ruled out). The
same rule holds for each slice of the queries with enough of them (document kind, source; quality/
slices.py) with the slice margin, so an average hides no group that got worse. Per-query wins and
losses name the queries that moved."""

from __future__ import annotations

import hashlib
import json

import lancedb
import pyarrow as pa

from embedding_assets import metadata as md
from embedding_assets.index import store, tables
from embedding_assets.models.registry import GateThresholds, ModelRegistry, ModelVersion
from embedding_assets.quality.bootstrap import PairedDelta, paired_bootstrap
from embedding_assets.quality.evaluation import (
    METRICS,
    RANKING,
    JudgedQueries,
    mean_scores,
    restrict_to,
    score_queries,
)
from embedding_assets.quality.gates.outcome import GateOutcome, Level, markdown_table
from embedding_assets.quality.slices import query_slices
from embedding_assets.serving.pointer import ServingPointer, ServingState
from embedding_assets.serving.search import Searcher, searcher_for_state

JUDGED_SET = "judged_set"  # digest of the queries and judgments a score was measured on
TABLE_VERSION = "table_version"  # the table version a candidate's score was measured on
SERVED_SCORES_RECORDED = "served_scores_recorded"  # the served state's scores came from its own gate
PER_QUERY = md.PER_QUERY_NDCG
NDCG = METRICS[0]
MOVED_SHOWN = 5  # queries listed among the largest losses and wins


def judged_digest(judged: JudgedQueries) -> int:
    """A digest of the queries, their judgments and how results are ranked (60 bits, a number so the
    serving history keeps it): two scores are comparable only if theirs match."""
    parts = [sorted(judged.queries.items()), sorted(judged.qrels.items()), RANKING]
    canonical = json.dumps(parts, sort_keys=True)
    return int(hashlib.sha256(canonical.encode()).hexdigest()[:15], 16)


def recorded_scores(served: ServingState, gate: str, digest: int) -> dict | None:
    """The served state's own scores, as its gate `gate` recorded them when it allowed that state, if
    they were measured on the table version it judged (that one, or one maintenance made of the same rows)
    with the same judged set; else None. The per-query scores come along where the record kept them."""
    record = served.gates.get(gate) or {}
    same = record.get(TABLE_VERSION) == served.judged_version and record.get(JUDGED_SET) == digest
    if not same or not all(m in record for m in METRICS):
        return None
    return {m: record[m] for m in METRICS} | ({PER_QUERY: record[PER_QUERY]} if PER_QUERY in record else {})


def judged_in_corpus(db: lancedb.DBConnection, judged: JudgedQueries) -> tuple[JudgedQueries, dict[str, str]]:
    """The judged queries restricted to documents in the corpus now, and those documents' source URIs:
    only the judged documents are looked up, never the whole documents table."""
    wanted = sorted({doc for grades in judged.qrels.values() for doc in grades})
    found = store.rows_for_keys(
        db, tables.DOCUMENTS_TABLE, "doc_id", pa.array(wanted, pa.string()), ["doc_id", "source_uri"]
    )
    sources = dict(zip(found["doc_id"].to_pylist(), found["source_uri"].to_pylist(), strict=True))
    return restrict_to(judged, set(sources)), sources


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
    documents are in the corpus now); block under the floors, or where the paired interval says the
    candidate is worse than served by more than the margin, overall or in a slice.

    A table version's scores never change, so the served state is scored again only when its own gate
    `gate` did not record them, per query, on the same judged set (a refresh of the served version then
    evaluates one table, not two)."""
    scoped, sources = judged_in_corpus(db, judged)
    digest = judged_digest(scoped)
    metadata: dict = {
        "judged_queries": len(judged.queries),
        "queries_scored": len(scoped.queries),
        JUDGED_SET: digest,
        "ndcg@10_floor": thresholds.golden_ndcg_floor,
        "recall@10_floor": thresholds.golden_recall_floor,
        "ndcg@10_margin": thresholds.golden_ndcg_margin,
        "slice_margin": thresholds.golden_slice_margin,
    }
    if not scoped.queries:
        return GateOutcome("block", "no judged query has a judged document in this corpus", metadata)
    searcher = Searcher(db, version)
    scores = score_queries(searcher, scoped, memo=(db, version.id))
    candidate = mean_scores(scores)
    per_query = {q: s[NDCG] for q, s in scores.items()}
    metadata.update(
        {TABLE_VERSION: searcher.table.version, **{m: candidate[m] for m in METRICS}, PER_QUERY: per_query}
    )
    blocks: list[str] = []
    warnings: list[str] = []
    if candidate[NDCG] < thresholds.golden_ndcg_floor:
        blocks.append(f"nDCG@10 {candidate[NDCG]:.4f} < floor {thresholds.golden_ndcg_floor}")
    if candidate["recall@10"] < thresholds.golden_recall_floor:
        blocks.append(f"recall@10 {candidate['recall@10']:.4f} < floor {thresholds.golden_recall_floor}")
    rows = [[version.id, "candidate", *(candidate[m] for m in METRICS)]]
    served = pointer.current()
    if served is not None:
        recorded = recorded_scores(served, gate, digest)
        kept = recorded is not None and PER_QUERY in recorded
        if kept:
            baseline, served_per_query = recorded, recorded[PER_QUERY]
        else:
            served_scores = score_queries(searcher_for_state(served, db, registry), scoped)
            baseline, served_per_query = (
                mean_scores(served_scores),
                {q: s[NDCG] for q, s in served_scores.items()},
            )
        delta = paired_bootstrap(per_query, served_per_query)
        metadata.update(
            {
                md.SERVED_VERSION: served.version,
                "served_table_version": served.table_version,
                SERVED_SCORES_RECORDED: kept,  # else evaluated now
                **{f"served_{m}": baseline[m] for m in METRICS},
                "ndcg@10_drop_vs_served": round(baseline[NDCG] - candidate[NDCG], 4),
                "confidence": delta.confidence,
                **delta.as_metadata(),
            }
        )
        rows.append(
            [served.version, f"served (table v{served.table_version})", *(baseline[m] for m in METRICS)]
        )
        judge_delta("all queries", delta, thresholds.golden_ndcg_margin, blocks, warnings)
        metadata["slices"] = slice_table(
            query_slices(scoped.qrels, sources), per_query, served_per_query, thresholds, blocks, warnings
        )
        metadata["queries_moved"] = moved_table(scoped, per_query, served_per_query)
    metadata["comparison"] = markdown_table(["version", "state", *METRICS], rows)
    summary = f"nDCG@10 {candidate[NDCG]:.4f}, recall@10 {candidate['recall@10']:.4f}"
    if served is not None:
        summary += f"; vs served {served.version}: {delta.describe()}"
    if blocks:
        return GateOutcome("block", "; ".join([*blocks, *warnings]), metadata)
    level: Level = "warn" if warnings else "pass"
    return GateOutcome(level, "; ".join([*warnings, summary]) if warnings else summary, metadata)


def judge_delta(name: str, delta: PairedDelta, margin: float, blocks: list[str], warnings: list[str]) -> str:
    """Add a block when the whole interval is past `margin` below zero, a warning when part of it is;
    return the verdict ("worse", "not ruled out" or "ok")."""
    if delta.worse_beyond(margin):
        blocks.append(f"{name}: nDCG@10 worse than served beyond the margin {margin}: {delta.describe()}")
        return "worse"
    if delta.may_be_worse_beyond(margin):
        warnings.append(f"{name}: a drop beyond the margin {margin} is not ruled out: {delta.describe()}")
        return "not ruled out"
    return "ok"


def slice_table(
    slices: dict[str, list[str]],
    candidate: dict[str, float],
    served: dict[str, float],
    thresholds: GateThresholds,
    blocks: list[str],
    warnings: list[str],
):
    """Each slice's paired interval, judged when it holds enough queries; a markdown table of them."""
    rows = []
    for name, queries in slices.items():
        delta = paired_bootstrap(
            {q: candidate[q] for q in queries}, {q: served[q] for q in queries if q in served}
        )
        verdict = (
            judge_delta(f"slice {name}", delta, thresholds.golden_slice_margin, blocks, warnings)
            if delta.queries >= thresholds.golden_slice_queries
            else "too few queries"
        )
        rows.append(
            [name, delta.queries, delta.mean, delta.low, delta.high, delta.wins, delta.losses, verdict]
        )
    header = ["slice", "queries", "Δ nDCG@10", "low", "high", "better", "worse", "verdict"]
    return markdown_table(header, rows)


def moved_table(judged: JudgedQueries, candidate: dict[str, float], served: dict[str, float]):
    """The queries that lost and gained the most nDCG@10, with their text."""
    moves = sorted((candidate[q] - served[q], q) for q in candidate if q in served)
    shown = [m for m in moves[:MOVED_SHOWN] if m[0] < 0] + [m for m in moves[::-1][:MOVED_SHOWN] if m[0] > 0]
    rows = [[q, judged.queries[q], served[q], candidate[q], change] for change, q in shown]
    return markdown_table(["query", "text", "served", "candidate", "Δ"], rows)
