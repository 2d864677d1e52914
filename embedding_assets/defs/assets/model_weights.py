"""The model_weights asset: the pinned weights of a version, verified (and built, for static models)."""

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.defs.partitions import model_versions
from embedding_assets.defs.resources import ModelRegistryResource
from embedding_assets.models.builds import build_static_model
from embedding_assets.models.fingerprint import fingerprint_weights, weight_files


@dg.asset(group_name="models", partitions_def=model_versions, kinds={"pytorch"})
def model_weights(
    context: dg.AssetExecutionContext, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    """Weights of one pinned model version, checked against the registry pin before any use."""
    registry = model_registry.load()
    version = registry.get(context.partition_key)
    built: dict = {}
    if version.weights.build is not None:
        context.log.info(f"{version.id}: building from its recipe if the artifact is missing")
        record = build_static_model(version, registry, progress=False)
        built = {
            "recipe": record["recipe"],
            "artifact_fingerprint": record["artifact_fingerprint"],
            "built_at": record["built_at"],
            "built_on": record["machine"]["platform"],
        }
        context.log.info(f"{version.id}: artifact {record['artifact_fingerprint']} of the pinned recipe")
    path = version.verified_weights_path()
    files = weight_files(path)
    return dg.MaterializeResult(
        metadata={
            md.MODEL_VERSION: version.id,
            md.MODEL_FINGERPRINT: version.pinned_fingerprint(),
            "weights_fingerprint": built.get("artifact_fingerprint") or fingerprint_weights(path),
            "loader": version.loader,
            "dimension": version.dimension,
            "max_tokens": version.max_tokens,
            "weights_path": dg.MetadataValue.path(str(path)),
            "weight_bytes": sum(p.stat().st_size for p in files),
            md.PIPELINE_CONFIG_HASH: version.pipeline_config_hash(),
            **built,
        }
    )
