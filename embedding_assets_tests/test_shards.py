"""Corpus shards: a stable split by document id, a backfill that stages each shard in a run of its own and
a build that folds them in (nothing cut or encoded twice, no duplicate row), and the sensor that builds a
version when its last shard landed. The static version keeps it fast; the real daemon path is measured by
`scripts/bench-shards`."""

import collections

import dagster as dg
import pyarrow.compute as pc
import pytest

from embedding_assets.cli import runner
from embedding_assets.defs import tags
from embedding_assets.defs.assets.chunks import chunks
from embedding_assets.defs.assets.embeddings import embeddings
from embedding_assets.defs.checks.gates import COUNT_RECONCILIATION, DATA_QUALITY
from embedding_assets.defs.jobs import BACKFILL_SHARDS_JOB, BUILD_INDEX_JOB
from embedding_assets.defs.partitions import shard_partition
from embedding_assets.defs.sensors import build_shards_landed_sensor
from embedding_assets.index import staging, store, tables
from embedding_assets.index.shards import Shard, ShardKeyError, shard_keys, shard_of
from embedding_assets_tests.project import BUILD, Project

SHARDS = 3


@pytest.fixture(scope="module")
def static_version(registry) -> str:
    return next(v.id for v in registry.versions if v.loader == "model2vec")


