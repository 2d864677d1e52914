import dagster as dg
import pytest

from embedding_assets.definitions import build_definitions, build_resources, defs
from embedding_assets.defs import tags
from embedding_assets.defs.assets.chunks import chunks
from embedding_assets.defs.assets.corpus import corpus
from embedding_assets.defs.assets.embeddings import embeddings
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.assets.model_weights import model_weights
from embedding_assets.defs.assets.serving import serving_index
from embedding_assets.defs.assets.shards import SHARD_VECTORS
from embedding_assets.defs.checks.freshness import SERVED_FRESHNESS
from embedding_assets.defs.checks.gates import INDEX_CHECKS
from embedding_assets.defs.hooks import STEP_HOOKS
from embedding_assets.defs.partitions import SHARD_DIMENSION, VERSION_DIMENSION, model_versions
from embedding_assets.defs.resources import LanceDBResource, S3StorageResource
from embedding_assets.defs.sensors import _refresh_in_flight, model_registry_sensor
from embedding_assets.wiring import initialized, wiring

VERSION = {model_weights.key, chunks.key, embeddings.key, index.key}
# job -> (assets it materializes, whether it runs the index gates, partitioned by model version)
JOBS = {
    # A build's gates run in a check_index run of their own, after it succeeded; a migration promotes in a
    # promote_index run after that.
    "build_index": ({corpus.key} | VERSION, False, True),
    "migrate_index": ({corpus.key} | VERSION, False, True),
    "promote_index": ({serving_index.key}, False, True),
    "check_index": (set(), True, True),
    "refresh_version": (VERSION, True, True),
    "refresh_served": (VERSION | {serving_index.key}, True, True),
    "sync_corpus": ({corpus.key}, False, False),
    "check_served_freshness": (set(), False, False),
    "rollback_serving": (set(), False, False),
    "prepare_shards": ({corpus.key, model_weights.key}, False, True),
    "optimize_index": (set(), False, True),  # an op: index maintenance, no materialization of its own
}


def test_every_asset_and_check_is_defined():
    repo = defs.get_repository_def()
    assert {corpus.key, SHARD_VECTORS, serving_index.key} | VERSION == set(
        repo.asset_graph.get_all_asset_keys()
    )
    checks = {k.name for k in repo.asset_graph.asset_check_keys}
    assert checks == {*INDEX_CHECKS, SERVED_FRESHNESS}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_each_job_targets_what_it_says(name):
    job = defs.resolve_job_def(name)
    assets, gates, partitioned = JOBS[name]
    assert job.asset_layer.executable_asset_keys == assets
    gate_keys = {k.name for k in job.asset_layer.asset_graph.asset_check_keys if k.asset_key == index.key}
    assert gate_keys == (set(INDEX_CHECKS) if gates else set()), gate_keys
    assert (job.partitions_def == model_versions) == partitioned  # the UI offers a partition picker


def test_a_sharded_backfill_is_partitioned_by_version_and_shard(monkeypatch):
    """backfill_shards runs one version × shard partition; the version's chunks read all its shards."""
    job = defs.resolve_job_def("backfill_shards")
    assert job.asset_layer.executable_asset_keys == {SHARD_VECTORS}
    dimensions = {d.name: d.partitions_def for d in job.partitions_def.partitions_defs}
    assert dimensions[VERSION_DIMENSION] == model_versions
    assert dimensions[SHARD_DIMENSION].get_partition_keys() == ["0-of-4", "1-of-4", "2-of-4", "3-of-4"]
    graph = defs.get_repository_def().asset_graph
    assert SHARD_VECTORS in graph.get(chunks.key).parent_keys
    monkeypatch.setenv("EMBEDDING_ASSETS_CORPUS_SHARDS", "2")
    two = build_definitions().resolve_job_def("backfill_shards").partitions_def
    assert two.get_partitions_def_for_dimension(SHARD_DIMENSION).get_partition_keys() == ["0-of-2", "1-of-2"]
    assert defs.resolve_sensor_def("shards_landed_sensor").description


def test_schedules_and_sensors_resolve_to_their_jobs():
    schedules = {s.name: s for s in defs.schedules or []}
    assert defs.resolve_schedule_def("refresh_live_versions_schedule").job_name == "sync_corpus"
    assert defs.resolve_schedule_def("served_freshness_schedule").job_name == "check_served_freshness"
    assert all(s.description for s in schedules.values())
    targets = {
        name: defs.resolve_sensor_def(name).job_name
        for name in ("corpus_folder_sensor", "postgres_cdc_sensor")
    }
    assert targets == {"corpus_folder_sensor": "sync_corpus", "postgres_cdc_sensor": "sync_corpus"}
    # After a sync, one run per live version; after the last of a batch, the change-capture commit.
    for name in ("model_registry_sensor", "refresh_live_versions_sensor", "change_capture_commit_sensor"):
        assert defs.resolve_sensor_def(name).description, name
    # After a version's refresh, its index maintenance.
    assert defs.resolve_sensor_def("optimize_after_refresh_sensor").job_name == "optimize_index"


def test_every_asset_has_a_group_and_description():
    for key in defs.resolve_all_asset_keys():
        spec = defs.resolve_assets_def(key).specs_by_key[key]
        assert spec.group_name != "default" and spec.description, key


