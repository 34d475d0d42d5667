"""A Dagster code location with one aggregated feature set, for the sensor restart test.

``dagster dev -m tests.dagster.aggregated_project`` with ``FS_DAGSTER_HOME`` set: events
are JSON files in ``$FS_DAGSTER_HOME/stream/card_events``; the stores and checkpoints
are the example project's embedded defaults (``resources``), all under that home.

Nothing starts on its own (the offline schedule would launch runs of its own mid-test):
the test turns the supervisor sensor on, as a user would in the UI. The heartbeat timeout
and the sensor interval are short so that a lost run is replaced within a test's time.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

import fs_dagster as fs
from fs_dagster import Aggregation
from resources import project_resources, project_settings

SOURCE = "card_events"
SCHEMA = "user_id STRING, amount DOUBLE, ts TIMESTAMP"
WINDOWS = ("10 seconds", "1m", "1 hour", "1d", "7 days", "30d")
ALLOWED_LATENESS = "1 hour"
SUPERVISOR_INTERVAL_SECONDS = 5
# Well above the ~20 s a run needs from launch to its first heartbeat on a busy 2-core
# machine (run worker, Spark session). A killed run is reported failed by the
# code server within a second; the heartbeat is the sensor's fallback.
HEARTBEAT_TIMEOUT_SECONDS = 60.0


def stream_dir(home: Path) -> Path:
    """The directory the feature set's file source reads, under ``FS_DAGSTER_HOME``."""
    return home / "stream" / SOURCE


def card_spend(directory: Path) -> fs.FeatureSet:
    """Per user: sum, count, avg, min, max and sample stdev of amounts, six windows."""
    source = fs.FileSource(
        name=SOURCE,
        path=str(directory),
        format="json",
        schema=SCHEMA,
        # One file per micro-batch, so that a run is killed with files still to read.
        options={"maxFilesPerTrigger": "1"},
    )

    @fs.streaming.feature_set(
        name="card-spend",
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        online_trigger_interval=1,
        allowed_lateness=ALLOWED_LATENESS,
    )
    def card_spend() -> fs.SparkSqlTransformation:
        return (
            fs.SparkSqlTransformation(f"SELECT user_id, amount, ts FROM {SOURCE}")
            .aggregate(Aggregation.sum("amount"))
            .aggregate(Aggregation.count("amount"))
            .aggregate(Aggregation.avg("amount"))
            .aggregate(Aggregation.min("amount"))
            .aggregate(Aggregation.max("amount"))
            .aggregate(Aggregation.sample_stdev("amount"))
            .by_windows(*WINDOWS)
        )

    return card_spend


@dg.definitions
def defs() -> dg.Definitions:
    """The code location: read from the environment when Dagster loads it."""
    feature_store, pyspark = project_resources()
    return fs.build_definitions(
        feature_sets=[card_spend(stream_dir(project_settings().home))],
        feature_store=feature_store,
        pyspark=pyspark,
        supervisor_interval_seconds=SUPERVISOR_INTERVAL_SECONDS,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS,
        start_automatically=False,
    )
