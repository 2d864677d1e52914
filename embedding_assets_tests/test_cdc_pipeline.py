"""Change capture end to end: rows inserted, updated and deleted in a real PostgreSQL table reach the
served index through the sensor and the refresh; the slot advances only after a successful run."""

import uuid
from contextlib import closing

import dagster as dg
import pytest
import yaml

from embedding_assets import locations
from embedding_assets.cli import runner
from embedding_assets.corpus.postgres.feed import PostgresChangeFeed
from embedding_assets.defs.jobs import CORPUS_JOB, REFRESH_SERVED_JOB
from embedding_assets.defs.refresh import change_capture_commit_sensor, refresh_live_versions_sensor
from embedding_assets.defs.resources import CorpusSourceResource, PostgresResource
from embedding_assets.defs.sensors import postgres_cdc_sensor
from embedding_assets.defs.tags import BATCH as BATCH_TAG
from embedding_assets.defs.tags import CDC_END_LSN as CDC_TAG
from embedding_assets.defs.tags import REFRESH as REFRESH_TAG
from embedding_assets.models.registry import DEFAULT_VERSION
from embedding_assets.serving.search import searcher_for_state

pytestmark = pytest.mark.slow
MINILM = DEFAULT_VERSION
SEEDED = ["library/csv/reader.md", "library/csv/writer.md", "library/json/dumps.md", "topics/for.md"]
QUEUED = "Runs of the refresh go through the queue, one per live version.\n"
MARKER = "The pangolin-semaphore sentence marks the inserted row."


@pytest.fixture(scope="module")
def cdc(built_project, postgres, tmp_path_factory):
    """A deployment whose corpus is a PostgreSQL table holding four of the built project's documents
    (same texts, so their vectors come from the cache), served with MiniLM."""
    uid = uuid.uuid4().hex[:8]
    server = PostgresResource(
        host=postgres.host,
        port=postgres.port,
        user=postgres.user,
        password=postgres.password or "",
        dbname=postgres.dbname,
        table=f"docs_{uid}",
        slot=f"pipeline_{uid}",
    )
    project = built_project.copy(tmp_path_factory.mktemp("cdc"))
    project = project.with_resources(corpus_source=CorpusSourceResource(kind="postgres", postgres=server))
    project.feed = project.resources["corpus_source"].source().feed
    project.feed.ensure_table()
    for doc_id in SEEDED:
        sql(
            project,
            "INSERT INTO {t} (id, title, body) VALUES (%s, '', %s)",
            doc_id,
            read(project, doc_id),
        )
    assert project.migrate(MINILM).promoted  # creates the slot and takes the snapshot
    yield project
    project.feed.drop_slot()


def read(project, doc_id: str) -> str:
    return (project.corpus / doc_id).read_text()


def sql(project, statement: str, *params) -> None:
    with closing(project.feed.settings.connect()) as conn, conn.cursor() as cur:
        cur.execute(statement.replace("{t}", project.feed.settings.table), params)


def served_doc_ids(project) -> set[str]:
    state = project.pointer.require_current()
    return set(
        searcher_for_state(state, project.db(), project.registry()).table.to_arrow()["doc_id"].to_pylist()
    )


def test_snapshot_serves_exactly_the_table(cdc):
    assert served_doc_ids(cdc) == set(SEEDED)
    assert cdc.feed.peek().changes == []


def test_insert_update_delete_arrive_through_the_sensor_and_the_slot_advances(cdc):
    sql(cdc, "INSERT INTO {t} (id, title, body) VALUES (%s, %s, %s)", "notes/new", "Pangolins", MARKER)
    body = read(cdc, "topics/for.md") + "\nA for loop can also iterate over a generator expression.\n"
    sql(cdc, "UPDATE {t} SET body = %s WHERE id = %s", body, "topics/for.md")
    sql(cdc, "DELETE FROM {t} WHERE id = %s", "library/json/dumps.md")
    with dg.build_sensor_context(instance=cdc.instance, resources=cdc.resources) as context:
        request = postgres_cdc_sensor(context)
    assert isinstance(request, dg.RunRequest) and request.tags["embedding_assets/cdc_end_lsn"]

    report = runner.refresh(**cdc.job())
    assert (report.docs_added, report.docs_changed, report.docs_deleted) == (1, 1, 1)
    assert report.cdc["advanced"] and cdc.feed.peek().changes == []
    [minilm] = report.versions
    assert minilm["served"] and minilm["lag_max_seconds"] > 0  # commit time to indexed, measured
    assert served_doc_ids(cdc) == set(SEEDED) - {"library/json/dumps.md"} | {"notes/new"}
    hits = (
        searcher_for_state(cdc.pointer.require_current(), cdc.db(), cdc.registry())
        .search("pangolin-semaphore", 1)
        .hits
    )
    assert hits[0]["doc_id"] == "notes/new"
    assert isinstance(postgres_cdc_sensor(context), dg.SkipReason)


