"""Backfill from batch sources, then the stream: values against a brute-force oracle.

A 7-day window is backfilled over the past week from Parquet, then the stream takes
over at ``end_date``. Right after the stream's first run, online and offline values at
the current time equal the oracle over the history plus the streamed events, with no
double count at the boundary: streamed events before ``end_date`` are set aside.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster import Aggregation
from tests.integration.aggregation_oracle import assert_matches, assert_rows_match, oracle
from tests.integration.scenario import write_json_file

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SCHEMA = "user_id STRING, amount DOUBLE, is_remote BOOLEAN, ts TIMESTAMP"
KEYS = [f"k{i}" for i in range(4)]


def _events(rng: random.Random, count: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
    span = (end - start).total_seconds()
    return [
        {
            "user_id": rng.choice(KEYS),
            "amount": round(rng.uniform(-50, 500), 3),
            "is_remote": rng.random() < 0.4,
            "ts": (start + timedelta(seconds=rng.uniform(0, span))).isoformat(),
        }
        for _ in range(count)
    ]


def _frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(events)
    df["micros"] = [int(datetime.fromisoformat(t).timestamp() * 1_000_000) for t in df["ts"]]
    return df


def _check_offline(
    client: fs.FeatureStore,
    feature_set: fs.FeatureSet,
    truth: pd.DataFrame,
    times: list[int],
    where: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Offline point-in-time values of every key at ``times`` against the oracle."""
    population = pd.DataFrame(
        [(k, pd.Timestamp(t, unit="us")) for k in KEYS for t in times],
        columns=["user_id", "timestamp"],
    )
    offline = client.get_offline_features(population, feature_set)
    assert len(offline) == len(population)
    for record in offline.to_dict("records"):
        moment = int(pd.Timestamp(record["timestamp"]).value // 1000)
        assert_matches(
            feature_set,
            record,
            oracle(feature_set, truth, record["user_id"], moment),
            f"{where}: {record['user_id']}@{record['timestamp']}",
        )
    return population, offline


def _write_parquet(spark: SparkSession, events: list[dict[str, Any]], path: Path) -> None:
    # The history table names its columns its own way; the backfill SQL renames them.
    frame = pd.DataFrame(
        {
            "customer": [e["user_id"] for e in events],
            "amount_usd": [e["amount"] for e in events],
            "remote": [e["is_remote"] for e in events],
            "event_time": pd.to_datetime([e["ts"] for e in events], utc=True).tz_convert(None),
        }
    )
    spark.createDataFrame(frame).write.mode("overwrite").parquet(str(path))


def test_backfilled_week_then_stream_serves_oracle_values(
    spark: SparkSession, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    end = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if now - end < timedelta(minutes=20):
        end -= timedelta(days=1)  # keep some stream time after end_date
    start = end - timedelta(days=7)
    rng = random.Random(8)
    history = _events(rng, 400, start, end)
    streamed = _events(rng, 120, end, now - timedelta(minutes=1))
    before_end = _events(rng, 15, end - timedelta(hours=3), end)  # the backfill's events

    suffix = uuid.uuid4().hex[:6]
    batch = fs.BatchSource(
        name=f"history-{suffix}",
        path=str(tmp_path / "history"),
        format="parquet",
        timestamp_column="event_time",
    )
    _write_parquet(spark, history, Path(batch.path))
    stream = fs.FileSource(name=f"tx-{suffix}", path=str(tmp_path / "in"), schema=SCHEMA)
    view = stream.name.replace("-", "_")

    @fs.streaming.feature_set(
        name=f"bf_{suffix}",
        key="user_id",
        data_sources=[stream.name],
        timestamp_column_name="ts",
        allowed_lateness="1 day",
    )
    @fs.streaming.backfill(
        start_date=start,
        end_date=end,
        data_sources=[fs.BackfillBatchDataSourceSpec(data_source_name=batch.name)],
        backfill_transformation=fs.SparkSqlTransformation(
            "SELECT customer AS user_id, amount_usd AS amount, remote AS is_remote, "
            f"event_time AS ts FROM {batch.name.replace('-', '_')}"
        ),
    )
    def spend() -> fs.SparkSqlTransformation:
        return (
            fs.SparkSqlTransformation(f"SELECT user_id, amount, is_remote, ts FROM {view}")
            .aggregate(Aggregation.sum("amount"))
            .aggregate(Aggregation.count("amount"))
            .aggregate(Aggregation.max("amount"))
            .aggregate(Aggregation.sample_variance("amount"))
            .aggregate(Aggregation.boolean_or("is_remote"))
            .by_windows("10 minutes, 1 hour", "1 day", "7 day")
        )

    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "ckpt"),
        feature_sets=[spend],
        spark=spark,
    )
    backfilled = client.backfill(spend)
    assert backfilled.rows_in == len(history)
    assert backfilled.set_aside == 0

    write_json_file(Path(stream.path), [json.dumps(e) for e in streamed + before_end])
    reports = client.ingest(spend)
    online_reports = [r for r in reports if r.pipeline == "online"]
    offline_reports = [r for r in reports if r.pipeline == "offline"]
    assert sum(r.set_aside for r in online_reports) == len(before_end)
    assert sum(r.set_aside for r in offline_reports) == len(before_end)
    aside = client.late_events(spend)
    assert len(aside) == 2 * len(before_end)
    assert all("backfill's end_date" in reason for reason in aside["reason"])

    truth = _frame(history + streamed)  # before_end events count once: from the backfill
    at = int(datetime.now(UTC).timestamp() * 1_000_000)
    at_dt = datetime.fromtimestamp(at / 1e6, UTC)
    online = client.get_online_features(spend, KEYS, at=at_dt)
    assert_rows_match(spend, online, truth, at, "online after backfill + stream")

    times = [at, int(end.timestamp() * 1e6), int((end - timedelta(days=2)).timestamp() * 1e6)]
    times += [int(m) for m in truth["micros"].sample(6, random_state=3)]
    population, offline = _check_offline(client, spend, truth, times, "after backfill + stream")

    # Re-running one partition replaces exactly its day: same rows, same values.
    tiles_before = spark.read.format("delta").load(client.plan(spend).tiles_path).count()
    rows_before = spark.read.format("delta").load(client.plan(spend).features_path).count()
    day = end - timedelta(days=3)
    again = client.backfill(spend, day, day + timedelta(days=1))
    assert again.rows_in > 0
    assert spark.read.format("delta").load(client.plan(spend).tiles_path).count() == tiles_before
    assert spark.read.format("delta").load(client.plan(spend).features_path).count() == rows_before
    pd.testing.assert_frame_equal(client.get_offline_features(population, spend), offline)
    pd.testing.assert_frame_equal(client.get_online_features(spend, KEYS, at=at_dt), online)