def test_corpus_and_index_carry_the_freshness_policy_where_the_refresh_schedule_runs(monkeypatch):
    """In production the schedules run, so corpus and index must stay within the SLO; on a laptop the
    schedules start stopped, and a policy would read Failed on every fresh build."""
    for asset in (corpus, index):
        assert defs.resolve_assets_def(asset.key).specs_by_key[asset.key].freshness_policy is None
    monkeypatch.setenv("EMBEDDING_ASSETS_ENV", "production")
    production = build_definitions()
    for asset in (corpus, index):
        assert production.resolve_assets_def(asset.key).specs_by_key[asset.key].freshness_policy is not None


def test_every_entry_point_shares_one_wiring():
    wired = wiring(defs)
    assert wired.lancedb.uri == wiring().lancedb.uri
    assert wired.model_registry.load().ids == wiring().model_registry.load().ids


S3 = S3StorageResource(
    endpoint="http://127.0.0.1:9000", region="eu-west-1", access_key_id="id", secret_access_key="key"
)


@pytest.mark.parametrize(
    ("uri", "s3", "options"),
    [
        ("data/lancedb", S3, {}),
        ("s3://bucket/prefix", S3StorageResource(), {}),
        ("s3://bucket/prefix", S3StorageResource(region="us-east-1"), {"aws_region": "us-east-1"}),
        (
            "s3://bucket/prefix",
            S3.model_copy(update={"allow_http": True}),
            {
                "aws_endpoint": "http://127.0.0.1:9000",
                "aws_region": "eu-west-1",
                "aws_access_key_id": "id",
                "aws_secret_access_key": "key",
                "allow_http": "true",
            },
        ),
    ],
)
def test_lancedb_storage_options_apply_to_s3_uris_only(uri, s3, options):
    assert LanceDBResource(uri=uri, s3=s3).storage_options() == options


def test_s3_settings_come_from_the_environment_and_the_secret_stays_an_env_var(monkeypatch):
    monkeypatch.setenv("EMBEDDING_ASSETS_LANCEDB_URI", "s3://bucket/prefix")
    monkeypatch.setenv("EMBEDDING_ASSETS_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("EMBEDDING_ASSETS_S3_SECRET_ACCESS_KEY", "not-in-config")
    monkeypatch.setenv("EMBEDDING_ASSETS_S3_ALLOW_HTTP", "True")
    lancedb = build_resources()["lancedb"]
    assert isinstance(lancedb.s3.secret_access_key, dg.EnvVar) and lancedb.s3.allow_http
    assert "not-in-config" not in repr(lancedb)
    options = initialized(lancedb).storage_options()
    assert options["aws_secret_access_key"] == "not-in-config" and options["allow_http"] == "true"


def test_registry_sensor_adds_a_partition_per_registered_version():
    instance = dg.DagsterInstance.ephemeral()
    resources = {"model_registry": defs.resources["model_registry"]}
    result = model_registry_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    [request] = result.dynamic_partitions_requests
    assert request.partition_keys == wiring().model_registry.load().ids
    instance.add_dynamic_partitions(model_versions.name, list(request.partition_keys))
    again = model_registry_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(again, dg.SkipReason)


# A QUEUED run needs a code location origin to be stored; the daemon test covers the queue itself.
@pytest.mark.parametrize("status", [s for s in dg.DagsterRunStatus if s != dg.DagsterRunStatus.QUEUED])
def test_a_refresh_counts_as_in_flight_until_it_ends(status):
    """A run the queue has just launched is STARTING while its worker imports the code: a sensor that
    took it for idle requested a second corpus sync (seen once in the daemon test)."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_run(dg.DagsterRun(job_name="sync_corpus", status=status, tags={tags.REFRESH: "1"}))
    with dg.build_sensor_context(instance=instance) as context:
        busy = _refresh_in_flight(context)
    ended = status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    assert busy == (not ended and status not in (dg.DagsterRunStatus.MANAGED, dg.DagsterRunStatus.SUSPENDED))


@pytest.mark.parametrize("name", sorted(set(JOBS) - {"rollback_serving"}) + ["backfill_shards"])
def test_each_asset_job_gives_memory_back_after_every_step(name):
    """An in-process run's steps share one process: each hands what it freed back before the next."""
    assert defs.resolve_job_def(name).hook_defs >= STEP_HOOKS


def test_partitions_another_command_added_meanwhile_are_not_added_twice(tmp_path, registry, monkeypatch):
    """Dagster reads which partitions exist and then inserts the rest, so of two commands starting on a new
    instance the second's insert can meet the first's rows (a race two processes rarely lose on cue: here
    the other command's add lands first, then the insert fails as SQLite fails it). The command reads
    again and adds only what is still missing."""
    import sqlalchemy.exc

    from embedding_assets.cli import runner

    instance = dg.DagsterInstance.local_temp(str(tmp_path))
    real = instance.add_dynamic_partitions
    calls: list[list[str]] = []

    def raced(name: str, keys: list[str]) -> None:
        calls.append(list(keys))
        if len(calls) == 1:
            real(name, keys[:1])  # the other command's add, between this one's read and its insert
            raise sqlalchemy.exc.IntegrityError("INSERT INTO dynamic_partitions", {}, Exception("UNIQUE"))
        real(name, keys)

    monkeypatch.setattr(instance, "add_dynamic_partitions", raced)
    added = runner.sync_partitions(instance, registry)
    assert calls == [registry.ids, registry.ids[1:]] and added == registry.ids[1:]
    assert sorted(instance.get_dynamic_partitions(model_versions.name)) == sorted(registry.ids)
