import dagster as dg

from embedding_assets.definitions import defs
from embedding_assets.partitions import model_versions
from embedding_assets.registry import load_registry
from embedding_assets.sensors import model_registry_sensor


def test_definitions_load_and_every_job_and_sensor_resolves():
    repo = defs.get_repository_def()
    assert {"corpus", "model_weights", "chunks", "embeddings", "index", "serving_index"} <= {
        k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()
    }
    for job in repo.get_all_jobs():
        assert job.name
    for sensor in defs.sensors or []:
        assert defs.resolve_sensor_def(sensor.name)


def test_every_asset_has_a_group_and_description():
    for key in defs.resolve_all_asset_keys():
        spec = defs.resolve_assets_def(key).specs_by_key[key]
        assert spec.group_name != "default" and spec.description, key


def test_registry_sensor_adds_a_partition_per_registered_version():
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(
        instance=instance, resources={"model_registry": defs.resources["model_registry"]}
    )
    result = model_registry_sensor(context)
    [request] = result.dynamic_partitions_requests
    assert request.partition_keys == load_registry().ids
    instance.add_dynamic_partitions(model_versions.name, list(request.partition_keys))
    assert isinstance(
        model_registry_sensor(
            dg.build_sensor_context(
                instance=instance, resources={"model_registry": defs.resources["model_registry"]}
            )
        ),
        dg.SkipReason,
    )
