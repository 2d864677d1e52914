"""Synthetic corpora of any size made of real text: paragraphs of the shipped corpus (Python's own
documentation), and of a BEIR dataset's documents when one is given (for example ../shared's
Cranfield), recombined by a seeded random generator into documents of a few paragraphs each."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from tqdm.auto import tqdm

PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
MIN_PARAGRAPH_CHARS = 120
PARAGRAPHS_PER_DOCUMENT = (2, 6)
FILES_PER_FOLDER = 1000


def real_paragraphs(corpus: Path, beir: Path | None = None) -> list[str]:
    """Every paragraph of at least MIN_PARAGRAPH_CHARS in the Markdown files under `corpus`, and every
    document text of a BEIR `corpus.jsonl` under `beir`, in a stable order."""
    paragraphs = [
        p.strip()
        for path in sorted(corpus.rglob("*.md"))
        for p in PARAGRAPH_BREAK.split(path.read_text(encoding="utf-8"))
    ]
    if beir is not None and (beir / "corpus.jsonl").exists():
        with open(beir / "corpus.jsonl", encoding="utf-8") as lines:
            paragraphs += [json.loads(line)["text"].strip() for line in lines]
    return [p for p in paragraphs if len(p) >= MIN_PARAGRAPH_CHARS]


def write_synthetic_corpus(
    target: Path,
    documents: int,
    paragraphs: list[str],
    *,
    per_document: tuple[int, int] = PARAGRAPHS_PER_DOCUMENT,
    seed: int = 0,
    progress: bool = True,
) -> int:
    """Write `documents` Markdown files under `target` (a thousand per folder), each a title line and
    `per_document` (low, high) paragraphs drawn with `seed`; the bytes written. The same inputs give the
    same files."""
    rng = random.Random(seed)
    written = 0
    for n in tqdm(range(documents), desc="synthetic corpus", unit="doc", disable=not progress):
        body = "\n\n".join(rng.sample(paragraphs, rng.randint(*per_document)))
        path = target / f"part-{n // FILES_PER_FOLDER:03d}" / f"doc-{n:06d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = f"# Synthetic document {n}\n\n{body}\n"
        path.write_text(text, encoding="utf-8")
        written += len(text.encode())
    return written
