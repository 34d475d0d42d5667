"""Dagster entry point of the example project: ``dagster dev -m definitions``.

The feature sets are in ``jobs/`` (``user-transactions`` and the backfilled
``user-spend``), the resources in ``resources/``; here they become Dagster definitions,
beside a schedule of demo events.
"""

from dagster import (
    DefaultScheduleStatus,
    Definitions,
    OpExecutionContext,
    ScheduleDefinition,
    job,
    op,
)

from fs_dagster import build_definitions
from jobs import FEATURE_SETS
from jobs.generator import events, write_events
from resources import project_resources, project_settings


@op
def generate_demo_events(context: OpExecutionContext) -> None:
    """Write a batch of demo transactions to the example stream."""
    where = write_events(list(events(200)), project_settings())
    context.log.info(f"wrote 200 demo events to {where}")


@job(description="Writes 200 demo card transactions to the example stream.")
def demo_events() -> None:
    generate_demo_events()


# The supervisors replace an online run whose heartbeat is older than this (counted from
# the run's start until its first beat). A killed run is reported at once; the heartbeat
# is for a hung one. Two online runs and a backfill starting Spark together on a small
# machine can take over the default 2 minutes to beat first, and replacing a run that is
# still starting only adds another JVM to the queue.
HEARTBEAT_TIMEOUT_SECONDS = 300.0

feature_store, pyspark = project_resources()
demo_schedule_status = (
    DefaultScheduleStatus.RUNNING
    if project_settings().demo_schedule
    else DefaultScheduleStatus.STOPPED
)

defs = Definitions.merge(
    build_definitions(
        feature_sets=FEATURE_SETS,
        feature_store=feature_store,
        pyspark=pyspark,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS,
    ),
    Definitions(
        jobs=[demo_events],
        schedules=[
            ScheduleDefinition(
                name="demo_events_every_minute",
                job=demo_events,
                cron_schedule="* * * * *",
                default_status=demo_schedule_status,
            )
        ],
    ),
)
