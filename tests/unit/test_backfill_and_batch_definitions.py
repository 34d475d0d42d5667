"""JFrog-compatible names, batch sources, backfills and batch feature sets: declarations
and their validation (each error names the feature set and the parameter)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pandas as pd
import pytest

import fs_dagster as fs
from fs_dagster import (
    Aggregation,
    BackfillBatchDataSourceSpec,
    Column,
    Schema,
    SparkSqlTransformation,
    Type,
    UdfTransformation,
    batch,
    pandas_udf,
    streaming,
)
from fs_dagster.definitions.aggregations import parse_window
from fs_dagster.definitions.names import sql_view_name, storage_name
from fs_dagster.definitions.sources import default_sources
from fs_dagster.orchestration.definitions import check_unique_names

pytestmark = pytest.mark.unit

STREAM_SCHEMA = (
    "timestamp TIMESTAMP, user_id STRING, first_name STRING, last_name STRING, value BIGINT"
)
TX_SCHEMA = "timestamp TIMESTAMP, user_id STRING, transaction_amount DOUBLE, is_remote BOOLEAN"


@pytest.fixture(autouse=True)
def sources() -> None:
    fs.FileSource(
        name="sample-streaming-source", path="/tmp/fs-dagster-unit-sample", schema=STREAM_SCHEMA
    )
    fs.KafkaSource(
        name="transaction_stream",
        bootstrap_servers="127.0.0.1:9092",
        topic="transactions",
        schema=TX_SCHEMA,
    )
    fs.FileSource(
        name="users_registration_stream",
        path="/tmp/fs-dagster-unit-registrations",
        schema="user_id STRING, amount DOUBLE, reg_date TIMESTAMP",
    )
    fs.BatchSource(
        name="batch_backfill_source_name",
        path="s3a://lake/registrations",
        timestamp_column="reg_date",
    )
    fs.BatchSource(
        name="sample-batch-source",
        path="/tmp/fs-dagster-unit-batch",
        timestamp_column="reg_date",
        format="csv",
        schema="user_id STRING, amount DOUBLE, reg_date TIMESTAMP",
    )


def message_of(call: Callable[[], object]) -> str:
    with pytest.raises(fs.FeatureSetDefinitionError) as caught:
        call()
    return str(caught.value)


def assert_names(message: str, feature_set: str, parameter: str) -> None:
    assert f"feature set '{feature_set}', parameter '{parameter}'" in message


# --- JFrog ML examples, as written (imports from fs_dagster) -------------------------


def test_jfrog_sql_example() -> None:
    @streaming.feature_set(
        name="sample_fs",
        key="user_id",
        data_sources=["sample-streaming-source"],
        timestamp_column_name="timestamp",
    )
    def transform() -> SparkSqlTransformation:
        return SparkSqlTransformation(
            sql="select timestamp, user_id, first_name, last_name from sample_source"
        )

    assert transform.name == "sample_fs"
    assert transform.storage_name == "sample_fs"
    assert [s.name for s in transform.data_sources] == ["sample-streaming-source"]
    assert transform.kind == "streaming"


def test_jfrog_pandas_udf_example() -> None:
    @pandas_udf(output_schema=Schema([Column(type=Type.long)]))
    def plus_one(column_a: pd.Series) -> pd.Series:
        return column_a + 1

    @pandas_udf(output_schema=Schema([Column(type=Type.long)]))
    def mul_by_two(column_a: pd.Series) -> pd.Series:
        return column_a * 2

    @streaming.feature_set(
        name="sample_fs",
        key="user_id",
        data_sources=["sample-streaming-source"],
        timestamp_column_name="timestamp",
    )
    def transform() -> SparkSqlTransformation:
        return SparkSqlTransformation(
            sql="select timestamp, mul_by_two(value) as col1, plus_one(value) as col2 from ds1",
            functions=[plus_one, mul_by_two],
        )

    assert isinstance(transform.transformation, SparkSqlTransformation)
    assert [f.name for f in transform.transformation.functions] == ["plus_one", "mul_by_two"]


def test_jfrog_aggregation_example() -> None:
    @streaming.feature_set(
        key="user_id",
        data_sources=["transaction_stream"],
        timestamp_column_name="timestamp",
        name="my_streaming_agg_fs",
    )
    def transform() -> SparkSqlTransformation:
        sql = (
            "SELECT timestamp, user_id, transaction_amount, is_remote, offset, topic, "
            "partition FROM transaction_stream"
        )

        return (
            SparkSqlTransformation(sql)
            .aggregate(Aggregation.avg("transaction_amount"))
            .aggregate(Aggregation.boolean_or("is_remote"))
            .aggregate(Aggregation.sum("transaction_amount"))
            .by_windows("1 minute", "1 hour", "3 hour", "1 day", "7 day")
        )

    assert [w.label for w in transform.windows] == ["1m", "1h", "3h", "1d", "7d"]
    assert len(transform.feature_names) == 15
    assert transform.feature_names[:5] == [
        "avg_transaction_amount_1m",
        "avg_transaction_amount_1h",
        "avg_transaction_amount_3h",
        "avg_transaction_amount_1d",
        "avg_transaction_amount_7d",
    ]


def test_jfrog_alias_example_with_one_comma_separated_window_string() -> None:
    sql = "SELECT timestamp, user_id, transaction_amount, is_remote FROM transaction_stream"
    transformation = (
        SparkSqlTransformation(sql)
        .aggregate(Aggregation.avg("transaction_amount"))
        .aggregate(Aggregation.boolean_or("is_remote").alias("had_remote_transaction"))
        .by_windows("1 minute, 1 hour")
    )
    feature_set = streaming.feature_set(
        name="alias_fs",
        key="user_id",
        data_sources=["transaction_stream"],
        timestamp_column_name="timestamp",
    )(lambda: transformation)
    assert feature_set.feature_names == [
        "avg_transaction_amount_1m",
        "avg_transaction_amount_1h",
        "had_remote_transaction_1m",
        "had_remote_transaction_1h",
    ]


def test_jfrog_backfill_example() -> None:
    @streaming.feature_set(
        key="user_id",
        data_sources=["users_registration_stream"],
        timestamp_column_name="reg_date",
        name="my_backfilled_streaming_agg_fs",
    )
    @streaming.backfill(
        start_date=datetime(2022, 1, 1, 0, 0, 0),
        end_date=datetime(2023, 9, 1, 0, 0, 0),
        data_sources=[
            BackfillBatchDataSourceSpec(
                data_source_name="batch_backfill_source_name",
                start_datetime=datetime(2023, 1, 1, 0, 0, 0),
                end_datetime=datetime(2023, 8, 1, 0, 0, 0),
            )
        ],
        backfill_cluster_template=fs.ClusterTemplate.XLARGE,
        backfill_transformation=SparkSqlTransformation(
            "SELECT user_id, amount, reg_date FROM backfill_data_source"
        ),
    )
    def user_streaming_features() -> SparkSqlTransformation:
        return (
            SparkSqlTransformation("SELECT user_id, amount, reg_date FROM data_source")
            .aggregate(Aggregation.avg("amount"))
            .by_windows("1 minute, 1 hour")
        )

    spec = user_streaming_features.backfill
    assert spec is not None
    assert spec.start == datetime(2022, 1, 1, tzinfo=UTC)
    assert spec.end == datetime(2023, 9, 1, tzinfo=UTC)
    assert spec.start.tzinfo is UTC and spec.end.tzinfo is UTC
    assert spec.cluster_template is fs.ClusterTemplate.XLARGE
    assert spec.partition_seconds == 86400
    [source_range] = spec.sources
    assert source_range.source is default_sources.get("batch_backfill_source_name")
    assert source_range.start == datetime(2023, 1, 1, tzinfo=UTC)
    assert source_range.end == datetime(2023, 8, 1, tzinfo=UTC)
    assert user_streaming_features.feature_names == ["avg_amount_1m", "avg_amount_1h"]


# --- names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sample_fs", "my_streaming_agg_fs", "user-transactions", "a_b-c"])
def test_feature_set_names_may_hold_underscores_and_hyphens(name: str) -> None:
    assert declare_streaming(name=name).name == name


def test_default_name_turns_underscores_into_hyphens() -> None:
    def spend_per_user() -> SparkSqlTransformation:
        return stream_sql()

    feature_set = streaming.feature_set(
        key="user_id", data_sources=["sample-streaming-source"], timestamp_column_name="timestamp"
    )(spend_per_user)
    assert feature_set.name == "spend-per-user"


def test_names_sharing_a_storage_name_are_rejected() -> None:
    assert storage_name("User-Spend") == storage_name("user_spend") == "user_spend"
    first = declare_streaming(name="user-spend")
    second = declare_streaming(name="user_spend")
    message = message_of(lambda: check_unique_names([first, second]))
    assert_names(message, "user_spend", "name")
    assert "another feature set is already named 'user-spend'" in message


@pytest.mark.parametrize("name", ["sample-streaming-source", "_private", "tx", "a-1_b"])
def test_source_names_may_hold_hyphens(name: str) -> None:
    source = fs.FileSource(name=name, path="/tmp/fs-dagster-unit-x", schema=STREAM_SCHEMA)
    assert default_sources.get(name) is source


@pytest.mark.parametrize("name", ["1tx", "-tx", "tx.a", "tx a", ""])
def test_invalid_source_names(name: str) -> None:
    message = message_of(
        lambda: fs.FileSource(name=name, path="/tmp/fs-dagster-unit-x", schema=STREAM_SCHEMA)
    )
    assert "parameter 'name'" in message
    assert "letters, digits, underscores and hyphens" in message


def test_sql_view_name() -> None:
    assert sql_view_name("sample-streaming-source") == "sample_streaming_source"
    assert sql_view_name("tx") == "tx"


@pytest.mark.parametrize("other", ["tx_views", "TX-views"])
def test_sources_whose_view_names_collide_are_rejected(other: str) -> None:
    fs.FileSource(name="tx-views", path="/tmp/fs-dagster-unit-a", schema=STREAM_SCHEMA)
    fs.FileSource(name=other, path="/tmp/fs-dagster-unit-b", schema=STREAM_SCHEMA)
    message = message_of(lambda: declare_streaming(data_sources=["tx-views", other]))
    assert_names(message, "user-spend", "data_sources")
    assert "'tx-views'" in message and f"'{other}'" in message
    assert "'tx_views'" in message


def test_a_source_listed_twice_is_rejected() -> None:
    message = message_of(lambda: declare_streaming(data_sources=["sample-streaming-source"] * 2))
    assert_names(message, "user-spend", "data_sources")
    assert "listed twice" in message


@pytest.mark.parametrize(
    "windows",
    [("1 minute, 1 hour",), ("1 minute", "1 hour"), ("1m,1h",), ("1 minute , 1 hour",)],
)
def test_windows_in_one_string_or_several(windows: tuple[str, ...]) -> None:
    transformation = (
        SparkSqlTransformation("SELECT user_id, value, timestamp FROM sample_streaming_source")
        .aggregate(Aggregation.sum("value"))
        .by_windows(*windows)
    )
    assert transformation.windows == tuple(w.strip() for w in ",".join(windows).split(","))
    feature_set = declare_streaming(function=lambda: transformation)
    assert feature_set.feature_names == ["sum_value_1m", "sum_value_1h"]


def test_singular_day_parses_like_plural() -> None:
    assert parse_window("7 day") == parse_window("7 days") == parse_window("7d")
    assert parse_window("7 day").label == "7d"
    assert parse_window("3 hour").label == "3h"


def test_empty_window_in_a_list_is_an_error() -> None:
    transformation = (
        SparkSqlTransformation("SELECT user_id, value, timestamp FROM sample_streaming_source")
        .aggregate(Aggregation.sum("value"))
        .by_windows("1 minute,")
    )
    message = message_of(lambda: declare_streaming(function=lambda: transformation))
    assert_names(message, "user-spend", "windows")


# --- BatchSource ---------------------------------------------------------------------


def test_batch_source_defaults_and_registration() -> None:
    source = fs.BatchSource(name="tx-history", path="s3a://lake/tx", timestamp_column="ts")
    assert source.format == "parquet"
    assert source.schema is None
    assert dict(source.options) == {}
    assert default_sources.get("tx-history") is source
    delta = fs.BatchSource(
        name="tx-delta",
        path="/data/tx",
        timestamp_column="ts",
        format="delta",
        schema="user_id STRING, ts TIMESTAMP",
        options={"versionAsOf": "3"},
    )
    assert delta.options["versionAsOf"] == "3"


@pytest.mark.parametrize(
    ("overrides", "parameter", "fragment"),
    [
        ({"name": "1tx"}, "name", "not valid"),
        ({"path": ""}, "path", "local path or an s3a:// URL"),
        ({"path": "s3://lake/tx"}, "path", "'s3://' is not supported"),
        ({"path": "http://host/tx"}, "path", "'http://' is not supported"),
        ({"timestamp_column": "event time"}, "timestamp_column", "not valid"),
        ({"format": "avro"}, "format", "use parquet, delta, csv, json"),
        ({"format": "csv"}, "schema", "Spark DDL"),
        ({"format": "json"}, "schema", "Spark DDL"),
        ({"schema": "  "}, "schema", "Spark DDL"),
    ],
)
def test_batch_source_validation(overrides: dict[str, Any], parameter: str, fragment: str) -> None:
    params: dict[str, Any] = {"name": "tx-bad", "path": "/data/tx", "timestamp_column": "ts"}
    params.update(overrides)
    message = message_of(lambda: fs.BatchSource(**params))
    assert f"batch source '{params['name']}', parameter '{parameter}'" in message
    assert fragment in message


def test_csv_and_json_batch_sources_with_a_schema() -> None:
    for file_format in ("csv", "json"):
        source = fs.BatchSource(
            name=f"tx-{file_format}",
            path="/data/tx",
            timestamp_column="ts",
            format=file_format,
            schema="user_id STRING, ts TIMESTAMP",
        )
        assert source.format == file_format


@pytest.mark.parametrize("entry", ["batch_backfill_source_name", "object"])
def test_streaming_feature_set_rejects_a_batch_source(entry: str) -> None:
    source: Any = default_sources.get("batch_backfill_source_name") if entry == "object" else entry
    message = message_of(lambda: declare_streaming(data_sources=[source]))
    assert_names(message, "user-spend", "data_sources")
    assert (
        "a streaming feature set reads a stream source (KafkaSource or FileSource); "
        "'batch_backfill_source_name' is a batch source — use it in "
        "streaming.backfill(data_sources=...) or a batch feature set"
    ) in message


# --- @streaming.backfill -------------------------------------------------------------


def stream_sql() -> SparkSqlTransformation:
    return SparkSqlTransformation("SELECT user_id, value, timestamp FROM sample_streaming_source")


def fresh(make: Callable[[], SparkSqlTransformation]) -> Callable[[], SparkSqlTransformation]:
    """A new function calling ``make``: decorators below a feature set mark their function."""

    def transformation() -> SparkSqlTransformation:
        return make()

    return transformation


def aggregated_sql() -> SparkSqlTransformation:
    return stream_sql().aggregate(Aggregation.sum("value")).by_windows("1 hour, 1 day")


BACKFILL_SQL = SparkSqlTransformation(
    "SELECT user_id, amount AS value, reg_date AS timestamp FROM batch_backfill_source_name"
)


def declare_streaming(**overrides: Any) -> fs.FeatureSet:
    function: Callable[[], Any] = overrides.pop("function", aggregated_sql)
    params: dict[str, Any] = {
        "name": "user-spend",
        "key": "user_id",
        "data_sources": ["sample-streaming-source"],
        "timestamp_column_name": "timestamp",
    }
    params.update(overrides)
    return streaming.feature_set(**params)(function)


def backfill_args(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "start_date": datetime(2022, 1, 1),
        "end_date": datetime(2023, 9, 1),
        "data_sources": ["batch_backfill_source_name"],
        "backfill_transformation": BACKFILL_SQL,
    }
    args.update(overrides)
    return args


def with_backfill_below(name: str = "user-spend", **overrides: Any) -> fs.FeatureSet:
    """``@streaming.backfill`` below ``@streaming.feature_set`` (on the function)."""
    function = streaming.backfill(**backfill_args(**overrides))(fresh(aggregated_sql))
    return declare_streaming(name=name, function=function)


def with_backfill_above(name: str = "user-spend", **overrides: Any) -> fs.FeatureSet:
    """``@streaming.backfill`` above ``@streaming.feature_set`` (on the FeatureSet)."""
    return streaming.backfill(**backfill_args(**overrides))(declare_streaming(name=name))


BOTH_ORDERS = pytest.mark.parametrize(
    "declare", [with_backfill_below, with_backfill_above], ids=["below", "above"]
)


@BOTH_ORDERS
def test_backfill_in_either_order(declare: Callable[..., fs.FeatureSet]) -> None:
    feature_set = declare(backfill_cluster_template=fs.ClusterTemplate.LARGE)
    spec = feature_set.backfill
    assert spec is not None
    assert (spec.start, spec.end) == (
        datetime(2022, 1, 1, tzinfo=UTC),
        datetime(2023, 9, 1, tzinfo=UTC),
    )
    [source_range] = spec.sources
    assert source_range.source.name == "batch_backfill_source_name"
    assert (source_range.start, source_range.end) == (spec.start, spec.end)
    assert spec.transformation is BACKFILL_SQL
    assert spec.cluster_template is fs.ClusterTemplate.LARGE


def test_backfill_with_metadata_in_any_order() -> None:
    function = streaming.metadata(owner="risk")(
        streaming.backfill(**backfill_args())(fresh(aggregated_sql))
    )
    feature_set = streaming.execution_specification(
        offline_cluster_template=fs.ClusterTemplate.MEDIUM
    )(declare_streaming(function=function))
    assert feature_set.backfill is not None
    assert feature_set.metadata.owner == "risk"
    assert feature_set.execution_specification.offline_cluster_template is (
        fs.ClusterTemplate.MEDIUM
    )


def test_backfill_on_a_row_level_streaming_feature_set() -> None:
    feature_set = streaming.backfill(**backfill_args())(declare_streaming(function=stream_sql))
    assert not feature_set.is_aggregated
    assert feature_set.backfill is not None
    assert feature_set.backfill.cluster_template is None


def test_backfill_accepts_dates_and_aware_datetimes() -> None:
    plus_two = timezone(timedelta(hours=2))
    feature_set = with_backfill_below(
        start_date=date(2022, 1, 1),
        end_date=datetime(2023, 9, 1, 2, 0, tzinfo=plus_two),
        data_sources=[
            BackfillBatchDataSourceSpec(
                data_source_name="batch_backfill_source_name",
                start_datetime=datetime(2022, 6, 1, 12, 30),  # naive: UTC
                end_datetime=datetime(2023, 1, 1, 3, 0, tzinfo=plus_two),
            )
        ],
    )
    spec = feature_set.backfill
    assert spec is not None
    assert spec.start == datetime(2022, 1, 1, tzinfo=UTC)
    assert spec.end == datetime(2023, 9, 1, tzinfo=UTC)
    assert spec.end.utcoffset() == timedelta(0)
    [source_range] = spec.sources
    assert source_range.start == datetime(2022, 6, 1, 12, 30, tzinfo=UTC)
    assert source_range.end == datetime(2023, 1, 1, 1, 0, tzinfo=UTC)
    assert source_range.start.utcoffset() == timedelta(0)


def test_backfill_source_spec_with_one_bound_keeps_the_other_from_the_backfill() -> None:
    spec = with_backfill_below(
        data_sources=[
            BackfillBatchDataSourceSpec(
                data_source_name="batch_backfill_source_name",
                start_datetime=datetime(2023, 1, 1),
            ),
            fs.BatchSource(name="tx-archive", path="/data/archive", timestamp_column="reg_date"),
        ]
    ).backfill
    assert spec is not None
    first, second = spec.sources
    assert (first.start, first.end) == (datetime(2023, 1, 1, tzinfo=UTC), spec.end)
    assert second.source.name == "tx-archive"
    assert (second.start, second.end) == (spec.start, spec.end)


@BOTH_ORDERS
@pytest.mark.parametrize(
    ("overrides", "parameter", "fragment"),
    [
        ({"start_date": "2022-01-01"}, "backfill.start_date", "expected a datetime or a date"),
        (
            {"start_date": datetime(2022, 1, 1, 6)},
            "backfill.start_date",
            "2022-01-01 06:00:00 UTC is not on a partition boundary",
        ),
        (
            {"end_date": datetime(2023, 9, 1, 0, 0, 1)},
            "backfill.end_date",
            "not on a partition boundary; partitions are days, so use midnight UTC",
        ),
        (
            {"end_date": datetime(2023, 9, 1, tzinfo=timezone(timedelta(hours=2)))},
            "backfill.end_date",
            "2023-08-31 22:00:00 UTC is not on a partition boundary",
        ),
        ({"end_date": datetime(2022, 1, 1)}, "backfill.end_date", "is not after start_date"),
        ({"end_date": datetime(2021, 1, 1)}, "backfill.end_date", "is not after start_date"),
        ({"data_sources": []}, "backfill.data_sources", "non-empty list"),
        (
            {"data_sources": ["no-such-source"]},
            "backfill.data_sources",
            "unknown source 'no-such-source' (known batch sources: ",
        ),
        (
            {"data_sources": ["sample-streaming-source"]},
            "backfill.data_sources",
            "a backfill reads batch sources (BatchSource); 'sample-streaming-source' is a "
            "stream source (known batch sources: ",
        ),
        (
            {"data_sources": ["batch_backfill_source_name", "batch_backfill_source_name"]},
            "backfill.data_sources",
            "listed twice",
        ),
        (
            {
                "data_sources": [
                    "batch_backfill_source_name",
                    BackfillBatchDataSourceSpec("batch_backfill_source_name"),
                ]
            },
            "backfill.data_sources",
            "listed twice",
        ),
        (
            {"data_sources": [BackfillBatchDataSourceSpec(data_source_name=3)]},  # type: ignore[arg-type]
            "backfill.data_sources",
            "data_source_name must be a source name",
        ),
        (
            {
                "data_sources": [
                    BackfillBatchDataSourceSpec(
                        "batch_backfill_source_name", start_datetime=datetime(2021, 12, 31)
                    )
                ]
            },
            "backfill.data_sources",
            "source 'batch_backfill_source_name': start_datetime 2021-12-31 00:00:00 UTC is "
            "outside the backfill's range",
        ),
        (
            {
                "data_sources": [
                    BackfillBatchDataSourceSpec(
                        "batch_backfill_source_name", end_datetime=datetime(2023, 9, 2)
                    )
                ]
            },
            "backfill.data_sources",
            "end_datetime 2023-09-02 00:00:00 UTC is outside the backfill's range",
        ),
        (
            {
                "data_sources": [
                    BackfillBatchDataSourceSpec(
                        "batch_backfill_source_name",
                        start_datetime=datetime(2023, 3, 1),
                        end_datetime=datetime(2023, 2, 1),
                    )
                ]
            },
            "backfill.data_sources",
            "end_datetime 2023-02-01 00:00:00 UTC is not after start_datetime",
        ),
        (
            {"backfill_transformation": "SELECT 1"},
            "backfill.backfill_transformation",
            "expected a SparkSqlTransformation",
        ),
        (
            {"backfill_transformation": SparkSqlTransformation("  ")},
            "backfill.backfill_transformation",
            "SQL of SparkSqlTransformation is empty",
        ),
        (
            {
                "backfill_transformation": BACKFILL_SQL.aggregate(
                    Aggregation.sum("value")
                ).by_windows("1h")
            },
            "backfill.backfill_transformation",
            "the aggregation comes from the feature set's own transformation",
        ),
        (
            {"backfill_transformation": BACKFILL_SQL.by_windows("1h")},
            "backfill.backfill_transformation",
            "remove .aggregate(...) and .by_windows(...)",
        ),
        (
            {"backfill_cluster_template": "XLARGE"},
            "backfill.backfill_cluster_template",
            "expected a ClusterTemplate",
        ),
    ],
)
def test_backfill_validation(
    declare: Callable[..., fs.FeatureSet],
    overrides: dict[str, Any],
    parameter: str,
    fragment: str,
) -> None:
    message = message_of(lambda: declare(name="user-backfill", **overrides))
    assert_names(message, "user-backfill", parameter)
    assert fragment in message


def test_backfill_udf_transformation_is_rejected() -> None:
    udf = pandas_udf(output_schema=Schema([Column(name="user_id")]), name="identity")(lambda df: df)
    message = message_of(
        lambda: with_backfill_above(backfill_transformation=UdfTransformation(function=udf))
    )
    assert_names(message, "user-spend", "backfill.backfill_transformation")
    assert "got UdfTransformation" in message


@BOTH_ORDERS
def test_backfill_sources_whose_view_names_collide(declare: Callable[..., fs.FeatureSet]) -> None:
    fs.BatchSource(name="hist-a", path="/data/a", timestamp_column="ts")
    fs.BatchSource(name="hist_a", path="/data/b", timestamp_column="ts")
    message = message_of(lambda: declare(data_sources=["hist-a", "hist_a"]))
    assert_names(message, "user-spend", "backfill.data_sources")
    assert "would both be read in SQL as 'hist_a'" in message


def test_backfill_lists_known_batch_sources_only() -> None:
    message = message_of(lambda: with_backfill_below(data_sources=["nope"]))
    known = message.split("known batch sources: ", 1)[1]
    assert "batch_backfill_source_name" in known
    assert "sample-batch-source" in known
    assert "sample-streaming-source" not in known


# --- batch feature sets --------------------------------------------------------------


BATCH_SQL = SparkSqlTransformation(
    "SELECT user_id, amount, reg_date FROM batch_backfill_source_name"
)


def declare_batch(
    function: Callable[[], Any] | None = None,
    start: object = date(2024, 1, 1),
    **overrides: Any,
) -> fs.FeatureSet:
    if function is None:
        function = fresh(lambda: BATCH_SQL)
    params: dict[str, Any] = {
        "name": "user-spend-daily",
        "key": "user_id",
        "data_sources": ["batch_backfill_source_name"],
        "timestamp_column_name": "reg_date",
    }
    params.update(overrides)
    if start is not None:
        function = batch.backfill(start_date=start)(function)  # type: ignore[arg-type]
    return batch.feature_set(**params)(function)


def test_batch_feature_set() -> None:
    feature_set = declare_batch(data_sources=["batch_backfill_source_name", "sample-batch-source"])
    assert feature_set.kind == "batch"
    assert feature_set.data_sources == ()
    assert [s.name for s in feature_set.batch_sources] == [
        "batch_backfill_source_name",
        "sample-batch-source",
    ]
    assert feature_set.sources == feature_set.batch_sources
    assert feature_set.offline_scheduling_policy == "0 0 * * *"
    assert feature_set.partitions_start == datetime(2024, 1, 1, tzinfo=UTC)
    assert feature_set.backfill is None
    with pytest.raises(ValueError, match="reads no stream source"):
        _ = feature_set.source


def test_batch_feature_set_with_aggregations_and_schedule() -> None:
    transformation = BATCH_SQL.aggregate(Aggregation.avg("amount")).by_windows("1 day, 7 day")
    feature_set = declare_batch(
        lambda: transformation,
        start=datetime(2024, 1, 1),
        scheduling_policy="0 3 * * *",
        online_ttl="30 days",
    )
    assert feature_set.feature_names == ["avg_amount_1d", "avg_amount_7d"]
    assert feature_set.offline_scheduling_policy == "0 3 * * *"
    assert feature_set.online_ttl == timedelta(days=30)
    assert feature_set.partitions_start == datetime(2024, 1, 1, tzinfo=UTC)


def test_batch_feature_set_default_name_and_source_object() -> None:
    source = default_sources.get("sample-batch-source")

    @batch.feature_set(key="user_id", data_sources=[source], timestamp_column_name="reg_date")  # type: ignore[list-item]
    @batch.backfill(start_date=datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))))
    def daily_user_spend() -> SparkSqlTransformation:
        return SparkSqlTransformation("SELECT * FROM sample_batch_source")

    assert daily_user_spend.name == "daily-user-spend"
    assert daily_user_spend.partitions_start == datetime(2024, 1, 1, tzinfo=UTC)


def test_batch_decorators_in_either_order() -> None:
    function = batch.metadata(owner="growth")(
        batch.backfill(start_date=date(2024, 1, 1))(lambda: BATCH_SQL)
    )
    feature_set = batch.feature_set(
        name="growth-daily",
        key="user_id",
        data_sources=["batch_backfill_source_name"],
        timestamp_column_name="reg_date",
    )(function)
    assert feature_set.metadata.owner == "growth"
    moved = batch.backfill(start_date=date(2023, 1, 1))(
        batch.execution_specification(offline_cluster_template=fs.ClusterTemplate.LARGE)(
            feature_set
        )
    )
    assert moved.partitions_start == datetime(2023, 1, 1, tzinfo=UTC)
    assert moved.execution_specification.offline_cluster_template is fs.ClusterTemplate.LARGE
    assert moved.metadata.owner == "growth"


def test_batch_feature_set_needs_a_start() -> None:
    message = message_of(lambda: declare_batch(start=None))
    assert_names(message, "user-spend-daily", "backfill.start_date")
    assert (
        "a batch feature set needs @batch.backfill(start_date=...) to know where its "
        "partitions start"
    ) in message


@pytest.mark.parametrize(
    ("start", "fragment"),
    [(datetime(2024, 1, 1, 12), "not on a partition boundary"), (2024, "datetime or a date")],
)
def test_batch_start_must_be_a_midnight(start: object, fragment: str) -> None:
    message = message_of(lambda: declare_batch(start=start))
    assert_names(message, "user-spend-daily", "backfill.start_date")
    assert fragment in message
    above = message_of(lambda: batch.backfill(start_date=start)(declare_batch()))  # type: ignore[arg-type]
    assert_names(above, "user-spend-daily", "backfill.start_date")


@pytest.mark.parametrize(
    ("overrides", "parameter", "fragment"),
    [
        (
            {"data_sources": ["sample-streaming-source"]},
            "data_sources",
            "a batch feature set reads batch sources (BatchSource); "
            "'sample-streaming-source' is a stream source",
        ),
        ({"data_sources": ["nope"]}, "data_sources", "(known batch sources: "),
        ({"data_sources": []}, "data_sources", "non-empty list"),
        ({"scheduling_policy": "0 25 * * *"}, "scheduling_policy", "hour field"),
        ({"online_ttl": 0}, "online_ttl", "longer than zero"),
        ({"key": []}, "key", "non-empty list"),
        ({"name": "1daily"}, "name", "starting with a letter"),
    ],
)
def test_batch_feature_set_validation(
    overrides: dict[str, Any], parameter: str, fragment: str
) -> None:
    message = message_of(lambda: declare_batch(**overrides))
    assert_names(message, overrides.get("name", "user-spend-daily"), parameter)
    assert fragment in message


def test_batch_udf_transformation_reads_exactly_one_source() -> None:
    udf = pandas_udf(
        output_schema=Schema(
            [Column(name="user_id"), Column(name="reg_date", type=Type.timestamp)]
        ),
        name="identity",
    )(lambda df: df)
    one = declare_batch(lambda: UdfTransformation(function=udf))
    assert one.sources[0].name == "batch_backfill_source_name"
    message = message_of(
        lambda: declare_batch(
            lambda: UdfTransformation(function=udf),
            data_sources=["batch_backfill_source_name", "sample-batch-source"],
        )
    )
    assert_names(message, "user-spend-daily", "data_sources")
    assert "UdfTransformation reads exactly one source; got 2" in message


def test_batch_sources_whose_view_names_collide() -> None:
    fs.BatchSource(name="daily-a", path="/data/a", timestamp_column="ts")
    fs.BatchSource(name="daily_a", path="/data/b", timestamp_column="ts")
    message = message_of(lambda: declare_batch(data_sources=["daily-a", "daily_a"]))
    assert_names(message, "user-spend-daily", "data_sources")
    assert "would both be read in SQL as 'daily_a'" in message


def test_streaming_backfill_on_a_batch_feature_set_is_rejected() -> None:
    below = streaming.backfill(**backfill_args())(
        batch.backfill(start_date=date(2024, 1, 1))(lambda: BATCH_SQL)
    )
    message = message_of(lambda: declare_batch(below, start=None))
    assert_names(message, "user-spend-daily", "backfill")
    assert "a batch feature set takes @batch.backfill(start_date=...)" in message
    above = message_of(lambda: streaming.backfill(**backfill_args())(declare_batch()))
    assert_names(above, "user-spend-daily", "backfill")


def test_batch_backfill_on_a_streaming_feature_set_is_rejected() -> None:
    below = batch.backfill(start_date=date(2024, 1, 1))(fresh(aggregated_sql))
    message = message_of(lambda: declare_streaming(function=below))
    assert_names(message, "user-spend", "backfill")
    assert "a streaming feature set takes @streaming.backfill(" in message
    above = message_of(lambda: batch.backfill(start_date=date(2024, 1, 1))(declare_streaming()))
    assert_names(above, "user-spend", "backfill")
