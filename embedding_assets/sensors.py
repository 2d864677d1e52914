"""Sensors: partitions follow the registry; corpus changes (folder scan, PostgreSQL decoding) start a
refresh of every live version."""

import hashlib

import dagster as dg

from embedding_assets.jobs import REFRESH_LIVE_JOB
from embedding_assets.partitions import model_versions
from embedding_assets.pipeline.corpus import read_manifest
from embedding_assets.resources import CorpusSourceResource, LanceDBResource, ModelRegistryResource
from embedding_assets.sources import FolderSource

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED]


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def model_registry_sensor(context: dg.SensorEvaluationContext, model_registry: ModelRegistryResource):
    """Add a partition for every version pinned in the registry that Dagster does not know yet."""
    known = set(context.instance.get_dynamic_partitions(model_versions.name))
    new = [v for v in model_registry.load().ids if v not in known]
    if not new:
        return dg.SkipReason("every registered model version has a partition")
    return dg.SensorResult(dynamic_partitions_requests=[model_versions.build_add_request(new)])


def _refresh_in_flight(context: dg.SensorEvaluationContext) -> bool:
    runs = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=REFRESH_LIVE_JOB, statuses=IN_FLIGHT), limit=1
    )
    return bool(runs)


@dg.sensor(job_name=REFRESH_LIVE_JOB, minimum_interval_seconds=30)
def corpus_folder_sensor(
    context: dg.SensorEvaluationContext, corpus_source: CorpusSourceResource, lancedb: LanceDBResource
):
    """A stat of every corpus file against the manifest (size, mtime); files are read only by the run."""
    if corpus_source.kind != "folder":
        return dg.SkipReason(f"the corpus source is {corpus_source.kind!r}, not a folder")
    scan = FolderSource(corpus_source.source().root).scan()
    manifest = read_manifest(lancedb.connect())
    changed = sorted(
        d for d, stat in scan.items() if (m := manifest.get(d)) is None or (m.size, m.mtime_ns) != stat
    )
    deleted = sorted(d for d in manifest if d not in scan)
    if not changed and not deleted:
        return dg.SkipReason(f"{len(scan)} files match the manifest")
    if _refresh_in_flight(context):
        return dg.SkipReason("a refresh is already running")
    digest = hashlib.sha256(repr([(d, scan.get(d)) for d in changed + deleted]).encode()).hexdigest()
    context.log.info(
        f"{len(changed)} new or modified files, {len(deleted)} deleted, e.g. {(changed + deleted)[:3]}"
    )
    return dg.RunRequest(run_key=f"folder-{digest[:16]}", tags={"embedding_assets/trigger": "folder"})


@dg.sensor(job_name=REFRESH_LIVE_JOB, minimum_interval_seconds=30)
def postgres_cdc_sensor(context: dg.SensorEvaluationContext, corpus_source: CorpusSourceResource):
    """Peek (never consume) the replication slot; pending changes request a refresh. The slot advances
    only when that refresh indexed them in every live version, so a failed run is retried next tick."""
    if corpus_source.kind != "postgres":
        return dg.SkipReason(f"the corpus source is {corpus_source.kind!r}, not postgres")
    source = corpus_source.source()
    batch = source.pending()
    if not batch.changes:
        if batch.end_lsn:  # WAL of other tables only: let the slot release it, nothing needs applying
            source.advance(batch.end_lsn)
        return dg.SkipReason(f"no pending changes on {source.uri}")
    if _refresh_in_flight(context):
        return dg.SkipReason("a refresh is already running")
    return dg.RunRequest(
        tags={"embedding_assets/trigger": "postgres", "embedding_assets/cdc_end_lsn": batch.end_lsn or ""}
    )
