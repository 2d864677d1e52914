"""Encoding throughput, side by side on the same chunks of the shipped corpus: raw
`SentenceTransformer.encode` against the project's encoder (batches of like token count) for MiniLM, and
the int8 ONNX version, in interleaved rounds."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from embedding_assets.bench.measure import interleaved
from embedding_assets.corpus.sources import Document, FolderSource
from embedding_assets.index.chunking import Chunker
from embedding_assets.models.embedders import ENCODE_TOKEN_BUDGET, embedder_for
from embedding_assets.models.registry import DEFAULT_VERSION, ONNX_INT8_VERSION, ModelRegistry

RAW_BATCH_SIZE = 32  # sentence-transformers' own default


def corpus_chunks(corpus: Path, chunker: Chunker, count: int, seed: int = 0) -> list[str]:
    """`count` distinct chunk texts of the corpus under `corpus`, drawn with `seed`."""
    texts = {
        chunk.text: None
        for item in FolderSource(corpus).read()
        if isinstance(item, Document)
        for chunk in chunker.chunk(item.doc_id, item.text)
    }
    return random.Random(seed).sample(sorted(texts), min(count, len(texts)))


def measure(registry: ModelRegistry, corpus: Path, chunks: int, rounds: int) -> dict:
    minilm = embedder_for(registry.get(DEFAULT_VERSION))
    onnx = embedder_for(registry.get(ONNX_INT8_VERSION))
    version = minilm.version
    texts = corpus_chunks(corpus, Chunker(minilm.tokenizer, version.chunking, version.max_tokens), chunks)
    raw_model = minilm.model  # the same SentenceTransformer object, max_seq_length as the version sets it
    # A first pass of every encoder over the whole list, untimed: each meets every batch shape once (a
    # cold first round ran 10-15% slow), and its vectors are the ones compared below.
    raw_vectors = raw_model.encode(texts, batch_size=RAW_BATCH_SIZE, normalize_embeddings=version.normalize)
    reference = minilm.encode(texts)
    onnx_vectors = onnx.encode(texts)

    def raw() -> int:
        raw_model.encode(texts, batch_size=RAW_BATCH_SIZE, normalize_embeddings=version.normalize)
        return len(texts)

    def ours() -> int:
        minilm.encode(texts)
        return len(texts)

    def int8() -> int:
        onnx.encode(texts)
        return len(texts)

    rates = interleaved(
        {
            f"SentenceTransformer.encode(batch_size={RAW_BATCH_SIZE})": raw,
            f"project encoder, {DEFAULT_VERSION}": ours,
            f"project encoder, {ONNX_INT8_VERSION}": int8,
        },
        rounds,
    )
    raw_rate, minilm_rate, _ = (rate["per_second"] for rate in rates.values())
    for rate in rates.values():
        rate["vs_raw"] = round(rate["per_second"] / raw_rate, 2)
        rate["vs_minilm"] = round(rate["per_second"] / minilm_rate, 2)
    lengths = minilm.token_lengths(texts)
    onnx_distance = 1 - (onnx_vectors * reference).sum(axis=1)
    return {
        "chunks": len(texts),
        "rounds": rounds,
        "tokens_p50": int(np.median(lengths)),
        "tokens_max": int(lengths.max()),
        "token_budget": ENCODE_TOKEN_BUDGET,
        "rates": rates,
        "project_vs_raw_max_abs_difference": float(np.abs(reference - raw_vectors).max()),
        "onnx_cosine_distance_p50": round(float(np.percentile(onnx_distance, 50)), 5),
        "onnx_cosine_distance_p95": round(float(np.percentile(onnx_distance, 95)), 5),
    }


def markdown(result: dict) -> list[str]:
    lines = [
        "## Encoding",
        "",
        f"{result['chunks']} distinct chunks of the shipped corpus (tokens p50 {result['tokens_p50']}, max "
        f"{result['tokens_max']}), the same texts for every encoder, median of {result['rounds']} "
        "interleaved round(s). The project's encoder orders the whole work list by token count and "
        f"sends passes of at most {result['token_budget']} padded tokens; `SentenceTransformer.encode` "
        "sorts by characters within its call.",
        "",
        "| encoder | chunks/s | vs raw | vs project MiniLM | rounds |",
        "|---|---|---|---|---|",
    ]
    for name, rate in result["rates"].items():
        rounds = ", ".join(f"{r:.1f}" for r in rate["rounds"])
        versus = f"{rate['vs_minilm']:.2f}x" if "vs_minilm" in rate else "-"
        lines.append(f"| {name} | {rate['per_second']:.1f} | {rate['vs_raw']:.2f}x | {versus} | {rounds} |")
    lines += [
        "",
        f"The project's MiniLM vectors differ from raw `encode` by at most "
        f"{result['project_vs_raw_max_abs_difference']:.1e} (absolute, per component). The int8 ONNX "
        f"version (int8 weights times activations quantized per token) lies at cosine distance "
        f"p50 {result['onnx_cosine_distance_p50']}, p95 "
        f"{result['onnx_cosine_distance_p95']} from MiniLM.",
        "",
    ]
    return lines
