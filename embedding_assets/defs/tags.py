"""Run tags: what started a run, for which model version, why, and which refresh batch it belongs to.
The UI's runs list filters on them; sensors and the CLI read them back. Each key lives here once."""

from __future__ import annotations

PARTITION = "dagster/partition"  # Dagster's own: the model version a partitioned run works on
PARTITION_DIMENSION = "dagster/partition/"  # Dagster's own, + a dimension name: a multi-partition's key
TRIGGER = "embedding_assets/trigger"  # schedule, folder, postgres, cli, launchpad, ...
VERSION = "embedding_assets/version"
REASON = "embedding_assets/reason"  # why thresholds were overridden
OVERRIDES = "embedding_assets/overrides"  # which thresholds, as name=value pairs
LAUNCHED_BY = "embedding_assets/launched_by"
BUILD = "embedding_assets/build"  # on a gates run: the build run whose index it judges
MIGRATION = "embedding_assets/migration"  # on a migration's gates and promotion runs: its build run

REFRESH = "embedding_assets/refresh"  # on every run of the refresh pipeline
BATCH = "embedding_assets/refresh_batch"  # the sync_corpus run a version run belongs to
BATCH_VERSIONS = "embedding_assets/refresh_versions"  # every live version the batch refreshes
ROLE = "embedding_assets/role"  # served, previous or candidate
CDC_END_LSN = "embedding_assets/cdc_end_lsn"  # the change-capture position the batch's corpus sync read
SHARDS = "embedding_assets/shards"  # on a build that folds a sharded backfill in: how many shards
CLI_DRIVEN = "embedding_assets/cli_driven"  # the CLI runs the next steps itself: no sensor follows up

LAUNCHPAD = {TRIGGER: "launchpad"}  # job default; a sensor, schedule or the CLI sets its own


def run_tags(
    trigger: str,
    version: str | None = None,
    *,
    reason: str = "",
    overrides: dict[str, float] | None = None,
) -> dict[str, str]:
    """The tags of one run: its trigger, its version, and an override with its reason."""
    tags = {TRIGGER: trigger}
    if version is not None:
        tags[VERSION] = version
    if overrides:
        tags[OVERRIDES] = ",".join(f"{k}={v:g}" for k, v in sorted(overrides.items()))
        tags[REASON] = reason
    return tags
