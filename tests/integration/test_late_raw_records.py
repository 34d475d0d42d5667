"""Late events keep their raw Kafka record and its position, as dead letters do.

A transformation that passes Kafka's ``topic``, ``partition`` and ``offset`` through (as
JFrog ML asks of aggregated feature sets) lets each late row be traced to its record.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster import Aggregation
from tests.integration.scenario import produce

pytestmark = [pytest.mark.kafka, pytest.mark.spark, pytest.mark.slow]

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _event(user: str, amount: float, at: datetime) -> str:
    return json.dumps({"user_id": user, "amount": amount, "ts": at.isoformat()})


def test_late_kafka_records_are_kept_raw_with_their_offsets(
    spark: SparkSession, kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1)
    source = fs.KafkaSource(
        name=f"late-raw-{uuid.uuid4().hex[:6]}",
        bootstrap_servers=kafka_bootstrap,
        topic=topic,
        schema="user_id STRING, amount DOUBLE, ts TIMESTAMP",
        options={"maxOffsetsPerTrigger": "2"},
    )
    feature_set = fs.streaming.feature_set(
        name="late-raw",
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        online_trigger_interval=0,
    )(
        lambda: (
            fs.SparkSqlTransformation(
                "SELECT user_id, amount, ts, topic, partition, offset "
                f"FROM {source.name.replace('-', '_')}"
            )
            .aggregate(Aggregation.sum("amount"))
            .by_windows("1 hour")
        )
    )
    on_time = [_event("u1", 1.0, T0 - timedelta(minutes=5)), _event("u1", 2.0, T0)]
    late = [
        _event("u1", 100.0, T0 - timedelta(minutes=30)),
        _event("u2", 7.0, T0 - timedelta(hours=2)),
    ]
    produce(kafka_bootstrap, topic, on_time + late)
    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "ckpt"),
        feature_sets=[feature_set],
        spark=spark,
    )
    reports = client.ingest(feature_set, pipelines=["online"])
    assert sum(r.late_events for r in reports) == 2
    kept = client.late_events(feature_set).sort_values("position")
    assert list(kept["payload"]) == late  # the records as produced, byte for byte
    assert list(kept["position"]) == [f"{topic}/0/2", f"{topic}/0/3"]
    online = client.get_online_features(feature_set, ["u1"], at=T0)
    assert online.loc[0, "sum_amount_1h"] == 3.0
