"""Jobs a data engineer launches: build a version, gate it, promote it, migrate to it, roll back."""

import dagster as dg

from embedding_assets.assets.serving import move_pointer_back
from embedding_assets.partitions import model_versions

BUILD_INDEX_JOB = "build_index"
PROMOTE_JOB = "promote_index"
CHECK_JOB = "check_index"
MIGRATE_JOB = "migrate_index"
ROLLBACK_JOB = "rollback_serving"
CORPUS_JOB = "sync_corpus"
REFRESH_VERSION_JOB = "refresh_version"
REFRESH_SERVED_JOB = "refresh_served"
REFRESH_LIVE_JOB = "refresh_live_versions"

VERSION_ASSETS = dg.AssetSelection.assets("model_weights", "chunks", "embeddings", "index")
BUILD_ASSETS = dg.AssetSelection.assets("corpus") | VERSION_ASSETS

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


corpus_job = dg.define_asset_job(
    CORPUS_JOB,
    selection=dg.AssetSelection.assets("corpus"),
    description="Mirror the source into the documents table and record what was added, changed, deleted.",
)

refresh_version_job = dg.define_asset_job(
    REFRESH_VERSION_JOB,
    selection=VERSION_ASSETS,
    partitions_def=model_versions,
    description="Bring one version's chunks, vectors and rows up to date with the corpus, and gate them.",
)

refresh_served_job = dg.define_asset_job(
    REFRESH_SERVED_JOB,
    selection=VERSION_ASSETS | dg.AssetSelection.assets("serving_index"),
    partitions_def=model_versions,
    description="Refresh the served version and serve its new table version if the gates pass.",
)


@dg.op(description="Sync the corpus, then refresh every live version; fails if one could not be indexed.")
def refresh_live(context: dg.OpExecutionContext) -> dict:
    from embedding_assets.runner import refresh  # the runner launches the version jobs defined here

    report = refresh(instance=context.instance)
    summary = report.to_json()
    context.log.info(f"refresh: {summary}")
    if not report.ok:
        raise dg.Failure(description="a live version was not indexed", metadata={"report": summary})
    return summary


@dg.job(name=REFRESH_LIVE_JOB, description="Incremental refresh of every live version (dual write).")
def refresh_live_job():
    refresh_live()
