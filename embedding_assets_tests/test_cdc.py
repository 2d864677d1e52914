"""Change capture by logical decoding, against a real PostgreSQL server (configured, or a throwaway one)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from psycopg2 import sql

from embedding_assets.corpus.postgres.decoding import (
    Change,
    ChangeBatch,
    ResyncRequired,
    changes_of,
    decode_line,
    lsn_value,
    split_table_name,
)
from embedding_assets.corpus.postgres.feed import PostgresChangeFeed
from embedding_assets.corpus.postgres.settings import PostgresSettings
from embedding_assets_tests import pg

INSERT = "INSERT INTO {t} (id, title, body) VALUES (%s, %s, %s)"
SET_TITLE = "UPDATE {t} SET title = %s WHERE id = %s"
DELETE = "DELETE FROM {t} WHERE id = %s"
PASSWORD = "pw-Must-Not-Leak"

FeedFactory = Callable[..., PostgresChangeFeed]


@pytest.fixture
def new_feed(postgres: PostgresSettings) -> Iterator[FeedFactory]:
    """Feeds on their own table and slot (`{uid}` in a table name is made unique); their slots, tables and
    the schemas named with `{uid}` are dropped afterwards."""
    made: list[tuple[PostgresChangeFeed, str]] = []

    def make(table: str = "docs_{uid}", slot: bool = True) -> PostgresChangeFeed:
        uid = uuid.uuid4().hex[:10]
        feed = PostgresChangeFeed(replace(postgres, table=table.format(uid=uid), slot=f"test_{uid}"))
        made.append((feed, uid))
        feed.ensure_table()
        if slot:
            assert feed.ensure_slot()
        return feed

    yield make
    for feed, uid in made:
        feed.drop_slot()
        write(feed, ("DROP TABLE IF EXISTS {t}", ()))
        schema, _ = split_table_name(feed.settings.table)
        if schema and uid in schema:
            write(feed, (sql.SQL("DROP SCHEMA {}").format(sql.Identifier(schema)), ()))


@pytest.fixture
def feed(new_feed: FeedFactory) -> PostgresChangeFeed:
    return new_feed()


def table_sql(feed: PostgresChangeFeed) -> sql.Identifier:
    schema, name = split_table_name(feed.settings.table)
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def write(feed: PostgresChangeFeed, *statements: tuple[str | sql.Composable, tuple]) -> None:
    """Run the statements in one transaction; `{t}` names the feed's table."""
    with closing(feed.settings.connect()) as conn:
        conn.autocommit = False
        with conn, conn.cursor() as cur:
            for query, params in statements:
                composed = sql.SQL(query).format(t=table_sql(feed)) if isinstance(query, str) else query
                cur.execute(composed, params)


def server_now(feed: PostgresChangeFeed) -> datetime:
    with closing(feed.settings.connect()) as conn, conn.cursor() as cur:
        cur.execute("SELECT clock_timestamp()")
        row = cur.fetchone()
    assert row is not None
    return row[0]


def kinds(batch: ChangeBatch) -> list[tuple[str, str]]:
    return [(change.kind, change.doc_id) for change in batch.changes]


# --- settings -------------------------------------------------------------------------------------------

BASE_ENV = {"EMBEDDING_ASSETS_PG_HOST": "db.internal", "EMBEDDING_ASSETS_PG_USER": "ingest"}


def test_settings_from_env_prefer_ours_then_libpq() -> None:
    env = BASE_ENV | {"PGHOST": "ignored", "PGPORT": "6543", "PGDATABASE": "corpus", "PGPASSWORD": PASSWORD}
    settings = PostgresSettings.from_env(env)
    assert (settings.host, settings.port, settings.user, settings.dbname) == (
        "db.internal",
        6543,
        "ingest",
        "corpus",
    )
    assert (settings.password, settings.table, settings.slot) == (PASSWORD, "documents", "embedding_assets")
    assert (
        settings.describe()
        == "postgresql://ingest@db.internal:6543/corpus table=documents slot=embedding_assets"
    )
    for shown in (settings.describe(), repr(settings), str(settings)):
        assert PASSWORD not in shown
    custom = PostgresSettings.from_env(
        env | {"EMBEDDING_ASSETS_PG_TABLE": "public.docs", "EMBEDDING_ASSETS_PG_SLOT": "my_slot"}
    )
    assert (custom.table, custom.slot, custom.port) == ("public.docs", "my_slot", 6543)
    assert PostgresSettings.from_env({"PGHOST": "h", "PGUSER": "u", "PGDATABASE": "d"}).port == 5432


