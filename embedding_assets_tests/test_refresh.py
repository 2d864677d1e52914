"""Incremental refresh of every live version: only changed documents are re-chunked, only new chunk
hashes are embedded, deletes propagate, and a run with no change writes nothing (real MiniLM, LanceDB)."""

import dagster as dg
import pyarrow.compute as pc
import pytest

from embedding_assets.cli import runner
from embedding_assets.defs.checks.gates import (
    ANN_RECALL,
    COUNT_RECONCILIATION,
    GOLDEN_QUALITY,
    NEIGHBOUR_STABILITY,
    ann_recall_after_maintenance,
)
from embedding_assets.defs.jobs import CORPUS_JOB, REFRESH_SERVED_JOB
from embedding_assets.defs.maintenance import optimize_after_refresh_sensor, unindexed_rows
from embedding_assets.defs.sensors import corpus_folder_sensor
from embedding_assets.index import ann, tables
from embedding_assets.models.registry import DEFAULT_VERSION
from embedding_assets.quality.freshness import served_lag
from embedding_assets.quality.gates.ann_recall import MEASURED_AGAIN
from embedding_assets.quality.gates.counts import reconcile
from embedding_assets.quality.gates.golden import SERVED_SCORES_RECORDED, TABLE_VERSION
from embedding_assets.quality.gates.stability import BASELINE_FROM
from embedding_assets.serving.maintenance import rows_digest
from embedding_assets.serving.search import searcher_for_state
from embedding_assets.wiring import initialized
from embedding_assets_tests.project import BUILD

pytestmark = pytest.mark.slow
MINILM = DEFAULT_VERSION
EDITED = "library/csv/writer.md"
DELETED = "library/json/dump.md"
ADDED = "library/notes/refresh.md"
ADDED_TEXT = (
    "# Incremental refresh\n\nA refresh re-embeds only what changed. The zebra-striped marker "
    "sentence quokka-lantern makes this document easy to find in a search.\n"
)


@pytest.fixture(scope="module")
def live(built_project, registry, tmp_path_factory):
    """MiniLM served, the static version built beside it as a candidate."""
    project = built_project.copy(tmp_path_factory.mktemp("refresh"))
    assert project.migrate(MINILM).promoted
    project.static = next(v.id for v in registry.versions if v.loader == "model2vec")
    project.materialize(BUILD, version=project.static)
    return project


def _version(report: runner.RefreshReport, version_id: str) -> dict:
    [entry] = [v for v in report.versions if v["id"] == version_id]
    return entry


def _sensor(project) -> dg.SensorResult | dg.RunRequest | dg.SkipReason:
    with dg.build_sensor_context(instance=project.instance, resources=project.resources) as context:
        return corpus_folder_sensor(context)


def test_nothing_changed_embeds_and_writes_nothing(live):
    assert isinstance(_sensor(live), dg.SkipReason)
    report = runner.refresh(**live.job())
    assert (report.docs_added, report.docs_changed, report.docs_deleted) == (0, 0, 0)
    assert (report.chunks_embedded, report.rows_upserted, report.rows_deleted) == (0, 0, 0)
    assert [(v["id"], v["role"]) for v in report.versions] == [(MINILM, "served"), (live.static, "candidate")]
    # MiniLM's index was built from these very documents and gated and served at its table version: its
    # refresh is skipped, with the reason. The static candidate was built without its gates: it runs.
    served = _version(report, MINILM)
    assert served["skipped"].startswith("up to date") and served["served"] and not served["errors"]
    assert "skipped" not in _version(report, live.static)


def test_edit_add_delete_touch_exactly_those_documents_in_every_live_version(live):
    edited = live.corpus / EDITED
    edited.write_text(edited.read_text() + "\nThe writer also accepts a lineterminator of your choice.\n")
    (live.corpus / ADDED).parent.mkdir(parents=True, exist_ok=True)
    (live.corpus / ADDED).write_text(ADDED_TEXT)
    (live.corpus / DELETED).unlink()
    rows_before = live.index_rows()
    deleted_rows = pc.sum(pc.equal(rows_before["doc_id"], DELETED)).as_py()
    assert isinstance(_sensor(live), dg.RunRequest)  # the cheap stat scan sees the three changes

    report = runner.refresh(**live.job())
    assert (report.docs_added, report.docs_changed, report.docs_deleted) == (1, 1, 1)
    for version in (MINILM, live.static):
        entry = _version(report, version)
        rows = live.index_rows(version)
        changed = rows.filter(pc.is_in(rows["doc_id"], pc.cast([EDITED, ADDED], rows["doc_id"].type)))
        assert entry["indexed"] and entry["rows_deleted"] >= deleted_rows > 0
        assert 1 <= entry["chunks_embedded"] <= changed.num_rows  # only chunks of the two documents
        assert DELETED not in set(rows["doc_id"].to_pylist())
        assert reconcile(live.db(), live.resources["model_registry"].version(version)).passed
    served = live.pointer.require_current()
    assert _version(report, MINILM)["served"] and served.action == "refresh"
    # a judged document was deleted, so the judged set changed: the served state was scored again
    assert served.gates[GOLDEN_QUALITY][SERVED_SCORES_RECORDED] is False
    hits = (
        searcher_for_state(served, live.db(), live.registry())
        .search("quokka-lantern zebra-striped marker", 3)
        .hits
    )
    assert hits[0]["doc_id"] == ADDED
    assert _version(report, MINILM)["lag_max_seconds"] >= 0
    assert isinstance(_sensor(live), dg.SkipReason)

    again = runner.refresh(**live.job())
    assert (again.chunks_embedded, again.rows_upserted, again.rows_deleted) == (0, 0, 0)
    assert _version(again, MINILM)["skipped"].startswith("up to date")