def test_offline_aggregates_without_the_online_run(spark: SparkSession, tmp_path: Path) -> None:
    """Offline point-in-time values need only the offline run: no online store table."""
    stream = fs.FileSource(
        name=f"off-{uuid.uuid4().hex[:6]}", path=str(tmp_path / "in"), schema=SCHEMA
    )
    feature_set = fs.streaming.feature_set(
        name="offline-only",
        key="user_id",
        data_sources=[stream],
        timestamp_column_name="ts",
    )(
        lambda: (
            fs.SparkSqlTransformation(
                f"SELECT user_id, amount, is_remote, ts FROM {stream.name.replace('-', '_')}"
            )
            .aggregate(Aggregation.avg("amount"))
            .aggregate(Aggregation.count("amount"))
            .aggregate(Aggregation.boolean_or("is_remote"))
            .by_windows("1 minute", "1 hour", "30 days")
        )
    )
    base = datetime(2026, 3, 1, 12, tzinfo=UTC)
    events = _events(random.Random(4), 200, base - timedelta(days=20), base)
    for part in range(0, len(events), 50):
        write_json_file(Path(stream.path), [json.dumps(e) for e in events[part : part + 50]])
    store = fs.SqliteOnlineStore(tmp_path / "online.db")
    client = fs.FeatureStore(
        online_store=store,
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "ckpt"),
        feature_sets=[feature_set],
        spark=spark,
    )
    client.ingest(feature_set, pipelines=["offline"])
    assert store.layout(f"{feature_set.storage_name}__tiles") is None  # never touched
    truth = _frame(events)
    times = [int(m) for m in truth["micros"].sample(10, random_state=1)]
    times.append(int(base.timestamp() * 1e6))
    _check_offline(client, feature_set, truth, times, "offline run only")


