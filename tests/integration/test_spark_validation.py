"""Errors only Spark can find, reported before any data is ingested."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.pipeline import start_ingestion
from fs_dagster.planning.plan import StoragePlan

pytestmark = pytest.mark.spark

SCHEMA = "user_id STRING, amount DOUBLE, ts TIMESTAMP"


def _feature_set(tmp_path: Path, transformation: object, name: str) -> fs.FeatureSet:
    source = fs.FileSource(
        name=f"ev_{uuid.uuid4().hex[:6]}", path=str(tmp_path / "in"), schema=SCHEMA
    )
    sql = (
        transformation
        if not isinstance(transformation, str)
        else fs.SparkSqlTransformation(transformation.replace("{source}", source.name))
    )

    def build() -> object:
        return sql

    return fs.streaming.feature_set(
        name=name, key="user_id", data_sources=[source], timestamp_column_name="ts"
    )(build)  # type: ignore[arg-type]


def _error(spark: SparkSession, feature_set: fs.FeatureSet) -> str:
    with pytest.raises(fs.FeatureSetDefinitionError) as caught:
        fs.validate(feature_set, spark=spark)
    return str(caught.value)


def test_sql_reading_an_unknown_column(spark: SparkSession, tmp_path: Path) -> None:
    fset = _feature_set(tmp_path, "SELECT user_id, price, ts FROM {source}", "bad-column")
    message = _error(spark, fset)
    assert "feature set 'bad-column', parameter 'transformation'" in message
    assert "price" in message


def test_key_missing_from_output(spark: SparkSession, tmp_path: Path) -> None:
    fset = _feature_set(tmp_path, "SELECT amount, ts FROM {source}", "no-key")
    message = _error(spark, fset)
    assert "feature set 'no-key', parameter 'key'" in message
    assert "key column 'user_id' is not in the transformation output (amount, ts)" in message


def test_timestamp_missing_or_wrong_type(spark: SparkSession, tmp_path: Path) -> None:
    message = _error(spark, _feature_set(tmp_path, "SELECT user_id, amount FROM {source}", "no-ts"))
    assert "parameter 'timestamp_column_name'" in message
    assert "timestamp column 'ts' is not in the transformation output" in message
    message = _error(
        spark,
        _feature_set(tmp_path, "SELECT user_id, amount, 'x' AS ts FROM {source}", "string-ts"),
    )
    assert "has type string; cast it to TIMESTAMP" in message


def test_unaliased_expression_is_rejected(spark: SparkSession, tmp_path: Path) -> None:
    message = _error(
        spark, _feature_set(tmp_path, "SELECT user_id, amount * 2, ts FROM {source}", "no-alias")
    )
    assert "give it an alias in the SQL" in message


def test_udf_output_not_matching_its_schema(spark: SparkSession, tmp_path: Path) -> None:
    @fs.pandas_udf(
        output_schema=fs.Schema(
            [
                fs.Column(name="user_id", type=fs.Type.string),
                fs.Column(name="ts", type=fs.Type.timestamp),
                fs.Column(name="double_amount", type=fs.Type.double),
            ]
        )
    )
    def doubled(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(twice=frame["amount"] * 2)[["user_id", "ts", "twice"]]

    message = _error(spark, _feature_set(tmp_path, fs.UdfTransformation(doubled), "udf-mismatch"))
    assert "feature set 'udf-mismatch', parameter 'transformation'" in message
    assert "missing ['double_amount'], not declared ['twice']" in message


def test_valid_udf_transformation_previews_a_sample(spark: SparkSession, tmp_path: Path) -> None:
    @fs.pandas_udf(
        output_schema=fs.Schema(
            [
                fs.Column(name="user_id", type=fs.Type.string),
                fs.Column(name="ts", type=fs.Type.timestamp),
                fs.Column(name="double_amount", type=fs.Type.double),
            ]
        )
    )
    def doubled(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {"user_id": frame["user_id"], "ts": frame["ts"], "double_amount": frame["amount"] * 2}
        )

    fset = _feature_set(tmp_path, fs.UdfTransformation(doubled), "udf-ok")
    result = fs.validate(
        fset,
        spark=spark,
        sample=[{"user_id": "u1", "amount": 2.5, "ts": datetime(2026, 3, 1, 12)}],
    )
    assert result.feature_names == ["double_amount"]
    assert fset.feature_names == ["double_amount"]
    assert result.preview["double_amount"].tolist() == [5.0]


def test_run_start_checks_before_reading(spark: SparkSession, tmp_path: Path) -> None:
    fset = _feature_set(tmp_path, "SELECT amount, ts FROM {source}", "checked-at-start")
    plan = StoragePlan(fset, str(tmp_path / "offline"), str(tmp_path / "ckpt"))
    with pytest.raises(fs.FeatureSetDefinitionError, match="parameter 'key'"):
        start_ingestion(spark, fset, plan, "offline")
    assert not (tmp_path / "ckpt").exists()
