"""Search the served index (or any built version) with the exact model that built it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lancedb
import numpy as np

from embedding_assets import settings, store
from embedding_assets.embedders import Embedder, embedder_for
from embedding_assets.registry import ModelRegistry, ModelVersion, load_registry
from embedding_assets.serving import ServingPointer, ServingState

HIT_COLUMNS = [
    "doc_id",
    "chunk_id",
    "chunk_ordinal",
    "text",
    "source_uri",
    "doc_checksum",
    "chunk_hash",
    "model_version",
    "model_fingerprint",
    "pipeline_config_hash",
    "embedded_at",
    "indexed_at",
]


class EncoderMismatchError(RuntimeError):
    """The query encoder is not the model that produced the table's vectors."""


class ServedStateMissingError(RuntimeError):
    """The table version a serving state names no longer exists as it was served."""


@dataclass(frozen=True)
class SearchResult:
    model_version: str
    model_fingerprint: str
    table_version: int
    hits: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "model_fingerprint": self.model_fingerprint,
            "table_version": self.table_version,
            "hits": [
                {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in h.items()}
                for h in self.hits
            ],
        }


class Searcher:
    """A table of one version opened once, queried with that version's verified encoder."""

    def __init__(self, db: lancedb.DBConnection, version: ModelVersion, table_version: int | None = None):
        self.version = version
        self.embedder: Embedder = embedder_for(version)
        self.table = db.open_table(settings.index_table(version.id))
        if table_version is not None:
            self.table.checkout(table_version)
        self._refuse_foreign_vectors()

    def _refuse_foreign_vectors(self) -> None:
        fp = self.embedder.fingerprint
        foreign = (
            self.table.search()
            .where(f"model_fingerprint != {store.sql_literal(fp)}")
            .select(["chunk_id", "model_fingerprint"])
            .limit(1)
            .to_list()
        )
        if foreign:
            raise EncoderMismatchError(
                f"table {self.table.name} holds vectors of fingerprint {foreign[0]['model_fingerprint']} "
                f"(e.g. {foreign[0]['chunk_id']}), but version {self.version.id!r} encodes with {fp}; "
                "refusing to compare vectors from different spaces"
            )

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.embedder.encode_queries(queries)

    def search_vector(
        self, vector: np.ndarray, k: int, columns: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Top-k rows by cosine similarity, best first, with `columns` (default: every provenance column)."""
        rows = (
            self.table.search(vector)
            .metric("cosine")
            .select([*(columns or HIT_COLUMNS), "_distance"])
            .limit(k)
            .to_list()
        )
        for row in rows:
            row["score"] = round(1.0 - float(row.pop("_distance")), 6)
        return rows

    def search(self, query: str, k: int = 10) -> SearchResult:
        hits = self.search_vector(self.encode_queries([query])[0], k)
        return SearchResult(self.version.id, self.embedder.fingerprint, self.table.version, hits)


def searcher_for_state(
    state: ServingState, db: lancedb.DBConnection | None = None, registry: ModelRegistry | None = None
) -> Searcher:
    """A searcher for a serving state: its version's pinned model, at the exact Lance table version."""
    version = (registry or load_registry()).get(state.version)
    if version.pinned_fingerprint() != state.model_fingerprint:
        raise EncoderMismatchError(
            f"served version {state.version!r} was built with {state.model_fingerprint}, "
            f"but the registry now pins {version.pinned_fingerprint()}; re-materialize and promote it"
        )
    try:
        searcher = Searcher(db or store.connect(), version, state.table_version)
    except (ValueError, OSError) as exc:  # Lance cannot check out that version any more
        raise ServedStateMissingError(f"{state.table} v{state.table_version} is gone: {exc}") from exc
    committed = store.version_committed_at(searcher.table, state.table_version)
    if state.table_committed_at is not None and committed != state.table_committed_at:
        raise ServedStateMissingError(
            f"{state.table} v{state.table_version} was committed at {committed}, but the state served "
            f"was committed at {state.table_committed_at}: the table was recreated since"
        )
    return searcher


def served_searcher(
    db: lancedb.DBConnection | None = None,
    pointer: ServingPointer | None = None,
    registry: ModelRegistry | None = None,
) -> Searcher:
    """A searcher for what the serving pointer names, at the exact Lance table version it pins."""
    return searcher_for_state((pointer or ServingPointer()).require_current(), db, registry)


def search(query: str, k: int = 10, **kwargs: Any) -> SearchResult:
    """Top-k chunks for `query` from the served index, best first, each with its provenance."""
    return served_searcher(**kwargs).search(query, k)
