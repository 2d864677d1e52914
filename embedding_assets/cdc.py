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

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import psycopg2
from psycopg2 import errors, sql
from psycopg2.extensions import connection as PgConnection
from psycopg2.extensions import cursor as PgCursor

DEFAULT_TABLE = "documents"
DEFAULT_SLOT = "embedding_assets"
DEFAULT_PORT = 5432
KEY_COLUMN = "id"
PLUGIN = "test_decoding"
DECODING_OPTIONS = ["include-xids", "1", "include-timestamp", "1", "skip-empty-xacts", "1"]
FETCH_BATCH = 1000
PENDING_COUNT_LIMIT = 1000
UNCHANGED_TOAST = "unchanged-toast-datum"

# Setting -> (our variable, libpq's variable or None).
ENV_VARS: dict[str, tuple[str, str | None]] = {
    "host": ("EMBEDDING_ASSETS_PG_HOST", "PGHOST"),
    "port": ("EMBEDDING_ASSETS_PG_PORT", "PGPORT"),
    "user": ("EMBEDDING_ASSETS_PG_USER", "PGUSER"),
    "password": ("EMBEDDING_ASSETS_PG_PASSWORD", "PGPASSWORD"),
    "dbname": ("EMBEDDING_ASSETS_PG_DB", "PGDATABASE"),
    "table": ("EMBEDDING_ASSETS_PG_TABLE", None),
    "slot": ("EMBEDDING_ASSETS_PG_SLOT", None),
}
REQUIRED = ("host", "user", "dbname")

ChangeKind = Literal["insert", "update", "delete"]
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_LSN = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")
_BEGIN = re.compile(r"BEGIN(?: \d+)?")
_COMMIT = re.compile(r"COMMIT(?: \d+)?(?: \(at (?P<at>[^)]*)\))?")


class ResyncRequired(RuntimeError):
    """The stream holds a change that names no ids (TRUNCATE, or a DELETE without a key): reload from a
    snapshot (drop the slot, then ensure_slot() and snapshot() again)."""


@dataclass(frozen=True)
class PostgresSettings:
    """Where the source table lives; `describe()` and `repr()` never show the password."""

    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    dbname: str
    table: str = DEFAULT_TABLE
    slot: str = DEFAULT_SLOT

    def __post_init__(self) -> None:
        if not _SLOT_NAME.fullmatch(self.slot):
            raise ValueError(f"slot name {self.slot!r}: use 1-63 lowercase letters, digits and underscores")
        split_table_name(self.table)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> PostgresSettings:
        def get(key: str) -> str | None:
            ours, libpq = ENV_VARS[key]
            return environ.get(ours) or (environ.get(libpq) if libpq else None) or None

        missing = [key for key in REQUIRED if not get(key)]
        if missing:
            names = ", ".join(f"{ENV_VARS[k][0]} (or {ENV_VARS[k][1]})" for k in missing)
            raise ValueError(f"PostgreSQL source not configured: set {names}")
        port = get("port") or str(DEFAULT_PORT)
        if not port.isdigit():
            raise ValueError(f"{ENV_VARS['port'][0]} (or PGPORT) must be a port number, got {port!r}")
        return cls(
            host=str(get("host")),
            port=int(port),
            user=str(get("user")),
            password=get("password"),
            dbname=str(get("dbname")),
            table=get("table") or DEFAULT_TABLE,
            slot=get("slot") or DEFAULT_SLOT,
        )

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"postgresql://{self.user}@{host}:{self.port}/{self.dbname} table={self.table} slot={self.slot}"
        )

    def connect(self) -> PgConnection:
        params: dict[str, Any] = {"password": self.password} if self.password else {}
        conn = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=self.dbname,
            application_name="embedding_assets",
            connect_timeout=10,
            options="-c TimeZone=UTC",
            **params,
        )
        conn.autocommit = True
        return conn


@dataclass(frozen=True)
class SourceRow:
    doc_id: str
    title: str
    body: str
    updated_at: datetime


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    doc_id: str
    lsn: str
    committed_at: datetime | None


@dataclass(frozen=True)
class ChangeBatch:
    """Committed changes to the table, in commit order; `end_lsn` is where to advance the slot once they
    are applied (None: nothing to advance)."""

    changes: list[Change]
    end_lsn: str | None

    def net(self) -> tuple[set[str], set[str]]:
        """(ids to upsert, ids to delete): the last change to an id wins."""
        upserted: set[str] = set()
        deleted: set[str] = set()
        for change in self.changes:
            if change.kind == "delete":
                deleted.add(change.doc_id)
                upserted.discard(change.doc_id)
            else:
                upserted.add(change.doc_id)
                deleted.discard(change.doc_id)
        return upserted, deleted


