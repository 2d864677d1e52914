"""Score calibration, a signal beside the gates: a migration maps the served version's thresholds into
the candidate's space and warns when the candidate's registry entry does not carry their images."""

from __future__ import annotations

import lancedb

from embedding_assets.models.registry import ModelRegistry, ModelVersion
from embedding_assets.quality.calibration import FLIPS_SHOWN, MappedThreshold, current_profile, map_threshold
from embedding_assets.quality.evaluation import JudgedQueries
from embedding_assets.quality.gates.golden import judged_digest
from embedding_assets.quality.gates.outcome import GateOutcome, markdown_table
from embedding_assets.serving.pointer import ServingPointer
from embedding_assets.serving.search import Searcher, searcher_for_state

# A candidate threshold this close to the served one's image is taken as carried over.
THRESHOLD_TOLERANCE = 0.01


def score_calibration(
    db: lancedb.DBConnection,
    version: ModelVersion,
    pointer: ServingPointer,
    registry: ModelRegistry,
    judged: JudgedQueries,
) -> GateOutcome:
    """Pass when nothing else is served, or the served version names no thresholds, or the candidate's
    own thresholds match their images; warn (never block) otherwise, with the mapped values and the
    pair decisions that flip. The candidate's profile is measured and stored when it is not the served
    version's (a refresh of the served version measures nothing)."""
    served = pointer.current()
    if served is None or served.version == version.id:
        return GateOutcome("pass", "no other version served: no threshold to map")
    digest = judged_digest(judged)
    profile, measured = current_profile(db, Searcher(db, version), judged, digest)
    metadata = {
        "profile_pairs": len(profile.pairs),
        "profile_measured": measured,
        "score_quantiles": markdown_table(
            ["pairs", "p50", "p90", "p99"],
            [[kind, *q.values()] for kind, q in profile.distribution().items()],
        ),
    }
    thresholds = registry.get(served.version).thresholds
    if not thresholds:
        return GateOutcome("pass", f"{served.version} (served) names no thresholds to map", metadata)
    source, _ = current_profile(db, searcher_for_state(served, db, registry), judged, digest)
    mapped = [map_threshold(name, value, source, profile, db) for name, value in thresholds.items()]
    missing = [
        m
        for m in mapped
        if abs(version.thresholds.get(m.name, float("inf")) - m.mapped) > THRESHOLD_TOLERANCE
    ]
    metadata.update(mapped_metadata(mapped, version))
    summary = "; ".join(m.describe() for m in mapped)
    if missing:
        wanted = ", ".join(f"{m.name}: {m.mapped:.4f}" for m in missing)
        return GateOutcome("warn", f"{summary}. Set `thresholds: {{{wanted}}}` on {version.id}", metadata)
    return GateOutcome("pass", summary, metadata)


def mapped_metadata(mapped: list[MappedThreshold], version: ModelVersion) -> dict:
    """The thresholds table and the flipped pairs table, for check metadata and the migration report."""
    rows = [
        [
            m.name,
            m.threshold,
            f"{m.share:.3%}",
            round(m.mapped, 4),
            version.thresholds.get(m.name, "—"),
            m.pairs_compared,
            len(m.flips),
            m.flips_unmapped,
        ]
        for m in mapped
    ]
    flipped = [
        [m.name, f["kind"], f["left"], f["right"], *list(f.values())[3:]]
        for m in mapped
        for f in m.flips[:FLIPS_SHOWN]
    ]
    return {
        "thresholds_mapped": {m.name: round(m.mapped, 4) for m in mapped},
        "thresholds": markdown_table(
            [
                "name",
                "served",
                "share at or above",
                "mapped",
                "candidate's own",
                "pairs",
                "flips",
                "flips if kept",
            ],
            rows,
        ),
        "flipped_pairs": markdown_table(
            ["threshold", "pairs", "left", "right", f"score {mapped[0].source}", f"score {mapped[0].target}"],
            flipped,
        ),
    }
