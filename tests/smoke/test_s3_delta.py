"""Smoke test: Spark writes a Delta table to the local S3 server through s3a and reads it."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.s3, pytest.mark.spark, pytest.mark.slow]


def test_delta_table_round_trips_through_s3a(
    spark: SparkSession, s3_bucket: str, s3_client: Any
) -> None:
    prefix = f"smoke/{uuid.uuid4().hex}"
    path = f"s3a://{s3_bucket}/{prefix}"
    rows = [(1, "a", 0.5), (2, "b", 1.5), (3, "c", 2.5)]
    df = spark.createDataFrame(rows, "id INT, name STRING, value DOUBLE")

    df.write.format("delta").mode("overwrite").save(path)
    back = spark.read.format("delta").load(path)

    assert sorted(tuple(r) for r in back.collect()) == rows

    listing = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{prefix}/_delta_log/")
    keys = [obj["Key"] for obj in listing.get("Contents", [])]
    assert f"{prefix}/_delta_log/00000000000000000000.json" in keys
    data = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{prefix}/part-")
    assert data.get("KeyCount", 0) >= 1