def lsn_value(lsn: str) -> int:
    if not _LSN.fullmatch(lsn):
        raise ValueError(f"not an LSN: {lsn!r}")
    high, low = lsn.split("/")
    return int(high, 16) << 32 | int(low, 16)


# --- test_decoding's text output ------------------------------------------------------------------------


def _read_quoted(text: str, i: int, quote: str, what: str) -> tuple[str, int]:
    """The quoted text starting at text[i] (a doubled quote stands for one) and the index after it."""
    parts, j = [], i + 1
    while (k := text.find(quote, j)) >= 0:
        parts.append(text[j:k])
        if not text.startswith(quote, k + 1):
            return "".join(parts), k + 1
        parts.append(quote)
        j = k + 2
    raise ValueError(f"unterminated quoted {what} at {text[i : i + 40]!r}")


def _read_identifier(text: str, i: int, stops: str) -> tuple[str, int]:
    """An identifier at text[i:]: "double-quoted" with "" escapes, or a bare run up to a stop character."""
    if text.startswith('"', i):
        return _read_quoted(text, i, '"', "identifier")
    j = i
    while j < len(text) and text[j] not in stops:
        j += 1
    if j == i:
        raise ValueError(f"expected an identifier at {text[i : i + 40]!r}")
    return text[i:j], j


def split_table_name(table: str) -> tuple[str | None, str]:
    """`name` or `schema.name`; parts are taken literally, and a part with a dot is double-quoted."""
    parts, i = [], 0
    while True:
        part, i = _read_identifier(table, i, '."')
        parts.append(part)
        if i == len(table):
            break
        if table[i] != "." or len(parts) == 2:
            raise ValueError(f"table {table!r}: expected name or schema.name (double-quote a part with dots)")
        i += 1
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _read_value(text: str, i: int) -> tuple[str | None, int]:
    if text.startswith("'", i):
        return _read_quoted(text, i, "'", "value")
    end = text.find(" ", i)
    end = len(text) if end < 0 else end
    token = text[i:end]
    return (None if token == "null" else token), end


def _read_tuple(text: str, i: int) -> tuple[dict[str, str | None], int]:
    """` name[type]:value` pairs from text[i:] up to the end or ` new-tuple:`."""
    values: dict[str, str | None] = {}
    while i < len(text) and not text.startswith(" new-tuple:", i):
        if text[i] != " ":
            raise ValueError(f"expected a column at {text[i : i + 40]!r}")
        name, i = _read_identifier(text, i + 1, "[ ")
        if not text.startswith("[", i):
            raise ValueError(f"expected [type] after column {name!r}")
        depth, quoted = 0, False
        for j in range(i, len(text)):
            ch = text[j]
            if ch == '"':
                quoted = not quoted
            elif not quoted and ch in "[]":
                depth += 1 if ch == "[" else -1
                if depth == 0:
                    break
        else:
            raise ValueError(f"unterminated type of column {name!r}")
        if not text.startswith(":", j + 1):
            raise ValueError(f"expected ':' after the type of column {name!r}")
        values[name], i = _read_value(text, j + 2)
    return values, i


def _key(values: dict[str, str | None], line: str) -> str:
    key = values.get(KEY_COLUMN)
    if key is None or key == UNCHANGED_TOAST:
        raise ValueError(f"no {KEY_COLUMN!r} value in {line[:120]!r}")
    return key


