"""Encoding: batches of like token count give the vectors `SentenceTransformer.encode` gives; the int8 ONNX
version is pinned by its weights and its borrowed tokenizer, lands near MiniLM, and migrates through every
gate (real MiniLM, real onnxruntime)."""

import json
import shutil
import sys
from collections import Counter

import numpy as np
import onnx
import pytest

from embedding_assets.defs.checks.gates import GOLDEN_QUALITY, INDEX_CHECKS, SCORE_CALIBRATION
from embedding_assets.models import onnx_fusions
from embedding_assets.models.embedders import ENCODE_MAX_BATCH, embedder_for, padded_ids, token_batches
from embedding_assets.models.onnx_int8 import INTEGER_MATMUL, integer_matmul_model
from embedding_assets.models.registry import (
    DEFAULT_VERSION,
    ONNX_INT8_VERSION,
    FingerprintMismatchError,
    ModelVersion,
    TokenizerSource,
    WeightsSource,
)

TEXTS = [
    "",
    "csv",
    "How do I read a CSV file with a header row?",
    "The argparse module makes it easy to write user-friendly command-line interfaces. " * 3,
    "json.dumps serializes obj to a JSON formatted str. " * 40,  # past the 256-token limit: truncated
    "Über die Größe: naïve café, 東京, emoji 🙂 and tabs\tinside.",
    *(f"getopt parses option {i} " * (i % 9 + 1) for i in range(40)),
]


def test_token_batches_group_like_lengths_within_the_budget():
    lengths = np.array([5, 200, 17, 200, 3, 64, 64, 1000, 9] * 50)
    batches = token_batches(lengths, budget=1024, limit=ENCODE_MAX_BATCH)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))  # every text exactly once
    heads = [int(lengths[b].max()) for b in batches]
    assert heads == sorted(heads, reverse=True)  # longest first
    for batch in batches:
        padded = len(batch) * int(lengths[batch].max())
        assert len(batch) == 1 or padded <= 1024
        assert len(batch) <= ENCODE_MAX_BATCH


def test_padded_ids_mask_the_padding_on_either_side(minilm_embedder):
    encodings = minilm_embedder.input_tokenizer.encode_batch(["a longer text here", "short"])
    widths = [len(e.ids) for e in encodings]
    for side in ("right", "left"):
        ids, types, mask = padded_ids(encodings, (7, side))
        assert ids.shape == types.shape == mask.shape == (2, max(widths))
        assert mask.sum(axis=1).tolist() == widths
        assert (ids[mask == 0] == 7).all()
        real = ids[1][mask[1] == 1].tolist()
        assert real == encodings[1].ids
        assert (mask[1, -1] == 1) == (side == "left")


def test_batched_vectors_equal_sentence_transformers_encode(minilm_embedder):
    raw = minilm_embedder.model.encode(TEXTS, batch_size=32, normalize_embeddings=True)
    ours = minilm_embedder.encode(TEXTS)
    lengths = minilm_embedder.token_lengths(TEXTS)
    assert lengths.max() == minilm_embedder.version.max_tokens and lengths[0] == 2  # [CLS] [SEP]
    assert ours.dtype == np.float32 and ours.shape == raw.shape
    np.testing.assert_allclose(ours, raw, atol=1e-5)
    counted = minilm_embedder.encode(TEXTS, lengths=lengths)  # lengths counted by the caller
    np.testing.assert_allclose(counted, ours, atol=1e-6)


