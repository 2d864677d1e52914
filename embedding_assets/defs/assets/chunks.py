"""The chunks asset: documents cut with each model version's own tokenizer and limits."""

import time

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.defs.assets.corpus import corpus
from embedding_assets.defs.assets.model_weights import model_weights
from embedding_assets.defs.assets.shards import SHARD_VECTORS
from embedding_assets.defs.partitions import BY_VERSION, model_versions
from embedding_assets.defs.resources import LanceDBResource, ModelRegistryResource
from embedding_assets.index.chunking import Chunker
from embedding_assets.index.chunks import sync_chunks
from embedding_assets.models.embedders import embedder_for


@dg.asset(
    group_name="index",
    partitions_def=model_versions,
    deps=[corpus, model_weights, dg.AssetDep(SHARD_VECTORS, partition_mapping=BY_VERSION)],
    kinds={"lancedb"},
)
def chunks(
    context: dg.AssetExecutionContext, lancedb: LanceDBResource, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    """Token-bounded chunks (chunk_id, doc_id, ordinal, text, chunk_hash) of every live document; what
    a sharded backfill (shard_vectors) already cut is folded in, not cut again."""
    version = model_registry.version(context.partition_key)
    tokenizer = embedder_for(version).tokenizer
    started = time.perf_counter()
    sync = sync_chunks(lancedb.connect(), version, Chunker(tokenizer, version.chunking, version.max_tokens))
    return dg.MaterializeResult(
        metadata={
            md.MODEL_VERSION: version.id,
            md.PIPELINE_CONFIG_HASH: version.pipeline_config_hash(),
            "documents_chunked": sync.documents_chunked,
            md.CHUNKS_WRITTEN: sync.chunks_written,
            "chunks_deleted": sync.chunks_deleted,
            "chunks_from_shards": sync.chunks_from_shards,
            "chunks": sync.chunks_total,
            "max_tokens_seen": sync.max_tokens_seen,
            "token_limit": version.max_tokens,
            md.SECONDS: round(time.perf_counter() - started, 2),
            md.LANCE_TABLE_VERSION: sync.table_version,
        }
    )
