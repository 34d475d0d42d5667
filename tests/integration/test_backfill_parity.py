"""Parity: the same events, streamed or backfilled, give the same feature values.

One set of events over the 32 days before ``end`` (today's midnight UTC) is produced to
Kafka and streamed (online then offline run) into Cassandra and a Delta root on S3, and
also written as Parquet to S3 and backfilled, as one ranged run, into the same stores
under a second feature set with the same aggregations. Offline point-in-time values
(at event instants, around ``end`` and now) and online values (now and later) of the
two sets must be equal value by value, and equal to the brute-force oracle.

Online values are compared only at or after the current time: online tiles are kept
for their retention from when they are written, and the backfill's seeding skips tiles
whose retention has already passed, so neither path serves past read times.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from tests.integration.aggregation_oracle import assert_matches, oracle
from tests.integration.scenario import produce
from tests.integration.test_aggregations import SCHEMA, every_function

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.cassandra,
    pytest.mark.s3,
    pytest.mark.spark,
    pytest.mark.slow,
]

KEYS = [f"k{i}" for i in range(4)]
DAY = 86_400
Record = Mapping[Hashable, Any]


def _events(rng: random.Random, end: datetime) -> list[dict[str, Any]]:
    """~300 events before ``end``: sparse over 32 days, denser in the last day and hour,
    a burst in the last two minutes (for the 10-second and 1-minute windows); each value
    column has a few nulls. Shuffled: lateness is large enough that order is irrelevant."""
    offsets = (
        [rng.uniform(0, 32 * DAY) for _ in range(80)]
        + [rng.uniform(0, DAY) for _ in range(100)]
        + [rng.uniform(0, 3600) for _ in range(70)]
        + [rng.uniform(0, 120) for _ in range(50)]
    )
    events = [
        {
            "user_id": rng.choice(KEYS),
            "amount": round(rng.uniform(-50, 500), 3) if rng.random() > 0.05 else None,
            "is_remote": rng.random() < 0.4 if rng.random() > 0.03 else None,
            "item": rng.choice("abcde") if rng.random() > 0.03 else None,
            "ts": (end - timedelta(seconds=offset)).isoformat(),
        }
        for offset in offsets
    ]
    rng.shuffle(events)
    return events


def _frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(events)
    df["micros"] = [int(datetime.fromisoformat(t).timestamp() * 1_000_000) for t in df["ts"]]
    return df


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _read_times(truth: pd.DataFrame, end: datetime, now: datetime) -> list[int]:
    """Event instants (the event's own second is in every window), ``end`` and its
    last second, instants between events, and now."""
    rng = random.Random(17)
    micros = sorted(int(m) for m in truth["micros"])
    recent = [m for m in micros if m >= _micros(end - timedelta(days=1))]
    times = rng.sample(micros, 3) + rng.sample(recent, 3)
    times += [_micros(end), _micros(end - timedelta(seconds=1)), _micros(now)]
    times += [
        (micros[-2] + micros[-1]) // 2,
        _micros(end - timedelta(days=10, seconds=-0.25)),
        _micros(end - timedelta(hours=23, minutes=30)),
    ]
    return times


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _same(a: Any, b: Any, function: str) -> bool:
    """Equal as feature values: floats within 1e-9 relative (sums of the same numbers in
    another order), percentiles and everything else exactly."""
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    if function in ("last_n", "last_distinct_n"):
        return list(a) == list(b)
    if function != "percentile" and (isinstance(a, float) or isinstance(b, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def _records(frame: pd.DataFrame, time_column: str) -> Sequence[Record]:
    """Rows as records, the read time always under ``timestamp``."""
    return frame.rename(columns={time_column: "timestamp"}).to_dict("records")


def _compare(
    sets: tuple[fs.FeatureSet, fs.FeatureSet],
    streamed: Sequence[Record],
    backfilled: Sequence[Record],
    truth: pd.DataFrame,
    where: str,
) -> list[str]:
    """Every value that differs between matching rows of the two sets, then every row
    that differs from the oracle (its first wrong feature)."""
    found: list[str] = []
    feature_set = sets[0]
    for a, b in zip(streamed, backfilled, strict=True):
        for spec in feature_set.aggregations:
            for window in feature_set.windows:
                name = spec.feature_name(window)
                if not _same(a[name], b[name], spec.function):
                    found.append(
                        f"{where} {a['user_id']}@{a['timestamp']} {name}: "
                        f"streamed {a[name]!r}, backfilled {b[name]!r}"
                    )
    for label, each, records in (
        ("streamed", sets[0], streamed),
        ("backfilled", sets[1], backfilled),
    ):
        for record in records:
            at = int(pd.Timestamp(record["timestamp"]).value // 1000)
            try:
                assert_matches(
                    each,
                    record,
                    oracle(each, truth, record["user_id"], at),
                    f"{where} {label} vs oracle {record['user_id']}@{record['timestamp']}",
                )
            except AssertionError as error:
                found.append(str(error).splitlines()[0])
    return found


def test_streamed_and_backfilled_values_are_identical(
    spark: SparkSession,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    cassandra_contact: tuple[str, int],
    cassandra_keyspace: str,
    s3_bucket: str,
) -> None:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    events = _events(random.Random(23), end)
    truth = _frame(events)
    suffix = uuid.uuid4().hex[:6]
    root = f"s3a://{s3_bucket}/parity-{suffix}"
    host, port = cassandra_contact

    def store() -> fs.CassandraOnlineStore:
        return fs.CassandraOnlineStore(
            [host], port=port, keyspace=cassandra_keyspace, consistency="ONE"
        )

    # A: streamed from Kafka.
    topic = topic_factory(partitions=2)
    produce(kafka_bootstrap, topic, [json.dumps(e) for e in events])
    stream_a = fs.KafkaSource(
        name=f"parity-tx-{suffix}", bootstrap_servers=kafka_bootstrap, topic=topic, schema=SCHEMA
    )
    streamed = fs.streaming.feature_set(
        name=f"parity-stream-{suffix}",
        key="user_id",
        data_sources=[stream_a],
        timestamp_column_name="ts",
        allowed_lateness="40 days",
        online_trigger_interval=0,  # ingest() stops once caught up: no 5 s tick to wait
    )(lambda: every_function(stream_a.name.replace("-", "_")))
    client_a = fs.FeatureStore(
        online_store=store(),
        offline_root=f"{root}/stream/offline",
        checkpoint_root=f"{root}/stream/checkpoints",
        feature_sets=[streamed],
        spark=spark,
    )
    reports = client_a.ingest(streamed)
    for pipeline in ("online", "offline"):
        mine = [r for r in reports if r.pipeline == pipeline]
        assert sum(r.rows_in for r in mine) == len(events), pipeline
        assert sum(r.late_events + r.set_aside + r.dead_letters for r in mine) == 0, pipeline

    # B: the same events as Parquet on S3, backfilled; its own stream stays empty.
    history = fs.BatchSource(
        name=f"parity-history-{suffix}",
        path=f"{root}/history",
        format="parquet",
        timestamp_column="ts",
    )
    rows = [{**e, "ts": datetime.fromisoformat(e["ts"])} for e in events]
    spark.createDataFrame(rows, schema=SCHEMA).write.mode("overwrite").parquet(history.path)
    stream_b = fs.KafkaSource(
        name=f"parity-empty-{suffix}",
        bootstrap_servers=kafka_bootstrap,
        topic=topic_factory(),
        schema=SCHEMA,
    )

    @fs.streaming.feature_set(
        name=f"parity_backfill_{suffix}",
        key="user_id",
        data_sources=[stream_b],
        timestamp_column_name="ts",
    )
    @fs.streaming.backfill(
        start_date=end - timedelta(days=35),
        end_date=end,
        data_sources=[history.name],
        backfill_transformation=fs.SparkSqlTransformation(
            f"SELECT user_id, amount, is_remote, item, ts FROM {history.name.replace('-', '_')}"
        ),
    )
    def backfilled() -> fs.SparkSqlTransformation:
        return every_function(stream_b.name.replace("-", "_"))

    client_b = fs.FeatureStore(
        online_store=store(),
        offline_root=f"{root}/backfill/offline",
        checkpoint_root=f"{root}/backfill/checkpoints",
        feature_sets=[backfilled],
        spark=spark,
    )
    report = client_b.backfill(backfilled)
    assert report.rows_in == len(events)
    assert report.set_aside == 0

    # Offline: every key at each read time, both sets, against each other and the oracle.
    now = datetime.now(UTC)
    times = _read_times(truth, end, now)
    population = pd.DataFrame(
        [
            (k, pd.Timestamp(t, unit="us"), i)
            for i, (k, t) in enumerate((k, t) for k in KEYS for t in times)
        ],
        columns=["user_id", "timestamp", "row"],
    )
    offline_a = client_a.get_offline_features(population, streamed).sort_values("row")
    offline_b = client_b.get_offline_features(population, backfilled).sort_values("row")
    assert list(offline_a["row"]) == list(offline_b["row"]) == list(population["row"])
    # The shortest windows hold events at some read times, not only empty ones.
    assert (offline_a["count_amount_10s"] > 0).sum() >= len(KEYS)
    sets = (streamed, backfilled)
    mismatches = _compare(
        sets,
        _records(offline_a, "timestamp"),
        _records(offline_b, "timestamp"),
        truth,
        "offline",
    )

    # Online: now and later only (see the module docstring).
    for at in (now, now + timedelta(hours=1), now + timedelta(days=2)):
        mismatches += _compare(
            sets,
            _records(client_a.get_online_features(streamed, KEYS, at=at), "ts"),
            _records(client_b.get_online_features(backfilled, KEYS, at=at), "ts"),
            truth,
            f"online @{at.isoformat()}",
        )
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:40])