def test_settings_name_every_missing_variable() -> None:
    with pytest.raises(ValueError) as raised:
        PostgresSettings.from_env({"PGUSER": "someone", "PGPASSWORD": PASSWORD})
    message = str(raised.value)
    for name in ("EMBEDDING_ASSETS_PG_HOST", "PGHOST", "EMBEDDING_ASSETS_PG_DB", "PGDATABASE"):
        assert name in message
    assert "EMBEDDING_ASSETS_PG_USER" not in message and PASSWORD not in message


@pytest.mark.parametrize(
    "extra",
    [
        {"EMBEDDING_ASSETS_PG_PORT": "54x"},
        {"EMBEDDING_ASSETS_PG_SLOT": "Has-Dashes"},
        {"EMBEDDING_ASSETS_PG_TABLE": "a.b.c"},
        {"EMBEDDING_ASSETS_PG_TABLE": '"unterminated'},
    ],
)
def test_settings_reject_bad_values(extra: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        PostgresSettings.from_env(BASE_ENV | {"EMBEDDING_ASSETS_PG_DB": "d"} | extra)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("documents", (None, "documents")),
        ("public.documents", ("public", "documents")),
        ("my docs", (None, "my docs")),
        ('public."my.docs"', ("public", "my.docs")),
        ('"Odd ""Schema""".Docs', ('Odd "Schema"', "Docs")),
    ],
)
def test_split_table_name(table: str, expected: tuple[str | None, str]) -> None:
    assert split_table_name(table) == expected


def test_password_is_used_but_never_shown(postgres: PostgresSettings) -> None:
    # The throwaway server trusts 127.0.0.1, so any password works; a configured one keeps its own.
    settings = postgres if pg.configured() else replace(postgres, password=PASSWORD)
    with closing(settings.connect()) as conn:
        assert conn.autocommit
    settings = replace(settings, password=PASSWORD)
    assert PASSWORD not in settings.describe() + repr(settings)
    assert PASSWORD not in str(PostgresChangeFeed(settings).slot_position())


# --- test_decoding lines --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("BEGIN 735", ("BEGIN", None)),
        ("BEGIN", ("BEGIN", None)),
        ("COMMIT 735", ("COMMIT", None)),
        (
            "COMMIT 735 (at 2026-11-21 23:40:01.123456+00)",
            ("COMMIT", datetime(2026, 11, 21, 23, 40, 1, 123456, UTC)),
        ),
        (
            "COMMIT 9 (at 2026-11-22 05:10:01.5+05:30)",
            ("COMMIT", datetime(2026, 11, 21, 23, 40, 1, 500000, UTC)),
        ),
        ("message: transactional: 0 prefix: p, sz: 5 content:hello", ("OTHER", None)),
    ],
)
def test_decode_begin_commit_and_other_lines(line: str, expected: tuple[str, datetime | None]) -> None:
    decoded = decode_line(line)
    assert (decoded.op, decoded.committed_at) == expected


@pytest.mark.parametrize(
    ("line", "tables", "changes"),
    [
        (
            "table public.documents: INSERT: id[text]:'a''b' title[text]:'x y' body[text]:'1 id[text]:''z'''",
            [("public", "documents")],
            [("insert", "a'b")],
        ),
        (
            'table "Sch ""1"""."my: docs": UPDATE: tags[text[]]:\'{a,"b c"}\' n[numeric(10,2)]:1.50 '
            "flag[boolean]:true bits[bit(3)]:B'101' note[text]:null "
            "\"Odd [col]\"[\"my type\"]:'v' id[text]:'k'",
            [('Sch "1"', "my: docs")],
            [("update", "k")],
        ),
        (
            "table public.documents: UPDATE: id[text]:'big' title[text]:'t' body[text]:unchanged-toast-datum",
            [("public", "documents")],
            [("update", "big")],
        ),
        (
            "table public.documents: UPDATE: old-key: id[text]:'old' new-tuple: id[text]:'new' n[int4]:1",
            [("public", "documents")],
            [("delete", "old"), ("update", "new")],
        ),
        ("table public.documents: DELETE: id[text]:'gone'", [("public", "documents")], [("delete", "gone")]),
        ("table public.numbers: DELETE: id[integer]:42", [("public", "numbers")], [("delete", "42")]),
    ],
)
def test_decode_table_lines(line: str, tables: list[tuple[str, str]], changes: list[tuple[str, str]]) -> None:
    decoded = decode_line(line)
    assert list(decoded.tables) == tables
    assert changes_of(decoded, line) == changes


