"""The only place that touches Dagster's private API (`dagster._core`): the latest execution of each
partitioned asset check, which Dagster 1.13 exposes only through its event-log storage. Versions are
locked by uv.lock; `test_dagster_private.py` fails loudly when an upgrade moves these names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter


def latest_check_evaluations(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetCheckKey], partition: str
) -> Mapping[dg.AssetCheckKey, dg.AssetCheckEvaluation | None]:
    """The evaluation of each check's latest execution on `partition` (None where it never ran)."""
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        list(keys), partition_filter=PartitionKeyFilter(key=partition)
    )
    evaluations: dict[dg.AssetCheckKey, dg.AssetCheckEvaluation | None] = {}
    for key in keys:
        record = latest.get(key)
        evaluations[key] = record.event.asset_check_evaluation if record and record.event else None
    return evaluations
