"""Corpus sources: a folder of text files, or a BEIR-format dataset. Bad documents are quarantined."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from embedding_assets import settings

MAX_DOCUMENT_BYTES = 2_000_000


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str
    source_uri: str
    updated_at: datetime
    mtime_ns: int | None = None

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Unchanged:
    """A document the source still has, known to be unchanged without reading it (same size and mtime)."""

    doc_id: str


@dataclass(frozen=True)
class Deleted:
    """A document an incremental source reports as gone."""

    doc_id: str


@dataclass(frozen=True)
class ManifestEntry:
    """What the corpus stage last stored for a document: enough to skip reading it if unchanged."""

    checksum: str
    size: int | None
    mtime_ns: int | None


Manifest = dict[str, ManifestEntry]


@dataclass(frozen=True)
class Quarantined:
    """A document the pipeline refused, with the reason a person can act on."""

    doc_id: str
    source_uri: str
    reason: str


def problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains NUL bytes (binary file?)"
    if not text.strip():
        return "empty or whitespace-only"
    return None


class FolderSource:
    """Text files under a folder; a document's id is its path relative to the folder.

    A complete listing: a file that is gone is a deleted document. A file whose size and mtime match the
    manifest is not read at all, so a pass over an unchanged folder costs one stat per file.
    """

    complete = True

    def __init__(self, root: Path, suffixes: tuple[str, ...] = settings.CORPUS_SUFFIXES):
        self.root = root
        self.suffixes = suffixes

    @property
    def uri(self) -> str:
        return self.root.resolve().as_uri()

    def scan(self) -> dict[str, tuple[int, int]]:
        """doc_id -> (size, mtime_ns) of every corpus file: the cheap scan sensors compare."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"corpus folder {self.root} does not exist; run `embedding-assets seed`")
        found = {}
        for path in sorted(self.root.rglob("*")):
            if path.suffix in self.suffixes and path.is_file():
                stat = path.stat()
                found[path.relative_to(self.root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return found

    def read(self, known: Manifest | None = None) -> Iterator[SourceItem]:
        known = known or {}
        for doc_id, (size, mtime_ns) in self.scan().items():
            entry = known.get(doc_id)
            if entry is not None and (entry.size, entry.mtime_ns) == (size, mtime_ns):
                yield Unchanged(doc_id)
            else:
                yield self._read_one(self.root / doc_id, doc_id, size, mtime_ns)

    def _read_one(self, path: Path, doc_id: str, size: int, mtime_ns: int) -> Document | Quarantined:
        uri = path.resolve().as_uri()
        if size > MAX_DOCUMENT_BYTES:
            return Quarantined(
                doc_id, uri, f"{size} bytes exceeds the {MAX_DOCUMENT_BYTES}-byte document limit"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            return Quarantined(doc_id, uri, f"not valid UTF-8 at byte {exc.start}")
        if reason := problem(text):
            return Quarantined(doc_id, uri, reason)
        title = text.lstrip().split("\n", 1)[0].lstrip("# ").strip()[:200]
        mtime = datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC)
        return Document(doc_id, title, text, uri, mtime, mtime_ns)


class BeirSource:
    """A BEIR dataset folder: corpus.jsonl with `_id`, `title`, `text` (queries and qrels beside it)."""

    complete = True

    def __init__(self, root: Path):
        self.root = root
        self.corpus_path = root / "corpus.jsonl"

    @property
    def uri(self) -> str:
        return self.corpus_path.resolve().as_uri()

    def read(self, known: Manifest | None = None) -> Iterator[SourceItem]:
        if not self.corpus_path.is_file():
            raise FileNotFoundError(f"{self.corpus_path} not found: a BEIR dataset needs corpus.jsonl")
        mtime = datetime.fromtimestamp(self.corpus_path.stat().st_mtime, tz=UTC)
        with open(self.corpus_path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                uri = f"{self.uri}#L{line_no}"
                try:
                    record = json.loads(line)
                    doc_id, title, body = (
                        str(record["_id"]),
                        record.get("title") or "",
                        record.get("text") or "",
                    )
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    yield Quarantined(f"line:{line_no}", uri, f"malformed corpus record: {exc}")
                    continue
                text = f"{title}\n\n{body}" if title else body
                if reason := problem(text):
                    yield Quarantined(doc_id, uri, reason)
                else:
                    yield Document(doc_id, title, text, uri, mtime)

    def checksum(self) -> str:
        from embedding_assets.fingerprint import file_sha256

        return file_sha256(self.corpus_path)


SourceItem = Document | Quarantined | Unchanged | Deleted


class Source(Protocol):
    """Where documents come from. `complete` sources list everything; incremental ones list changes."""

    complete: bool

    @property
    def uri(self) -> str: ...

    def read(self, known: Manifest | None = None) -> Iterator[SourceItem]: ...


def source_from(kind: str, path: Path) -> FolderSource | BeirSource:
    if kind == "folder":
        return FolderSource(path)
    if kind == "beir":
        return BeirSource(path)
    raise ValueError(f"unknown corpus source kind {kind!r}; expected 'folder' or 'beir'")
