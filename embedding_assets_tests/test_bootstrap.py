"""Sound quality gates (issue 12): the paired bootstrap interval decides, not the point estimate; per-query
wins and losses are counted; a slice that got worse blocks even when the average over all queries hides
it."""

import pytest

from embedding_assets.models.registry import GateThresholds
from embedding_assets.quality.bootstrap import paired_bootstrap
from embedding_assets.quality.gates.golden import judge_delta, slice_table
from embedding_assets.quality.slices import document_kind, query_slices, source_kind

MARGIN = GateThresholds().golden_ndcg_margin


def scores(values: list[float], prefix: str = "q") -> dict[str, float]:
    return {f"{prefix}{i:03d}": v for i, v in enumerate(values)}


def test_identical_scores_are_all_ties_with_a_zero_interval():
    same = scores([0.1 * (i % 10) for i in range(40)])
    delta = paired_bootstrap(same, dict(same))
    assert (delta.mean, delta.low, delta.high) == (0.0, 0.0, 0.0)
    assert (delta.wins, delta.losses, delta.ties, delta.queries) == (0, 0, 40, 40)
    assert not delta.may_be_worse_beyond(MARGIN)


def test_a_drop_on_every_query_is_worse_beyond_the_margin():
    served = scores([0.6 + 0.01 * (i % 7) for i in range(30)])
    candidate = {q: v - 0.1 + 0.002 * (i % 5) for i, (q, v) in enumerate(served.items())}
    delta = paired_bootstrap(candidate, served)
    assert -0.1 < delta.low <= delta.mean <= delta.high < -0.09
    assert delta.worse_beyond(MARGIN) and delta.losses == 30


def test_two_unlucky_queries_do_not_block_although_the_mean_passes_the_margin():
    """Two of 30 queries lose 0.5: the mean drop (0.033) is past the margin, but the interval reaches
    zero, so the gate warns (not ruled out) instead of blocking on a point estimate."""
    served = scores([0.7] * 30)
    candidate = {q: v - (0.5 if i < 2 else 0.0) for i, (q, v) in enumerate(served.items())}
    delta = paired_bootstrap(candidate, served)
    assert delta.mean < -MARGIN and delta.high > -MARGIN
    assert not delta.worse_beyond(MARGIN) and delta.may_be_worse_beyond(MARGIN)
    blocks, warnings = [], []
    judge_delta("all queries", delta, MARGIN, blocks, warnings)
    assert blocks == [] and "not ruled out" in warnings[0] and "2 worse" in warnings[0]


def test_the_interval_is_the_same_on_every_call_and_only_over_shared_queries():
    served = scores([0.3, 0.9, 0.5, 0.1, 0.7] * 6)
    candidate = {q: v + (0.05 if i % 3 else -0.04) for i, (q, v) in enumerate(served.items())}
    first, again = paired_bootstrap(candidate, served), paired_bootstrap(dict(candidate), dict(served))
    assert first == again
    assert (first.wins, first.losses) == (20, 10)
    extra = {**candidate, "unjudged-by-served": 0.0}
    assert paired_bootstrap(extra, served) == first


def test_document_kinds_and_sources_slice_the_queries():
    assert document_kind("library/csv/reader.md") == "library page"
    assert document_kind("topics/with.md") == "reference topic"
    assert document_kind("source/shlex.py") == "source file"
    assert document_kind("notes/a.md") == "notes" and document_kind("README.md") == "top level"
    assert source_kind("file:///data/corpus/library/csv/reader.md") == "file"
    assert source_kind("postgresql://db/docs#id=7") == "postgresql"
    qrels = {"q1": {"library/a.md": 2, "topics/b.md": 1}, "q2": {"topics/c.md": 1}, "q3": {"source/d.py": 1}}
    sources = {"library/a.md": "file:///x/a.md", "topics/b.md": "file:///x/b.md", "source/d.py": "beir://s#d"}
    assert query_slices(qrels, sources) == {
        "kind: library page": ["q1"],
        "kind: reference topic": ["q1", "q2"],
        "kind: source file": ["q3"],
        "source: beir": ["q3"],
        "source: file": ["q1"],
    }


@pytest.mark.parametrize("slice_drop", [0.2, 0.0])
def test_a_slice_that_got_worse_blocks_though_the_average_did_not_move(slice_drop):
    """40 library queries gain 0.05 and 10 topic queries lose 0.2: the mean over all is 0."""
    library, topics = scores([0.5] * 40, "lib"), scores([0.6] * 10, "top")
    served = {**library, **topics}
    candidate = {
        **{q: v + 0.05 for q, v in library.items()},
        **{q: v - slice_drop for q, v in topics.items()},
    }
    overall = paired_bootstrap(candidate, served)
    assert not overall.worse_beyond(MARGIN)
    slices = {"kind: library page": sorted(library), "kind: reference topic": sorted(topics)}
    blocks, warnings = [], []
    table = slice_table(slices, candidate, served, GateThresholds(), blocks, warnings)
    if slice_drop:
        assert len(blocks) == 1 and blocks[0].startswith("slice kind: reference topic: nDCG@10 worse")
        assert "| kind: reference topic | 10 | -0.2000 | -0.2000 | -0.2000 | 0 | 10 | worse |" in table
    else:
        assert blocks == [] and warnings == []
    assert "| kind: library page | 40 | 0.0500 |" in table


def test_a_slice_with_too_few_queries_is_reported_not_judged():
    served = scores([0.8] * 3, "src")
    candidate = {q: 0.0 for q in served}
    blocks, warnings = [], []
    table = slice_table(
        {"kind: source file": sorted(served)}, candidate, served, GateThresholds(), blocks, warnings
    )
    assert blocks == [] and warnings == [] and "too few queries" in table
