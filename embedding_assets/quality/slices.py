"""Slices of the judged queries, so that a mean over all of them hides no group that got worse: by the
kind of document a query is judged against (the top folder of its id: library page, reference topic,
source file) and by the source those documents came from (the scheme of their URIs: file, postgresql,
beir). A query judged against documents of two kinds is in both slices."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from embedding_assets.corpus.seed import DOCUMENT_KINDS

TOP_LEVEL = "top level"  # a document id without a folder


def document_kind(doc_id: str) -> str:
    folder, separator, _ = doc_id.partition("/")
    if not separator:
        return TOP_LEVEL
    return DOCUMENT_KINDS.get(folder, folder)


def source_kind(source_uri: str) -> str:
    return urlsplit(source_uri).scheme or "unknown"


def query_slices(qrels: Mapping[str, Mapping[str, int]], sources: Mapping[str, str]) -> dict[str, list[str]]:
    """Slice name -> the ids of the queries in it; `sources` maps each judged document id to its source
    URI (a document without one is sliced by kind only)."""
    slices: dict[str, set[str]] = {}
    for query, judged in qrels.items():
        for doc_id in judged:
            slices.setdefault(f"kind: {document_kind(doc_id)}", set()).add(query)
            if doc_id in sources:
                slices.setdefault(f"source: {source_kind(sources[doc_id])}", set()).add(query)
    return {name: sorted(queries) for name, queries in sorted(slices.items())}