def test_batch_feature_set_partition_matches_its_source(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A batch feature set's partition: offline rows and latest online rows of its source."""
    suffix = uuid.uuid4().hex[:6]
    day = datetime(2026, 3, 1, tzinfo=UTC)
    rng = random.Random(11)
    events = _events(rng, 120, day - timedelta(days=1), day + timedelta(days=2))
    source = fs.BatchSource(
        name=f"orders-{suffix}",
        path=str(tmp_path / "orders"),
        format="parquet",
        timestamp_column="event_time",
    )
    _write_parquet(spark, events, Path(source.path))

    @fs.batch.feature_set(
        name=f"orders_{suffix}",
        key="user_id",
        data_sources=[source.name],
        timestamp_column_name="ts",
        scheduling_policy="0 0 * * *",
    )
    @fs.batch.backfill(start_date=day - timedelta(days=5))
    def orders() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(
            "SELECT customer AS user_id, amount_usd AS amount, event_time AS ts "
            f"FROM {source.name.replace('-', '_')}"
        )

    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        feature_sets=[orders],
        spark=spark,
    )
    report = client.backfill(orders, day, day + timedelta(days=1))
    inside = [e for e in events if day <= datetime.fromisoformat(e["ts"]) < day + timedelta(days=1)]
    assert report.rows_in == len(inside)
    offline = spark.read.format("delta").load(client.plan(orders).features_path).toPandas()
    assert sorted(offline["amount"]) == sorted(e["amount"] for e in inside)
    latest: dict[str, dict[str, Any]] = {}
    for event in sorted(inside, key=lambda e: e["ts"]):
        latest[event["user_id"]] = event
    online = client.get_online_features(orders, sorted(latest)).set_index("user_id")
    for key, event in latest.items():
        assert online.loc[key, "amount"] == event["amount"]


def test_backfill_output_must_feed_the_streaming_transformation(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Checked when the run starts, naming the feature set and parameter; nothing written."""
    suffix = uuid.uuid4().hex[:6]
    end = datetime(2026, 3, 1, tzinfo=UTC)
    batch = fs.BatchSource(
        name=f"thin_{suffix}", path=str(tmp_path / "thin"), timestamp_column="event_time"
    )
    _write_parquet(
        spark, _events(random.Random(1), 20, end - timedelta(days=1), end), Path(batch.path)
    )
    stream = fs.FileSource(name=f"s_{suffix}", path=str(tmp_path / "in"), schema=SCHEMA)

    @fs.streaming.feature_set(
        name=f"thin_fs_{suffix}", key="user_id", data_sources=[stream], timestamp_column_name="ts"
    )
    @fs.streaming.backfill(
        start_date=end - timedelta(days=1),
        end_date=end,
        data_sources=[batch.name],
        backfill_transformation=fs.SparkSqlTransformation(
            f"SELECT customer AS user_id, event_time AS ts FROM {batch.name}"  # no amount
        ),
    )
    def thin() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(f"SELECT user_id, amount, ts FROM {stream.name}")

    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        feature_sets=[thin],
        spark=spark,
    )
    with pytest.raises(fs.FeatureSetDefinitionError) as error:
        client.backfill(thin)
    assert thin.name in str(error.value)
    assert "backfill.backfill_transformation" in str(error.value)
    assert not (tmp_path / "offline").exists()


def test_per_source_ranges_limit_what_each_source_gives(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A source's own range bounds its rows; a range it does not cover reads it empty."""
    suffix = uuid.uuid4().hex[:6]
    end = datetime(2026, 3, 4, tzinfo=UTC)
    start = end - timedelta(days=3)
    rng = random.Random(3)
    old_events = _events(rng, 60, start, end)
    new_events = _events(rng, 60, start, end)
    old = fs.BatchSource(
        name=f"old_{suffix}", path=str(tmp_path / "old"), timestamp_column="event_time"
    )
    new = fs.BatchSource(
        name=f"new_{suffix}", path=str(tmp_path / "new"), timestamp_column="event_time"
    )
    _write_parquet(spark, old_events, Path(old.path))
    _write_parquet(spark, new_events, Path(new.path))
    stream = fs.FileSource(name=f"live_{suffix}", path=str(tmp_path / "in"), schema=SCHEMA)
    select = (
        "SELECT customer AS user_id, amount_usd AS amount, remote AS is_remote, event_time AS ts"
    )

    @fs.streaming.feature_set(
        name=f"two_sources_{suffix}",
        key="user_id",
        data_sources=[stream],
        timestamp_column_name="ts",
    )
    @fs.streaming.backfill(
        start_date=start,
        end_date=end,
        data_sources=[
            fs.BackfillBatchDataSourceSpec(
                data_source_name=old.name, end_datetime=start + timedelta(days=1)
            ),
            new.name,
        ],
        backfill_transformation=fs.SparkSqlTransformation(
            f"{select} FROM {old.name} UNION ALL {select} FROM {new.name}"
        ),
    )
    def two() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(
            f"SELECT user_id, amount, is_remote, ts FROM {stream.name}"
        )

    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        feature_sets=[two],
        spark=spark,
    )

    def inside(events: list[dict[str, Any]], lo: datetime, hi: datetime) -> int:
        return sum(lo <= datetime.fromisoformat(e["ts"]) < hi for e in events)

    first_day = (start, start + timedelta(days=1))
    last_day = (end - timedelta(days=1), end)
    assert client.backfill(two, *first_day).rows_in == inside(old_events, *first_day) + inside(
        new_events, *first_day
    )
    assert client.backfill(two, *last_day).rows_in == inside(new_events, *last_day)
