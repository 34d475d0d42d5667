"""Small batches run in one wave of tasks (``one_wave``), losing no row."""

from __future__ import annotations

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812

from fs_dagster.engine.spark_session import one_wave

pytestmark = pytest.mark.spark


def _exchanges(df: DataFrame) -> int:
    plan = str(df._jdf.queryExecution().executedPlan().toString())
    return plan.count("Exchange")


def test_more_partitions_than_task_slots_become_one_wave(spark: SparkSession) -> None:
    slots = spark.sparkContext.defaultParallelism
    many = spark.range(0, 1_000, numPartitions=slots * 4)
    waved = one_wave(many)
    assert waved.rdd.getNumPartitions() == slots
    assert sorted(r["id"] for r in waved.collect()) == list(range(1_000))


def test_a_shuffle_is_coalesced_without_another_one(spark: SparkSession) -> None:
    slots = spark.sparkContext.defaultParallelism
    grouped = (
        spark.range(0, 1_000, numPartitions=slots * 2).groupBy((F.col("id") % 7).alias("k")).count()
    )
    waved = one_wave(grouped)
    assert _exchanges(waved) == _exchanges(grouped) == 1
    assert waved.rdd.getNumPartitions() <= slots
    assert sorted((r["k"], r["count"]) for r in waved.collect()) == sorted(
        (k, sum(1 for i in range(1_000) if i % 7 == k)) for k in range(7)
    )


def test_fewer_partitions_stay_as_they_are(spark: SparkSession) -> None:
    assert one_wave(spark.range(0, 10, numPartitions=1)).rdd.getNumPartitions() == 1
