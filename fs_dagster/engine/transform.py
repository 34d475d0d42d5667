"""Applying a feature set's transformation, and checking what it produces.

One function, :func:`apply_transformation`, is used by the online and offline pipelines,
by validation and by replay, so that every path computes features the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.functions import pandas_udf as spark_pandas_udf
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DateType,
    MapType,
    StructType,
    TimestampNTZType,
    TimestampType,
)

from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.names import identifier_problem, sql_view_name
from fs_dagster.definitions.transformations import (
    PandasUdf,
    SparkSqlTransformation,
    UdfTransformation,
)
from fs_dagster.engine.sources import parse_schema, source_columns

__all__ = [
    "VIEW_LOCK",
    "apply_sql",
    "apply_transformation",
    "check_output_schema",
    "empty_inputs",
    "first_line",
    "output_schema",
    "register_functions",
    "run_sql",
]

#: Temporary views are per session; this lock keeps two threads of one session from
#: binding the same view name to different DataFrames while a query is analysed.
VIEW_LOCK = threading.Lock()


def _udf_return_type(udf: PandasUdf) -> str:
    columns = udf.output_schema.columns
    if len(columns) == 1:
        return columns[0].type.value
    return "struct<" + ", ".join(f"`{c.name}`: {c.type.value}" for c in columns) + ">"


def apply_transformation(feature_set: FeatureSet, inputs: Mapping[str, DataFrame]) -> DataFrame:
    """Return the feature rows the transformation makes from ``inputs``.

    Args:
        feature_set: the feature set.
        inputs: one DataFrame per source name, holding only user-visible columns; SQL reads
            each as described in :func:`apply_sql`.
    """
    transformation = feature_set.transformation
    if isinstance(transformation, UdfTransformation):
        source_df = inputs[feature_set.sources[0].name]
        return _apply_udf(feature_set, transformation.function, source_df)
    return apply_sql(feature_set.name, "transformation", transformation, inputs)


def apply_sql(
    owner: str,
    parameter: str,
    transformation: SparkSqlTransformation,
    inputs: Mapping[str, DataFrame],
) -> DataFrame:
    """Run a Spark SQL transformation over ``inputs`` (a feature set's, or a backfill's).

    Each input is a temporary view named by
    :func:`~fs_dagster.definitions.names.sql_view_name` of its source name, so the source
    ``sample-streaming-source`` is read as ``sample_streaming_source``.

    Args:
        owner: the feature set the SQL belongs to (named in errors).
        parameter: the parameter that holds the SQL (named in errors).
        transformation: the SQL and the pandas UDFs it calls.
        inputs: one DataFrame per source name, holding only user-visible columns.

    Raises:
        FeatureSetDefinitionError: Spark cannot analyse the SQL.
    """
    spark = next(iter(inputs.values())).sparkSession
    with VIEW_LOCK:
        register_functions(spark, transformation)
        for name, df in inputs.items():
            df.createOrReplaceTempView(sql_view_name(name))
        return run_sql(owner, parameter, spark, transformation.sql)


def register_functions(spark: SparkSession, transformation: SparkSqlTransformation) -> None:
    """Register the pandas UDFs a SQL transformation calls, by their names."""
    for function in transformation.functions:
        spark.udf.register(
            function.name,
            spark_pandas_udf(function.function, _udf_return_type(function)),  # type: ignore[call-overload]
        )


def run_sql(owner: str, parameter: str, spark: SparkSession, sql: str) -> DataFrame:
    """``spark.sql(sql)``, its analysis errors said as the user's to fix.

    Raises:
        FeatureSetDefinitionError: Spark cannot analyse the SQL (unknown column, bad
            syntax), naming ``owner`` and ``parameter``.
    """
    try:
        return spark.sql(sql)
    except Exception as exc:
        raise FeatureSetDefinitionError(
            owner, parameter, f"Spark cannot run the SQL: {first_line(exc)}"
        ) from None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Spark's run on for pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _apply_udf(feature_set: FeatureSet, udf: PandasUdf, df: DataFrame) -> DataFrame:
    names = udf.output_schema.names
    fs_name = feature_set.name
    function = udf.function

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            result = function(batch)
            yield conform_udf_output(fs_name, udf.name, names, result)

    return df.mapInPandas(run, schema=udf.output_schema.to_ddl())


def conform_udf_output(fs_name: str, udf_name: str, names: list[str], result: Any) -> pd.DataFrame:
    """Check a UDF's pandas result against its declared column names and order it."""
    if not isinstance(result, pd.DataFrame):
        raise FeatureSetDefinitionError(
            fs_name,
            "transformation",
            f"UDF '{udf_name}' returned {type(result).__name__}, expected a pandas DataFrame",
        )
    missing = [n for n in names if n not in result.columns]
    extra = [c for c in result.columns if c not in names]
    if missing or extra:
        raise FeatureSetDefinitionError(
            fs_name,
            "transformation",
            f"UDF '{udf_name}' output does not match its output_schema: "
            f"missing {missing}, not declared {extra}",
        )
    return result[names]


