"""Score calibration: what a similarity threshold means in each version's space, and its image in another.

Each version keeps a score profile: the top-10 scores of the judged queries, the top-10 neighbours of its
sentinel chunks, and every pair of sentinels (random pairs, far apart). A threshold tuned in one space
(`thresholds:` in the registry, e.g. dedup 0.95) is mapped by quantile: the score above which the same
share of the other version's profile lies. The profiles hold the same kinds and counts of pairs (the
same judged queries; sentinels are the chunk hashes that sort first, shared by versions that chunk
alike), so equal shares compare like with like. Pairs scored in both spaces show which decisions flip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

from embedding_assets.index import ann, store, tables
from embedding_assets.quality.evaluation import JudgedQueries
from embedding_assets.serving.search import Searcher

PROFILE_K = 10  # scores kept per query and per sentinel
QUERY_TOP, NEIGHBOUR, SENTINEL_PAIR = "query_top", "neighbour", "sentinel_pair"
PAIR_KINDS = (QUERY_TOP, NEIGHBOUR, SENTINEL_PAIR)
VECTOR_ROW = "vector"  # a row holding a query's or a chunk's vector (and text) instead of a pair's score
QUERY_KEY = "query:"  # prefix of a judged query's key among the chunk hashes
STATE_KEY = b"profile_state"  # schema metadata: the table state and judged set the profile measured
FLIPS_SHOWN = 10


@dataclass
class ScoreProfile:
    """One version's scores: pairs (kind, left key, right key, score) and the unit vectors and texts of
    every key a pair names, so the pairs can be scored again in another version's space."""

    version: str
    state: dict[str, Any]
    pairs: list[tuple[str, str, str, float]]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def scores(self) -> np.ndarray:
        return np.array([score for *_, score in self.pairs], dtype=np.float64)

    def share_at_or_above(self, threshold: float) -> float:
        scores = self.scores()
        return float((scores >= threshold).mean()) if len(scores) else 0.0

    def threshold_for_share(self, share: float) -> float:
        """The score at or above which `share` of this profile's pairs lie (its highest for 0)."""
        scores = np.sort(self.scores())[::-1]
        if not len(scores):
            raise ValueError(f"the score profile of {self.version!r} is empty")
        count = max(1, round(share * len(scores)))
        return float(scores[min(count, len(scores)) - 1])

    def distribution(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, dict[str, float]]:
        """Per kind of pair, the score at each quantile."""
        out = {}
        for kind in PAIR_KINDS:
            scores = np.array([s for k, _, _, s in self.pairs if k == kind])
            if len(scores):
                out[kind] = {f"p{round(q * 100)}": round(float(np.quantile(scores, q)), 4) for q in quantiles}
        return out


def profile_state(searcher: Searcher, judged_digest: int) -> dict[str, Any]:
    return {
        "table": searcher.table.name,
        "table_version": searcher.table.version,
        "fingerprint": searcher.embedder.fingerprint,
        "judged_set": judged_digest,
    }


def measure_profile(
    db: lancedb.DBConnection, searcher: Searcher, judged: JudgedQueries, judged_digest: int
) -> ScoreProfile:
    """The profile of `searcher`'s table as it is: query top-k, sentinel neighbours, sentinel pairs."""
    version = searcher.version
    sentinels = store.read_columns(db, tables.sentinels_table(version.id), ["chunk_hash", "text", "vector"])
    anchors = sentinels["chunk_hash"].to_pylist()
    anchor_vectors = (
        ann.unit_rows(ann.vectors_of(sentinels)[1]) if anchors else np.empty((0, version.dimension))
    )
    profile = ScoreProfile(version.id, profile_state(searcher, judged_digest), [])
    profile.vectors.update(zip(anchors, anchor_vectors, strict=True))
    profile.texts.update(zip(anchors, sentinels["text"].to_pylist(), strict=True))
    columns = ["chunk_hash", "text", ann.VECTOR_COLUMN]
    query_ids = list(judged.queries)
    query_vectors = ann.unit_rows(searcher.encode_queries([judged.queries[q] for q in query_ids]))
    for qid, vector, hits in zip(
        query_ids, query_vectors, searcher.search_vectors(query_vectors, PROFILE_K, columns), strict=True
    ):
        key = QUERY_KEY + qid
        profile.vectors[key], profile.texts[key] = vector, judged.queries[qid]
        profile.pairs += [(QUERY_TOP, key, _keep(profile, hit), hit["score"]) for hit in hits]
    found = searcher.search_vectors(anchor_vectors, PROFILE_K + 1, columns) if anchors else []
    for anchor, hits in zip(anchors, found, strict=True):
        others = [hit for hit in hits if hit["chunk_hash"] != anchor][:PROFILE_K]
        profile.pairs += [(NEIGHBOUR, anchor, _keep(profile, hit), hit["score"]) for hit in others]
    similarity = anchor_vectors @ anchor_vectors.T
    profile.pairs += [
        (SENTINEL_PAIR, anchors[i], anchors[j], round(float(similarity[i, j]), 6))
        for i, j in combinations(range(len(anchors)), 2)
    ]
    return profile


