"""Key lookups and diffs in Arrow on real LanceDB tables: a few keys are looked up, many are found by one
streamed scan, and the index stage writes the same rows either way (nothing is encoded here)."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from embedding_assets.index import rows as index_rows
from embedding_assets.index import store, tables
from embedding_assets.index.chunking import chunk_hash
from embedding_assets.index.rows import sync_index
from embedding_assets.models.registry import DEFAULT_VERSION
from embedding_assets.quality.gates.counts import reconcile
from embedding_assets.quality.gates.sentinels import ensure_sentinels

KEYS = 3_000


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    db = store.connect(tmp_path_factory.mktemp("store"))
    table = db.create_table(
        "keyed",
        pa.table({"key": [f"k-{i:05d}'" for i in range(KEYS)], "value": list(range(KEYS))}),
    )
    return db, table


@pytest.mark.parametrize("limit", [store.LOOKUP_LIMIT, 10])  # IN-list lookups, then one streamed scan
def test_rows_for_keys_finds_exactly_the_keys_asked(keyed, monkeypatch, limit):
    db, _ = keyed
    monkeypatch.setattr(store, "LOOKUP_LIMIT", limit)
    monkeypatch.setattr(store, "SCAN_BATCH", 256)  # several batches
    wanted = pa.array([f"k-{i:05d}'" for i in range(0, KEYS, 7)] + ["k-00000'", "no-such-key"])
    found = store.rows_for_keys(db, "keyed", "key", wanted, ["key", "value"])
    assert sorted(found["value"].to_pylist()) == list(range(0, KEYS, 7))  # quotes escaped, none twice
    assert found.schema.field("value").type == pa.int64()
    values = store.rows_for_keys(db, "keyed", "key", wanted, ["value"])  # the key column not asked for
    assert values.column_names == ["value"] and sorted(values["value"].to_pylist()) == list(range(0, KEYS, 7))
    empty = store.rows_for_keys(db, "keyed", "key", pa.array([], pa.string()), ["key", "value"])
    assert empty.num_rows == 0 and empty.schema.names == ["key", "value"]
    missing = store.rows_for_keys(db, "no_such_table", "key", wanted, ["key"])
    assert missing.num_rows == 0


@pytest.mark.parametrize("limit", [store.LOOKUP_LIMIT, 10])
def test_batches_for_keys_hold_at_most_the_rows_asked_for(keyed, monkeypatch, limit):
    """Parts of large rows (document texts) are kept small: each part holds at most `batch_rows`."""
    db, _ = keyed
    monkeypatch.setattr(store, "LOOKUP_LIMIT", limit)
    wanted = pa.array([f"k-{i:05d}'" for i in range(0, KEYS, 2)])
    parts = list(store.batches_for_keys(db, "keyed", "key", wanted, ["key", "value"], batch_rows=100))
    assert max(p.num_rows for p in parts) <= 100
    assert sorted(v for p in parts for v in p["value"].to_pylist()) == list(range(0, KEYS, 2))


def test_absent_is_an_anti_join_of_distinct_keys():
    values = pa.chunked_array([["a", "b", "a"], ["c", "d"]])
    assert sorted(store.absent(values, pa.chunked_array([["b"], ["d", "x"]])).to_pylist()) == ["a", "c"]
    assert store.absent(values, pa.array([], pa.string())).to_pylist() == ["a", "b", "c", "d"]


def test_small_scan_batches_are_regrouped_into_large_writes():
    batches = [pa.record_batch({"key": [f"k{b}-{i}" for i in range(10)]}) for b in range(7)]
    grouped = list(store.regrouped(iter(batches), 25))
    assert [t.num_rows for t in grouped] == [30, 30, 10]
    assert pa.concat_tables(grouped)["key"].to_pylist() == [k for b in batches for k in b["key"].to_pylist()]
    assert list(store.regrouped(iter([]), 25)) == []


def test_the_index_stage_writes_the_same_rows_by_lookup_or_by_scan(built_project, tmp_path, monkeypatch):
    project = built_project.copy(tmp_path / "rows")
    db = project.db()
    version = project.registry().get(DEFAULT_VERSION)
    before = project.index_rows()
    db.drop_table(tables.index_table(DEFAULT_VERSION))
    monkeypatch.setattr(store, "LOOKUP_LIMIT", 10)  # every read is a streamed scan, in small batches
    monkeypatch.setattr(index_rows, "WRITE_BATCH", 64)
    sync = sync_index(db, version)
    after = project.index_rows()
    assert sync.rows_upserted == after.num_rows == before.num_rows > 64
    assert sync.rows_deleted == 0 and len(sync.docs_written) == len(pc.unique(before["doc_id"]))
    columns = ["chunk_id", "doc_id", "chunk_hash", "doc_checksum", "model_fingerprint", "vector"]
    assert after.select(columns).sort_by("chunk_id").equals(before.select(columns).sort_by("chunk_id"))
    assert reconcile(db, version).passed
    again = sync_index(db, version)
    assert (again.rows_upserted, again.rows_deleted, again.docs_written) == (0, 0, [])


def test_sentinels_are_the_lowest_hashes_with_their_cached_vectors(tmp_path, minilm, monkeypatch):
    """The sample is the distinct chunk hashes that sort first, each with its cached vector, read by key
    (no table of texts or vectors is loaded whole); a hash shared by two chunks appears once."""
    monkeypatch.setattr(store, "LOOKUP_LIMIT", 3)  # the chosen rows found by one streamed scan, too
    db = store.connect(tmp_path)
    texts = [f"chunk text {i}" for i in range(40)] + ["chunk text 7"]  # the last repeats a hash
    hashes = [chunk_hash(t) for t in texts]
    chunks = pa.table(
        {
            "chunk_id": [f"doc#{i:02d}" for i in range(len(texts))],
            "chunk_hash": hashes,
            "text": texts,
            "token_count": pa.array([3] * len(texts), pa.int32()),
        }
    )
    db.create_table(tables.chunks_table(minilm.id), chunks)
    distinct = sorted(set(hashes))
    vectors = {h: [float(i)] * minilm.dimension for i, h in enumerate(distinct)}
    cache = pa.table(
        {
            "chunk_hash": distinct,
            "vector": pa.array(list(vectors.values()), store.vector_type(minilm.dimension)),
            "model_fingerprint": ["fp"] * len(distinct),
        }
    )
    db.create_table(tables.cache_table(minilm.encoder_key()), cache)
    version = minilm.model_copy(update={"gates": minilm.gates.model_copy(update={"sentinel_count": 5})})
    assert ensure_sentinels(db, version) == (5, True)
    stored = db.open_table(tables.sentinels_table(minilm.id)).to_arrow()
    assert stored["chunk_hash"].to_pylist() == distinct[:5]
    assert stored["vector"].to_pylist() == [vectors[h] for h in distinct[:5]]
    assert [chunk_hash(t) for t in stored["text"].to_pylist()] == distinct[:5]
    assert ensure_sentinels(db, version) == (5, False)  # stored once


def test_a_commit_time_is_listed_once_and_a_table_made_again_is_listed_afresh(tmp_path, monkeypatch):
    """A version's commit time comes from the list of every manifest once; later asks are answered from
    memory while that version's transaction is the same one, and a table dropped and made again (its
    version numbers restart) is listed again, so its states never take the old table's times."""
    db = store.connect(tmp_path)
    table = db.create_table("t", pa.table({"k": ["a"]}))
    table.add(pa.table({"k": ["b"]}))
    first = store.version_committed_at(table, 1)
    assert first == next(v["timestamp"] for v in table.list_versions() if v["version"] == 1)
    listed = []
    real = type(table).list_versions
    monkeypatch.setattr(type(table), "list_versions", lambda self: listed.append(1) or real(self))
    assert store.version_committed_at(db.open_table("t"), 1) == first and listed == []
    assert store.version_committed_at(table, 2) is not None and listed == [1]

    db.drop_table("t")
    again = db.create_table("t", pa.table({"k": ["c"]}))
    remade = store.version_committed_at(again, 1)
    assert remade is not None and remade != first and len(listed) == 2
    assert store.table_state(db, "t") == f"1@{remade}"
