"""Pin a model version in one step: fingerprint its weights (or its build recipe), probe its dimension,
write the entry."""

from __future__ import annotations

import json
from pathlib import Path

from embedding_assets.models.builds import recipe_fingerprint
from embedding_assets.models.embedders import LOADERS
from embedding_assets.models.registry import (
    ModelRegistry,
    ModelRegistryError,
    ModelVersion,
    StaticBuild,
    TokenizerSource,
    WeightsSource,
    load_registry,
    save_registry,
)

DEFAULT_MAX_TOKENS = 256


def _refuse_repin(registry: ModelRegistry, version_id: str, force: bool) -> None:
    if version_id in registry.ids and not force:
        raise ModelRegistryError(
            f"model version {version_id!r} is already pinned to {registry.get(version_id).fingerprint}; "
            "register new weights under a new id (or pass --force to re-pin deliberately)"
        )


def pin_version(
    registry_path: Path,
    models_dir: Path,
    version_id: str,
    loader: str,
    *,
    package: str | None = None,
    subdir: str = "model",
    artifact: str | None = None,
    tokenizer_package: str | None = None,
    tokenizer_subdir: str = "model",
    max_tokens: int | None = None,
    force: bool = False,
) -> ModelVersion:
    """Record the exact weights at `package` (its `subdir`) or `artifact` (under `models_dir`) as
    `version_id`; `tokenizer_package` names where the tokenizer is when the weights ship none (ONNX)."""
    if bool(package) == bool(artifact):
        raise ModelRegistryError("give exactly one of --package or --artifact")
    registry = load_registry(registry_path, models_dir)
    _refuse_repin(registry, version_id, force)
    tokenizer = (
        TokenizerSource(package=tokenizer_package, subdir=tokenizer_subdir) if tokenizer_package else None
    )
    weights = WeightsSource(package=package, subdir=subdir, artifact=artifact, tokenizer=tokenizer)
    path = weights.path(models_dir)
    if not path.is_dir():
        raise ModelRegistryError(f"no weights folder at {path}")
    config = path / "sentence_bert_config.json"
    limit = max_tokens or (json.loads(config.read_text()).get("max_seq_length") if config.exists() else None)
    draft = ModelVersion(
        id=version_id,
        loader=loader,
        weights=weights,
        fingerprint=None,
        dimension=1,
        max_tokens=limit or DEFAULT_MAX_TOKENS,
        models_dir=str(models_dir),
    )
    draft = draft.model_copy(update={"fingerprint": draft.weights_fingerprint()})
    version = draft.model_copy(update={"dimension": LOADERS[loader](draft).probe_dimension()})
    registry.upsert(version)
    save_registry(registry, registry_path)
    return version


def pin_distilled(
    registry_path: Path, version_id: str, base_id: str, *, pca_dims: int = 256, force: bool = False
) -> ModelVersion:
    """Register a static model distilled from `base_id`, pinned by its recipe (nothing is built yet: the
    `model_weights` asset or `build-model` builds it, and every load verifies it)."""
    registry = load_registry(registry_path)
    _refuse_repin(registry, version_id, force)
    base = registry.get(base_id)
    build = StaticBuild(base=base.id, base_fingerprint=base.pinned_fingerprint(), pca_dims=pca_dims)
    version = ModelVersion(
        id=version_id,
        loader="model2vec",
        weights=WeightsSource(artifact=version_id, build=build),
        fingerprint=recipe_fingerprint(build),
        dimension=pca_dims,
        max_tokens=base.max_tokens,
        description=f"static model distilled from {base.id} with model2vec (PCA {pca_dims})",
    )
    registry.upsert(version)
    save_registry(registry, registry_path)
    return version
