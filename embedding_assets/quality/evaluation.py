"""Retrieval evaluation on judged queries: nDCG@10, recall@10, recall@100 (documents by best chunk)."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lancedb

from embedding_assets.corpus.sources import BeirSource
from embedding_assets.corpus.sync import sync_corpus
from embedding_assets.index import ann, lexical, store
from embedding_assets.index.chunking import Chunker
from embedding_assets.index.chunks import sync_chunks
from embedding_assets.index.embeddings import sync_embeddings
from embedding_assets.index.rows import sync_index
from embedding_assets.models.embedders import embedder_for
from embedding_assets.models.registry import ModelVersion, RetrievalConfig
from embedding_assets.quality.bootstrap import paired_bootstrap
from embedding_assets.quality.exact_memo import exact_top_k_memoized
from embedding_assets.serving.search import Searcher, hit_documents

Qrels = dict[str, dict[str, int]]
RANKED = 100  # documents ranked per query: recall@100 reads that deep
CHUNKS_PER_DOCUMENT_RANK = 4  # chunks fetched per document rank, so RANKED distinct documents surface
METRICS = ("ndcg@10", "recall@10", "recall@100")
RANKING = "exact"  # how `evaluate` ranks a dense version (documents_by_best_chunk): other rankings differ


@dataclass(frozen=True)
class JudgedQueries:
    queries: dict[str, str]
    qrels: Qrels


def load_judged(folder: Path) -> JudgedQueries:
    """BEIR layout: queries.jsonl plus qrels/test.tsv (or qrels.tsv) with a header row."""
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                queries[str(record["_id"])] = record["text"]
    qrels_path = folder / "qrels" / "test.tsv"
    if not qrels_path.exists():
        qrels_path = folder / "qrels.tsv"
    qrels: Qrels = {}
    with open(qrels_path, encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            score = int(row["score"])
            if score > 0:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = score
    return JudgedQueries({q: t for q, t in queries.items() if q in qrels}, qrels)


def restrict_to(judged: JudgedQueries, doc_ids: set[str]) -> JudgedQueries:
    """Only judgments of documents in the corpus, and only queries that keep at least one."""
    qrels = {
        q: kept for q, rel in judged.qrels.items() if (kept := {d: s for d, s in rel.items() if d in doc_ids})
    }
    return JudgedQueries({q: t for q, t in judged.queries.items() if q in qrels}, qrels)


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """Graded nDCG with the exponential gain 2^rel - 1 (as trec_eval and BEIR use)."""
    dcg = sum((2 ** relevant.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum((2**r - 1) / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    return len(set(ranked[:k]) & set(relevant)) / len(relevant) if relevant else 0.0


def ranked_metrics(ranked: Sequence[str], relevant: Mapping[str, int]) -> dict[str, float]:
    """nDCG@10, recall@10 and recall@100 of one ranking, rounded to 4 decimals (as history keeps them)."""
    return {
        "ndcg@10": round(ndcg_at_k(ranked, relevant, 10), 4),
        "recall@10": round(recall_at_k(ranked, relevant, 10), 4),
        "recall@100": round(recall_at_k(ranked, relevant, RANKED), 4),
    }


def ranked_documents(searcher: Searcher, queries: list[str], limit: int) -> list[list[str]]:
    """For each query, the documents of its best chunks as served (through the ANN index when the table
    has one), best first: one multi-vector search, `limit` * CHUNKS_PER_DOCUMENT_RANK chunks deep."""
    depth = limit * CHUNKS_PER_DOCUMENT_RANK
    found = searcher.search_vectors(searcher.encode_queries(queries), depth, ["doc_id"])
    return [hit_documents(hits, limit) for hits in found]


def documents_by_best_chunk(
    table: lancedb.table.Table,
    vectors: list,
    limit: int,
    *,
    progress: bool = False,
    memo: tuple[lancedb.DBConnection, str] | None = None,
) -> list[list[str]]:
    """For each query vector, up to `limit` documents in the order of their best chunk's score. Ranked by
    exact search: evaluation judges the embedding space (the same on every build of the same vectors);
    the `ann_recall` check judges the ANN index. `memo` (db, version id) keeps the exact lists between
    runs (`exact_memo`), so the next evaluation of the version scores only the rows written since."""
    depth = limit * CHUNKS_PER_DOCUMENT_RANK
    if memo is not None:
        hits, _ = exact_top_k_memoized(*memo, table, vectors, depth, "doc_id")
    else:
        hits, _ = ann.exact_top_k(table, vectors, depth, "doc_id", progress=progress)
    return [list(dict.fromkeys(documents))[:limit] for documents in hits]


def score_queries(
    searcher: Searcher,
    judged: JudgedQueries,
    *,
    progress: bool = False,
    memo: tuple[lancedb.DBConnection, str] | None = None,
) -> dict[str, dict[str, float]]:
    """Each judged query's nDCG@10, recall@10 and recall@100 on `searcher`'s version, ranked exactly;
    rounded to 4 decimals, as the serving history keeps them."""
    ids = list(judged.queries)
    texts = [judged.queries[q] for q in ids]
    vectors = searcher.encode_queries(texts)
    if searcher.version.retrieval.mode == "dense":
        rankings = documents_by_best_chunk(
            searcher.table, list(vectors), RANKED, progress=progress, memo=memo
        )
    else:  # judged as served: the fused lists, the dense half through the ANN index when it has one
        depth = RANKED * CHUNKS_PER_DOCUMENT_RANK
        found = searcher.search_texts(texts, vectors, depth, ["doc_id"])
        rankings = [hit_documents(hits, RANKED) for hits in found]
    return {qid: ranked_metrics(ranked, judged.qrels[qid]) for qid, ranked in zip(ids, rankings, strict=True)}


def mean_scores(per_query: Mapping[str, Mapping[str, float]]) -> dict:
    """The mean of each metric over the queries (0 for none), and how many."""
    n = len(per_query)
    means = {m: round(sum(s[m] for s in per_query.values()) / n, 4) if n else 0.0 for m in METRICS}
    return {**means, "queries": n}


def evaluate(
    searcher: Searcher,
    judged: JudgedQueries,
    *,
    progress: bool = False,
    memo: tuple[lancedb.DBConnection, str] | None = None,
) -> dict:
    """Mean nDCG@10, recall@10 and recall@100 of `searcher`'s version on `judged`, ranked exactly."""
    started = time.perf_counter()
    per_query = score_queries(searcher, judged, progress=progress, memo=memo)
    return {**mean_scores(per_query), "query_seconds": round(time.perf_counter() - started, 2)}


