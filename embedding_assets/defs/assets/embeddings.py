"""The embeddings asset: the content-addressed vector cache of each model version."""

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.defs.assets.chunks import chunks
from embedding_assets.defs.partitions import model_versions
from embedding_assets.defs.resources import LanceDBResource, ModelRegistryResource
from embedding_assets.index.embeddings import sync_embeddings
from embedding_assets.models.embedders import embedder_for


@dg.asset(group_name="index", partitions_def=model_versions, deps=[chunks], kinds={"lancedb", "pytorch"})
def embeddings(
    context: dg.AssetExecutionContext, lancedb: LanceDBResource, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    """Vectors keyed by (model encoder, chunk_hash): a text is encoded once per model, ever; what a
    sharded backfill (shard_vectors) already encoded is folded in."""
    version = model_registry.version(context.partition_key)
    sync = sync_embeddings(lancedb.connect(), embedder_for(version), log=context.log.info)
    context.log.info(
        f"encoded {sync.encoded} chunks, reused {sync.reused} from the cache, {sync.from_shards} from shards"
    )
    return dg.MaterializeResult(
        metadata={
            md.MODEL_VERSION: version.id,
            md.MODEL_FINGERPRINT: version.pinned_fingerprint(),
            "chunks": sync.chunks,
            md.CHUNKS_EMBEDDED: sync.encoded,
            "chunks_reused": sync.reused,
            "vectors_from_shards": sync.from_shards,
            "cache_rows": sync.cached_total,
            "encode_seconds": round(sync.seconds_encoding, 2),
            "chunks_per_second": round(sync.chunks_per_second, 1),
            md.LANCE_TABLE_VERSION: sync.table_version,
        }
    )
