"""The ANN index on real LanceDB: created once a table is large enough, exact below that, rows written
after training still found (searched exactly beside the index), folded in past a share of the table,
trained again when its partitions no longer fit, and recall measured against exact search (seeded unit
vectors, no model)."""

import numpy as np
import pyarrow as pa
import pytest

from embedding_assets.index import ann

DIMENSION = 32
ROWS = 3_000


def _rows(start: int, count: int, seed: int) -> pa.Table:
    vectors = np.random.default_rng(seed).normal(size=(count, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pa.table(
        {
            "chunk_id": [f"c{i}" for i in range(start, start + count)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMENSION),
        }
    )


@pytest.fixture
def table(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "ANN_MIN_ROWS", 2_000)
    from embedding_assets.index import store

    return store.connect(tmp_path).create_table("index__test", _rows(0, ROWS, seed=0))


def test_a_small_table_searches_exactly(table, monkeypatch):
    monkeypatch.setattr(ann, "ANN_MIN_ROWS", ROWS + 1)
    state = ann.ensure_vector_index(table)
    assert (state.action, state.index, state.rows) == ("exact", None, ROWS)
    assert ann.vector_index_name(table) is None


def test_the_index_is_created_tuned_and_kept_current(table):
    state = ann.ensure_vector_index(table)
    assert state.action == "created" and state.index == ann.vector_index_name(table) is not None
    assert state.unindexed_rows == 0
    assert "chunk_id" in {c for i in table.list_indices() for c in i.columns}  # the key has its BTREE
    served = table.version
    table.tags.create("served-test", served)

    queries = [np.asarray(v, dtype=np.float32) for v in _rows(0, 20, seed=1)["vector"].to_pylist()]
    report = ann.measure_recall(table, queries)
    assert report.queries == 20 and 0.8 <= report.recall <= 1.0 and report.worst <= report.recall

    # A selective filter is searched exactly over its rows: the same top-k as exact search.
    where = "chunk_id LIKE 'c1%'"
    matching = table.count_rows(where)
    assert 0 < matching <= ann.EXACT_FILTER_ROWS
    exact = table.search(queries[0]).distance_type("cosine").bypass_vector_index()
    exact = exact.where(where, prefilter=True)
    tuned = ann.tuned(table.search(queries[0]).distance_type("cosine"), True, matching)
    top = [r["chunk_id"] for r in tuned.where(where, prefilter=True).limit(10).to_list()]
    assert top == [r["chunk_id"] for r in exact.limit(10).to_list()]

    few = _rows(ROWS, 100, seed=2)  # under OPTIMIZE_UNINDEXED of the table: left to the flat search
    table.add(few)
    assert ann.ensure_vector_index(table).action == "current"
    newest = np.asarray(few["vector"][0].as_py(), dtype=np.float32)
    top = ann.tuned(table.search(newest).distance_type("cosine"), True).limit(1).to_list()
    assert top[0]["chunk_id"] == f"c{ROWS}"  # an unindexed row is found all the same

    table.add(_rows(ROWS + 100, 200, seed=3))  # now past the share: optimize() folds them in
    state = ann.ensure_vector_index(table)
    assert state.action == "optimized" and state.unindexed_rows == 0 and state.rows == ROWS + 300
    table.checkout(served)  # the served (tagged) version survives compaction
    assert table.count_rows() == ROWS


def _rewrite(table, ids: list[int], seed: int) -> None:
    """New vectors for existing rows, as a refresh writes them (merge on the key)."""
    vectors = _rows(0, len(ids), seed)["vector"]
    rows = pa.table({"chunk_id": [f"c{i}" for i in ids], "vector": vectors})
    table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(rows)


def test_folding_in_keeps_the_partitions_merges_segments_and_leaves_large_fragments_alone(table, monkeypatch):
    """Each fold-in indexes the new rows against the trained partitions; past MAX_INDEX_SEGMENTS the
    segments merge; the fragment the table was built with is not rewritten for a few replaced rows (LanceDB's
    own optimize() rewrote every fragment and retrained the index with other partitions)."""
    monkeypatch.setattr(ann, "COMPACT_TARGET_ROWS", 1_000)  # the 3,000-row fragment counts as large
    monkeypatch.setattr(ann, "MAX_INDEX_SEGMENTS", 2)
    name = ann.ensure_vector_index(table).index
    partitions = ann.index_partitions(table, name)
    assert partitions == ann.partitions_for(ROWS)
    built = {f.fragment_id for f in table.to_lance().get_fragments()}
    actions, segments, start = [], [], ROWS
    for seed in range(4, 8):  # each round past OPTIMIZE_UNINDEXED: 30 rows rewritten, 200 added
        _rewrite(table, list(range(seed * 30, seed * 30 + 30)), seed=seed + 10)
        table.add(_rows(start, 200, seed=seed))
        start += 200
        actions.append(ann.ensure_vector_index(table).action)
        segments.append(ann.index_segments(table, name))
        assert ann.index_partitions(table, name) == partitions and ann.unindexed_rows(table) == 0
    assert actions == ["optimized"] * 4 and 2 in segments and max(segments) <= 2, (actions, segments)
    assert built <= {f.fragment_id for f in table.to_lance().get_fragments()}  # never rewritten
    newest = np.asarray(_rows(start - 200, 1, seed=7)["vector"][0].as_py(), dtype=np.float32)
    top = ann.tuned(table.search(newest).distance_type("cosine"), True).limit(1).to_list()
    assert top[0]["chunk_id"] == f"c{start - 200}" and table.count_rows() == start


def test_an_index_whose_partitions_no_longer_fit_the_table_is_trained_again(table):
    name = ann.ensure_vector_index(table).index
    assert ann.index_partitions(table, name) == ann.partitions_for(ROWS)
    grown = ROWS * 4 + 1_000  # sqrt(rows) now more than RETRAIN_PARTITIONS_RATIO times the partitions
    table.add(_rows(ROWS, grown - ROWS, seed=9))
    state = ann.ensure_vector_index(table)
    assert (state.action, state.unindexed_rows, state.rows) == ("retrained", 0, grown)
    assert ann.index_partitions(table, state.index) == ann.partitions_for(grown)


def test_an_index_of_another_type_is_replaced_by_the_chosen_one(table):
    from lancedb.index import IvfPq

    table.create_index(ann.VECTOR_COLUMN, config=IvfPq(distance_type="cosine", num_partitions=4))
    assert table.index_stats(ann.vector_index_name(table)).index_type == "IVF_PQ"
    state = ann.ensure_vector_index(table)
    assert (state.action, state.index_type, state.unindexed_rows) == ("retrained", ann.INDEX_TYPE, 0)


def test_a_deep_search_finds_as_many_rows_as_exact_search(table):
    ann.ensure_vector_index(table)
    query = np.asarray(_rows(0, 1, seed=5)["vector"][0].as_py(), dtype=np.float32)
    deep = 500  # a golden-set evaluation ranks documents from hundreds of chunks
    found = ann.tuned(table.search(query).distance_type("cosine"), True).limit(deep).to_list()
    exact = table.search(query).distance_type("cosine").bypass_vector_index().limit(deep).to_list()
    assert len(found) == deep
    assert len({r["chunk_id"] for r in found} & {r["chunk_id"] for r in exact}) >= 0.9 * deep


@pytest.mark.parametrize("batch", [700, 5_000])  # several batches (each's top k merged), or one
def test_exact_top_k_is_the_brute_force_top_k(table, monkeypatch, batch):
    monkeypatch.setattr(ann, "EXACT_BATCH", batch)
    queries = _rows(0, 7, seed=1)["vector"].to_numpy(zero_copy_only=False)
    matrix = np.stack(table.to_arrow()["vector"].to_numpy(zero_copy_only=False))
    expected = [[f"c{i}" for i in np.argsort(-(matrix @ q))[:10]] for q in queries]
    found, _ = ann.exact_top_k(table, list(queries), 10)
    assert found == expected


def test_ann_recall_is_measured_once_per_state_of_the_index(tmp_path, monkeypatch, minilm_embedder):
    """A refresh that leaves the index as it was reports the last measurement; one that changes the
    index (optimize, retrain) or the queries is measured again."""
    from embedding_assets.index import store, tables
    from embedding_assets.quality.gates.ann_recall import INDEX_STATE, MEASURED_AGAIN, ann_recall

    monkeypatch.setattr(ann, "ANN_MIN_ROWS", 2_000)
    dimension = minilm_embedder.version.dimension
    vectors = np.random.default_rng(5).normal(size=(ROWS + 600, dimension)).astype(np.float32)

    def rows(start: int, count: int) -> pa.Table:
        values = pa.array(vectors[start : start + count].ravel())
        ids = [f"c{i}" for i in range(start, start + count)]
        hashes = [f"h{i}" for i in range(start, start + count)]  # the exact lists' memo keys rows by both
        vector = pa.FixedSizeListArray.from_arrays(values, dimension)
        return pa.table({"chunk_id": ids, "chunk_hash": hashes, "vector": vector})

    table = store.connect(tmp_path).create_table(
        tables.index_table(minilm_embedder.version.id), rows(0, ROWS)
    )
    ann.ensure_vector_index(table)
    db = store.connect(tmp_path)
    queries = [f"ann recall probe {i}" for i in range(20)]
    first = ann_recall(db, minilm_embedder, queries)
    assert first.metadata[MEASURED_AGAIN] and first.metadata["queries"] == 20

    table.add(rows(ROWS, 50))  # under the optimize share: the index stays as it was
    table.delete("chunk_id IN ('c1', 'c2')")  # as a refresh rewrites rows
    assert ann.ensure_vector_index(table).action == "current"
    again = ann_recall(db, minilm_embedder, queries, first.metadata)
    assert not again.metadata[MEASURED_AGAIN] and again.metadata["recall@10"] == first.metadata["recall@10"]
    assert again.level == first.level

    other = ann_recall(db, minilm_embedder, queries[:-1], first.metadata)  # other queries: measured
    assert other.metadata[MEASURED_AGAIN] and other.metadata[INDEX_STATE] != first.metadata[INDEX_STATE]

    table.add(rows(ROWS + 50, 350))
    assert ann.ensure_vector_index(table).action == "optimized"
    changed = ann_recall(db, minilm_embedder, queries, first.metadata)
    assert changed.metadata[MEASURED_AGAIN] and changed.metadata[INDEX_STATE] != first.metadata[INDEX_STATE]
    assert changed.metadata["exact_from"] == "full pass"  # the memo held the other queries' lists

    # Maintenance folds a refresh's rows in: measured again, exact lists from the memo (the rows written
    # since scored), the same recall as a full exact pass gives.
    table.add(rows(ROWS + 400, 200))
    table.delete("chunk_id IN ('c3', 'c4', 'c5')")
    assert ann.ensure_vector_index(table, fold_share=0.0).action == "optimized"
    maintained = ann_recall(db, minilm_embedder, queries, changed.metadata)
    assert maintained.metadata[MEASURED_AGAIN] and maintained.metadata["exact_from"] == "memo"
    expected = ann.measure_recall(db.open_table(table.name), list(minilm_embedder.encode_queries(queries)))
    assert maintained.metadata["recall@10"] == expected.recall


def test_past_the_deleted_rows_budget_maintenance_rewrites_the_most_deleted_fragments_first(
    tmp_path, monkeypatch
):
    """Every deleted row slows each ANN query, yet a refresh deletes a little from every fragment, under
    MATERIALIZE_DELETIONS of each: past MAX_DELETED_ROWS in the table, the fragments with the largest
    shares deleted are rewritten until the rest hold at most half of it; the others are left alone."""
    from embedding_assets.index import store

    monkeypatch.setattr(ann, "ANN_MIN_ROWS", 2_000)
    monkeypatch.setattr(ann, "COMPACT_TARGET_ROWS", 500)  # the 1,000-row fragments count as large
    monkeypatch.setattr(ann, "MAX_DELETED_ROWS", 100)
    table = store.connect(tmp_path).create_table("index__test", _rows(0, 1_000, seed=0))
    for start in (1_000, 2_000):
        table.add(_rows(start, 1_000, seed=start))
    ann.ensure_vector_index(table)
    first, second, third = (f.fragment_id for f in table.to_lance().get_fragments())
    for start, count in ((0, 50), (1_000, 45), (2_000, 10)):  # 5%, 4.5% and 1% of each: 105 rows
        table.delete(f"chunk_id IN ({', '.join(repr(f'c{i}') for i in range(start, start + count))})")
    table.add(_rows(3_000, 50, seed=9))  # as a refresh writes: rows for maintenance to fold in
    assert ann.ensure_vector_index(table, fold_share=0.0).action == "optimized"
    fragments = table.to_lance().get_fragments()
    kept = {f.fragment_id for f in fragments}
    assert first not in kept and second not in kept and third in kept
    deleted = sum(f.metadata.deletion_file.num_deleted_rows for f in fragments if f.metadata.deletion_file)
    assert deleted == 10 and table.count_rows() == 3_050 - 105 and ann.unindexed_rows(table) == 0
    survivor = np.asarray(_rows(0, 100, seed=0)["vector"][90].as_py(), dtype=np.float32)
    top = ann.tuned(table.search(survivor).distance_type("cosine"), True).limit(1).to_list()
    assert top[0]["chunk_id"] == "c90"  # a moved row is still found through the index
