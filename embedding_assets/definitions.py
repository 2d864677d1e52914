"""The Definitions: assets, resources, jobs and sensors of embedding-assets."""

import dagster as dg

from embedding_assets import settings
from embedding_assets.assets.chunks import chunks
from embedding_assets.assets.corpus import corpus
from embedding_assets.assets.embeddings import embeddings
from embedding_assets.assets.index import index
from embedding_assets.assets.model_weights import model_weights
from embedding_assets.assets.serving import serving_index
from embedding_assets.checks import index_checks
from embedding_assets.freshness_checks import (
    served_freshness,
)
from embedding_assets.jobs import (
    build_index_job,
    check_index_job,
    corpus_job,
    migrate_job,
    promote_job,
    refresh_live_job,
    refresh_served_job,
    refresh_version_job,
    rollback_job,
)
from embedding_assets.resources import (
    CorpusSourceResource,
    GoldenSetResource,
    LanceDBResource,
    ModelRegistryResource,
    ServingResource,
)
from embedding_assets.schedules import refresh_schedule, served_freshness_job, served_freshness_schedule
from embedding_assets.sensors import corpus_folder_sensor, model_registry_sensor, postgres_cdc_sensor


def _env(name: str, default: str) -> str:
    """A deployment choice from the environment, with the embedded default."""
    import os

    return os.environ.get(name, default)


def _golden_path() -> str:
    """Judged queries: set explicitly, else a BEIR source's own queries, else the shipped golden set."""
    if _env("EMBEDDING_ASSETS_SOURCE_KIND", "folder") == "beir":
        return _env("EMBEDDING_ASSETS_GOLDEN_PATH", _env("EMBEDDING_ASSETS_SOURCE_PATH", ""))
    return str(settings.GOLDEN_DIR)


ASSETS = [corpus, model_weights, chunks, embeddings, index, serving_index]
ASSET_CHECKS = [*index_checks, served_freshness]
JOBS = [
    build_index_job,
    promote_job,
    migrate_job,
    check_index_job,
    rollback_job,
    corpus_job,
    refresh_version_job,
    refresh_served_job,
    refresh_live_job,
    served_freshness_job,
]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=JOBS,
    schedules=[refresh_schedule, served_freshness_schedule],
    sensors=[model_registry_sensor, corpus_folder_sensor, postgres_cdc_sensor],
    resources={
        "lancedb": LanceDBResource(uri=_env("EMBEDDING_ASSETS_LANCEDB_URI", str(settings.LANCEDB_DIR))),
        "model_registry": ModelRegistryResource(path=str(settings.REGISTRY_PATH)),
        "corpus_source": CorpusSourceResource(
            kind=_env("EMBEDDING_ASSETS_SOURCE_KIND", "folder"),
            path=_env("EMBEDDING_ASSETS_SOURCE_PATH", str(settings.CORPUS_DIR)),
        ),
        "serving": ServingResource(folder=str(settings.SERVING_DIR)),
        "golden_set": GoldenSetResource(path=_golden_path()),
    },
)
