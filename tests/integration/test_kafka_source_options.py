"""What a Kafka source hands Spark's Kafka reader: fs-dagster's defaults, the user's on top."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from pyspark.sql import DataFrame, SparkSession

import fs_dagster as fs
from fs_dagster.engine.sources import KAFKA_FETCH_MAX_WAIT_MS, read_source

pytestmark = [pytest.mark.kafka, pytest.mark.spark]


def _reader_options(stream: DataFrame) -> dict[str, str | None]:
    """The options of the stream's Kafka relation, as the query's reader receives them."""
    pending = [stream._jdf.queryExecution().logical()]
    while pending:
        node = pending.pop()
        if node.nodeName() == "StreamingRelationV2":
            options = node.extraOptions()
            names = ("kafka.fetch.max.wait.ms", "kafka.allow.auto.create.topics")
            return {name: options.get(name) for name in names}
        children = node.children().iterator()
        while children.hasNext():
            pending.append(children.next())
    raise AssertionError("the stream reads no Kafka relation")


def _source(bootstrap: str, topic: str, **options: str) -> fs.KafkaSource:
    # Sources are registered by name for the whole process: a name of its own, so that
    # no other test finds it (tests/unit/test_validation.py expects "clicks" unknown).
    return fs.KafkaSource(
        name=f"clicks_{uuid.uuid4().hex[:8]}",
        bootstrap_servers=bootstrap,
        topic=topic,
        schema="user_id STRING, ts TIMESTAMP",
        options=options,
    )


def test_a_kafka_source_waits_briefly_for_fetches_unless_told_otherwise(
    spark: SparkSession, kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory()
    default = read_source(spark, _source(kafka_bootstrap, topic), required_columns=["user_id"])
    assert _reader_options(default) == {
        "kafka.fetch.max.wait.ms": KAFKA_FETCH_MAX_WAIT_MS,
        "kafka.allow.auto.create.topics": "false",
    }
    assert int(KAFKA_FETCH_MAX_WAIT_MS) < 500  # the Kafka client's own default

    told = read_source(
        spark,
        _source(kafka_bootstrap, topic, **{"kafka.fetch.max.wait.ms": "250"}),
        required_columns=["user_id"],
    )
    assert _reader_options(told)["kafka.fetch.max.wait.ms"] == "250"
