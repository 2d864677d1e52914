"""Count reconciliation, three ways: corpus manifest vs chunks vs index rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import lancedb

from embedding_assets.index import store, tables
from embedding_assets.index.rows import PROVENANCE_KEYS
from embedding_assets.metadata import EXAMPLES
from embedding_assets.models.registry import ModelVersion
from embedding_assets.quality.gates.outcome import GateOutcome


@dataclass
class Reconciliation:
    """Counts on each side and every kind of disagreement, with the first offenders of each."""

    documents: int
    chunks: int
    rows: int
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any(self.problems.values())

    def counts(self) -> dict[str, int]:
        return {kind: len(ids) for kind, ids in self.problems.items()}

    def examples(self) -> dict[str, list[str]]:
        return {kind: ids[:EXAMPLES] for kind, ids in self.problems.items() if ids}


def reconcile(db: lancedb.DBConnection, version: ModelVersion) -> Reconciliation:
    """Compare the documents table, the version's chunks and its index rows."""
    docs = store.read_columns(db, tables.DOCUMENTS_TABLE, ["doc_id", "doc_checksum"])
    chunks = store.read_columns(db, tables.chunks_table(version.id), ["chunk_id", "doc_id"])
    rows = store.read_columns(db, tables.index_table(version.id), ["chunk_id", "doc_id", *PROVENANCE_KEYS])
    manifest = dict(zip(docs["doc_id"].to_pylist(), docs["doc_checksum"].to_pylist(), strict=True))
    chunk_ids = set(chunks["chunk_id"].to_pylist())
    row_ids = rows["chunk_id"].to_pylist()
    fingerprint, config_hash = version.pinned_fingerprint(), version.pipeline_config_hash()
    records = rows.select(
        ["chunk_id", "doc_id", "doc_checksum", "model_fingerprint", "pipeline_config_hash"]
    ).to_pylist()
    result = Reconciliation(len(manifest), len(chunk_ids), len(row_ids))
    result.problems = {
        "orphan_rows": [r["chunk_id"] for r in records if r["doc_id"] not in manifest],
        "stale_rows": [
            r["chunk_id"]
            for r in records
            if r["doc_id"] in manifest and manifest[r["doc_id"]] != r["doc_checksum"]
        ],
        "rows_without_chunk": sorted(set(row_ids) - chunk_ids),
        "missing_rows": sorted(chunk_ids - set(row_ids)),
        "documents_without_chunks": sorted(set(manifest) - set(chunks["doc_id"].to_pylist())),
        "duplicate_rows": sorted(cid for cid, n in Counter(row_ids).items() if n > 1),
        "foreign_fingerprint": [r["chunk_id"] for r in records if r["model_fingerprint"] != fingerprint],
        "foreign_pipeline_hash": [r["chunk_id"] for r in records if r["pipeline_config_hash"] != config_hash],
    }
    return result


def count_gate(db: lancedb.DBConnection, version: ModelVersion) -> GateOutcome:
    """Block on any disagreement between manifest, chunks and rows."""
    result = reconcile(db, version)
    found = {kind: n for kind, n in result.counts().items() if n}
    summary = (
        f"{result.documents} documents, {result.chunks} chunks, {result.rows} rows reconcile"
        if result.passed
        else "; ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in found.items())
    )
    return GateOutcome(
        "pass" if result.passed else "block",
        summary,
        {
            "documents": result.documents,
            "chunks": result.chunks,
            "rows": result.rows,
            **result.counts(),
            "examples": result.examples(),
            "threshold": "every count of problems must be 0",
        },
    )
