"""Property tests (Hypothesis): the chunker's invariants on any text, and any sequence of corpus changes
converging, incrementally, to the state a fresh build of the final corpus reaches.

Real tokenizer (MiniLM's), real LanceDB on disk; nothing is embedded, so examples stay cheap."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_assets.corpus.sources import FolderSource
from embedding_assets.corpus.sync import sync_corpus
from embedding_assets.index import store, tables
from embedding_assets.index.chunking import Chunker
from embedding_assets.index.chunks import sync_chunks
from embedding_assets.models.registry import ChunkingConfig
from embedding_assets.serving.filters import prefix_upper_bound

# Budgets (chunk tokens, overlap, model limit): the shipped one, and small ones that force every cut.
BUDGETS = [(200, 32, 256), (40, 8, 48), (17, 4, 24)]
WORDS = st.one_of(
    st.sampled_from("the parser returns a list naïve 日本語の文 🙂ok don't e.g. 3.14 --flag".split()),
    st.sampled_from(["foo_bar()", "x" * 60, "Ωmega" * 9, "snake_case_identifier_that_goes_on"]),
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
        min_size=1,
        max_size=14,
    ),
)
SENTENCE_ENDS = st.sampled_from([". ", "? ", ": ", "; ", "\n", "\n\n", " ", "\t", "\r\n", ""])
SENTENCES = st.builds(
    lambda words, end: " ".join(words) + end, st.lists(WORDS, min_size=1, max_size=25), SENTENCE_ENDS
)
LEADS = st.sampled_from(["", "- ", "1. ", "> ", ">>> ", ".. note:: ", "## "])
PARAGRAPHS = st.builds(
    lambda lead, sentences: lead + "".join(sentences), LEADS, st.lists(SENTENCES, max_size=8)
)
PROSE = st.builds(
    lambda title, paragraphs: title + "\n\n".join(paragraphs),
    st.sampled_from(["", "# A title\n\n", "   \n# Title after blank lines\n"]),
    st.lists(PARAGRAPHS, max_size=6),
)
PYTHON = st.builds(
    lambda defs, tail: (
        "\n".join(
            f"def f{i}(a, b={n}):\n"
            + "".join(f"    a = a + {k}  # {word}\n" for k in range(n))
            + "    return a\n"
            for i, (n, word) in enumerate(defs)
        )
        + tail
    ),
    st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["step", "naïve", "x" * 30])), max_size=5),
    st.sampled_from(
        ["", "print(f0(1))\n", "def broken(:\n    pass\n"]
    ),  # a syntax error: one segment, cut at lines
)
RAW = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=600)  # NUL, controls too
DOCUMENTS = st.one_of(
    st.tuples(st.just("page.md"), PROSE),
    st.tuples(st.just("module.py"), PYTHON),
    st.tuples(st.sampled_from(["raw.md", "raw.py"]), RAW),
)
PROPERTY = settings(
    max_examples=int(__import__("os").environ.get("XMAX", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def chunkers(minilm_embedder) -> list[Chunker]:
    return [
        Chunker(minilm_embedder.tokenizer, ChunkingConfig(chunk_tokens=c, overlap_tokens=o), limit)
        for c, o, limit in BUDGETS
    ]


@PROPERTY
@given(document=DOCUMENTS, budget=st.integers(0, len(BUDGETS) - 1))
def test_any_text_is_cut_within_the_limit_in_order_and_can_be_rebuilt(chunkers, document, budget):
    """Token limit (with special tokens), exact token counts, contiguous ordinals, spans that move
    forward, every non-blank character covered, each chunk's text its span (with at most a context line
    before it), and the same chunks whether cut alone or in a batch."""
    chunker = chunkers[budget]
    doc_id, text = document
    chunks = chunker.chunk(doc_id, text)
    assert bool(chunks) == bool(text.strip())
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    starts = [c.char_start for c in chunks]
    assert starts == sorted(set(starts))
    for chunk in chunks:
        ids = chunker.tokenizer.encode(chunk.text, add_special_tokens=False).ids
        assert len(ids) <= chunker.budget, (chunk.text, len(ids))  # with [CLS] and [SEP]: the model's limit
        assert chunk.token_count == len(ids), chunk.text
        body = text[chunk.char_start : chunk.char_end].strip()
        assert body and chunk.text.endswith(body)
        header = chunk.text[: len(chunk.text) - len(body)]
        assert not header or (chunk.ordinal > 0 and header.endswith("\n") and "\n" not in header[:-1])
    covered = bytearray(len(text))
    for chunk in chunks:
        covered[chunk.char_start : chunk.char_end] = b"\x01" * (chunk.char_end - chunk.char_start)
    assert all(covered[i] or ch.isspace() for i, ch in enumerate(text)), "a character no chunk covers"
    other = ("other.md", "A second document in the same batch. " * 5)
    assert chunker.chunk_many([other, document])[1] == chunks


# --- The corpus diff ---------------------------------------------------------------------------------

NAMES = st.sampled_from(
    [f"notes/{n}.md" for n in ("a", "b", "c", "d")]
    + [
        "deep/x/y.md",
        "top.md",
        "notes/it's \"quoted\" ' OR 1=1 --.md",
        "notes/ünïcödé 日本.md",
        "notes/a%_b.md",
    ]
)
BODIES = st.sampled_from(
    [
        "# Harbour\n\nCranes unload at dawn. The tide sets the schedule.\n",
        "# Glacier\n\nIt retreats each summer; the moraine grows.\n",
        "# Orchard\n\n" + "Apples ripen in rows. " * 30,
        "Plain text without a heading, two sentences. Here is the second.\n",
        "# Quarry\n\nStone is cut in blocks.\n\n- one\n- two\n",
    ]
)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), NAMES, BODIES),  # an add, or an edit of a name that exists
        st.tuples(st.just("delete"), NAMES, st.just("")),
        st.tuples(st.just("rename"), NAMES, NAMES),
    ),
    min_size=1,
    max_size=8,
)


def _apply(root: Path, operation: tuple[str, str, str]) -> None:
    kind, name, other = operation
    path = root / name
    if kind == "write":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(other, encoding="utf-8")
    elif kind == "delete":
        path.unlink(missing_ok=True)
    elif path.exists() and name != other:
        (root / other).parent.mkdir(parents=True, exist_ok=True)
        path.replace(root / other)


def _state(db, version_id: str) -> tuple[list, list]:
    documents = store.read_columns(db, tables.DOCUMENTS_TABLE, ["doc_id", "doc_checksum"])
    chunks = store.read_columns(
        db, tables.chunks_table(version_id), ["chunk_id", "doc_id", "chunk_hash", "doc_checksum"]
    )
    return sorted(documents.to_pylist(), key=str), sorted(chunks.to_pylist(), key=str)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.lists(st.tuples(NAMES, BODIES), max_size=4), batches=st.lists(OPERATIONS, min_size=1, max_size=3)
)
def test_any_sequence_of_changes_converges_to_a_fresh_build(minilm, minilm_embedder, start, batches):
    """Adds, edits, deletes and renames in batches, each batch followed by an incremental sync of the
    corpus and the chunks: the documents and chunks tables end as a fresh build of the final folder makes
    them, row for row."""
    chunker = Chunker(minilm_embedder.tokenizer, minilm.chunking, minilm.max_tokens)
    work = Path(tempfile.mkdtemp(prefix="corpus-diff-"))
    try:
        root = work / "corpus"
        root.mkdir()
        for name, body in start:
            _apply(root, ("write", name, body))
        db = store.connect(work / "incremental")
        for batch in [[], *batches]:  # the first pass builds what `start` wrote
            for operation in batch:
                _apply(root, operation)
            sync_corpus(db, FolderSource(root))
            sync_chunks(db, minilm, chunker)
        fresh = store.connect(work / "fresh")
        sync_corpus(fresh, FolderSource(root))
        sync_chunks(fresh, minilm, chunker)
        assert _state(db, minilm.id) == _state(fresh, minilm.id)
        on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        assert [d["doc_id"] for d in _state(db, minilm.id)[0]] == on_disk
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- Search filters ----------------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
EDGES = st.sampled_from(["", "a", "\U0010ffff", "a\U0010ffff", "\ud7ff", "\ue000", "%", "_", "'"])


@settings(max_examples=500, deadline=None)
@given(
    prefix=st.one_of(ANY_TEXT, EDGES).filter(bool), others=st.lists(st.one_of(ANY_TEXT, EDGES), max_size=20)
)
def test_a_prefix_is_exactly_its_key_range(prefix, others):
    """The key range a prefix filter becomes holds the strings that start with it, and no other, in
    code point order (the UTF-8 byte order LanceDB compares in)."""
    upper = prefix_upper_bound(prefix)
    for text in [prefix, prefix + "x", *others, *(prefix + other for other in others)]:
        in_range = text >= prefix and (upper is None or text < upper)
        assert in_range == text.startswith(prefix), (prefix, text, upper)
        if upper is not None:
            assert (text.encode() < upper.encode()) == (text < upper)
