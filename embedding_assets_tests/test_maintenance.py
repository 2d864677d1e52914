"""Index maintenance on real LanceDB: unindexed rows folded into the vector index, serving moved to the
maintained table version only when it still served the one maintained and the rows are the same."""

import numpy as np
import pyarrow as pa
import pytest

from embedding_assets.index import ann, store, tables
from embedding_assets.models.registry import DEFAULT_VERSION, load_registry
from embedding_assets.serving.maintenance import MaintenanceChangedRowsError, maintain, rows_digest
from embedding_assets.serving.pointer import ServingPointer
from embedding_assets.serving.promotion import promote

DIMENSION = 16
ROWS = 600


def _rows(start: int, count: int) -> pa.Table:
    vectors = np.random.default_rng(start).normal(size=(count, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"c{i}" for i in range(start, start + count)]
    return pa.table(
        {
            "chunk_id": ids,
            "chunk_hash": [f"h{i}" for i in range(start, start + count)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMENSION),
        }
    )


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A version's table with a vector index, served at the version after rows were added beside it."""
    monkeypatch.setattr(ann, "ANN_MIN_ROWS", 100)
    version = load_registry().get(DEFAULT_VERSION)
    db = store.connect(tmp_path / "lancedb")
    table = db.create_table(tables.index_table(version.id), _rows(0, ROWS))
    assert ann.ensure_vector_index(table).action == "created"
    table.add(_rows(ROWS, 10))  # a refresh's new rows: under OPTIMIZE_UNINDEXED, left beside the index
    pointer = ServingPointer(tmp_path / "serving")
    state = promote(db, version, pointer, gates={"count_reconciliation": {"passed": True}})
    return db, version, pointer, state


def test_maintenance_folds_the_rows_in_and_serving_follows_with_the_same_rows(served):
    db, version, pointer, before = served
    done = maintain(db, version, pointer, run_id="run-1")
    now = pointer.require_current()
    assert done.served and done.unindexed_rows_before == 10 and done.index_action == "optimized"
    assert (now.action, now.table_version, now.seq) == ("optimize", done.table_version_after, before.seq + 1)
    assert (now.gates, now.supersedes, now.serving_since, now.rows) == (
        before.gates,
        before.supersedes,
        before.serving_since,
        before.rows,
    )
    table = db.open_table(before.table)
    assert rows_digest(table, now.table_version) == rows_digest(table, before.table_version)
    assert table.tags.list()[now.lance_tag]["version"] == now.table_version
    latest = db.open_table(before.table)
    assert latest.index_stats(ann.vector_index_name(latest)).num_unindexed_rows == 0
    again = maintain(db, version, pointer)  # nothing left to fold in: no new table version
    assert again.table_version_after == again.table_version_before and pointer.require_current() == now


def test_serving_stays_when_it_reads_another_table_version(served):
    db, version, pointer, before = served
    table = db.open_table(before.table)
    table.add(_rows(ROWS + 10, 5))  # written after the promotion: serving does not read these rows
    done = maintain(db, version, pointer)
    assert not done.served and done.table_version_after > done.table_version_before
    assert pointer.require_current() == before


def test_another_writer_during_maintenance_leaves_serving_where_it_was(served, monkeypatch):
    db, version, pointer, before = served
    optimize = ann.ensure_vector_index

    def with_a_writer(table, fold_share=ann.OPTIMIZE_UNINDEXED):
        db.open_table(table.name).add(_rows(ROWS + 20, 1))  # another writer commits meanwhile
        return optimize(table, fold_share)

    monkeypatch.setattr(ann, "ensure_vector_index", with_a_writer)
    with pytest.raises(MaintenanceChangedRowsError, match="another writer"):
        maintain(db, version, pointer)
    assert pointer.require_current() == before


def test_the_golden_gates_scores_of_the_served_rows_still_count_after_maintenance(served, tmp_path):
    """The maintained table version holds the judged rows: a refresh's golden gate takes the served
    scores from the record, instead of scoring the served table again by an exact pass."""
    from embedding_assets.defs.checks.gates import GOLDEN_QUALITY
    from embedding_assets.quality.gates.golden import JUDGED_SET, METRICS, TABLE_VERSION, recorded_scores

    db, version, _, before = served
    scores = dict.fromkeys(METRICS, 0.5)
    record = {TABLE_VERSION: before.table_version, JUDGED_SET: 7, **scores}
    pointer = ServingPointer(tmp_path / "serving-judged")  # served with the golden gate's record
    judged = promote(db, version, pointer, table_version=before.table_version, gates={GOLDEN_QUALITY: record})
    assert recorded_scores(judged, GOLDEN_QUALITY, 7) == scores
    maintain(db, version, pointer)
    now = pointer.require_current()
    assert now.table_version != judged.table_version and now.judged_table_version == judged.table_version
    assert recorded_scores(now, GOLDEN_QUALITY, 7) == scores
    assert recorded_scores(now, GOLDEN_QUALITY, 8) is None  # another judged set: scored again
