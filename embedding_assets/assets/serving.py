"""The serving_index asset: the pointer naming which version and Lance table version answer queries."""

import dagster as dg

from embedding_assets.assets.index import index
from embedding_assets.partitions import model_versions
from embedding_assets.promotion import promote
from embedding_assets.resources import LanceDBResource, ModelRegistryResource, ServingResource


@dg.asset(group_name="serving", partitions_def=model_versions, deps=[index], kinds={"lancedb"})
def serving_index(
    context: dg.AssetExecutionContext,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
) -> dg.MaterializeResult:
    """The served model version, pinned to a tagged Lance table version; every move is kept in history."""
    pointer = serving.pointer()
    previous = pointer.current()
    state = promote(
        lancedb.connect(), model_registry.version(context.partition_key), pointer, run_id=context.run_id
    )
    return dg.MaterializeResult(
        metadata={
            "served_version": state.version,
            "model_fingerprint": state.model_fingerprint,
            "lance_tag": state.lance_tag,
            "lance_table_version": state.table_version,
            "rows": state.rows,
            "previous_version": previous.version if previous else "none",
            "history_entries": len(pointer.history()),
        }
    )
