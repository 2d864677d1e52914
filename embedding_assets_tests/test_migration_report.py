"""The migration report's own measures: containment of the new top 10 in the old top K, and the
dimension tax."""

import pytest

from embedding_assets.quality.migration_report import containment, dimension_tax


def test_containment_counts_the_new_top_ten_inside_each_old_depth():
    new = [[f"d{i}" for i in range(10)], [f"e{i}" for i in range(10)]]
    old = [
        [f"d{i}" for i in range(5)]
        + [f"x{i}" for i in range(45)]
        + [f"d{i}" for i in range(5, 10)],  # 5 at K=10
        [f"y{i}" for i in range(100)],  # the second query's new top 10 is nowhere in its old top 100
    ]
    assert containment(new, old) == {10: 0.25, 50: 0.25, 100: 0.5}


def test_dimension_tax_is_bytes_per_million_vectors(registry):
    minilm = registry.get("minilm-l6-v2")
    tax = dimension_tax(minilm)
    assert tax["float32_per_million"] == 384 * 4 * 1_000_000
    assert tax["rq_codes_per_million"] == pytest.approx(384 * 4 / 8 * 1_000_000)
