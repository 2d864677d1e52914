"""Exact top-k lists kept from one gate run to the next, so scoring a table after a small change reads
the change, not every vector again.

A memo holds, for each query vector, its MEMO_DEPTH best rows of one table state (their key, document and
score) and a floor: no row of that state outside the list scores above it. For a later state of the same
table, the rows whose (chunk_id, chunk_hash) pair the memo's state lacks are the only ones scored; rows
that left are dropped from the lists. The result is exact while every list keeps at least the depth
asked for; otherwise (or with no usable memo: other queries, another table, a state no longer readable)
one pass over every vector answers, and leaves a memo of its own. A (chunk_id, chunk_hash) pair always
carries the same vector within a version: the cache is addressed by chunk hash and the fingerprint is
pinned."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.index import ann, change_log, store, tables
from embedding_assets.index.change_log import ChangeLog

MEMO_DEPTH_FACTOR = 2  # a memo keeps twice the depth asked, so the rows that leave later leave enough
MEMO_KEPT = timedelta(minutes=10)  # replaced memos are deleted once older than this
PAIR = ("chunk_id", "chunk_hash")  # a row's key and the text its vector encodes: same pair, same vector


@dataclass(frozen=True)
class MemoState:
    """What a memo was measured on: a table state, the query vectors (a digest), the id column, depth."""

    table: str
    table_version: int
    committed_at: str
    queries: str
    id_column: str
    depth: int


def queries_digest(vectors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vectors, np.float32).tobytes()).hexdigest()[:32]


def _pairs(rows: pa.Table) -> pa.Array:
    return store.joined_key(rows, *PAIR)


def exact_top_k_memoized(
    db: lancedb.DBConnection,
    version_id: str,
    table: lancedb.table.Table,
    vectors: Sequence[np.ndarray],
    k: int,
    id_column: str,
    *,
    purpose: str = "",
) -> tuple[list[list[str]], str]:
    """`ann.exact_top_k(table, vectors, k, id_column)` at the table's checked-out state, from the
    version's memo when one still applies (then only the rows written since are scored); and how it was
    answered, "memo" or "full pass". Either way the version's memo is left at this state. `purpose`
    keeps a memo of its own for another set of queries (the golden gate's is the default)."""
    memo = tables.exact_memo_table(version_id, purpose)
    queries = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    committed = str(store.version_committed_at(table, table.version))
    state = MemoState(table.name, table.version, committed, queries_digest(queries), id_column, k)
    depth = k * MEMO_DEPTH_FACTOR
    top = ann.TopK(queries, depth)
    floors = _update(db, memo, table, state, top)
    how = "memo"
    if floors is None or min(map(len, top.rows), default=k) < min(k, table.count_rows()):
        how, top = "full pass", ann.TopK(queries, depth)
        ann.scan_into(top, table, _columns(id_column), lambda rows: _keys(rows, id_column))
        floors = top.floors()
    _save(db, memo, state, top, floors)
    return [[key.rsplit(store.KEY_SEPARATOR, 1)[1] for key in rows[:k]] for rows in top.rows], how


def _columns(id_column: str) -> list[str]:
    """The columns a memo's keys are made of (the id column may be one of the pair: chunk_id)."""
    return list(dict.fromkeys([*PAIR, id_column]))


def _keys(rows: pa.Table | pa.RecordBatch, id_column: str) -> np.ndarray:
    """chunk_id, chunk_hash and the id column of each row as one string (unit separators apart)."""
    return np.asarray(store.joined_key(rows, *PAIR, id_column).to_numpy(zero_copy_only=False), object)


def _update(
    db: lancedb.DBConnection, name: str, table: lancedb.table.Table, state: MemoState, top: ann.TopK
) -> np.ndarray | None:
    """Seed `top` from the memo table `name` and score the rows written since its state; the floors that
    then hold, or None when there is no memo for these queries on a readable state of this table."""
    memo = _load(db, name)
    if memo is None:
        return None
    then, lists = memo
    same = (then.table, then.queries, then.id_column) == (state.table, state.queries, state.id_column)
    if not same or then.depth < state.depth:
        return None
    before = db.open_table(table.name)
    try:
        before.checkout(then.table_version)
    except Exception:  # cleaned up since: nothing to diff against
        return None
    if str(store.version_committed_at(before, then.table_version)) != then.committed_at:
        return None  # the table was recreated: its version numbers started again
    columns = [*_columns(state.id_column), ann.VECTOR_COLUMN]
    then_state, now_state = (f"{s.table_version}@{s.committed_at}" for s in (then, state))
    changed = ChangeLog(db, table.name).changed_after(then_state, now_state)
    if changed is None:
        is_kept, written = _whole_table_diff(before, table, columns)
    else:
        is_kept, written = _logged_diff(before, table, changed, columns)
    floors = lists["floor"].to_numpy().astype(np.float32)
    keys = store.flat(lists["keys"])
    pairs = pc.list_element(
        pc.split_pattern(keys.flatten(), store.KEY_SEPARATOR, max_splits=1, reverse=True), 0
    )
    kept = is_kept(pairs).to_numpy(zero_copy_only=False)
    every_key = np.asarray(keys.flatten().to_numpy(zero_copy_only=False), object)
    every_score = np.asarray(store.flat(lists["scores"]).flatten().to_numpy(), np.float32)
    offsets = keys.offsets.to_numpy()
    for query in range(len(keys)):
        part = slice(offsets[query], offsets[query + 1])
        top.seed(query, every_key[part][kept[part]], every_score[part][kept[part]])
    if written.num_rows:
        rows, matrix = ann.vectors_of(written)
        top.add(matrix, _keys(rows, state.id_column), floors)
    return np.maximum(floors, top.floors())


PairTest = Callable[[pa.Array], pa.Array]  # which of some (chunk_id, chunk_hash) pairs a table still holds


def _whole_table_diff(
    before: lancedb.table.Table, table: lancedb.table.Table, columns: list[str]
) -> tuple[PairTest, pa.Table]:
    """Which pairs `table` still holds, and its rows (`columns`) written since `before`: the pairs of
    both table versions compared whole."""
    old = _pairs(store.scanned(before.search().select(list(PAIR)).limit(None)))
    now = store.scanned(table.search().select(list(PAIR)).with_row_id(True).limit(None))
    present = _pairs(now)
    new = now.filter(pc.invert(pc.is_in(present, value_set=old)))["_rowid"].to_pylist()
    written = table.take_row_ids(new).select(columns).to_arrow() if new else _no_rows(table, columns)
    return (lambda pairs: pc.is_in(pairs, value_set=present)), written


def _logged_diff(
    before: lancedb.table.Table, table: lancedb.table.Table, changed: pa.Array, columns: list[str]
) -> tuple[PairTest, pa.Table]:
    """`_whole_table_diff` from only the rows of the documents that the table's change log says were
    written since `before`: every other row is as it was."""
    old = _pairs(_rows_of(before, changed, list(PAIR)))
    now = _rows_of(table, changed, columns)
    present = _pairs(now)
    left = old.filter(pc.invert(pc.is_in(old, value_set=present)))
    written = now.filter(pc.invert(pc.is_in(present, value_set=old)))
    return (lambda pairs: pc.invert(pc.is_in(pairs, value_set=left))), written


def _rows_of(table: lancedb.table.Table, docs: pa.Array, columns: list[str]) -> pa.Table:
    parts = list(store.table_batches_for_keys(table, change_log.DOC_KEY, docs, columns))
    return pa.concat_tables(parts) if parts else _no_rows(table, columns)


def _no_rows(table: lancedb.table.Table, columns: list[str]) -> pa.Table:
    return pa.schema([table.schema.field(c) for c in columns]).empty_table()


def _load(db: lancedb.DBConnection, name: str) -> tuple[MemoState, pa.Table] | None:
    if name not in store.table_names(db):
        return None
    try:
        lists = db.open_table(name).to_arrow().sort_by("query")
    except Exception:  # being replaced by another run meanwhile: do without
        return None
    if not lists.num_rows:
        return None
    try:
        return MemoState(**json.loads(lists["state"][0].as_py())), lists
    except (TypeError, ValueError):  # written by another release of this module: not comparable
        return None


def _save(db: lancedb.DBConnection, name: str, state: MemoState, top: ann.TopK, floors: np.ndarray) -> None:
    lists = pa.table(
        {
            "query": pa.array(range(len(top.rows)), pa.int32()),
            "keys": pa.array([list(rows) for rows in top.rows], pa.list_(pa.string())),
            "scores": pa.array([list(map(float, s)) for s in top.scores], pa.list_(pa.float32())),
            "floor": pa.array(floors, pa.float32()),
            "state": pa.array([json.dumps(state.__dict__)] * len(top.rows), pa.string()),
        }
    )
    try:
        memo = db.create_table(name, data=lists, mode="overwrite")
        memo.optimize(cleanup_older_than=MEMO_KEPT)  # earlier memos go; one a reader may hold stays
    except Exception as exc:  # another run replacing it meanwhile: this answer stands without a memo
        warnings.warn(f"exact memo {name} not kept: {exc}", stacklevel=2)
