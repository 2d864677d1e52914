"""Search the served index (or any built version) with the exact model that built it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import lancedb
import numpy as np
from lancedb.expr import col, lit

from embedding_assets.index import ann, lexical, store, tables
from embedding_assets.index.integrity import short_error
from embedding_assets.models.embedders import Embedder, embedder_for
from embedding_assets.models.registry import ModelRegistry, ModelVersion
from embedding_assets.serving import fusion
from embedding_assets.serving.filters import SearchFilter
from embedding_assets.serving.pointer import ServingPointer, ServingState

log = logging.getLogger(__name__)
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


MAX_QUERY_CHARS = 8192  # far beyond what a model reads (max_tokens); refused rather than truncated
MAX_K = 1000


class InvalidSearchError(ValueError):
    """A query or k refused, with the reason; `too_large` for a query over MAX_QUERY_CHARS."""

    def __init__(self, message: str, *, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def checked_request(query: Any, k: Any) -> tuple[str, int]:
    """`query` and `k` as a search takes them, or InvalidSearchError naming what is wrong: a query of
    text that is not blank and at most MAX_QUERY_CHARS long, k an integer from 1 to MAX_K."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidSearchError(f"the query must be non-blank text, not {query!r:.40}")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidSearchError(
            f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS}", too_large=True
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidSearchError(f"k must be an integer from 1 to {MAX_K}, not {k!r:.40}")
    return query, k


def hit_documents(hits: list[dict[str, Any]], limit: int) -> list[str]:
    """The documents of `hits` (rows with a `doc_id`), best first, each once, at most `limit`."""
    return list(dict.fromkeys(hit["doc_id"] for hit in hits))[:limit]


class EncoderMismatchError(RuntimeError):
    """The query encoder is not the model that produced the table's vectors."""


class ServedStateMissingError(RuntimeError):
    """The table version a serving state names no longer exists as it was served."""


class QueryEncoder(Protocol):
    """What turns queries into vectors of a table's space: the version's own embedder, or a bridge."""

    fingerprint: str  # the space the vectors are in: the fingerprint of the table's rows

    def encode_queries(self, queries: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class SearchResult:
    model_version: str
    model_fingerprint: str
    table_version: int
    hits: list[dict[str, Any]]
    bridged_from: dict[str, Any] | None = None  # queries encoded by another model and mapped (bridge)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "model_fingerprint": self.model_fingerprint,
            "table_version": self.table_version,
            **({"bridged_from": self.bridged_from} if self.bridged_from else {}),
            "hits": [
                {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in h.items()}
                for h in self.hits
            ],
        }


# Table states proven to hold only one fingerprint's vectors: (database, table, version, commit time,
# fingerprint). A Lance table version never changes, so the proof is made once per state and process.
_PROVEN_STATES: set[tuple[str, str, int, object, str]] = set()


