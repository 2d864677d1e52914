"""The serving_index asset: the pointer naming which version and Lance table version answer queries."""

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.defs import pools
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.checks.gates import GATES
from embedding_assets.defs.checks.verdict import latest_verdict
from embedding_assets.defs.partitions import model_versions
from embedding_assets.defs.resources import LanceDBResource, ModelRegistryResource, ServingResource
from embedding_assets.serving.promotion import promote, serving_state

ROLLBACK_KEYS = ("served_version", "previous_version")  # what a rollback reports


@dg.asset(
    group_name="serving",
    partitions_def=model_versions,
    deps=[index],
    kinds={"lancedb"},
    pool=pools.SERVING_POINTER,
)
def serving_index(
    context: dg.AssetExecutionContext,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
) -> dg.MaterializeResult:
    """The served model version, pinned to the Lance table version its gates judged; history kept."""
    verdict = latest_verdict(context.instance, context.partition_key, GATES)
    if not verdict.passed:
        raise dg.Failure(
            description=f"{context.partition_key} is blocked from serving: " + "; ".join(verdict.blockers),
            metadata={"blockers": verdict.blockers},
        )
    pointer = serving.pointer()
    previous = pointer.current()
    state = promote(
        lancedb.connect(),
        model_registry.version(context.partition_key),
        pointer,
        table_version=verdict.table_version,
        run_id=context.run_id,
        gates=verdict.history_record(),
        overrides=verdict.overrides(),
    )
    return dg.MaterializeResult(
        metadata={
            "served_version": state.version,
            md.MODEL_FINGERPRINT: state.model_fingerprint,
            "lance_tag": state.lance_tag,
            md.LANCE_TABLE_VERSION: state.table_version,
            "rows": state.rows,
            "previous_version": previous.version if previous else "none",
            "history_entries": state.seq + 1,
            "gates_passed": len(verdict.checks),
            md.OVERRIDES: verdict.overrides(),
        }
    )


@dg.op(
    description="Serve again the state the current one replaced; instant, nothing is rebuilt.",
    pool=pools.SERVING_POINTER,
)
def move_pointer_back(
    context: dg.OpExecutionContext,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
) -> dict:
    """Move the pointer back one promotion and record it as a serving_index materialization.

    If dual writes refreshed the previous version since, and its gates passed on that newer table, the
    newer table is served: a rollback never brings back stale data."""
    pointer = serving.pointer()
    target = pointer.previous()
    refreshed = None
    if target is not None:
        verdict = latest_verdict(context.instance, target.version, GATES)
        if verdict.passed and (verdict.table_version or 0) > target.table_version:
            refreshed = serving_state(
                lancedb.connect(),
                model_registry.version(target.version),
                verdict.table_version,
                gates=verdict.history_record(),
            )
    now, rolled_back_from = pointer.rollback(run_id=context.run_id, refreshed=refreshed)
    context.log_event(
        dg.AssetMaterialization(
            asset_key=serving_index.key,
            partition=now.version,
            metadata={
                "served_version": now.version,
                md.LANCE_TABLE_VERSION: now.table_version,
                "lance_tag": now.lance_tag,
                "refreshed_since_served": refreshed is not None,
                "previous_version": rolled_back_from.version,
                "rolled_back_from": f"{rolled_back_from.version} (table v{rolled_back_from.table_version})",
            },
        )
    )
    return {"served_version": now.version, "previous_version": rolled_back_from.version}
