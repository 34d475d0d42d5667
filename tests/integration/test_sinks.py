"""Auxiliary Kafka sinks: the documented message, at least once across a crash.

A consumer reads each sink topic and checks every message's key and JSON structure, and
the feature values against the events: row-level sets publish every feature row (online
and offline attachment), aggregated sets publish each updated key's window values at
emission time (checked against the brute-force oracle).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.pipeline import start_ingestion
from tests.integration.aggregation_oracle import assert_matches, oracle
from tests.integration.scenario import (
    SourceSpec,
    aggregated_feature_set,
    consume,
    make_events,
    produce,
    spawn_ingest_driver,
    transactions_feature_set,
)

pytestmark = [pytest.mark.kafka, pytest.mark.spark, pytest.mark.slow]

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
MESSAGE_FIELDS = {"featureset_name", "featureset_id", "timestamp", "key", "features"}


def consume_all(bootstrap: str, topic: str, expect_at_least: int) -> list[tuple[str, Any]]:
    """Every message of ``topic`` (key, parsed value), read from the beginning."""
    config = {"bootstrap.servers": bootstrap, "broker.address.family": "v4"}
    messages = consume(config, topic, expect_at_least)
    assert all(key is not None for key, _ in messages)
    return [(str(key), value) for key, value in messages]


def check_envelope(key: str, value: Any, feature_set: fs.FeatureSet) -> None:
    """The documented message: JFrog ML's JSON, key = the entity key."""
    assert set(value) == MESSAGE_FIELDS, value
    assert value["featureset_name"] == feature_set.name
    assert str(uuid.UUID(value["featureset_id"])) == value["featureset_id"]
    assert ISO_UTC.match(value["timestamp"]), value["timestamp"]
    assert value["key"] == {"user_id": key}


def _crash_then_restart(
    spark: SparkSession,
    feature_set: fs.FeatureSet,
    spec: SourceSpec,
    store: fs.OnlineStore,
    store_spec: str,
    tmp_path: Path,
    sink_topic: str,
    bootstrap: str,
    aggregated: bool,
) -> None:
    """Online run dies after batch 1 published (before its checkpoint), then restarts."""
    args = [
        "--source",
        spec.to_json(),
        "--name",
        feature_set.name,
        "--offline-root",
        str(tmp_path / "offline"),
        "--checkpoint-root",
        str(tmp_path / "checkpoints"),
        "--pipeline",
        "online",
        "--online-store",
        store_spec,
        "--crash-after-batch",
        "1",
        "--sink-topic",
        sink_topic,
        "--sink-bootstrap",
        bootstrap,
    ]
    crashed = spawn_ingest_driver(*args, *(["--aggregated"] if aggregated else []))
    out, _ = crashed.communicate(timeout=300)
    assert crashed.returncode == 137, out
    plan = fs.FeatureStore(
        online_store=store,
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        spark=spark,
    ).plan(feature_set)
    online = start_ingestion(spark, feature_set, plan, "online", online_store=store)
    try:
        online.query.processAllAvailable()
    finally:
        online.stop()


