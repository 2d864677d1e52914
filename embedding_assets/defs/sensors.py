"""Sensors: partitions follow the registry; corpus changes (folder scan, PostgreSQL decoding) start a
refresh of every live version, and a refresh that failed is asked for again; a promotion that the gates
blocked is recorded on serving_index, with the reasons."""

import hashlib
from datetime import UTC, datetime, timedelta

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.corpus.sources import FolderSource
from embedding_assets.corpus.sync import read_manifest
from embedding_assets.defs import tags
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.assets.serving import serving_index
from embedding_assets.defs.assets.shards import SHARD_VECTORS
from embedding_assets.defs.jobs import (
    CHECK_JOB,
    CORPUS_JOB,
    MIGRATE_JOB,
    build_index_job,
    check_index_job,
    migrate_job,
    promote_job,
    refresh_served_job,
)
from embedding_assets.defs.partitions import VERSION_DIMENSION, model_versions, shard_partition, shards_of
from embedding_assets.defs.resources import (
    CorpusSourceResource,
    LanceDBResource,
    ModelRegistryResource,
    ServingResource,
)
from embedding_assets.defs.run_results import RunOutcome
from embedding_assets.index import tables
from embedding_assets.quality.gates.outcome import markdown_table
from embedding_assets.serving.live import live_versions

# Every status short of an end: a run the queue has just launched is STARTING while its worker imports
# the code, and a sensor that misses it requests the same work twice.
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
RETRY_AFTER = timedelta(minutes=5)  # a failed refresh is retried, but not on every tick


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a model_versions partition for every version pinned in the registry.",
)
def model_registry_sensor(context: dg.SensorEvaluationContext, model_registry: ModelRegistryResource):
    """Add a partition for every version pinned in the registry that Dagster does not know yet."""
    known = set(context.instance.get_dynamic_partitions(model_versions.name))
    new = [v for v in model_registry.load().ids if v not in known]
    if not new:
        return dg.SkipReason("every registered model version has a partition")
    return dg.SensorResult(dynamic_partitions_requests=[model_versions.build_add_request(new)])


def _refresh_in_flight(context: dg.SensorEvaluationContext) -> bool:
    """Whether any run of the refresh pipeline (a corpus sync or a version's refresh) is queued or running."""
    in_flight = dg.RunsFilter(tags={tags.REFRESH: "1"}, statuses=IN_FLIGHT)
    return bool(context.instance.get_runs(filters=in_flight, limit=1))


def _latest_refresh(context: dg.SensorEvaluationContext, statuses: list[dg.DagsterRunStatus]):
    runs = context.instance.get_runs(filters=dg.RunsFilter(job_name=CORPUS_JOB, statuses=statuses), limit=1)
    return runs[0] if runs else None


def _sync_awaiting_versions(context: dg.SensorEvaluationContext, last: dg.DagsterRun | None) -> bool:
    """The latest finished refresh step is a corpus sync that succeeded moments ago, and its per-version
    runs are not requested yet or still under way: the versions are behind only for now."""
    if last is None or last.job_name != CORPUS_JOB or last.status != dg.DagsterRunStatus.SUCCESS:
        return False
    if last.tags.get(tags.CLI_DRIVEN):
        return False
    recent = _ended_within(context, last, RETRY_AFTER)
    batch = context.instance.get_runs(filters=dg.RunsFilter(tags={tags.BATCH: last.run_id}))
    return recent and (not batch or any(run.status in IN_FLIGHT for run in batch))


def _ended_within(context: dg.SensorEvaluationContext, run: dg.DagsterRun, window: timedelta) -> bool:
    """Whether `run` ended less than `window` ago."""
    record = context.instance.get_run_record_by_id(run.run_id)
    ended = record.end_time if record else None
    return ended is not None and datetime.now(UTC) - datetime.fromtimestamp(ended, UTC) < window