class Searcher:
    """A table of one version opened once, queried with that version's verified encoder (or `encoder`,
    a bridge into its space, when the queries come from another model)."""

    def __init__(
        self,
        db: lancedb.DBConnection,
        version: ModelVersion,
        table_version: int | None = None,
        encoder: QueryEncoder | None = None,
    ):
        self.version = version
        self.encoder: QueryEncoder = encoder if encoder is not None else embedder_for(version)
        self.table = db.open_table(tables.index_table(version.id))
        if table_version is not None:
            self.table.checkout(table_version)
        # With the version number, the commit time identifies a table state even across a recreated table.
        self.committed_at = store.version_committed_at(self.table, self.table.version)
        state = (
            str(getattr(db, "uri", "")),
            self.table.name,
            self.table.version,
            self.committed_at,
            self.encoder.fingerprint,
        )
        if state not in _PROVEN_STATES:
            self._refuse_foreign_vectors()
            _PROVEN_STATES.add(state)
        self.vector_index = ann.vector_index_name(self.table)  # None: this table state searches exactly
        self._text_index: str | None = None  # a hybrid version's, looked up at its first search

    @property
    def embedder(self) -> Embedder:
        """The version's own embedder (its model loaded on first use when a bridge encodes the queries)."""
        return embedder_for(self.version)

    def _refuse_foreign_vectors(self) -> None:
        """Scan the table once for a row of another fingerprint: vectors of two spaces never mix."""
        fp = self.encoder.fingerprint
        foreign = (
            self.table.search()
            .where(col("model_fingerprint") != lit(fp))
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
        return self.encoder.encode_queries(queries)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int,
        columns: list[str] | None = None,
        where: SearchFilter | None = None,
    ) -> list[dict[str, Any]]:
        """Top-k rows by cosine similarity, best first, with `columns` (default: every provenance column):
        through the table's ANN index when it has one, else exact; only rows `where` matches."""
        return self.search_vectors([vector], k, columns or HIT_COLUMNS, where)[0]

    def search_vectors(
        self, vectors: np.ndarray, k: int, columns: list[str], where: SearchFilter | None = None
    ) -> list[list[dict[str, Any]]]:
        """`search_vector` for many query vectors in one multi-vector query (one plan, one pass over
        the index's partitions for all of them): for each, its top-k rows, best first.

        A filter prefilters (postfiltering loses most of a selective filter's rows); one that matches at
        most ann.EXACT_FILTER_ROWS rows is searched exactly over them."""
        if not len(vectors):
            return []
        query = self.table.search([np.asarray(v, np.float32) for v in vectors]).distance_type("cosine")
        expression = where.expression() if where is not None else None
        if expression is None:
            query = ann.tuned(query, self.vector_index is not None)
        else:  # the count takes SQL: the expression's own rendering, its literals quoted by LanceDB
            matching = self.table.count_rows(expression.to_sql()) if self.vector_index else None
            query = ann.tuned(
                query.where(expression, prefilter=True), self.vector_index is not None, matching
            )
        hits = query.select([*columns, "_distance"]).limit(k).to_arrow()
        owner = [0] * hits.num_rows  # one vector: Lance leaves the query index out
        if "query_index" in hits.column_names:
            owner, hits = hits["query_index"].to_pylist(), hits.drop_columns(["query_index"])
        found: list[list[dict[str, Any]]] = [[] for _ in vectors]
        for i, row in zip(owner, hits.to_pylist(), strict=True):
            row["score"] = round(1.0 - float(row.pop("_distance")), 6)
            found[i].append(row)
        return found

    def search_texts(
        self,
        queries: list[str],
        vectors: np.ndarray,
        k: int,
        columns: list[str],
        where: SearchFilter | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Each query's top-k rows as the version retrieves: by vector (`search_vectors`), or for a
        hybrid version its dense and BM25 candidates fused (`fusion`), each hit's `score` the fused one
        beside its `dense_score` and `bm25` (None where that retriever did not find it)."""
        config = self.version.retrieval
        if config.mode == "dense":
            return self.search_vectors(vectors, k, columns, where)
        if self._text_index is None:  # once per searcher, not per query
            self._text_index = lexical.require_text_index(self.table)
        depth = max(k, config.depth)
        wanted = list(dict.fromkeys([*columns, "chunk_id"]))
        dense = self.search_vectors(vectors, depth, wanted, where)
        expression = where.expression() if where is not None else None
        found = []
        for query, by_vector in zip(queries, dense, strict=True):
            by_text = lexical.lexical_search(self.table, query, depth, wanted, expression)
            rows = {hit["chunk_id"]: {**hit, "dense_score": hit["score"], "bm25": None} for hit in by_vector}
            for hit in by_text:
                rows.setdefault(hit["chunk_id"], {**hit, "dense_score": None})["bm25"] = hit["bm25"]
            fused = fusion.fuse(
                config,
                [(hit["chunk_id"], hit["score"]) for hit in by_vector],
                [(hit["chunk_id"], hit["bm25"]) for hit in by_text],
            )
            found.append([{**rows[key], "score": round(score, 6)} for key, score in fused[:k]])
        return found

    def search(self, query: str, k: int = 10, where: SearchFilter | None = None) -> SearchResult:
        query, k = checked_request(query, k)
        hits = self.search_texts([query], self.encode_queries([query]), k, HIT_COLUMNS, where)[0]
        bridged = getattr(self.encoder, "bridged_from", None)
        return SearchResult(self.version.id, self.encoder.fingerprint, self.table.version, hits, bridged)


def searcher_for_state(
    state: ServingState,
    db: lancedb.DBConnection,
    registry: ModelRegistry,
    encoder: QueryEncoder | None = None,
) -> Searcher:
    """A searcher for a serving state: its version's pinned model (or `encoder`, a bridge into its
    space), at the exact Lance table version."""
    version = registry.get(state.version)
    if version.pinned_fingerprint() != state.model_fingerprint:
        raise EncoderMismatchError(
            f"served version {state.version!r} was built with {state.model_fingerprint}, "
            f"but the registry now pins {version.pinned_fingerprint()}; re-materialize and promote it"
        )
    try:
        searcher = Searcher(db, version, state.table_version, encoder)
    except (ValueError, OSError) as exc:  # Lance cannot check out that version any more
        raise ServedStateMissingError(f"{state.table} v{state.table_version} is gone: {exc}") from exc
    committed = searcher.committed_at
    if state.table_committed_at is not None and committed != state.table_committed_at:
        raise ServedStateMissingError(
            f"{state.table} v{state.table_version} was committed at {committed}, but the state served "
            f"was committed at {state.table_committed_at}: the table was recreated since"
        )
    return searcher


def served_searcher(db: lancedb.DBConnection, pointer: ServingPointer, registry: ModelRegistry) -> Searcher:
    """A searcher for what the serving pointer names, at the exact Lance table version it pins."""
    return searcher_for_state(pointer.require_current(), db, registry)


STORAGE_ERRORS = ("LanceError(IO)", "lance error: Not found")  # how Lance reports a missing or short file


def is_storage_damage(exc: BaseException) -> bool:
    """Whether `exc` says the table state cannot be read (a missing or short data file, a version gone)."""
    text = str(exc)
    return isinstance(exc, OSError | ServedStateMissingError) or any(m in text for m in STORAGE_ERRORS)


class ServedSearch:
    """Search what is served, keeping the searcher (model, open table) between queries and following the
    pointer: when serving moves, the next query opens the new state; a query never mixes two states.

    When the served table version cannot be read (a data file deleted or truncated), queries are answered
    from the newest earlier state of the serving history that reads whole, and `fallback` says so; the
    next pointer move (a `repair`, then a refresh) ends it."""

    def __init__(self, db: lancedb.DBConnection, pointer: ServingPointer, registry: ModelRegistry):
        self.db, self.pointer, self.registry = db, pointer, registry
        self._state: tuple[str, int, int] | None = None
        self._searcher: Searcher | None = None
        self.fallback: dict[str, Any] | None = None

    def searcher(self) -> Searcher:
        state = self.pointer.require_current()
        key = (state.version, state.table_version, state.seq)
        if self._searcher is None or key != self._state:
            self._searcher, self._state = self._open(state), key
        return self._searcher

    def search(self, query: str, k: int = 10, where: SearchFilter | None = None) -> SearchResult:
        """Top-k chunks for `query` from the served index, best first, each with its provenance; only
        rows `where` matches."""
        searcher = self.searcher()
        try:
            return searcher.search(query, k, where)
        except Exception as exc:
            if not is_storage_damage(exc) or self.fallback is not None:
                raise
            self._searcher = self._fall_back(self.pointer.require_current(), exc)
            return self._searcher.search(query, k, where)

    def _open(self, state: ServingState) -> Searcher:
        try:
            searcher = searcher_for_state(state, self.db, self.registry)
        except Exception as exc:
            if not is_storage_damage(exc):
                raise
            return self._fall_back(state, exc)
        self.fallback = None
        return searcher

    def _fall_back(self, state: ServingState, damage: BaseException) -> Searcher:
        """A searcher on the newest earlier history state that reads back whole; `damage` if none does."""
        for earlier in reversed(self.pointer.history()):
            if (earlier.table, earlier.table_version) == (state.table, state.table_version):
                continue
            try:
                searcher = searcher_for_state(earlier, self.db, self.registry)
                searcher.search_vector(np.zeros(searcher.version.dimension, np.float32) + 1.0, 1)
            except Exception as exc:
                if is_storage_damage(exc):
                    continue
                raise
            self.fallback = {
                "served": f"{state.version} v{state.table_version}",
                "damage": short_error(damage),
                "answering_from": f"{earlier.version} v{earlier.table_version} (history #{earlier.seq})",
            }
            log.warning(
                "serving %(served)s cannot be read (%(damage)s); answering from %(answering_from)s",
                self.fallback,
            )
            return searcher
        raise damage
