"""Windowed spend per user over the example stream: the aggregated example feature set."""

from __future__ import annotations

import fs_dagster as fs
from fs_dagster import Aggregation
from jobs.transactions import transactions


@fs.streaming.feature_set(
    name="user-spend",
    key="user_id",
    data_sources=[transactions],
    timestamp_column_name="ts",
    offline_scheduling_policy="*/10 * * * *",
    online_trigger_interval=5,
    allowed_lateness="10 minutes",
)
@fs.streaming.metadata(
    owner="risk-team",
    description="Each user's spend over sliding windows from 1 minute to 7 days.",
    display_name="User spend",
)
def user_spend() -> fs.SparkSqlTransformation:
    """Sum, count, mean and max of amounts, and whether any was remote, per window."""
    return (
        fs.SparkSqlTransformation("SELECT user_id, amount, is_remote, ts FROM transactions")
        .aggregate(Aggregation.sum("amount"))  # sum_amount_1m, ..., sum_amount_7d
        .aggregate(Aggregation.count("amount"))
        .aggregate(Aggregation.avg("amount"))
        .aggregate(Aggregation.max("amount"))
        .aggregate(Aggregation.boolean_or("is_remote").alias("any_remote"))
        .by_windows("1 minute", "1 hour", "1 day", "7 days")
    )
