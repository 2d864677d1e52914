"""Token-aware chunking with the model's own tokenizer.

Prose is cut at sentence and paragraph boundaries and packed up to the version's token budget with
overlap; Python files are cut at top-level definitions, and a definition too long for one chunk keeps
its signature as a context line on every continuation chunk. Every chunk records the character span
of the document it covers, so the document can be reconstructed from its chunks.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedding_assets.models.embedders import PARALLEL_BATCH, tokenizer_threads
from embedding_assets.models.registry import ChunkingConfig

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS = 2  # [CLS] and [SEP] (or the model's equivalents) count against max_tokens
SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?:;])\s+|\n\s*\n+|\n(?=\s*(?:[-*+] |\d+\. |#|>>> |\.\. ))")
LINE_BOUNDARY = re.compile(r"(?<=\n)")
WORD_SPLITTING_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace"}


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: what is embedded (`text`) and the span of the source it covers."""

    ordinal: int
    text: str
    char_start: int
    char_end: int
    token_count: int

    @property
    def chunk_hash(self) -> str:
        return chunk_hash(self.text)


def chunk_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Chunker:
    """Cuts documents into chunks that never exceed the model's input limit.

    `chunk_many` tokenizes a whole batch of documents in two calls of the Rust tokenizer (the pieces
    between boundaries, then the finished chunks), so a large corpus is cut at the tokenizer's
    batch speed on every core instead of one small call per piece."""

    def __init__(self, tokenizer: Tokenizer, config: ChunkingConfig, max_tokens: int):
        self.tokenizer = tokenizer
        self.config = config
        self.budget = min(config.chunk_tokens, max_tokens - SPECIAL_TOKENS)
        self.overlap = min(config.overlap_tokens, self.budget // 2)
        self.additive = _splits_words_apart(tokenizer)

    def chunk(self, doc_id: str, text: str) -> list[Chunk]:
        return self.chunk_many([(doc_id, text)])[0]

    def chunk_many(self, documents: Sequence[tuple[str, str]]) -> list[list[Chunk]]:
        """The chunks of each (doc_id, text), in order; the same as `chunk` one document at a time."""
        plans = [self._segments(doc_id, text) for doc_id, text in documents]
        pieces = [
            text[a:b]
            for (_, text), segments in zip(documents, plans, strict=True)
            for segment in segments
            for a, b in segment.pieces
        ]
        contexts = [segment.context for segments in plans for segment in segments]
        encodings = iter(self._encode(pieces))
        context_tokens = iter(len(e.ids) for e in self._encode(contexts))
        spans_per_doc = []
        for (_, text), segments in zip(documents, plans, strict=True):
            spans: list[tuple[int, int, str, int | None]] = []
            for segment in segments:
                piece_encodings = [next(encodings) for _ in segment.pieces]
                spans.extend(self._pack(text, segment, piece_encodings, next(context_tokens)))
            spans_per_doc.append(spans)
        texts = [
            _chunk_text(text, start, end, header)
            for (_, text), spans in zip(documents, spans_per_doc, strict=True)
            for start, end, header, _ in spans
        ]
        summed = [tokens for spans in spans_per_doc for *_, tokens in spans]
        recount = [t for t, tokens in zip(texts, summed, strict=True) if tokens is None]
        recounted = iter(len(e.ids) for e in self._encode(recount))
        counts = iter([next(recounted) if tokens is None else tokens for tokens in summed])
        bodies = iter(texts)
        return [
            [Chunk(i, next(bodies), start, end, next(counts)) for i, (start, end, *_) in enumerate(spans)]
            for spans in spans_per_doc
        ]

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _encode(self, texts: list[str]) -> list:
        if not texts:
            return []
        with tokenizer_threads(len(texts) >= PARALLEL_BATCH):
            return self.tokenizer.encode_batch(texts, add_special_tokens=False)

    def _segments(self, doc_id: str, text: str) -> list[_Segment]:
        if doc_id.endswith(".py") and self.config.python_by_definition:
            segments = [(a, b, sig, LINE_BOUNDARY) for a, b, sig in _python_segments(text)]
        else:
            segments = [(0, len(text), _title_of(text), SENTENCE_BOUNDARY)]
        planned = []
        for start, end, context, boundary in segments:
            if not text[start:end].strip():
                continue
            cuts = [start] + [m.end() + start for m in boundary.finditer(text[start:end])] + [end]
            pieces = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if text[a:b].strip()]
            planned.append(_Segment(context, pieces))
        return planned

    def _pack(
        self, text: str, segment: _Segment, encodings: list, context_tokens: int
    ) -> Iterable[tuple[int, int, str, int | None]]:
        """Greedy packing of boundary-aligned units into spans of at most the token budget.

        Yields (start, end, header, tokens): the header is the segment's context line, given to every
        span but the first (which already begins with it); tokens is the chunk's token count, summed from
        its units where the tokenizer splits words apart and no unit cuts a word, else None (count it).
        """
        context = segment.context
        header_tokens = context_tokens + 1 if context else 0
        if header_tokens > self.budget // 2:
            context, header_tokens = "", 0
        budget = self.budget - header_tokens
        current: list[_Unit] = []
        header = ""
        for unit in _units(segment.pieces, encodings, max(budget // 2, 8)):
            if current and sum(u[2] for u in current) + unit[2] > budget:
                yield self._span(current, header, context_tokens)
                current = self._overlap_tail(current, budget - unit[2])
                header = context
            current.append(unit)
        if current:
            yield self._span(current, header, context_tokens)

    def _span(self, units: list[_Unit], header: str, context_tokens: int) -> tuple[int, int, str, int | None]:
        exact = self.additive and all(whole for *_, whole in units)
        tokens = sum(u[2] for u in units) + (context_tokens if header else 0) if exact else None
        return units[0][0], units[-1][1], header, tokens

    def _overlap_tail(self, units: list[_Unit], room: int) -> list[_Unit]:
        tail: list[_Unit] = []
        used = 0
        for unit in reversed(units[1:]):
            if used + unit[2] > min(self.overlap, room):
                break
            tail.insert(0, unit)
            used += unit[2]
        return tail


@dataclass(frozen=True)
class _Segment:
    """A stretch of a document packed on its own: its context line and its pieces between boundaries."""

    context: str
    pieces: list[tuple[int, int]]


def _chunk_text(text: str, start: int, end: int, header: str) -> str:
    body = text[start:end].strip()
    return f"{header}\n{body}" if header else body


_Unit = tuple[int, int, int, bool]  # start, end, tokens, whether it holds whole words only


def _units(pieces: list[tuple[int, int]], encodings: list, limit: int) -> list[_Unit]:
    """(start, end, tokens, whole words) of each piece; a piece over `limit` tokens is cut between words
    (inside a word only when one word is longer than `limit`)."""
    units: list[_Unit] = []
    for (a, b), encoding in zip(pieces, encodings, strict=True):
        if len(encoding.ids) <= limit:
            units.append((a, b, len(encoding.ids), True))
            continue
        starts = _word_starts(encoding.tokens)
        lo_token = 0
        while lo_token < len(encoding.ids):
            hi_token = _cut_before(starts, lo_token, lo_token + limit, len(encoding.ids))
            lo = a if lo_token == 0 else a + encoding.offsets[lo_token][0]
            hi = b if hi_token >= len(encoding.ids) else a + encoding.offsets[hi_token][0]
            whole = starts[lo_token] and (hi_token >= len(encoding.ids) or starts[hi_token])
            units.append((lo, hi, hi_token - lo_token, whole))
            lo_token = hi_token
    return units


def _splits_words_apart(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer cuts text into words at whitespace and punctuation before it splits each
    word into tokens (BERT's WordPiece): then a chunk of whole words has the summed token count of its
    pieces, and need not be tokenized again. Byte-level BPE and SentencePiece fold the space into the
    next token, so their chunks are counted."""
    return type(tokenizer.pre_tokenizer).__name__ in WORD_SPLITTING_PRE_TOKENIZERS


def _word_starts(tokens: list[str]) -> list[bool]:
    """Whether each token begins a word (WordPiece marks continuations with `##`)."""
    return [not t.startswith("##") for t in tokens]


def _cut_before(starts: list[bool], lo: int, hi: int, n: int) -> int:
    """The last word start in (lo, hi], so a window never splits a word unless the word is huge."""
    if hi >= n:
        return n
    for i in range(hi, lo, -1):
        if starts[i]:
            return i
    return hi


def _title_of(text: str) -> str:
    """A markdown document's first heading, repeated as context on chunks after the first."""
    first = text.lstrip().split("\n", 1)[0].strip()
    return first if first.startswith("#") and len(first) < 200 else ""


def _python_segments(source: str) -> list[tuple[int, int, str]]:
    """Top-level definitions and the module code between them as (start, end, signature)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [(0, len(source), "")]
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    segments: list[tuple[int, int, str]] = []
    cursor = 0
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        first_line = min([node.lineno] + [d.lineno for d in node.decorator_list])
        start = line_starts[first_line - 1]
        end = line_starts[min(node.end_lineno or node.lineno, len(line_starts) - 1)]
        if start > cursor:
            segments.append((cursor, start, ""))
        signature = source[line_starts[node.lineno - 1] : line_starts[node.lineno]].strip()
        segments.append((start, end, signature))
        cursor = end
    if cursor < len(source):
        segments.append((cursor, len(source), ""))
    return segments
