"""Shadow traffic: live queries mirrored to a candidate by the search service, their agreement logged
beside the serving history, and a promotion held until the candidate has answered enough of them."""

import pytest
import yaml

from embedding_assets import locations
from embedding_assets.defs.checks.gates import SHADOW_AGREEMENT
from embedding_assets.models.registry import DEFAULT_VERSION
from embedding_assets.serving.search import ServedSearch
from embedding_assets.serving.service import SearchRequest, SearchService
from embedding_assets.serving.shadow import Shadow, ShadowLog, shadowed

pytestmark = pytest.mark.slow
QUERIES = [
    "read a csv file row by row",
    "parse command line options",
    "format a date as ISO 8601",
    "sort a list of dictionaries by a key",
    "run a function in a thread pool",
]
REQUIRED = 4


def test_the_mirrored_share_is_a_stable_choice_by_query():
    queries = [f"query {i}" for i in range(4000)]
    picked = [q for q in queries if shadowed(q, 0.25)]
    assert 0.22 < len(picked) / len(queries) < 0.28
    assert picked == [q for q in queries if shadowed(q, 0.25)]  # the same queries every time
    assert all(shadowed(q, 1.0) for q in queries)


@pytest.fixture(scope="module")
def shadowed_project(built_project, tmp_path_factory):
    """MiniLM served; a hybrid candidate (MiniLM's vectors, BM25 fused) requiring REQUIRED shadow queries."""
    folder = tmp_path_factory.mktemp("shadow")
    document = yaml.safe_load(locations.SHIPPED_REGISTRY.read_text())
    entry = next(v for v in document["versions"] if v.get("retrieval", {}).get("mode") == "hybrid")
    entry["gates"] = {"shadow_queries": REQUIRED}
    (folder / "model_registry.yaml").write_text(yaml.safe_dump(document))
    project = built_project.copy(folder / "deployment", folder / "model_registry.yaml")
    assert project.migrate(DEFAULT_VERSION).promoted
    return project, entry["id"]


def _gate(run, name: str) -> dict:
    return next(c for c in run.checks if c["name"] == name)


def test_a_promotion_waits_for_the_shadow_queries_it_requires(shadowed_project):
    project, candidate = shadowed_project
    held = project.migrate(candidate)
    gate = _gate(held, SHADOW_AGREEMENT)
    assert not held.promoted and not gate["passed"] and gate["metadata"]["shadow_queries"] == 0
    assert f"serve --shadow {candidate}" in gate["description"]

    db, registry = project.db(), project.registry()
    log = ShadowLog(project.pointer.folder)
    shadow = Shadow(db, registry.get(candidate), 1.0, log)
    service = SearchService(ServedSearch(db, project.pointer, registry), shadow)
    answers = [service.search(SearchRequest(q, 5)) for q in QUERIES]
    shadow.drain()
    assert all(a["model_version"] == DEFAULT_VERSION for a in answers)  # answered from what serves
    assert service.health()["shadow"] | {"pending": 0} == {
        "candidate": candidate,
        "share": 1.0,
        "mirrored": len(QUERIES),
        "dropped": 0,
        "failed": 0,
        "pending": 0,
    }
    records = log.records(candidate)
    assert len(records) == len(QUERIES) and all(0 <= r.overlap_at_10 <= 1 for r in records)
    assert not any(q in log.path(candidate).read_text() for q in QUERIES)  # digests, never the text

    released = project.migrate(candidate)
    gate = _gate(released, SHADOW_AGREEMENT)
    assert released.promoted and gate["passed"], released.to_json()
    meta = gate["metadata"]
    assert meta["shadow_queries"] == len(QUERIES) and meta["compared_with"] == DEFAULT_VERSION
    assert 0 <= meta["top1_agreement"] <= 1 and 0 <= meta["mean_overlap@10"] <= 1
    served = project.pointer.require_current()
    assert served.version == candidate and served.gates[SHADOW_AGREEMENT]["shadow_queries"] == len(QUERIES)
