"""Dagster entry point of the example project: ``dagster dev -m definitions``."""

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


feature_store, pyspark = project_resources()
demo_schedule_status = (
    DefaultScheduleStatus.RUNNING
    if project_settings().demo_schedule
    else DefaultScheduleStatus.STOPPED
)

defs = Definitions.merge(
    build_definitions(feature_sets=FEATURE_SETS, feature_store=feature_store, pyspark=pyspark),
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
