"""The silent swap (issue 12): paraphrase-MiniLM-L3-v2, another model with MiniLM-L6's dimension (384) and
tokenizer, slipped behind the minilm-l6-v2 id. The fingerprint refuses it before a vector is computed;
with the fingerprint bypassed for the experiment (the entry re-pinned to the new bytes, as a hurried
operator might), the migration embeds the corpus with it and the sentinel drift and neighbour stability
gates block it, so serving stays on MiniLM."""

from pathlib import Path

import pytest
import yaml

from embedding_assets import locations
from embedding_assets.defs.checks.gates import NEIGHBOUR_STABILITY, SENTINEL_DRIFT
from embedding_assets.index import tables
from embedding_assets.models.registry import DEFAULT_VERSION, FingerprintMismatchError, load_registry

pytestmark = pytest.mark.slow
L3 = "paraphrase-minilm-l3-v2"


def swapped(tmp_path: Path, fingerprint: str | None = None) -> Path:
    """The shipped registry with L3's weights behind MiniLM's id; its pin MiniLM's unless `fingerprint`."""
    registry = yaml.safe_load(locations.SHIPPED_REGISTRY.read_text())
    entries = {v["id"]: v for v in registry["versions"]}
    minilm, l3 = entries[DEFAULT_VERSION], entries[L3]
    minilm.update(
        loader=l3["loader"], weights=l3["weights"], fingerprint=fingerprint or minilm["fingerprint"]
    )
    # Versions built from MiniLM's pin would name the swap at load; the experiment leaves them out.
    registry["versions"] = [v for v in registry["versions"] if "build" not in v["weights"]]
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(registry))
    return path


@pytest.fixture(scope="module")
def served(built_project, tmp_path_factory):
    """MiniLM built (vectors copied, not re-encoded) and promoted through every gate."""
    project = built_project.copy(tmp_path_factory.mktemp("swap"))
    assert project.migrate(DEFAULT_VERSION).promoted
    return project


def _unchanged(project, before) -> None:
    assert project.pointer.require_current() == before
    table = project.db().open_table(before.table)
    table.checkout(before.lance_tag)
    assert table.count_rows() == before.rows


def test_behind_the_minilm_id_it_is_refused_by_the_fingerprint(served, tmp_path):
    registry = swapped(tmp_path)
    version = load_registry(registry).get(DEFAULT_VERSION)
    with pytest.raises(FingerprintMismatchError) as refused:
        version.verified_weights_path()
    pinned = load_registry().get(DEFAULT_VERSION).fingerprint
    assert pinned in str(refused.value) and refused.value.actual in str(refused.value)
    assert refused.value.actual == load_registry().get(L3).fingerprint  # it is L3's bytes

    before = served.pointer.require_current()
    table_version = served.db().open_table(tables.index_table(DEFAULT_VERSION)).version
    run = served.with_registry(registry).migrate(DEFAULT_VERSION)
    assert not run.promoted and not run.gates_passed
    assert any(pinned in error for error in run.errors), run.errors
    assert (
        served.db().open_table(tables.index_table(DEFAULT_VERSION)).version == table_version
    )  # nothing written
    _unchanged(served, before)


def test_with_the_fingerprint_bypassed_drift_and_stability_block_it(served, tmp_path):
    registry = swapped(tmp_path, fingerprint=load_registry().get(L3).fingerprint)
    before = served.pointer.require_current()
    run = served.with_registry(registry).migrate(DEFAULT_VERSION)

    assert not run.promoted
    checks = {c["name"]: c for c in run.checks}
    drift, stability = checks[SENTINEL_DRIFT], checks[NEIGHBOUR_STABILITY]
    assert (drift["passed"], drift["severity"]) == (False, "ERROR"), drift
    assert drift["metadata"]["p50_distance"] > drift["metadata"]["block_above"], drift["metadata"]
    assert (stability["passed"], stability["severity"]) == (False, "ERROR"), stability
    assert stability["metadata"]["mean_top10_overlap"] < stability["metadata"]["block_below"]
    _unchanged(served, before)