def test_crash_between_embedding_and_writing_loses_nothing_and_duplicates_nothing(live):
    """Stop the pipeline after the vectors are cached and before the index is written, then refresh."""
    edited = live.corpus / "library/csv/reader.md"
    edited.write_text(edited.read_text() + "\nRows can be read lazily, one at a time.\n")
    partial = live.materialize(BUILD[:-1])  # corpus, weights, chunks, embeddings: no index write
    embedded = live.metadata(partial, "embeddings")["chunks_embedded"]
    assert embedded >= 1
    assert not reconcile(live.db(), live.resources["model_registry"].version(MINILM)).passed
    lag = served_lag(live.db(), live.pointer.require_current())
    assert "library/csv/reader.md" in lag.pending_documents
    # The manifest already matches the folder, but the change never reached the index: the folder sensor
    # still asks for a refresh (it used to skip, and its run key allowed one run per change ever).
    request = _sensor(live)
    assert isinstance(request, dg.RunRequest) and request.tags["embedding_assets/trigger"] == "folder-retry"

    served_before = live.pointer.require_current()
    report = runner.refresh(**live.job())
    entry = _version(report, MINILM)
    assert entry["chunks_embedded"] == 0 and entry["rows_upserted"] >= embedded  # vectors came from cache
    # the same judged set: golden quality scored one table, the served state's scores its gate recorded
    golden = live.pointer.require_current().gates[GOLDEN_QUALITY]
    assert golden[SERVED_SCORES_RECORDED] is True
    assert golden["served_ndcg@10"] == served_before.gates[GOLDEN_QUALITY]["ndcg@10"]
    assert golden[TABLE_VERSION] == live.pointer.require_current().table_version
    rows = live.index_rows()
    assert len(set(rows["chunk_id"].to_pylist())) == rows.num_rows
    gates = live.gates()
    assert next(c for c in gates.checks if c["name"] == COUNT_RECONCILIATION)["passed"]
    assert not served_lag(live.db(), live.pointer.require_current()).pending_documents


def _unindexed_after_refresh_asks_for_maintenance(live, run_id: str) -> dg.RunRequest | dg.SkipReason:
    """What optimize_after_refresh_sensor says after the (launchpad-style, not CLI-driven) run `run_id`."""
    run = live.instance.get_run_by_id(run_id)
    success = live.instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)[0].dagster_event
    with dg.build_run_status_sensor_context(
        sensor_name=optimize_after_refresh_sensor.name,
        dagster_event=success,
        dagster_instance=live.instance,
        dagster_run=run,
        resources={key: live.resources[key] for key in ("lancedb", "model_registry")},
    ) as context:
        return optimize_after_refresh_sensor(context)


def _check_evaluations(live, run_id: str, check: str) -> list[dict]:
    """The metadata of each evaluation of `check` that run `run_id` logged."""
    events = live.instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [e.dagster_event.event_specific_data for e in events]
    return [e.metadata for e in evaluations if e.check_name == check]


