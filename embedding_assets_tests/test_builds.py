"""Built model versions pin by recipe on any machine: a changed recipe or tampered bytes are refused, and
a rebuild is a new artifact of the same recipe that the sentinel drift gate judges."""

import json
import subprocess
import sys

import numpy as np
import pytest

from embedding_assets.defs.checks.gates import SENTINEL_DRIFT
from embedding_assets.models.builds import build_static_model, read_record, recipe, recipe_fingerprint
from embedding_assets.models.embedders import embedder_for, load_static_model
from embedding_assets.models.registry import (
    FingerprintMismatchError,
    ModelRegistryError,
    RecipeMismatchError,
    StaticBuild,
)
from embedding_assets_tests.project import BUILD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def static(registry):
    version = next(v for v in registry.versions if v.weights.build is not None)
    build_static_model(version, registry)  # once per session: later builds find the artifact
    return version


def test_the_pin_is_the_recipe_not_the_bytes(static):
    build = static.weights.build
    assert recipe_fingerprint(build) == static.fingerprint
    assert set(recipe(build)["libraries"]) >= {"model2vec", "torch", "numpy", "scikit-learn"}
    record = read_record(static.weights_path())
    assert record["recipe_fingerprint"] == static.fingerprint and record["artifact_fingerprint"].startswith(
        "sha256:"
    )
    assert static.verified_weights_path() == static.weights_path()


@pytest.mark.parametrize(
    "change", [{"pca_dims": 128}, {"base": "minilm-l6-v2", "base_fingerprint": "sha256:" + "0" * 64}]
)
def test_a_changed_recipe_is_refused(static, change):
    build = StaticBuild.model_validate({**static.weights.build.model_dump(), **change})
    changed = static.model_copy(update={"weights": static.weights.model_copy(update={"build": build})})
    with pytest.raises(RecipeMismatchError) as refused:
        changed.verified_weights_path()
    message = str(refused.value)
    assert static.id in message and static.fingerprint in message and recipe_fingerprint(build) in message


def test_tampered_bytes_are_refused(static):
    artifact = static.weights_path()
    config = artifact / "config.json"
    original = config.read_bytes()
    recorded = read_record(artifact)["artifact_fingerprint"]
    try:
        config.write_text(json.dumps({**json.loads(original), "normalize": False}))
        with pytest.raises(FingerprintMismatchError) as refused:
            static.verified_weights_path()
        message = str(refused.value)
        assert static.id in message and recorded in message and refused.value.actual in message
    finally:
        config.write_bytes(original)
    assert static.verified_weights_path() == artifact


def test_an_artifact_without_its_build_record_is_refused(static, tmp_path):
    elsewhere = static.model_copy(update={"models_dir": str(tmp_path)})
    (tmp_path / static.weights.artifact).mkdir()
    (tmp_path / static.weights.artifact / "config.json").write_text("{}")
    with pytest.raises(ModelRegistryError, match="no build record"):
        elsewhere.verified_weights_path()


def test_a_rebuild_is_judged_by_the_sentinel_drift_gate(built_project, static, registry, tmp_path, capfd):
    """Rebuilt as a run builds (no terminal bar: a run logs through Dagster), the artifact is new bytes
    of the same recipe, and the sentinel drift gate judges its space."""
    project = built_project.copy(tmp_path / "rebuild")
    project.materialize(BUILD, version=static.id)  # sentinels stored with the first artifact's vectors
    before = read_record(static.weights_path())
    capfd.readouterr()
    after = build_static_model(static, registry, force=True, progress=False)
    assert "Encoding tokens" not in capfd.readouterr().err  # model2vec's own tqdm bar
    assert after["built_at"] != before["built_at"] and after["recipe_fingerprint"] == static.fingerprint
    assert static.verified_weights_path()
    gates = project.gates(static.id)
    [drift] = [c for c in gates.checks if c["name"] == SENTINEL_DRIFT]
    assert drift["metadata"]["sentinels"] >= 100 and "p95_distance" in drift["metadata"], drift
    assert drift["passed"], drift  # the same recipe on the same machine: the rebuilt space is the same


def test_the_static_encoder_gives_model2vecs_vectors(static, small_corpus):
    """The project sums a static model's token vectors as one sparse product; model2vec averages them
    text by text. Both round to float16, so the vectors agree to one float16 step."""
    embedder = embedder_for(static)
    texts = [
        p.read_text(encoding="utf-8")[:3000] for p in sorted(small_corpus.rglob("*"))[:40] if p.is_file()
    ]
    first_empty = len(texts)
    texts += ["", "   ", "🙂🙃", "naïve café ☕ 🙂 über", "word " * 2000]  # empty, unknown tokens, truncation
    ours = embedder.encode(texts)
    theirs = embedder.model.encode(texts, max_length=static.max_tokens).astype(np.float32)
    assert ours.shape == theirs.shape == (len(texts), static.dimension)
    assert np.abs(ours - theirs).max() <= 1e-3
    empty = np.linalg.norm(theirs, axis=1) == 0
    assert empty[first_empty] and (np.linalg.norm(ours[empty], axis=1) == 0).all()
    a, b = ours[~empty], theirs[~empty]
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert (cosine > 0.99999).all(), cosine.min()


def test_the_static_model_loads_as_model2vec_loads_it_without_its_hub_client(static):
    """The project reads the folder itself: the same vectors, tokenizer and settings as `from_pretrained`,
    without importing the hub client and model cards (a quarter second of every refresh)."""
    from model2vec import StaticModel

    ours = load_static_model(static.weights_path(), static.normalize)
    theirs = StaticModel.from_pretrained(str(static.weights_path()), normalize=static.normalize)
    assert ours.embedding.dtype == theirs.embedding.dtype
    assert np.array_equal(ours.embedding, theirs.embedding)
    assert ours.tokenizer.to_str() == theirs.tokenizer.to_str()
    assert (ours.normalize, ours.max_length, ours.unk_token_id) == (
        theirs.normalize,
        theirs.max_length,
        theirs.unk_token_id,
    )
    assert ours.weights is theirs.weights is None and ours.token_mapping is theirs.token_mapping is None
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from embedding_assets.models.embedders import load_static_model as load; "
            f"load(__import__('pathlib').Path({str(static.weights_path())!r}), True); "
            "print('huggingface_hub.repocard' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "False"
