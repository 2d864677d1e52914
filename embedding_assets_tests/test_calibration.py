"""Threshold mapping by quantile between score profiles, on profiles whose scores are known."""

import numpy as np
import pytest

from embedding_assets.quality.calibration import (
    NEIGHBOUR,
    QUERY_TOP,
    ScoreProfile,
    map_threshold,
    paired_scores,
)

RNG = np.random.default_rng(7)


def _profile(version: str, vectors: dict[str, np.ndarray], pairs: list[tuple[str, str]]) -> ScoreProfile:
    units = {k: v / np.linalg.norm(v) for k, v in vectors.items()}
    scored = [
        (QUERY_TOP if a.startswith("query:") else NEIGHBOUR, a, b, float(units[a] @ units[b]))
        for a, b in pairs
    ]
    return ScoreProfile(version, {}, scored, units, {k: f"text {k}" for k in vectors})


def test_share_and_threshold_for_share_are_inverse():
    profile = ScoreProfile(
        "v", {}, [(NEIGHBOUR, str(i), str(i + 1), s) for i, s in enumerate(np.linspace(0, 0.99, 100))]
    )
    assert profile.share_at_or_above(0.9) == pytest.approx(0.10)
    assert profile.threshold_for_share(0.10) == pytest.approx(0.9)
    assert profile.threshold_for_share(0.0) == pytest.approx(0.99)  # nothing above: its highest score


def test_a_monotone_change_of_scale_maps_exactly_and_flips_nothing():
    """The same pairs scored with every score squared: same order, other scale. 0.8 maps near 0.64."""
    scores = np.linspace(0.05, 0.99, 400)
    pairs = [(NEIGHBOUR, f"a{i}", f"b{i}", float(s)) for i, s in enumerate(scores)]
    source = ScoreProfile("old", {}, pairs)
    target = ScoreProfile("new", {}, [(k, a, b, s * s) for k, a, b, s in pairs])
    mapped = map_threshold("related", 0.8, source, target)
    assert mapped.mapped == pytest.approx(0.8**2, abs=0.01)
    assert mapped.share == pytest.approx((scores >= 0.8).mean())


def test_decisions_that_flip_are_listed_with_both_scores():
    """Two spaces over the same keys: the target rotates one vector away from its partner, so that pair
    falls below the mapped threshold while the others keep their order."""
    keys = [f"c{i}" for i in range(40)]
    base = {k: RNG.normal(size=16) for k in keys}
    near = {f"{k}'": base[k] + RNG.normal(scale=0.1, size=16) for k in keys}
    old = {**base, **near}
    new = dict(old)
    new["c0'"] = RNG.normal(size=16)  # c0's near duplicate is not near any more
    pairs = [(k, f"{k}'") for k in keys] + [(keys[i], keys[i + 1]) for i in range(39)]
    source, target = _profile("old", old, pairs), _profile("new", new, pairs)
    assert len(paired_scores(source, target)) == len(pairs)
    mapped = map_threshold("dedup", 0.95, source, target)
    flipped = {(f["left"], f["right"]) for f in mapped.flips}
    assert ("text c0", "text c0'") in flipped
    assert all(f["score_old"] >= 0.95 > f["score_new"] or f["score_old"] < 0.95 for f in mapped.flips)
    assert mapped.to_json()["flips"] == len(mapped.flips) >= 1


def test_a_pair_without_vectors_in_both_spaces_is_not_compared():
    old = {k: RNG.normal(size=8) for k in "abc"}
    source = _profile("old", old, [("a", "b"), ("b", "c")])
    target = _profile("new", {"a": old["a"], "b": old["b"]}, [("a", "b")])
    assert [(left, right) for _, left, right, *_ in paired_scores(source, target)] == [("a", "b")]


def test_versions_that_share_no_chunk_compare_only_their_queries(tmp_path):
    """Another chunking: no chunk hash in common, so only query pairs are scored in both spaces, and a
    lookup of the other version's vectors that finds nothing is no error."""
    from embedding_assets.index import store, tables
    from embedding_assets.index.store import index_schema

    db = store.connect(tmp_path)
    for version in ("old", "new"):
        db.create_table(tables.index_table(version), schema=index_schema(8))
    query = {"query:q": RNG.normal(size=8)}
    source = _profile("old", {**query, "a": RNG.normal(size=8)}, [("query:q", "a")])
    target = _profile("new", {**query, "b": RNG.normal(size=8)}, [("query:q", "b")])
    assert paired_scores(source, target, db) == []
    source.vectors["b"], target.vectors["a"] = RNG.normal(size=8), RNG.normal(size=8)
    assert {left + right for _, left, right, *_ in paired_scores(source, target, db)} == {
        "query:qa",
        "query:qb",
    }
