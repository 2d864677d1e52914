"""Compaction of the tables a refresh looks keys up in: the documents, a version's chunks, its encoder's
cache, and their change logs.

Every write appends a fragment (a full build's cache one per encode batch of CACHE_WRITE_BATCH), and a
key lookup opens every fragment: at 248k rows the cache's 147 fragments took 0.19 s per lookup of 2,400
hashes, one fragment 0.06 s, and a refresh makes several such lookups. Vector-index maintenance does
this for the index table (`ann.fold_in`); this does it for the others, off the refresh path, once a table
holds more than MAX_SMALL_FRAGMENTS small ones. Rows are moved, never changed, so a change log stays
continuous (`ChangeLog.same_rows`)."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import lancedb

from embedding_assets.index import store, tables
from embedding_assets.index.ann import COMPACT_TARGET_ROWS, MATERIALIZE_DELETIONS
from embedding_assets.index.change_log import ChangeLog
from embedding_assets.models.registry import ModelVersion

MAX_SMALL_FRAGMENTS = 8  # a table with more small fragments than this is compacted
SMALL_FRAGMENT_ROWS = COMPACT_TARGET_ROWS // 2


@dataclass(frozen=True)
class Compaction:
    """What compacting one table did."""

    table: str
    small_fragments_before: int
    small_fragments_after: int
    seconds: float

    def to_metadata(self) -> dict:
        return asdict(self)


def small_fragments(table: lancedb.table.Table) -> int:
    """Fragments of fewer than SMALL_FRAGMENT_ROWS rows, counting deleted rows still in their files: what
    compaction merges."""
    return sum(f.metadata.physical_rows < SMALL_FRAGMENT_ROWS for f in table.to_lance().get_fragments())


def pipeline_tables(version: ModelVersion) -> list[tuple[str, bool, bool]]:
    """(table, shared, rows too) for each logged table a refresh of `version` looks keys up in: a shared
    table (documents, the cache) has writers outside the version's runs; the index table's own rows are
    compacted by vector-index maintenance, so only its change log is here."""
    return [
        (tables.DOCUMENTS_TABLE, True, True),
        (tables.chunks_table(version.id), False, True),
        (tables.cache_table(version.encoder_key()), True, True),
        (tables.index_table(version.id), False, False),
    ]


def fragmented(db: lancedb.DBConnection, version: ModelVersion) -> list[str]:
    """The tables of `pipeline_tables` (and their change logs) past MAX_SMALL_FRAGMENTS."""
    names = store.table_names(db)
    candidates = [
        n
        for table, _, rows in pipeline_tables(version)
        for n in ((table,) if rows else ()) + (tables.change_log_table(table),)
    ]
    return [n for n in candidates if n in names and small_fragments(db.open_table(n)) > MAX_SMALL_FRAGMENTS]


def compact_pipeline_tables(db: lancedb.DBConnection, version: ModelVersion) -> list[Compaction]:
    """Compact each table of `pipeline_tables` past MAX_SMALL_FRAGMENTS, and its change log, each while
    it has no other writer: a shared table under its writer lock; a version's own tables are this run's
    alone (one run per version at a time)."""
    done: list[Compaction] = []
    names = store.table_names(db)
    for name, shared, rows in pipeline_tables(version):
        if name not in names:
            continue
        lock: AbstractContextManager[None] = store.writer_lock(db, name) if shared else nullcontext()
        with lock:
            if rows:
                with ChangeLog(db, name).same_rows():
                    done += compact(db.open_table(name))
            log = tables.change_log_table(name)
            if log in names:
                done += compact(db.open_table(log))
    return done


def compact(table: lancedb.table.Table) -> list[Compaction]:
    """Merge the table's small fragments if it has more than MAX_SMALL_FRAGMENTS; what that did."""
    before = small_fragments(table)
    if before <= MAX_SMALL_FRAGMENTS:
        return []
    started = time.perf_counter()
    table.to_lance().optimize.compact_files(
        target_rows_per_fragment=COMPACT_TARGET_ROWS, materialize_deletions_threshold=MATERIALIZE_DELETIONS
    )
    table.checkout_latest()
    return [Compaction(table.name, before, small_fragments(table), round(time.perf_counter() - started, 2))]
