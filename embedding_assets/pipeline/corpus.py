"""Corpus stage: mirror the source into the `documents` table and record what changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import lancedb
import pyarrow as pa

from embedding_assets import settings, store
from embedding_assets.sources import BeirSource, Document, FolderSource, Quarantined

QUARANTINE_TABLE = "quarantine"


@dataclass
class CorpusSync:
    """What one pass over the source found and wrote."""

    documents: int = 0
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    table_version: int | None = None


def sync_corpus(db: lancedb.DBConnection, source: FolderSource | BeirSource) -> CorpusSync:
    """Upsert new and changed documents, then drop the ones the source no longer has."""
    documents: list[Document] = []
    sync = CorpusSync()
    for item in source.read():
        (documents.append if isinstance(item, Document) else sync.quarantined.append)(item)
    ids = [d.doc_id for d in documents]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"source {source.uri} yields duplicate document ids, e.g. {dupes}")

    previous = store.read_columns(db, settings.DOCUMENTS_TABLE, ["doc_id", "doc_checksum"])
    known = dict(zip(previous["doc_id"].to_pylist(), previous["doc_checksum"].to_pylist(), strict=True))
    current = {d.doc_id: d.checksum for d in documents}
    sync.documents = len(documents)
    sync.added = sorted(i for i in current if i not in known)
    sync.changed = sorted(i for i, c in current.items() if i in known and known[i] != c)
    quarantined_ids = {q.doc_id for q in sync.quarantined}
    sync.deleted = sorted(i for i in known if i not in current and i not in quarantined_ids)

    table = store.open_table(db, settings.DOCUMENTS_TABLE, store.DOCUMENTS_SCHEMA)
    touched = set(sync.added) | set(sync.changed)
    rows = _document_rows([d for d in documents if d.doc_id in touched])
    store.upsert(table, rows, "doc_id")
    store.delete_keys(table, "doc_id", sync.deleted)
    sync.table_version = table.version
    _record_quarantine(db, sync.quarantined)
    return sync


def _document_rows(documents: list[Document]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "doc_id": d.doc_id,
                "title": d.title,
                "text": d.text,
                "source_uri": d.source_uri,
                "doc_checksum": d.checksum,
                "size": len(d.text.encode("utf-8")),
                "updated_at": d.updated_at,
            }
            for d in documents
        ],
        schema=store.DOCUMENTS_SCHEMA,
    )


def _record_quarantine(db: lancedb.DBConnection, quarantined: list[Quarantined]) -> None:
    """Replace the quarantine list with this pass's refusals (a fixed document leaves it)."""
    now = datetime.now(UTC)
    rows = pa.Table.from_pylist(
        [
            {"doc_id": q.doc_id, "source_uri": q.source_uri, "reason": q.reason, "seen_at": now}
            for q in quarantined
        ],
        schema=store.QUARANTINE_SCHEMA,
    )
    db.create_table(QUARANTINE_TABLE, data=rows, schema=store.QUARANTINE_SCHEMA, mode="overwrite")