@pytest.mark.parametrize(
    "line",
    [
        "table public.documents, public.other: TRUNCATE: cascade",
        "table public.documents: DELETE: (no-tuple-data)",
    ],
)
def test_changes_without_keys_require_a_resync(line: str) -> None:
    with pytest.raises(ResyncRequired):
        changes_of(decode_line(line), line)


def test_unparsable_lines_fail_loudly() -> None:
    for line in (
        "table public.documents: MERGE: id[text]:'a'",
        "table public.documents: INSERT: title[text]:'x'",
    ):
        with pytest.raises(ValueError):
            changes_of(decode_line(line), line)


def change(kind: str, doc_id: str) -> Change:
    return Change(kind, doc_id, "0/0", None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "upserted", "deleted"),
    [
        ([change("insert", "a"), change("delete", "a")], set(), {"a"}),
        ([change("delete", "a"), change("insert", "a")], {"a"}, set()),
        ([change("insert", "a"), change("update", "a"), change("update", "b")], {"a", "b"}, set()),
        ([change("delete", "a"), change("insert", "a"), change("delete", "a")], set(), {"a"}),
        ([], set(), set()),
    ],
)
def test_net_last_change_wins(changes: list[Change], upserted: set[str], deleted: set[str]) -> None:
    assert ChangeBatch(changes, None).net() == (upserted, deleted)


# --- against the server ---------------------------------------------------------------------------------


def test_ensure_slot_is_idempotent(feed: PostgresChangeFeed) -> None:
    assert feed.ensure_slot() is False
    assert feed.ensure_slot() is False
    position = feed.slot_position()
    assert position["exists"] and position["pending_changes"] == 0
    feed.drop_slot()
    feed.drop_slot()
    assert feed.slot_position()["exists"] is False
    assert feed.ensure_slot() is True


def test_peek_returns_each_committed_change(feed: PostgresChangeFeed) -> None:
    before = server_now(feed)
    write(feed, (INSERT, ("a", "A", "alpha")), (INSERT, ("b", "B", "beta")))
    write(feed, (SET_TITLE, ("A2", "a")))
    write(feed, (DELETE, ("b",)))
    after = server_now(feed)
    batch = feed.peek()
    assert kinds(batch) == [("insert", "a"), ("insert", "b"), ("update", "a"), ("delete", "b")]
    times = [c.committed_at for c in batch.changes]
    assert all(t is not None and t.tzinfo == UTC and before <= t <= after for t in times)
    assert times[0] == times[1] < times[2] < times[3]  # one commit for the two inserts
    assert batch.end_lsn is not None
    assert feed.slot_position()["pending_changes"] == 4
    assert [row.doc_id for row in feed.fetch(batch.net()[0])] == ["a"]


def test_peek_does_not_consume_so_a_failed_run_sees_the_same_changes(feed: PostgresChangeFeed) -> None:
    write(feed, (INSERT, ("a", "", "alpha")), (INSERT, ("b", "", "beta")))
    first = feed.peek()
    assert feed.peek() == first

    def failing_run(run_feed: PostgresChangeFeed) -> None:
        batch = run_feed.peek()
        run_feed.fetch(batch.net()[0])
        raise RuntimeError("embedding failed")  # before advance(batch.end_lsn)

    with pytest.raises(RuntimeError):
        failing_run(PostgresChangeFeed(feed.settings))
    assert PostgresChangeFeed(feed.settings).peek() == first


