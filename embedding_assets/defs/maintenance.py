"""Index maintenance after a refresh, in a run of its own: `optimize_index` folds a version's unindexed
rows into its vector index and, when that version serves the table version it started from, moves the
pointer to the maintained table version (same rows; see serving/maintenance.py); then it measures the
changed index's ANN recall as the ann_recall check's evaluation, which the next refresh's check reports
again instead of measuring on the refresh's clock; and it compacts the other tables a refresh looks keys
up in (`index.compaction`). After a refresh run that a sensor or schedule started,
`optimize_after_refresh_sensor` requests it; the CLI's `refresh` runs it itself. A run per version
partition, so the queue keeps it apart from that version's other writers."""

import dagster as dg

from embedding_assets.defs import pools, tags
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.assets.serving import serving_index, serving_overview
from embedding_assets.defs.checks.gates import ann_recall_after_maintenance
from embedding_assets.defs.hooks import STEP_HOOKS
from embedding_assets.defs.jobs import OPTIMIZE_JOB, refresh_served_job, refresh_version_job
from embedding_assets.defs.partitions import model_versions
from embedding_assets.defs.resources import (
    GoldenSetResource,
    LanceDBResource,
    ModelRegistryResource,
    ServingResource,
)
from embedding_assets.defs.sensors import next_step
from embedding_assets.defs.tags import LAUNCHPAD
from embedding_assets.index import ann, compaction, store, tables
from embedding_assets.serving.maintenance import MAINTAIN_ACTION, maintain
from embedding_assets.serving.overview import move_summary

COMPACTED = "compacted"  # metadata: the pipeline tables compacted beside the index (`index.compaction`)


@dg.op(
    description="Fold the version's unindexed rows into its vector index (a delta segment on the trained "
    "partitions, or a new training when they no longer fit the table); serve the maintained table version "
    "if it served the one this started from; measure the new index's recall (the ann_recall check); "
    "compact the documents, chunks and cache tables a refresh looks keys up in.",
    pool=pools.SERVING_POINTER,
)
def optimize_index_table(
    context: dg.OpExecutionContext,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
    golden_set: GoldenSetResource,
) -> dict:
    registry = model_registry.load()
    version = registry.get(context.partition_key)
    db = lancedb.connect()
    pointer = serving.pointer()
    before = pointer.current()
    done = maintain(db, version, pointer, run_id=context.run_id)
    context.log.info(done.summary)
    compacted = compaction.compact_pipeline_tables(db, version)
    if compacted:
        context.log.info(
            "compacted "
            + ", ".join(f"{c.table} ({c.small_fragments_before} small fragments)" for c in compacted)
        )
    metadata = {
        **done.to_metadata(),
        tags.VERSION: version.id,
        COMPACTED: [c.to_metadata() for c in compacted],
    }
    context.log_event(
        dg.AssetObservation(
            asset_key=index.key, partition=version.id, description=done.summary, metadata=metadata
        )
    )
    changed = done.table_version_after != done.table_version_before
    if done.served and changed:
        now = pointer.require_current()
        move = move_summary(MAINTAIN_ACTION, before, now)
        context.log_event(
            dg.AssetMaterialization(
                asset_key=serving_index.key,
                description=move,
                metadata=serving_overview(db, pointer, registry, serving.retention, now, move),
            )
        )
    if changed and done.index_action != "exact":  # after the move is recorded, whatever this finds
        context.log_event(
            ann_recall_after_maintenance(context.instance, db, registry, version, pointer, golden_set)
        )
    return metadata


@dg.job(
    name=OPTIMIZE_JOB,
    partitions_def=model_versions,
    tags=LAUNCHPAD,
    hooks=STEP_HOOKS,
    description="Fold one version's unindexed rows into its vector index, off the refresh path; serving "
    "follows to the maintained table version (the same rows) when it served the one maintained.",
)
def optimize_index_job():
    optimize_index_table()


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[refresh_served_job, refresh_version_job],
    request_job=optimize_index_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a version's refresh run succeeded and left rows outside its vector index or small "
    "fragments in its tables, requests the optimize_index run that folds them in (and moves serving to the "
    "maintained table version) and compacts them.",
)
def optimize_after_refresh_sensor(
    context: dg.RunStatusSensorContext, lancedb: LanceDBResource, model_registry: ModelRegistryResource
):
    run = context.dagster_run
    version = run.tags.get(tags.PARTITION)
    if (
        version
        and not run.tags.get(tags.CLI_DRIVEN)
        and not maintenance_due(lancedb, model_registry, version)
    ):
        return dg.SkipReason(
            f"{version}: every row is in its vector index (or none has one); no table to compact"
        )
    return next_step(run, "optimize", "refresh", {})


def maintenance_due(lancedb: LanceDBResource, model_registry: ModelRegistryResource, version_id: str) -> bool:
    """Whether `version_id`'s index table has rows outside its vector index, or a table its refreshes
    look keys up in has small fragments to compact."""
    if unindexed_rows(lancedb, version_id):
        return True
    return bool(compaction.fragmented(lancedb.connect(), model_registry.version(version_id)))


def unindexed_rows(lancedb: LanceDBResource, version_id: str) -> int:
    """Rows of `version_id`'s table outside its vector index (0 without an index: searched exactly)."""
    db = lancedb.connect()
    name = tables.index_table(version_id)
    if name not in store.table_names(db):
        return 0
    return ann.unindexed_rows(db.open_table(name))