def test_row_level_sink_messages_survive_a_crash(
    spark: SparkSession,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    source_topic = topic_factory(partitions=2)
    online_topic = topic_factory()
    offline_topic = topic_factory()
    spec = SourceSpec(
        "kafka",
        f"tx_{uuid.uuid4().hex[:8]}",
        source_topic,
        kafka_bootstrap,
        max_offsets_per_trigger=100,
    )
    sinks = [
        fs.KafkaSink(name="sink", topic=online_topic, bootstrap_servers=kafka_bootstrap),
        fs.KafkaSink(
            name="offline_sink",
            topic=offline_topic,
            bootstrap_servers=kafka_bootstrap,
            message_format=fs.MessageFormat.JSON,
            attachment_point=fs.OfflineStreamingAttachmentPoint(),
        ),
    ]
    # The driver crashes with the rate limit (between batches); this process's restart and
    # offline run catch up without it, the logged uncommitted batch as it was planned.
    feature_set = transactions_feature_set(
        replace(spec, max_offsets_per_trigger=None), "sink-rows", auxiliary_sinks=sinks
    )
    events = make_events(500, users=25, seed=3)
    produce(kafka_bootstrap, source_topic, [json.dumps(e) for e in events])
    store = fs.SqliteOnlineStore(tmp_path / "online.db")
    _crash_then_restart(
        spark,
        feature_set,
        spec,
        store,
        f"sqlite:{tmp_path / 'online.db'}",
        tmp_path,
        online_topic,
        kafka_bootstrap,
        aggregated=False,
    )
    client = fs.FeatureStore(
        online_store=store,
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        spark=spark,
    )
    client.ingest(feature_set, pipelines=["offline"])

    def expected(event: dict[str, Any]) -> tuple[Any, ...]:
        ts = datetime.fromisoformat(event["ts"]).astimezone(UTC)
        stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        cents = round(event["amount"] * 100)
        return (event["user_id"], stamp, event["amount"], cents, event["is_remote"])

    want = sorted(expected(e) for e in events)
    for topic, exactly_once in ((online_topic, False), (offline_topic, True)):
        messages = consume_all(kafka_bootstrap, topic, len(events))
        ids = set()
        got = []
        for key, value in messages:
            check_envelope(key, value, feature_set)
            ids.add(value["featureset_id"])
            features = value["features"]
            assert set(features) == {"amount", "cents", "is_remote"}, features
            got.append(
                (
                    key,
                    value["timestamp"],
                    features["amount"],
                    features["cents"],
                    features["is_remote"],
                )
            )
        assert len(ids) == 1
        # Every update at least once; the crashed batch was published twice online.
        assert set(got) == set(want), topic
        assert len(got) >= len(want), topic
        if exactly_once:
            # The offline run did not crash here: each row exactly once.
            assert sorted(got) == want
        else:
            assert len(got) > len(want), "the replayed batch was expected to publish again"


def test_aggregated_sink_publishes_window_values_at_emission(
    spark: SparkSession,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    source_topic = topic_factory(partitions=2)
    sink_topic = topic_factory()
    spec = SourceSpec(
        "kafka",
        f"tx_{uuid.uuid4().hex[:8]}",
        source_topic,
        kafka_bootstrap,
        max_offsets_per_trigger=150,
    )
    sinks = [fs.KafkaSink(name="sink", topic=sink_topic, bootstrap_servers=kafka_bootstrap)]
    feature_set = aggregated_feature_set(spec, "sink-aggregates", auxiliary_sinks=sinks)
    # Recent events, so that the windows read at emission time hold some of them.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
    events = make_events(600, users=12, seed=8, start=start)
    produce(kafka_bootstrap, source_topic, [json.dumps(e) for e in events])
    store = fs.SqliteOnlineStore(tmp_path / "online.db")
    _crash_then_restart(
        spark,
        feature_set,
        spec,
        store,
        f"sqlite:{tmp_path / 'online.db'}",
        tmp_path,
        sink_topic,
        kafka_bootstrap,
        aggregated=True,
    )
    frame = pd.DataFrame(events)
    frame["micros"] = [
        int(datetime.fromisoformat(t).timestamp()) * 1_000_000
        + datetime.fromisoformat(t).microsecond
        for t in frame["ts"]
    ]
    messages = consume_all(kafka_bootstrap, sink_topic, len(set(frame["user_id"])))
    names = {spec.feature_name(w) for spec in feature_set.aggregations for w in feature_set.windows}
    latest: dict[str, tuple[str, dict[str, Any]]] = {}
    for key, value in messages:
        check_envelope(key, value, feature_set)
        assert set(value["features"]) == names
        if key not in latest or value["timestamp"] > latest[key][0]:
            latest[key] = (value["timestamp"], value["features"])
    # Every key updated is published; its newest message holds all of its events.
    assert set(latest) == set(frame["user_id"])
    assert len(messages) > len(latest), "several batches should each publish their keys"
    for key, (stamp, features) in latest.items():
        at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        at_micros = int(at.timestamp()) * 1_000_000 + at.microsecond
        assert_matches(
            feature_set, features, oracle(feature_set, frame, key, at_micros), f"{key} @ {stamp}"
        )


def test_chained_feature_sets_through_a_sink_topic(
    spark: SparkSession,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    """``user-tx``'s sink topic is the source of ``user-tx-cents``; Dagster shows the edge."""
    from dagster import AssetKey

    source_topic = topic_factory()
    chain_topic = topic_factory()
    spec = SourceSpec("kafka", f"tx_{uuid.uuid4().hex[:8]}", source_topic, kafka_bootstrap)
    upstream = transactions_feature_set(
        spec,
        "user-tx",
        auxiliary_sinks=[
            fs.KafkaSink(name="features", topic=chain_topic, bootstrap_servers=kafka_bootstrap)
        ],
    )
    chained_source = fs.KafkaSource(
        name=f"user-tx-features-{uuid.uuid4().hex[:6]}",
        bootstrap_servers=kafka_bootstrap,
        topic=chain_topic,
        schema=(
            "featureset_name STRING, timestamp TIMESTAMP, key STRUCT<user_id: STRING>, "
            "features STRUCT<amount: DOUBLE, cents: BIGINT, is_remote: BOOLEAN>"
        ),
    )
    view = chained_source.name.replace("-", "_")

    @fs.streaming.feature_set(
        name="user-tx-cents",
        key="user_id",
        data_sources=[chained_source],
        timestamp_column_name="ts",
    )
    def user_tx_cents() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(
            "SELECT key.user_id AS user_id, features.cents * 2 AS double_cents, "
            f"timestamp AS ts FROM {view} WHERE featureset_name = 'user-tx'"
        )

    events = make_events(120, users=10, seed=4)
    produce(kafka_bootstrap, source_topic, [json.dumps(e) for e in events])
    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        feature_sets=[upstream, user_tx_cents],
        spark=spark,
    )
    client.ingest(upstream, pipelines=["online"])
    client.ingest(user_tx_cents, pipelines=["online"])

    latest: dict[str, dict[str, Any]] = {}
    for event in events:
        seen = latest.get(event["user_id"])
        if seen is None or event["ts"] >= seen["ts"]:
            latest[event["user_id"]] = event
    users = sorted(latest)
    got = client.get_online_features("user-tx-cents", users).set_index("user_id")
    for user in users:
        assert got.loc[user, "double_cents"] == 2 * round(latest[user]["amount"] * 100), user
        assert got.loc[user, "ts"] == pd.Timestamp(latest[user]["ts"]).tz_convert(None), user

    defs = fs.build_definitions(
        feature_sets=[upstream, user_tx_cents],
        feature_store=fs.FeatureStoreResource(
            offline_root=str(tmp_path / "offline"),
            checkpoint_root=str(tmp_path / "checkpoints"),
            sqlite_path=str(tmp_path / "online.db"),
        ),
        pyspark=fs.spark_resource(fs.SparkSettings()),
    )
    graph = defs.resolve_asset_graph()
    sink = AssetKey(["user_tx", "sinks", "features"])
    assert graph.get(sink).parent_keys == {AssetKey(["user_tx", "online"])}
    source_key = AssetKey(["sources", chained_source.name])
    assert graph.get(source_key).parent_keys == {sink}
    assert source_key in graph.get(AssetKey(["user_tx_cents", "online"])).parent_keys


def test_a_sink_that_cannot_deliver_fails_the_run_at_once(
    spark: SparkSession,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    """Nothing is published silently nowhere: an unreachable sink broker stops the run."""
    from fs_dagster.engine.sources import KafkaAccessError

    spec = SourceSpec("kafka", f"tx_{uuid.uuid4().hex[:8]}", topic_factory(), kafka_bootstrap)
    # A port nothing listens on: the broker of this sink is down.
    sink = fs.KafkaSink(name="down", topic="nowhere", bootstrap_servers="127.0.0.1:1")
    feature_set = transactions_feature_set(spec, "sink-down", auxiliary_sinks=[sink])
    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        spark=spark,
    )
    with pytest.raises(KafkaAccessError) as caught:
        client.ingest(feature_set, pipelines=["online"])
    message = str(caught.value)
    assert message.startswith("Kafka sink 'down': login to 127.0.0.1:1 failed"), message
    assert "no answer from the broker" in message
