"""The chunks asset: documents cut with each model version's own tokenizer and limits."""

import time

import dagster as dg

from embedding_assets.assets.corpus import corpus
from embedding_assets.assets.model_weights import model_weights
from embedding_assets.chunking import Chunker
from embedding_assets.embedders import embedder_for
from embedding_assets.partitions import model_versions
from embedding_assets.pipeline.chunks import sync_chunks
from embedding_assets.resources import LanceDBResource, ModelRegistryResource


@dg.asset(group_name="index", partitions_def=model_versions, deps=[corpus, model_weights], kinds={"lancedb"})
def chunks(
    context: dg.AssetExecutionContext, lancedb: LanceDBResource, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    """Token-bounded chunks (chunk_id, doc_id, ordinal, text, chunk_hash) of every live document."""
    version = model_registry.version(context.partition_key)
    tokenizer = embedder_for(version).tokenizer
    started = time.perf_counter()
    sync = sync_chunks(lancedb.connect(), version, Chunker(tokenizer, version.chunking, version.max_tokens))
    return dg.MaterializeResult(
        metadata={
            "model_version": version.id,
            "pipeline_config_hash": version.pipeline_config_hash(),
            "documents_chunked": sync.documents_chunked,
            "chunks_written": sync.chunks_written,
            "chunks_deleted": sync.chunks_deleted,
            "chunks": sync.chunks_total,
            "max_tokens_seen": sync.max_tokens_seen,
            "token_limit": version.max_tokens,
            "seconds": round(time.perf_counter() - started, 2),
            "lance_table_version": sync.table_version,
        }
    )
