"""Live versions: every version whose index must take each corpus change (dual write).

The served version; the previous one while it is inside its retention window, so a rollback serves
fresh data; and every candidate built but never served (a migration in progress).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import lancedb

from embedding_assets.index import store, tables
from embedding_assets.models.registry import ModelRegistry
from embedding_assets.serving.pointer import ServingPointer

Role = Literal["served", "previous", "candidate"]


@dataclass(frozen=True)
class LiveVersion:
    id: str
    role: Role


def live_versions(
    db: lancedb.DBConnection,
    pointer: ServingPointer,
    registry: ModelRegistry,
    retention: timedelta,
    now: datetime | None = None,
) -> list[LiveVersion]:
    """Served first, then previous, then candidates, in registry order."""
    now = now or datetime.now(UTC)
    served, previous = pointer.current(), pointer.previous()
    live: list[LiveVersion] = []
    if served is not None:
        live.append(LiveVersion(served.version, "served"))
        if (
            previous is not None
            and previous.version != served.version
            and now - served.serving_since < retention
        ):
            live.append(LiveVersion(previous.version, "previous"))
    ever_served = {s.version for s in pointer.history()}
    existing = set(store.table_names(db))
    live += [
        LiveVersion(v.id, "candidate")
        for v in registry.versions
        if v.id not in ever_served and tables.index_table(v.id) in existing
    ]
    return live
