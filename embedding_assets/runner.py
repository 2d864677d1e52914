"""Run the Dagster jobs from a shell, on the instance in DAGSTER_HOME (a local SQLite one by default)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from embedding_assets import settings
from embedding_assets.gates.verdict import INDEX_KEY, check_summary
from embedding_assets.jobs import (
    BUILD_INDEX_JOB,
    CHECK_JOB,
    CORPUS_JOB,
    MIGRATE_JOB,
    PROMOTE_JOB,
    REFRESH_SERVED_JOB,
    REFRESH_VERSION_JOB,
    ROLLBACK_JOB,
)
from embedding_assets.partitions import model_versions
from embedding_assets.registry import ModelRegistry, load_registry
from embedding_assets.serving import ServingPointer

DEFAULT_DAGSTER_HOME = settings.PROJECT_ROOT / ".dagster_home"
LOCAL_INSTANCE_CONFIG = (
    "# Local instance: SQLite storage in this folder (Dagster's default).\ntelemetry:\n  enabled: false\n"
)


def dagster_instance() -> dg.DagsterInstance:
    """The instance in $DAGSTER_HOME; without one, a local SQLite instance under the project."""
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(DEFAULT_DAGSTER_HOME)
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(LOCAL_INSTANCE_CONFIG)
    return dg.DagsterInstance.get()


def sync_partitions(instance: dg.DagsterInstance, registry: ModelRegistry | None = None) -> list[str]:
    """Add a partition for every registered version the instance lacks; return the ones added."""
    known = set(instance.get_dynamic_partitions(model_versions.name))
    new = [v for v in (registry or load_registry()).ids if v not in known]
    if new:
        instance.add_dynamic_partitions(model_versions.name, new)
    return new


def project_definitions() -> dg.Definitions:
    from embedding_assets.definitions import defs

    return defs


def serving_pointer(defs: dg.Definitions) -> ServingPointer:
    return defs.resources["serving"].pointer()


def run_job(
    job_name: str,
    version_id: str | None,
    instance: dg.DagsterInstance | None = None,
    *,
    defs: dg.Definitions | None = None,
    ops_config: dict | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """Execute `job_name` for one model-version partition (or none); raises on failure unless told not to.

    `defs` defaults to the project's Definitions (resources from the environment); tests pass their own.
    """
    defs = defs or project_definitions()
    instance = instance or dagster_instance()
    partition: dict[str, Any] = {}
    if version_id is not None:
        registry = defs.resources["model_registry"].load()
        registry.get(version_id)  # clear error for an unknown or moving version before Dagster starts
        sync_partitions(instance, registry)
        # A checks-only job has no partitions_def of its own, so it takes the partition as a tag.
        partition = (
            {"tags": {"dagster/partition": version_id}}
            if job_name == CHECK_JOB
            else {"partition_key": version_id}
        )
    run_config = {
        "loggers": {
            "console": {"config": {"log_level": os.environ.get("EMBEDDING_ASSETS_LOG_LEVEL", "INFO")}}
        },
        **(ops_config or {}),
    }
    return defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=raise_on_error, **partition
    )


@dataclass
class GateRun:
    """What a run that evaluates gates concluded: the checks, whether serving moved, and timings."""

    version: str
    promoted: bool
    served_version: str | None
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def gates_passed(self) -> bool:
        return not self.errors and all(c["passed"] or c["severity"] != "ERROR" for c in self.checks)

    @property
    def gate_seconds(self) -> float:
        return round(sum(float(c["metadata"].get("seconds", 0)) for c in self.checks), 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "version": self.version,
            "served_version": self.served_version,
            "checks": [{k: c[k] for k in ("name", "passed", "severity", "metadata")} for c in self.checks],
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "gate_seconds": self.gate_seconds,
        }


def _gate_run(
    version_id: str, result: dg.ExecuteInProcessResult, started: float, pointer: ServingPointer
) -> GateRun:
    promoted = any(
        e.asset_key.to_user_string() == "serving_index" for e in result.get_asset_materialization_events()
    )
    checks = [check_summary(e) for e in result.get_asset_check_evaluations() if e.asset_key == INDEX_KEY]
    errors = [
        f"{e.step_key}: {e.event_specific_data.error.message.strip()}"
        for e in result.get_step_failure_events()
        if "DagsterAssetCheckFailedError" not in (e.event_specific_data.error.cls_name or "")
    ]
    served = pointer.current()
    return GateRun(
        version_id,
        promoted,
        served.version if served else None,
        checks,
        errors,
        time.perf_counter() - started,
    )


def _gated_run(job_name: str, version_id: str, ops_config: dict | None = None, **job: Any) -> GateRun:
    started = time.perf_counter()
    result = run_job(job_name, version_id, ops_config=ops_config, raise_on_error=False, **job)
    return _gate_run(version_id, result, started, serving_pointer(job.get("defs") or project_definitions()))


def migrate(
    version_id: str, overrides: dict[str, float] | None = None, reason: str = "", **job: Any
) -> GateRun:
    """Build `version_id` beside serving, gate it, and promote it only if every gate passes.

    `job` takes run_job's `defs` and `instance`, for running against other resources.
    """
    from embedding_assets.checks import override_run_config

    ops_config = override_run_config(overrides, reason) if overrides else None
    return _gated_run(MIGRATE_JOB, version_id, ops_config, **job)


def run_gates(version_id: str, **job: Any) -> GateRun:
    """Re-run every gate on the version's index as it is now; serving does not move."""
    return _gated_run(CHECK_JOB, version_id, **job)


