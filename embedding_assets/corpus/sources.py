"""Corpus sources: a folder of text files, or a BEIR-format dataset. Bad documents are quarantined."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISLNK, S_ISREG
from typing import NamedTuple, Protocol

MAX_DOCUMENT_BYTES = 2_000_000
CORPUS_SUFFIXES = (".md", ".txt", ".rst", ".py")
# A longer run without whitespace is encoded or minified data: the tokenizer reads it as one unknown token,
# so the chunk would be that run with a vector that says nothing about it.
MAX_RUN_CHARS = 10_000
_LONG_RUN = re.compile(rf"(?<!\S)\S{{{MAX_RUN_CHARS + 1},}}")  # from a run's start only: linear
# Byte-order marks of encodings other than UTF-8, longest first (UTF-32 LE's begins with UTF-16 LE's).
# Such a file is refused, not decoded: binary data that happens to begin with FF FE decodes as UTF-16
# into plausible CJK text, so a mark alone is no evidence of text.
_FOREIGN_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32 LE"),
    (codecs.BOM_UTF32_BE, "UTF-32 BE"),
    (codecs.BOM_UTF16_LE, "UTF-16 LE"),
    (codecs.BOM_UTF16_BE, "UTF-16 BE"),
)


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str
    source_uri: str
    updated_at: datetime
    mtime_ns: int | None = None
    size: int | None = None  # bytes as stored at the source, when they differ from the text's UTF-8

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def stored_size(self) -> int:
        """What a scan sees: the file's size (a byte-order mark, CRLF or UTF-16 included)."""
        return len(self.text.encode("utf-8")) if self.size is None else self.size


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


class Manifest(Mapping[str, ManifestEntry]):
    """doc_id -> ManifestEntry of every stored document, each entry made when looked up. A folder scan
    compares each file's (size, mtime_ns) with `stat`, so only a file that moved needs its entry: making
    all 90,000 entries up front took 0.2 s."""

    def __init__(self, doc_ids: list[str], checksums: list[str], sizes: list, mtimes_ns: list):
        self._stats = dict(zip(doc_ids, zip(sizes, mtimes_ns, strict=True), strict=True))
        self._checksums = dict(zip(doc_ids, checksums, strict=True))

    @classmethod
    def of(cls, entries: Mapping[str, ManifestEntry]) -> Manifest:
        """`entries` as a Manifest (itself when it is one)."""
        if isinstance(entries, Manifest):
            return entries
        ids = list(entries)
        return cls(ids, *([getattr(entries[i], f) for i in ids] for f in ManifestEntry._fields))

    def stat(self, doc_id: str) -> tuple[int | None, int | None] | None:
        """The (size, mtime_ns) stored for `doc_id`, or None when it is not stored."""
        return self._stats.get(doc_id)

    def __getitem__(self, doc_id: str) -> ManifestEntry:
        return ManifestEntry(self._checksums[doc_id], *self._stats[doc_id])

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._checksums

    def __iter__(self) -> Iterator[str]:
        return iter(self._checksums)

    def __len__(self) -> int:
        return len(self._checksums)


@dataclass(frozen=True)
class Quarantined:
    """A document the pipeline refused, with the reason a person can act on. A refused document keeps its
    last good version, unless `forget`: it never should have been read (a link out of the corpus root)."""

    doc_id: str
    source_uri: str
    reason: str
    forget: bool = False


def problem(text: str) -> str | None:
    """Why a decoded text cannot be indexed, or None."""
    if "\x00" in text:
        return "contains NUL bytes (binary file?)"
    if not text.strip():
        return "empty or whitespace-only"
    if run := _LONG_RUN.search(text):
        line = text.count("\n", 0, run.start()) + 1
        return (
            f"a run of {run.end() - run.start():,} characters without whitespace at line {line} (at most "
            f"{MAX_RUN_CHARS:,}): encoded or minified data, which a model reads as one unknown token"
        )
    return None


def too_large(size: int, what: str = "exceeds") -> str:
    """The quarantine reason for a document over MAX_DOCUMENT_BYTES (`size`: at least that many bytes)."""
    return f"{size:,} bytes {what} the {MAX_DOCUMENT_BYTES:,}-byte document limit; not read"


