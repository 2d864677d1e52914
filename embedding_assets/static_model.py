"""Build the static (model2vec) model artifact reproducibly from a pinned base model."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from embedding_assets.fingerprint import fingerprint_weights
from embedding_assets.registry import ModelRegistry, ModelRegistryError, ModelVersion


def build_static_model(version: ModelVersion, registry: ModelRegistry, *, force: bool = False) -> str:
    """Distill `version` from its base model into its artifact folder; return the built fingerprint.

    The build is deterministic, so a rebuild reproduces the pinned fingerprint. Machine-specific
    paths that model2vec writes into config.json are replaced by the base version id.
    """
    recipe = version.weights.build
    if recipe is None or version.weights.artifact is None:
        raise ModelRegistryError(f"model version {version.id!r} has no build recipe and artifact path")
    target = version.weights.path()
    if target.is_dir() and not force:
        return fingerprint_weights(target)
    base = registry.get(recipe.base)
    base_path = base.verified_weights_path()

    from model2vec.distill import distill

    model = distill(str(base_path), pca_dims=recipe.pca_dims, device="cpu")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "model"
        model.save_pretrained(staging)
        config_path = staging / "config.json"
        config = json.loads(config_path.read_text())
        config["tokenizer_name"] = base.id
        config_path.write_text(json.dumps(config, indent=4, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)
    return fingerprint_weights(target)
