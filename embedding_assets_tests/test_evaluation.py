import numpy as np
import pyarrow as pa
import pytest

from embedding_assets import locations
from embedding_assets.index import store
from embedding_assets.quality.evaluation import (
    JudgedQueries,
    documents_by_best_chunk,
    load_judged,
    ndcg_at_k,
    recall_at_k,
)
from embedding_assets.quality.gates import golden
from embedding_assets.serving.pointer import ServingState


@pytest.mark.parametrize(
    ("ranked", "relevant", "expected"),
    [
        (["a", "b", "c"], {"a": 1}, 1.0),
        (["x", "a"], {"a": 1}, 1 / 1.5849625007211563),
        (["x", "y"], {"a": 2}, 0.0),
        (["b", "a"], {"a": 2, "b": 1}, (1 + 3 / 1.5849625007211563) / (3 + 1 / 1.5849625007211563)),
    ],
)
def test_ndcg_at_k(ranked, relevant, expected):
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(expected)


@pytest.mark.parametrize(("k", "expected"), [(1, 0.5), (2, 0.5), (3, 1.0)])
def test_recall_at_k(k, expected):
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 1}, k) == expected


def test_documents_rank_by_their_best_chunk_over_the_whole_table(tmp_path):
    """Exact, in one pass: each document appears once, where its best chunk ranks."""
    vectors = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [-1, 0]], dtype=np.float32)
    rows = pa.table(
        {
            "chunk_id": ["a#0", "b#0", "a#1", "c#0", "d#0"],
            "doc_id": ["a", "b", "a", "c", "d"],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 2),
        }
    )
    table = store.connect(tmp_path).create_table("index__test", rows)
    ranked = documents_by_best_chunk(table, [np.array([1, 0]), np.array([0, 1])], limit=3)
    assert ranked == [["a", "b", "c"], ["c", "a", "b"]]  # a by its second chunk, above b


def test_shipped_judged_queries_point_at_seeded_documents(full_corpus):
    judged = load_judged(locations.SHIPPED_GOLDEN_DIR)
    assert len(judged.queries) >= 40
    judged_docs = {d for rel in judged.qrels.values() for d in rel}
    missing = sorted(d for d in judged_docs if not (full_corpus / d).is_file())
    assert not missing, f"judged documents the seed no longer writes: {missing[:5]}"
    assert all(max(rel.values()) == 2 for rel in judged.qrels.values())


SCORES = {"ndcg@10": 0.5, "recall@10": 0.6, "recall@100": 0.9}


@pytest.mark.parametrize(
    ("record", "reused"),
    [
        ({**SCORES, golden.TABLE_VERSION: 7, golden.JUDGED_SET: 42}, True),
        ({**SCORES, golden.TABLE_VERSION: 6, golden.JUDGED_SET: 42}, False),  # another table version
        ({**SCORES, golden.TABLE_VERSION: 7, golden.JUDGED_SET: 41}, False),  # other judged queries
        ({"ndcg@10": 0.5, golden.TABLE_VERSION: 7, golden.JUDGED_SET: 42}, False),  # scores missing
        (None, False),  # recorded before the gate kept what it measured on
    ],
)
def test_the_served_state_is_scored_from_its_own_gate_only_when_measured_alike(record, reused):
    served = ServingState(
        version="v",
        model_fingerprint="f",
        pipeline_config_hash="p",
        table="index__v",
        table_version=7,
        lance_tag="served-7",
        rows=1,
        gates={"golden_quality": record} if record else {},
    )
    assert golden.recorded_scores(served, "golden_quality", 42) == (SCORES if reused else None)


def test_the_judged_set_digest_follows_queries_and_judgments():
    judged = JudgedQueries({"q1": "a query"}, {"q1": {"d1": 1}})
    assert golden.judged_digest(judged) == golden.judged_digest(
        JudgedQueries(dict(judged.queries), {"q1": {"d1": 1}})
    )
    assert golden.judged_digest(judged) != golden.judged_digest(
        JudgedQueries(judged.queries, {"q1": {"d1": 2}})
    )
    assert golden.judged_digest(judged) != golden.judged_digest(
        JudgedQueries({"q1": "another"}, judged.qrels)
    )
