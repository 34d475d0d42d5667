"""Smoke test: JSON messages produced to Kafka arrive through Spark's Kafka source."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.kafka, pytest.mark.spark, pytest.mark.slow]

MESSAGES = 20


def test_spark_streams_json_messages_from_kafka(
    spark: SparkSession,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    from confluent_kafka import Producer
    from pyspark.sql import functions as sf

    topic = topic_factory()
    expected = [(f"user-{i}", i, i * 1.5) for i in range(MESSAGES)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "broker.address.family": "v4"})
    for entity, clicks, amount in expected:
        value = json.dumps({"entity": entity, "clicks": clicks, "amount": amount})
        producer.produce(topic, key=entity, value=value)
    assert producer.flush(30) == 0, "messages left unsent"

    source = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", kafka_bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    parsed = source.select(
        sf.col("key").cast("string").alias("key"),
        sf.from_json(
            sf.col("value").cast("string"), "entity STRING, clicks INT, amount DOUBLE"
        ).alias("v"),
    ).select("key", "v.*")
    sink = f"smoke_kafka_{uuid.uuid4().hex[:8]}"
    query = (
        parsed.writeStream.format("memory")
        .queryName(sink)
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
        .start()
    )
    try:
        assert query.awaitTermination(180), "the availableNow query did not finish in 180 s"
        assert query.exception() is None
        got = spark.sql(f"SELECT key, entity, clicks, amount FROM {sink}").collect()
    finally:
        query.stop()
        spark.catalog.dropTempView(sink)

    assert all(r.key == r.entity for r in got)
    assert sorted((r.entity, r.clicks, r.amount) for r in got) == sorted(expected)
