"""The index asset: one LanceDB table per model version, every row with its vector and provenance."""

import time
from datetime import UTC, datetime

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.defs.assets.embeddings import embeddings
from embedding_assets.defs.partitions import model_versions
from embedding_assets.defs.resources import LanceDBResource, ModelRegistryResource
from embedding_assets.index import ann, lexical, store, tables
from embedding_assets.index.change_log import ChangeLog
from embedding_assets.index.rows import sync_index
from embedding_assets.quality.freshness import indexing_lag
from embedding_assets.quality.gates.data_quality import preload_expectations
from embedding_assets.quality.gates.sentinels import ensure_sentinels


@dg.asset(
    group_name="index",
    partitions_def=model_versions,
    deps=[embeddings],
    kinds={"lancedb"},
)
def index(
    context: dg.AssetExecutionContext, lancedb: LanceDBResource, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    """Per chunk: vector plus provenance (doc, checksum, chunk hash, fingerprint, config hash, times).

    Metadata includes the lag from source change to indexed for the documents this run wrote."""
    version = model_registry.version(context.partition_key)
    preload_expectations()  # its gates follow: the data-quality gate's library loads while this works
    started = time.perf_counter()
    db = lancedb.connect()
    corpus_version = db.open_table(tables.DOCUMENTS_TABLE).version  # what this run indexes from
    corpus_state = store.table_state(db, tables.DOCUMENTS_TABLE)
    sync = sync_index(db, version)
    table = db.open_table(tables.index_table(version.id))
    with ChangeLog(db, table.name).same_rows():
        vector_index = ann.ensure_vector_index(table)
        text_index = lexical.ensure_text_index(table) if version.retrieval.mode == "hybrid" else None
    if text_index is not None and text_index.action != "current":
        context.log.info(f"full-text index {text_index.index} {text_index.action} in {text_index.seconds} s")
    if vector_index.action in ("created", "optimized"):
        context.log.info(
            f"vector index {vector_index.index} {vector_index.action} on {vector_index.rows} rows in "
            f"{vector_index.seconds} s ({vector_index.unindexed_rows} rows not indexed)"
        )
    table_version = table.version  # index builds and optimize() commit versions of their own
    lag = indexing_lag(db, sync.docs_written, datetime.now(UTC))
    sentinels, created = ensure_sentinels(db, version)
    if created:
        context.log.info(f"stored {sentinels} sentinel chunks with their vectors for {version.id}")
    return dg.MaterializeResult(
        metadata={
            md.MODEL_VERSION: version.id,
            md.MODEL_FINGERPRINT: version.pinned_fingerprint(),
            md.PIPELINE_CONFIG_HASH: version.pipeline_config_hash(),
            "table": tables.index_table(version.id),
            "rows": sync.rows_total,
            md.ROWS_UPSERTED: sync.rows_upserted,
            md.ROWS_DELETED: sync.rows_deleted,
            md.SECONDS: round(time.perf_counter() - started, 2),
            md.LANCE_TABLE_VERSION: table_version,
            md.CORPUS_TABLE_VERSION: corpus_version,
            md.CORPUS_TABLE_STATE: corpus_state,
            md.INDEX_TABLE_STATE: store.table_state(db, tables.index_table(version.id)),
            md.GATE_THRESHOLDS: version.gates.model_dump_json(),
            "sentinels": sentinels,
            "docs_indexed": len(sync.docs_written),
            **vector_index.to_metadata(),
            **(text_index.to_metadata() if text_index is not None else {}),
            **{md.LAG_SECONDS[q]: lag[q] for q in md.LAG_SECONDS},
        }
    )
