"""Windowed aggregations against a brute-force oracle, online and offline."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster import Aggregation
from tests.integration.aggregation_oracle import assert_matches, assert_rows_match, oracle
from tests.integration.scenario import ingest_online, produce, write_json_file

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SCHEMA = "user_id STRING, amount DOUBLE, is_remote BOOLEAN, item STRING, ts TIMESTAMP"
T_END = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
WINDOWS = ("10 seconds", "1m", "1 hour", "1d", "7 days", "30d")


def every_function(source: str) -> fs.SparkSqlTransformation:
    return (
        fs.SparkSqlTransformation(f"SELECT user_id, amount, is_remote, item, ts FROM {source}")
        .aggregate(Aggregation.sum("amount"))
        .aggregate(Aggregation.count("amount"))
        .aggregate(Aggregation.avg("amount"))
        .aggregate(Aggregation.min("amount"))
        .aggregate(Aggregation.max("amount"))
        .aggregate(Aggregation.boolean_or("is_remote"))
        .aggregate(Aggregation.boolean_and("is_remote").alias("all_remote"))
        .aggregate(Aggregation.sample_variance("amount"))
        .aggregate(Aggregation.sample_stdev("amount"))
        .aggregate(Aggregation.population_variance("amount"))
        .aggregate(Aggregation.population_stdev("amount"))
        .aggregate(Aggregation.last_n("item", 3))
        .aggregate(Aggregation.last_distinct_n("item", 3))
        .aggregate(Aggregation.percentile("amount", 0.9))
        .by_windows(*WINDOWS)
    )


def numeric_functions(source: str) -> fs.SparkSqlTransformation:
    """Only states point-in-time reads compute column-wise (see ``aggregation.columnar``)."""
    return (
        fs.SparkSqlTransformation(f"SELECT user_id, amount, is_remote, ts FROM {source}")
        .aggregate(Aggregation.sum("amount"))
        .aggregate(Aggregation.count("amount"))
        .aggregate(Aggregation.min("amount"))
        .aggregate(Aggregation.max("amount"))
        .aggregate(Aggregation.boolean_or("is_remote"))
        .aggregate(Aggregation.boolean_and("is_remote").alias("all_remote"))
        .by_windows(*WINDOWS)
    )


def random_events(seed: int, keys: int = 4) -> list[dict[str, Any]]:
    """Events over ~40 days, denser near T_END, delivered out of order within 20 min."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    offsets = (
        [rng.uniform(0, 40 * 86400) for _ in range(60)]
        + [rng.uniform(0, 2 * 86400) for _ in range(60)]
        + [rng.uniform(0, 3 * 3600) for _ in range(60)]
        + [rng.uniform(0, 120) for _ in range(60)]
    )
    for offset in offsets:
        ts = T_END - timedelta(seconds=offset)
        events.append(
            {
                "user_id": f"k{rng.randrange(keys)}",
                "amount": round(rng.uniform(-50, 500), 3) if rng.random() > 0.05 else None,
                "is_remote": rng.random() < 0.4,
                "item": rng.choice(["a", "b", "c", "d", "e"]),
                "ts": ts.isoformat(),
            }
        )
    events.sort(key=lambda e: e["ts"])
    # Out of order within the allowed lateness: shuffle inside 20-minute buckets.
    buckets: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        bucket = int(datetime.fromisoformat(event["ts"]).timestamp() // 1200)
        buckets.setdefault(bucket, []).append(event)
    shuffled: list[dict[str, Any]] = []
    for bucket in sorted(buckets):
        group = buckets[bucket]
        rng.shuffle(group)
        shuffled.extend(group)
    return shuffled


def frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(events)
    df["micros"] = [int(datetime.fromisoformat(t).timestamp() * 1_000_000) for t in df["ts"]]
    return df


def read_times(df: pd.DataFrame, seed: int) -> list[int]:
    rng = random.Random(seed)
    newest = int(df["micros"].max())
    chosen = [
        newest,
        newest + 5_000_000,
        newest + 150_000_000,
        newest + 7_200_000_000,
        newest + 2 * 86_400_000_000,
        newest + 40 * 86_400_000_000,
    ]
    chosen += [
        int(rng.choice(list(df["micros"]))) + rng.randrange(-3_000_000, 3_000_000) for _ in range(6)
    ]
    return chosen


def check_online_and_offline(
    spark: SparkSession,
    client: fs.FeatureStore,
    feature_set: fs.FeatureSet,
    df: pd.DataFrame,
    offline_df: pd.DataFrame | None = None,
) -> None:
    """Online values against ``df``; offline ones against ``offline_df`` (every event the
    offline run read, late ones included), by default the same events."""
    offline_df = df if offline_df is None else offline_df
    keys = sorted(df["user_id"].unique())
    times = read_times(df, seed=5)
    for at in times:
        at_dt = datetime.fromtimestamp(at / 1e6, UTC)
        online = client.get_online_features(feature_set, keys, at=at_dt)
        assert list(online["user_id"]) == keys
        assert_rows_match(feature_set, online, df, at, f"online @{at_dt.isoformat()}")
    population = pd.DataFrame(
        [
            (k, pd.Timestamp(t, unit="us"), i)
            for i, (k, t) in enumerate((k, t) for k in keys for t in times)
        ],
        columns=["user_id", "timestamp", "row"],
    )
    offline = client.get_offline_features(population, feature_set, point_in_time_column="timestamp")
    assert len(offline) == len(population)
    for record in offline.to_dict("records"):
        at = int(pd.Timestamp(record["timestamp"]).value // 1000)
        assert_matches(
            feature_set,
            record,
            oracle(feature_set, offline_df, record["user_id"], at),
            f"offline {record['user_id']}@{record['timestamp']}",
        )


@pytest.mark.parametrize(
    "functions", [every_function, numeric_functions], ids=["every-function", "column-wise"]
)
def test_file_source_sqlite(
    spark: SparkSession,
    tmp_path: Path,
    functions: Callable[[str], fs.SparkSqlTransformation],
) -> None:
    source = fs.FileSource(
        name=f"ev_{uuid.uuid4().hex[:6]}",
        path=str(tmp_path / "in"),
        schema=SCHEMA,
        options={"maxFilesPerTrigger": "1"},
    )
    feature_set = fs.streaming.feature_set(
        name="agg-sqlite",
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        allowed_lateness="1 hour",
    )(lambda: functions(source.name))
    events = random_events(seed=1)
    for start in range(0, len(events), 60):
        write_json_file(Path(source.path), [json.dumps(e) for e in events[start : start + 60]])
    store = fs.SqliteOnlineStore(tmp_path / "online.db")
    client = fs.FeatureStore(
        online_store=store,
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "ckpt"),
        feature_sets=[feature_set],
        spark=spark,
    )
    ingestion = ingest_online(spark, feature_set, client)
    assert len(ingestion.reports) >= 4
    assert sum(r.late_events for r in ingestion.reports) == 0
    check_online_and_offline(spark, client, feature_set, frame(events))


def test_every_function_kafka_cassandra(
    spark: SparkSession,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    cassandra_contact: tuple[str, int],
    cassandra_keyspace: str,
    tmp_path: Path,
) -> None:
    topic = topic_factory(partitions=2)
    source = fs.KafkaSource(
        name=f"kx_{uuid.uuid4().hex[:6]}",
        bootstrap_servers=kafka_bootstrap,
        topic=topic,
        schema=SCHEMA,
        options={"maxOffsetsPerTrigger": "70"},
    )
    feature_set = fs.streaming.feature_set(
        name="agg-cassandra",
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        allowed_lateness="1 hour",
    )(lambda: every_function(source.name))
    events = random_events(seed=2)
    produce(kafka_bootstrap, topic, [json.dumps(e) for e in events])
    host, port = cassandra_contact
    store = fs.CassandraOnlineStore(
        [host], port=port, keyspace=cassandra_keyspace, consistency="ONE"
    )
    client = fs.FeatureStore(
        online_store=store,
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "ckpt"),
        feature_sets=[feature_set],
        spark=spark,
    )
    ingestion = ingest_online(spark, feature_set, client)
    # Partitions are read side by side, so one can run more than the lateness ahead of
    # the other: whatever was declared late must be in the late table and in no value.
    late = (
        client.late_events(feature_set) if any(r.late_events for r in ingestion.reports) else None
    )
    reported = sum(r.late_events for r in ingestion.reports)
    df = everything = frame(events)
    if late is not None:
        assert len(late) == reported
        # Match late records back to events as a multiset: (key, item, amount) can repeat,
        # so the millisecond event time (what Spark's JSON keeps) is part of the match.
        late_counts = Counter(
            (r["user_id"], r["item"], r.get("amount"), pd.Timestamp(r["ts"]).value // 1_000_000)
            for r in map(json.loads, late["payload"])
        )
        flags = []
        for event in events:  # the rows of df, in order
            match = (
                event["user_id"],
                event["item"],
                event["amount"],
                pd.Timestamp(event["ts"]).value // 1_000_000,
            )
            is_late = late_counts[match] > 0
            if is_late:
                late_counts[match] -= 1
            flags.append(is_late)
        late_rows = pd.Series(flags, index=df.index)
        assert int(late_rows.sum()) == reported
        df = df[~late_rows]
    check_online_and_offline(spark, client, feature_set, df, everything)
