"""The shard_vectors asset: one corpus shard of one model version, cut and encoded into staging tables
of its own, so a backfill of a new version fans out across runs (processes, pods) without two writers
on one table; the version's chunks and embeddings stages fold them in, and the gates judge the whole."""

import time

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.defs.assets.corpus import corpus
from embedding_assets.defs.assets.model_weights import model_weights
from embedding_assets.defs.partitions import BY_VERSION, SHARD_DIMENSION, VERSION_DIMENSION, version_shards
from embedding_assets.defs.resources import LanceDBResource, ModelRegistryResource
from embedding_assets.index import store, tables
from embedding_assets.index.chunking import Chunker
from embedding_assets.index.shards import Shard, stage_shard
from embedding_assets.models.embedders import embedder_for

SHARD_VECTORS = dg.AssetKey("shard_vectors")


def build_shard_vectors(count: int) -> dg.AssetsDefinition:
    """The shard_vectors asset for a corpus split into `count` shards."""

    @dg.asset(
        key=SHARD_VECTORS,
        group_name="index",
        partitions_def=version_shards(count),
        deps=[corpus, dg.AssetDep(model_weights, partition_mapping=BY_VERSION)],
        kinds={"lancedb"},
    )
    def shard_vectors(
        context: dg.AssetExecutionContext, lancedb: LanceDBResource, model_registry: ModelRegistryResource
    ) -> dg.MaterializeResult:
        """Chunks and vectors of the documents whose id hashes to this shard, staged for the version."""
        keys = context.partition_key.keys_by_dimension
        version = model_registry.version(keys[VERSION_DIMENSION])
        shard = Shard.parse(keys[SHARD_DIMENSION])
        db = lancedb.connect()
        if tables.DOCUMENTS_TABLE not in store.table_names(db):
            raise dg.Failure(description="no documents table yet: materialize corpus before its shards")
        corpus_version = db.open_table(tables.DOCUMENTS_TABLE).version
        embedder = embedder_for(version)
        started = time.perf_counter()
        stage = stage_shard(
            db,
            embedder,
            Chunker(embedder.tokenizer, version.chunking, version.max_tokens),
            shard,
            log=context.log.info,
        )
        context.log.info(
            f"{shard.key} of {version.id}: staged {stage.chunks_staged} chunks of {stage.docs_chunked} "
            f"documents and {stage.vectors_encoded} vectors"
        )
        return dg.MaterializeResult(
            metadata={
                md.MODEL_VERSION: version.id,
                md.MODEL_FINGERPRINT: version.pinned_fingerprint(),
                "shard": shard.key,
                "shard_documents": stage.documents,
                "documents_chunked": stage.docs_chunked,
                "chunks_staged": stage.chunks_staged,
                md.CHUNKS_EMBEDDED: stage.vectors_encoded,
                "chunk_seconds": round(stage.seconds_chunking, 2),
                "encode_seconds": round(stage.seconds_encoding, 2),
                "chunks_per_second": round(stage.chunks_per_second, 1),
                md.SECONDS: round(time.perf_counter() - started, 2),
                md.CORPUS_TABLE_VERSION: corpus_version,
            }
        )

    return shard_vectors