def _indexed_corpus_version(instance: dg.DagsterInstance, version_id: str) -> int:
    """The documents table version the latest index run of `version_id` read (-1: none recorded)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=index.key, asset_partitions=[version_id]), limit=1
    ).records
    if not records:
        return -1
    value = records[0].asset_materialization.metadata.get(md.CORPUS_TABLE_VERSION)
    return int(value.value) if value is not None else -1


def unindexed_versions(
    instance: dg.DagsterInstance, corpus_version: int, version_ids: list[str]
) -> list[str]:
    """Live versions whose latest index run read an older documents table than the current one: a corpus
    sync wrote changes that their refresh did not reach (a failed or interrupted run)."""
    return [v for v in version_ids if _indexed_corpus_version(instance, v) < corpus_version]


@dg.sensor(
    job_name=CORPUS_JOB,
    minimum_interval_seconds=30,
    description="Refreshes every live version when the corpus folder differs from the manifest (size, "
    "mtime), or when a synced corpus change has not reached every live version's index yet.",
)
def corpus_folder_sensor(
    context: dg.SensorEvaluationContext,
    corpus_source: CorpusSourceResource,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
):
    """A stat of every corpus file against the manifest; files are read only by the run."""
    if corpus_source.kind != "folder":
        return dg.SkipReason(f"the corpus source is {corpus_source.kind!r}, not a folder")
    db = lancedb.connect()
    scan = FolderSource(corpus_source.source().root).scan()
    manifest = read_manifest(db)
    changed = sorted(
        d for d, stat in scan.items() if (m := manifest.get(d)) is None or (m.size, m.mtime_ns) != stat
    )
    deleted = sorted(d for d in manifest if d not in scan)
    live = [v.id for v in live_versions(db, serving.pointer(), model_registry.load(), serving.retention)]
    corpus_version = db.open_table(tables.DOCUMENTS_TABLE).version if manifest else 0
    behind = unindexed_versions(context.instance, corpus_version, live) if manifest else []
    if not changed and not deleted and not behind:
        return dg.SkipReason(f"{len(scan)} files match the manifest and every live version indexed them")
    if _refresh_in_flight(context):
        return dg.SkipReason("a refresh is already queued or running")
    last = _latest_refresh(context, FINISHED)
    if behind and not (changed or deleted) and _sync_awaiting_versions(context, last):
        return dg.SkipReason(f"sync {last.run_id[:8]} succeeded; its per-version runs are being requested")
    failed = last if last is not None and last.status == dg.DagsterRunStatus.FAILURE else None
    if failed is not None and _ended_within(context, failed, RETRY_AFTER):
        return dg.SkipReason(f"the last refresh ({failed.run_id[:8]}) failed; retrying after {RETRY_AFTER}")
    # One request per pending state; after a failed refresh, one more per failure. A state that a
    # successful refresh leaves as it was (a quarantined file keeps its last good version) asks no more.
    state = repr([(d, scan.get(d)) for d in changed + deleted] + behind).encode()
    digest = hashlib.sha256(state).hexdigest()[:16]
    context.log.info(
        f"{len(changed)} new or modified files, {len(deleted)} deleted, e.g. {(changed + deleted)[:3]}; "
        f"versions behind the corpus: {behind}"
    )
    return dg.RunRequest(
        run_key=f"folder-{digest}-retry-{failed.run_id[:8]}" if failed else f"folder-{digest}",
        tags={tags.REFRESH: "1", **tags.run_tags("folder" if changed or deleted else "folder-retry")},
    )


@dg.sensor(
    job_name=CORPUS_JOB,
    minimum_interval_seconds=30,
    description="Refreshes every live version when the PostgreSQL replication slot holds changes to the "
    "documents table (peeked, never consumed), or must be resynchronized after a TRUNCATE.",
)
def postgres_cdc_sensor(context: dg.SensorEvaluationContext, corpus_source: CorpusSourceResource):
    """Pending changes request a refresh. The slot advances only when that refresh indexed them in every
    live version, so a failed run is retried next tick."""
    if corpus_source.kind != "postgres":
        return dg.SkipReason(f"the corpus source is {corpus_source.kind!r}, not postgres")
    source = corpus_source.source()
    batch = source.pending()
    if not batch.changes and not batch.resync:
        if batch.end_lsn:  # WAL of other tables only: let the slot release it, nothing needs applying
            source.advance(batch.end_lsn)
        return dg.SkipReason(f"no pending changes on {source.uri}")
    if _refresh_in_flight(context):
        return dg.SkipReason("a refresh is already queued or running")
    if batch.resync:
        context.log.info(f"{source.uri}: a TRUNCATE (or keyless delete): the refresh resynchronizes")
    return dg.RunRequest(
        tags={
            tags.REFRESH: "1",
            **tags.run_tags("postgres-resync" if batch.resync else "postgres"),
            tags.CDC_END_LSN: batch.end_lsn or "",
        }
    )


def blocked_promotion(instance: dg.DagsterInstance, run: dg.DagsterRun, serving: ServingResource):
    """The observation recording that `run` did not move serving, and why (None: it was not about that)."""
    version = run.tags.get(tags.PARTITION)
    if not version or (run.job_name == CHECK_JOB and not run.tags.get(tags.MIGRATION)):
        return None  # no version, or a re-check that was never meant to promote
    outcome = RunOutcome.of_run(instance, run.run_id)
    failed = [
        c for c in outcome.check_evaluations() if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR
    ]
    reasons = [f"{c.check_name}: {c.description}" for c in failed] + outcome.errors()
    served = serving.pointer().current()
    return dg.AssetObservation(
        asset_key=serving_index.key,
        description=f"blocked: {version} was not promoted; serving stays on "
        f"{served.version if served else 'nothing'}: " + "; ".join(reasons)[:500],
        metadata={
            "blocked_version": version,
            "served_version": served.version if served else "none",
            "run_id": run.run_id,
            "job": run.job_name,
            "blocking_gates": len(failed),
            "reasons": dg.MetadataValue.md(markdown_table(["reason"], [[r] for r in reasons])),
        },
        tags={tags.VERSION: version},
    )


@dg.run_failure_sensor(
    monitored_jobs=[migrate_job, check_index_job, promote_job, refresh_served_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records on serving_index why a migration (its build or its gates), a promotion or a "
    "served refresh did not move serving (the blocking gates and their summaries, or the error), so the "
    "asset's timeline shows it.",
)
def blocked_promotion_sensor(context: dg.RunFailureSensorContext, serving: ServingResource):
    observation = blocked_promotion(context.instance, context.dagster_run, serving)
    if observation is None:
        return dg.SkipReason(f"run {context.dagster_run.run_id[:8]} names no model version")
    context.instance.report_runless_asset_event(observation)
    return dg.SkipReason(observation.description)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[build_index_job, migrate_job],
    request_job=check_index_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a build (or a migration's build) succeeded, requests the check_index run that "
    "gates that version's new index: a build that fails never plans its gates, so it paints none red.",
)
def gates_after_build_sensor(context: dg.RunStatusSensorContext):
    run = context.dagster_run
    migration = {tags.MIGRATION: run.run_id} if run.job_name == MIGRATE_JOB else {}
    return next_step(run, "gates", "build", {tags.BUILD: run.run_id, **migration})


def next_step(run: dg.DagsterRun, step: str, trigger: str, step_tags: dict[str, str]):
    """The run request for the step after `run` for the same version, unless the CLI that started `run`
    runs that step itself (or `run` names no version)."""
    version = run.tags.get(tags.PARTITION)
    if run.tags.get(tags.CLI_DRIVEN) or not version:
        return dg.SkipReason(f"run {run.run_id[:8]} has no version, or its CLI runs the {step} step itself")
    return dg.RunRequest(
        run_key=f"{step}-{run.run_id}",
        partition_key=version,
        tags={**tags.run_tags(trigger, version), **step_tags},
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[check_index_job],
    request_job=promote_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a migration's gates all passed, requests the promote_index run that serves that "
    "version at the table version its gates judged (one serving move at a time, through the queue).",
)
def promote_after_gates_sensor(context: dg.RunStatusSensorContext):
    run = context.dagster_run
    migration = run.tags.get(tags.MIGRATION)
    if not migration:
        return dg.SkipReason(f"run {run.run_id[:8]} re-checked a version; it is no migration's gates run")
    return next_step(run, "promote", "migration", {tags.MIGRATION: migration})


def shards_waiting(
    instance: dg.DagsterInstance, version_id: str, shard_keys: list[str], corpus_version: int
) -> list[str]:
    """The shards of `version_id` not yet staged from documents table version `corpus_version` (their
    latest shard_vectors materialization is missing or read another one)."""
    waiting = []
    for key in shard_keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=SHARD_VECTORS, asset_partitions=[str(shard_partition(version_id, key))]
            ),
            limit=1,
        ).records
        read = records[0].asset_materialization.metadata.get(md.CORPUS_TABLE_VERSION) if records else None
        if read is None or int(read.value) != corpus_version:
            waiting.append(key)
    return waiting


def build_shards_landed_sensor(backfill_job) -> dg.SensorDefinition:
    """The sensor that builds a version once every shard of its backfill has landed."""
    shard_keys = shards_of(backfill_job.partitions_def)

    @dg.run_status_sensor(
        name="shards_landed_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[backfill_job],
        request_job=build_index_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="When the last shard of a version's sharded backfill succeeded (every shard staged "
        "from the current documents table), requests the build_index run that folds them into the "
        "version's tables in one commit each; its gates then judge the whole version.",
    )
    def shards_landed_sensor(context: dg.RunStatusSensorContext, lancedb: LanceDBResource):
        run = context.dagster_run
        version = run.tags.get(tags.PARTITION_DIMENSION + VERSION_DIMENSION)
        if run.tags.get(tags.CLI_DRIVEN) or not version:
            return dg.SkipReason(f"run {run.run_id[:8]} names no version, or its CLI builds it itself")
        in_flight = context.instance.get_runs(
            filters=dg.RunsFilter(
                job_name=backfill_job.name,
                tags={tags.PARTITION_DIMENSION + VERSION_DIMENSION: version},
                statuses=IN_FLIGHT,
            ),
            limit=1,
        )
        if in_flight:
            return dg.SkipReason(f"shards of {version} are still queued or running")
        corpus_version = lancedb.connect().open_table(tables.DOCUMENTS_TABLE).version
        waiting = shards_waiting(context.instance, version, shard_keys, corpus_version)
        if waiting:
            return dg.SkipReason(f"{version}: shards {waiting} have not staged documents v{corpus_version}")
        return dg.RunRequest(
            run_key=f"shards-landed-{version}-{corpus_version}",
            partition_key=version,
            tags={**tags.run_tags("shards", version), tags.SHARDS: str(len(shard_keys))},
        )

    return shards_landed_sensor


SENSORS = [
    model_registry_sensor,
    corpus_folder_sensor,
    postgres_cdc_sensor,
    blocked_promotion_sensor,
    gates_after_build_sensor,
    promote_after_gates_sensor,
]
