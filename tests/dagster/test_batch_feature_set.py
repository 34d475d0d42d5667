"""A batch feature set on its cron: each tick materializes the partition that closed.

Row-level and aggregated batch feature sets read one Parquet table; a schedule tick
asks for the partition that just closed, and materializing it writes offline and
online rows (or tiles) that match the source, checked against independent pandas.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import (
    DagsterInstance,
    RunRequest,
    build_schedule_context,
    instance_for_test,
    materialize,
)
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster import Aggregation
from fs_dagster.orchestration.naming import offline_asset_key
from fs_dagster.orchestration.ranged import build_batch_asset
from tests.integration.aggregation_oracle import assert_rows_match

pytestmark = [pytest.mark.dagster, pytest.mark.spark, pytest.mark.slow]


def _yesterday() -> datetime:
    """The partition today's midnight tick closes: recent, so that online windows read now
    still reach it. Taken when the test runs, not when pytest imports this file: the two
    can fall on either side of midnight (a suite collected at 23:56 ran it at 00:05)."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


def _history(spark: SparkSession, path: Path, day: datetime) -> pd.DataFrame:
    rng = random.Random(6)
    moments = [day - timedelta(days=1) + timedelta(seconds=rng.uniform(0, 3 * 86400))]
    moments += [day + timedelta(seconds=rng.uniform(0, 86400)) for _ in range(300)]
    moments += [day + timedelta(days=1, seconds=rng.uniform(0, 600)) for _ in range(20)]
    frame = pd.DataFrame(
        {
            "customer": [f"c{rng.randrange(8)}" for _ in moments],
            "amount": [round(rng.uniform(1, 90), 2) for _ in moments],
            "event_time": pd.to_datetime(moments, utc=True).tz_convert(None),
        }
    )
    spark.createDataFrame(frame).write.parquet(str(path))
    return frame


def test_batch_feature_sets_on_their_cron(
    spark: SparkSession, spark_jars: tuple[str, ...], tmp_path: Path, instance: DagsterInstance
) -> None:
    suffix = uuid.uuid4().hex[:6]
    day = _yesterday()
    start = day - timedelta(days=10)
    history = _history(spark, tmp_path / "orders", day)
    source = fs.BatchSource(
        name=f"orders-{suffix}", path=str(tmp_path / "orders"), timestamp_column="event_time"
    )
    view = source.name.replace("-", "_")

    @fs.batch.feature_set(
        name=f"order_rows_{suffix}",
        key="customer",
        data_sources=[source.name],
        timestamp_column_name="event_time",
        scheduling_policy="0 0 * * *",
    )
    @fs.batch.backfill(start_date=start)
    def rows() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(f"SELECT customer, amount, event_time FROM {view}")

    @fs.batch.feature_set(
        name=f"order_spend_{suffix}",
        key="customer",
        data_sources=[source.name],
        timestamp_column_name="event_time",
        scheduling_policy="0 0 * * *",
    )
    @fs.batch.backfill(start_date=start)
    def spend() -> fs.SparkSqlTransformation:
        return (
            fs.SparkSqlTransformation(f"SELECT customer, amount, event_time FROM {view}")
            .aggregate(Aggregation.sum("amount"))
            .aggregate(Aggregation.count("amount"))
            .by_windows("1 hour", "1 day")
        )

    feature_store = fs.FeatureStoreResource(
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        online_store="sqlite",
        sqlite_path=str(tmp_path / "online.db"),
    )
    pyspark = fs.spark_resource(
        fs.SparkSettings(master="local[2]", jars=spark_jars, shuffle_partitions=2)
    )
    defs = fs.build_definitions(
        feature_sets=[rows, spend],
        feature_store=feature_store,
        pyspark=pyspark,
        start_automatically=False,
    )
    inside = history[
        (history["event_time"] >= day.replace(tzinfo=None))
        & (history["event_time"] < (day + timedelta(days=1)).replace(tzinfo=None))
    ]
    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        feature_sets=[rows, spend],
        spark=spark,
    )
    for feature_set in (rows, spend):
        schedule = defs.resolve_schedule_def(f"{feature_set.storage_name}__batch_schedule")
        assert schedule.cron_schedule == "0 0 * * *"
        tick = day + timedelta(days=1)
        requests: Any = schedule.evaluate_tick(
            build_schedule_context(instance=instance, scheduled_execution_time=tick)
        ).run_requests
        assert [r.partition_key for r in requests] == [day.strftime("%Y-%m-%dT%H:%M")]
        assert isinstance(requests[0], RunRequest)
        result = materialize(
            [build_batch_asset(feature_set)],
            resources={"feature_store": feature_store, "pyspark": pyspark},
            instance=instance,
            partition_key=requests[0].partition_key,
        )
        assert result.success
        event = instance.get_latest_materialization_event(offline_asset_key(feature_set))
        assert event is not None and event.asset_materialization is not None
        assert event.asset_materialization.metadata["dagster/row_count"].value == len(inside)
        offline = spark.read.format("delta").load(client.plan(feature_set).features_path)
        assert sorted(offline.toPandas()["amount"]) == sorted(inside["amount"])

    newest = inside.sort_values("event_time").groupby("customer").last()
    online_rows = client.get_online_features(rows, sorted(newest.index)).set_index("customer")
    for customer, amount in newest["amount"].items():
        assert online_rows.loc[str(customer), "amount"] == amount

    # The aggregated set's online tiles and offline partials serve the partition's events.
    truth = pd.DataFrame(
        {
            "customer": inside["customer"],
            "amount": inside["amount"],
            "micros": inside["event_time"].astype("int64") // 1000,
        }
    )
    now = int(datetime.now(UTC).timestamp() * 1_000_000)
    keys = sorted(truth["customer"].unique())
    population = pd.DataFrame(
        {"customer": keys, "timestamp": [pd.Timestamp(now, unit="us")] * len(keys)}
    )
    offline_values = client.get_offline_features(population, spend)
    assert_rows_match(spend, offline_values, truth, now, "batch offline")
    online_values = client.get_online_features(
        spend, keys, at=datetime.fromtimestamp(now / 1e6, UTC)
    )
    assert_rows_match(spend, online_values, truth, now, "batch online")
    assert online_values["count_amount_1d"].sum() > 0  # the day's window reaches the partition
