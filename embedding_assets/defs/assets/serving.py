"""The serving_index asset: the pointer naming which version and Lance table version answer queries.

One unpartitioned asset, so its latest materialization says at a glance what serves, what it replaced
and what waits, with the move that got there. A run for a model version (the partition picker of
`promote_index` or `migrate_index`) or the `version` config chooses what to promote."""

from datetime import timedelta

import dagster as dg
import lancedb
from pydantic import Field

from embedding_assets import metadata as md
from embedding_assets.defs import pools, tags
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.checks.gates import GATES, GOLDEN_QUALITY
from embedding_assets.defs.checks.verdict import latest_verdict
from embedding_assets.defs.resources import LanceDBResource, ModelRegistryResource, ServingResource
from embedding_assets.models.registry import ModelRegistry
from embedding_assets.serving.live import live_versions
from embedding_assets.serving.overview import gates_passed, gates_table, history_table, move_summary, roles
from embedding_assets.serving.pointer import ServingMovedError, ServingPointer, ServingState
from embedding_assets.serving.promotion import promote, release_unreachable_tags, serving_state

ROLLBACK_KEYS = (md.SERVED_VERSION, "previous_version")  # what a rollback reports


class ServingChoice(dg.Config):
    """Which model version to serve when the run is not for one version's partition."""

    version: str = Field("", description="model version to serve; empty: the version of the run's partition")


def serving_overview(
    db: lancedb.DBConnection,
    pointer: ServingPointer,
    registry: ModelRegistry,
    retention: timedelta,
    state: ServingState,
    move: str,
) -> dict:
    """serving_index metadata: the roles of every live version, the move, its gates and the history."""
    live = live_versions(db, pointer, registry, retention)
    return {
        **roles(live),
        "move": move,
        md.LANCE_TABLE_VERSION: state.table_version,
        "lance_tag": state.lance_tag,
        "rows": state.rows,
        md.MODEL_FINGERPRINT: state.model_fingerprint,
        "gates_passed": gates_passed(state),
        "gates": dg.MetadataValue.md(gates_table(state.gates)) if state.gates else "no gate record",
        "history": dg.MetadataValue.md(history_table(pointer)),
        "history_entries": state.seq + 1,
        md.OVERRIDES: state.overrides,
    }


@dg.asset(
    group_name="serving", deps=[index], kinds={"lancedb"}, pool=pools.SERVING_POINTER, output_required=False
)
def serving_index(
    context: dg.AssetExecutionContext,
    config: ServingChoice,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
) -> dg.MaterializeResult:
    """The served model version, pinned to the Lance table version its gates judged; history kept.

    In a refresh run the version is served again only if it still serves: a promotion or a rollback
    while the refresh ran wins, and the step materializes nothing. A promotion whose gates compared the
    candidate with a version that no longer serves is refused: the verdict is stale."""
    version_id = config.version or (context.partition_key if context.has_partition_key else "")
    if not version_id:
        raise dg.Failure(
            description="choose the model version to serve: launch promote_index for a model_versions "
            "partition, or set this asset's `version` config"
        )
    verdict = latest_verdict(context.instance, version_id, GATES)
    if not verdict.passed:
        raise dg.Failure(
            description=f"{version_id} is blocked from serving: " + "; ".join(verdict.blockers),
            metadata={"blockers": verdict.blockers},
        )
    pointer = serving.pointer()
    previous = pointer.current()
    registry = model_registry.load()
    db = lancedb.connect()
    refreshing = bool(context.run.tags.get(tags.REFRESH))
    try:
        state = promote(
            db,
            registry.get(version_id),
            pointer,
            table_version=verdict.table_version,
            run_id=context.run_id,
            gates=verdict.history_record(),
            overrides=verdict.overrides(),
            served_when_judged=verdict.compared_with(GOLDEN_QUALITY),
            refresh_only=refreshing,
        )
    except ServingMovedError as exc:
        raise dg.Failure(description=str(exc)) from exc
    if state is None:
        now = pointer.current()
        context.log.info(
            f"{version_id} was not served again: {now.version if now else 'nothing'} serves now "
            f"(moved while this refresh ran); its refreshed table v{verdict.table_version} stays gated"
        )
        return
    move = move_summary(state.action, previous, state)
    context.log.info(move)
    yield dg.MaterializeResult(
        metadata=serving_overview(db, pointer, registry, serving.retention, state, move)
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
    registry = model_registry.load()
    db = lancedb.connect()
    refreshed = None
    if target is not None:
        verdict = latest_verdict(context.instance, target.version, GATES)
        if verdict.passed and (verdict.table_version or 0) > target.table_version:
            refreshed = serving_state(
                db, registry.get(target.version), verdict.table_version, gates=verdict.history_record()
            )
    now, rolled_back_from = pointer.rollback(run_id=context.run_id, refreshed=refreshed)
    release_unreachable_tags(db, pointer)
    move = move_summary("rollback", rolled_back_from, now)
    context.log.info(move)
    context.log_event(
        dg.AssetMaterialization(
            asset_key=serving_index.key,
            description=move,
            metadata={
                **serving_overview(db, pointer, registry, serving.retention, now, move),
                "previous_version": rolled_back_from.version,
                "refreshed_since_served": refreshed is not None,
                "rolled_back_from": f"{rolled_back_from.version} (table v{rolled_back_from.table_version})",
            },
        )
    )
    return {md.SERVED_VERSION: now.version, "previous_version": rolled_back_from.version}
