"""Fit every bridge method on growing samples and measure each on the judged queries: retention is the
bridged nDCG@10 over the old model's own nDCG@10, both ranked exactly on the old version's index."""

from __future__ import annotations

import time
from dataclasses import dataclass

import lancedb
import numpy as np

from embedding_assets.bridge.maps import METHODS, BridgeMap
from embedding_assets.bridge.pairs import FitTexts, fit_texts, paired_vectors
from embedding_assets.models.embedders import embedder_for
from embedding_assets.models.registry import ModelVersion
from embedding_assets.quality.bootstrap import PairedDelta, paired_bootstrap
from embedding_assets.quality.evaluation import (
    METRICS,
    JudgedQueries,
    documents_by_best_chunk,
    ranked_metrics,
)
from embedding_assets.serving.search import Searcher

NDCG = METRICS[0]
DEFAULT_SAMPLES = (128, 1024, 4096)  # the sentinels alone, then about a thousand and four thousand texts
RANKED_DOCUMENTS = 100  # as evaluation ranks: recall@100 needs a hundred documents
LATENCY_REPEATS = 2000  # single-query applications timed; the median is reported


@dataclass(frozen=True)
class Trial:
    """One method fit on one sample, measured on the judged queries."""

    method: str
    samples: int
    ndcg: float
    old_ndcg: float
    delta: PairedDelta
    latency_ms: float
    bridge: BridgeMap

    @property
    def retention(self) -> float:
        return self.ndcg / self.old_ndcg if self.old_ndcg else 0.0

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "samples": self.samples,
            "ndcg@10": round(self.ndcg, 4),
            "old_ndcg@10": round(self.old_ndcg, 4),
            "retention": round(self.retention, 4),
            **self.delta.as_metadata(),
            "delta_queries": self.delta.queries,
            "latency_ms": round(self.latency_ms, 4),
        }


@dataclass(frozen=True)
class Measurement:
    """Every trial of one old/new pair on one index and query set."""

    old: ModelVersion
    new: ModelVersion
    trials: list[Trial]
    old_scores: dict[str, float]
    unbridged_ndcg: float | None  # the new model's raw vectors against the old index, where widths match
    fit_texts: int
    sentinels: int
    queries: int
    seconds: float

    def best(self) -> Trial:
        """The trial of highest retention (of the faster map on a tie)."""
        return max(self.trials, key=lambda t: (round(t.retention, 4), -t.latency_ms))

    def to_json(self) -> dict:
        return {
            "old": self.old.id,
            "new": self.new.id,
            "old_ndcg@10": round(np.mean(list(self.old_scores.values())), 4) if self.old_scores else 0.0,
            "unbridged_ndcg@10": None if self.unbridged_ndcg is None else round(self.unbridged_ndcg, 4),
            "queries": self.queries,
            "fit_texts_available": self.fit_texts,
            "sentinels": self.sentinels,
            "seconds": round(self.seconds, 1),
            "trials": [t.to_json() for t in self.trials],
        }


def ndcg_per_query(table, vectors: np.ndarray, judged: JudgedQueries, ids: list[str]) -> dict[str, float]:
    """Each judged query's nDCG@10 with `vectors` (one per id of `ids`) ranked exactly on `table`."""
    rankings = documents_by_best_chunk(table, list(vectors), RANKED_DOCUMENTS)
    return {q: ranked_metrics(r, judged.qrels[q])[NDCG] for q, r in zip(ids, rankings, strict=True)}


def map_latency_ms(bridge: BridgeMap, vector: np.ndarray, repeats: int = LATENCY_REPEATS) -> float:
    """The median milliseconds of mapping one query vector."""
    row = np.asarray(vector, np.float32)[None, :]
    times = np.empty(repeats)
    for i in range(repeats):
        started = time.perf_counter()
        bridge.apply(row)
        times[i] = time.perf_counter() - started
    return float(np.median(times) * 1000)


def measure(
    db: lancedb.DBConnection,
    scratch: lancedb.DBConnection,
    old: ModelVersion,
    new: ModelVersion,
    judged: JudgedQueries,
    samples: tuple[int, ...] = DEFAULT_SAMPLES,
    methods: tuple[str, ...] = tuple(METHODS),
) -> Measurement:
    """Fit each of `methods` on each fit-sample size of `samples` (capped at the texts there are) and
    measure it on `judged` against the old version's index in `db`; new vectors are cached in `scratch`."""
    started = time.perf_counter()
    ids = list(judged.queries)
    queries = [judged.queries[q] for q in ids]
    texts = fit_texts(db, old, new, set(queries))
    sizes = sorted({min(n, len(texts)) for n in samples})
    largest = FitTexts(texts.hashes[: sizes[-1]], texts.texts[: sizes[-1]], texts.sentinels)
    old_vectors = paired_vectors(db, scratch, old, largest)
    new_vectors = paired_vectors(db, scratch, new, largest)
    searcher = Searcher(db, old)
    old_scores = ndcg_per_query(searcher.table, searcher.encode_queries(queries), judged, ids)
    old_ndcg = float(np.mean(list(old_scores.values())))
    new_queries = embedder_for(new).encode_queries(queries)
    unbridged = None
    if new.dimension == old.dimension:
        raw = ndcg_per_query(searcher.table, new_queries, judged, ids)
        unbridged = float(np.mean(list(raw.values())))
    trials = []
    for size in sizes:
        for method in methods:
            bridge = METHODS[method].fit(new_vectors[:size], old_vectors[:size])
            scores = ndcg_per_query(searcher.table, bridge.apply(new_queries), judged, ids)
            trials.append(
                Trial(
                    method,
                    size,
                    float(np.mean(list(scores.values()))),
                    old_ndcg,
                    paired_bootstrap(scores, old_scores),
                    map_latency_ms(bridge, new_queries[0]),
                    bridge,
                )
            )
    return Measurement(
        old,
        new,
        trials,
        old_scores,
        unbridged,
        len(texts),
        texts.sentinels,
        len(ids),
        time.perf_counter() - started,
    )
