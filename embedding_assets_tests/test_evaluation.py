import pytest

from embedding_assets import locations
from embedding_assets.quality.evaluation import load_judged, ndcg_at_k, rank_documents, recall_at_k


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


def test_documents_rank_by_their_best_chunk():
    hits = [{"doc_id": "a"}, {"doc_id": "b"}, {"doc_id": "a"}, {"doc_id": "c"}]
    assert rank_documents(hits, 2) == ["a", "b"]


def test_shipped_judged_queries_point_at_seeded_documents(full_corpus):
    judged = load_judged(locations.SHIPPED_GOLDEN_DIR)
    assert len(judged.queries) >= 40
    judged_docs = {d for rel in judged.qrels.values() for d in rel}
    missing = sorted(d for d in judged_docs if not (full_corpus / d).is_file())
    assert not missing, f"judged documents the seed no longer writes: {missing[:5]}"
    assert all(max(rel.values()) == 2 for rel in judged.qrels.values())
