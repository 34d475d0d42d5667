"""fs-dagster: a streaming feature store on Dagster and Spark.

Declare feature sets in Python; :func:`build_definitions` turns them into Dagster assets,
jobs, sensors and schedules; :class:`FeatureStore` reads features back online by key and
offline point-in-time.

Example:
    >>> import fs_dagster as fs
    >>> events = fs.FileSource(name="events", path="data/events",
    ...                        schema="user_id STRING, amount DOUBLE, ts TIMESTAMP")
    >>> @fs.streaming.feature_set(key="user_id", data_sources=["events"],
    ...                           timestamp_column_name="ts")
    ... def user_spend():
    ...     return fs.SparkSqlTransformation("SELECT user_id, amount, ts FROM events")
    ... # doctest: +SKIP
"""

from fs_dagster.definitions import streaming
from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.feature_set import (
    ClusterTemplate,
    ExecutionSpecification,
    FeatureSet,
    FeatureSetMetadata,
)
from fs_dagster.definitions.schema import Column, Schema, Type
from fs_dagster.definitions.secrets import Secret
from fs_dagster.definitions.sinks import KafkaSink
from fs_dagster.definitions.sources import FileSource, KafkaSource, SaslAuth, SslAuth
from fs_dagster.definitions.transformations import (
    PandasUdf,
    SparkSqlTransformation,
    UdfTransformation,
    pandas_udf,
)

__all__ = [
    "ClusterTemplate",
    "Column",
    "ExecutionSpecification",
    "FeatureSet",
    "FeatureSetDefinitionError",
    "FeatureSetMetadata",
    "FileSource",
    "KafkaSink",
    "KafkaSource",
    "PandasUdf",
    "SaslAuth",
    "Schema",
    "Secret",
    "SparkSqlTransformation",
    "SslAuth",
    "Type",
    "UdfTransformation",
    "pandas_udf",
    "streaming",
]
