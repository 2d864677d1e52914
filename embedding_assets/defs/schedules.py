"""Schedules: the incremental refresh of every live version, and the freshness check of serving."""

import dagster as dg

from embedding_assets.defs import tags
from embedding_assets.defs.jobs import CORPUS_JOB, SERVED_FRESHNESS_JOB

REFRESH_SCHEDULE = "refresh_live_versions_schedule"
SERVED_FRESHNESS_SCHEDULE = "served_freshness_schedule"


def build_schedules(refresh_cron: str, running: bool) -> list[dg.ScheduleDefinition]:
    """Both schedules; `running` (production) turns them on by default, a laptop starts them stopped."""
    status = dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED
    return [
        dg.ScheduleDefinition(
            name=REFRESH_SCHEDULE,
            job_name=CORPUS_JOB,
            cron_schedule=refresh_cron,
            default_status=status,
            tags={tags.REFRESH: "1", **tags.run_tags("schedule")},
            description="Incremental refresh: syncs the corpus; then one run per live version (served, "
            "previous, candidates) follows through refresh_live_versions_sensor.",
        ),
        dg.ScheduleDefinition(
            name=SERVED_FRESHNESS_SCHEDULE,
            job_name=SERVED_FRESHNESS_JOB,
            cron_schedule="*/5 * * * *",
            default_status=status,
            description="Check how far the served table lags the corpus, against the freshness SLO.",
        ),
    ]
