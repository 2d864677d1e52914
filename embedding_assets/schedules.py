"""Schedules: the incremental refresh of every live version, and the freshness check of serving."""

import os

import dagster as dg

from embedding_assets.freshness_checks import served_freshness
from embedding_assets.jobs import REFRESH_LIVE_JOB


def _default_status() -> dg.DefaultScheduleStatus:
    """Running in production (EMBEDDING_ASSETS_ENV=production), off on a laptop until switched on."""
    production = os.environ.get("EMBEDDING_ASSETS_ENV", "local") == "production"
    return dg.DefaultScheduleStatus.RUNNING if production else dg.DefaultScheduleStatus.STOPPED


refresh_schedule = dg.ScheduleDefinition(
    name="refresh_live_versions_schedule",
    job_name=REFRESH_LIVE_JOB,
    cron_schedule=os.environ.get("EMBEDDING_ASSETS_REFRESH_CRON", "*/15 * * * *"),
    default_status=_default_status(),
    description="Incremental refresh of the served, previous and candidate versions.",
)

served_freshness_job = dg.define_asset_job(
    "check_served_freshness",
    selection=dg.AssetSelection.checks(served_freshness),
    description="How far the served table lags the corpus.",
)

served_freshness_schedule = dg.ScheduleDefinition(
    name="served_freshness_schedule",
    job=served_freshness_job,
    cron_schedule="*/5 * * * *",
    default_status=_default_status(),
)
