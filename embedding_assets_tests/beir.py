"""Small BEIR folders for tests: corpus.jsonl, queries.jsonl and qrels.tsv (one relevant document each)."""

import json
from pathlib import Path


def write_dataset(
    folder: Path, documents: dict[str, tuple[str, str]], queries: dict[str, str], qrels: dict[str, str]
) -> Path:
    """`documents` id -> (title, text); `queries` id -> text; `qrels` query id -> its relevant document."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"_id": d, "title": t, "text": x}) for d, (t, x) in documents.items()]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items())
    )
    (folder / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels.items())
    )
    return folder
