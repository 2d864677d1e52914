"""Hybrid retrieval on a real index: BM25 over chunk text (LanceDB's full-text index) fused with the
vectors of a real model, filters applied to both halves, new rows searchable before they are indexed."""

from pathlib import Path

import pytest

from embedding_assets.corpus.sources import BeirSource
from embedding_assets.corpus.sync import sync_corpus
from embedding_assets.index import lexical
from embedding_assets.index.chunking import Chunker
from embedding_assets.index.chunks import sync_chunks
from embedding_assets.index.embeddings import sync_embeddings
from embedding_assets.index.rows import sync_index
from embedding_assets.models.registry import ONNX_INT8_VERSION, RetrievalConfig
from embedding_assets.quality.evaluation import build_dataset_index, compare_retrieval
from embedding_assets.serving.filters import SearchFilter
from embedding_assets.serving.search import Searcher
from embedding_assets_tests import beir

DOCUMENTS = {
    "gear": ("Landing gear", "The landing gear retracts into the fuselage after take-off."),
    "wing": ("Swept wings", "Swept wings delay the onset of compressibility drag near the speed of sound."),
    "part": ("Service bulletin", "Replace seal QX-7741 when the hydraulic pump leaks at high pressure."),
    "heat": ("Thermal loads", "Kinetic heating of the skin at Mach 5 weakens aluminium structures."),
    "tail": ("Tail flutter", "Flutter of the tailplane is an aeroelastic instability at high speed."),
}
QUERIES = {
    "q1": "QX-7741",
    "q2": "why do aircraft wings sweep back",
    "q3": "skin temperature at hypersonic speed",
}
QRELS = {"q1": "part", "q2": "wing", "q3": "heat"}


def write_dataset(folder: Path, documents: dict[str, tuple[str, str]]) -> Path:
    return beir.write_dataset(folder, documents, QUERIES, QRELS)


@pytest.fixture(scope="module")
def hybrid(registry, tmp_path_factory):
    """A hybrid copy of the int8 MiniLM version, and its index of the small dataset with a text index."""
    dataset = write_dataset(tmp_path_factory.mktemp("beir"), DOCUMENTS)
    version = registry.get(ONNX_INT8_VERSION)
    version = version.model_copy(update={"retrieval": RetrievalConfig(mode="hybrid")})
    db, _ = build_dataset_index(dataset, version, tmp_path_factory.mktemp("scratch"), progress=False)
    searcher = Searcher(db, version)
    state = lexical.ensure_text_index(searcher.table)
    assert state.action == "created" and state.unindexed_rows == 0
    return dataset, version, db, searcher


def test_hybrid_hits_carry_both_scores_and_find_an_exact_term(hybrid):
    *_, searcher = hybrid
    hits = searcher.search("QX-7741", 3).hits
    assert hits[0]["doc_id"] == "part" and hits[0]["bm25"] > 0 and hits[0]["dense_score"] is not None
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all({"chunk_id", "doc_checksum", "model_fingerprint"} <= set(h) for h in hits)


def test_a_filter_holds_for_the_lexical_half_too(hybrid):
    *_, searcher = hybrid
    hits = searcher.search("QX-7741 hydraulic seal", 5, SearchFilter(doc_id_prefix="t")).hits
    assert hits and {h["doc_id"] for h in hits} == {"tail"}


def test_rows_written_after_the_text_index_are_found_then_folded_in(hybrid, tmp_path):
    dataset, version, db, _ = hybrid
    added = {**DOCUMENTS, "fuel": ("Fuel tanks", "Integral fuel tanks in the wing box hold kerosene ZQ-19.")}
    write_dataset(dataset, added)
    sync_corpus(db, BeirSource(dataset))
    searcher = Searcher(db, version)
    sync_chunks(db, version, Chunker(searcher.embedder.tokenizer, version.chunking, version.max_tokens))
    sync_embeddings(db, searcher.embedder, progress=False)
    sync_index(db, version)
    searcher = Searcher(db, version)
    name = lexical.text_index_name(searcher.table)
    assert searcher.table.index_stats(name).num_unindexed_rows == 1
    assert lexical.lexical_search(searcher.table, "ZQ-19 kerosene", 1, ["doc_id"])[0]["doc_id"] == "fuel"
    folded = lexical.ensure_text_index(searcher.table, fold_share=0.0)
    assert (folded.action, folded.unindexed_rows) == ("optimized", 0)
    assert lexical.lexical_search(searcher.table, "ZQ-19 kerosene", 1, ["doc_id"])[0]["doc_id"] == "fuel"


def test_a_table_without_a_text_index_is_refused_by_name(registry, tmp_path):
    dataset = write_dataset(tmp_path / "beir", {"rivet": ("Rivets", "Flush rivets keep the skin smooth.")})
    version = registry.get(ONNX_INT8_VERSION).model_copy(update={"retrieval": RetrievalConfig(mode="hybrid")})
    db, _ = build_dataset_index(dataset, version, tmp_path / "scratch", progress=False)
    with pytest.raises(LookupError, match="no full-text index on 'text'"):
        Searcher(db, version).search("landing gear")


def test_compare_retrieval_scores_every_retriever_on_the_same_queries(hybrid, tmp_path):
    dataset, version, *_ = hybrid
    result = compare_retrieval(dataset, version, tmp_path, progress=False)
    rows = {row["retrieval"]: row for row in result["retrievals"]}
    assert list(rows) == ["bm25", "dense", "hybrid (rrf)", "hybrid (linear)"]
    assert all(row["queries"] == len(QUERIES) for row in rows.values())
    assert rows["bm25"]["recall@10"] == 1.0  # every judged document holds its query's words
    fused = rows["hybrid (rrf)"]
    assert fused["against"] in ("bm25", "dense") and fused["low"] <= fused["delta"] <= fused["high"]