def build(version_id: str, **job: Any) -> GateRun:
    """Materialize corpus → chunks → embeddings → index for a version and run its gates; serving untouched."""
    return _gated_run(BUILD_INDEX_JOB, version_id, **job)


def rollback(**job: Any) -> dict[str, Any]:
    """Serve the state the current one replaced, through the rollback job so Dagster records it."""
    return run_job(ROLLBACK_JOB, None, **job).output_for_node("move_pointer_back")


def promote_version(version_id: str, **job: Any) -> dg.ExecuteInProcessResult:
    """Serve a built version, if its gates passed on its latest index build."""
    return run_job(PROMOTE_JOB, version_id, **job)


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


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    return {}


def refresh(**job: Any) -> RefreshReport:
    """Sync the corpus once, then bring every live version up to date (dual write); the served one is
    re-served when its gates pass. A change-capture position advances only when every live version's
    index run succeeded, so a failed or interrupted run loses nothing: the same changes come back."""
    from embedding_assets.live import live_versions

    started = time.perf_counter()
    defs = job.get("defs") or project_definitions()
    corpus = _metadata(run_job(CORPUS_JOB, None, **job), "corpus")
    report = RefreshReport(corpus["docs_added"], corpus["docs_changed"], corpus["docs_deleted"])
    db = defs.resources["lancedb"].connect()
    registry = defs.resources["model_registry"].load()
    for live in live_versions(db, serving_pointer(defs), registry):
        job_name = REFRESH_SERVED_JOB if live.role == "served" else REFRESH_VERSION_JOB
        result = run_job(job_name, live.id, raise_on_error=False, **job)
        chunks, embedded, index = (_metadata(result, a) for a in ("chunks", "embeddings", "index"))
        run = _gate_run(live.id, result, started, serving_pointer(defs))
        entry = {
            "id": live.id,
            "role": live.role,
            "indexed": bool(index),
            "gates_passed": run.gates_passed,
            "served": run.promoted,
            "chunks_embedded": embedded.get("chunks_embedded", 0),
            "chunks_reused": max(chunks.get("chunks_written", 0) - embedded.get("chunks_embedded", 0), 0),
            "rows_upserted": index.get("rows_upserted", 0),
            "rows_deleted": index.get("rows_deleted", 0),
            "lag_p50_seconds": index.get("lag_p50_seconds"),
            "lag_p99_seconds": index.get("lag_p99_seconds"),
            "lag_max_seconds": index.get("lag_max_seconds"),
            "errors": run.errors,
        }
        report.versions.append(entry)
        for key in ("chunks_embedded", "chunks_reused", "rows_upserted", "rows_deleted"):
            setattr(report, key, getattr(report, key) + entry[key])
    end_lsn = corpus.get("cdc_end_lsn")
    if end_lsn:
        report.cdc = {"end_lsn": end_lsn, "advanced": report.ok}
        if report.ok:
            defs.resources["corpus_source"].advance(end_lsn)
    report.seconds = time.perf_counter() - started
    return report
