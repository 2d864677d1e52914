"""The embeddings asset: the content-addressed vector cache of each model version."""

import dagster as dg

from embedding_assets.assets.chunks import chunks
from embedding_assets.embedders import embedder_for
from embedding_assets.partitions import model_versions
from embedding_assets.pipeline.embeddings import sync_embeddings
from embedding_assets.resources import LanceDBResource, ModelRegistryResource


@dg.asset(group_name="index", partitions_def=model_versions, deps=[chunks], kinds={"lancedb", "pytorch"})
def embeddings(
    context: dg.AssetExecutionContext, lancedb: LanceDBResource, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    """Vectors keyed by (model encoder, chunk_hash): a text is encoded once per model, ever."""
    version = model_registry.version(context.partition_key)
    sync = sync_embeddings(lancedb.connect(), embedder_for(version))
    context.log.info(f"encoded {sync.encoded} chunks, reused {sync.reused} from the cache")
    return dg.MaterializeResult(
        metadata={
            "model_version": version.id,
            "model_fingerprint": version.pinned_fingerprint(),
            "chunks": sync.chunks,
            "chunks_embedded": sync.encoded,
            "chunks_reused": sync.reused,
            "cache_rows": sync.cached_total,
            "encode_seconds": round(sync.seconds_encoding, 2),
            "chunks_per_second": round(sync.chunks_per_second, 1),
            "lance_table_version": sync.table_version,
        }
    )
