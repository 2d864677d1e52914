"""The production instance for real: the shipped dagster.yaml (PostgreSQL run, event and schedule storage,
queued run coordinator) with `dagster-daemon`. A corpus change is picked up by the folder sensor, the
refresh runs are queued, launched and succeed, and run history and check results survive a daemon
restart. Real PostgreSQL, real daemon, real MiniLM (as int8 ONNX, `deployments.FIRST`)."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from embedding_assets import locations
from embedding_assets.cli.daemon import dagster_daemon as daemon
from embedding_assets.defs import tags
from embedding_assets.defs.assets.corpus import corpus
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.checks.gates import COUNT_RECONCILIATION, INDEX_CHECKS
from embedding_assets.defs.dagster_private import latest_check_evaluations
from embedding_assets.defs.jobs import CHECK_JOB, CORPUS_JOB, MIGRATE_JOB, PROMOTE_JOB, REFRESH_SERVED_JOB
from embedding_assets_tests.deployments import FIRST

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
WAIT_SECONDS = 420
ADDED = "notes/daemon.md"


@pytest.fixture(scope="module")
def production(small_corpus, postgres, tmp_path_factory) -> Iterator[dict]:
    """A deployment under a temp data folder and a Dagster home holding the shipped dagster.yaml, its
    storage in a fresh database of the test PostgreSQL server; FIRST (`deployments`) built and served
    through the CLI, so the runs the daemon launches load the model without sentence-transformers."""
    root = tmp_path_factory.mktemp("production")
    data, home = root / "data", root / "dagster_home"
    shutil.copytree(small_corpus, locations.corpus_dir(data))
    home.mkdir()
    shutil.copyfile(locations.PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    database = f"dagster_{uuid.uuid4().hex[:8]}"
    with closing(postgres.connect()) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}"')
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_USERNAME": postgres.user,
        "DAGSTER_PG_PASSWORD": postgres.password or "",
        "DAGSTER_PG_HOST": postgres.host,
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_DB": database,
        "EMBEDDING_ASSETS_DATA": str(data),
        "EMBEDDING_ASSETS_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }
    served = subprocess.run(
        [BIN / "embedding-assets", "migrate", "--to", FIRST, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    yield {"env": env, "home": home, "data": data, "root": root}


def instance_of(env: dict) -> dg.DagsterInstance:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return dg.DagsterInstance.from_config(env["DAGSTER_HOME"])


def wait_for(instance: dg.DagsterInstance, job_name: str, after: float, log: Path) -> dg.DagsterRun:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        for record in instance.get_run_records(filters=dg.RunsFilter(job_name=job_name), limit=5):
            if record.create_timestamp.timestamp() < after:
                continue
            if record.dagster_run.status == dg.DagsterRunStatus.SUCCESS:
                return record.dagster_run
            if record.dagster_run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
                run_id = record.dagster_run.run_id
                errors = [
                    e.message for e in instance.all_logs(run_id) if e.is_dagster_event and e.level >= 40
                ]
                errors += [
                    f"{c.check_name}: {c.description}"
                    for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
                    if not (c := e.dagster_event.event_specific_data).passed
                ]
                pytest.fail(f"{job_name} run {run_id} ended {record.dagster_run.status}: {errors[-3:]}")
        time.sleep(3)
    pytest.fail(
        f"no successful {job_name} run within {WAIT_SECONDS}s; daemon log:\n{log.read_text()[-4000:]}"
    )


def test_a_corpus_change_flows_through_the_daemon_and_history_survives_a_restart(production):
    env, log = production["env"], production["root"] / "daemon.log"
    started = subprocess.run(
        [BIN / "dagster", "sensor", "start", "corpus_folder_sensor", "-w", "workspace.yaml"],
        env=env,
        cwd=locations.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    # A new document about nothing the judged queries ask, so the served version's gates judge the same
    # quality (an edit to a judged document of this small corpus can move nDCG@10 past the margin).
    added = locations.corpus_dir(production["data"]) / ADDED
    added.parent.mkdir(parents=True, exist_ok=True)
    added.write_text("# Ibis lanterns\n\nThe daemon indexed this note about ibis-lanterns at dusk.\n")
    changed_at = time.time()
    instance = instance_of(env)
    with daemon(env, log):
        sync = wait_for(instance, CORPUS_JOB, changed_at, log)
        refresh = wait_for(instance, REFRESH_SERVED_JOB, changed_at, log)
    assert (
        sync.tags["embedding_assets/trigger"] == "folder" and refresh.tags["embedding_assets/refresh_batch"]
    )
    assert refresh.tags["dagster/partition"] == FIRST
    since = datetime.fromtimestamp(changed_at, UTC)
    for job_name in (CORPUS_JOB, REFRESH_SERVED_JOB):  # one batch: no second sync raced the first
        assert len(instance.get_runs(filters=dg.RunsFilter(job_name=job_name, created_after=since))) == 1
    timeline = {
        r.dagster_run.job_name: (r.create_timestamp.timestamp(), r.start_time, r.end_time)
        for r in instance.get_run_records(filters=dg.RunsFilter(run_ids=[sync.run_id, refresh.run_id]))
    }
    print("timeline (created, started, ended; seconds after the edit):")
    for job, times in sorted(timeline.items(), key=lambda kv: kv[1][0]):
        print(f"  {job}: " + ", ".join(f"{t - changed_at:.1f}" for t in times if t is not None))
    assert all(t is not None for times in timeline.values() for t in times)

    with daemon(env, log):  # a restart: storage is PostgreSQL, so nothing is lost
        time.sleep(5)
    again = instance_of(env)
    assert {
        r.run_id for r in again.get_runs(filters=dg.RunsFilter(run_ids=[sync.run_id, refresh.run_id]))
    } == {
        sync.run_id,
        refresh.run_id,
    }
    key = dg.AssetCheckKey(index.key, COUNT_RECONCILIATION)
    evaluation = latest_check_evaluations(again, [key], FIRST)[key]
    assert evaluation is not None and evaluation.passed
    assert evaluation.target_materialization_data.run_id == refresh.run_id  # the gate result survived


def _cli(env: dict, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [BIN / "embedding-assets", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _windows(instance: dg.DagsterInstance, run_ids: list[str], step: str | None = None) -> list[tuple]:
    """(start, end) of each run, or of one step in each run, in start order."""
    spans = []
    for run_id in run_ids:
        if step is None:
            record = instance.get_run_record_by_id(run_id)
            spans.append((record.start_time, record.end_time))
            continue
        events = instance.all_logs(run_id)
        times = {
            e.dagster_event.event_type: e.timestamp
            for e in events
            if e.step_key == step and e.is_dagster_event
        }
        spans.append((times[dg.DagsterEventType.STEP_START], times[dg.DagsterEventType.STEP_SUCCESS]))
    return sorted(spans)


def test_cli_launches_on_the_queue_and_one_writer_waits_for_the_other(production):
    """`--launch` submits to the instance's queue and exits with the run's outcome and the usual JSON (a
    migration builds, gates and promotes in three queued runs; a rollback with nothing to go back to
    fails plainly). Two refreshes launched together: the version table takes one writer at a time (the
    partition's tag limit), the documents table one corpus sync at a time (its pool); afterwards every
    count reconciles. (`checks --launch` runs the same launched check_index run as the migration's gates.)"""
    env, log = production["env"], production["root"] / "daemon.log"
    instance = instance_of(env)
    with daemon(env, log):
        migrated = _cli(env, "migrate", "--to", FIRST, "--launch", "--json")
        out, err = migrated.communicate(timeout=WAIT_SECONDS)
        assert migrated.returncode == 0, err[-3000:]
        migration = json.loads(out)  # already served at this table version: the promotion re-affirms it
        assert migration["promoted"] and migration["served_version"] == FIRST
        assert {c["name"] for c in migration["checks"]} == set(INDEX_CHECKS)
        assert all(c["passed"] for c in migration["checks"])
        # Build, gates and promotion each went through the queue, tagged with what started them.
        runs = [instance.get_run_by_id(migration[k]) for k in ("run_id", "gates_run_id", "promote_run_id")]
        assert [r.job_name for r in runs] == [MIGRATE_JOB, CHECK_JOB, PROMOTE_JOB]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert all(r.tags[tags.TRIGGER] == "cli" and r.tags[tags.VERSION] == FIRST for r in runs)
        assert all(r.tags[tags.PARTITION] == FIRST for r in runs) and "success" in err.lower()
        assert all(instance.all_logs(r.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED) for r in runs)
        assert runs[2].tags[tags.MIGRATION] == migration["run_id"]
        rollback = _cli(env, "rollback", "--launch", "--json")
        _, err = rollback.communicate(timeout=WAIT_SECONDS)
        assert (
            rollback.returncode == 2 and "replaced nothing" in err
        )  # the launched run's failure, said plainly

        # Nothing changed, so a plain refresh would skip the version: --force makes both write and gate.
        refreshes = [_cli(env, "refresh", "--launch", "--json", "--force") for _ in range(2)]
        reports = []
        for process in refreshes:
            out, err = process.communicate(timeout=WAIT_SECONDS)
            assert process.returncode == 0, err[-3000:]
            reports.append(json.loads(out))
    assert all(r["versions"][0]["gates_passed"] for r in reports), json.dumps(reports)[:4000]
    since = instance.get_run_record_by_id(migration["run_id"]).create_timestamp
    served = [
        r.run_id
        for r in instance.get_runs(filters=dg.RunsFilter(job_name=REFRESH_SERVED_JOB, created_after=since))
    ]
    syncs = [
        r.run_id for r in instance.get_runs(filters=dg.RunsFilter(job_name=CORPUS_JOB, created_after=since))
    ]
    assert len(served) == 2 and len(syncs) == 2
    (first_start, first_end), (second_start, _) = _windows(instance, served)
    assert second_start >= first_end  # the second writer of the version table waited in the queue
    (_, sync_end), (next_sync_start, _) = _windows(instance, syncs, step=corpus.key.to_python_identifier())
    assert next_sync_start >= sync_end  # one corpus sync at a time (the documents_table pool)
    print(
        f"two refresh_served runs of one version: the first ran {first_end - first_start:.1f}s; the second "
        f"waited in the queue and started {second_start - first_end:.1f}s after the first ended"
    )
    key = dg.AssetCheckKey(index.key, COUNT_RECONCILIATION)
    evaluation = latest_check_evaluations(instance, [key], FIRST)[key]
    assert evaluation.passed and evaluation.target_materialization_data.run_id in served
