"""Live versions: every version whose index must take each corpus change (dual write).

The served version; the previous one while it is inside its retention window, so a rollback serves
fresh data; and every candidate built but never served (a migration in progress).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import lancedb

from embedding_assets import settings, store
from embedding_assets.registry import ModelRegistry
from embedding_assets.serving import ServingPointer

Role = Literal["served", "previous", "candidate"]


def retention() -> timedelta:
    """How long a replaced version stays live (EMBEDDING_ASSETS_RETENTION_HOURS, default 7 days)."""
    return timedelta(hours=float(os.environ.get("EMBEDDING_ASSETS_RETENTION_HOURS", "168")))


@dataclass(frozen=True)
class LiveVersion:
    id: str
    role: Role


def live_versions(
    db: lancedb.DBConnection, pointer: ServingPointer, registry: ModelRegistry, now: datetime | None = None
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
            and now - served.serving_since < retention()
        ):
            live.append(LiveVersion(previous.version, "previous"))
    ever_served = {s.version for s in pointer.history()}
    tables = set(store.table_names(db))
    live += [
        LiveVersion(v.id, "candidate")
        for v in registry.versions
        if v.id not in ever_served and settings.index_table(v.id) in tables
    ]
    return live
