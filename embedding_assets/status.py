"""What is served and how many documents, chunks and rows each registered version holds."""

from __future__ import annotations

from typing import Any

from embedding_assets import settings, store
from embedding_assets.pipeline.corpus import QUARANTINE_TABLE
from embedding_assets.registry import load_registry
from embedding_assets.serving import ServingPointer


def _rows(db, name: str) -> int:
    return db.open_table(name).count_rows() if name in store.table_names(db) else 0


def collect_status(pointer: ServingPointer | None = None) -> dict[str, Any]:
    """`served_version`, `served_fingerprint`, `documents`, and per version its state, chunks and rows.

    States: served (the pointer names it), previous (where a rollback would go), candidate (built, not
    served), registered (pinned, nothing built)."""
    db = store.connect()
    pointer = pointer or ServingPointer()
    served = pointer.current()
    previous = pointer.previous()
    versions = []
    for version in load_registry().versions:
        rows = _rows(db, settings.index_table(version.id))
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
                "chunks": _rows(db, settings.chunks_table(version.id)),
                "rows": rows,
            }
        )
    served_entry = next((v for v in versions if v["state"] == "served"), None)
    return {
        "served_version": served.version if served else None,
        "served_fingerprint": served.model_fingerprint if served else None,
        "served_table_version": served.table_version if served else None,
        "served_rows": served.rows if served else 0,
        "documents": _rows(db, settings.DOCUMENTS_TABLE),
        "quarantined": _rows(db, QUARANTINE_TABLE),
        "chunks": served_entry["chunks"] if served_entry else 0,
        "rows": served_entry["rows"] if served_entry else 0,
        "versions": versions,
    }
