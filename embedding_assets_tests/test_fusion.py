import pytest

from embedding_assets.models.registry import RetrievalConfig
from embedding_assets.serving.fusion import fuse, linear_fusion, reciprocal_rank_fusion


def test_rrf_sums_reciprocal_ranks_and_ignores_score_scales():
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    lexical = [("c", 40.0), ("a", 3.0)]
    fused = dict(reciprocal_rank_fusion([dense, lexical], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert [key for key, _ in reciprocal_rank_fusion([dense, lexical], k=60)] == ["a", "c", "b"]


def test_linear_fusion_scales_each_list_and_counts_a_missing_key_as_zero():
    dense = [("a", 0.9), ("b", 0.7), ("c", 0.5)]  # scaled: a 1, b 0.5, c 0
    lexical = [("c", 12.0), ("d", 2.0)]  # scaled: c 1, d 0
    fused = dict(linear_fusion([dense, lexical], [0.25, 0.75]))
    assert fused == pytest.approx({"a": 0.25, "b": 0.125, "c": 0.75, "d": 0.0})
    assert dict(linear_fusion([[("x", 3.0)], []], [0.5, 0.5])) == {"x": 0.5}  # one score scales to 1


@pytest.mark.parametrize(("fusion", "first"), [("rrf", "b"), ("linear", "a")])
def test_the_version_config_picks_the_fusion(fusion, first):
    """b is second in both lists, which RRF favours; a's dense lead outweighs its lexical loss."""
    dense = [("a", 0.95), ("b", 0.50), ("c", 0.49), ("d", 0.10)]
    lexical = [("d", 9.0), ("b", 5.0), ("c", 4.9), ("a", 1.0)]
    config = RetrievalConfig(mode="hybrid", fusion=fusion, rrf_k=60, dense_weight=0.6)
    assert fuse(config, dense, lexical)[0][0] == first
