"""Offline point-in-time reads: the latest row at or before each population timestamp."""

from __future__ import annotations

import json
import random
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.pipeline import start_ingestion
from tests.integration.scenario import (
    BASE_TIME,
    SourceSpec,
    make_events,
    transactions_feature_set,
    write_json_file,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _oracle(
    events: list[dict[str, Any]], user: str, at: pd.Timestamp, ttl: timedelta | None
) -> dict[str, Any] | None:
    """Brute force: the newest event of ``user`` at or before ``at`` (within the TTL)."""
    best = None
    for event in events:
        ts = pd.Timestamp(event["ts"]).tz_convert(None)
        if event["user_id"] != user or ts > at:
            continue
        if ttl is not None and ts < at - ttl:
            continue
        if best is None or ts >= pd.Timestamp(best["ts"]).tz_convert(None):
            best = event
    return best


@pytest.mark.parametrize("ttl", [None, "20 seconds"])
def test_point_in_time_matches_brute_force(
    spark: SparkSession, tmp_path: Path, ttl: str | None
) -> None:
    spec = SourceSpec("file", f"ev_{uuid.uuid4().hex[:8]}", str(tmp_path / "stream"))
    feature_set = transactions_feature_set(spec, f"pit-{'ttl' if ttl else 'plain'}", online_ttl=ttl)
    # Distinct timestamps per user so "the latest" is unambiguous.
    events = [
        dict(e, ts=(BASE_TIME + timedelta(seconds=i)).isoformat())
        for i, e in enumerate(make_events(200, users=6, seed=21))
    ]
    write_json_file(Path(spec.location), [json.dumps(e) for e in events])
    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "o.db"),
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "ckpt"),
        feature_sets=[feature_set],
        spark=spark,
    )
    offline = start_ingestion(spark, feature_set, client.plan(feature_set), "offline")
    offline.query.awaitTermination()

    rng = random.Random(3)
    population = pd.DataFrame(
        {
            "user_id": [f"u{rng.randrange(8)}" for _ in range(300)],  # u6, u7 never seen
            "timestamp": [
                pd.Timestamp(BASE_TIME).tz_convert(None)
                + pd.Timedelta(seconds=rng.uniform(-10, 220))
                for _ in range(300)
            ],
            "label": range(300),
        }
    )
    # Exact hits on event times: "at or before" includes equality.
    population.loc[0, ["user_id", "timestamp"]] = [
        events[50]["user_id"],
        pd.Timestamp(events[50]["ts"]).tz_convert(None),
    ]
    result = client.get_offline_features(population, feature_set, point_in_time_column="timestamp")
    assert len(result) == len(population)
    assert list(result.columns)[:3] == ["user_id", "timestamp", "label"]
    ttl_delta = feature_set.online_ttl
    records: list[dict[str, Any]] = result.to_dict("records")  # type: ignore[assignment]
    for row in records:
        expected = _oracle(events, row["user_id"], pd.Timestamp(row["timestamp"]), ttl_delta)
        if expected is None:
            assert pd.isna(row["amount"]), row
            assert pd.isna(row["ts"]), row
        else:
            assert row["amount"] == expected["amount"], row
            assert row["ts"] == pd.Timestamp(expected["ts"]).tz_convert(None), row
    assert result.loc[result["label"] == 0, "amount"].iloc[0] == events[50]["amount"]


def test_point_in_time_stays_distributed(spark: SparkSession, tmp_path: Path) -> None:
    spec = SourceSpec("file", f"ev_{uuid.uuid4().hex[:8]}", str(tmp_path / "stream"))
    feature_set = transactions_feature_set(spec, "pit-spark")
    write_json_file(Path(spec.location), [json.dumps(e) for e in make_events(20, 3, seed=1)])
    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "o.db"),
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "ckpt"),
        feature_sets=[feature_set],
        spark=spark,
    )
    start_ingestion(
        spark, feature_set, client.plan(feature_set), "offline"
    ).query.awaitTermination()
    population = spark.createDataFrame(
        [("u0", pd.Timestamp("2026-03-02").to_pydatetime())], "user_id STRING, timestamp TIMESTAMP"
    )
    result = client.get_offline_features(population, "pit-spark", output="spark")
    assert result.count() == 1
    plan = result._jdf.queryExecution().executedPlan().toString()
    assert "CartesianProduct" not in plan and "BroadcastNestedLoopJoin" not in plan
    with pytest.raises(ValueError, match="lacks columns"):
        client.get_offline_features(population.drop("timestamp"), feature_set)
