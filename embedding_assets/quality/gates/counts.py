"""Count reconciliation, three ways: corpus manifest vs chunks vs index rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.index import store, tables
from embedding_assets.index.rows import PROVENANCE_KEYS, duplicate_keys
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
    """Compare the documents table, the version's chunks and its index rows: key columns only, joined
    and counted in Arrow; the offending ids are kept (the first EXAMPLES show in the gate)."""
    docs = store.read_columns(db, tables.DOCUMENTS_TABLE, ["doc_id", "doc_checksum"])
    chunks = store.read_columns(db, tables.chunks_table(version.id), ["chunk_id", "doc_id"])
    rows = store.read_columns(db, tables.index_table(version.id), ["chunk_id", "doc_id", *PROVENANCE_KEYS])
    fingerprint, config_hash = version.pinned_fingerprint(), version.pipeline_config_hash()
    in_manifest = pc.is_in(rows["doc_id"], value_set=store.flat(docs["doc_id"]))
    states = (store.joined_key(t, "doc_id", "doc_checksum") for t in (rows, docs))
    current = pc.is_in(next(states), value_set=next(states))
    stale = pc.and_(in_manifest, pc.invert(current))  # its document is there, at another checksum
    result = Reconciliation(docs.num_rows, pc.count_distinct(chunks["chunk_id"]).as_py(), rows.num_rows)
    result.problems = {
        "orphan_rows": _ids(rows, pc.invert(in_manifest)),
        "stale_rows": _ids(rows, stale),
        "rows_without_chunk": sorted(store.absent(rows["chunk_id"], chunks["chunk_id"]).to_pylist()),
        "missing_rows": sorted(store.absent(chunks["chunk_id"], rows["chunk_id"]).to_pylist()),
        "documents_without_chunks": sorted(store.absent(docs["doc_id"], chunks["doc_id"]).to_pylist()),
        "duplicate_rows": sorted(duplicate_keys(rows, "chunk_id").to_pylist()),
        "foreign_fingerprint": _ids(rows, _differs(rows["model_fingerprint"], fingerprint)),
        "foreign_pipeline_hash": _ids(rows, _differs(rows["pipeline_config_hash"], config_hash)),
    }
    return result


def _differs(column: pa.ChunkedArray, expected: str) -> pa.ChunkedArray:
    """Where `column` is not `expected` (a missing value differs too)."""
    return pc.fill_null(pc.not_equal(column, expected), True)


def _ids(rows: pa.Table, where: pa.ChunkedArray) -> list[str]:
    """The chunk ids of the `rows` where `where` holds, sorted."""
    return sorted(rows.filter(where)["chunk_id"].to_pylist())


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
