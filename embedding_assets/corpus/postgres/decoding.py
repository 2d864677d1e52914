"""test_decoding's text output: which ids of the table changed, in commit order."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

KEY_COLUMN = "id"
UNCHANGED_TOAST = "unchanged-toast-datum"

ChangeKind = Literal["insert", "update", "delete"]
_LSN = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")
_BEGIN = re.compile(r"BEGIN(?: \d+)?")
_COMMIT = re.compile(r"COMMIT(?: \d+)?(?: \(at (?P<at>[^)]*)\))?")


class ResyncRequired(RuntimeError):
    """The stream holds a change that names no ids (TRUNCATE, or a DELETE without a key): reload from a
    snapshot (drop the slot, then ensure_slot() and snapshot() again)."""


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    doc_id: str
    lsn: str
    committed_at: datetime | None


@dataclass(frozen=True)
class ChangeBatch:
    """Committed changes to the table, in commit order; `end_lsn` is where to advance the slot once they
    are applied (None: nothing to advance). `resync`: the stream holds a change that names no ids
    (TRUNCATE), so the next read reloads the table from a snapshot."""

    changes: list[Change]
    end_lsn: str | None
    resync: bool = False

    def net(self) -> tuple[set[str], set[str]]:
        """(ids to upsert, ids to delete): the last change to an id wins."""
        upserted: set[str] = set()
        deleted: set[str] = set()
        for change in self.changes:
            if change.kind == "delete":
                deleted.add(change.doc_id)
                upserted.discard(change.doc_id)
            else:
                upserted.add(change.doc_id)
                deleted.discard(change.doc_id)
        return upserted, deleted


def lsn_value(lsn: str) -> int:
    if not _LSN.fullmatch(lsn):
        raise ValueError(f"not an LSN: {lsn!r}")
    high, low = lsn.split("/")
    return int(high, 16) << 32 | int(low, 16)


def _read_quoted(text: str, i: int, quote: str, what: str) -> tuple[str, int]:
    """The quoted text starting at text[i] (a doubled quote stands for one) and the index after it."""
    parts, j = [], i + 1
    while (k := text.find(quote, j)) >= 0:
        parts.append(text[j:k])
        if not text.startswith(quote, k + 1):
            return "".join(parts), k + 1
        parts.append(quote)
        j = k + 2
    raise ValueError(f"unterminated quoted {what} at {text[i : i + 40]!r}")


def _read_identifier(text: str, i: int, stops: str) -> tuple[str, int]:
    """An identifier at text[i:]: "double-quoted" with "" escapes, or a bare run up to a stop character."""
    if text.startswith('"', i):
        return _read_quoted(text, i, '"', "identifier")
    j = i
    while j < len(text) and text[j] not in stops:
        j += 1
    if j == i:
        raise ValueError(f"expected an identifier at {text[i : i + 40]!r}")
    return text[i:j], j


def split_table_name(table: str) -> tuple[str | None, str]:
    """`name` or `schema.name`; parts are taken literally, and a part with a dot is double-quoted."""
    parts, i = [], 0
    while True:
        part, i = _read_identifier(table, i, '."')
        parts.append(part)
        if i == len(table):
            break
        if table[i] != "." or len(parts) == 2:
            raise ValueError(f"table {table!r}: expected name or schema.name (double-quote a part with dots)")
        i += 1
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _read_value(text: str, i: int) -> tuple[str | None, int]:
    if text.startswith("'", i):
        return _read_quoted(text, i, "'", "value")
    end = text.find(" ", i)
    end = len(text) if end < 0 else end
    token = text[i:end]
    return (None if token == "null" else token), end


def _read_tuple(text: str, i: int) -> tuple[dict[str, str | None], int]:
    """` name[type]:value` pairs from text[i:] up to the end or ` new-tuple:`."""
    values: dict[str, str | None] = {}
    while i < len(text) and not text.startswith(" new-tuple:", i):
        if text[i] != " ":
            raise ValueError(f"expected a column at {text[i : i + 40]!r}")
        name, i = _read_identifier(text, i + 1, "[ ")
        if not text.startswith("[", i):
            raise ValueError(f"expected [type] after column {name!r}")
        depth, quoted = 0, False
        for j in range(i, len(text)):
            ch = text[j]
            if ch == '"':
                quoted = not quoted
            elif not quoted and ch in "[]":
                depth += 1 if ch == "[" else -1
                if depth == 0:
                    break
        else:
            raise ValueError(f"unterminated type of column {name!r}")
        if not text.startswith(":", j + 1):
            raise ValueError(f"expected ':' after the type of column {name!r}")
        values[name], i = _read_value(text, j + 2)
    return values, i


def _key(values: dict[str, str | None], line: str) -> str:
    key = values.get(KEY_COLUMN)
    if key is None or key == UNCHANGED_TOAST:
        raise ValueError(f"no {KEY_COLUMN!r} value in {line[:120]!r}")
    return key


@dataclass(frozen=True)
class DecodedLine:
    """One line of test_decoding output: BEGIN, COMMIT, or a table's change (OTHER: anything else)."""

    op: Literal["BEGIN", "COMMIT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "OTHER"]
    tables: tuple[tuple[str, str], ...] = ()
    committed_at: datetime | None = None
    rest: str = ""


def decode_line(line: str) -> DecodedLine:
    """The line's kind, its (schema, table) names and the unparsed tuple part."""
    if _BEGIN.fullmatch(line):
        return DecodedLine("BEGIN")
    if commit := _COMMIT.fullmatch(line):
        return DecodedLine("COMMIT", committed_at=_timestamp(commit["at"]))
    if not line.startswith("table "):
        return DecodedLine("OTHER")
    tables, i = [], len("table ")
    while True:
        schema, i = _read_identifier(line, i, '.:," ')
        if not line.startswith(".", i):
            raise ValueError(f"expected schema.table in {line[:120]!r}")
        name, i = _read_identifier(line, i + 1, '.:," ')
        tables.append((schema, name))
        if line.startswith(": ", i):
            break
        if not line.startswith(", ", i):
            raise ValueError(f"cannot parse table names in {line[:120]!r}")
        i += 2
    op, _, rest = line[i + 2 :].partition(":")
    if op not in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
        raise ValueError(f"unknown operation {op!r} in {line[:120]!r}")
    return DecodedLine(cast(Any, op), tuple(tables), rest=rest)


def _timestamp(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text).astimezone(UTC) if text else None
    except ValueError:
        return None


def changes_of(decoded: DecodedLine, line: str) -> list[tuple[ChangeKind, str]]:
    """The (kind, id) changes a table's INSERT, UPDATE or DELETE line makes; a key change is a delete of
    the old id and an update of the new one."""
    rest = decoded.rest
    if decoded.op == "TRUNCATE" or rest == " (no-tuple-data)":
        raise ResyncRequired(f"{decoded.op} without row keys in the change stream: {line[:120]!r}")
    if decoded.op == "INSERT":
        return [("insert", _key(_read_tuple(rest, 0)[0], line))]
    if decoded.op == "DELETE":
        return [("delete", _key(_read_tuple(rest, 0)[0], line))]
    old_key = None
    if rest.startswith(" old-key:"):
        old, i = _read_tuple(rest, len(" old-key:"))
        old_key = _key(old, line)
        rest = rest[i + len(" new-tuple:") :]
    new_key = _key(_read_tuple(rest, 0)[0], line)
    if old_key is not None and old_key != new_key:
        return [("delete", old_key), ("update", new_key)]
    return [("update", new_key)]


def collect(rows: Iterable[tuple[str, str]], table: tuple[str, str]) -> tuple[list[Change], str | None, bool]:
    """Changes to `table` from (lsn, data) rows, whole transactions only: (changes, last COMMIT's LSN,
    whether the rows ended inside a transaction)."""
    changes: list[Change] = []
    pending: list[tuple[ChangeKind, str, str]] = []
    last_commit: str | None = None
    open_txn = False
    for lsn, line in rows:
        decoded = decode_line(line)
        if decoded.op == "BEGIN":
            pending, open_txn = [], True
        elif decoded.op == "COMMIT":
            changes += [Change(kind, doc_id, at, decoded.committed_at) for kind, doc_id, at in pending]
            pending, open_txn, last_commit = [], False, lsn
        elif table in decoded.tables:
            pending += [(kind, doc_id, lsn) for kind, doc_id in changes_of(decoded, line)]
    return changes, last_commit, open_txn
