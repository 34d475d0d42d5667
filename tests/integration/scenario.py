"""A transactions feature set and event helpers shared by the integration tests.

Kept importable by a subprocess (``tests/integration/ingest_driver.py``) so that crash
tests can kill a real ingestion process and restart it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.computation import Computation, Computed, EventRange
from fs_dagster.engine.pipeline import IngestionQuery, start_ingestion
from fs_dagster.engine.sources import read_source
from tests.jvm_archive import short_lived

_LAST_MTIME = [0]

SCHEMA = "user_id STRING, amount DOUBLE, is_remote BOOLEAN, ts TIMESTAMP"
BASE_TIME = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class SourceSpec:
    """How to build the scenario's source; plain data so it crosses process boundaries."""

    kind: str  # "kafka" or "file"
    name: str
    location: str  # topic or directory
    bootstrap_servers: str | None = None
    max_offsets_per_trigger: int | None = None

    def build(self) -> fs.KafkaSource | fs.FileSource:
        if self.kind == "kafka":
            assert self.bootstrap_servers
            return fs.KafkaSource(
                name=self.name,
                bootstrap_servers=self.bootstrap_servers,
                topic=self.location,
                schema=SCHEMA,
                options=(
                    {"maxOffsetsPerTrigger": str(self.max_offsets_per_trigger)}
                    if self.max_offsets_per_trigger
                    else {}
                ),
            )
        options = (
            {"maxFilesPerTrigger": str(self.max_offsets_per_trigger)}
            if self.max_offsets_per_trigger
            else {}
        )
        return fs.FileSource(name=self.name, path=self.location, schema=SCHEMA, options=options)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> SourceSpec:
        return cls(**json.loads(text))


@fs.pandas_udf(output_schema=fs.Schema([fs.Column(name="cents", type=fs.Type.long)]))
def to_cents(amount: pd.Series) -> pd.Series:
    return (amount * 100).round().astype("int64")


def transactions_feature_set(
    spec: SourceSpec,
    name: str,
    *,
    online_ttl: str | None = None,
    auxiliary_sinks: Sequence[fs.KafkaSink] = (),
) -> fs.FeatureSet:
    """Row-level features per user: amount, cents (pandas UDF), remote flag."""
    source = spec.build()

    def transformation() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(
            f"SELECT user_id, amount, to_cents(amount) AS cents, is_remote, ts FROM {source.name}",
            functions=[to_cents],
        )

    transformation.__name__ = name.replace("-", "_")
    return fs.streaming.feature_set(
        name=name,
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        online_trigger_interval=1,
        online_ttl=online_ttl,
        auxiliary_sinks=auxiliary_sinks,
    )(transformation)


def aggregated_feature_set(
    spec: SourceSpec, name: str, *, auxiliary_sinks: Sequence[fs.KafkaSink] = ()
) -> fs.FeatureSet:
    """Windowed aggregates per user over the same events."""
    source = spec.build()

    def transformation() -> fs.SparkSqlTransformation:
        return (
            fs.SparkSqlTransformation(f"SELECT user_id, amount, is_remote, ts FROM {source.name}")
            .aggregate(fs.Aggregation.sum("amount"))
            .aggregate(fs.Aggregation.count("amount"))
            .aggregate(fs.Aggregation.max("amount"))
            .aggregate(fs.Aggregation.sample_variance("amount"))
            .aggregate(fs.Aggregation.boolean_or("is_remote"))
            .by_windows("1m", "1h", "7d")
        )

    transformation.__name__ = name.replace("-", "_")
    return fs.streaming.feature_set(
        name=name,
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        online_trigger_interval=1,
        allowed_lateness="1 day",
        auxiliary_sinks=auxiliary_sinks,
    )(transformation)


