"""Embedders: one class per loader, built from a verified pinned version, model loaded once per process."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from tqdm.auto import tqdm

from embedding_assets.models.registry import FLOAT_ACTIVATIONS, ModelRegistryError, ModelVersion

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ENCODE_BATCH_SIZE = 1024  # texts per call for encoders that do not pad (a static model)
# A transformer's forward pass pads a batch to its longest text: texts of like token count go together,
# at most this many padded tokens per pass. On 2 CPU cores small passes of ~1-2k tokens were fastest
# (bench: 1.3-1.55x `SentenceTransformer.encode` across runs; it sorts by characters, a poor stand-in
# for tokens, and tokenizes in Python once per pass; here the pinned Rust tokenizer feeds token ids).
ENCODE_TOKEN_BUDGET = 2048
ENCODE_MAX_BATCH = 128
TOKEN_COUNT_SLICE = 4096  # texts tokenized at a time when counting, so no list of encodings builds up
QUERY_CACHE_LIMIT = 10_000  # distinct query texts kept per model


PARALLEL_BATCH = 64  # texts per tokenizer call worth spreading over every core
PARALLELISM_VARIABLE = "TOKENIZERS_PARALLELISM"  # read by the Rust tokenizer at every call


@contextlib.contextmanager
def tokenizer_threads(enabled: bool):
    """The Rust tokenizer on every core for the calls inside: off by default in this package (a process
    forked after it ran threads disables them with a warning), on where a large batch pays for it."""
    previous = os.environ.get(PARALLELISM_VARIABLE)
    if enabled:
        os.environ[PARALLELISM_VARIABLE] = "true"
    try:
        yield
    finally:
        if enabled:
            os.environ[PARALLELISM_VARIABLE] = previous if previous is not None else "false"


def token_batches(lengths: np.ndarray, budget: int = ENCODE_TOKEN_BUDGET, limit: int = ENCODE_MAX_BATCH):
    """Batches of indices into `lengths` (tokens per text), longest first: each batch holds texts of like
    length and at most `budget` tokens once padded to its longest (one text at least, `limit` at most)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        size = max(1, min(limit, budget // max(int(lengths[order[start]]), 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


def padded_ids(encodings, pad: tuple[int, str] = (0, "right")) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, type ids and attention mask (int64) of one batch of `encodings`, padded to the longest
    with `pad` (the pad token id, and the side: "right" or "left"); padding is masked out."""
    pad_id, side = pad
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    types, mask = (np.zeros((len(encodings), width), dtype=np.int64) for _ in range(2))
    for row, e in enumerate(encodings):
        cols = slice(width - len(e.ids), width) if side == "left" else slice(0, len(e.ids))
        ids[row, cols], types[row, cols], mask[row, cols] = e.ids, e.type_ids, 1
    return ids, types, mask


class Embedder:
    """Encodes text with the exact weights a version pins; refuses anything else at construction."""

    loader: ClassVar[str]
    pads_batches: ClassVar[bool] = True  # a forward pass pads to the longest text: batch by token count

    def __init__(self, version: ModelVersion):
        self.version = version
        self.weights_path: Path = version.verified_weights_path()
        self.fingerprint = version.pinned_fingerprint()
        self._query_vectors: dict[str, np.ndarray] = {}

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer, without padding or truncation, for counting tokens."""
        tokenizer = self._load_tokenizer()
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer

    @functools.cached_property
    def input_tokenizer(self) -> Tokenizer:
        """The tokenizer as the model reads text: special tokens added, truncated at `max_tokens`."""
        tokenizer = self._load_tokenizer()
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.version.max_tokens, strategy="longest_first")
        return tokenizer

    def _load_tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.version.tokenizer_path()))

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """How many tokens the model reads of each text (special tokens included, at most `max_tokens`)."""
        lengths = np.zeros(len(texts), dtype=np.int32)
        for start in range(0, len(texts), TOKEN_COUNT_SLICE):
            with tokenizer_threads(True):
                encodings = self.input_tokenizer.encode_batch(texts[start : start + TOKEN_COUNT_SLICE])
            lengths[start : start + len(encodings)] = [len(e.ids) for e in encodings]
        return lengths

    def batches(self, texts: list[str], lengths: np.ndarray | None = None) -> list[np.ndarray]:
        """The order in which `encode` passes `texts` to the model, as batches of indices."""
        if self.pads_batches:
            return token_batches(self.token_lengths(texts) if lengths is None else lengths)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        return [order[i : i + ENCODE_BATCH_SIZE] for i in range(0, len(order), ENCODE_BATCH_SIZE)]

    def encode(
        self,
        texts: list[str],
        *,
        lengths: np.ndarray | None = None,
        progress: bool = False,
        desc: str = "embedding",
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Float32 vectors, one row per text, in batches of like token count (`lengths`, when the caller
        counted them already). `progress` shows a terminal bar; inside a run, `on_batch(done, total)`
        reports progress through the run's log."""
        out = np.zeros((len(texts), self.version.dimension), dtype=np.float32)
        done = 0
        with tqdm(
            total=len(texts), desc=f"{desc} [{self.version.id}]", unit="chunk", disable=not progress
        ) as bar:
            for batch in self.batches(texts, lengths):
                vectors = np.asarray(self._encode_batch([texts[i] for i in batch]), dtype=np.float32)
                if vectors.shape != (len(batch), self.version.dimension):
                    raise ValueError(
                        f"model version {self.version.id!r} produced shape {vectors.shape} for "
                        f"{len(batch)} texts; the registry says {self.version.dimension}-d"
                    )
                out[batch] = vectors
                done += len(batch)
                bar.update(len(batch))
                if on_batch is not None:
                    on_batch(done, len(texts))
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

    def probe_dimension(self) -> int:
        """The width of the vectors the weights produce, whatever the version says (for pinning)."""
        return int(np.asarray(self._encode_batch(["dimension probe"])).shape[1])

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _normalized(self, vectors: np.ndarray) -> np.ndarray:
        if not self.version.normalize:
            return vectors
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model: its own preprocessing and modules (transformer, pooling, ...),
    called once per batch of like token count."""

    loader = "sentence-transformers"

    @functools.cached_property
    def model(self):
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # its "Loading weights" bar would land in run logs
        model = SentenceTransformer(str(self.weights_path), device="cpu", local_files_only=True)
        model.max_seq_length = self.version.max_tokens
        model.eval()
        return model

    @functools.cached_property
    def reads_token_ids(self) -> bool:
        """Whether the first module is a text transformer that takes token ids as they are: then the
        pinned Rust tokenizer feeds it directly, skipping the per-pass Python preprocessing."""
        from sentence_transformers.base.modules.transformer import Transformer

        first = self.model[0]
        return isinstance(first, Transformer) and not getattr(first, "do_lower_case", False)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if self.reads_token_ids:
                ids, types, mask = padded_ids(self.input_tokenizer.encode_batch(texts), self._pad)
                features = {
                    "input_ids": torch.from_numpy(ids),
                    "token_type_ids": torch.from_numpy(types),
                    "attention_mask": torch.from_numpy(mask),
                }
            else:
                features = self.model.preprocess(texts)
            vectors = self.model(features)["sentence_embedding"].float().numpy()
        return self._normalized(vectors)

    @functools.cached_property
    def _pad(self) -> tuple[int, str]:
        tokenizer = self.model.tokenizer
        return tokenizer.pad_token_id or 0, tokenizer.padding_side


class OnnxEmbedder(Embedder):
    """A transformer exported to ONNX (token states out), run on onnxruntime's CPU provider with the
    version's pinned tokenizer; the sentence vector is the mean of the token states under the mask.

    With int8 activations its products run in integers (models/onnx_int8.py), each token's activations
    quantized on their own, so a text's vector does not depend on the texts beside it in a pass."""

    loader = "onnx"

    @functools.cached_property
    def session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are not the user's business
        [model] = sorted(self.weights_path.glob("*.onnx")) or [None]
        if model is None:
            raise FileNotFoundError(
                f"model version {self.version.id!r}: no .onnx file in {self.weights_path}"
            )
        if self.version.activations == FLOAT_ACTIVATIONS:
            return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        from embedding_assets.models.onnx_int8 import integer_matmul_model

        graph = integer_matmul_model(model)
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    @functools.cached_property
    def token_states(self) -> str:
        """The graph output holding one vector per token: the first float output of rank 3 (an export may
        also echo its inputs or add a pooled output, in any order)."""
        for output in self.session.get_outputs():
            if output.type == "tensor(float)" and len(output.shape) == 3:
                return output.name
        raise ModelRegistryError(
            f"model version {self.version.id!r}: its ONNX graph has no float output of shape "
            f"(batch, tokens, dimension) to mean-pool; outputs: "
            f"{[(o.name, o.type, o.shape) for o in self.session.get_outputs()]}"
        )

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        ids, types, mask = padded_ids(self.input_tokenizer.encode_batch(texts))
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        wanted = {i.name for i in self.session.get_inputs()}
        (tokens,) = self.session.run([self.token_states], {k: v for k, v in feeds.items() if k in wanted})
        weights = mask[:, :, None].astype(np.float32)
        return self._normalized((tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9))


class Model2VecEmbedder(Embedder):
    """A static model: a text's vector is the mean of its tokens' vectors, so no batch pads."""

    loader = "model2vec"
    pads_batches = False

    @functools.cached_property
    def model(self):
        return load_static_model(self.weights_path, self.version.normalize)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """`StaticModel.encode` as one sparse product: its own loop averages one float16 matrix per text
        (about as long as the tokenizing on 2 cores); here a matrix of each text's token counts (unknown
        tokens left out, as model2vec does) times the float32 token vectors gives every mean at once,
        rounded and normalized as model2vec does."""
        model = self.model
        if model.weights is not None or model.token_mapping is not None:  # per-token weights: its own path
            with tokenizer_threads(len(texts) >= PARALLEL_BATCH):
                return model.encode(texts, max_length=self.version.max_tokens, batch_size=len(texts))
        from scipy.sparse import csr_matrix

        with tokenizer_threads(len(texts) >= PARALLEL_BATCH):
            encodings = self._static_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        rows = np.repeat(np.arange(len(ids)), lengths)
        if model.unk_token_id is not None:
            known = flat != model.unk_token_id
            flat, rows = flat[known], rows[known]
        counts = np.bincount(rows, minlength=len(ids))
        weights = (1.0 / np.maximum(counts, 1)).astype(np.float32)[rows]
        indptr = np.concatenate([[0], np.cumsum(counts)])
        tokens = csr_matrix((weights, flat, indptr), shape=(len(ids), len(self._float_table)))
        out = np.asarray(tokens @ self._float_table).astype(model.embedding.dtype)  # a text without tokens: 0
        if model.normalize:
            out32 = out.astype(np.float32)
            out = (out32 / (np.linalg.norm(out32, axis=1, keepdims=True) + 1e-32)).astype(out.dtype)
        return out

    @functools.cached_property
    def _static_tokenizer(self) -> Tokenizer:
        """A copy of the model's tokenizer truncating at `max_tokens`, as model2vec's encode sets its own
        (a copy, so no caller's tokenizer changes under another thread)."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.model.tokenizer.to_str())
        tokenizer.enable_truncation(self.version.max_tokens)
        return tokenizer

    @functools.cached_property
    def _float_table(self) -> np.ndarray:
        """The token vectors in float32, one row per token id."""
        return np.asarray(self.model.embedding, dtype=np.float32)


MODEL2VEC_FILES = ("model.safetensors", "tokenizer.json", "config.json")  # model2vec's own folder layout


def load_static_model(folder: Path, normalize: bool):
    """A model2vec StaticModel from a local folder in model2vec's layout, built as `from_pretrained` builds
    it (the same tensors, tokenizer and config) without importing the hub client and model cards it uses
    to read the README's descriptive metadata (base model, language): 0.25 s of a small refresh. Any
    other folder is loaded by `from_pretrained`."""
    import safetensors
    from model2vec import StaticModel
    from model2vec.model import DEFAULT_MAX_LENGTH
    from tokenizers import Tokenizer

    found: dict[str, np.ndarray] = {}
    if all((folder / name).is_file() for name in MODEL2VEC_FILES):
        with safetensors.safe_open(str(folder / "model.safetensors"), framework="numpy") as tensors:
            found = {name: tensors.get_tensor(name) for name in tensors.keys()}  # noqa: SIM118 (not iterable)
    if "embeddings" not in found:
        return StaticModel.from_pretrained(str(folder), normalize=normalize)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return StaticModel(
        vectors=found["embeddings"],
        tokenizer=Tokenizer.from_file(str(folder / "tokenizer.json")),
        config=config,
        normalize=normalize,
        weights=found.get("weights"),
        token_mapping=found.get("mapping"),
        max_length=config.get("max_length", DEFAULT_MAX_LENGTH),
    )


LOADERS: dict[str, type[Embedder]] = {
    cls.loader: cls for cls in (SentenceTransformerEmbedder, OnnxEmbedder, Model2VecEmbedder)
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
        version.model_dump_json(exclude={"gates", "description", "retrieval", "thresholds"}),
        version.models_dir,
        _built_bytes(version),
    )
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = LOADERS[version.loader](version)
    return _EMBEDDERS[key]