def decoded(data: bytes) -> str:
    """A file's UTF-8 text, a leading byte-order mark dropped, newlines made `\\n` (as text mode reads).

    Raises UnicodeDecodeError, its `reason` saying what the bytes are instead.
    """
    for mark, name in _FOREIGN_MARKS:
        if data.startswith(mark):
            raise UnicodeDecodeError(
                "utf-8", data, 0, len(mark), f"a {name} byte-order mark: not UTF-8; save it as UTF-8"
            )
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        exc.reason = f"not valid UTF-8 at byte {skip + exc.start}"
        raise
    return text.replace("\r\n", "\n").replace("\r", "\n")


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
            if not isinstance(found, Quarantined)
        }

    def refused(self) -> dict[str, str]:
        """doc_id -> why, for each corpus file that is listed but not read (a link out of the root, broken
        or in a loop; a name that is not UTF-8; a file gone before it was looked at)."""
        return {doc_id: found.reason for doc_id, _, found in self._files() if isinstance(found, Quarantined)}

    def read(self, known: Manifest | None = None) -> Iterator[SourceItem]:
        stored = Manifest.of(known or {}).stat
        for doc_id, path, found in self._files():
            if isinstance(found, Quarantined):
                yield found
                continue
            size, mtime_ns = found.st_size, found.st_mtime_ns
            if stored(doc_id) == (size, mtime_ns):
                yield Unchanged(doc_id)
            else:
                yield self._read_one(Path(path), doc_id, size, mtime_ns)

    def _files(self) -> Iterator[tuple[str, os.PathLike, os.stat_result | Quarantined]]:
        """(doc_id, in-root file to read, its stat) per corpus file, or (doc_id, the file, why it is not
        read), in path order. One lstat per file: a folder of 90,000 files is scanned in a second or two."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"corpus folder {self.root} does not exist; run `embedding-assets seed`")
        root = self.root.resolve()
        for doc_id, entry in _walk(str(root), ""):
            if os.path.splitext(entry.name)[1] not in self.suffixes:
                continue
            if not _is_utf8(doc_id):
                shown = os.fsencode(doc_id).decode("utf-8", "backslashreplace")
                why = "file name is not valid UTF-8; not read"
                yield shown, entry, Quarantined(shown, _uri(entry), why, True)
                continue
            try:
                if entry.is_symlink():
                    try:
                        path = _resolve_inside(Path(entry.path), root)
                    except _Refused as refused:
                        yield doc_id, entry, Quarantined(doc_id, _uri(entry), str(refused), forget=True)
                        continue
                    found = path.stat(follow_symlinks=False)
                else:  # a Path and a URI only for what is read or refused: 90,000 of each cost 0.4 s
                    path, found = entry, entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                yield doc_id, entry, Quarantined(doc_id, _uri(entry), VANISHED)
                continue
            if S_ISREG(found.st_mode):
                yield doc_id, path, found

    def _read_one(self, path: Path, doc_id: str, size: int, mtime_ns: int) -> Document | Quarantined:
        uri = path.as_uri()
        if size > MAX_DOCUMENT_BYTES:
            return Quarantined(doc_id, uri, too_large(size))
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_DOCUMENT_BYTES + 1)  # it may have grown since its stat
        except FileNotFoundError:
            return Quarantined(doc_id, uri, VANISHED)
        except OSError as exc:
            return Quarantined(doc_id, uri, f"not readable: {exc.strerror}")
        if len(data) > MAX_DOCUMENT_BYTES:
            return Quarantined(doc_id, uri, too_large(len(data), "grew past"))
        try:
            text = decoded(data)
        except UnicodeDecodeError as exc:
            return Quarantined(doc_id, uri, exc.reason)
        if reason := problem(text):
            return Quarantined(doc_id, uri, reason)
        title = text.lstrip().split("\n", 1)[0].lstrip("# ").strip()[:200]
        mtime = datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC)
        return Document(doc_id, title, text, uri, mtime, mtime_ns, len(data))


def _uri(entry: os.DirEntry) -> str:
    return Path(entry.path).as_uri()


VANISHED = "vanished between the folder listing and its read; its last version is kept until a pass sees it"


def _is_utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (the surrogates os.scandir decodes them to)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        first_line: dict[str, int] = {}
        with open(self.corpus_path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                uri, where = f"{self.uri}#L{line_no}", f"line:{line_no}"
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    doc_id, title, body = (
                        str(record["_id"]),
                        record.get("title") or "",
                        record.get("text") or "",
                    )
                    if not isinstance(title, str) or not isinstance(body, str):
                        raise TypeError("title and text must be strings")
                except UnicodeDecodeError as exc:
                    yield Quarantined(where, uri, f"not valid UTF-8 at byte {exc.start} of the line")
                    continue
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                    yield Quarantined(where, uri, f"malformed corpus record: {exc!r:.200}")
                    continue
                if doc_id in first_line:
                    yield Quarantined(
                        where, uri, f"duplicate _id {doc_id!r:.100}: line {first_line[doc_id]} has it; kept"
                    )
                    continue
                first_line[doc_id] = line_no
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
