"""Pin a model version in one step: fingerprint its weights, probe its dimension, write the entry."""

from __future__ import annotations

import json

from embedding_assets.embedders import LOADERS
from embedding_assets.fingerprint import fingerprint_weights
from embedding_assets.registry import (
    ModelRegistryError,
    ModelVersion,
    WeightsSource,
    load_registry,
    save_registry,
)

DEFAULT_MAX_TOKENS = 256


def pin_version(
    version_id: str,
    loader: str,
    *,
    package: str | None = None,
    artifact: str | None = None,
    max_tokens: int | None = None,
    force: bool = False,
) -> ModelVersion:
    """Record the exact weights at `package` or `artifact` as `version_id` in the registry."""
    if bool(package) == bool(artifact):
        raise ModelRegistryError("give exactly one of --package or --artifact")
    registry = load_registry()
    if version_id in registry.ids and not force:
        raise ModelRegistryError(
            f"model version {version_id!r} is already pinned to {registry.get(version_id).fingerprint}; "
            "register new weights under a new id (or pass --force to re-pin deliberately)"
        )
    weights = WeightsSource(package=package, artifact=artifact)
    path = weights.path()
    if not path.is_dir():
        raise ModelRegistryError(f"no weights folder at {path}")
    config = path / "sentence_bert_config.json"
    limit = max_tokens or (json.loads(config.read_text()).get("max_seq_length") if config.exists() else None)
    draft = ModelVersion(
        id=version_id,
        loader=loader,
        weights=weights,
        fingerprint=fingerprint_weights(path),
        dimension=1,
        max_tokens=limit or DEFAULT_MAX_TOKENS,
    )
    probe = LOADERS[loader](draft).encode(["dimension probe"])
    version = draft.model_copy(update={"dimension": int(probe.shape[1])})
    registry.upsert(version)
    save_registry(registry)
    return version
