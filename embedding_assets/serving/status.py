"""What is served and how many documents, chunks and rows each registered version holds."""

from __future__ import annotations

from typing import Any

import lancedb

from embedding_assets.index import store, tables
from embedding_assets.models.registry import ModelRegistry
from embedding_assets.serving.pointer import ServingPointer


def _rows(db, name: str) -> int:
    return db.open_table(name).count_rows() if name in store.table_names(db) else 0


def collect_status(
    db: lancedb.DBConnection, pointer: ServingPointer, registry: ModelRegistry
) -> dict[str, Any]:
    """`served_version`, `served_fingerprint`, `documents`, and per version its state, chunks and rows.

    States: served (the pointer names it), previous (where a rollback would go), candidate (built, not
    served), registered (pinned, nothing built)."""
    served = pointer.current()
    previous = pointer.previous()
    versions = []
    for version in registry.versions:
        rows = _rows(db, tables.index_table(version.id))
        if served and version.id == served.version:
            state = "served"
        elif previous and version.id == previous.version:
            state = "previous"
        elif rows:
            state = "candidate"
        else:
            state = "registered"
        versions.append(
            {
                "id": version.id,
                "state": state,
                "fingerprint": version.fingerprint,
                "chunks": _rows(db, tables.chunks_table(version.id)),
                "rows": rows,
            }
        )
    served_entry = next((v for v in versions if v["state"] == "served"), None)
    return {
        "served_version": served.version if served else None,
        "served_fingerprint": served.model_fingerprint if served else None,
        "served_table_version": served.table_version if served else None,
        "served_rows": served.rows if served else 0,
        "documents": _rows(db, tables.DOCUMENTS_TABLE),
        "quarantined": _rows(db, tables.QUARANTINE_TABLE),
        "chunks": served_entry["chunks"] if served_entry else 0,
        "rows": served_entry["rows"] if served_entry else 0,
        "versions": versions,
    }
