"""Aggregation declarations: feature names, windows and their validation."""

from __future__ import annotations

from datetime import timedelta

import pytest

import fs_dagster as fs
from fs_dagster.definitions.aggregations import Aggregation, parse_window

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def source() -> fs.FileSource:
    return fs.FileSource(
        name="tx",
        path="/tmp/fs-dagster-unit-tx",
        schema="user_id STRING, amount DOUBLE, item STRING, is_remote BOOLEAN, ts TIMESTAMP",
    )


def declare(transformation: object, **overrides: object) -> fs.FeatureSet:
    params: dict[str, object] = {
        "name": "user-aggs",
        "key": "user_id",
        "data_sources": ["tx"],
        "timestamp_column_name": "ts",
    }
    params.update(overrides)
    return fs.streaming.feature_set(**params)(lambda: transformation)  # type: ignore[arg-type,return-value]


SQL = "SELECT user_id, amount, item, is_remote, ts FROM tx"


@pytest.mark.parametrize(
    ("text", "seconds", "label"),
    [
        ("30 seconds", 30, "30s"),
        ("30s", 30, "30s"),
        ("1 minute", 60, "1m"),
        ("1m", 60, "1m"),
        ("1 hour", 3600, "1h"),
        ("1h", 3600, "1h"),
        ("7 days", 604800, "7d"),
        ("7d", 604800, "7d"),
        ("2 weeks", 1209600, "2w"),
        ("2w", 1209600, "2w"),
        ("90 days", 7776000, "90d"),
        ("1 second", 1, "1s"),
    ],
)
def test_windows_parse_long_and_short_forms(text: str, seconds: int, label: str) -> None:
    window = parse_window(text)
    assert window.seconds == seconds
    assert window.label == label
    assert window.duration == timedelta(seconds=seconds)


def test_feature_names_in_stable_order() -> None:
    transformation = (
        fs.SparkSqlTransformation(SQL)
        .aggregate(Aggregation.avg("amount"))
        .aggregate(Aggregation.sum("amount"))
        .aggregate(Aggregation.boolean_or("is_remote").alias("had_remote"))
        .aggregate(Aggregation.last_n("item", 5))
        .aggregate(Aggregation.last_distinct_n("item", 3))
        .aggregate(Aggregation.percentile("amount", 95))
        .aggregate(Aggregation.population_stdev("amount"))
        .by_windows("1 minute", "1h", "7 days")
    )
    feature_set = declare(transformation, allowed_lateness="5 minutes")
    assert feature_set.is_aggregated
    assert feature_set.allowed_lateness == timedelta(minutes=5)
    assert feature_set.feature_names == [
        "avg_amount_1m",
        "avg_amount_1h",
        "avg_amount_7d",
        "sum_amount_1m",
        "sum_amount_1h",
        "sum_amount_7d",
        "had_remote_1m",
        "had_remote_1h",
        "had_remote_7d",
        "last_5_item_1m",
        "last_5_item_1h",
        "last_5_item_7d",
        "last_distinct_3_item_1m",
        "last_distinct_3_item_1h",
        "last_distinct_3_item_7d",
        "p95_amount_1m",
        "p95_amount_1h",
        "p95_amount_7d",
        "population_stdev_amount_1m",
        "population_stdev_amount_1h",
        "population_stdev_amount_7d",
    ]


def test_percentile_accepts_fraction_or_percent() -> None:
    assert Aggregation.percentile("amount", 0.5).function_label == "p50"
    assert Aggregation.percentile("amount", 99.9).function_label == "p99_9"


@pytest.mark.parametrize(
    ("windows", "fragment"),
    [
        (("1 fortnight",), "is not a duration"),
        (("abc",), "is not a duration"),
        (("0 seconds",), "is zero"),
        (("400 days",), "longer than 366 days"),
        (("1m", "60s"), "listed twice"),
    ],
)
def test_bad_windows(windows: tuple[str, ...], fragment: str) -> None:
    transformation = fs.SparkSqlTransformation(SQL).aggregate(Aggregation.sum("amount"))
    with pytest.raises(fs.FeatureSetDefinitionError) as caught:
        declare(transformation.by_windows(*windows))
    assert "feature set 'user-aggs', parameter 'windows'" in str(caught.value)
    assert fragment in str(caught.value)


def test_duplicate_feature_names_after_aliasing() -> None:
    transformation = (
        fs.SparkSqlTransformation(SQL)
        .aggregate(Aggregation.sum("amount").alias("spend"))
        .aggregate(Aggregation.avg("amount").alias("spend"))
        .by_windows("1h")
    )
    with pytest.raises(fs.FeatureSetDefinitionError) as caught:
        declare(transformation)
    assert "parameter 'transformation'" in str(caught.value)
    assert "feature names are not unique: spend_1h" in str(caught.value)


def test_aggregates_and_windows_need_each_other() -> None:
    with pytest.raises(fs.FeatureSetDefinitionError, match="aggregates need windows"):
        declare(fs.SparkSqlTransformation(SQL).aggregate(Aggregation.sum("amount")))
    with pytest.raises(fs.FeatureSetDefinitionError, match="needs at least one"):
        declare(fs.SparkSqlTransformation(SQL).by_windows("1h"))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Aggregation.last_n("item", 0), "n=0 must be a whole number"),
        (lambda: Aggregation.percentile("amount", 0), "must be in (0, 1)"),
        (lambda: Aggregation.percentile("amount", 100), "must be in (0, 1)"),
        (lambda: Aggregation.sum("amount").alias("1bad"), "alias '1bad' is not valid"),
        (lambda: Aggregation.avg("not a column"), "column 'not a column' is not valid"),
    ],
)
def test_bad_aggregates(make: object, fragment: str) -> None:
    with pytest.raises(fs.FeatureSetDefinitionError) as caught:
        make()  # type: ignore[operator]
    assert fragment in str(caught.value)


def test_bad_allowed_lateness() -> None:
    transformation = fs.SparkSqlTransformation(SQL).aggregate(Aggregation.sum("amount"))
    with pytest.raises(fs.FeatureSetDefinitionError, match="parameter 'allowed_lateness'"):
        declare(transformation.by_windows("1h"), allowed_lateness="soon")
