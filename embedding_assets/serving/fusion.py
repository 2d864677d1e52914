"""Fusing ranked lists of one query into one: reciprocal rank fusion, or a weighted sum of scores.

Each list is (key, score) best first. RRF (Cormack et al., SIGIR 2009) scores a key 1 / (k + rank) in
each list it appears in, so only ranks count and no score scale has to match. The linear blend scales
each list's scores to [0, 1] by its own minimum and maximum and adds them with weights; a key missing
from a list gets 0 there."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from embedding_assets.models.registry import RetrievalConfig

Ranked = Sequence[tuple[Hashable, float]]


def reciprocal_rank_fusion(lists: Sequence[Ranked], k: int) -> list[tuple[Hashable, float]]:
    """Keys by the sum over lists of 1 / (k + rank), rank from 1; ties keep first-seen order."""
    fused: dict[Hashable, float] = {}
    for ranked in lists:
        for rank, (key, _) in enumerate(ranked, 1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: -item[1])


def linear_fusion(lists: Sequence[Ranked], weights: Sequence[float]) -> list[tuple[Hashable, float]]:
    """Keys by the weighted sum of their min-max scaled scores (a list of one score scales it to 1)."""
    fused: dict[Hashable, float] = {}
    for ranked, weight in zip(lists, weights, strict=True):
        if not ranked:
            continue
        scores = [score for _, score in ranked]
        low, span = min(scores), max(scores) - min(scores)
        for key, score in ranked:
            scaled = (score - low) / span if span > 0 else 1.0
            fused[key] = fused.get(key, 0.0) + weight * scaled
    return sorted(fused.items(), key=lambda item: -item[1])


def fuse(config: RetrievalConfig, dense: Ranked, lexical: Ranked) -> list[tuple[Hashable, float]]:
    """`dense` and `lexical` fused as `config` says."""
    if config.fusion == "rrf":
        return reciprocal_rank_fusion([dense, lexical], config.rrf_k)
    return linear_fusion([dense, lexical], [config.dense_weight, 1.0 - config.dense_weight])
