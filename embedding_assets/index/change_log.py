"""Change logs: which documents each write to a logged table touched, so the stage that reads the table
next reads only those documents' rows instead of diffing whole tables.

A writer records the documents it is about to touch (intent rows, before it writes: a write-ahead log),
writes, then commits: one row with the table's state after the write, the writer's settings, and how far
it had read its own input's log. A reader trusts a log while its last commit names the table's current
state (no write went unlogged since), every commit since the reader's last is continuous (its writer
started from a state the log covered) and the log still holds that commit; otherwise it diffs whole
tables, as a first build does. A crash between intent and commit leaves the table ahead of the log's last
commit: readers diff whole tables once, and the intents stay for whoever reads past them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.index import store, tables

LOG_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("doc_id", pa.string()),  # an intent: this write touches this document's rows; null on a commit
        ("table_state", pa.string()),  # a commit: the logged table's state after the write
        ("settings", pa.string()),  # a commit: what the writer's rows depend on (config, fingerprint)
        ("input_seq", pa.int64()),  # a commit: the last commit of its input's log the writer had read
        ("continuous", pa.bool_()),  # a commit: the writer started from a state this log covered
        ("logged_at", store.TIMESTAMP),
    ]
)
DOC_KEY = "doc_id"  # the column every logged table keys its rows' documents by
KEPT_SEQUENCES = 512  # a reader further behind than this many writes diffs whole tables
PRUNE_EVERY = 64  # writes between two prunings (and compactions) of a log


@dataclass(frozen=True)
class Commit:
    seq: int
    table_state: str
    settings: str
    input_seq: int | None
    continuous: bool


def _read_commits(log: lancedb.table.Table) -> tuple[Commit, ...]:
    """The commit rows of the log at the version it has open, oldest first."""
    query = log.search().where("table_state IS NOT NULL")  # a commit's; a null column reads fast
    rows = store.scanned(
        query.select(["seq", "table_state", "settings", "input_seq", "continuous"]).limit(None)
    )
    return tuple(Commit(**row) for row in rows.sort_by("seq").to_pylist())


_COMMITS = store.VersionMemo()


@dataclass(frozen=True)
class Scope:
    """What a stage must read: `docs`, the documents changed since it last read its input (None: every
    document, a whole-table diff), and the input's last commit (`input_seq`) to record once it is done."""

    docs: pa.Array | None
    input_seq: int | None


