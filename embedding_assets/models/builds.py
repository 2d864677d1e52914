"""Model versions the project builds (a static model distilled with model2vec), pinned by their recipe.

A forward pass over the vocabulary and a PCA give different last bits on different CPUs, so the bytes of
an artifact built on one machine cannot pin it for every machine. A built version is pinned instead by
its recipe: the base version's fingerprint, the method and its parameters, and the installed (locked)
versions of the libraries that build it. A build writes `<artifact>.build.json` beside the artifact,
recording the recipe and the artifact's byte fingerprint; every later load checks both, so tampered bytes
or an artifact of another recipe are refused. A rebuild on another machine is a new artifact of the same
recipe: the sentinel drift gate of that data folder measures how far its vectors moved.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from embedding_assets.models.fingerprint import fingerprint_weights
from embedding_assets.models.registry import (
    FingerprintMismatchError,
    ModelRegistry,
    ModelRegistryError,
    ModelVersion,
    RecipeMismatchError,
    StaticBuild,
)

# Libraries whose code computes a distilled model's numbers: a new release of any is a new recipe.
BUILD_LIBRARIES = ("model2vec", "numpy", "safetensors", "scikit-learn", "tokenizers", "torch", "transformers")
RECORD_SUFFIX = ".build.json"


def recipe(build: StaticBuild) -> dict[str, Any]:
    """What a build is made of: base pin, method, parameters, and the library versions installed here."""
    return {
        **build.model_dump(mode="json"),
        "libraries": {name: metadata.version(name) for name in BUILD_LIBRARIES},
    }


def recipe_fingerprint(build: StaticBuild) -> str:
    payload = json.dumps(recipe(build), sort_keys=True).encode()
    return f"recipe-sha256:{hashlib.sha256(payload).hexdigest()}"


def record_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + RECORD_SUFFIX)


def read_record(artifact: Path) -> dict[str, Any] | None:
    path = record_path(artifact)
    return json.loads(path.read_text()) if path.is_file() else None


def _check_recipe(version: ModelVersion) -> StaticBuild:
    build = version.weights.build
    if build is None or version.weights.artifact is None:
        raise ModelRegistryError(f"model version {version.id!r} has no build recipe and artifact path")
    expected, actual = version.pinned_fingerprint(), recipe_fingerprint(build)
    if actual != expected:
        raise RecipeMismatchError(version.id, expected, actual, recipe(build))
    return build


def verify_built_artifact(version: ModelVersion, artifact: Path) -> None:
    """Refuse an artifact that is not what this version's pinned recipe built here: a changed recipe, a
    missing or foreign build record, or bytes that differ from the ones the build recorded."""
    _check_recipe(version)
    record = read_record(artifact)
    if record is None:
        raise ModelRegistryError(
            f"model version {version.id!r}: {artifact} has no build record {record_path(artifact).name}; "
            "rebuild it with `embedding-assets build-model --force`"
        )
    if record.get("recipe_fingerprint") != version.fingerprint:
        raise ModelRegistryError(
            f"model version {version.id!r}: {artifact} was built from recipe "
            f"{record.get('recipe_fingerprint')}, but the registry pins {version.fingerprint}; "
            "rebuild it with `embedding-assets build-model --force`"
        )
    actual = fingerprint_weights(artifact)
    if actual != record["artifact_fingerprint"]:
        raise FingerprintMismatchError(
            version.id, record["artifact_fingerprint"], actual, artifact, pinned_by="its build recorded"
        )


@contextmanager
def _quiet_distill(progress: bool) -> Iterator[None]:
    """model2vec draws a tqdm bar over the vocabulary and has no switch for it; inside a run (`progress`
    False) the bar would land in the run's logs, so it is drawn disabled there."""
    from model2vec.distill import inference

    if progress:
        yield
        return
    bar = inference.tqdm
    inference.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        inference.tqdm = bar


def build_static_model(
    version: ModelVersion, registry: ModelRegistry, *, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Distill `version` from its base model into its artifact folder (unless it is there already, or
    `force`); return the build record (recipe, artifact byte fingerprint, when and where it was built).
    `progress` draws model2vec's terminal bar; a run passes False and logs through Dagster instead."""
    build = _check_recipe(version)
    target = version.weights_path()
    if target.is_dir() and not force and (existing := read_record(target)) is not None:
        return existing
    base_path = registry.get(build.base).verified_weights_path()

    from model2vec.distill import distill

    with _quiet_distill(progress):
        model = distill(str(base_path), pca_dims=build.pca_dims, device="cpu")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "model"
        model.save_pretrained(staging)
        config_path = staging / "config.json"
        config = json.loads(config_path.read_text())
        config["tokenizer_name"] = build.base  # model2vec writes this machine's absolute path here
        config_path.write_text(json.dumps(config, indent=4, sort_keys=True) + "\n")
        record = {
            "version": version.id,
            "recipe_fingerprint": version.fingerprint,
            "recipe": recipe(build),
            "artifact_fingerprint": fingerprint_weights(staging),
            "built_at": datetime.now(UTC).isoformat(),
            "machine": {"platform": platform.platform(), "processor": platform.machine()},
        }
        if target.exists():
            shutil.rmtree(target)
        record_path(target).unlink(missing_ok=True)
        shutil.move(str(staging), target)
        tmp_record = Path(tmp) / "record.json"
        tmp_record.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        tmp_record.replace(record_path(target))
    return record
