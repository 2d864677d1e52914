"""`verify` and `repair`: the state of every table and of the serving pointer, and putting them right.

verify reads, never writes: each table's latest and tagged versions are validated by Lance, the pointer
and its history are parsed, and the served state's table version must read back whole. repair finishes a
pointer move a crash cut short, rewrites a damaged pointer from its history, moves serving off a damaged
table version to the newest whole state it served before, restores each damaged table to its newest
whole version (dropping the caches built on the versions left behind) and removes the tags of versions
whose files are gone; the caller then refreshes, which re-applies the delta since and gates it.
"""

from __future__ import annotations

from typing import Any

import lancedb

from embedding_assets.index import integrity, store, tables
from embedding_assets.serving.pointer import PointerDamagedError, ServingPointer, ServingState


def served_damage(db: lancedb.DBConnection, state: ServingState) -> str | None:
    """Why the table version `state` pins cannot answer queries, or None."""
    if state.table not in store.table_names(db):
        return f"{state.table} does not exist"
    table = db.open_table(state.table)
    if state.table_version not in {v["version"] for v in table.list_versions()}:
        return f"{state.table} has no version {state.table_version} any more"
    damage = integrity.damage_of(table, state.table_version)
    return f"{state.table} v{state.table_version}: {damage}" if damage else None


def verify(db: lancedb.DBConnection, pointer: ServingPointer) -> dict[str, Any]:
    """Every table's health, the pointer's damage and the served state's; `ok` when all are whole."""
    healths = integrity.check_database(db)
    problems = [f"{t.name}: {t.damage}" for t in healths if t.damage]
    problems += [f"{t.name} tag {tag}: {why}" for t in healths for tag, why in t.damaged_tags.items()]
    damage = pointer.damage()
    served: dict[str, Any] | None = None
    try:
        state = pointer.current()
    except PointerDamagedError as exc:
        state, damage = None, [*damage, str(exc)]
    if state is not None:
        why = served_damage(db, state)
        served = {"version": state.version, "table": state.table, "table_version": state.table_version}
        served["damage"] = why
        if why:
            problems.append(f"served state: {why}")
    problems += [f"serving pointer: {d}" for d in damage]
    return {
        "ok": not problems,
        "problems": problems,
        "served": served,
        "pointer_damage": damage,
        "tables": [t.to_json() for t in healths],
    }


def repair(db: lancedb.DBConnection, pointer: ServingPointer) -> list[str]:
    """Put the pointer and every damaged table right, as far as whole versions allow; what was done."""
    done = [f"serving pointer: {found}: fixed" for found in pointer.recover()]
    state = pointer.current()
    if state is not None and (why := served_damage(db, state)):
        fallback = next(
            (s for s in reversed(pointer.history()) if s.seq != state.seq and not served_damage(db, s)), None
        )
        if fallback is None:
            done.append(f"served state: {why}; no whole state in the serving history to fall back to")
        else:
            pointer.move_to(fallback.model_copy(update={"action": "repair"}))
            done.append(
                f"served state: {why}; serving moved back to {fallback.version} "
                f"v{fallback.table_version} (history #{fallback.seq})"
            )
    for health in integrity.check_database(db):
        if health.damage:
            restored = integrity.restore_table(db, health.name)
            done.append(
                f"{health.name} v{health.version}: {health.damage}; "
                + (f"restored to v{restored}" if restored else "no whole version to restore")
            )
            done += _drop_memos(db, health.name)
        table = db.open_table(health.name)
        for tag, why in health.damaged_tags.items():
            table.tags.delete(tag)  # a version whose files are gone can never be served again
            done.append(f"{health.name} tag {tag} (v{health.tags[tag]}): {why}; tag removed")
    return done


def _drop_memos(db: lancedb.DBConnection, name: str) -> list[str]:
    """Drop the exact-search memos of the version whose index table `name` is: they name table versions
    the restore left behind (a memo is a cache; the next gate run makes it again)."""
    if not name.startswith(tables.INDEX_TABLE_PREFIX):
        return []
    memo = tables.exact_memo_table(name.removeprefix(tables.INDEX_TABLE_PREFIX))
    dropped = [n for n in store.table_names(db) if n == memo or n.startswith(f"{memo}__")]
    for memo_table in dropped:
        db.drop_table(memo_table)
    return [f"{memo_table}: dropped (a cache of the table before its restore)" for memo_table in dropped]
