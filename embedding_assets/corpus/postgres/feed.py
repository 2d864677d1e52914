"""Change data capture from a PostgreSQL table by logical decoding with the built-in test_decoding plugin.

The change stream says WHICH ids changed; their content is read back from the table (`fetch`), so a run
indexes what the table holds now, and test_decoding's `unchanged-toast-datum` never matters. Delivery is
at least once: `peek` never consumes, and the slot moves only when `advance` is called after a run that
applied the batch succeeded, so a failed run sees the same changes again.

    feed = PostgresChangeFeed(PostgresSettings.from_env())
    if feed.ensure_slot():
        rows = feed.snapshot()  # initial load: read after the slot exists, so nothing falls in between
    batch = feed.peek(max_changes=10_000)
    upserted, deleted = batch.net()
    rows = feed.fetch(upserted)  # an upserted id missing here was deleted since: treat it as deleted
    ...  # apply rows and deletions
    if batch.end_lsn:
        feed.advance(batch.end_lsn)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg2 import errors, sql
from psycopg2.extensions import cursor as PgCursor

from embedding_assets.corpus.postgres.decoding import ChangeBatch, collect, lsn_value, split_table_name
from embedding_assets.corpus.postgres.settings import PostgresSettings
from embedding_assets.corpus.sources import MAX_DOCUMENT_BYTES

PLUGIN = "test_decoding"
DECODING_OPTIONS = ["include-xids", "1", "include-timestamp", "1", "skip-empty-xacts", "1"]
FETCH_BATCH = 1000
PENDING_COUNT_LIMIT = 1000


@dataclass(frozen=True)
class SourceRow:
    """One row as read: `body` is None when the column is NULL or longer than the limit the feed was
    given (`body_bytes` tells which); `updated_at` None when NULL."""

    doc_id: str
    title: str
    body: str | None
    updated_at: datetime | None
    body_bytes: int | None = None


class PostgresChangeFeed:
    """Changes to one table through one logical replication slot; see the module docstring for a run."""

    def __init__(self, settings: PostgresSettings, max_body_bytes: int = MAX_DOCUMENT_BYTES):
        self.settings = settings
        self.max_body_bytes = max_body_bytes
        self._schema, self._name = split_table_name(settings.table)

    @contextmanager
    def _cursor(self) -> Iterator[PgCursor]:
        with closing(self.settings.connect()) as conn, conn.cursor() as cur:
            yield cur

    def _table(self) -> sql.Identifier:
        return sql.Identifier(self._schema, self._name) if self._schema else sql.Identifier(self._name)

    def _qualified(self, cur: PgCursor) -> tuple[str, str]:
        """(schema, table) as test_decoding names it: an unqualified name resolves through search_path."""
        if self._schema:
            return self._schema, self._name
        cur.execute(
            "SELECT coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relname = %s AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid)),"
            " current_schema())",
            (self._name,),
        )
        return str(_one(cur)[0]), self._name

    def ensure_table(self) -> None:
        with self._cursor() as cur:
            if self._schema:
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema)))
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, title text NOT NULL DEFAULT '',"
                    " body text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(self._table())
            )

    def ensure_slot(self) -> bool:
        """Create the slot if missing; True if it was created now (then load a snapshot)."""
        slot = self.settings.slot
        with self._cursor() as cur:
            cur.execute(
                "SELECT plugin, database = current_database() FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
            row = cur.fetchone()
            if row is not None:
                if row[0] != PLUGIN or not row[1]:
                    raise ValueError(f"slot {slot!r} exists but is not a {PLUGIN} slot of this database")
                return False
            try:
                cur.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, PLUGIN))
            except errors.DuplicateObject:
                return False
        return True

    def peek(self, max_changes: int | None = None) -> ChangeBatch:
        """Committed changes to the table since the slot's position, without consuming them.

        `max_changes` bounds the decoded rows (every table's, BEGIN and COMMIT included); whole
        transactions are always returned, so a batch may hold more. With no bound reached, `end_lsn` also
        covers the WAL decoded up to the flush position read first, so the slot keeps up while the table is
        idle."""
        if max_changes is not None and max_changes < 1:
            raise ValueError("max_changes must be at least 1")
        with self._cursor() as cur:
            return self._peek(cur, max_changes)[0]

    def _peek(self, cur: PgCursor, max_changes: int | None) -> tuple[ChangeBatch, bool]:
        table = self._qualified(cur)
        cur.execute(
            "SELECT pg_current_wal_flush_lsn()::text, confirmed_flush_lsn::text FROM pg_replication_slots"
            " WHERE slot_name = %s AND database = current_database()",
            (self.settings.slot,),
        )
        row = cur.fetchone()
        if row is None:
            raise LookupError(f"replication slot {self.settings.slot!r} is missing; call ensure_slot() first")
        horizon, confirmed = row
        cur.execute(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, %s, VARIADIC %s)",
            (self.settings.slot, horizon, max_changes, DECODING_OPTIONS),
        )
        rows = cur.fetchall()
        changes, end, open_txn = collect(rows, table)
        limited = max_changes is not None and len(rows) >= max_changes
        if not limited and not open_txn and (end is None or lsn_value(horizon) > lsn_value(end)):
            end = horizon
        if end is not None and lsn_value(end) <= lsn_value(confirmed):
            end = None
        return ChangeBatch(changes, end), limited

    def advance(self, lsn: str) -> None:
        """Consume everything up to `lsn`; call only after the run that applied the batch succeeded. A
        position the slot has already passed is left alone (several runs may confirm the same batch)."""
        target = lsn_value(lsn)
        with self._cursor() as cur:
            cur.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                (self.settings.slot,),
            )
            row = cur.fetchone()
            if row is not None and row[0] is not None and lsn_value(row[0]) >= target:
                return
            cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.settings.slot, lsn))

    def fetch(self, ids: Iterable[str]) -> list[SourceRow]:
        """Current rows for these ids, by id; ids no longer in the table are absent."""
        wanted = sorted(set(ids))
        rows: list[SourceRow] = []
        with self._cursor() as cur:
            for start in range(0, len(wanted), FETCH_BATCH):
                cur.execute(
                    sql.SQL("SELECT {} FROM {} WHERE id = ANY(%s)").format(_COLUMNS, self._table()),
                    (self.max_body_bytes, wanted[start : start + FETCH_BATCH]),
                )
                rows += [_source_row(row) for row in cur.fetchall()]
        return sorted(rows, key=lambda row: row.doc_id)

    def snapshot(self) -> list[SourceRow]:
        """Every row, by id: the initial load, read after the slot was created."""
        with self._cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY id").format(_COLUMNS, self._table()),
                (self.max_body_bytes,),
            )
            return [_source_row(row) for row in cur.fetchall()]

    def slot_position(self) -> dict[str, Any]:
        """Where the slot stands, for metadata; pending_changes counts at most PENDING_COUNT_LIMIT rows."""
        position: dict[str, Any] = {"slot": self.settings.slot}
        with self._cursor() as cur:
            cur.execute(
                "SELECT confirmed_flush_lsn::text, restart_lsn::text, pg_current_wal_lsn()::text,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active, wal_status"
                " FROM pg_replication_slots WHERE slot_name = %s AND database = current_database()",
                (self.settings.slot,),
            )
            row = cur.fetchone()
            if row is None:
                return position | {"exists": False}
            keys = ("confirmed_flush_lsn", "restart_lsn", "current_wal_lsn", "pending_wal_bytes")
            keys += ("retained_wal_bytes", "active", "wal_status")
            position |= {"exists": True, **dict(zip(keys, row, strict=True))}
            batch, limited = self._peek(cur, PENDING_COUNT_LIMIT)
        return position | {"pending_changes": len(batch.changes), "pending_changes_capped": limited}

    def drop_slot(self) -> None:
        """Drop the slot if it exists (a forgotten slot keeps WAL forever)."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                (self.settings.slot,),
            )


def _one(cur: PgCursor) -> tuple[Any, ...]:
    row = cur.fetchone()
    if row is None:
        raise LookupError("query returned no row")
    return row


# A body over the limit is measured in the database and never sent: a 50 MB row costs its length only.
_COLUMNS = sql.SQL(
    "id, title, CASE WHEN octet_length(body) <= %s THEN body END, octet_length(body), updated_at"
)


def _source_row(row: tuple[Any, ...]) -> SourceRow:
    doc_id, title, body, body_bytes, at = row
    if at is not None:
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return SourceRow(str(doc_id), title or "", body, at, body_bytes)
