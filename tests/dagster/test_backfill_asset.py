"""The backfill asset: daily partitions, one run per range, re-runs change nothing.

A range is materialized as Dagster's single-run backfills do it (the partition range
tags on one run), in process on the session's Spark.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from dagster import (
    BackfillPolicy,
    DagsterInstance,
    TimeWindowPartitionsDefinition,
    instance_for_test,
    materialize,
)
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.orchestration.ranged import backfill_asset_key, build_backfill_asset

pytestmark = [pytest.mark.dagster, pytest.mark.spark, pytest.mark.slow]

START = datetime(2026, 2, 1, tzinfo=UTC)
END = datetime(2026, 2, 11, tzinfo=UTC)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


def test_backfill_range_is_one_run_and_idempotent(
    spark: SparkSession, spark_jars: tuple[str, ...], tmp_path: Path, instance: DagsterInstance
) -> None:
    suffix = uuid.uuid4().hex[:6]
    rng = random.Random(2)
    history = pd.DataFrame(
        {
            "user_id": [f"u{rng.randrange(20)}" for _ in range(600)],
            "amount": [round(rng.uniform(1, 100), 2) for _ in range(600)],
            "ts": [START + timedelta(seconds=rng.uniform(0, 10 * 86400)) for _ in range(600)],
        }
    )
    history["ts"] = pd.to_datetime(history["ts"], utc=True).dt.tz_convert(None)
    spark.createDataFrame(history).write.parquet(str(tmp_path / "history"))
    batch = fs.BatchSource(
        name=f"hist_{suffix}", path=str(tmp_path / "history"), timestamp_column="ts"
    )
    stream = fs.FileSource(
        name=f"live_{suffix}",
        path=str(tmp_path / "in"),
        schema="user_id STRING, amount DOUBLE, ts TIMESTAMP",
    )

    @fs.streaming.feature_set(
        name=f"spend_{suffix}",
        key="user_id",
        data_sources=[stream.name],
        timestamp_column_name="ts",
    )
    @fs.streaming.backfill(
        start_date=START,
        end_date=END,
        data_sources=[batch.name],
        backfill_transformation=fs.SparkSqlTransformation(
            f"SELECT user_id, amount, ts FROM {batch.name}"
        ),
    )
    def spend() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(f"SELECT user_id, amount, ts FROM {stream.name}")

    feature_store = fs.FeatureStoreResource(
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        online_store="sqlite",
        sqlite_path=str(tmp_path / "online.db"),
    )
    pyspark = fs.spark_resource(
        fs.SparkSettings(master="local[2]", jars=spark_jars, shuffle_partitions=2)
    )
    defs = fs.build_definitions(
        feature_sets=[spend],
        feature_store=feature_store,
        pyspark=pyspark,
        start_automatically=False,
    )
    key = backfill_asset_key(spend)
    backfill = defs.resolve_assets_def(key)
    partitions = backfill.partitions_def
    assert isinstance(partitions, TimeWindowPartitionsDefinition)
    keys = partitions.get_partition_keys()
    assert keys[0] == "2026-02-01" and keys[-1] == "2026-02-10" and len(keys) == 10
    assert backfill.backfill_policy == BackfillPolicy.single_run()

    resources = {"feature_store": feature_store, "pyspark": pyspark}

    def run(first: str, last: str) -> None:
        result = materialize(
            [build_backfill_asset(spend)],
            resources=resources,
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": first,
                "dagster/asset_partition_range_end": last,
            },
        )
        assert result.success

    run("2026-02-03", "2026-02-05")  # three days, one run
    assert len(instance.get_runs()) == 1
    features = spark.read.format("delta").load(feature_store.plan(spend).features_path)
    lo, hi = START + timedelta(days=2), START + timedelta(days=5)
    expected = history[
        (history["ts"] >= lo.replace(tzinfo=None)) & (history["ts"] < hi.replace(tzinfo=None))
    ]
    first = features.toPandas().sort_values(["user_id", "ts"]).reset_index(drop=True)
    assert len(first) == len(expected)
    assert sorted(first["amount"]) == sorted(expected["amount"])
    event = instance.get_latest_materialization_event(key)
    assert event is not None and event.asset_materialization is not None
    assert event.asset_materialization.metadata["dagster/row_count"].value == len(expected)

    run("2026-02-04", "2026-02-04")  # one partition again: nothing changes
    again = (
        spark.read.format("delta")
        .load(feature_store.plan(spend).features_path)
        .toPandas()
        .sort_values(["user_id", "ts"])
        .reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(again, first)
    online = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        feature_sets=[spend],
        spark=spark,
    ).get_online_features(spend, sorted(expected["user_id"].unique()))
    newest = expected.sort_values("ts").groupby("user_id").last()
    for row in online.to_dict("records"):
        assert row["amount"] == newest.loc[row["user_id"], "amount"]
