"""Promote a built index version to serving: tag the Lance table version, then move the pointer."""

from __future__ import annotations

import lancedb

from embedding_assets.index import store, tables
from embedding_assets.models.registry import ModelVersion
from embedding_assets.serving.pointer import ANY_SERVED, ServingPointer, ServingState

SERVED_TAG_PREFIX = "served-"


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
    tag = f"{SERVED_TAG_PREFIX}{version.id}-v{table_version}"
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
    served_when_judged: str | None = ANY_SERVED,
    refresh_only: bool = False,
) -> ServingState | None:
    """Serve `version` at `table_version`; the pointer move is one atomic rename.

    `served_when_judged`: see ServingPointer.promote. `refresh_only`: serve the newer table only if
    `version` still serves (ServingPointer.refresh); None when it does not."""
    state = serving_state(
        db, version, table_version, run_id=run_id, gates=gates or {}, overrides=overrides or {}
    )
    pointer.recover()  # a move a crash cut short is finished first: it may be this very one
    current = pointer.current()
    if current and (current.table, current.table_version) == (state.table, state.table_version):
        return current  # already served exactly this; a second history entry would make rollback a no-op
    served = pointer.refresh(state) if refresh_only else pointer.promote(state, served_when_judged)
    release_unreachable_tags(db, pointer)
    return served


def reachable_states(pointer: ServingPointer) -> list[ServingState]:
    """The served state and every state a rollback (repeated) can reach: the chain of states each one
    replaced. A table version a refresh superseded is on no chain."""
    history = pointer.history()
    by_seq = {s.seq: s for s in history}
    chain: list[ServingState] = []
    state = pointer.current()
    while state is not None and state not in chain:
        chain.append(state)
        state = by_seq.get(state.supersedes) if state.supersedes is not None else None
    return chain


def release_unreachable_tags(db: lancedb.DBConnection, pointer: ServingPointer) -> list[str]:
    """Delete the serving tags of table versions no rollback can reach any more, so cleanup after
    `optimize()` may reclaim them (it never removes a tagged version, nor one younger than its
    retention); the tags deleted. Every reachable state keeps its tag."""
    keep = {(s.table, s.lance_tag) for s in reachable_states(pointer)}
    released = []
    for name in {s.table for s in pointer.history()} & set(store.table_names(db)):
        table = db.open_table(name)
        for tag in list(table.tags.list()):
            if tag.startswith(SERVED_TAG_PREFIX) and (name, tag) not in keep:
                table.tags.delete(tag)
                released.append(f"{name}@{tag}")
    return released
