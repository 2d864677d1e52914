"""Index maintenance off the refresh path: fold a version's unindexed rows into its vector index and, if
serving reads the table version maintenance started from, serve the maintained one.

A refresh leaves the rows it wrote outside the vector index (searched exactly beside it) and the rows it
replaced deleted in place; both slow every ANN query (at 882,205 rows, a 1% edit took the served p50 from
9 to 16-17 ms). `ann.fold_in` indexes those rows and compacts the small fragments in seconds, but doing
it inside every refresh would add that to each refresh. So it runs afterwards, as a
run of its own (or `embedding-assets optimize`), and the pointer follows it only when the rows served are
exactly the rows maintained: same keys, same chunk hashes. The gates judged those rows, so their verdict
stands; the state keeps its gate record and the way back."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import lancedb

from embedding_assets.index import ann, lexical, store, tables
from embedding_assets.index.change_log import ChangeLog
from embedding_assets.models.registry import ModelVersion
from embedding_assets.serving.pointer import ServingPointer
from embedding_assets.serving.promotion import release_unreachable_tags, serving_state

MAINTAIN_ACTION = "optimize"
MAINTAINED_FROM = "maintained_from"  # Maintenance's field: the index table state it started from
ROW_IDENTITY = ("chunk_id", "chunk_hash")  # a row's key and the text its vector encodes


@dataclass(frozen=True)
class Maintenance:
    """What maintaining one version's table did."""

    version: str
    table: str
    table_version_before: int
    table_version_after: int
    maintained_from: str  # the index table's state (`store.table_state`) before
    index_table_state: str  # and after
    index_action: str  # ann.VectorIndexState.action: exact, current, optimized or retrained
    unindexed_rows_before: int
    seconds: float
    served: bool  # the pointer now names the maintained table version
    summary: str

    def to_metadata(self) -> dict:
        return asdict(self)


class MaintenanceChangedRowsError(RuntimeError):
    """The maintained table version holds other rows than the one it started from (another writer
    committed meanwhile); serving stays where it was."""


def rows_digest(table: lancedb.table.Table, table_version: int) -> str:
    """A digest of the (chunk_id, chunk_hash) pairs of `table_version`, independent of row order."""
    table.checkout(table_version)
    keys = store.scanned(table.search().select(list(ROW_IDENTITY)).limit(None))
    keys = keys.sort_by([(c, "ascending") for c in ROW_IDENTITY])
    joined = store.joined_key(keys, *ROW_IDENTITY)  # one array: the digest ignores how a read was cut
    return hashlib.sha256("\x1e".join(joined.to_pylist()).encode()).hexdigest()


def maintain(
    db: lancedb.DBConnection, version: ModelVersion, pointer: ServingPointer, run_id: str | None = None
) -> Maintenance:
    """Fold every unindexed row of `version`'s table into its vector index (`ann.ensure_vector_index`
    with no threshold: a fold-in, or a new training if the partitions no longer fit); serve the result if
    serving read the table version this started from and the rows are the same."""
    name = tables.index_table(version.id)
    maintained_from = store.table_state(db, name)
    table = db.open_table(name)
    before = table.version
    unindexed = ann.unindexed_rows(table)
    with ChangeLog(db, name).same_rows():
        state = ann.ensure_vector_index(table, fold_share=0.0)
        if version.retrieval.mode == "hybrid":
            lexical.ensure_text_index(table, fold_share=0.0)
    after = table.version
    done = dict(
        version=version.id,
        table=name,
        table_version_before=before,
        table_version_after=after,
        maintained_from=maintained_from,
        index_table_state=store.table_state(db, name),
        index_action=state.action,
        unindexed_rows_before=unindexed,
        seconds=state.seconds,
    )
    current = pointer.current()
    served_before = current is not None and (current.table, current.table_version) == (name, before)
    if after == before:
        why = "no vector index (searched exactly)" if state.action == "exact" else "every row is indexed"
        return Maintenance(**done, served=served_before, summary=f"{version.id}: nothing to do, {why}")
    if rows_digest(table, after) != rows_digest(table, before):
        raise MaintenanceChangedRowsError(
            f"{name} v{after} holds other rows than v{before}: another writer committed during "
            f"maintenance; serving does not move"
        )
    if not served_before:
        return Maintenance(
            **done,
            served=False,
            summary=f"{version.id}: table v{before} -> v{after} ({state.action}); not served at v{before}, "
            "so serving did not move",
        )
    maintained = serving_state(db, version, after, run_id=run_id)
    moved = pointer.follow(current, maintained, MAINTAIN_ACTION)
    if moved:
        release_unreachable_tags(db, pointer)
    return Maintenance(
        **done,
        served=moved,
        summary=f"{version.id}: table v{before} -> v{after} ({state.action}, {unindexed} rows folded in); "
        + ("serving follows" if moved else "serving moved meanwhile, so it stays where it went"),
    )
