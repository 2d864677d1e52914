"""Exact top-k kept between evaluations, on real LanceDB (seeded unit vectors, no model): after rows are
added, rewritten and deleted, the memo's answer is the one a pass over every vector gives, having scored
only the rows written since; when the memo cannot answer (other queries, too many of its rows gone) a
full pass does, and leaves a memo of its own."""

from contextlib import nullcontext

import numpy as np
import pyarrow as pa
import pytest
from lancedb.expr import col, lit

from embedding_assets.index import ann, store, tables
from embedding_assets.index.change_log import ChangeLog
from embedding_assets.quality import exact_memo
from embedding_assets.quality.exact_memo import exact_top_k_memoized

DIMENSION = 16
VERSION = "memo-test"
K = 12


def _rows(ids: range, seed: int) -> pa.Table:
    vectors = np.random.default_rng(seed).normal(size=(len(ids), DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pa.table(
        {
            "chunk_id": [f"d{i // 3}#{i % 3}" for i in ids],
            "doc_id": [f"d{i // 3}" for i in ids],
            "chunk_hash": [f"h{seed}-{i}" for i in ids],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMENSION),
        }
    )


def _queries(seed: int, n: int = 9) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).normal(size=(n, DIMENSION)).astype(np.float32))


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "EXACT_BATCH", 700)  # several batches, each merged into the lists
    db = store.connect(tmp_path)
    db.create_table(tables.index_table(VERSION), _rows(range(2_000), seed=0))
    return db


def _both(db, queries):
    """The memoized answer (and how it came) and a full exact pass, at the table's latest version."""
    table = db.open_table(tables.index_table(VERSION))
    found, how = exact_top_k_memoized(db, VERSION, table, queries, K, "doc_id")
    expected, _ = ann.exact_top_k(table, queries, K, "doc_id")
    return found, how, expected


@pytest.mark.parametrize("logged", [False, True], ids=["diffing-whole-tables", "from-the-change-log"])
def test_after_adds_rewrites_and_deletes_the_memo_answers_exactly(db, monkeypatch, logged):
    name = tables.index_table(VERSION)
    log = ChangeLog(db, name)
    if logged:  # the table's writes are logged (as the index stage's are): the memo reads only theirs
        with log.write("rows", None):
            pass
    queries = _queries(1)
    found, how, expected = _both(db, queries)
    assert how == "full pass" and found == expected

    def write(rows: pa.Table | None = None, deleted: set[str] = frozenset()) -> None:
        docs = set(rows["doc_id"].to_pylist()) if rows is not None else set(deleted)
        with log.write("rows", None) if logged else nullcontext() as written:
            if logged:
                written.touches(docs)
            if rows is not None:
                table.merge_insert(
                    "chunk_id"
                ).when_matched_update_all().when_not_matched_insert_all().execute(rows)
            else:
                table.delete(col("doc_id").isin(sorted(deleted)).to_sql())

    table = db.open_table(name)
    write(_rows(range(2_000, 2_150), seed=2))  # new chunks, some of them near the queries
    write(_rows(range(100, 160), seed=3))  # same chunk ids, new text: new hash, new vector
    write(deleted={row for rows in found[:4] for row in rows[:2]})  # the best rows of some queries leave

    scored, diffs = [], []
    original = ann.TopK.add
    monkeypatch.setattr(
        ann.TopK, "add", lambda self, m, ids, *a: scored.append(len(m)) or original(self, m, ids, *a)
    )
    for diff in ("_whole_table_diff", "_logged_diff"):
        real = getattr(exact_memo, diff)
        monkeypatch.setattr(exact_memo, diff, lambda *a, real=real, diff=diff: diffs.append(diff) or real(*a))
    found, how, expected = _both(db, queries)
    assert how == "memo" and found == expected
    assert scored[0] == 150 + 60  # only the rows written since the memo's state were scored
    assert diffs == ["_logged_diff" if logged else "_whole_table_diff"]


def test_other_queries_or_a_memo_emptied_by_deletes_take_a_full_pass(db, monkeypatch):
    queries = _queries(1)
    assert _both(db, queries)[1] == "full pass"
    found, how, expected = _both(db, _queries(4))
    assert how == "full pass" and found == expected  # other queries: the memo is theirs now

    monkeypatch.setattr(exact_memo, "MEMO_DEPTH_FACTOR", 1)  # lists exactly K deep: one loss empties them
    assert _both(db, queries)[1] == "full pass"
    table = db.open_table(tables.index_table(VERSION))
    table.delete((col("doc_id") == lit(_both(db, queries)[0][0][0])).to_sql())
    found, how, expected = _both(db, queries)
    assert how == "full pass" and found == expected


def test_a_recreated_table_is_never_diffed_against_the_memo_of_the_old_one(db):
    queries = _queries(1)
    assert _both(db, queries)[1] == "full pass"
    db.drop_table(tables.index_table(VERSION))
    again = pa.concat_tables([_rows(range(2_000), seed=0), _rows(range(2_000, 2_300), seed=7)])
    db.create_table(tables.index_table(VERSION), again)  # its version 1 holds rows the memo never saw
    found, how, expected = _both(db, queries)
    assert how == "full pass" and found == expected


def test_a_memo_from_another_release_is_ignored(db):
    queries = _queries(1)
    assert _both(db, queries)[1] == "full pass"
    name = tables.exact_memo_table(VERSION)
    lists = db.open_table(name).to_arrow()
    state = pa.array(['{"table": "index__memo-test", "renamed_field": 1}'] * lists.num_rows)
    db.create_table(
        name, lists.set_column(lists.schema.get_field_index("state"), "state", state), mode="overwrite"
    )
    found, how, expected = _both(db, queries)
    assert how == "full pass" and found == expected


def test_a_memo_of_another_purpose_leaves_the_default_one_in_place(db):
    """The ann_recall check keeps the lists of its own queries apart from the golden gate's."""
    table = db.open_table(tables.index_table(VERSION))
    golden, other = _queries(21), _queries(22)
    assert exact_top_k_memoized(db, VERSION, table, golden, K, "doc_id")[1] == "full pass"
    assert exact_top_k_memoized(db, VERSION, table, other, K, "chunk_id", purpose="probe")[1] == "full pass"
    assert exact_top_k_memoized(db, VERSION, table, golden, K, "doc_id")[1] == "memo"
    assert exact_top_k_memoized(db, VERSION, table, other, K, "chunk_id", purpose="probe")[1] == "memo"
