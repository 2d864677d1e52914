"""The model_weights asset: the pinned weights of a version, verified (and built, for static models)."""

import dagster as dg

from embedding_assets.fingerprint import weight_files
from embedding_assets.partitions import model_versions
from embedding_assets.resources import ModelRegistryResource
from embedding_assets.static_model import build_static_model


@dg.asset(group_name="models", partitions_def=model_versions, kinds={"pytorch"})
def model_weights(
    context: dg.AssetExecutionContext, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    """Weights of one pinned model version, checked against the registry fingerprint before any use."""
    registry = model_registry.load()
    version = registry.get(context.partition_key)
    if version.weights.build is not None:
        built = build_static_model(version, registry)
        context.log.info(f"built {version.id} with fingerprint {built}")
    path = version.verified_weights_path()
    files = weight_files(path)
    return dg.MaterializeResult(
        metadata={
            "model_version": version.id,
            "model_fingerprint": version.pinned_fingerprint(),
            "loader": version.loader,
            "dimension": version.dimension,
            "max_tokens": version.max_tokens,
            "weights_path": dg.MetadataValue.path(str(path)),
            "weight_bytes": sum(p.stat().st_size for p in files),
            "pipeline_config_hash": version.pipeline_config_hash(),
        }
    )
