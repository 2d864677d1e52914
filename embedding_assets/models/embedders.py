"""Embedders: one class per loader, built from a verified pinned version, model loaded once per process."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from tqdm.auto import tqdm

from embedding_assets.models.registry import ModelVersion

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ENCODE_BATCH_SIZE = 64
QUERY_CACHE_LIMIT = 10_000  # distinct query texts kept per model


class Embedder:
    """Encodes text with the exact weights a version pins; refuses anything else at construction."""

    loader: ClassVar[str]

    def __init__(self, version: ModelVersion):
        self.version = version
        self.weights_path: Path = version.verified_weights_path()
        self.fingerprint = version.pinned_fingerprint()
        self._query_vectors: dict[str, np.ndarray] = {}

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer, without padding or truncation, for counting tokens."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.weights_path / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer

    def encode(
        self,
        texts: list[str],
        *,
        progress: bool = False,
        desc: str = "embedding",
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Float32 vectors, one row per text, batched longest-first so padding is small. `progress` shows
        a terminal bar; inside a run, `on_batch(done, total)` reports progress through the run's log."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        parts: list[np.ndarray] = []
        with tqdm(
            total=len(texts), desc=f"{desc} [{self.version.id}]", unit="chunk", disable=not progress
        ) as bar:
            for start in range(0, len(order), ENCODE_BATCH_SIZE):
                batch = order[start : start + ENCODE_BATCH_SIZE]
                parts.append(np.asarray(self._encode_batch([texts[i] for i in batch]), dtype=np.float32))
                bar.update(len(batch))
                if on_batch is not None:
                    on_batch(min(start + ENCODE_BATCH_SIZE, len(order)), len(order))
        if not parts:
            return np.zeros((0, self.version.dimension), dtype=np.float32)
        stacked = np.concatenate(parts)
        out = np.empty_like(stacked)
        out[order] = stacked
        return out

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Like `encode`, remembering each query's vector: the gates and evaluation ask for the same
        judged queries against several table versions of one model."""
        cache = self._query_vectors
        if len(cache) > QUERY_CACHE_LIMIT:
            cache.clear()
        new = [q for q in dict.fromkeys(queries) if q not in cache]
        if new:
            cache.update(zip(new, self.encode(new), strict=True))
        if not queries:
            return np.zeros((0, self.version.dimension), dtype=np.float32)
        return np.stack([cache[q] for q in queries])

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class SentenceTransformerEmbedder(Embedder):
    loader = "sentence-transformers"

    @functools.cached_property
    def model(self):
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.set_verbosity_error()
        model = SentenceTransformer(str(self.weights_path), device="cpu", local_files_only=True)
        model.max_seq_length = self.version.max_tokens
        return model

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=len(texts), normalize_embeddings=self.version.normalize, convert_to_numpy=True
        )


class Model2VecEmbedder(Embedder):
    loader = "model2vec"

    @functools.cached_property
    def model(self):
        from model2vec import StaticModel

        return StaticModel.from_pretrained(str(self.weights_path), normalize=self.version.normalize)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, max_length=self.version.max_tokens, batch_size=len(texts))


LOADERS: dict[str, type[Embedder]] = {
    cls.loader: cls for cls in (SentenceTransformerEmbedder, Model2VecEmbedder)
}


_EMBEDDERS: dict[tuple[str, str | None, str | None], Embedder] = {}


def _built_bytes(version: ModelVersion) -> str | None:
    """For a built version, the artifact fingerprint its build recorded: a rebuild loads afresh."""
    if version.weights.build is None:
        return None
    from embedding_assets.models.builds import read_record

    record = read_record(version.weights_path())
    return record["artifact_fingerprint"] if record else None


def embedder_for(version: ModelVersion) -> Embedder:
    """The embedder for `version`, shared within the process; the fingerprint is checked on first use."""
    key = (
        version.model_dump_json(exclude={"gates", "description"}),
        version.models_dir,
        _built_bytes(version),
    )
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = LOADERS[version.loader](version)
    return _EMBEDDERS[key]