@dataclass(frozen=True)
class DecodedLine:
    """One line of test_decoding output: BEGIN, COMMIT, or a table's change (OTHER: anything else)."""

    op: Literal["BEGIN", "COMMIT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "OTHER"]
    tables: tuple[tuple[str, str], ...] = ()
    committed_at: datetime | None = None
    rest: str = ""


def decode_line(line: str) -> DecodedLine:
    """The line's kind, its (schema, table) names and the unparsed tuple part."""
    if _BEGIN.fullmatch(line):
        return DecodedLine("BEGIN")
    if commit := _COMMIT.fullmatch(line):
        return DecodedLine("COMMIT", committed_at=_timestamp(commit["at"]))
    if not line.startswith("table "):
        return DecodedLine("OTHER")
    tables, i = [], len("table ")
    while True:
        schema, i = _read_identifier(line, i, '.:," ')
        if not line.startswith(".", i):
            raise ValueError(f"expected schema.table in {line[:120]!r}")
        name, i = _read_identifier(line, i + 1, '.:," ')
        tables.append((schema, name))
        if line.startswith(": ", i):
            break
        if not line.startswith(", ", i):
            raise ValueError(f"cannot parse table names in {line[:120]!r}")
        i += 2
    op, _, rest = line[i + 2 :].partition(":")
    if op not in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
        raise ValueError(f"unknown operation {op!r} in {line[:120]!r}")
    return DecodedLine(cast(Any, op), tuple(tables), rest=rest)


def _timestamp(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text).astimezone(UTC) if text else None
    except ValueError:
        return None


def changes_of(decoded: DecodedLine, line: str) -> list[tuple[ChangeKind, str]]:
    """The (kind, id) changes a table's INSERT, UPDATE or DELETE line makes; a key change is a delete of
    the old id and an update of the new one."""
    rest = decoded.rest
    if decoded.op == "TRUNCATE" or rest == " (no-tuple-data)":
        raise ResyncRequired(f"{decoded.op} without row keys in the change stream: {line[:120]!r}")
    if decoded.op == "INSERT":
        return [("insert", _key(_read_tuple(rest, 0)[0], line))]
    if decoded.op == "DELETE":
        return [("delete", _key(_read_tuple(rest, 0)[0], line))]
    old_key = None
    if rest.startswith(" old-key:"):
        old, i = _read_tuple(rest, len(" old-key:"))
        old_key = _key(old, line)
        rest = rest[i + len(" new-tuple:") :]
    new_key = _key(_read_tuple(rest, 0)[0], line)
    if old_key is not None and old_key != new_key:
        return [("delete", old_key), ("update", new_key)]
    return [("update", new_key)]


def collect(rows: Iterable[tuple[str, str]], table: tuple[str, str]) -> tuple[list[Change], str | None, bool]:
    """Changes to `table` from (lsn, data) rows, whole transactions only: (changes, last COMMIT's LSN,
    whether the rows ended inside a transaction)."""
    changes: list[Change] = []
    pending: list[tuple[ChangeKind, str, str]] = []
    last_commit: str | None = None
    open_txn = False
    for lsn, line in rows:
        decoded = decode_line(line)
        if decoded.op == "BEGIN":
            pending, open_txn = [], True
        elif decoded.op == "COMMIT":
            changes += [Change(kind, doc_id, at, decoded.committed_at) for kind, doc_id, at in pending]
            pending, open_txn, last_commit = [], False, lsn
        elif table in decoded.tables:
            pending += [(kind, doc_id, lsn) for kind, doc_id in changes_of(decoded, line)]
    return changes, last_commit, open_txn


# --- the feed -------------------------------------------------------------------------------------------


class PostgresChangeFeed:
    """Changes to one table through one logical replication slot; see the module docstring for a run."""

    def __init__(self, settings: PostgresSettings):
        self.settings = settings
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
        """Consume everything up to `lsn`; call only after the run that applied the batch succeeded."""
        lsn_value(lsn)
        with self._cursor() as cur:
            cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.settings.slot, lsn))

    def fetch(self, ids: Iterable[str]) -> list[SourceRow]:
        """Current rows for these ids, by id; ids no longer in the table are absent."""
        wanted = sorted(set(ids))
        rows: list[SourceRow] = []
        with self._cursor() as cur:
            for start in range(0, len(wanted), FETCH_BATCH):
                cur.execute(
                    sql.SQL("SELECT id, title, body, updated_at FROM {} WHERE id = ANY(%s)").format(
                        self._table()
                    ),
                    (wanted[start : start + FETCH_BATCH],),
                )
                rows += [_source_row(row) for row in cur.fetchall()]
        return sorted(rows, key=lambda row: row.doc_id)

    def snapshot(self) -> list[SourceRow]:
        """Every row, by id: the initial load, read after the slot was created."""
        with self._cursor() as cur:
            cur.execute(
                sql.SQL("SELECT id, title, body, updated_at FROM {} ORDER BY id").format(self._table())
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


def _source_row(row: tuple[Any, ...]) -> SourceRow:
    doc_id, title, body, updated_at = row
    at = updated_at.replace(tzinfo=UTC) if updated_at.tzinfo is None else updated_at.astimezone(UTC)
    return SourceRow(doc_id=str(doc_id), title=title or "", body=body, updated_at=at)
