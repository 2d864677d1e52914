"""FolderSource never reads, stats or descends outside its corpus root, whatever its symlinks say."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import pytest

from embedding_assets.corpus.sources import Document, FolderSource, ManifestEntry, Quarantined, Unchanged

SECRET = "TOP-SECRET-outside-the-corpus"
READABLE = {"guide.md", "alias.md", "back.md", "sub/up.md"}
REFUSED = {
    "leak.md": "outside the corpus root",
    "via_ext.md": "outside the corpus root",
    "gone.md": "outside the corpus root",
    "broken.md": "broken symlink",
    "loop.md": "symlink loop",
}


@pytest.fixture(params=["absolute", "relative"])
def corpus(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A corpus root with a normal file, links that stay inside, and links that leak out or lead nowhere."""
    root, outside = tmp_path / "corpus", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (outside / "docs").mkdir(parents=True)
    (root / "guide.md").write_text("# Guide\n\nThe normal document.\n")
    (outside / "secret.md").write_text(f"# Secret\n\n{SECRET}\n")
    (outside / "docs" / "a.md").write_text(f"# Outside\n\n{SECRET}\n")

    def link(name: str, target: Path) -> None:
        relative = os.path.relpath(target, (root / name).parent)
        (root / name).symlink_to(target if request.param == "absolute" else relative)

    link("leak.md", outside / "secret.md")
    link("gone.md", outside / "missing.md")
    link("ext", outside / "docs")  # a symlinked directory leading outside
    link("via_ext.md", root / "ext" / "a.md")  # an in-root name, but through the outside-bound directory
    link("broken.md", root / "missing.md")
    link("alias.md", root / "guide.md")
    link("sub/up.md", root / "guide.md")
    link("mirror", root / "sub")  # an in-root directory link: not descended either
    (root / "back.md").symlink_to(Path("..") / "corpus" / "guide.md")  # out through the parent and back
    (root / "loop.md").symlink_to("loop.md")
    return root


def test_nothing_outside_the_root_is_indexed(corpus: Path):
    items = list(FolderSource(corpus).read())
    documents = [i for i in items if isinstance(i, Document)]
    assert all(SECRET not in d.text for d in documents)
    assert {d.doc_id for d in documents} == READABLE
    assert all(d.source_uri.startswith(corpus.resolve().as_uri() + "/") for d in documents)
    assert not [i.doc_id for i in items if i.doc_id.startswith(("ext/", "mirror/"))]


@pytest.mark.parametrize(("doc_id", "reason"), REFUSED.items())
def test_refused_links_are_quarantined_with_a_reason(corpus: Path, doc_id: str, reason: str):
    source = FolderSource(corpus)
    quarantined = {i.doc_id: i for i in source.read() if isinstance(i, Quarantined)}
    assert reason in quarantined[doc_id].reason
    assert quarantined[doc_id].source_uri == (corpus.resolve() / doc_id).as_uri()
    assert source.refused()[doc_id] == quarantined[doc_id].reason
    if doc_id == "leak.md":
        assert str(corpus.parent.resolve() / "outside" / "secret.md") in quarantined[doc_id].reason


def test_scan_lists_only_in_root_files(corpus: Path):
    scan = FolderSource(corpus).scan()
    assert set(scan) == READABLE
    assert scan["alias.md"] == scan["guide.md"]  # an in-root link is scanned (and read) as its target


def test_read_skips_unchanged_files_and_still_quarantines_refused_links(corpus: Path):
    source = FolderSource(corpus)
    known = {doc_id: ManifestEntry("x", size, mtime_ns) for doc_id, (size, mtime_ns) in source.scan().items()}
    items = list(source.read(known))
    assert [i for i in items if isinstance(i, Unchanged)] == [Unchanged(d) for d in sorted(READABLE)]
    assert {i.doc_id for i in items if isinstance(i, Quarantined)} == set(REFUSED)
    assert len(items) == len(READABLE) + len(REFUSED)


def test_no_path_outside_the_root_is_touched(corpus: Path, monkeypatch: pytest.MonkeyPatch):
    """Every stat, open, listing and readlink the source makes stays in the root (or its real ancestors)."""
    touched: list[tuple[str, bool]] = []

    def spy(fn, follows: bool):
        def wrapper(path, *args, **kwargs):
            if isinstance(path, str | os.PathLike):
                touched.append((os.fspath(path), follows and kwargs.get("follow_symlinks", True)))
            return fn(path, *args, **kwargs)

        return wrapper

    with monkeypatch.context() as m:
        for name, follows in [("stat", True), ("lstat", False), ("readlink", False), ("scandir", True)]:
            m.setattr(os, name, spy(getattr(os, name), follows))
        m.setattr(io, "open", spy(io.open, True))
        m.setattr(builtins, "open", spy(builtins.open, True))
        source = FolderSource(corpus)
        source.scan()
        list(source.read())
    root = corpus.resolve()
    assert touched
    for path, follows in touched:
        where = Path(os.path.realpath(path) if follows else os.path.abspath(path))
        assert where.is_relative_to(root) or root.is_relative_to(where), (path, where)


def test_a_stored_document_that_becomes_a_link_out_of_the_root_is_forgotten(tmp_path: Path):
    """A refused link does not keep a 'last good version': what it pointed at must never be served."""
    from embedding_assets.corpus.sync import read_manifest, sync_corpus
    from embedding_assets.index import store

    root, outside = tmp_path / "corpus", tmp_path / "outside.md"
    root.mkdir()
    (root / "kept.md").write_text("# Kept\n\nstays in the corpus\n")
    (root / "leak.md").write_text("# Leak\n\nan ordinary document for now\n")
    db = store.connect(tmp_path / "lancedb")
    sync_corpus(db, FolderSource(root))
    assert set(read_manifest(db)) == {"kept.md", "leak.md"}
    outside.write_text(SECRET)
    (root / "leak.md").unlink()
    (root / "leak.md").symlink_to(outside)
    sync = sync_corpus(db, FolderSource(root))
    assert sync.deleted == ["leak.md"] and [q.doc_id for q in sync.quarantined] == ["leak.md"]
    assert set(read_manifest(db)) == {"kept.md"}