def _keep(profile: ScoreProfile, hit: dict[str, Any]) -> str:
    key = hit["chunk_hash"]
    profile.vectors[key] = ann.unit_rows(np.asarray(hit[ann.VECTOR_COLUMN], np.float32)[None, :])[0]
    profile.texts[key] = hit["text"]
    return key


def save_profile(db: lancedb.DBConnection, profile: ScoreProfile) -> None:
    """Replace the version's stored profile (one small table, its state in the schema metadata)."""
    schema = pa.schema(
        [
            ("kind", pa.string()),
            ("left", pa.string()),
            ("right", pa.string()),
            ("score", pa.float32()),
            ("text", pa.string()),
            ("unit_vector", pa.list_(pa.float32())),  # a plain list: not a column LanceDB searches
        ],
        metadata={STATE_KEY: json.dumps(profile.state).encode()},
    )
    keys = list(profile.vectors)
    rows = {
        "kind": [kind for kind, *_ in profile.pairs] + [VECTOR_ROW] * len(keys),
        "left": [left for _, left, _, _ in profile.pairs] + keys,
        "right": [right for _, _, right, _ in profile.pairs] + [None] * len(keys),
        "score": [score for *_, score in profile.pairs] + [None] * len(keys),
        "text": [None] * len(profile.pairs) + [profile.texts.get(k) for k in keys],
        "unit_vector": [None] * len(profile.pairs) + [profile.vectors[k].tolist() for k in keys],
    }
    db.create_table(
        tables.score_profile_table(profile.version), pa.table(rows, schema=schema), mode="overwrite"
    )


def load_profile(db: lancedb.DBConnection, version_id: str) -> ScoreProfile | None:
    """The version's stored profile, or None if it has none."""
    name = tables.score_profile_table(version_id)
    if name not in store.table_names(db):
        return None
    table = db.open_table(name)
    state = json.loads((table.schema.metadata or {}).get(STATE_KEY, b"{}"))
    rows = table.to_arrow().to_pylist()
    profile = ScoreProfile(version_id, state, [])
    for row in rows:
        if row["kind"] == VECTOR_ROW:
            profile.vectors[row["left"]] = np.asarray(row["unit_vector"], np.float32)
            profile.texts[row["left"]] = row["text"]
        else:
            profile.pairs.append((row["kind"], row["left"], row["right"], round(float(row["score"]), 6)))
    return profile


def current_profile(
    db: lancedb.DBConnection, searcher: Searcher, judged: JudgedQueries, judged_digest: int
) -> tuple[ScoreProfile, bool]:
    """The stored profile if it measured this table state and judged set, else a new one, stored; and
    whether it was measured now."""
    stored = load_profile(db, searcher.version.id)
    if stored is not None and stored.state == profile_state(searcher, judged_digest):
        return stored, False
    profile = measure_profile(db, searcher, judged, judged_digest)
    save_profile(db, profile)
    return profile, True


