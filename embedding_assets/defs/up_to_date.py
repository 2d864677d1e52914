"""Whether a live version's refresh has anything to do: a version whose index was built from the documents
table as it is now, with the same pinned model and config, and whose gates passed on that very table
version (and, served, is served at it) would be rebuilt to the same rows and judged the same. Such a
refresh is skipped with its reason, so a pass over an unchanged corpus costs the corpus sync alone.
`embedding-assets checks` re-runs the gates on an unchanged index whenever they are wanted anyway (after
editing the judged queries, say, or upgrading a library under the same pinned weights)."""

from __future__ import annotations

import dagster as dg
import lancedb

from embedding_assets import metadata as md
from embedding_assets.defs.checks.gates import GATES
from embedding_assets.defs.checks.verdict import INDEX_KEY, latest_verdict
from embedding_assets.index import store, tables
from embedding_assets.models.registry import ModelVersion
from embedding_assets.serving.live import LiveVersion
from embedding_assets.serving.maintenance import MAINTAINED_FROM
from embedding_assets.serving.pointer import ServingPointer


def unchanged_since_gated(
    instance: dg.DagsterInstance,
    db: lancedb.DBConnection,
    version: ModelVersion,
    live: LiveVersion,
    pointer: ServingPointer,
) -> str | None:
    """Why refreshing `live` now would change nothing, or None when it must run."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=INDEX_KEY, asset_partitions=[version.id]), limit=1
    ).records
    if not records:
        return None
    meta = records[0].asset_materialization.metadata
    recorded = {k: meta[k].value if k in meta else None for k in UP_TO_DATE_KEYS}
    documents = store.table_state(db, tables.DOCUMENTS_TABLE)
    index_state = store.table_state(db, tables.index_table(version.id))
    now = {
        md.MODEL_FINGERPRINT: version.pinned_fingerprint(),
        md.PIPELINE_CONFIG_HASH: version.pipeline_config_hash(),
        md.GATE_THRESHOLDS: version.gates.model_dump_json(),
        md.CORPUS_TABLE_STATE: documents,
        md.INDEX_TABLE_STATE: index_state,
    }
    written = recorded[md.INDEX_TABLE_STATE]
    maintained = written != index_state and maintained_since(instance, version.id, records[0], written)
    if maintained == index_state:  # only index maintenance committed since: the same rows
        now[md.INDEX_TABLE_STATE] = written
    if recorded != now or not documents or not index_state:
        return None
    gated, index_version = (int(state.split("@", 1)[0]) for state in (written, index_state))
    verdict = latest_verdict(instance, version.id, GATES)
    if not verdict.passed or verdict.table_version != gated:
        return None
    if live.role == "served":
        state = pointer.current()
        if state is None or (state.version, state.table_version) != (version.id, index_version):
            return None
    return (
        f"up to date: index v{gated} was built from documents v{documents.split('@', 1)[0]} "
        f"(unchanged since) and its gates passed on it in run {records[0].run_id[:8]}"
        + (f"; index maintenance made it v{index_version}, the same rows" if gated != index_version else "")
    )


def maintained_since(
    instance: dg.DagsterInstance, version_id: str, written: dg.EventLogRecord, state: str
) -> str:
    """The index table state that optimize_index runs after the index run `written` led to from `state`
    (each observation names the state it started from and the one it left); `state` when none did."""
    observations = instance.fetch_observations(
        dg.AssetRecordsFilter(
            asset_key=INDEX_KEY, asset_partitions=[version_id], after_storage_id=written.storage_id
        ),
        limit=MAINTENANCE_LOOKBACK,
        ascending=True,
    ).records
    for record in observations:
        meta = record.asset_observation.metadata
        if MAINTAINED_FROM in meta and meta[MAINTAINED_FROM].value == state:
            state = meta[md.INDEX_TABLE_STATE].value
    return state


MAINTENANCE_LOOKBACK = 20  # optimize_index observations read after the index run

UP_TO_DATE_KEYS = (
    md.MODEL_FINGERPRINT,
    md.PIPELINE_CONFIG_HASH,
    md.GATE_THRESHOLDS,
    md.CORPUS_TABLE_STATE,
    md.INDEX_TABLE_STATE,
)
