"""The served-freshness check: serving must not lag the corpus by more than the SLO. (That the corpus
and each index are materialized within the SLO is the FreshnessPolicy on those assets.)"""

from datetime import timedelta

import dagster as dg

from embedding_assets.defs.assets.serving import serving_index
from embedding_assets.defs.resources import LanceDBResource, ServingResource
from embedding_assets.metadata import EXAMPLES
from embedding_assets.quality.freshness import served_lag

SERVED_FRESHNESS = "served_freshness"


def freshness_policy(slo: timedelta) -> dg.FreshnessPolicy:
    """Red in the UI when an asset was not materialized within the SLO; amber after half of it."""
    return dg.FreshnessPolicy.time_window(fail_window=slo, warn_window=max(slo / 2, timedelta(minutes=1)))


@dg.asset_check(
    asset=serving_index,
    name=SERVED_FRESHNESS,
    description="The oldest corpus change the served table version does not reflect yet, against the SLO.",
)
def served_freshness(lancedb: LanceDBResource, serving: ServingResource) -> dg.AssetCheckResult:
    state = serving.pointer().current()
    slo = serving.freshness_slo
    if state is None:
        return dg.AssetCheckResult(passed=False, description="nothing is served yet")
    lag = served_lag(lancedb.connect(), state)
    stale = lag.staleness > slo
    return dg.AssetCheckResult(
        passed=not stale,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{state.version}: {len(lag.pending_documents)} documents pending, oldest "
            f"{lag.oldest_pending_seconds / 60:.1f} min (SLO {slo.total_seconds() / 60:.0f} min)"
        ),
        metadata={
            "served_version": state.version,
            "served_table_version": state.table_version,
            "pending_documents": len(lag.pending_documents),
            "oldest_pending_seconds": round(lag.oldest_pending_seconds, 1),
            "slo_seconds": slo.total_seconds(),
            "pending_examples": lag.pending_documents[:EXAMPLES],
            **{f"row_age_{k}_seconds": v for k, v in lag.row_age.items() if k != "count"},
        },
    )