def test_a_failed_run_does_not_advance_the_slot_and_the_retry_applies_the_changes(cdc, tmp_path):
    sql(cdc, "DELETE FROM {t} WHERE id = %s", "library/csv/writer.md")
    pending = cdc.feed.peek().changes
    assert [c.kind for c in pending] == ["delete"]
    document = yaml.safe_load(locations.SHIPPED_REGISTRY.read_text())
    document["versions"] = [v for v in document["versions"] if v["id"] == MINILM]  # its builds pin it
    document["versions"][0]["fingerprint"] = "sha256:" + "2" * 64
    broken = tmp_path / "model_registry.yaml"
    broken.write_text(yaml.safe_dump(document))
    failed = runner.refresh(**cdc.with_registry(broken).job())  # weights no longer match: the run fails
    assert not failed.ok and failed.cdc == {"end_lsn": failed.cdc["end_lsn"], "advanced": False}
    assert PostgresChangeFeed(cdc.feed.settings).peek().changes == pending  # nothing was consumed
    assert "library/csv/writer.md" in served_doc_ids(cdc)

    retried = runner.refresh(**cdc.job())
    assert retried.ok and retried.cdc["advanced"] and cdc.feed.peek().changes == []
    assert "library/csv/writer.md" not in served_doc_ids(cdc)


def _launch(cdc, job_name: str, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """What the daemon does with a RunRequest, done in process on the test instance."""
    return cdc.defs.resolve_job_def(job_name).execute_in_process(
        instance=cdc.instance, partition_key=request.partition_key, tags=request.tags, raise_on_error=False
    )


def _after(cdc, sensor, result: dg.ExecuteInProcessResult):
    """Evaluate a run-status sensor on the success of `result`'s run, as the daemon would."""
    [success] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS]
    with dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=success,
        dagster_instance=cdc.instance,
        dagster_run=result.dagster_run,
        resources=cdc.resources,
    ) as context:
        return sensor(context)


def test_dagster_native_refresh_runs_one_request_per_version_and_commits_after_the_last(cdc):
    """sensor -> sync_corpus run -> one run per live version -> the slot advances only after all of them."""
    sql(cdc, "INSERT INTO {t} (id, title, body) VALUES (%s, 'Queue', %s)", "notes/queued", QUEUED)
    with dg.build_sensor_context(instance=cdc.instance, resources=cdc.resources) as context:
        request = postgres_cdc_sensor(context)
    assert isinstance(request, dg.RunRequest) and request.tags[REFRESH_TAG] == "1"
    sync = _launch(cdc, CORPUS_JOB, request)
    assert sync.success
    requests = _after(cdc, refresh_live_versions_sensor, sync)
    assert [(r.job_name, r.partition_key) for r in requests] == [(REFRESH_SERVED_JOB, MINILM)]
    assert requests[0].tags[BATCH_TAG] == sync.run_id and requests[0].tags[CDC_TAG]
    assert cdc.feed.peek().changes  # the sync alone commits nothing
    version_run = _launch(cdc, requests[0].job_name, requests[0])
    assert version_run.success and cdc.feed.peek().changes  # still nothing until the commit sensor ran
    _after(cdc, change_capture_commit_sensor, version_run)
    assert cdc.feed.peek().changes == []
    assert "notes/queued" in served_doc_ids(cdc)
    again = _after(cdc, change_capture_commit_sensor, version_run)  # a second success report is harmless
    assert isinstance(again, dg.SkipReason)


def test_after_a_truncate_the_sensor_requests_a_resync_instead_of_failing_every_tick(cdc):
    """Runs last: it empties the table. A TRUNCATE names no ids, so the slot must be read afresh."""
    sql(cdc, "TRUNCATE {t}")
    with dg.build_sensor_context(instance=cdc.instance, resources=cdc.resources) as context:
        request = postgres_cdc_sensor(context)  # raised ResyncRequired on every tick before
    assert isinstance(request, dg.RunRequest)
    assert request.tags["embedding_assets/trigger"] == "postgres-resync"
    report = runner.refresh(**cdc.job())
    assert report.ok and report.docs_deleted > 0
    assert cdc.feed.peek().changes == []  # resynchronized from a fresh slot and snapshot
