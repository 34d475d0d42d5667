"""Checking a feature set against Spark before any data is ingested."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql.types import StructType

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.analysis import analysis_session
from fs_dagster.engine.sources import source_columns
from fs_dagster.engine.transform import apply_transformation, check_output_schema, output_schema

__all__ = ["ValidationResult", "validate"]


@dataclass(frozen=True)
class ValidationResult:
    """What a feature set produces.

    Attributes:
        output_schema: the transformation's output schema.
        feature_names: features in output order.
        preview: the transformation applied to the sample (empty without one).
    """

    output_schema: StructType
    feature_names: list[str]
    preview: pd.DataFrame


def validate(
    feature_set: FeatureSet,
    *,
    sample: pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
    spark: SparkSession | None = None,
) -> ValidationResult:
    """Run the transformation on an empty frame, and on ``sample`` if given.

    Reports, before any ingestion, a SQL that does not analyse, an output without the key
    or timestamp column, a column name that cannot be stored, or a UDF whose result does
    not match its declared schema.

    Args:
        feature_set: the feature set to check.
        sample: source records (dicts or a pandas DataFrame with the source's columns).
        spark: the session to use; the active one or a local one by default.

    Raises:
        FeatureSetDefinitionError: naming the feature set and the parameter at fault.

    Example:
        >>> result = validate(user_spend, sample=[{"user_id": "u1", "amount": 2.0,
        ...                                      "ts": datetime(2026, 1, 1)}])  # doctest: +SKIP
        >>> result.feature_names  # doctest: +SKIP
        ['amount']
    """
    session = spark or analysis_session()
    schema = output_schema(session, feature_set)
    preview = pd.DataFrame(columns=schema.fieldNames())
    if sample is not None:
        records = sample.to_dict("records") if isinstance(sample, pd.DataFrame) else list(sample)
        columns = source_columns(session, feature_set.source)
        rows = [tuple(record.get(name) for name in columns.fieldNames()) for record in records]
        inputs = {feature_set.source.name: session.createDataFrame(rows, columns)}
        result = apply_transformation(feature_set, inputs)
        check_output_schema(feature_set, result.schema)
        preview = result.toPandas()
    skip = {*feature_set.key, feature_set.timestamp_column}
    return ValidationResult(
        output_schema=schema,
        feature_names=[n for n in schema.fieldNames() if n not in skip],
        preview=preview,
    )
