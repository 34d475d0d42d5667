"""Where the DuckDB offline engine reads from, how the engine is chosen, and the pandas
types of its window values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pyspark.sql.pandas.types import to_arrow_type
from pyspark.sql.types import (
    BooleanType,
    DataType,
    DoubleType,
    IntegerType,
    LongType,
    TimestampType,
)

import fs_dagster as fs
from fs_dagster.engine.duckdb_retrieval import (
    _spark_pandas,
    _with_features,
    delta_location,
    s3_settings_from_environment,
)
from fs_dagster.engine.spark_session import S3Settings

pytestmark = pytest.mark.unit


def test_local_paths_and_file_urls_are_read_directly() -> None:
    assert delta_location("/data/offline/t").uri == "/data/offline/t"
    assert delta_location("relative/t").uri == "relative/t"
    local = delta_location("file:///data/offline/t")
    assert (local.uri, local.object_store, dict(local.storage_options)) == (
        "/data/offline/t",
        False,
        {},
    )


def test_s3a_maps_to_s3_with_the_spark_settings() -> None:
    settings = S3Settings(
        endpoint="http://127.0.0.1:9000", access_key="id", secret_key="key", region="eu-west-1"
    )
    location = delta_location("s3a://bucket/offline/t", settings)
    assert location.uri == "s3://bucket/offline/t"
    assert location.object_store
    assert dict(location.storage_options) == {
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "key",
    }
    assert "key" not in repr(location)
    aws = delta_location("s3://bucket/t", S3Settings(path_style=False))
    assert dict(aws.storage_options) == {
        "AWS_REGION": "us-east-1",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true",
    }


def test_s3_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FS_S3_ENDPOINT", "https://s3.example:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "key")
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert s3_settings_from_environment() == S3Settings(
        endpoint="https://s3.example:9000", access_key="id", secret_key="key"
    )
    options = delta_location("s3a://b/t").storage_options
    assert options["AWS_ENDPOINT_URL"] == "https://s3.example:9000"
    assert options["AWS_ALLOW_HTTP"] == "false"


def test_other_schemes_are_refused_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"s3a:// .*offline_engine='spark'"):
        delta_location("gs://bucket/t")


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"offline_engine='duck' is not one of \['auto'"):
        fs.FeatureStore(
            online_store=fs.SqliteOnlineStore(tmp_path / "o.db"),
            offline_root=str(tmp_path),
            offline_engine="duck",  # type: ignore[arg-type]
        )


def _found_columns(rows: int, seed: int) -> tuple[dict[str, pd.Series], dict[str, DataType]]:
    """Window values as the column-wise code returns them, with and without nulls."""
    rng = np.random.default_rng(seed)
    valid = rng.random(rows) > 0.3
    longs = rng.integers(-(2**40), 2**40, rows)
    doubles = rng.normal(size=rows)
    stamps = pd.Series(pd.to_datetime(rng.integers(0, 2**50, rows), unit="us"))
    found = {
        "sum_long": pd.Series(longs),
        "count_nulls": pd.Series(pd.arrays.IntegerArray(longs, ~valid)),
        "count_all_valid": pd.Series(pd.arrays.IntegerArray(longs, np.zeros(rows, bool))),
        "sum_double": pd.Series(doubles),
        "min_nulls": pd.Series(np.where(valid, doubles, np.nan)),
        "any_flag": pd.Series(pd.arrays.BooleanArray(doubles > 0, ~valid)),
        "max_seen": stamps.where(valid),
        "min_int": pd.Series(pd.arrays.IntegerArray(longs.astype(np.int32), ~valid)),
    }
    types: dict[str, DataType] = {
        "sum_long": LongType(),
        "count_nulls": LongType(),
        "count_all_valid": LongType(),
        "sum_double": DoubleType(),
        "min_nulls": DoubleType(),
        "any_flag": BooleanType(),
        "max_seen": TimestampType(),
        "min_int": IntegerType(),
    }
    return found, types


def _through_spark_converter(
    population: pd.DataFrame, found: dict[str, pd.Series], types: dict[str, DataType]
) -> pd.DataFrame:
    """Every column through Arrow and pyspark's converter: what toPandas gives."""
    table = pa.table(
        {
            n: pa.Array.from_pandas(found[n], type=to_arrow_type(t, timezone="UTC"))
            for n, t in types.items()
        }
    )
    return pd.concat([population.reset_index(drop=True), _spark_pandas(table)], axis=1)


@pytest.mark.parametrize("copies", [1, 10], ids=["inserted", "built-in-one-piece"])
def test_window_values_take_the_types_spark_gives_them(copies: int) -> None:
    rows = 50
    found, types = _found_columns(rows, seed=7)
    found = {f"{n}_{i}": column for i in range(copies) for n, column in found.items()}
    types = {f"{n}_{i}": t for i in range(copies) for n, t in types.items()}
    population = pd.DataFrame(
        {"user_id": [f"u{i % 7}" for i in range(rows)], "label": range(rows)},
        index=range(100, 100 + rows),
    )
    given = population.copy()

    got = _with_features(population.reset_index(drop=True), found, types)

    pd.testing.assert_frame_equal(
        got, _through_spark_converter(population, found, types), check_exact=True
    )
    pd.testing.assert_frame_equal(population, given)  # the caller's frame is untouched
