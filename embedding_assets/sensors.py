"""Sensors: keep the model-version partitions in step with the registry file."""

import dagster as dg

from embedding_assets.partitions import model_versions
from embedding_assets.resources import ModelRegistryResource


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def model_registry_sensor(context: dg.SensorEvaluationContext, model_registry: ModelRegistryResource):
    """Add a partition for every version pinned in the registry that Dagster does not know yet."""
    known = set(context.instance.get_dynamic_partitions(model_versions.name))
    new = [v for v in model_registry.load().ids if v not in known]
    if not new:
        return dg.SkipReason("every registered model version has a partition")
    return dg.SensorResult(dynamic_partitions_requests=[model_versions.build_add_request(new)])
