"""Corpus sources: a folder of text files, or a BEIR-format dataset. Bad documents are quarantined."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISLNK, S_ISREG
from typing import NamedTuple, Protocol

MAX_DOCUMENT_BYTES = 2_000_000
CORPUS_SUFFIXES = (".md", ".txt", ".rst", ".py")


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


class ManifestEntry(NamedTuple):
    """What the corpus stage last stored for a document: enough to skip reading it if unchanged. A tuple:
    a manifest holds one per document, and 90,000 frozen dataclasses took 0.11-0.16 s to make."""

    checksum: str
    size: int | None
    mtime_ns: int | None


Manifest = dict[str, ManifestEntry]


@dataclass(frozen=True)
class Quarantined:
    """A document the pipeline refused, with the reason a person can act on. A refused document keeps its
    last good version, unless `forget`: it never should have been read (a link out of the corpus root)."""

    doc_id: str
    source_uri: str
    reason: str
    forget: bool = False


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

    Nothing outside the folder is ever read, stat'ed or listed. A symlinked file whose target stays inside
    is read as its target (its size, mtime and content) under the link's own id; one that leads outside,
    nowhere, or round in a loop is refused and quarantined. Symlinked directories are never descended into.
    """

    complete = True

    def __init__(self, root: Path, suffixes: tuple[str, ...] = CORPUS_SUFFIXES):
        self.root = root
        self.suffixes = suffixes

    @property
    def uri(self) -> str:
        return self.root.resolve().as_uri()

    def scan(self) -> dict[str, tuple[int, int]]:
        """doc_id -> (size, mtime_ns) of every readable corpus file: the cheap scan sensors compare."""
        return {
            doc_id: (found.st_size, found.st_mtime_ns)
            for doc_id, _, found in self._files()
            if not isinstance(found, str)
        }

    def refused(self) -> dict[str, str]:
        """doc_id -> why, for each corpus symlink that is not followed (outside the root, broken, a loop)."""
        return {doc_id: found for doc_id, _, found in self._files() if isinstance(found, str)}

    def read(self, known: Manifest | None = None) -> Iterator[SourceItem]:
        known = known or {}
        for doc_id, path, found in self._files():
            if isinstance(found, str):
                yield Quarantined(doc_id, Path(path).as_uri(), found, forget=True)
                continue
            size, mtime_ns = found.st_size, found.st_mtime_ns
            entry = known.get(doc_id)
            if entry is not None and (entry.size, entry.mtime_ns) == (size, mtime_ns):
                yield Unchanged(doc_id)
            else:
                yield self._read_one(Path(path), doc_id, size, mtime_ns)

    def _files(self) -> Iterator[tuple[str, os.PathLike, os.stat_result | str]]:
        """(doc_id, in-root file to read, its stat) per corpus file, or (doc_id, link, why it is refused),
        in path order. One lstat per file: a folder of 90,000 files is scanned in a second or two."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"corpus folder {self.root} does not exist; run `embedding-assets seed`")
        root = self.root.resolve()
        for doc_id, entry in _walk(str(root), ""):
            if os.path.splitext(entry.name)[1] not in self.suffixes:
                continue
            if entry.is_symlink():
                try:
                    path = _resolve_inside(Path(entry.path), root)
                except _Refused as refused:
                    yield doc_id, Path(entry.path), str(refused)
                    continue
                found = path.stat(follow_symlinks=False)
            else:
                path, found = entry, entry.stat(follow_symlinks=False)  # a Path only for what is read
            if S_ISREG(found.st_mode):
                yield doc_id, path, found

    def _read_one(self, path: Path, doc_id: str, size: int, mtime_ns: int) -> Document | Quarantined:
        uri = path.as_uri()
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


def _walk(folder: str, prefix: str) -> Iterator[tuple[str, os.DirEntry]]:
    """(relative path, entry) of everything under `folder`, depth first, names sorted: the order of
    sorted(Path.rglob("*")). Symlinked directories are listed, not entered."""
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    for entry in entries:
        name = prefix + entry.name
        yield name, entry
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, name + "/")


class _Refused(Exception):
    """Why a symlink in the corpus folder is not followed."""


MAX_SYMLINK_HOPS = 40


def _resolve_inside(path: Path, root: Path) -> Path:
    """`path` (under the resolved `root`) with its symlinks followed one hop at a time, touching nothing
    outside `root`: the root's ancestors are real directories, so they are passed through without a look.

    Raises _Refused when a hop leaves the root, a target is missing, or the links loop.
    """
    done, todo, hops = root, list(path.relative_to(root).parts), 0
    while todo:
        part = todo.pop(0)
        step = done.parent if part == ".." else done / part
        if not step.is_relative_to(root):
            if root.is_relative_to(step):
                done = step
                continue
            target = os.path.normpath(step.joinpath(*todo))
            raise _Refused(f"symlink to {target} outside the corpus root; not read")
        try:
            mode = step.lstat().st_mode
        except OSError as exc:
            target = os.path.normpath(step.joinpath(*todo))
            raise _Refused(
                f"broken symlink: target {target} does not exist ({exc.strerror}); not read"
            ) from None
        if not S_ISLNK(mode):
            done = step
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise _Refused(f"symlink loop (more than {MAX_SYMLINK_HOPS} links followed); not read")
        link = Path(os.readlink(step))
        if link.is_absolute():
            done, todo = Path(link.anchor), [*link.parts[1:], *todo]
        else:
            todo = [*link.parts, *todo]
    if not done.is_relative_to(root):
        raise _Refused(f"symlink to {done} outside the corpus root; not read")
    return done


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
        from embedding_assets.models.fingerprint import file_sha256

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
