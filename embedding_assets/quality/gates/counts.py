"""Count reconciliation, three ways: corpus manifest vs chunks vs index rows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.index import change_log, store, tables
from embedding_assets.index.rows import PROVENANCE_KEYS, duplicate_keys
from embedding_assets.metadata import EXAMPLES
from embedding_assets.models.registry import ModelVersion
from embedding_assets.quality.gates.outcome import GateOutcome

RECONCILED_STATES = "reconciled_table_states"  # metadata: the table states the reconciliation read


@dataclass
class Reconciliation:
    """Counts on each side and every kind of disagreement, with the first offenders of each."""

    documents: int
    chunks: int
    rows: int
    problems: dict[str, list[str]] = field(default_factory=dict)
    from_change_logs: bool = False  # only the documents written since a reconciliation that passed
    documents_compared: int = 0

    @property
    def passed(self) -> bool:
        return not any(self.problems.values())

    def counts(self) -> dict[str, int]:
        return {kind: len(ids) for kind, ids in self.problems.items()}

    def examples(self) -> dict[str, list[str]]:
        return {kind: ids[:EXAMPLES] for kind, ids in self.problems.items() if ids}


def reconcile(
    db: lancedb.DBConnection, version: ModelVersion, since: dict[str, str] | None = None
) -> Reconciliation:
    """Compare the documents table, the version's chunks and its index rows: key columns only, joined
    and counted in Arrow; the offending ids are kept (the first EXAMPLES show in the gate).

    `since` (the table states of a reconciliation that passed): when the change logs name every document
    written in the three tables since, only those documents' rows are compared, and the totals are the
    tables' row counts (whose agreement the rows not read are known to keep)."""
    docs_table, chunks_table, rows_table = reconciled_tables(version)
    scope = _changed_since(db, since)
    docs = change_log.read_scoped(db, docs_table, ["doc_id", "doc_checksum"], scope)
    chunks = change_log.read_scoped(db, chunks_table, ["chunk_id", "doc_id"], scope)
    rows = change_log.read_scoped(db, rows_table, ["chunk_id", "doc_id", *PROVENANCE_KEYS], scope)
    fingerprint, config_hash = version.pinned_fingerprint(), version.pipeline_config_hash()
    in_manifest = pc.is_in(rows["doc_id"], value_set=store.flat(docs["doc_id"]))
    states = (store.joined_key(t, "doc_id", "doc_checksum") for t in (rows, docs))
    current = pc.is_in(next(states), value_set=next(states))
    stale = pc.and_(in_manifest, pc.invert(current))  # its document is there, at another checksum
    result = Reconciliation(docs.num_rows, pc.count_distinct(chunks["chunk_id"]).as_py(), rows.num_rows)
    result.documents_compared = docs.num_rows
    if scope is not None:
        result.from_change_logs, result.documents_compared = True, len(scope)
        result.documents, result.chunks, result.rows = (
            db.open_table(name).count_rows() for name in (docs_table, chunks_table, rows_table)
        )
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
    if scope is not None and result.passed and result.chunks != result.rows:
        return reconcile(db, version)  # the totals disagree where no compared row does: compare all
    return result


def reconciled_tables(version: ModelVersion) -> tuple[str, str, str]:
    return tables.DOCUMENTS_TABLE, tables.chunks_table(version.id), tables.index_table(version.id)


def table_states(db: lancedb.DBConnection, version: ModelVersion) -> dict[str, str]:
    """The states of the three tables a reconciliation compares (what a later one can start from)."""
    return {name: store.table_state(db, name) for name in reconciled_tables(version)}


def _changed_since(db: lancedb.DBConnection, since: dict[str, str] | None) -> pa.Array | None:
    """Every document written in the tables of `since` after their states there, if each table's change
    log can tell (None otherwise)."""
    if not since:
        return None
    changed = []
    for name, then in since.items():
        docs = change_log.ChangeLog(db, name).changed_after(then, store.table_state(db, name))
        if docs is None:
            return None
        changed.append(docs)
    return pc.unique(pa.concat_arrays(changed))


def _differs(column: pa.ChunkedArray, expected: str) -> pa.ChunkedArray:
    """Where `column` is not `expected` (a missing value differs too)."""
    return pc.fill_null(pc.not_equal(column, expected), True)


def _ids(rows: pa.Table, where: pa.ChunkedArray) -> list[str]:
    """The chunk ids of the `rows` where `where` holds, sorted."""
    return sorted(rows.filter(where)["chunk_id"].to_pylist())


def count_gate(db: lancedb.DBConnection, version: ModelVersion, previous: dict | None = None) -> GateOutcome:
    """Block on any disagreement between manifest, chunks and rows; after a reconciliation that passed
    (`previous`, its metadata), only the documents written since are compared when the logs can tell."""
    states = table_states(db, version)  # before reading: a write meanwhile is compared again next time
    since = json.loads((previous or {}).get(RECONCILED_STATES) or "{}")
    result = reconcile(db, version, since if (previous or {}).get("level") == "pass" else None)
    found = {kind: n for kind, n in result.counts().items() if n}
    summary = (
        f"{result.documents} documents, {result.chunks} chunks, {result.rows} rows reconcile"
        if result.passed
        else "; ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in found.items())
    )
    if result.from_change_logs:
        summary += f" ({result.documents_compared} documents written since the last reconciliation compared)"
    return GateOutcome(
        "pass" if result.passed else "block",
        summary,
        {
            "documents": result.documents,
            "chunks": result.chunks,
            "rows": result.rows,
            **result.counts(),
            "examples": result.examples(),
            "documents_compared": result.documents_compared,
            "from_change_logs": result.from_change_logs,
            RECONCILED_STATES: json.dumps(states),
            "threshold": "every count of problems must be 0",
        },
    )
