"""Kafka -> Cassandra online and Kafka -> Delta on S3 offline, end to end."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.pipeline import start_ingestion
from tests.integration.scenario import (
    SourceSpec,
    expected_latest,
    make_events,
    produce,
    transactions_feature_set,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.cassandra,
    pytest.mark.s3,
    pytest.mark.spark,
    pytest.mark.slow,
]


def test_kafka_to_cassandra_online_and_delta_on_s3_offline(
    spark: SparkSession,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    cassandra_contact: tuple[str, int],
    cassandra_keyspace: str,
    s3_bucket: str,
) -> None:
    topic = topic_factory(partitions=3)
    spec = SourceSpec("kafka", f"tx_{uuid.uuid4().hex[:8]}", topic, kafka_bootstrap)
    feature_set = transactions_feature_set(spec, "kafka-e2e")
    events = make_events(300, users=25, seed=7)
    malformed = ["{broken", json.dumps({"user_id": "u1", "amount": 1.0, "is_remote": True})]
    produce(kafka_bootstrap, topic, [json.dumps(e) for e in events] + malformed)

    host, port = cassandra_contact
    online_store = fs.CassandraOnlineStore(
        [host], port=port, keyspace=cassandra_keyspace, consistency="ONE"
    )
    root = f"s3a://{s3_bucket}/kafka-e2e-{uuid.uuid4().hex[:8]}"
    client = fs.FeatureStore(
        online_store=online_store,
        offline_root=f"{root}/offline",
        checkpoint_root=f"{root}/checkpoints",
        feature_sets=[feature_set],
        spark=spark,
    )
    plan = client.plan(feature_set)

    online = start_ingestion(spark, feature_set, plan, "online", online_store=online_store)
    try:
        online.query.processAllAvailable()
    finally:
        online.stop()
    assert sum(r.rows_in for r in online.reports) == len(events) + len(malformed)
    assert sum(r.dead_letters for r in online.reports) == len(malformed)

    expected = expected_latest(events)
    result = client.get_online_features(feature_set, sorted(expected)).set_index("user_id")
    for user, event in expected.items():
        assert result.loc[user, "amount"] == pytest.approx(event["amount"])
        assert result.loc[user, "cents"] == round(event["amount"] * 100)
        assert result.loc[user, "ts"] == pd.Timestamp(event["ts"]).tz_convert(None)

    offline = start_ingestion(spark, feature_set, plan, "offline")
    offline.query.awaitTermination()
    assert offline.query.exception() is None
    rows = spark.read.format("delta").load(plan.features_path).toPandas()
    got = sorted((r.user_id, r.amount, r.ts) for r in rows.itertuples())
    want = sorted(
        (e["user_id"], e["amount"], pd.Timestamp(e["ts"]).tz_convert(None)) for e in events
    )
    assert got == want

    dead = client.dead_letters(feature_set)
    offline_dead = dead[dead["pipeline"] == "offline"].sort_values("payload")
    assert list(offline_dead["payload"]) == sorted(malformed)
    assert set(offline_dead["reason"]) == {
        "malformed JSON or a value that does not fit the source schema",
        "missing value for 'ts'",
    }
    assert all(p.startswith(f"{topic}/") for p in offline_dead["position"])

    # A second offline run with nothing new appends nothing.
    again = start_ingestion(spark, feature_set, plan, "offline")
    again.query.awaitTermination()
    assert spark.read.format("delta").load(plan.features_path).count() == len(events)