def make_events(
    count: int, users: int, *, seed: int, start: datetime = BASE_TIME
) -> list[dict[str, Any]]:
    """Events with increasing but jittered event times (some out of order)."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        ts = start + timedelta(seconds=i) - timedelta(seconds=rng.choice([0, 0, 0, 5]))
        events.append(
            {
                "user_id": f"u{rng.randrange(users)}",
                "amount": round(rng.uniform(1, 500), 2),
                "is_remote": rng.random() < 0.5,
                "ts": ts.isoformat(),
            }
        )
    return events


def expected_latest(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest event per user by event time (ties: the one that came last)."""
    latest: dict[str, dict[str, Any]] = {}
    for event in events:
        current = latest.get(event["user_id"])
        if current is None or event["ts"] >= current["ts"]:
            latest[event["user_id"]] = dict(event)
    return latest


def computed_batch(
    spark: SparkSession, feature_set: fs.FeatureSet, source: fs.FileSource
) -> Computed:
    """``feature_set``'s computation over all of ``source`` (the feature set's source) as
    one batch in two partitions, as a Kafka batch has several: what a writer gets."""
    batch = read_source(
        spark,
        source,
        required_columns=[*feature_set.key, feature_set.timestamp_column],
        streaming=False,
    ).repartition(2)
    sources = {source.name: batch}
    return Computation(feature_set, EventRange(None, None, ""), sources, cache=False).run(sources)


def write_json_file(directory: Path, lines: Iterable[str]) -> Path:
    """Drop a JSON-lines file atomically into a file source's directory."""
    directory.mkdir(parents=True, exist_ok=True)
    # Spark reads new files in modification-time order: names and times that increase
    # with each call keep the stream in the order the test wrote it.
    stamp = max(time.time_ns(), _LAST_MTIME[0] + 10_000_000)
    _LAST_MTIME[0] = stamp
    name = f"{stamp}-{uuid.uuid4().hex[:8]}.json"
    hidden = directory / f".{name}.tmp"
    hidden.write_text("".join(line + "\n" for line in lines))
    os.utime(hidden, ns=(stamp, stamp))
    return hidden.replace(directory / name)


def produce(bootstrap: str, topic: str, values: Iterable[str | bytes]) -> int:
    """Produce raw values to Kafka and wait for delivery."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "broker.address.family": "v4"})
    count = 0
    for value in values:
        producer.produce(topic, value=value)
        count += 1
        if count % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return count


def consume(
    config: Mapping[str, Any], topic: str, expect_at_least: int
) -> list[tuple[str | None, Any]]:
    """Every message of ``topic`` from the beginning, as (key, value parsed as JSON).

    ``config`` holds the consumer's connection (bootstrap servers, authentication). Reads
    until at least ``expect_at_least`` messages came and then 10 polls brought nothing,
    or a minute passed without any.
    """
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            **config,
            "group.id": f"fs-test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[tuple[str | None, Any]] = []
    idle = 0
    try:
        while idle < 10 or len(messages) < expect_at_least:
            message = consumer.poll(1.0)
            if message is None:
                idle += 1
                if idle > 60:
                    break
                continue
            assert message.error() is None, message.error()
            idle = 0
            key, value = message.key(), message.value()
            assert value is not None
            messages.append((key.decode() if key is not None else None, json.loads(value)))
    finally:
        consumer.close()
    return messages


def spawn_ingest_driver(*args: str) -> subprocess.Popen[str]:
    """Run ``tests.integration.ingest_driver`` in its own process group, to kill for real."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.ingest_driver", *args],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=short_lived(dict(os.environ)),
    )


def ingest_online(
    spark: SparkSession,
    feature_set: fs.FeatureSet,
    client: fs.FeatureStore,
) -> IngestionQuery:
    """Run online ingestion into ``client``'s online store until it has caught up, then
    the offline run (which alone writes the offline tables); returns the online run."""
    ingestion = start_ingestion(
        spark, feature_set, client.plan(feature_set), "online", online_store=client.online_store
    )
    try:
        ingestion.query.processAllAvailable()
    finally:
        ingestion.stop()
    client.ingest(feature_set, pipelines=["offline"])
    return ingestion


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
