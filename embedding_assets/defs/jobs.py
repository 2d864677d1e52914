"""Jobs a data engineer launches: build a version, gate it, promote it, migrate to it, roll back, refresh."""

import dagster as dg

from embedding_assets.defs.assets.chunks import chunks
from embedding_assets.defs.assets.corpus import corpus
from embedding_assets.defs.assets.embeddings import embeddings
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.assets.model_weights import model_weights
from embedding_assets.defs.assets.serving import move_pointer_back, serving_index
from embedding_assets.defs.checks.freshness import served_freshness
from embedding_assets.defs.hooks import STEP_HOOKS
from embedding_assets.defs.partitions import model_versions
from embedding_assets.defs.tags import LAUNCHPAD

BUILD_INDEX_JOB = "build_index"
PROMOTE_JOB = "promote_index"
CHECK_JOB = "check_index"
MIGRATE_JOB = "migrate_index"
ROLLBACK_JOB = "rollback_serving"
CORPUS_JOB = "sync_corpus"
REFRESH_VERSION_JOB = "refresh_version"
REFRESH_SERVED_JOB = "refresh_served"
SERVED_FRESHNESS_JOB = "check_served_freshness"
PREPARE_SHARDS_JOB = "prepare_shards"
BACKFILL_SHARDS_JOB = "backfill_shards"
OPTIMIZE_JOB = "optimize_index"

VERSION_ASSETS = dg.AssetSelection.assets(model_weights, chunks, embeddings, index)
BUILD_ASSETS = dg.AssetSelection.assets(corpus) | VERSION_ASSETS
SERVING = dg.AssetSelection.assets(serving_index)

build_index_job = dg.define_asset_job(
    BUILD_INDEX_JOB,
    selection=BUILD_ASSETS.without_checks(),
    partitions_def=model_versions,
    tags=LAUNCHPAD,
    hooks=STEP_HOOKS,
    description="Sync the corpus, then chunk, embed and index one model version beside serving; its gates "
    "run next in a check_index run of their own (gates_after_build_sensor), so a build that fails never "
    "plans them.",
)

# A job of unpartitioned assets drops `partitions_def`; a partitioned config keeps the model_versions
# partition picker, and the run's partition names the version serving_index promotes.
PER_VERSION = dg.PartitionedConfig(
    partitions_def=model_versions, run_config_for_partition_key_fn=lambda _: {}
)

promote_job = dg.define_asset_job(
    PROMOTE_JOB,
    selection=SERVING,
    config=PER_VERSION,
    tags=LAUNCHPAD,
    hooks=STEP_HOOKS,
    description="Point serving at one model version, if every gate passed on its latest index build.",
)

migrate_job = dg.define_asset_job(
    MIGRATE_JOB,
    selection=BUILD_ASSETS.without_checks(),
    partitions_def=model_versions,
    tags=LAUNCHPAD,
    hooks=STEP_HOOKS,
    description="Build one model version beside serving; then gates_after_build_sensor runs its gates in a "
    "check_index run, and promote_after_gates_sensor promotes it in a promote_index run when every gate "
    "passed. A blocked or failed migration leaves serving untouched; blocked_promotion_sensor records why "
    "on serving_index. To override a threshold, launch check_index with it (and a reason), then "
    "promote_index.",
)

check_index_job = dg.define_asset_job(
    CHECK_JOB,
    selection=dg.AssetSelection.checks_for_assets(index),
    config=PER_VERSION,  # a job of checks alone drops `partitions_def` too
    tags=LAUNCHPAD,
    hooks=STEP_HOOKS,
    description="Re-run the gates on one model version's index as it is now, without building or promoting.",
)


@dg.job(
    name=ROLLBACK_JOB,
    tags=LAUNCHPAD,
    description="Point serving back at the state the current one replaced.",
)
def rollback_job():
    move_pointer_back()


corpus_job = dg.define_asset_job(
    CORPUS_JOB,
    selection=dg.AssetSelection.assets(corpus),
    tags=LAUNCHPAD,
    hooks=STEP_HOOKS,
    description="Mirror the source into the documents table and record what was added, changed, deleted.",
)

refresh_version_job = dg.define_asset_job(
    REFRESH_VERSION_JOB,
    selection=VERSION_ASSETS,
    partitions_def=model_versions,
    tags=LAUNCHPAD,
    hooks=STEP_HOOKS,
    description="Bring one version's chunks, vectors and rows up to date with the corpus, and gate them.",
)

refresh_served_job = dg.define_asset_job(
    REFRESH_SERVED_JOB,
    selection=VERSION_ASSETS | SERVING,
    partitions_def=model_versions,
    tags=LAUNCHPAD,
    hooks=STEP_HOOKS,
    description="Refresh the served version and serve its new table version if the gates pass.",
)

served_freshness_job = dg.define_asset_job(
    SERVED_FRESHNESS_JOB,
    selection=dg.AssetSelection.checks(served_freshness),
    tags=LAUNCHPAD,
    hooks=STEP_HOOKS,
    description="How far the served table lags the corpus.",
)

prepare_shards_job = dg.define_asset_job(
    PREPARE_SHARDS_JOB,
    selection=dg.AssetSelection.assets(corpus, model_weights),
    partitions_def=model_versions,
    tags=LAUNCHPAD,
    hooks=STEP_HOOKS,
    description="Sync the corpus and verify (or build) one version's weights: what every shard of a "
    "sharded backfill reads, done once before the shards fan out.",
)


def build_backfill_shards_job(shard_vectors: dg.AssetsDefinition) -> dg.JobDefinition:
    """The job that stages one corpus shard of one version (a version × shard partition)."""
    return dg.define_asset_job(
        BACKFILL_SHARDS_JOB,
        selection=dg.AssetSelection.assets(shard_vectors),
        partitions_def=shard_vectors.partitions_def,
        tags=LAUNCHPAD,
        hooks=STEP_HOOKS,
        description="Cut and encode one corpus shard of one model version into staging tables of its "
        "own. Backfill every shard of a version (after prepare_shards) and the runs fan out through the "
        "queue; when the last succeeds, shards_landed_sensor requests build_index, which folds them in, "
        "and its gates judge the whole version.",
    )


JOBS = [
    build_index_job,
    promote_job,
    migrate_job,
    check_index_job,
    rollback_job,
    corpus_job,
    refresh_version_job,
    refresh_served_job,
    served_freshness_job,
    prepare_shards_job,
]
