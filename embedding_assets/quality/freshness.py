"""Freshness: how long a source change takes to reach the index, and how far serving lags the corpus."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.index import store, tables
from embedding_assets.serving.pointer import ServingState


def distribution(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50, p99 and max of a list of durations in seconds (zeros when it is empty)."""
    values = np.asarray(seconds, dtype=np.float64)
    if values.size == 0:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "count": 0}
    p50, p99 = np.percentile(values, [50, 99])
    return {
        "p50": round(float(p50), 3),
        "p99": round(float(p99), 3),
        "max": round(float(values.max()), 3),
        "count": int(values.size),
    }


def indexing_lag(db: lancedb.DBConnection, doc_ids: list[str], indexed_at: datetime) -> dict[str, float]:
    """Source change to indexed, per document written in this run: indexed_at - the document's updated_at."""
    if not doc_ids:
        return distribution([])
    columns = ["doc_id", "updated_at"]
    written = store.rows_for_keys(
        db, tables.DOCUMENTS_TABLE, "doc_id", pa.array(doc_ids, pa.string()), columns
    )
    return distribution(seconds_before(indexed_at, written["updated_at"]))


def seconds_before(now: datetime, times: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Seconds from each of `times` (nulls left out) to `now`, in Arrow: no Python object per value."""
    times = pc.drop_null(times)
    if not len(times):
        return np.empty(0)
    micros = pc.cast(pc.subtract(pa.scalar(now, times.type), times), pa.int64())
    return np.asarray(micros.to_numpy(zero_copy_only=False), np.float64) / 1e6


@dataclass
class ServedLag:
    """What the served table version does not yet reflect, and how old its rows are."""

    pending_documents: list[str] = field(default_factory=list)
    oldest_pending_seconds: float = 0.0
    row_age: dict[str, float] = field(default_factory=dict)

    @property
    def staleness(self) -> timedelta:
        return timedelta(seconds=self.oldest_pending_seconds)


def served_lag(db: lancedb.DBConnection, state: ServingState, now: datetime | None = None) -> ServedLag:
    """Compare the corpus manifest with the served table version: documents added, changed or deleted
    in the corpus but not yet served are pending, and the oldest pending change is the staleness. Key
    columns compared in Arrow."""
    now = now or datetime.now(UTC)
    table = db.open_table(state.table)
    table.checkout(state.table_version)
    served = store.scanned(table.search().select(["doc_id", "doc_checksum", "indexed_at"]).limit(None))
    docs = store.read_columns(db, tables.DOCUMENTS_TABLE, ["doc_id", "doc_checksum", "updated_at"])
    served_states, states = (store.joined_key(t, "doc_id", "doc_checksum") for t in (served, docs))
    pending = docs.filter(pc.invert(pc.is_in(states, value_set=served_states, skip_nulls=True)))
    gone = store.absent(served["doc_id"], docs["doc_id"]).to_pylist()
    ages = list(seconds_before(now, pending["updated_at"]))
    if gone:  # a deletion is at least as old as the corpus commit that made it
        corpus = db.open_table(tables.DOCUMENTS_TABLE)
        committed = store.version_committed_at(corpus, corpus.version)
        if committed is not None:
            ages.append((now.replace(tzinfo=None) - committed).total_seconds())
    return ServedLag(
        sorted(pending["doc_id"].to_pylist() + gone),
        max(ages, default=0.0),
        distribution(seconds_before(now, served["indexed_at"])),
    )