def test_advance_consumes_and_later_changes_are_seen(feed: PostgresChangeFeed) -> None:
    write(feed, (INSERT, ("a", "", "alpha")))
    batch = feed.peek()
    assert batch.end_lsn is not None
    feed.advance(batch.end_lsn)
    assert feed.peek().changes == []
    assert feed.slot_position()["confirmed_flush_lsn"] == batch.end_lsn
    write(feed, (SET_TITLE, ("later", "a")))
    assert kinds(feed.peek()) == [("update", "a")]


def test_an_idle_table_still_lets_the_slot_move_on(feed: PostgresChangeFeed) -> None:
    start = feed.slot_position()["confirmed_flush_lsn"]
    ddl_only = sql.Identifier(f"ddl_{uuid.uuid4().hex[:10]}")
    write(feed, (sql.SQL("CREATE TABLE {} (x int)").format(ddl_only), ()))  # WAL, but no row changes
    write(feed, (sql.SQL("DROP TABLE {}").format(ddl_only), ()))
    batch = feed.peek()
    assert batch.changes == [] and batch.end_lsn is not None
    feed.advance(batch.end_lsn)
    assert lsn_value(feed.slot_position()["confirmed_flush_lsn"]) > lsn_value(start)


def test_advancing_past_an_open_transaction_keeps_its_changes(new_feed: FeedFactory) -> None:
    feed, other = new_feed(), new_feed(slot=False)
    with closing(feed.settings.connect()) as conn:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute(sql.SQL(INSERT).format(t=table_sql(feed)), ("in flight", "", "x"))
            write(other, (INSERT, ("other", "", "x")))  # its commit flushes the WAL past the insert
            batch = feed.peek()  # the uncommitted insert is below the flush position
            assert batch.changes == [] and batch.end_lsn is not None
            feed.advance(batch.end_lsn)
        conn.commit()
    assert kinds(feed.peek()) == [("insert", "in flight")]
    assert lsn_value(str(batch.end_lsn)) > lsn_value(feed.peek().changes[0].lsn)


def test_other_tables_are_skipped_but_still_advance_the_slot(new_feed: FeedFactory) -> None:
    feed = new_feed()
    other = new_feed(slot=False)
    write(other, (INSERT, ("x", "", "other table")))
    only_other = feed.peek()
    assert only_other.changes == [] and only_other.end_lsn is not None
    write(other, (INSERT, ("y", "", "other")))
    write(feed, (INSERT, ("mine", "", "mine")))
    assert kinds(feed.peek()) == [("insert", "mine")]
    feed.advance(only_other.end_lsn)
    assert kinds(feed.peek()) == [("insert", "mine")]


def test_max_changes_never_splits_a_transaction(feed: PostgresChangeFeed) -> None:
    write(feed, *[(INSERT, (f"t1-{i}", "", "x")) for i in range(5)])
    write(feed, (INSERT, ("t2", "", "x")))
    first = feed.peek(max_changes=2)
    assert kinds(first) == [("insert", f"t1-{i}") for i in range(5)]
    assert first.end_lsn is not None
    feed.advance(first.end_lsn)
    assert kinds(feed.peek(max_changes=1)) == [("insert", "t2")]
    with pytest.raises(ValueError):
        feed.peek(max_changes=0)


def test_toasted_body_survives_a_title_only_update(feed: PostgresChangeFeed) -> None:
    body = os.urandom(30_000).hex()  # incompressible: stored out of line (TOAST)
    write(feed, (INSERT, ("big", "old", body)))
    feed.advance(str(feed.peek().end_lsn))
    write(feed, (SET_TITLE, ("new", "big")))
    with closing(feed.settings.connect()) as conn, conn.cursor() as cur:
        cur.execute("SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL)", (feed.settings.slot,))
        assert any("unchanged-toast-datum" in data for (data,) in cur.fetchall())
    batch = feed.peek()
    assert kinds(batch) == [("update", "big")]
    [row] = feed.fetch(batch.net()[0])
    assert (row.title, row.body) == ("new", body)


