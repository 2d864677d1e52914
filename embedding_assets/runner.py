"""Run the Dagster jobs from a shell, on the instance in DAGSTER_HOME (a local SQLite one by default)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from embedding_assets import settings
from embedding_assets.jobs import BUILD_INDEX_JOB, PROMOTE_JOB
from embedding_assets.partitions import model_versions
from embedding_assets.registry import ModelRegistry, load_registry

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


def run_job(
    job_name: str, version_id: str, instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """Execute `job_name` for one model-version partition; raises with Dagster's error on failure."""
    from embedding_assets.definitions import defs

    instance = instance or dagster_instance()
    registry = load_registry()
    registry.get(version_id)  # clear error for an unknown or moving version before Dagster starts
    sync_partitions(instance, registry)
    run_config = {
        "loggers": {
            "console": {"config": {"log_level": os.environ.get("EMBEDDING_ASSETS_LOG_LEVEL", "INFO")}}
        }
    }
    return defs.resolve_job_def(job_name).execute_in_process(
        partition_key=version_id, instance=instance, run_config=run_config
    )


def build_index(version_id: str, *, promote: bool = True) -> list[dg.ExecuteInProcessResult]:
    """Materialize corpus → chunks → embeddings → index for a version, then promote it unless told not to."""
    results = [run_job(BUILD_INDEX_JOB, version_id)]
    if promote:
        results.append(run_job(PROMOTE_JOB, version_id))
    return results
