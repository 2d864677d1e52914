"""Jobs a data engineer launches: build a version, gate it, promote it, migrate to it, roll back."""

import dagster as dg

from embedding_assets.assets.serving import move_pointer_back
from embedding_assets.partitions import model_versions

BUILD_INDEX_JOB = "build_index"
PROMOTE_JOB = "promote_index"
CHECK_JOB = "check_index"
MIGRATE_JOB = "migrate_index"
ROLLBACK_JOB = "rollback_serving"

BUILD_ASSETS = dg.AssetSelection.assets("corpus", "model_weights", "chunks", "embeddings", "index")

build_index_job = dg.define_asset_job(
    BUILD_INDEX_JOB,
    selection=BUILD_ASSETS,
    partitions_def=model_versions,
    description="Sync the corpus, then chunk, embed and index one model version and run its gates "
    "(serving is untouched).",
)

promote_job = dg.define_asset_job(
    PROMOTE_JOB,
    selection=dg.AssetSelection.assets("serving_index"),
    partitions_def=model_versions,
    description="Point serving at one model version, if every gate passed on its latest index build.",
)

migrate_job = dg.define_asset_job(
    MIGRATE_JOB,
    selection=BUILD_ASSETS | dg.AssetSelection.assets("serving_index"),
    partitions_def=model_versions,
    description="Build one model version beside serving, run the gates, and promote it only if they pass. "
    "Threshold overrides for this migration go in the checks' config, with a reason.",
)

check_index_job = dg.define_asset_job(
    CHECK_JOB,
    selection=dg.AssetSelection.checks_for_assets(dg.AssetKey("index")),
    partitions_def=model_versions,
    description="Re-run the gates on one model version's index as it is now, without building or promoting.",
)


@dg.job(name=ROLLBACK_JOB, description="Point serving back at the state the current one replaced.")
def rollback_job():
    move_pointer_back()
