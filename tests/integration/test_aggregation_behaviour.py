"""Late events, numerical accuracy, validation and crash recovery of aggregations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster import Aggregation
from tests.integration.aggregation_oracle import assert_rows_match
from tests.integration.scenario import (
    SourceSpec,
    aggregated_feature_set,
    ingest_online,
    make_events,
    produce,
    spawn_ingest_driver,
    write_json_file,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SCHEMA = "user_id STRING, amount DOUBLE, is_remote BOOLEAN, label STRING, ts TIMESTAMP"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _file_feature_set(
    tmp_path: Path, name: str, transformation: Callable[[str], object], lateness: str = "10 minutes"
) -> fs.FeatureSet:
    source = fs.FileSource(
        name=f"ev_{uuid.uuid4().hex[:6]}",
        path=str(tmp_path / "in"),
        schema=SCHEMA,
        options={"maxFilesPerTrigger": "1"},
    )
    return fs.streaming.feature_set(
        name=name,
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        allowed_lateness=lateness,
    )(lambda: transformation(source.name))  # type: ignore[arg-type,return-value]


def _client(spark: SparkSession, tmp_path: Path, feature_set: fs.FeatureSet) -> fs.FeatureStore:
    return fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "ckpt"),
        feature_sets=[feature_set],
        spark=spark,
    )


def _event(user: str, amount: float, at: datetime, remote: bool = False) -> str:
    return json.dumps(
        {"user_id": user, "amount": amount, "is_remote": remote, "label": "x", "ts": at.isoformat()}
    )


def test_late_events_are_set_aside_online_and_counted_offline(
    spark: SparkSession, tmp_path: Path
) -> None:
    feature_set = _file_feature_set(
        tmp_path,
        "late-aggs",
        lambda s: (
            fs.SparkSqlTransformation(f"SELECT user_id, amount, ts FROM {s}")
            .aggregate(Aggregation.sum("amount"))
            .aggregate(Aggregation.count("amount"))
            .by_windows("1h", "1d")
        ),
    )
    client = _client(spark, tmp_path, feature_set)
    inbox = Path(feature_set.source.path)  # type: ignore[union-attr]
    write_json_file(inbox, [_event("u1", 1.0, T0 - timedelta(minutes=5)), _event("u1", 2.0, T0)])
    write_json_file(
        inbox,
        [
            _event("u1", 4.0, T0 - timedelta(minutes=8)),  # late but within 10 minutes: counted
            _event("u1", 100.0, T0 - timedelta(minutes=30)),  # beyond the lateness: set aside
            _event("u2", 7.0, T0 - timedelta(hours=2)),  # beyond the lateness, another key
        ],
    )
    ingestion = ingest_online(spark, feature_set, client)
    assert [r.late_events for r in ingestion.reports] == [0, 2]
    assert ingestion.reports[1].watermark == T0 - timedelta(minutes=10)
    late = client.late_events(feature_set).sort_values("event_time")
    assert [json.loads(k)["user_id"] for k in late["key"]] == ["u2", "u1"]
    assert all("older than the watermark" in r for r in late["reason"])
    assert (
        list(late["watermark"]) == [pd.Timestamp(T0 - timedelta(minutes=10)).tz_convert(None)] * 2
    )
    values = client.get_online_features(feature_set, ["u1", "u2"], at=T0).set_index("user_id")
    assert values.loc["u1", "sum_amount_1h"] == 7.0
    assert values.loc["u1", "count_amount_1d"] == 3
    assert values.loc["u2", "sum_amount_1d"] == 0
    population = pd.DataFrame({"user_id": ["u1", "u2"], "timestamp": [T0, T0]})
    # The offline run counts every event, late or not: offline is the complete history.
    offline = client.get_offline_features(population, feature_set).set_index("user_id")
    assert offline.loc["u1", "sum_amount_1h"] == 107.0
    assert offline.loc["u1", "count_amount_1d"] == 4
    assert offline.loc["u2", "count_amount_1d"] == 1


def test_variance_near_1e9_stays_accurate(spark: SparkSession, tmp_path: Path) -> None:
    feature_set = _file_feature_set(
        tmp_path,
        "big-values",
        lambda s: (
            fs.SparkSqlTransformation(f"SELECT user_id, amount, ts FROM {s}")
            .aggregate(Aggregation.population_variance("amount"))
            .aggregate(Aggregation.sample_stdev("amount"))
            .by_windows("1h")
        ),
    )
    client = _client(spark, tmp_path, feature_set)
    values = [1e9 + (i % 7) * 0.125 + (i % 3) * 0.0625 for i in range(300)]
    inbox = Path(feature_set.source.path)  # type: ignore[union-attr]
    for start in range(0, 300, 100):
        write_json_file(
            inbox,
            [
                _event("u1", v, T0 - timedelta(seconds=400 - i - start))
                for i, v in enumerate(values[start : start + 100])
            ],
        )
    ingest_online(spark, feature_set, client)
    exact_mean = sum(Fraction(v) for v in values) / len(values)
    exact = float(sum((Fraction(v) - exact_mean) ** 2 for v in values) / len(values))
    got = client.get_online_features(feature_set, "u1", at=T0).iloc[0][
        "population_variance_amount_1h"
    ]
    assert got == pytest.approx(exact, rel=1e-9)
    naive = sum(v * v for v in values) / len(values) - (sum(values) / len(values)) ** 2
    assert abs(naive - exact) / exact > 1e-3, "the naive formula should fail on this data"
    offline = client.get_offline_features(
        pd.DataFrame({"user_id": ["u1"], "timestamp": [T0]}), feature_set
    )
    assert offline.iloc[0]["population_variance_amount_1h"] == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize(
    ("aggregate", "fragment"),
    [
        (Aggregation.sum("price"), "column 'price' is not in the transformation output"),
        (
            Aggregation.avg("label"),
            "Aggregation.avg('label') needs a numeric column; 'label' is string",
        ),
        (Aggregation.boolean_or("amount"), "needs a boolean column; 'amount' is double"),
        (Aggregation.percentile("label", 0.5), "needs a numeric column"),
    ],
)
def test_aggregation_column_errors(
    spark: SparkSession, tmp_path: Path, aggregate: fs.AggregateSpec, fragment: str
) -> None:
    feature_set = _file_feature_set(
        tmp_path,
        "bad-aggs",
        lambda s: (
            fs.SparkSqlTransformation(f"SELECT user_id, amount, label, is_remote, ts FROM {s}")
            .aggregate(aggregate)
            .by_windows("1h")
        ),
    )
    with pytest.raises(fs.FeatureSetDefinitionError) as caught:
        fs.validate(feature_set, spark=spark)
    assert "feature set 'bad-aggs', parameter 'aggregate'" in str(caught.value)
    assert fragment in str(caught.value)


def _driver(*args: str) -> subprocess.Popen[str]:
    return spawn_ingest_driver("--aggregated", *args)


@pytest.mark.kafka
@pytest.mark.cassandra
def test_aggregates_survive_repeated_crashes(
    spark: SparkSession,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    cassandra_contact: tuple[str, int],
    cassandra_keyspace: str,
    tmp_path: Path,
) -> None:
    topic = topic_factory(partitions=1)
    spec = SourceSpec(
        "kafka", f"ag_{uuid.uuid4().hex[:8]}", topic, kafka_bootstrap, max_offsets_per_trigger=80
    )
    name = "agg-crashes"
    host, port = cassandra_contact
    common = [
        "--source",
        spec.to_json(),
        "--name",
        name,
        "--pipeline",
        "online",
        "--online-store",
        f"cassandra:{host}:{port}:{cassandra_keyspace}",
        "--offline-root",
        str(tmp_path / "offline"),
        "--checkpoint-root",
        str(tmp_path / "checkpoints"),
    ]
    events = make_events(800, users=12, seed=17)
    produce(kafka_bootstrap, topic, [json.dumps(e) for e in events])
    for crash_after in ("1", "3"):  # die right after tiles were written, before the commit
        crashed = _driver(*common, "--crash-after-batch", crash_after)
        out, _ = crashed.communicate(timeout=300)
        assert crashed.returncode == 137, out
    running = _driver(*common)  # and once killed at an arbitrary moment
    assert running.stdout is not None
    for line in running.stdout:
        if line.startswith("batch "):
            break
    os.killpg(running.pid, signal.SIGKILL)
    running.wait(timeout=60)

    # Caught up here without the rate limit: it only served to crash the drivers between
    # batches, and a restarted query runs its logged, uncommitted batch as planned.
    feature_set = aggregated_feature_set(replace(spec, max_offsets_per_trigger=None), name)
    store = fs.CassandraOnlineStore(
        [host], port=port, keyspace=cassandra_keyspace, consistency="ONE"
    )
    client = fs.FeatureStore(
        online_store=store,
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        feature_sets=[feature_set],
        spark=spark,
    )
    ingest_online(spark, feature_set, client)
    df = pd.DataFrame(events)
    df["micros"] = [int(datetime.fromisoformat(t).timestamp() * 1_000_000) for t in df["ts"]]
    at = int(df["micros"].max()) + 1_000_000
    users = sorted(df["user_id"].unique())
    online = client.get_online_features(
        feature_set, users, at=datetime.fromtimestamp(at / 1e6, UTC)
    )
    assert list(online["user_id"]) == users
    assert_rows_match(feature_set, online, df, at, "after crashes")
    population = pd.DataFrame(
        {"user_id": users, "timestamp": [pd.Timestamp(at, unit="us")] * len(users)}
    )
    offline = client.get_offline_features(population, feature_set)
    assert sorted(offline["user_id"]) == users
    assert_rows_match(feature_set, offline, df, at, "offline after crashes")