@pytest.fixture(scope="module", autouse=True)
def three_shards():
    """Every deployment of this module splits its corpus into three shards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDDING_ASSETS_CORPUS_SHARDS", str(SHARDS))
        yield


@pytest.fixture(scope="module")
def sharded(small_corpus, tmp_path_factory, static_version):
    """The small corpus backfilled by three shards with the static version, in this process."""
    project = Project(tmp_path_factory.mktemp("sharded"), small_corpus)
    project.report = runner.backfill(static_version, **project.job())
    return project


def _latest(project: Project, asset: dg.AssetsDefinition, version: str) -> dict:
    records = project.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[version]), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def test_a_document_always_lands_in_the_same_shard():
    # SHA-256 of the id, not Python's per-process hash(): the same on every machine and run.
    pinned = {
        "library/json/index.md": [0, 2, 0, 4],
        "topics/for.md": [0, 0, 0, 1],
        "source/shlex.py": [0, 0, 2, 5],
    }
    assert {d: [shard_of(d, n) for n in (2, 3, 4, 7)] for d in pinned} == pinned
    ids = [f"doc-{i}" for i in range(4000)]
    sizes = collections.Counter(shard_of(d, 4) for d in ids)
    assert set(sizes) == {0, 1, 2, 3} and min(sizes.values()) > 900  # close to even
    owners = [[s for s in range(4) if Shard(s, 4).owns(d)] for d in ids]
    assert all(len(o) == 1 for o in owners)  # each document in exactly one shard
    assert shard_keys(2) == ["0-of-2", "1-of-2"] and Shard.parse("3-of-4") == Shard(3, 4)
    for bad in ("4-of-4", "a-of-2", "1of2", "0-of-0"):
        with pytest.raises(ShardKeyError, match="i-of-n"):
            Shard.parse(bad)
    with pytest.raises(ShardKeyError, match="at least one shard"):
        shard_keys(0)


def test_a_sharded_backfill_folds_every_shard_and_gates_the_whole_version(sharded, static_version):
    report = sharded.report
    assert report.ok, report.to_json()
    db = sharded.db()
    documents = db.open_table(tables.DOCUMENTS_TABLE).count_rows()
    assert [s["shard"] for s in report.shards] == shard_keys(SHARDS)
    assert sum(s["shard_documents"] for s in report.shards) == documents
    assert sum(s["documents_chunked"] for s in report.shards) == documents

    rows = sharded.index_rows(static_version)
    chunk_total = db.open_table(tables.chunks_table(static_version)).count_rows()
    assert rows.num_rows == chunk_total == sum(s["chunks_staged"] for s in report.shards)
    assert pc.count_distinct(rows["chunk_id"]).as_py() == rows.num_rows  # no duplicate row
    # The build cut and encoded nothing itself: every chunk and vector came from a shard.
    cut, encoded = _latest(sharded, chunks, static_version), _latest(sharded, embeddings, static_version)
    assert cut["chunks_from_shards"] == cut["chunks_written"] == chunk_total
    assert encoded["chunks_embedded"] == 0
    assert encoded["vectors_from_shards"] == pc.count_distinct(rows["chunk_hash"]).as_py()
    assert not [n for n in store.table_names(db) if n.startswith(tables.STAGING_TABLE_PREFIX)]

    gates = {c["name"]: c for c in report.build.checks}
    assert gates[COUNT_RECONCILIATION]["passed"] and gates[DATA_QUALITY]["passed"]
    build_run = sharded.instance.get_run_by_id(report.build.run_id)
    assert build_run.job_name == BUILD_INDEX_JOB and build_run.tags[tags.SHARDS] == str(SHARDS)
    shard_runs = [sharded.instance.get_run_by_id(s["run_id"]) for s in report.shards]
    assert {r.job_name for r in shard_runs} == {BACKFILL_SHARDS_JOB}
    assert {r.tags[tags.PARTITION] for r in shard_runs} == {
        str(shard_partition(static_version, k)) for k in shard_keys(SHARDS)
    }


def test_the_same_rows_as_a_build_without_shards(sharded, small_corpus, tmp_path, static_version):
    plain = Project(tmp_path, small_corpus)
    assert plain.materialize(BUILD, static_version).success  # chunked and encoded here, no shards
    columns = ["chunk_id", "chunk_hash", "doc_checksum", "pipeline_config_hash", "model_fingerprint"]
    rows = [p.index_rows(static_version).select(columns).sort_by("chunk_id") for p in (sharded, plain)]
    assert rows[0].equals(rows[1])


def test_a_staged_chunk_of_an_older_text_is_not_folded(sharded, tmp_path, static_version):
    project = sharded.copy(tmp_path / "copy")
    shard = Shard.parse(shard_keys(SHARDS)[0])
    names = sorted(p.relative_to(project.corpus).as_posix() for p in project.corpus.rglob("*.md"))
    doc = next(d for d in names if shard.owns(d))
    # Shard 0 stages the document's new text; the text changes again before the version is built.
    (project.corpus / doc).write_text("A fresh text about shard staging.\n", encoding="utf-8")
    assert runner.run_job("sync_corpus", None, **project.job()).success
    partition = str(shard_partition(static_version, shard.key))
    assert runner.run_job(
        BACKFILL_SHARDS_JOB, static_version, partition_key=partition, **project.job()
    ).success
    assert staging.staged_tables(project.db(), static_version, staging.CHUNKS)
    (project.corpus / doc).write_text("Changed again after its shard staged it.\n", encoding="utf-8")
    assert project.materialize(BUILD, static_version).success
    cut = _latest(project, chunks, static_version)
    assert cut["documents_chunked"] == 1 and cut["chunks_from_shards"] == 0  # cut again, not folded
    rows = project.index_rows(static_version).to_pylist()
    assert [r["text"] for r in rows if r["doc_id"] == doc] == ["Changed again after its shard staged it."]
    assert not staging.staged_tables(project.db(), static_version, staging.CHUNKS)


def test_the_sensor_builds_a_version_when_its_last_shard_landed(sharded, tmp_path, static_version):
    project = sharded.copy(tmp_path / "copy")
    instance = sharded.instance
    sensor = build_shards_landed_sensor(sharded.defs.resolve_job_def(BACKFILL_SHARDS_JOB))
    last = instance.get_run_by_id(sharded.report.shards[-1]["run_id"])
    success = instance.all_logs(last.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)[0].dagster_event
    undriven = last.with_tags({k: v for k, v in last.tags.items() if k != tags.CLI_DRIVEN})

    def ask(run: dg.DagsterRun, lancedb):
        with dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=success,
            dagster_instance=instance,
            dagster_run=run,
            resources={"lancedb": lancedb},
        ) as context:
            return sensor(context)

    assert isinstance(ask(last, sharded.resources["lancedb"]), dg.SkipReason)  # its CLI builds it
    request = ask(undriven, sharded.resources["lancedb"])  # launched from the UI: every shard landed
    assert isinstance(request, dg.RunRequest) and request.partition_key == static_version
    assert request.tags[tags.SHARDS] == str(SHARDS) and request.tags[tags.TRIGGER] == "shards"
    # Once the corpus moved on, the shards staged an older documents table: no build from them.
    (project.corpus / "topics" / "new.md").write_text("A document no shard has seen.\n", encoding="utf-8")
    assert runner.run_job("sync_corpus", None, **project.job()).success
    waiting = ask(undriven, project.resources["lancedb"])
    assert isinstance(waiting, dg.SkipReason) and "have not staged" in waiting.skip_message
