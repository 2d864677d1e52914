"""Search filters, structured and typed: a document id prefix, a source prefix and a time range on when
the vectors were made. They become LanceDB expressions (`lancedb.expr`) built from typed literals, so no
text a user gives is ever pasted into a SQL string; a prefix is a key range, which the BTREE on the
column answers without scanning it."""

from __future__ import annotations

import sys
from datetime import UTC

from lancedb.expr import Expr, col, lit
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

MAX_FILTER_CHARS = 1024  # a prefix longer than any key the corpus holds is refused, not scanned for
SURROGATES = range(0xD800, 0xE000)  # not characters: no string holds them, so a bound skips past them


class SearchFilter(BaseModel):
    """Which rows a search may return; every field left out matches every row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    doc_id_prefix: str | None = Field(None, min_length=1, max_length=MAX_FILTER_CHARS)
    source_prefix: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_FILTER_CHARS,
        description="of source_uri (file:///..., postgresql://...)",
    )
    embedded_after: AwareDatetime | None = Field(None, description="vectors made at or after (with a zone)")
    embedded_before: AwareDatetime | None = Field(None, description="vectors made before (with a zone)")

    @model_validator(mode="after")
    def _a_range_that_holds_something(self) -> SearchFilter:
        if self.embedded_after and self.embedded_before and self.embedded_after >= self.embedded_before:
            raise ValueError("embedded_after must be earlier than embedded_before")
        return self

    def expression(self) -> Expr | None:
        """The filter as one LanceDB expression (None: no filter)."""
        parts = [
            *_prefix("doc_id", self.doc_id_prefix),
            *_prefix("source_uri", self.source_prefix),
        ]
        if self.embedded_after is not None:
            parts.append(col("embedded_at") >= lit(_utc(self.embedded_after)))
        if self.embedded_before is not None:
            parts.append(col("embedded_at") < lit(_utc(self.embedded_before)))
        if not parts:
            return None
        combined = parts[0]
        for part in parts[1:]:
            combined = combined & part
        return combined


def _prefix(column: str, prefix: str | None) -> list[Expr]:
    """`column` starts with `prefix`, as the key range [prefix, the first string after all its
    extensions): strings compare by code point, as their UTF-8 bytes do."""
    if prefix is None:
        return []
    lower = col(column) >= lit(prefix)
    upper = prefix_upper_bound(prefix)
    return [lower] if upper is None else [lower & (col(column) < lit(upper))]


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string that starts with `prefix` (None: there is none, the
    prefix is all U+10FFFF)."""
    text = prefix
    while text:
        last = ord(text[-1]) + 1
        if last in SURROGATES:
            last = SURROGATES.stop
        if last <= sys.maxunicode:
            return text[:-1] + chr(last)
        text = text[:-1]
    return None


def _utc(moment):
    """The moment in UTC without its zone: the expression's timestamp literal carries none, and the
    column holds UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None)
