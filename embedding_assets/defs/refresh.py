"""The incremental refresh of every live version (dual write): sync the corpus once, then bring each live
version up to date in a run of its own; the served one is re-served when its gates pass. A change-capture
position advances only when every live version's run of that batch succeeded, so a failed or interrupted
run loses nothing: the same changes come back.

In a deployment this is Dagster-native: the schedule and the sensors request a `sync_corpus` run; when it
succeeds, `refresh_live_versions_sensor` requests one run per live version (partition = version) through
the run queue; when the last of them succeeds, `change_capture_commit_sensor` advances the position. The
CLI's `refresh` runs the same plan in process, one step after another.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from embedding_assets import faults
from embedding_assets import metadata as md
from embedding_assets.defs import tags
from embedding_assets.defs.assets.chunks import chunks
from embedding_assets.defs.assets.corpus import corpus
from embedding_assets.defs.assets.embeddings import embeddings
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.jobs import (
    CORPUS_JOB,
    OPTIMIZE_JOB,
    REFRESH_SERVED_JOB,
    REFRESH_VERSION_JOB,
    corpus_job,
    refresh_served_job,
    refresh_version_job,
)
from embedding_assets.defs.maintenance import COMPACTED, maintenance_due
from embedding_assets.defs.resources import (
    CorpusSourceResource,
    LanceDBResource,
    ModelRegistryResource,
    ServingResource,
)
from embedding_assets.defs.run_results import (
    RunOutcome,
    gate_run,
    materialization_metadata,
    observation_metadata,
)
from embedding_assets.defs.up_to_date import unchanged_since_gated
from embedding_assets.serving.live import LiveVersion, live_versions

Launch = Callable[[str, str | None], RunOutcome]
COUNTS = (md.CHUNKS_EMBEDDED, "chunks_reused", md.ROWS_UPSERTED, md.ROWS_DELETED)
MAINTENANCE_KEYS = ("index_action", "unindexed_rows_before", "served", "seconds", "summary", COMPACTED)


@dataclass
class RefreshReport:
    """One incremental pass: the corpus diff, and what each live version embedded, reused and wrote."""

    docs_added: int = 0
    docs_changed: int = 0
    docs_deleted: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    rows_upserted: int = 0
    rows_deleted: int = 0
    seconds: float = 0.0  # the refresh itself; index maintenance after it is counted apart
    versions: list[dict[str, Any]] = field(default_factory=list)
    cdc: dict[str, Any] = field(default_factory=dict)
    maintenance: list[dict[str, Any]] = field(default_factory=list)
    maintenance_seconds: float = 0.0
    recovered: list[str] = field(default_factory=list)  # what the serving pointer needed after a crash

    @property
    def ok(self) -> bool:
        return all(v["indexed"] for v in self.versions)

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def refresh_plan(
    lancedb: LanceDBResource, model_registry: ModelRegistryResource, serving: ServingResource
) -> list[tuple[str, LiveVersion]]:
    """(job, version) for every live version: the served one re-serves through `refresh_served`."""
    live = live_versions(lancedb.connect(), serving.pointer(), model_registry.load(), serving.retention)
    return [(REFRESH_SERVED_JOB if v.role == "served" else REFRESH_VERSION_JOB, v) for v in live]


def refresh_live_versions(
    launch: Launch,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
    corpus_source: CorpusSourceResource,
    instance: dg.DagsterInstance,
    *,
    force: bool = False,
) -> RefreshReport:
    """The whole pass in process: `launch(job, partition)` runs each step and returns its result; a
    version with nothing to do (`up_to_date`) is reported skipped, with the reason, unless `force`."""
    started = time.perf_counter()
    recovered = serving.pointer().recover()  # a move a crash cut short is finished before anything else
    synced = materialization_metadata(launch(CORPUS_JOB, None), corpus.key)
    faults.failpoint(faults.CORPUS_SYNCED)
    report = RefreshReport(synced[md.DOCS_ADDED], synced[md.DOCS_CHANGED], synced[md.DOCS_DELETED])
    report.recovered = recovered
    pointer = serving.pointer()
    for job_name, live in refresh_plan(lancedb, model_registry, serving):
        reason = None if force else skip_reason(instance, lancedb, model_registry, serving, live)
        if reason:
            report.versions.append(_skipped_entry(live, reason))
            continue
        version_started = time.perf_counter()
        result = launch(job_name, live.id)
        report.versions.append(
            _version_entry(
                live, result, gate_run(live.id, result, time.perf_counter() - version_started, pointer)
            )
        )
    for entry in report.versions:
        for key in COUNTS:
            setattr(report, key, getattr(report, key) + entry[key])
    end_lsn = synced.get(md.CDC_END_LSN)
    if end_lsn:
        report.cdc = {"end_lsn": end_lsn, "advanced": report.ok}
        if report.ok:
            faults.failpoint(faults.CDC_ADVANCING)
            corpus_source.advance(end_lsn)
    report.seconds = time.perf_counter() - started
    maintain_indexes(launch, lancedb, model_registry, report)
    return report


def maintain_indexes(
    launch: Launch, lancedb: LanceDBResource, model_registry: ModelRegistryResource, report: RefreshReport
) -> None:
    """After the refresh: an optimize_index run for each version it wrote that left rows outside its
    vector index or tables to compact (what optimize_after_refresh_sensor requests in a deployment)."""
    started = time.perf_counter()
    for entry in report.versions:
        if entry["indexed"] and maintenance_due(lancedb, model_registry, entry["id"]):
            outcome = launch(OPTIMIZE_JOB, entry["id"])
            done = observation_metadata(outcome, index.key)
            report.maintenance.append(
                {
                    "id": entry["id"],
                    "run_id": outcome.run_id,
                    "ok": outcome.success,
                    **{k: done.get(k) for k in MAINTENANCE_KEYS},
                    "errors": outcome.errors(),
                }
            )
    report.maintenance_seconds = time.perf_counter() - started


def skip_reason(
    instance: dg.DagsterInstance,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
    live: LiveVersion,
) -> str | None:
    """Why `live` needs no refresh run now (see `up_to_date`), or None."""
    version = model_registry.load().get(live.id)
    return unchanged_since_gated(instance, lancedb.connect(), version, live, serving.pointer())


def _skipped_entry(live: LiveVersion, reason: str) -> dict[str, Any]:
    return {
        "id": live.id,
        "role": live.role,
        "indexed": True,
        "gates_passed": True,
        "served": live.role == "served",
        "skipped": reason,
        **dict.fromkeys(COUNTS, 0),
        **dict.fromkeys(md.LAG_SECONDS.values()),
        "errors": [],
    }


def _version_entry(live: LiveVersion, result: RunOutcome, run) -> dict[str, Any]:
    chunked, embedded, indexed = (
        materialization_metadata(result, a.key) for a in (chunks, embeddings, index)
    )
    written, encoded = chunked.get(md.CHUNKS_WRITTEN, 0), embedded.get(md.CHUNKS_EMBEDDED, 0)
    return {
        "id": live.id,
        "role": live.role,
        "indexed": bool(indexed),
        "gates_passed": run.gates_passed,
        "served": run.promoted,
        md.CHUNKS_EMBEDDED: encoded,
        "chunks_reused": max(written - encoded, 0),
        md.ROWS_UPSERTED: indexed.get(md.ROWS_UPSERTED, 0),
        md.ROWS_DELETED: indexed.get(md.ROWS_DELETED, 0),
        **{key: indexed.get(key) for key in md.LAG_SECONDS.values()},
        "errors": run.errors,
    }


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[corpus_job],
    request_jobs=[refresh_version_job, refresh_served_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a corpus sync succeeds, requests one refresh run per live version (served, previous "
    "in retention, candidates), each through the run queue with its version as partition.",
)
def refresh_live_versions_sensor(
    context: dg.RunStatusSensorContext,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
    corpus_source: CorpusSourceResource,
):
    sync = context.dagster_run
    if sync.tags.get(tags.CLI_DRIVEN):
        return dg.SkipReason(
            f"sync {sync.run_id[:8]} belongs to an in-process refresh that runs its own steps"
        )
    plan = refresh_plan(lancedb, model_registry, serving)
    if not plan:
        return dg.SkipReason("no live version: nothing is served and no candidate is built")
    synced = [
        e.asset_materialization.metadata
        for e in context.instance.all_logs(sync.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if e.asset_materialization and e.asset_materialization.asset_key == corpus.key
    ]
    end_lsn = synced[-1][md.CDC_END_LSN].value if synced and md.CDC_END_LSN in synced[-1] else ""
    skipped = {
        live.id: skip_reason(context.instance, lancedb, model_registry, serving, live) for _, live in plan
    }
    plan = [(job_name, live) for job_name, live in plan if not skipped[live.id]]
    if not plan:
        if end_lsn:  # every version already indexes all the batch read: nothing to wait for
            corpus_source.advance(end_lsn)
        return dg.SkipReason("; ".join(f"{v}: {reason}" for v, reason in skipped.items()))
    versions = ",".join(live.id for _, live in plan)
    return [
        dg.RunRequest(
            run_key=f"{sync.run_id}:{live.id}",
            job_name=job_name,
            partition_key=live.id,
            tags={
                **tags.run_tags(sync.tags.get(tags.TRIGGER, "refresh"), live.id),
                tags.REFRESH: "1",
                tags.BATCH: sync.run_id,
                tags.BATCH_VERSIONS: versions,
                tags.ROLE: live.role,
                tags.CDC_END_LSN: str(end_lsn or ""),
            },
        )
        for job_name, live in plan
    ]


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[refresh_version_job, refresh_served_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When every live version's run of a refresh batch has succeeded, advances the change-capture "
    "position to what that batch's corpus sync read; a failed run leaves it, so the changes are retried.",
)
def change_capture_commit_sensor(context: dg.RunStatusSensorContext, corpus_source: CorpusSourceResource):
    run = context.dagster_run
    batch = run.tags.get(tags.BATCH)
    if not batch:
        return dg.SkipReason(f"run {run.run_id[:8]} is not part of a refresh batch")
    wanted = set(run.tags.get(tags.BATCH_VERSIONS, "").split(","))
    runs = context.instance.get_runs(filters=dg.RunsFilter(tags={tags.BATCH: batch}))
    done = {r.tags.get(tags.VERSION) for r in runs if r.status == dg.DagsterRunStatus.SUCCESS}
    if not wanted <= done:
        return dg.SkipReason(f"batch {batch[:8]}: waiting for {sorted(wanted - done)}")
    end_lsn = run.tags.get(tags.CDC_END_LSN, "")
    if not end_lsn:
        return dg.SkipReason(
            f"batch {batch[:8]}: every version refreshed; no change-capture position to commit"
        )
    faults.failpoint(faults.CDC_ADVANCING)
    corpus_source.advance(end_lsn)
    context.log.info(f"batch {batch[:8]}: every live version indexed up to {end_lsn}; position advanced")
    return dg.SkipReason(f"batch {batch[:8]}: advanced the change-capture position to {end_lsn}")


REFRESH_SENSORS = [refresh_live_versions_sensor, change_capture_commit_sensor]
