"""The index asset: one LanceDB table per model version, every row with its vector and provenance."""

import time
from datetime import UTC, datetime

import dagster as dg

from embedding_assets import settings
from embedding_assets.assets.embeddings import embeddings
from embedding_assets.freshness import freshness_policy, indexing_lag
from embedding_assets.gates.sentinels import ensure_sentinels
from embedding_assets.partitions import model_versions
from embedding_assets.pipeline.index import sync_index
from embedding_assets.resources import LanceDBResource, ModelRegistryResource


@dg.asset(
    group_name="index",
    partitions_def=model_versions,
    deps=[embeddings],
    kinds={"lancedb"},
    freshness_policy=freshness_policy(),
)
def index(
    context: dg.AssetExecutionContext, lancedb: LanceDBResource, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    """Per chunk: vector plus provenance (doc, checksum, chunk hash, fingerprint, config hash, times).

    Metadata includes the lag from source change to indexed for the documents this run wrote."""
    version = model_registry.version(context.partition_key)
    started = time.perf_counter()
    db = lancedb.connect()
    sync = sync_index(db, version)
    lag = indexing_lag(db, sync.docs_written, datetime.now(UTC))
    sentinels, created = ensure_sentinels(db, version)
    if created:
        context.log.info(f"stored {sentinels} sentinel chunks with their vectors for {version.id}")
    return dg.MaterializeResult(
        metadata={
            "model_version": version.id,
            "model_fingerprint": version.pinned_fingerprint(),
            "pipeline_config_hash": version.pipeline_config_hash(),
            "table": settings.index_table(version.id),
            "rows": sync.rows_total,
            "documents": sync.documents,
            "rows_upserted": sync.rows_upserted,
            "rows_deleted": sync.rows_deleted,
            "seconds": round(time.perf_counter() - started, 2),
            "lance_table_version": sync.table_version,
            "sentinels": sentinels,
            "docs_indexed": len(sync.docs_written),
            "lag_p50_seconds": lag["p50"],
            "lag_p99_seconds": lag["p99"],
            "lag_max_seconds": lag["max"],
        }
    )
