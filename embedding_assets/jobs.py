"""Jobs a data engineer launches: build one model version's index; promote it to serving."""

import dagster as dg

from embedding_assets.partitions import model_versions

BUILD_INDEX_JOB = "build_index"
PROMOTE_JOB = "promote_index"
CHECK_JOB = "check_index"

build_index_job = dg.define_asset_job(
    BUILD_INDEX_JOB,
    selection=dg.AssetSelection.assets("corpus", "model_weights", "chunks", "embeddings", "index"),
    partitions_def=model_versions,
    description="Sync the corpus, then chunk, embed and index one model version (serving is untouched).",
)

promote_job = dg.define_asset_job(
    PROMOTE_JOB,
    selection=dg.AssetSelection.assets("serving_index"),
    partitions_def=model_versions,
    description="Point serving at one model version's current index table.",
)

check_index_job = dg.define_asset_job(
    CHECK_JOB,
    selection=dg.AssetSelection.checks_for_assets(dg.AssetKey("index")),
    partitions_def=model_versions,
    description="Re-run the gates on one model version's index as it is now, without building or promoting.",
)
