"""BM25 over chunk text for hybrid versions: LanceDB's native full-text (inverted) index on `text`.

Rows written after the index was built are still searched (Lance scans them beside the index), so a
refresh never hides new text; they are folded into the index once they are more than
ann.OPTIMIZE_UNINDEXED of the table. The query is matched as plain terms, never parsed as query syntax.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import lancedb
from lancedb.index import FTS

from embedding_assets.index import ann

TEXT_COLUMN = "text"
# English words, lower-cased, ASCII-folded, Porter-stemmed, stop words dropped: what BM25 baselines use.
TEXT_INDEX = FTS(base_tokenizer="simple", language="English", stem=True, remove_stop_words=True)


@dataclass(frozen=True)
class TextIndexState:
    """What `ensure_text_index` left: the index's name, rows not yet in it, and what was done."""

    index: str
    unindexed_rows: int
    action: str  # "created", "optimized" or "current"
    seconds: float

    def to_metadata(self) -> dict:
        return {f"fts_{k}": v for k, v in asdict(self).items()}


def text_index_name(table: lancedb.table.Table) -> str | None:
    """The name of the table's full-text index on its text column, at the version checked out."""
    for config in table.list_indices():
        if TEXT_COLUMN in config.columns and config.index_type.upper() in ("FTS", "INVERTED"):
            return config.name
    return None


def require_text_index(table: lancedb.table.Table) -> str:
    """The name of the table's text index, or LookupError saying how to build it."""
    name = text_index_name(table)
    if name is None:
        raise LookupError(
            f"table {table.name} has no full-text index on {TEXT_COLUMN!r}: materialize the version "
            "again (hybrid versions build it with their index)"
        )
    return name


def ensure_text_index(
    table: lancedb.table.Table, fold_share: float = ann.OPTIMIZE_UNINDEXED
) -> TextIndexState:
    """Build the text index if the table has none; fold unindexed rows in when they are more than
    `fold_share` of the table."""
    started = time.perf_counter()
    name = text_index_name(table)
    action = "current"
    if name is None:
        table.create_index(TEXT_COLUMN, config=TEXT_INDEX)
        table.checkout_latest()
        name, action = text_index_name(table), "created"
    elif ann.unindexed_in(table, name) > fold_share * table.count_rows():
        table.to_lance().optimize.optimize_indices(index_names=[name])
        table.checkout_latest()
        action = "optimized"
    seconds = round(time.perf_counter() - started, 3)
    return TextIndexState(name, ann.unindexed_in(table, name), action, seconds)


def lexical_search(
    table: lancedb.table.Table, query: str, k: int, columns: list[str], where: Any = None
) -> list[dict[str, Any]]:
    """The top-k rows by BM25 of `query` against chunk text, best first, each with its `bm25` score;
    only rows `where` (a LanceDB expression) matches, filtered before ranking. The table needs its text
    index (`require_text_index`)."""
    search = table.search(query, query_type="fts")
    if where is not None:
        search = search.where(where, prefilter=True)
    hits = search.select([*columns, "_score"]).limit(k).to_list()
    for hit in hits:
        hit["bm25"] = round(float(hit.pop("_score")), 6)
    return hits
