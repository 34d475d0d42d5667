"""The output columns of a feature set, as Spark's analyzer sees them.

A Spark SQL transformation's output columns are only known once Spark has analysed the
SQL; :func:`feature_columns` does that against empty frames shaped like the sources (no
data is read) and remembers the answer per feature set.
"""

from __future__ import annotations

import threading

from pyspark.sql import SparkSession
from pyspark.sql.types import StructType

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.transformations import UdfTransformation
from fs_dagster.engine.transform import output_schema

__all__ = ["analysis_session", "feature_columns", "resolved_output_schema"]

_CACHE: dict[int, tuple[FeatureSet, StructType]] = {}
_LOCK = threading.Lock()


def analysis_session() -> SparkSession:
    """The active Spark session, or a small local one when none runs yet."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    from fs_dagster.engine.spark_session import SparkSettings, create_spark_session

    return create_spark_session(SparkSettings(master="local[1]", shuffle_partitions=1))


def resolved_output_schema(feature_set: FeatureSet) -> StructType:
    """The checked output schema of ``feature_set`` (cached)."""
    with _LOCK:
        cached = _CACHE.get(id(feature_set))
        if cached is not None and cached[0] is feature_set:
            return cached[1]
    schema = output_schema(analysis_session(), feature_set)
    with _LOCK:
        _CACHE[id(feature_set)] = (feature_set, schema)
    return schema


def feature_columns(feature_set: FeatureSet) -> list[str]:
    """Feature names of ``feature_set`` in output order (no key, no timestamp)."""
    skip = {*feature_set.key, feature_set.timestamp_column}
    transformation = feature_set.transformation
    if isinstance(transformation, UdfTransformation):
        names = transformation.function.output_schema.names
    else:
        names = resolved_output_schema(feature_set).fieldNames()
    return [n for n in names if n not in skip]