def build_dataset_index(
    dataset: Path, version: ModelVersion, scratch_dir: Path, *, progress: bool = True
) -> tuple[lancedb.DBConnection, dict]:
    """An index of a BEIR corpus in a scratch database keyed by dataset checksum and pipeline hash.

    Runs the same corpus/chunk/embed/index stages as the assets; they are incremental, so a second
    call with the same dataset and version reuses everything and encodes nothing.
    """
    source = BeirSource(dataset)
    scratch = scratch_dir / f"{source.checksum()[:16]}-{version.pipeline_config_hash()[:16]}"
    db = store.connect(scratch)
    embedder = embedder_for(version)
    started = time.perf_counter()
    corpus = sync_corpus(db, source)
    chunked = sync_chunks(db, version, Chunker(embedder.tokenizer, version.chunking, version.max_tokens))
    embedded = sync_embeddings(db, embedder, progress=progress)
    indexed = sync_index(db, version)
    return db, {
        "documents": corpus.documents,
        "chunks": chunked.chunks_total,
        "rows": indexed.rows_total,
        "chunks_embedded": embedded.encoded,
        "build_seconds": round(time.perf_counter() - started, 2),
        "encode_seconds": round(embedded.seconds_encoding, 2),
        "scratch": str(scratch),
    }


def evaluate_dataset(
    dataset: Path, version: ModelVersion, scratch_dir: Path, *, progress: bool = True
) -> dict:
    """Evaluate `version` on a BEIR dataset without touching the served index, retrieving as the
    version does (dense, or hybrid over a full-text index built beside its vectors)."""
    db, build = build_dataset_index(dataset, version, scratch_dir, progress=progress)
    searcher = Searcher(db, version)
    if version.retrieval.mode == "hybrid":
        lexical.ensure_text_index(searcher.table)
    metrics = evaluate(searcher, load_judged(dataset), progress=progress)
    return {"version": version.id, "dataset": str(dataset), **metrics, **build}


def lexical_scores(searcher: Searcher, judged: JudgedQueries) -> dict[str, dict[str, float]]:
    """Each judged query's metrics with BM25 alone over the version's chunk text (documents by their
    best chunk, as dense ranking does)."""
    depth = RANKED * CHUNKS_PER_DOCUMENT_RANK
    per_query = {}
    for qid, text in judged.queries.items():
        hits = lexical.lexical_search(searcher.table, text, depth, ["doc_id"])
        per_query[qid] = ranked_metrics(hit_documents(hits, RANKED), judged.qrels[qid])
    return per_query


def compare_retrieval(
    dataset: Path, version: ModelVersion, scratch_dir: Path, *, progress: bool = True
) -> dict:
    """BM25 alone, `version` dense alone, and the two fused (RRF, and the linear blend), on a BEIR
    dataset: one index and one full-text index, every ranking on the same judged queries, with the
    paired interval of each fusion against the better single retriever."""
    db, build = build_dataset_index(dataset, version, scratch_dir, progress=progress)
    judged = load_judged(dataset)
    dense = Searcher(db, version.model_copy(update={"retrieval": RetrievalConfig(mode="dense")}))
    text_index = lexical.ensure_text_index(dense.table)
    per_query = {"bm25": lexical_scores(dense, judged), "dense": score_queries(dense, judged)}
    for fusion in ("rrf", "linear"):
        config = version.retrieval.model_copy(update={"mode": "hybrid", "fusion": fusion})
        fused = Searcher(db, version.model_copy(update={"retrieval": config}))
        per_query[f"hybrid ({fusion})"] = score_queries(fused, judged)
    best_single = max(("bm25", "dense"), key=lambda name: mean_scores(per_query[name])[METRICS[0]])
    rows = []
    for name, scores in per_query.items():
        row = {"retrieval": name, **mean_scores(scores)}
        if name.startswith("hybrid"):
            delta = paired_bootstrap(
                {q: s[METRICS[0]] for q, s in scores.items()},
                {q: s[METRICS[0]] for q, s in per_query[best_single].items()},
            )
            row.update(against=best_single, delta=delta.mean, low=delta.low, high=delta.high)
        rows.append(row)
    return {
        "version": version.id,
        "dataset": str(dataset),
        "retrievals": rows,
        "fts_index_seconds": text_index.seconds,
        **build,
    }