def test_net_on_real_batches(feed: PostgresChangeFeed) -> None:
    write(feed, (INSERT, ("kept", "", "x")))
    feed.advance(str(feed.peek().end_lsn))
    write(feed, (INSERT, ("short-lived", "", "x")))
    write(feed, (DELETE, ("short-lived",)))
    write(feed, (DELETE, ("kept",)))
    write(feed, (INSERT, ("kept", "", "again")))
    batch = feed.peek()
    assert batch.net() == ({"kept"}, {"short-lived"})
    assert [(r.doc_id, r.body) for r in feed.fetch(["kept", "short-lived"])] == [("kept", "again")]


def test_quotes_unicode_and_lookalike_text_survive(feed: PostgresChangeFeed) -> None:
    ids = ["it's", "a''b", "naïve — 東京 🚀", "x' y:'z", "id[text]:'fake'", " spaced ", "new-tuple: x"]
    body = "line 1\nline 2 ' '' \\ \" table public.documents: DELETE: id[text]:'victim' 🚀"
    write(feed, *[(INSERT, (doc_id, f"title {doc_id}", body)) for doc_id in ids])
    write(feed, (DELETE, ("it's",)))
    batch = feed.peek()
    assert kinds(batch) == [("insert", doc_id) for doc_id in ids] + [("delete", "it's")]
    rows = feed.fetch(ids)
    assert sorted(r.doc_id for r in rows) == sorted(ids[1:])
    assert all(r.body == body and r.title == f"title {r.doc_id}" for r in rows)


def test_quoted_schema_qualified_table(new_feed: FeedFactory) -> None:
    feed = new_feed('"CDC ""Schema"" {uid}"."My Docs.v2 {uid}"')
    _, name = split_table_name(feed.settings.table)
    same_name_in_public = new_feed('"' + name + '"', slot=False)
    write(same_name_in_public, (INSERT, ("public one", "", "x")))
    write(feed, (INSERT, ("schema one", "", "x")))
    assert kinds(feed.peek()) == [("insert", "schema one")]
    assert [r.doc_id for r in feed.snapshot()] == ["schema one"]


def test_primary_key_change_is_a_delete_and_an_update(feed: PostgresChangeFeed) -> None:
    write(feed, (INSERT, ("old", "", "x")))
    feed.advance(str(feed.peek().end_lsn))
    write(feed, ("UPDATE {t} SET id = %s WHERE id = %s", ("new", "old")))
    assert kinds(feed.peek()) == [("delete", "old"), ("update", "new")]


def test_truncate_requires_a_resync(feed: PostgresChangeFeed) -> None:
    write(feed, (INSERT, ("a", "", "x")), ("TRUNCATE {t}", ()))
    with pytest.raises(ResyncRequired):
        feed.peek()


def test_snapshot_and_fetch_read_current_rows(feed: PostgresChangeFeed) -> None:
    write(feed, (INSERT, ("b", "", "beta")), (INSERT, ("a", "T", "alpha")))
    rows = feed.snapshot()
    assert [(r.doc_id, r.title, r.body) for r in rows] == [("a", "T", "alpha"), ("b", "", "beta")]
    assert all(r.updated_at.tzinfo == UTC for r in rows)
    assert [r.doc_id for r in feed.fetch(["b", "missing", "b"])] == ["b"]
    assert feed.fetch([]) == []


@pytest.mark.skipif(not pg.INITDB.exists(), reason=f"needs the PostgreSQL 15 server binaries ({pg.INITDB})")
def test_throwaway_script_start_is_idempotent_and_stop_safe_twice() -> None:
    root = Path(tempfile.mkdtemp(prefix="ea-pg-", dir="/tmp"))
    try:
        env = pg.parse_exports(pg.run_script("start", root, str(pg.free_port())).stdout)
        assert set(env) == {f"EMBEDDING_ASSETS_PG_{key}" for key in ("HOST", "PORT", "USER", "DB")}
        assert pg.parse_exports(pg.run_script("start", root, "1").stdout) == env  # running: same exports
        assert PostgresSettings.from_env(env).describe().startswith("postgresql://postgres@127.0.0.1:")
        pg.run_script("stop", root)
        pg.run_script("stop", root)
    finally:
        pg.run_script("stop", root)
        shutil.rmtree(root, ignore_errors=True)
