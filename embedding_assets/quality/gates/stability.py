"""Neighbour stability: do fixed queries still find the same documents as the last served state?"""

from __future__ import annotations

import hashlib
import json

import lancedb

from embedding_assets.index import store
from embedding_assets.models.registry import GateThresholds, ModelRegistry, ModelRegistryError, ModelVersion
from embedding_assets.quality.evaluation import ranked_documents
from embedding_assets.quality.gates.outcome import GateOutcome, level_for, markdown_table
from embedding_assets.serving.pointer import ServingPointer, ServingState
from embedding_assets.serving.search import (
    EncoderMismatchError,
    Searcher,
    ServedStateMissingError,
    searcher_for_state,
)

TOP_K = 10
WORST_SHOWN = 5
# What the gate records of its own ranking, so the next run on the version can take its baseline from it
# when that state is the one served: the documents per query, the table state and the queries searched.
RANKINGS = "rankings"
RANKED_STATE = "ranked_table_state"
RANKED_QUERIES = "ranked_queries"
CROSS_VERSION_OVERLAPS = "cross_version_overlaps"  # per query, for the migration report
BASELINE_FROM = "baseline_from"  # "recorded" (this gate's last ranking) or "searched" (searched again now)


def top_k_overlap(a: list[str], b: list[str], k: int = TOP_K) -> float:
    """Share of the top-k documents two rankings have in common."""
    a, b = a[:k], b[:k]
    return len(set(a) & set(b)) / max(len(a), len(b), 1)


def last_served_state(pointer: ServingPointer, version_id: str) -> ServingState | None:
    """The most recent state in the history that served `version_id`."""
    return next((s for s in reversed(pointer.history()) if s.version == version_id), None)


def neighbour_stability(
    db: lancedb.DBConnection,
    version: ModelVersion,
    pointer: ServingPointer,
    registry: ModelRegistry,
    queries: list[str],
    thresholds: GateThresholds,
    previous: dict | None = None,
) -> GateOutcome:
    """Mean top-10 document overlap against the version's last served state (gated), and against the
    currently served version when that is another model (reported only: spaces differ by design).

    `previous` is this gate's last metadata on the version: the ranking it recorded is the baseline when
    it was taken on the table version the served state's gates judged, with the same queries (a refresh
    after index maintenance then searches one table, not two)."""
    queries = queries[: thresholds.stability_queries]
    searcher = Searcher(db, version)
    current = ranked_documents(searcher, queries, TOP_K)
    digest = hashlib.sha256(json.dumps(queries).encode()).hexdigest()[:16]
    metadata: dict = {
        "queries": len(queries),
        "warn_below": thresholds.stability_warn,
        "block_below": thresholds.stability_block,
        RANKINGS: current,
        RANKED_STATE: store.table_state_of(searcher.table),
        RANKED_QUERIES: digest,
    }
    if len(queries) < 20:
        return GateOutcome(
            "block", f"only {len(queries)} fixed queries; the gate needs at least 20", metadata
        )
    served = pointer.current()
    if served is not None and served.version != version.id:
        metadata.update(_cross_version(db, registry, served, queries, current))
    cross = (
        f"; vs served {metadata['cross_version']}: {metadata['cross_version_overlap']} (reported, not gated)"
        if "cross_version" in metadata
        else ""
    )
    baseline = last_served_state(pointer, version.id)
    if baseline is None:
        return GateOutcome(
            "pass",
            f"{version.id} was never served: no baseline yet; its first promotion sets one{cross}",
            metadata,
        )
    try:
        before = _recorded(previous or {}, baseline, db, digest)
        metadata[BASELINE_FROM] = "recorded" if before is not None else "searched"
        if before is None:
            before = ranked_documents(searcher_for_state(baseline, db, registry), queries, TOP_K)
    except ServedStateMissingError as exc:
        return GateOutcome("warn", f"the last served state of {version.id} cannot be read: {exc}", metadata)
    overlaps = [top_k_overlap(a, b) for a, b in zip(current, before, strict=True)]
    mean = sum(overlaps) / len(overlaps)
    worst = sorted(range(len(queries)), key=lambda i: overlaps[i])[:WORST_SHOWN]
    metadata.update(
        {
            "mean_top10_overlap": round(mean, 4),
            "min_top10_overlap": round(min(overlaps), 4),
            "baseline_table_version": baseline.table_version,
            "baseline_served_at": str(baseline.at),
            "least_stable_queries": markdown_table(
                ["query", "overlap"], [[queries[i], overlaps[i]] for i in worst]
            ),
        }
    )
    level = level_for(
        mean, warn=thresholds.stability_warn, block=thresholds.stability_block, higher_is_worse=False
    )
    return GateOutcome(
        level,
        f"mean top-10 overlap {mean:.3f} with the last served state of {version.id} "
        f"(warn < {thresholds.stability_warn}, block < {thresholds.stability_block}){cross}",
        metadata,
    )


def _recorded(previous: dict, baseline: ServingState, db: lancedb.DBConnection, digest: str) -> list | None:
    """The ranking this gate recorded on the table version `baseline`'s gates judged (the same rows it
    serves, maybe at a maintained table version), if it searched the same queries; else None."""
    rankings = previous.get(RANKINGS)
    if previous.get(RANKED_QUERIES) != digest or not isinstance(rankings, list):
        return None
    judged = store.version_state(db.open_table(baseline.table), baseline.judged_version)
    return rankings if previous.get(RANKED_STATE) == judged else None


def _cross_version(
    db: lancedb.DBConnection,
    registry: ModelRegistry,
    served: ServingState,
    queries: list[str],
    current: list[list[str]],
) -> dict:
    """Overlap with the served version's results, for the migration report; never a reason to block."""
    try:
        other = ranked_documents(searcher_for_state(served, db, registry), queries, TOP_K)
    except (ModelRegistryError, EncoderMismatchError, ServedStateMissingError) as exc:
        return {"cross_version": served.version, "cross_version_overlap": f"unavailable: {exc}"}
    overlaps = [top_k_overlap(a, b) for a, b in zip(current, other, strict=True)]
    return {
        "cross_version": served.version,
        "cross_version_overlap": round(sum(overlaps) / len(overlaps), 4),
        CROSS_VERSION_OVERLAPS: [round(o, 4) for o in overlaps],
    }
