"""Promote a built index version to serving: tag the Lance table version, then move the pointer."""

from __future__ import annotations

import lancedb

from embedding_assets.index import store, tables
from embedding_assets.models.registry import ModelVersion
from embedding_assets.serving.pointer import ServingPointer, ServingState


def serving_state(
    db: lancedb.DBConnection,
    version: ModelVersion,
    table_version: int | None = None,
    **details: object,
) -> ServingState:
    """The state serving `version`'s index at `table_version` (default: as it is now), pinned by a Lance
    tag so that table version survives compaction and cleanup."""
    name = tables.index_table(version.id)
    table = db.open_table(name)
    table_version = table.version if table_version is None else table_version
    tag = f"served-{version.id}-v{table_version}"
    if tag not in table.tags.list():
        table.tags.create(tag, table_version)
    table.checkout(table_version)
    return ServingState(
        version=version.id,
        model_fingerprint=version.pinned_fingerprint(),
        pipeline_config_hash=version.pipeline_config_hash(),
        table=name,
        table_version=table_version,
        table_committed_at=store.version_committed_at(table, table_version),
        lance_tag=tag,
        rows=table.count_rows(),
        **details,
    )


def promote(
    db: lancedb.DBConnection,
    version: ModelVersion,
    pointer: ServingPointer,
    *,
    table_version: int | None = None,
    run_id: str | None = None,
    gates: dict | None = None,
    overrides: dict | None = None,
) -> ServingState:
    """Serve `version` at `table_version`; the pointer move is one atomic rename."""
    state = serving_state(
        db, version, table_version, run_id=run_id, gates=gates or {}, overrides=overrides or {}
    )
    current = pointer.current()
    if current and (current.table, current.table_version) == (state.table, state.table_version):
        return current  # already served exactly this; a second history entry would make rollback a no-op
    return pointer.promote(state)
