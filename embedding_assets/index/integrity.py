"""Storage integrity: which tables read back whole, at which versions, and restoring a damaged one.

Lance keeps every committed version, so a data file that is deleted or truncated damages the versions
that use it and no other. `check_table` asks Lance to validate the latest version (each data file is
opened and its size checked) and each tagged version (the states serving pinned); `restore_table` makes
the newest whole version the latest again, tagged ones first. A restore is a new commit that no change log
names, so the next run diffs that table whole: the delta since the restored version is re-applied
(`index.change_log`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lancedb

from embedding_assets.index import store

MAX_VERSIONS_TRIED = 64  # untagged versions walked back from the latest when no tagged one is whole


@dataclass
class TableHealth:
    """One table: its latest version, whether it reads back whole, and its tags' states."""

    name: str
    version: int
    rows: int | None
    damage: str | None = None  # what is wrong with the latest version; None: whole
    tags: dict[str, int] = field(default_factory=dict)
    damaged_tags: dict[str, str] = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        return self.damage is None and not self.damaged_tags

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "whole": self.whole}


def damage_of(table: lancedb.table.Table, version: int | None = None) -> str | None:
    """Why `table` (at `version`, else its latest) does not read back whole, or None."""
    try:
        dataset = table.to_lance()
        if version is not None:
            dataset = dataset.checkout_version(version)
        dataset.validate()
    except Exception as exc:  # Lance reports a missing or short file as an IO error of its own kinds
        return short_error(exc)
    return None


def short_error(exc: BaseException) -> str:
    """A Lance error without its Rust source locations: the first line, up to the first ', /rustc'."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(", /rustc")[0][:300]


def check_table(db: lancedb.DBConnection, name: str) -> TableHealth:
    table = db.open_table(name)
    damage = damage_of(table)
    health = TableHealth(name, table.version, None if damage else table.count_rows(), damage)
    for tag, info in sorted(table.tags.list().items()):
        health.tags[tag] = info["version"]
        if tag_damage := damage_of(table, info["version"]):
            health.damaged_tags[tag] = tag_damage
    return health


def check_database(db: lancedb.DBConnection) -> list[TableHealth]:
    return [check_table(db, name) for name in sorted(store.table_names(db))]


def restore_table(db: lancedb.DBConnection, name: str) -> int | None:
    """Make the newest whole version of `name` its latest (tagged versions tried first, then untagged
    ones walking back); the version restored, or None when none is whole."""
    table = db.open_table(name)
    tagged = sorted({info["version"] for info in table.tags.list().values()}, reverse=True)
    versions = sorted((v["version"] for v in table.list_versions()), reverse=True)
    untagged = [v for v in versions if v not in tagged][:MAX_VERSIONS_TRIED]
    for version in (*tagged, *untagged):
        if damage_of(table, version) is None:
            table.restore(version)
            return version
    return None
