"""The incremental refresh of every live version (dual write): sync the corpus once, then bring each live
version up to date; the served one is re-served when its gates pass. A change-capture position advances
only when every live version's index run succeeded, so a failed or interrupted run loses nothing."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.defs.assets.chunks import chunks
from embedding_assets.defs.assets.corpus import corpus
from embedding_assets.defs.assets.embeddings import embeddings
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.jobs import CORPUS_JOB, REFRESH_LIVE_JOB, REFRESH_SERVED_JOB, REFRESH_VERSION_JOB
from embedding_assets.defs.resources import (
    CorpusSourceResource,
    LanceDBResource,
    ModelRegistryResource,
    ServingResource,
)
from embedding_assets.defs.run_results import gate_run, materialization_metadata
from embedding_assets.serving.live import live_versions

Launch = Callable[[str, str | None], dg.ExecuteInProcessResult]
COUNTS = (md.CHUNKS_EMBEDDED, "chunks_reused", md.ROWS_UPSERTED, md.ROWS_DELETED)


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
    seconds: float = 0.0
    versions: list[dict[str, Any]] = field(default_factory=list)
    cdc: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v["indexed"] for v in self.versions)

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def refresh_live_versions(
    launch: Launch,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
    corpus_source: CorpusSourceResource,
) -> RefreshReport:
    """One pass: `launch(job, partition)` runs each step and returns its result."""
    started = time.perf_counter()
    synced = materialization_metadata(launch(CORPUS_JOB, None), corpus)
    report = RefreshReport(synced[md.DOCS_ADDED], synced[md.DOCS_CHANGED], synced[md.DOCS_DELETED])
    pointer = serving.pointer()
    for live in live_versions(lancedb.connect(), pointer, model_registry.load(), serving.retention):
        job_name = REFRESH_SERVED_JOB if live.role == "served" else REFRESH_VERSION_JOB
        version_started = time.perf_counter()
        result = launch(job_name, live.id)
        chunked, embedded, indexed = (
            materialization_metadata(result, a) for a in (chunks, embeddings, index)
        )
        run = gate_run(live.id, result, time.perf_counter() - version_started, pointer)
        written, encoded = chunked.get(md.CHUNKS_WRITTEN, 0), embedded.get(md.CHUNKS_EMBEDDED, 0)
        entry = {
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
        report.versions.append(entry)
        for key in COUNTS:
            setattr(report, key, getattr(report, key) + entry[key])
    end_lsn = synced.get(md.CDC_END_LSN)
    if end_lsn:
        report.cdc = {"end_lsn": end_lsn, "advanced": report.ok}
        if report.ok:
            corpus_source.advance(end_lsn)
    report.seconds = time.perf_counter() - started
    return report


@dg.op(description="Sync the corpus, then refresh every live version; fails if one could not be indexed.")
def refresh_live(
    context: dg.OpExecutionContext,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
    corpus_source: CorpusSourceResource,
) -> dict:
    """Runs the corpus and per-version jobs of this code location one after another, in process."""

    def launch(job_name: str, version_id: str | None) -> dg.ExecuteInProcessResult:
        job = context.repository_def.get_job(job_name)
        return job.execute_in_process(
            instance=context.instance,
            partition_key=version_id,
            raise_on_error=False,
            tags={"embedding_assets/parent_run": context.run_id},
        )

    report = refresh_live_versions(launch, lancedb, model_registry, serving, corpus_source)
    summary = report.to_json()
    context.log.info(f"refresh: {summary}")
    if not report.ok:
        raise dg.Failure(description="a live version was not indexed", metadata={"report": summary})
    return summary


@dg.job(name=REFRESH_LIVE_JOB, description="Incremental refresh of every live version (dual write).")
def refresh_live_job():
    refresh_live()
