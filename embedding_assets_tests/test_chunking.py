from pathlib import Path

import pytest

from embedding_assets.index.chunking import SPECIAL_TOKENS, Chunker, _units
from embedding_assets.models.registry import ChunkingConfig

DOCS = [
    "topics/specialnames.md",
    "topics/compound.md",
    "library/argparse/ArgumentParser.md",
    "source/shlex.py",
    "source/textwrap.py",
    "library/json/dumps.md",
]


@pytest.fixture(scope="module", params=[(200, 32, 256), (60, 12, 64)], ids=["minilm-default", "tiny-budget"])
def chunker(request, minilm_embedder) -> Chunker:
    chunk_tokens, overlap, max_tokens = request.param
    return Chunker(
        minilm_embedder.tokenizer,
        ChunkingConfig(chunk_tokens=chunk_tokens, overlap_tokens=overlap),
        max_tokens,
    )


def _chunks(chunker: Chunker, corpus: Path, doc_id: str):
    text = (corpus / doc_id).read_text()
    return text, chunker.chunk(doc_id, text)


@pytest.mark.parametrize("doc_id", DOCS)
def test_no_chunk_exceeds_the_model_limit(chunker, full_corpus, doc_id):
    text, chunks = _chunks(chunker, full_corpus, doc_id)
    limit = chunker.budget + SPECIAL_TOKENS
    sizes = [len(chunker.tokenizer.encode(c.text).ids) for c in chunks]  # with special tokens
    assert chunks and max(sizes) <= limit, (doc_id, max(sizes), limit)


@pytest.mark.parametrize("doc_id", DOCS)
def test_ordinals_are_contiguous_and_spans_move_forward(chunker, full_corpus, doc_id):
    _, chunks = _chunks(chunker, full_corpus, doc_id)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    starts = [c.char_start for c in chunks]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


@pytest.mark.parametrize("doc_id", DOCS)
def test_spans_reconstruct_the_document_modulo_overlap(chunker, full_corpus, doc_id):
    text, chunks = _chunks(chunker, full_corpus, doc_id)
    rebuilt, covered_to = "", 0
    assert not text[: chunks[0].char_start].strip()
    for chunk in chunks:
        assert chunk.char_start <= covered_to or not text[covered_to : chunk.char_start].strip(), (
            "gap in coverage"
        )
        rebuilt += text[max(chunk.char_start, covered_to) : chunk.char_end]
        covered_to = max(covered_to, chunk.char_end)
        assert text[chunk.char_start : chunk.char_end].strip() in chunk.text
    assert "".join(rebuilt.split()) == "".join(text.split()), "chunks minus overlap give back the document"


def test_overlap_repeats_the_tail_of_the_previous_chunk(minilm_embedder, full_corpus):
    chunker = Chunker(minilm_embedder.tokenizer, ChunkingConfig(chunk_tokens=120, overlap_tokens=40), 256)
    _, chunks = _chunks(chunker, full_corpus, "topics/compound.md")
    overlapping = sum(1 for a, b in zip(chunks, chunks[1:], strict=False) if b.char_start < a.char_end)
    assert overlapping >= len(chunks) // 2


def test_python_definitions_keep_their_signature_as_context(minilm_embedder, full_corpus):
    chunker = Chunker(minilm_embedder.tokenizer, ChunkingConfig(chunk_tokens=120, overlap_tokens=16), 256)
    text, chunks = _chunks(chunker, full_corpus, "source/shlex.py")
    continuation = [
        c for c in chunks if c.text.startswith("class shlex") and not text[c.char_start :].startswith("class")
    ]
    assert continuation, "a long class should continue over several chunks, each led by its signature"
    defs = [c for c in chunks if text[c.char_start : c.char_end].lstrip().startswith(("def ", "class "))]
    assert any("def split" in c.text for c in defs)


def test_a_huge_unbroken_token_run_is_still_cut_within_the_limit(minilm_embedder):
    chunker = Chunker(minilm_embedder.tokenizer, ChunkingConfig(chunk_tokens=50, overlap_tokens=8), 64)
    text = "# blob\n\n" + "x" * 5000 + " tail sentence."
    chunks = chunker.chunk("blob.md", text)
    assert max(len(chunker.tokenizer.encode(c.text).ids) for c in chunks) <= 64
    assert chunks[-1].text.endswith("tail sentence.")


def _tokens(chunker: Chunker, text: str) -> int:
    return len(chunker.tokenizer.encode(text, add_special_tokens=False).ids)


def test_token_counts_are_what_the_tokenizer_counts(chunker, full_corpus):
    """Counts summed from the pieces (WordPiece splits words apart) equal a count of the chunk's text, on
    a sample of the shipped corpus, prose and code, and where one word is longer than a piece may be."""
    paths = sorted(p for p in full_corpus.rglob("*") if p.is_file())[::10]
    documents = [(p.relative_to(full_corpus).as_posix(), p.read_text()) for p in paths]
    word = "".join(f"{c}{i}" for i, c in enumerate("qzxjvkwy" * 4))  # one 86-character word: 64 tokens
    documents.append(("long-word.md", f"# Long word\n\nBefore it {word} and after it.\n"))
    chunks = [c for doc_chunks in chunker.chunk_many(documents) for c in doc_chunks]
    assert chunker.additive and len(chunks) > 200
    assert [c.token_count for c in chunks] == [_tokens(chunker, c.text) for c in chunks]


def test_a_word_cut_in_two_is_not_counted_by_summing(minilm_embedder):
    """Only a word longer than a unit's limit is cut inside; such units are flagged, and their chunks'
    counts come from the tokenizer, not from a sum of the pieces' counts."""
    word = "".join(f"{c}{i}" for i, c in enumerate("qzxjvkwy" * 4))  # 64 tokens, one word
    encoding = minilm_embedder.tokenizer.encode(f"tail {word}", add_special_tokens=False)
    units = _units([(0, len(word) + 5)], [encoding], 20)
    assert [whole for *_, whole in units] == [True] + [False] * (len(units) - 1)
    assert sum(tokens for _, _, tokens, _ in units) == len(encoding.ids)