def empty_inputs(spark: SparkSession, feature_set: FeatureSet) -> dict[str, DataFrame]:
    """Empty DataFrames shaped like each source, for analysis without data."""
    return {
        source.name: spark.createDataFrame([], source_columns(spark, source))
        for source in feature_set.data_sources
    }


def output_schema(spark: SparkSession, feature_set: FeatureSet) -> StructType:
    """Analyse the transformation against its sources' schemas; no data is read.

    Raises:
        FeatureSetDefinitionError: the SQL does not analyse, or the output lacks the key
            or timestamp column, or a column name cannot be stored.
    """
    for source in feature_set.data_sources:
        try:
            parse_schema(spark, source.schema)
        except Exception as exc:
            raise FeatureSetDefinitionError(
                source.name,
                "schema",
                f"not a valid Spark DDL schema: {first_line(exc)}",
                kind="source",
            ) from None
    if isinstance(feature_set.transformation, UdfTransformation):
        _check_udf_on_empty_frame(spark, feature_set, feature_set.transformation.function)
    schema = apply_transformation(feature_set, empty_inputs(spark, feature_set)).schema
    check_output_schema(feature_set, schema)
    if feature_set.is_aggregated:
        from fs_dagster.engine.aggregates import check_aggregations

        check_aggregations(feature_set, schema)
    return schema


def _check_udf_on_empty_frame(spark: SparkSession, feature_set: FeatureSet, udf: PandasUdf) -> None:
    # Spark does not call a mapInPandas function for an empty input, so call it here on
    # an empty frame with the source's columns: a wrong output shows before any data.
    columns = source_columns(spark, feature_set.source).fieldNames()
    try:
        result = udf.function(pd.DataFrame({name: pd.Series(dtype=object) for name in columns}))
    except Exception as exc:
        raise FeatureSetDefinitionError(
            feature_set.name,
            "transformation",
            f"UDF '{udf.name}' fails on an empty frame: {first_line(exc)}",
        ) from None
    conform_udf_output(feature_set.name, udf.name, udf.output_schema.names, result)


def check_output_schema(feature_set: FeatureSet, schema: StructType) -> None:
    """Check that the output has the key and timestamp columns and storable names."""
    fields = {f.name: f.dataType for f in schema.fields}
    produced = ", ".join(fields) or "no columns"
    for key in feature_set.key:
        if key not in fields:
            raise FeatureSetDefinitionError(
                feature_set.name,
                "key",
                f"key column '{key}' is not in the transformation output ({produced})",
            )
        if isinstance(fields[key], ArrayType | MapType | StructType):
            raise FeatureSetDefinitionError(
                feature_set.name, "key", f"key column '{key}' has a nested type {fields[key]}"
            )
    ts = feature_set.timestamp_column
    if ts not in fields:
        raise FeatureSetDefinitionError(
            feature_set.name,
            "timestamp_column_name",
            f"timestamp column '{ts}' is not in the transformation output ({produced})",
        )
    if not isinstance(fields[ts], TimestampType | TimestampNTZType | DateType):
        raise FeatureSetDefinitionError(
            feature_set.name,
            "timestamp_column_name",
            f"timestamp column '{ts}' has type {fields[ts].simpleString()}; "
            "cast it to TIMESTAMP in the transformation",
        )
    for name in fields:
        problem = identifier_problem(name, "output column")
        if problem:
            raise FeatureSetDefinitionError(
                feature_set.name, "transformation", f"{problem}; give it an alias in the SQL"
            )
    if len(fields) != len(schema.fields):
        raise FeatureSetDefinitionError(
            feature_set.name, "transformation", "two output columns have the same name"
        )


def feature_fields(feature_set: FeatureSet, schema: StructType) -> list[tuple[str, DataType]]:
    """The feature columns (output minus key and timestamp) with their types, in order."""
    skip = {*feature_set.key, feature_set.timestamp_column}
    return [(f.name, f.dataType) for f in schema.fields if f.name not in skip]
