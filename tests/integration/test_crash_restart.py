"""Kill ingestion mid-stream, restart it: exactly once offline, exact latest online."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

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
    spawn_ingest_driver,
    transactions_feature_set,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.cassandra, pytest.mark.spark, pytest.mark.slow]


def test_killed_ingestion_restarts_exactly_once(
    spark: SparkSession,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    cassandra_contact: tuple[str, int],
    cassandra_keyspace: str,
    tmp_path: Path,
) -> None:
    topic = topic_factory(partitions=2)
    spec = SourceSpec(
        "kafka", f"tx_{uuid.uuid4().hex[:8]}", topic, kafka_bootstrap, max_offsets_per_trigger=100
    )
    name = "crash-restart"
    # The restart in this process catches up without the rate limit, in as few batches
    # as Spark plans: the limit only served to crash the drivers between batches, and a
    # restarted query runs its logged, uncommitted batch as it was planned.
    feature_set = transactions_feature_set(replace(spec, max_offsets_per_trigger=None), name)
    host, port = cassandra_contact
    store_spec = f"cassandra:{host}:{port}:{cassandra_keyspace}"
    common = [
        "--source",
        spec.to_json(),
        "--name",
        name,
        "--offline-root",
        str(tmp_path / "offline"),
        "--checkpoint-root",
        str(tmp_path / "checkpoints"),
    ]
    events = make_events(1200, users=40, seed=11)
    produce(kafka_bootstrap, topic, [json.dumps(e) for e in events[:600]])

    # 1. Online: die right after batch 2 wrote Cassandra, before its checkpoint commit.
    # 2. Offline, side by side with it as in production (each pipeline has its own
    #    checkpoint): die right after batch 1 was appended to Delta, before its commit.
    online_crash = spawn_ingest_driver(
        *common, "--pipeline", "online", "--online-store", store_spec, "--crash-after-batch", "2"
    )
    offline_crash = spawn_ingest_driver(
        *common, "--pipeline", "offline", "--crash-after-batch", "1"
    )
    for crashed, batch in ((online_crash, 2), (offline_crash, 1)):
        out, _ = crashed.communicate(timeout=300)
        assert crashed.returncode == 137, out
        assert f"crashing after batch {batch}" in out

    # 3. Online again, killed with SIGKILL at an arbitrary moment while more arrives.
    produce(kafka_bootstrap, topic, [json.dumps(e) for e in events[600:]])
    running = spawn_ingest_driver(*common, "--pipeline", "online", "--online-store", store_spec)
    assert running.stdout is not None
    seen = 0
    for line in running.stdout:
        if line.startswith("batch "):
            seen += 1
            if seen == 3:
                break
    os.killpg(running.pid, signal.SIGKILL)
    running.wait(timeout=60)

    # 4. Restart both pipelines in this process and let them catch up.
    host, port = cassandra_contact
    online_store = fs.CassandraOnlineStore(
        [host], port=port, keyspace=cassandra_keyspace, consistency="ONE"
    )
    client = fs.FeatureStore(
        online_store=online_store,
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        feature_sets=[feature_set],
        spark=spark,
    )
    plan = client.plan(feature_set)
    online = start_ingestion(spark, feature_set, plan, "online", online_store=online_store)
    try:
        online.query.processAllAvailable()
    finally:
        online.stop()
    offline = start_ingestion(spark, feature_set, plan, "offline")
    offline.query.awaitTermination()

    rows = spark.read.format("delta").load(plan.features_path).toPandas()
    got = sorted((r.user_id, r.amount, r.ts) for r in rows.itertuples())
    want = sorted(
        (e["user_id"], e["amount"], pd.Timestamp(e["ts"]).tz_convert(None)) for e in events
    )
    assert len(got) == len(want)
    assert got == want

    expected = expected_latest(events)
    result = client.get_online_features(feature_set, sorted(expected)).set_index("user_id")
    for user, event in expected.items():
        assert result.loc[user, "amount"] == pytest.approx(event["amount"]), user
        assert result.loc[user, "ts"] == pd.Timestamp(event["ts"]).tz_convert(None), user


def test_restart_after_crash_with_file_source(spark: SparkSession, tmp_path: Path) -> None:
    """The embedded path too: a crash after the Delta append does not duplicate rows."""
    from tests.integration.scenario import write_json_file

    spec = SourceSpec(
        "file", f"ev_{uuid.uuid4().hex[:8]}", str(tmp_path / "stream"), max_offsets_per_trigger=1
    )
    name = "crash-files"
    events = make_events(90, users=5, seed=5)
    for start in range(0, 90, 30):
        write_json_file(Path(spec.location), [json.dumps(e) for e in events[start : start + 30]])
    common = [
        "--source",
        spec.to_json(),
        "--name",
        name,
        "--offline-root",
        str(tmp_path / "offline"),
        "--checkpoint-root",
        str(tmp_path / "checkpoints"),
    ]
    crashed = spawn_ingest_driver(*common, "--pipeline", "offline", "--crash-after-batch", "0")
    out, _ = crashed.communicate(timeout=300)
    assert crashed.returncode == 137, out
    feature_set = transactions_feature_set(spec, name)
    plan = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "o.db"),
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        spark=spark,
    ).plan(feature_set)
    assert spark.read.format("delta").load(plan.features_path).count() == 30
    offline = start_ingestion(spark, feature_set, plan, "offline")
    offline.query.awaitTermination()
    wait_until(lambda: not offline.query.isActive, 30, "offline run to finish")
    assert spark.read.format("delta").load(plan.features_path).count() == len(events)
