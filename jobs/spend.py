"""Windowed spend per user: the aggregated example feature set, backfilled from history.

``user-spend`` aggregates the example stream (``jobs.transactions``) over sliding windows.
Its events before ``end_date`` come from a backfill over the example's week of history
(``transactions-history``, written by ``jobs.generator.ensure_history``), so its 7-day
windows are full as soon as the stream starts; the stream's own events (all after that
midnight) take over from there.

The backfill's range is the history's, fixed when the history was first written (the
week before that day's midnight UTC) and read back by every process: the partitions
stay the same across processes and across midnights.
"""

from __future__ import annotations

import fs_dagster as fs
from fs_dagster import Aggregation
from jobs.generator import ensure_history
from jobs.transactions import transactions
from resources import project_settings

history = ensure_history(project_settings())

transactions_history = fs.BatchSource(
    name="transactions-history",  # read in SQL as transactions_history
    path=str(history.path),
    format="parquet",
    timestamp_column="ts",
)


@fs.streaming.feature_set(
    name="user-spend",
    key="user_id",
    data_sources=[transactions],
    timestamp_column_name="ts",
    offline_scheduling_policy="*/10 * * * *",
    online_trigger_interval=5,
)
@fs.streaming.backfill(
    start_date=history.start,
    end_date=history.end,
    data_sources=[transactions_history],
    backfill_transformation=fs.SparkSqlTransformation(
        "SELECT user_id, amount, ts FROM transactions_history"
    ),
)
@fs.streaming.metadata(
    owner="risk-team",
    description="Each user's spend over the last hour, day and week: sum, count and mean.",
    display_name="User spend",
)
def user_spend() -> fs.SparkSqlTransformation:
    """Sum, count and mean of amounts per user over 1 hour, 1 day and 7 days."""
    return (
        fs.SparkSqlTransformation("SELECT user_id, amount, ts FROM transactions")
        .aggregate(Aggregation.sum("amount"))  # sum_amount_1h, sum_amount_1d, sum_amount_7d
        .aggregate(Aggregation.count("amount"))
        .aggregate(Aggregation.avg("amount"))
        .by_windows("1 hour, 1 day, 7 day")
    )
