"""A PostgreSQL documents table as a corpus source, read by logical decoding (change capture).

The first read (or a read with an empty manifest) takes a full snapshot; after that only the documents
the replication slot reports as inserted, updated or deleted are read. Reading never consumes the slot:
`advance` moves it, and the refresh calls that only after every live version indexed the changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from embedding_assets.corpus.postgres.decoding import ChangeBatch, ResyncRequired
from embedding_assets.corpus.postgres.feed import PostgresChangeFeed, SourceRow
from embedding_assets.corpus.postgres.settings import PostgresSettings
from embedding_assets.corpus.sources import (
    MAX_DOCUMENT_BYTES,
    Deleted,
    Document,
    Manifest,
    Quarantined,
    SourceItem,
    problem,
    too_large,
)


class PostgresSource:
    """Documents from `settings.table` (id, title, body, updated_at) via the slot `settings.slot`."""

    def __init__(self, settings: PostgresSettings, max_changes: int | None = 100_000):
        self.settings = settings
        self.feed = PostgresChangeFeed(settings)
        self.max_changes = max_changes
        self.complete = False
        self.end_lsn: str | None = None
        self.changes = 0

    @property
    def uri(self) -> str:
        return self.settings.describe()

    def pending(self) -> ChangeBatch:
        """The changes the slot holds (creating the slot if needed), without consuming them; after a
        TRUNCATE, an empty batch marked `resync` (the next `read` takes a fresh snapshot)."""
        self.feed.ensure_slot()
        try:
            return self.feed.peek(self.max_changes)
        except ResyncRequired:
            return ChangeBatch([], None, resync=True)

    def read(self, known: Manifest | None = None) -> Iterator[SourceItem]:
        created = self.feed.ensure_slot()
        try:
            batch = self.feed.peek(self.max_changes)
        except ResyncRequired:  # a TRUNCATE (or keyless delete): ids are lost, so start over from a snapshot
            self.feed.drop_slot()
            created = self.feed.ensure_slot()
            batch = self.feed.peek(self.max_changes)
        self.end_lsn, self.changes = batch.end_lsn, len(batch.changes)
        if created or not known:
            # The snapshot is read after the peek, so it already holds every change up to end_lsn.
            self.complete = True
            for row in self.feed.snapshot():
                yield self._document(row)
            return
        committed = {c.doc_id: c.committed_at for c in batch.changes if c.committed_at is not None}
        upserted, deleted = batch.net()
        found = {row.doc_id: row for row in self.feed.fetch(upserted)}
        for doc_id in sorted(upserted | deleted):
            row = found.get(doc_id)
            yield self._document(row, committed.get(doc_id)) if row else Deleted(doc_id)

    def advance(self, lsn: str) -> None:
        self.feed.advance(lsn)

    def _document(self, row: SourceRow, committed_at=None) -> Document | Quarantined:
        uri = f"{self.uri}#id={row.doc_id}"
        if row.body is None:
            if row.body_bytes is None:
                return Quarantined(row.doc_id, uri, "body is NULL")
            return Quarantined(row.doc_id, uri, f"body of {too_large(row.body_bytes)}")
        text = f"# {row.title}\n\n{row.body}" if row.title else row.body
        if len(text.encode("utf-8")) > MAX_DOCUMENT_BYTES:
            return Quarantined(row.doc_id, uri, f"title and body: {too_large(len(text.encode()))}")
        if reason := problem(text):
            return Quarantined(row.doc_id, uri, reason)
        updated_at = committed_at or row.updated_at or datetime.now(UTC)
        return Document(row.doc_id, row.title, text, uri, updated_at)