def test_the_onnx_version_lands_next_to_minilm(registry, minilm_embedder):
    onnx = embedder_for(registry.get(ONNX_INT8_VERSION))
    assert onnx.version.weights.tokenizer is not None  # MiniLM's tokenizer, pinned with the weights
    vectors = onnx.encode(TEXTS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    distance = 1 - (vectors * minilm_embedder.encode(TEXTS)).sum(axis=1)
    # int8 products: p95 0.003 on 600 chunks of the shipped corpus (the drift gate warns above 0.005)
    assert np.percentile(distance, 95) < 0.005


def test_int8_products_give_a_text_the_same_vector_in_any_company(registry):
    """The int8 version multiplies in integers (its graph says so) and quantizes each text's activations
    on their own: a text's vector does not move with the texts encoded beside it."""
    version = registry.get(ONNX_INT8_VERSION)
    assert version.activations == "int8"
    graph = onnx.load_from_string(integer_matmul_model(next(version.weights_path().glob("*.onnx"))))
    operators = Counter(node.op_type for node in graph.graph.node)
    assert operators[INTEGER_MATMUL] == 36 and operators["MatMul"] == 0  # 6 layers: 6 products each
    assert operators["QuantizeLinear"] == 24  # Q, K and V share their input's quantization
    onnx_embedder = embedder_for(version)
    together = onnx_embedder.encode(TEXTS)
    apart = np.vstack([onnx_embedder.encode([text]) for text in TEXTS[:8]])
    np.testing.assert_allclose(apart, together[:8], atol=1e-6)
    floats = version.model_copy(update={"activations": "float"})
    assert floats.encoder_key() != version.encoder_key()  # other arithmetic: never one cache
    with pytest.raises(ValueError, match="needs the onnx loader"):
        ModelVersion.model_validate({**registry.get(DEFAULT_VERSION).model_dump(), "activations": "int8"})


def test_the_int8_graph_drops_the_softmax_nan_guards_and_its_vectors_stay_the_same(registry, monkeypatch):
    """Every text keeps tokens unmasked, so no attention row is all masked: the guard against one is
    dropped, and a padded batch gets the same vectors to the bit as with the guards (both with the
    export's own attention, which the guards keep from being fused)."""
    version = registry.get(ONNX_INT8_VERSION)
    model = next(version.weights_path().glob("*.onnx"))
    monkeypatch.setattr(onnx_fusions, "_fused_attention", lambda nodes, initializers: (nodes, []))
    graph = onnx.load_from_string(integer_matmul_model(model))
    operators = Counter(node.op_type for node in graph.graph.node)
    assert (operators["IsNaN"], operators["Where"]) == (0, 1)  # the attention mask's Where stays
    without = _encoder(version, graph).encode(PADDED_BATCH)
    monkeypatch.setattr(onnx_fusions, "_without_nan_guards", lambda nodes, outputs: nodes)
    guarded = onnx.load_from_string(integer_matmul_model(model))
    guards = Counter(node.op_type for node in guarded.graph.node)
    assert (guards["IsNaN"], guards["Where"]) == (6, 7)  # one per layer
    np.testing.assert_array_equal(_encoder(version, guarded).encode(PADDED_BATCH), without)


def test_the_int8_graph_fuses_gelu_and_attention_into_onnxruntime_operators(registry, monkeypatch):
    """The export's GELU and attention run as onnxruntime's Gelu and MultiHeadAttention (the padding
    mask and the scale carried over): a padded batch's vectors are those of the unfused graph, up to the
    8-bit rounding that amplifies other last bits (cosine 0.998 on 300 shipped chunks)."""
    version = registry.get(ONNX_INT8_VERSION)
    model = next(version.weights_path().glob("*.onnx"))
    graph = onnx.load_from_string(integer_matmul_model(model))
    operators = Counter(node.op_type for node in graph.graph.node)
    assert (operators["Gelu"], operators["MultiHeadAttention"]) == (6, 6)
    assert operators["Erf"] == operators["Softmax"] == 0
    fused = embedder_for(version).encode(PADDED_BATCH)
    monkeypatch.setattr(onnx_fusions, "fused", lambda nodes, initializers, outputs: (nodes, []))
    unfused = onnx.load_from_string(integer_matmul_model(model))
    assert Counter(node.op_type for node in unfused.graph.node)["Softmax"] == 6
    distance = 1 - (_encoder(version, unfused).encode(PADDED_BATCH) * fused).sum(axis=1)
    assert distance.max() < 0.003, distance


PADDED_BATCH = [  # one pass, padded to its longest text
    "a",
    "a short query about csv rows",
    "a longer passage. " * 40,
    "mid-length text on sockets " * 5,
]


def _encoder(version: ModelVersion, graph):
    """The version's embedder running `graph` instead of the one it builds."""
    embedder = type(embedder_for(version))(version)
    embedder.__dict__["session"] = _session(graph)
    return embedder


def _session(graph):
    import onnxruntime as ort

    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_onnx_version_is_pinned_by_its_tokenizer_too(registry, tmp_path, monkeypatch):
    """A tokenizer one byte different, from another package, is refused like changed weights."""
    pinned = registry.get(ONNX_INT8_VERSION)
    package = tmp_path / "other_tokenizer_pkg"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    config = json.loads(pinned.tokenizer_path().read_text())
    config["normalizer"]["lowercase"] = False  # a cased tokenizer: other ids for the same text
    (package / "model" / "tokenizer.json").write_text(json.dumps(config))
    monkeypatch.syspath_prepend(str(tmp_path))
    swapped = pinned.model_copy(
        update={
            "weights": WeightsSource(
                package=pinned.weights.package,
                subdir=pinned.weights.subdir,
                tokenizer=TokenizerSource(package=package.name),
            )
        }
    )
    with pytest.raises(FingerprintMismatchError, match=ONNX_INT8_VERSION):
        swapped.verified_weights_path()
    shutil.copy(pinned.tokenizer_path(), package / "model" / "tokenizer.json")
    assert swapped.verified_weights_path() == pinned.weights_path()  # the same bytes pass
    sys.modules.pop(package.name, None)


@pytest.mark.slow
def test_a_migration_from_minilm_to_the_onnx_version_is_blocked_by_no_gate(built_project, tmp_path_factory):
    project = built_project.copy(tmp_path_factory.mktemp("onnx"))
    assert project.migrate(DEFAULT_VERSION).promoted
    # 9 judged queries have their documents in this corpus, and int8 rounding settles near-ties either way:
    # nDCG@10 0.028 below MiniLM here (0.0007 on the shipped corpus's judged set, which the bench migrates),
    # past the 0.02 margin as a point estimate, but one query better, one worse and seven tied: the paired
    # interval reaches above zero, so golden quality warns and nothing blocks.
    migration = project.migrate(ONNX_INT8_VERSION)
    assert {c["name"] for c in migration.checks} == set(INDEX_CHECKS)
    failed = [c for c in migration.checks if not c["passed"]]
    assert migration.promoted and not migration.errors, migration.errors
    assert {(c["name"], c["severity"]) for c in failed} <= {
        (GOLDEN_QUALITY, "WARN"),
        (SCORE_CALIBRATION, "WARN"),
    }
    assert project.pointer.require_current().version == ONNX_INT8_VERSION
    # MiniLM's thresholds land within 0.02 of themselves in its int8 export's space; a model of its own
    # would move them further. Its entry carries their images on the shipped corpus (dedup 0.9472); this
    # small corpus has few pairs above dedup and puts it 0.01 higher, so score_calibration may warn here.
    [calibration] = [c for c in migration.checks if c["name"] == SCORE_CALIBRATION]
    mapped = calibration["metadata"]["thresholds_mapped"]
    assert mapped and all(
        abs(mapped[name] - t) < 0.02 for name, t in project.registry().get(DEFAULT_VERSION).thresholds.items()
    )
    carried = project.registry().get(ONNX_INT8_VERSION).thresholds
    assert carried.keys() == mapped.keys() and all(abs(mapped[n] - t) < 0.015 for n, t in carried.items())
