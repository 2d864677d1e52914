"""The Definitions: assets, checks, jobs, schedules, sensors and the resources every entry point uses.

Deployment choices are read here, once, from the environment (`dg.EnvVar`): where the data lives, which
registry pins the models, where documents come from, the PostgreSQL server (password kept as an EnvVar,
never resolved into config), how LanceDB reaches an s3:// URI (secret key kept the same way), and the
serving policies. The CLI, the runner, evaluation and the gates all take their resources from `defs`.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from embedding_assets import locations
from embedding_assets.defs.assets.chunks import chunks
from embedding_assets.defs.assets.corpus import corpus
from embedding_assets.defs.assets.embeddings import embeddings
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.assets.model_weights import model_weights
from embedding_assets.defs.assets.serving import serving_index
from embedding_assets.defs.assets.shards import build_shard_vectors
from embedding_assets.defs.checks.freshness import freshness_policy, served_freshness
from embedding_assets.defs.checks.gates import index_gates
from embedding_assets.defs.jobs import JOBS, build_backfill_shards_job
from embedding_assets.defs.maintenance import optimize_after_refresh_sensor, optimize_index_job
from embedding_assets.defs.refresh import REFRESH_SENSORS
from embedding_assets.defs.resources import (
    CorpusSourceResource,
    GoldenSetResource,
    LanceDBResource,
    ModelRegistryResource,
    PostgresResource,
    S3StorageResource,
    ServingResource,
)
from embedding_assets.defs.schedules import build_schedules
from embedding_assets.defs.sensors import SENSORS, build_shards_landed_sensor
from embedding_assets.memory import cap_malloc_arenas

DEFAULT_SHARDS = 4


def _choice(name: str, default: str) -> str:
    """A deployment choice: the environment variable `name` if set, else the embedded default."""
    return dg.EnvVar(name).get_value(default) or default


def _secret(name: str) -> str:
    """A secret stays an EnvVar (resolved only inside a run, never written to run config); unset is ''."""
    return dg.EnvVar(name) if dg.EnvVar(name).get_value() else ""


def _flag(name: str) -> bool:
    """A yes/no deployment choice: true, 1, yes or on (any case) mean yes; unset means no."""
    return _choice(name, "").strip().lower() in {"true", "1", "yes", "on"}


def _s3_storage() -> S3StorageResource:
    """How LanceDB reaches an s3:// URI; unset variables leave the object store's own defaults."""
    return S3StorageResource(
        endpoint=_choice("EMBEDDING_ASSETS_S3_ENDPOINT", ""),
        region=_choice("EMBEDDING_ASSETS_S3_REGION", ""),
        access_key_id=_choice("EMBEDDING_ASSETS_S3_ACCESS_KEY_ID", ""),
        secret_access_key=_secret("EMBEDDING_ASSETS_S3_SECRET_ACCESS_KEY"),
        allow_http=_flag("EMBEDDING_ASSETS_S3_ALLOW_HTTP"),
    )


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Every resource, configured from the environment with the embedded defaults."""
    data_dir = Path(_choice("EMBEDDING_ASSETS_DATA", str(locations.DEFAULT_DATA_DIR)))
    source_kind = _choice("EMBEDDING_ASSETS_SOURCE_KIND", "folder")
    source_path = _choice("EMBEDDING_ASSETS_SOURCE_PATH", str(locations.corpus_dir(data_dir)))
    # A BEIR source brings its own judged queries; otherwise the shipped golden set.
    golden = source_path if source_kind == "beir" else str(locations.SHIPPED_GOLDEN_DIR)
    postgres = PostgresResource(
        host=_choice("EMBEDDING_ASSETS_PG_HOST", _choice("PGHOST", "")),
        port=int(_choice("EMBEDDING_ASSETS_PG_PORT", _choice("PGPORT", "5432"))),
        user=_choice("EMBEDDING_ASSETS_PG_USER", _choice("PGUSER", "")),
        password=_secret("EMBEDDING_ASSETS_PG_PASSWORD") or _secret("PGPASSWORD"),
        dbname=_choice("EMBEDDING_ASSETS_PG_DB", _choice("PGDATABASE", "")),
        table=_choice("EMBEDDING_ASSETS_PG_TABLE", PostgresResource.model_fields["table"].default),
        slot=_choice("EMBEDDING_ASSETS_PG_SLOT", PostgresResource.model_fields["slot"].default),
    )
    return {
        "lancedb": LanceDBResource(
            uri=_choice("EMBEDDING_ASSETS_LANCEDB_URI", str(locations.lancedb_dir(data_dir))),
            s3=_s3_storage(),
        ),
        "model_registry": ModelRegistryResource(
            path=_choice("EMBEDDING_ASSETS_REGISTRY", str(locations.SHIPPED_REGISTRY)),
            models_dir=str(locations.models_dir(data_dir)),
        ),
        "corpus_source": CorpusSourceResource(kind=source_kind, path=source_path, postgres=postgres),
        "serving": ServingResource(
            folder=str(locations.serving_dir(data_dir)),
            retention_hours=float(_choice("EMBEDDING_ASSETS_RETENTION_HOURS", "168")),
            freshness_slo_minutes=float(_choice("EMBEDDING_ASSETS_FRESHNESS_SLO_MINUTES", "15")),
        ),
        "golden_set": GoldenSetResource(
            path=_choice("EMBEDDING_ASSETS_GOLDEN_PATH", golden),
            scratch_dir=str(locations.scratch_dir(data_dir)),
        ),
    }


def build_definitions(resources: dict[str, dg.ConfigurableResource] | None = None) -> dg.Definitions:
    """The project's Definitions with `resources` (default: from the environment)."""
    resources = resources or build_resources()
    # How many corpus shards a sharded backfill fans out to; a document's shard hashes its id.
    shard_vectors = build_shard_vectors(int(_choice("EMBEDDING_ASSETS_CORPUS_SHARDS", str(DEFAULT_SHARDS))))
    backfill_shards_job = build_backfill_shards_job(shard_vectors)
    production = _choice("EMBEDDING_ASSETS_ENV", "local") == "production"
    cap_malloc_arenas()  # every process that runs steps loads these Definitions before its first step
    ingest, indexed = corpus, index
    if production:  # the SLO assumes the refresh schedule runs, as it does only in production
        policy = freshness_policy(resources["serving"].freshness_slo)
        with_policy = lambda spec: spec.replace_attributes(freshness_policy=policy)  # noqa: E731
        ingest, indexed = (a.map_asset_specs(with_policy) for a in (corpus, index))
    return dg.Definitions(
        assets=[ingest, model_weights, shard_vectors, chunks, embeddings, indexed, serving_index],
        asset_checks=[index_gates, served_freshness],
        jobs=[*JOBS, backfill_shards_job, optimize_index_job],
        schedules=build_schedules(
            refresh_cron=_choice("EMBEDDING_ASSETS_REFRESH_CRON", "*/15 * * * *"), running=production
        ),
        sensors=[
            *SENSORS,
            build_shards_landed_sensor(backfill_shards_job),
            *REFRESH_SENSORS,
            optimize_after_refresh_sensor,
        ],
        resources=resources,
        # Steps of one version run share a loaded model: in one process on 2 cores, not one process per
        # step. Scale out across versions and shards with runs (the queue), or swap in the k8s executor.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
