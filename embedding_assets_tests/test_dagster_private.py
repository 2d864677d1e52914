"""The private Dagster API the project uses lives in one module; this fails loudly if an upgrade moves it."""

import dagster as dg

from embedding_assets.defs import dagster_private
from embedding_assets.defs.assets.index import index


def test_private_names_still_exist():
    from dagster._core.event_api import PartitionKeyFilter
    from dagster._core.storage.asset_check_execution_record import (
        COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
        AssetCheckExecutionRecordStatus,
    )

    assert PartitionKeyFilter(key="p").key == "p"
    assert AssetCheckExecutionRecordStatus.PLANNED not in COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES
    storage = dg.DagsterInstance.ephemeral().event_log_storage
    assert callable(storage.get_asset_check_execution_history)


def test_a_check_that_never_ran_has_no_evaluation():
    key = dg.AssetCheckKey(index.key, "count_reconciliation")
    found = dagster_private.latest_check_evaluations(dg.DagsterInstance.ephemeral(), [key], "minilm-l6-v2")
    assert found == {key: None}
