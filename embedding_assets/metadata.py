"""Metadata keys that more than one module writes or reads (assets, checks, runner, refresh report), and
how many examples a report lists. Each key lives here once."""

from __future__ import annotations

EXAMPLES = 5  # ids, documents or queries a report lists as examples

MODEL_VERSION = "model_version"
MODEL_FINGERPRINT = "model_fingerprint"
PIPELINE_CONFIG_HASH = "pipeline_config_hash"
LANCE_TABLE_VERSION = "lance_table_version"
SERVED_VERSION = "served_version"  # what a gate compared a candidate with
SECONDS = "seconds"

DOCS_ADDED = "docs_added"
DOCS_CHANGED = "docs_changed"
DOCS_DELETED = "docs_deleted"
CDC_END_LSN = "cdc_end_lsn"
CORPUS_TABLE_VERSION = "corpus_table_version"  # the documents table version an index run read
CORPUS_TABLE_STATE = (
    "corpus_table_state"  # that version @ its commit time (a recreated table repeats numbers)
)
INDEX_TABLE_STATE = "index_table_state"  # the index table version a run left, @ its commit time
GATE_THRESHOLDS = "gate_thresholds"  # the registry's thresholds for the version when its index was built

CHUNKS_WRITTEN = "chunks_written"
CHUNKS_EMBEDDED = "chunks_embedded"
ROWS_UPSERTED = "rows_upserted"
ROWS_DELETED = "rows_deleted"
LAG_SECONDS = {"p50": "lag_p50_seconds", "p99": "lag_p99_seconds", "max": "lag_max_seconds"}

GATE_LEVEL = "level"
OVERRIDES = "overrides"
OVERRIDE_REASON = "override_reason"
PER_QUERY_NDCG = "per_query_ndcg@10"  # {query id: nDCG@10}: the served history keeps it for paired gates