def test_rows_a_refresh_leaves_outside_the_vector_index_are_folded_in_and_serving_follows(live, monkeypatch):
    """A served table with an ANN index (the row threshold lowered to this corpus): a refresh's new rows
    are searched beside the index until optimize_index folds them in; the pointer then moves to the
    maintained table version, the same rows with the refreshed state's gates and way back."""
    monkeypatch.setattr(ann, "ANN_MIN_ROWS", 50)
    table = live.db().open_table(tables.index_table(MINILM))
    assert ann.ensure_vector_index(table).action == "created"
    edited = live.corpus / "library/csv/Dialect.md"
    edited.write_text(edited.read_text() + "\nA dialect groups the formatting parameters of a file.\n")

    # In a deployment: the sync, the served version's refresh, then the sensor asks for maintenance.
    assert runner.execute(CORPUS_JOB, None, **live.job()).success
    refreshed_run = runner.execute(REFRESH_SERVED_JOB, MINILM, **live.job())
    refreshed = live.pointer.require_current()
    assert refreshed_run.success and refreshed.action == "refresh"
    assert unindexed_rows(live.resources["lancedb"], MINILM) >= 1  # below OPTIMIZE_UNINDEXED: left
    request = _unindexed_after_refresh_asks_for_maintenance(live, refreshed_run.run_id)
    assert isinstance(request, dg.RunRequest) and request.partition_key == MINILM

    [done] = runner.optimize(MINILM, **live.job())
    now = live.pointer.require_current()
    assert done["ok"] and done["served"] and done["index_action"] in ("optimized", "retrained")
    assert (now.action, now.seq, now.table_version) == (
        "optimize",
        refreshed.seq + 1,
        done["table_version_after"],
    )
    assert now.table_version > refreshed.table_version and now.rows == refreshed.rows
    assert (now.gates, now.supersedes, now.serving_since) == (
        refreshed.gates,
        refreshed.supersedes,
        refreshed.serving_since,
    )
    assert rows_digest(table, now.table_version) == rows_digest(table, refreshed.table_version)
    assert unindexed_rows(live.resources["lancedb"], MINILM) == 0
    assert isinstance(
        _unindexed_after_refresh_asks_for_maintenance(live, refreshed_run.run_id), dg.SkipReason
    )
    # The maintenance run measured the changed index's recall (its exact lists from the memo the refresh's
    # check left), as the ann_recall check's evaluation on the version.
    maintained = _check_evaluations(live, done["run_id"], ANN_RECALL)
    assert [m[MEASURED_AGAIN].value for m in maintained] == [True]
    assert maintained[0]["exact_from"].value == "memo"
    # The check, evaluated next on that index (a refresh's), reports that measurement again.
    golden = initialized(live.resources["golden_set"])
    version = live.registry().get(MINILM)
    carried = ann_recall_after_maintenance(
        live.instance, live.db(), live.registry(), version, live.pointer, golden
    )
    assert carried.metadata[MEASURED_AGAIN].value is False
    assert carried.metadata["recall@10"] == maintained[0]["recall@10"]
    hits = searcher_for_state(now, live.db(), live.registry()).search("dialect formatting parameters", 3).hits
    assert "library/csv/Dialect.md" in {h["doc_id"] for h in hits}

    # The CLI's refresh maintains the versions it wrote itself, after the refresh (timed apart).
    edited.write_text(edited.read_text() + "\nEvery reader and writer takes a dialect.\n")
    report = runner.refresh(**live.job())
    maintained = {m["id"]: m for m in report.maintenance}
    assert maintained[MINILM]["served"] and report.maintenance_seconds > 0
    # The static candidate has no ANN index: maintained only for tables its refreshes left fragmented.
    assert live.static not in maintained or maintained[live.static]["compacted"]
    assert set(maintained) <= {MINILM, live.static}
    assert live.pointer.require_current().action == "optimize"
    # Its stability gate took the baseline (the maintained state: the rows the last refresh's gates judged)
    # from the ranking that refresh's gate recorded, instead of searching that table again.
    [refresh_run] = live.instance.get_runs(dg.RunsFilter(job_name=REFRESH_SERVED_JOB), limit=1)
    [stability] = _check_evaluations(live, refresh_run.run_id, NEIGHBOUR_STABILITY)
    assert stability[BASELINE_FROM].value == "recorded" and stability["mean_top10_overlap"].value >= 0.5
    # Maintenance changed the table version, not its rows: nothing changed since the gated refresh.
    again = runner.refresh(**live.job())
    assert _version(again, MINILM)["skipped"].startswith("up to date") and not again.maintenance
    assert "index maintenance made it" in _version(again, MINILM)["skipped"]


def test_rollback_serves_the_previous_version_as_refreshed_by_dual_writes(live):
    migration = live.migrate(live.static, overrides={"golden_ndcg_margin": 1.0}, reason="test dual write")
    assert migration.promoted
    stale_minilm = live.pointer.previous()
    (live.corpus / ADDED).write_text(ADDED_TEXT.replace("quokka-lantern", "quokka-lantern axolotl-beacon"))
    report = runner.refresh(**live.job())
    assert [(v["id"], v["role"]) for v in report.versions] == [(live.static, "served"), (MINILM, "previous")]
    assert all(v["indexed"] and v["chunks_embedded"] >= 1 for v in report.versions)

    runner.rollback(**live.job())
    now = live.pointer.require_current()
    assert now.version == MINILM and now.table_version > stale_minilm.table_version
    hits = searcher_for_state(now, live.db(), live.registry()).search("axolotl-beacon", 1).hits
    assert hits[0]["doc_id"] == ADDED and "axolotl-beacon" in hits[0]["text"]
