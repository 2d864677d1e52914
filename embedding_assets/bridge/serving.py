"""Serving in bridge mode: queries encoded by the new model, mapped by a stored bridge that passed its
gate, and searched in the old version's index; the old model itself is never loaded."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np

from embedding_assets.bridge.store import StoredBridge, load_bridge
from embedding_assets.models.embedders import embedder_for
from embedding_assets.models.registry import ModelRegistry
from embedding_assets.serving.pointer import ServingPointer
from embedding_assets.serving.search import Searcher, searcher_for_state


class BridgedEncoder:
    """A `QueryEncoder` into the old space: the new version's embedder, then the bridge's map."""

    def __init__(self, stored: StoredBridge, registry: ModelRegistry):
        self.bridge = stored.bridge
        self.embedder = embedder_for(registry.get(stored.record["new"]))
        self.fingerprint: str = stored.record["old_fingerprint"]
        self.bridged_from = {
            key: stored.record[key] for key in ("new", "new_fingerprint", "method", "samples", "retention")
        }

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.bridge.apply(self.embedder.encode_queries(queries))


def bridged_searcher(
    db: lancedb.DBConnection,
    registry: ModelRegistry,
    folder: Path,
    old: str,
    new: str,
    table_version: int | None = None,
) -> Searcher:
    """A searcher of `old`'s index (at `table_version`, default the latest) answering `new`-model
    queries through the stored bridge; BridgeRefusedError when no bridge may serve."""
    encoder = BridgedEncoder(load_bridge(folder, old, new, registry), registry)
    return Searcher(db, registry.get(old), table_version, encoder)


def served_bridged_searcher(
    db: lancedb.DBConnection, pointer: ServingPointer, registry: ModelRegistry, folder: Path, new: str
) -> Searcher:
    """A searcher of what the serving pointer names, answering `new`-model queries through the bridge
    into the served version's space."""
    state = pointer.require_current()
    encoder = BridgedEncoder(load_bridge(folder, state.version, new, registry), registry)
    return searcher_for_state(state, db, registry, encoder)
