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

from fs_dagster.client import FeatureStore
from fs_dagster.definitions import batch, streaming
from fs_dagster.definitions.aggregations import AggregateSpec, Aggregation
from fs_dagster.definitions.backfill import BackfillBatchDataSourceSpec
from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.feature_set import (
    ClusterTemplate,
    ExecutionSpecification,
    FeatureSet,
    FeatureSetMetadata,
)
from fs_dagster.definitions.kafka_auth import (
    SaslAuthentication,
    SaslMechanism,
    SecurityProtocol,
    SslAuthentication,
    set_secret_resolver,
)
from fs_dagster.definitions.schema import Column, Schema, Type
from fs_dagster.definitions.secrets import Secret
from fs_dagster.definitions.sinks import (
    KafkaSink,
    MessageFormat,
    OfflineStreamingAttachmentPoint,
    OnlineStreamingAttachmentPoint,
)
from fs_dagster.definitions.sources import BatchSource, FileSource, KafkaSource
from fs_dagster.definitions.transformations import (
    PandasUdf,
    SparkSqlTransformation,
    UdfTransformation,
    pandas_udf,
)
from fs_dagster.engine.replay import CombinedFeatureEvent, FeatureEvent
from fs_dagster.engine.spark_session import S3Settings, SparkSettings, create_spark_session
from fs_dagster.engine.validation import ValidationResult, validate
from fs_dagster.orchestration.definitions import build_definitions
from fs_dagster.orchestration.resources import FeatureStoreResource, spark_resource
from fs_dagster.stores.online import CassandraOnlineStore, OnlineStore, SqliteOnlineStore

__all__ = [
    "AggregateSpec",
    "Aggregation",
    "BackfillBatchDataSourceSpec",
    "BatchSource",
    "CassandraOnlineStore",
    "ClusterTemplate",
    "Column",
    "CombinedFeatureEvent",
    "ExecutionSpecification",
    "FeatureEvent",
    "FeatureSet",
    "FeatureSetDefinitionError",
    "FeatureSetMetadata",
    "FeatureStore",
    "FeatureStoreResource",
    "FileSource",
    "KafkaSink",
    "KafkaSource",
    "MessageFormat",
    "OfflineStreamingAttachmentPoint",
    "OnlineStore",
    "OnlineStreamingAttachmentPoint",
    "PandasUdf",
    "S3Settings",
    "SaslAuthentication",
    "SaslMechanism",
    "Schema",
    "Secret",
    "SecurityProtocol",
    "SparkSettings",
    "SparkSqlTransformation",
    "SqliteOnlineStore",
    "SslAuthentication",
    "Type",
    "UdfTransformation",
    "ValidationResult",
    "batch",
    "build_definitions",
    "create_spark_session",
    "pandas_udf",
    "set_secret_resolver",
    "spark_resource",
    "streaming",
    "validate",
]
