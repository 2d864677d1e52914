"""Corpus stage: mirror the source into the `documents` table and record what changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import lancedb
import pyarrow as pa

from embedding_assets import faults
from embedding_assets.corpus.sources import Deleted, Document, Manifest, ManifestEntry, Quarantined, Source
from embedding_assets.index import store, tables
from embedding_assets.index.change_log import ChangeLog, LoggedWrite

SYNC_WRITE_BATCH = 16_384  # documents upserted per commit while the source is read


@dataclass
class CorpusSync:
    """What one pass over the source found and wrote."""

    documents: int = 0
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    table_version: int | None = None


def read_manifest(db: lancedb.DBConnection) -> Manifest:
    """doc_id -> checksum, size and mtime as the documents table holds them."""
    columns = ["doc_id", "doc_checksum", "size", "mtime_ns"]
    if tables.DOCUMENTS_TABLE not in store.table_names(db):
        return Manifest([], [], [], [])
    rows = store.read_columns(db, tables.DOCUMENTS_TABLE, columns)  # never the texts
    return Manifest(*(rows[c].to_pylist() for c in columns))


def sync_corpus(db: lancedb.DBConnection, source: Source) -> CorpusSync:
    """Upsert new and changed documents, then drop the deleted ones (after the upsert succeeded).

    A complete source lists everything it has, so what it no longer lists is deleted; an incremental
    (change-capture) source names its deletions, and whatever it does not mention is unchanged.
    Documents are written SYNC_WRITE_BATCH at a time as the source yields them, so memory holds one
    batch of texts, not the corpus. Every document written with new content, or deleted, is logged first
    (`index.change_log`), so the stages after read only those. One sync at a time (`store.writer_lock`).
    """
    with store.writer_lock(db, tables.DOCUMENTS_TABLE):
        return _sync(db, source)


def _sync(db: lancedb.DBConnection, source: Source) -> CorpusSync:
    known = read_manifest(db)
    sync = CorpusSync()
    seen: set[str] = set()
    explicit_deletes: set[str] = set()
    table = store.open_table(db, tables.DOCUMENTS_TABLE, store.DOCUMENTS_SCHEMA)
    pending: list[Document] = []
    with ChangeLog(db, tables.DOCUMENTS_TABLE).write(settings="", input_seq=None) as logged:
        for item in source.read(known):
            if isinstance(item, Quarantined):
                sync.quarantined.append(item)
                continue
            if item.doc_id in seen:
                raise ValueError(f"source {source.uri} yields document id {item.doc_id!r} twice")
            seen.add(item.doc_id)
            if isinstance(item, Deleted):
                explicit_deletes.add(item.doc_id)
            if not isinstance(item, Document):
                continue
            before = known.get(item.doc_id)
            if before is None:
                sync.added.append(item.doc_id)
            elif before.checksum != item.checksum:
                sync.changed.append(item.doc_id)
            # A document whose content is the same but whose mtime moved is rewritten too, so the next
            # scan can skip it; its checksum (and so every downstream row) is unchanged.
            if before is None or _entry(item) != before:
                pending.append(item)
            if len(pending) >= SYNC_WRITE_BATCH:
                _write_documents(table, pending, known, logged)
                pending = []
        sync.added.sort()
        sync.changed.sort()
        quarantined_ids = {q.doc_id for q in sync.quarantined if not q.forget}  # they keep their last version
        forgotten = {q.doc_id for q in sync.quarantined if q.forget}
        if source.complete:
            sync.deleted = sorted(i for i in known if i not in seen and i not in quarantined_ids)
        else:
            sync.deleted = sorted(i for i in explicit_deletes | forgotten if i in known)
        sync.documents = len(known) - len(sync.deleted) + len(sync.added)
        logged.touches(sync.deleted)
        _write_documents(table, pending, known, logged)
        faults.failpoint(faults.CORPUS_WRITTEN)
        store.delete_keys(table, "doc_id", sync.deleted)
    sync.table_version = table.version
    _record_quarantine(db, sync.quarantined, incremental=not source.complete)
    return sync


def _write_documents(
    table: lancedb.table.Table, documents: list[Document], known: Manifest, logged: LoggedWrite
) -> None:
    """Upsert `documents`, logging first those whose content is new (not those whose mtime alone moved)."""
    logged.touches(
        d.doc_id for d in documents if d.doc_id not in known or known[d.doc_id].checksum != d.checksum
    )
    store.upsert(table, _document_rows(documents), "doc_id")


def _entry(document: Document) -> ManifestEntry:
    return ManifestEntry(document.checksum, document.stored_size, document.mtime_ns)


def _document_rows(documents: list[Document]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "doc_id": d.doc_id,
                "title": d.title,
                "text": d.text,
                "source_uri": d.source_uri,
                "doc_checksum": d.checksum,
                "size": d.stored_size,
                "updated_at": d.updated_at,
                "mtime_ns": d.mtime_ns,
            }
            for d in documents
        ],
        schema=store.DOCUMENTS_SCHEMA,
    )


def _record_quarantine(
    db: lancedb.DBConnection, quarantined: list[Quarantined], *, incremental: bool = False
) -> None:
    """Replace the quarantine list with this pass's refusals (a fixed document leaves it); an incremental
    pass only adds to it, since it did not look at the documents it was not told about."""
    now = datetime.now(UTC)
    rows = pa.Table.from_pylist(
        [
            {"doc_id": q.doc_id, "source_uri": q.source_uri, "reason": q.reason, "seen_at": now}
            for q in quarantined
        ],
        schema=store.QUARANTINE_SCHEMA,
    )
    if incremental:
        store.upsert(store.open_table(db, tables.QUARANTINE_TABLE, store.QUARANTINE_SCHEMA), rows, "doc_id")
    else:
        db.create_table(tables.QUARANTINE_TABLE, data=rows, schema=store.QUARANTINE_SCHEMA, mode="overwrite")
