"""Pinning: exact weights or nothing."""

import shutil
from pathlib import Path

import pytest

from embedding_assets import locations
from embedding_assets.models.fingerprint import fingerprint_weights
from embedding_assets.models.pinning import pin_version
from embedding_assets.models.registry import (
    DEFAULT_VERSION,
    ONNX_INT8_VERSION,
    STATIC_VERSION,
    FingerprintMismatchError,
    ModelRegistry,
    UnpinnedModelError,
    WeightsSource,
    load_registry,
)


@pytest.fixture
def weights_copy(minilm, tmp_path):
    """A copy of the pinned MiniLM weights under the test data folder, as an artifact."""
    target = Path(minilm.models_dir) / tmp_path.name
    shutil.copytree(minilm.weights_path(), target)
    yield target
    shutil.rmtree(target)


def test_shipped_versions_are_pinned(registry):
    assert {DEFAULT_VERSION, STATIC_VERSION, ONNX_INT8_VERSION} <= set(registry.ids)
    for version in registry.versions:
        kind = "recipe-sha256:" if version.weights.build else "sha256:"  # built: recipe; package: bytes
        assert version.pinned_fingerprint().startswith(kind)


def test_pinned_minilm_verifies(minilm):
    assert fingerprint_weights(minilm.verified_weights_path()) == minilm.fingerprint


@pytest.mark.parametrize("fingerprint", [None, "latest", "LATEST", "sha256:abc"])
def test_unpinned_versions_are_refused(minilm, fingerprint):
    unpinned = minilm.model_copy(update={"fingerprint": fingerprint})
    with pytest.raises(UnpinnedModelError, match=f"model version '{minilm.id}'"):
        unpinned.verified_weights_path()


@pytest.mark.parametrize("reference", ["latest", "model@latest"])
def test_moving_references_are_refused(reference):
    with pytest.raises(ValueError, match="moving reference"):
        WeightsSource(package=reference)


def test_latest_as_a_version_id_is_refused(registry):
    with pytest.raises(UnpinnedModelError, match="moving reference"):
        registry.get("latest")
    with pytest.raises(ValueError, match="moving reference"):
        ModelRegistry.model_validate({"versions": [{**registry.versions[0].model_dump(), "id": "latest"}]})


def test_changed_weights_behind_the_same_version_are_refused(minilm, weights_copy):
    swapped = minilm.model_copy(update={"weights": WeightsSource(artifact=weights_copy.name)})
    assert swapped.verified_weights_path() == weights_copy  # identical copy: accepted
    config = weights_copy / "sentence_bert_config.json"
    config.write_text(config.read_text().replace("256", "128"))  # a preprocessing change, same version id
    with pytest.raises(FingerprintMismatchError) as refused:
        swapped.verified_weights_path()
    message = str(refused.value)
    assert (
        minilm.id in message
        and minilm.fingerprint in message
        and fingerprint_weights(weights_copy) in message
    )


def test_pipeline_hash_follows_chunking_and_encoder(minilm):
    rechunked = minilm.model_copy(
        update={"chunking": minilm.chunking.model_copy(update={"chunk_tokens": 120})}
    )
    shorter = minilm.model_copy(update={"max_tokens": 128})
    hashes = {minilm.pipeline_config_hash(), rechunked.pipeline_config_hash(), shorter.pipeline_config_hash()}
    assert len(hashes) == 3
    assert rechunked.encoder_key() == minilm.encoder_key() != shorter.encoder_key()


def test_pin_writes_a_verified_entry(minilm, weights_copy, tmp_path, minilm_embedder):
    registry_path = tmp_path / "registry.yaml"
    shutil.copyfile(locations.SHIPPED_REGISTRY, registry_path)
    models = Path(minilm.models_dir)
    pinned = pin_version(
        registry_path, models, "minilm-copy", "sentence-transformers", artifact=weights_copy.name
    )
    assert pinned.fingerprint == minilm.fingerprint and pinned.dimension == 384 and pinned.max_tokens == 256
    assert load_registry(registry_path, models).get("minilm-copy") == pinned
    with pytest.raises(ValueError, match="already pinned"):
        pin_version(registry_path, models, "minilm-copy", "sentence-transformers", artifact=weights_copy.name)


def test_model_weights_asset_reports_the_verified_pin(minilm):
    """Unit test of the asset itself: called with a context built for one partition."""
    import dagster as dg

    from embedding_assets.definitions import build_resources
    from embedding_assets.defs.assets.model_weights import model_weights

    resources = {"model_registry": build_resources()["model_registry"]}
    with dg.build_asset_context(partition_key=minilm.id, resources=resources) as context:
        result = model_weights(context)
    meta = result.metadata
    assert meta["model_fingerprint"] == meta["weights_fingerprint"] == minilm.fingerprint
    assert meta["dimension"] == 384 and meta["weight_bytes"] > 0