class ChangeLog:
    """The change log of the LanceDB table `table_name`."""

    def __init__(self, db: lancedb.DBConnection, table_name: str):
        self.db = db
        self.table_name = table_name
        self.name = tables.change_log_table(table_name)

    def commits(self) -> list[Commit]:
        """Every commit the log holds, oldest first: read once per version of the log in this process
        (`store.VersionMemo`), since a stage and each gate ask for them again and the log keeps a whole
        build's intents (90,000 rows at 248k chunks) beside them."""
        if self.name not in store.table_names(self.db):
            return []
        log = self.db.open_table(self.name)
        return list(_COMMITS.get(log, log.version, lambda: _read_commits(log)))

    def head(self, commits: list[Commit] | None = None) -> Commit | None:
        """The last commit (of `commits`, read if not given), if it names the table's current state: every
        write since it is logged."""
        commits = self.commits() if commits is None else commits
        if commits and commits[-1].table_state == store.table_state(self.db, self.table_name):
            return commits[-1]
        return None

    def changed_since(
        self, seq: int | None, head: Commit, commits: list[Commit] | None = None
    ) -> pa.Array | None:
        """The distinct documents written after commit `seq` up to `head` (None if the log cannot tell:
        no such commit kept, or a commit since then started from an unlogged state)."""
        if seq is None:
            return None
        commits = self.commits() if commits is None else commits
        if not any(c.seq == seq for c in commits):
            return None
        if not all(c.continuous for c in commits if seq < c.seq <= head.seq):
            return None
        where = f"seq > {int(seq)} AND seq <= {int(head.seq)}"  # ids read for these rows only; commits' null
        docs = store.flat(store.read_columns(self.db, self.name, ["doc_id"], where)["doc_id"])
        return pc.unique(pc.drop_null(docs))

    def changed_after(self, then: str, now: str) -> pa.Array | None:
        """The documents written between the table states `then` and `now` (as `store.table_state`
        names them), if the log holds a commit of each and `now` is the table's current state."""
        commits = self.commits()
        head = self.head(commits)
        if head is None or head.table_state != now:
            return None
        commit = next((c for c in reversed(commits) if c.table_state == then), None)
        return self.changed_since(commit.seq, head, commits) if commit else None

    @contextmanager
    def write(self, settings: str, input_seq: int | None) -> Iterator[LoggedWrite]:
        """Log one write of the table: intents go in before the rows they name, the commit after."""
        head = self.head()
        table = store.open_table(self.db, self.name, LOG_SCHEMA)
        logged = LoggedWrite(table, self._next_seq(table))
        yield logged
        unchanged = head is not None and head.table_state == store.table_state(self.db, self.table_name)
        if unchanged and not logged.touched and (settings, input_seq) == (head.settings, head.input_seq):
            return  # nothing written and nothing new read: the last commit still says it all
        self._commit(table, logged.seq, settings, input_seq, head is not None)
        if logged.seq % PRUNE_EVERY == 0:
            table.delete(f"seq <= {logged.seq - KEPT_SEQUENCES}")
            table.optimize()

    @contextmanager
    def same_rows(self) -> Iterator[None]:
        """Log a write that changes no row (an index build, a compaction): if the log covered the table
        before it, it covers the table after it too."""
        head = self.head()
        yield
        if head is not None and store.table_state(self.db, self.table_name) != head.table_state:
            table = store.open_table(self.db, self.name, LOG_SCHEMA)
            self._commit(table, self._next_seq(table), head.settings, head.input_seq, True)

    def _next_seq(self, table: lancedb.table.Table) -> int:
        seqs = store.scanned(table.search().select(["seq"]).limit(None))["seq"]
        return int(pc.max(seqs).as_py() or 0) + 1

    def _commit(
        self, table: lancedb.table.Table, seq: int, settings: str, input_seq: int | None, continuous: bool
    ) -> None:
        """Append the commit row of write `seq`, naming the logged table's state now."""
        state = store.table_state(self.db, self.table_name)
        row = {"seq": seq, "table_state": state, "settings": settings, "input_seq": input_seq}
        table.add(
            pa.Table.from_pylist(
                [{**row, "continuous": continuous, "logged_at": datetime.now(UTC)}], LOG_SCHEMA
            )
        )


@dataclass
class LoggedWrite:
    table: lancedb.table.Table  # the log
    seq: int
    touched: int = 0

    def touches(self, doc_ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> None:
        """Record that the write is about to touch these documents' rows (call before writing them)."""
        if not isinstance(doc_ids, pa.Array | pa.ChunkedArray):
            doc_ids = pa.array(list(doc_ids), pa.string())
        values = pc.unique(store.flat(doc_ids))
        if len(values):
            n = len(values)
            self.touched += n
            self.table.add(
                pa.table(
                    {
                        "seq": pa.array([self.seq] * n, pa.int64()),
                        "doc_id": values.cast(pa.string()),
                        "table_state": pa.nulls(n, pa.string()),
                        "settings": pa.nulls(n, pa.string()),
                        "input_seq": pa.nulls(n, pa.int64()),
                        "continuous": pa.nulls(n, pa.bool_()),
                        "logged_at": pa.array([datetime.now(UTC)] * n, store.TIMESTAMP),
                    },
                    schema=LOG_SCHEMA,
                )
            )


def scope(db: lancedb.DBConnection, input_table: str, output_table: str, settings: str) -> Scope:
    """What a stage that reads `input_table` into `output_table` (its rows made with `settings`) must
    read now: only the documents whose input rows changed since it last wrote, when both logs can tell."""
    source = ChangeLog(db, input_table)
    source_commits = source.commits()
    source_head = source.head(source_commits)
    own_head = ChangeLog(db, output_table).head()
    input_seq = source_head.seq if source_head else None
    if source_head is None or own_head is None or own_head.settings != settings:
        return Scope(None, input_seq)
    return Scope(source.changed_since(own_head.input_seq, source_head, source_commits), input_seq)


def read_scoped(db: lancedb.DBConnection, name: str, columns: list[str], docs: pa.Array | None) -> pa.Table:
    """`columns` of the rows of table `name` of the documents `docs` (None: every row)."""
    if docs is None:
        return store.read_columns(db, name, columns)
    return store.rows_for_keys(db, name, DOC_KEY, docs, columns)