@dataclass(frozen=True)
class MappedThreshold:
    """A threshold of the source space, its image in the target space, and the decisions that flip."""

    name: str
    source: str
    target: str
    threshold: float
    share: float  # of the source profile's pairs at or above the threshold
    mapped: float
    pairs_compared: int  # pairs of either profile scored in both spaces
    flips: list[dict[str, Any]]  # decisions that differ between the threshold and its image
    flips_unmapped: int  # decisions that would differ had the threshold been kept as it is

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "from": self.source,
            "to": self.target,
            "threshold": self.threshold,
            "share_at_or_above": round(self.share, 6),
            "mapped": round(self.mapped, 4),
            "pairs_compared": self.pairs_compared,
            "flips": len(self.flips),
            "flips_if_unmapped": self.flips_unmapped,
            "flipped_pairs": self.flips[:FLIPS_SHOWN],
        }

    def describe(self) -> str:
        return (
            f"{self.name} {self.threshold:g} in {self.source} (top {self.share:.2%} of its pair scores) maps "
            f"to {self.mapped:.4f} in {self.target}; of {self.pairs_compared} pairs scored in both spaces "
            f"{len(self.flips)} flip ({self.flips_unmapped} would flip with {self.threshold:g} kept)"
        )


def map_threshold(
    name: str,
    threshold: float,
    source: ScoreProfile,
    target: ScoreProfile,
    db: lancedb.DBConnection | None = None,
) -> MappedThreshold:
    """`threshold` of `source`'s space mapped into `target`'s by quantile, with the pairs whose decision
    flips. Chunk vectors a profile lacks are read from that version's index table when `db` is given."""
    share = source.share_at_or_above(threshold)
    mapped = target.threshold_for_share(share)
    compared = paired_scores(source, target, db)
    flips = [
        {
            "kind": kind,
            "left": _text(source, target, left),
            "right": _text(source, target, right),
            f"score_{source.version}": round(s, 4),
            f"score_{target.version}": round(t, 4),
        }
        for kind, left, right, s, t in compared
        if (s >= threshold) != (t >= mapped)
    ]
    flips.sort(key=lambda f: -abs(f[f"score_{source.version}"] - threshold))
    unmapped = sum((s >= threshold) != (t >= threshold) for *_, s, t in compared)
    return MappedThreshold(
        name, source.version, target.version, threshold, share, mapped, len(compared), flips, unmapped
    )


def paired_scores(
    source: ScoreProfile, target: ScoreProfile, db: lancedb.DBConnection | None = None
) -> list[tuple[str, str, str, float, float]]:
    """Every pair of either profile whose two ends both spaces have vectors for: (kind, left, right,
    score in source, score in target)."""
    pairs = {_unordered(kind, left, right): kind for kind, left, right, _ in [*source.pairs, *target.pairs]}
    keys = {key for pair in pairs for key in pair}
    vectors = [dict(p.vectors) for p in (source, target)]
    if db is not None:
        for profile, known in zip((source, target), vectors, strict=True):
            known.update(_chunk_vectors(db, profile.version, keys - set(known)))
    both = [
        (kind, left, right)
        for (left, right), kind in pairs.items()
        if all(key in known for key in (left, right) for known in vectors)
    ]
    return [
        (kind, left, right, *(float(known[left] @ known[right]) for known in vectors))
        for kind, left, right in both
    ]


def _unordered(kind: str, left: str, right: str) -> tuple[str, str]:
    """A pair's key: a query first; two chunks in sorted order (a neighbour pair and its mirror are one)."""
    return (left, right) if kind == QUERY_TOP else tuple(sorted((left, right)))


def _chunk_vectors(db: lancedb.DBConnection, version_id: str, hashes: set[str]) -> dict[str, np.ndarray]:
    wanted = sorted(h for h in hashes if not h.startswith(QUERY_KEY))
    if not wanted:
        return {}
    found = store.rows_for_keys(
        db,
        tables.index_table(version_id),
        "chunk_hash",
        pa.array(wanted, pa.string()),
        ["chunk_hash", "vector"],
    )
    if not found.num_rows:
        return {}
    found, matrix = ann.vectors_of(found)
    return dict(zip(found["chunk_hash"].to_pylist(), ann.unit_rows(matrix), strict=True))


def _text(source: ScoreProfile, target: ScoreProfile, key: str, width: int = 80) -> str:
    text = source.texts.get(key) or target.texts.get(key) or key
    return " ".join(text.split())[:width]
