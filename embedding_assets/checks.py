"""Asset checks on each version's index: gates block promotion (ERROR), signals warn (WARN)."""

import dagster as dg

from embedding_assets.assets.index import index
from embedding_assets.gates.counts import reconcile
from embedding_assets.partitions import model_versions
from embedding_assets.resources import LanceDBResource, ModelRegistryResource

COUNT_RECONCILIATION = "count_reconciliation"


@dg.asset_check(
    asset=index,
    name=COUNT_RECONCILIATION,
    blocking=True,
    partitions_def=model_versions,
    description="Manifest vs chunks vs index rows: no orphan, stale, missing or duplicate rows; one space.",
)
def count_reconciliation(
    context: dg.AssetCheckExecutionContext, lancedb: LanceDBResource, model_registry: ModelRegistryResource
) -> dg.AssetCheckResult:
    version = model_registry.version(context.partition_key)
    result = reconcile(lancedb.connect(), version)
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "model_version": version.id,
            "documents": result.documents,
            "chunks": result.chunks,
            "rows": result.rows,
            **{kind: n for kind, n in result.counts().items()},
            "examples": dg.MetadataValue.json(result.examples()),
            "threshold": "every count of problems must be 0",
        },
    )
