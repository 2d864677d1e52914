"""The only place that touches Dagster's private API (`dagster._core`): the latest completed execution of
each partitioned asset check, which Dagster 1.13 exposes only through its event-log storage. Versions are
locked by uv.lock; `test_dagster_private.py` fails loudly when an upgrade moves these names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import (
    COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
)


def latest_check_evaluations(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetCheckKey], partition: str
) -> Mapping[dg.AssetCheckKey, dg.AssetCheckEvaluation | None]:
    """The evaluation of each check's latest completed execution on `partition` (None where none did).

    Completed only: a run waiting in the queue has already planned its checks, and a planned execution
    is not a result (reading it would make a finished run's own gates look as if they never ran)."""
    evaluations: dict[dg.AssetCheckKey, dg.AssetCheckEvaluation | None] = {}
    for key in keys:
        records = instance.event_log_storage.get_asset_check_execution_history(
            key,
            limit=1,
            status=set(COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES),
            partition_filter=PartitionKeyFilter(key=partition),
        )
        record = records[0] if records else None
        evaluations[key] = record.event.asset_check_evaluation if record and record.event else None
    return evaluations
