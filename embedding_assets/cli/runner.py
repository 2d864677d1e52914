"""Run the project's Dagster jobs from a shell, in process, on the instance in DAGSTER_HOME (a local
SQLite one by default), with the resources of the Definitions: one wiring path for every entry point."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import dagster as dg

from embedding_assets import locations
from embedding_assets.defs.jobs import BUILD_INDEX_JOB, CHECK_JOB, MIGRATE_JOB, PROMOTE_JOB, ROLLBACK_JOB
from embedding_assets.defs.partitions import model_versions
from embedding_assets.defs.refresh import IN_PROCESS_TAG, REFRESH_TAG, RefreshReport, refresh_live_versions
from embedding_assets.defs.run_results import GateRun, gate_run
from embedding_assets.models.registry import ModelRegistry
from embedding_assets.wiring import project_definitions, wiring

LOCAL_INSTANCE_CONFIG = (
    "# Local instance: SQLite storage in this folder (Dagster's default).\ntelemetry:\n  enabled: false\n"
)


def dagster_instance() -> dg.DagsterInstance:
    """The instance in $DAGSTER_HOME; without one, a local SQLite instance under the project."""
    home = Path(os.environ.get("DAGSTER_HOME") or locations.DEFAULT_DAGSTER_HOME)
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(LOCAL_INSTANCE_CONFIG)
    return dg.DagsterInstance.get()


def sync_partitions(instance: dg.DagsterInstance, registry: ModelRegistry) -> list[str]:
    """Add a partition for every registered version the instance lacks; return the ones added."""
    known = set(instance.get_dynamic_partitions(model_versions.name))
    new = [v for v in registry.ids if v not in known]
    if new:
        instance.add_dynamic_partitions(model_versions.name, new)
    return new


def run_job(
    job_name: str,
    version_id: str | None,
    instance: dg.DagsterInstance | None = None,
    *,
    defs: dg.Definitions | None = None,
    ops_config: dict | None = None,
    raise_on_error: bool = True,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Execute `job_name` for one model-version partition (or none); raises on failure unless told not to.

    `defs` defaults to the project's Definitions (resources from the environment); tests pass their own.
    """
    defs = defs or project_definitions()
    instance = instance or dagster_instance()
    if version_id is not None:
        registry = wiring(defs).model_registry.load()
        registry.get(version_id)  # clear error for an unknown or moving version before Dagster starts
        sync_partitions(instance, registry)
    run_config = {
        "loggers": {
            "console": {"config": {"log_level": os.environ.get("EMBEDDING_ASSETS_LOG_LEVEL", "INFO")}}
        },
        **(ops_config or {}),
    }
    return defs.resolve_job_def(job_name).execute_in_process(
        instance=instance,
        run_config=run_config,
        raise_on_error=raise_on_error,
        partition_key=version_id,
        tags=tags,
    )


def _gated_run(job_name: str, version_id: str, ops_config: dict | None = None, **job: Any) -> GateRun:
    started = time.perf_counter()
    result = run_job(job_name, version_id, ops_config=ops_config, raise_on_error=False, **job)
    pointer = wiring(job.get("defs")).serving.pointer()
    return gate_run(version_id, result, time.perf_counter() - started, pointer)


def migrate(
    version_id: str, overrides: dict[str, float] | None = None, reason: str = "", **job: Any
) -> GateRun:
    """Build `version_id` beside serving, gate it, and promote it only if every gate passes.

    `job` takes run_job's `defs` and `instance`, for running against other resources.
    """
    from embedding_assets.defs.checks.gates import override_run_config

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


def refresh(**job: Any) -> RefreshReport:
    """Sync the corpus once, then bring every live version up to date (dual write): the refresh plan the
    sensors follow in a deployment, with each step a run of its own on this instance, one after another."""
    wired = wiring(job.get("defs"))

    def launch(job_name: str, version_id: str | None) -> dg.ExecuteInProcessResult:
        tags = {REFRESH_TAG: "1", IN_PROCESS_TAG: "1", "embedding_assets/trigger": "cli"}
        return run_job(job_name, version_id, raise_on_error=False, tags=tags, **job)

    return refresh_live_versions(
        launch, wired.lancedb, wired.model_registry, wired.serving, wired.corpus_source
    )
