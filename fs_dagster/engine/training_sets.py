"""Point-in-time training sets from the offline store: one feature set, or several.

:func:`point_in_time_features` is the read of one set (the as-of join of
:func:`~fs_dagster.engine.retrieval.point_in_time_join` for row-level sets, the window
values of :func:`~fs_dagster.engine.aggregates.point_in_time_aggregates` for aggregated
ones). :func:`combined_point_in_time` runs it once per requested set and puts the results
side by side by a population row id, so every population row appears exactly once with
its own columns, whatever the sets' keys. Result columns follow
:mod:`fs_dagster.engine.combined`: features named by their reference
(``"user-spend.sum_amount_1h"``), and per set ``"<set>.<timestamp column>"`` (the matched
row's event time, or the read time of an aggregated set's windows).
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.names import spark_identifier
from fs_dagster.definitions.references import reference_name
from fs_dagster.engine.aggregates import aggregation_plan, point_in_time_aggregates
from fs_dagster.engine.backfill import feature_schema
from fs_dagster.engine.combined import CombinedFeatures
from fs_dagster.engine.encoding import spark_type
from fs_dagster.engine.retrieval import point_in_time_join
from fs_dagster.planning.plan import INTERNAL_PREFIX, StoragePlan

__all__ = ["combined_point_in_time", "point_in_time_features"]

_ROW = INTERNAL_PREFIX + "combined_row"
_AT = INTERNAL_PREFIX + "combined_at"
_EVENT = INTERNAL_PREFIX + "combined_event_time"


def point_in_time_features(
    spark: SparkSession,
    feature_set: FeatureSet,
    plan: StoragePlan,
    population: DataFrame,
    point_in_time_column: str,
    *,
    event_time_column: str | None = None,
) -> DataFrame:
    """Point-in-time features of one set for each population row, from the offline store.

    Row-level sets: the population's columns, the features of the latest row at or
    before the row's time (within the TTL), and its event time (named
    ``event_time_column``, by default as :func:`point_in_time_join` names it). Aggregated
    sets: the population's columns and every window value at the row's time, computed
    from the definition and the offline tiles (offline reads never need the online store).
    """
    if feature_set.is_aggregated:
        schema = feature_schema(spark, feature_set)
        aggregation = aggregation_plan(feature_set, schema)
        tiles = spark.read.format("delta").load(plan.tiles_path)
        types = {c: spark_type(k) for c, k in aggregation.column_kinds.items()}
        return point_in_time_aggregates(aggregation, population, tiles, point_in_time_column, types)
    features = spark.read.format("delta").load(plan.features_path)
    return point_in_time_join(
        feature_set,
        population,
        features,
        point_in_time_column,
        event_time_column=event_time_column,
    )


def combined_point_in_time(
    spark: SparkSession,
    combined: CombinedFeatures,
    plan_of: Callable[[FeatureSet], StoragePlan],
    population: DataFrame,
    point_in_time_column: str,
    *,
    keep_order: bool = False,
) -> DataFrame:
    """Every requested feature, point-in-time correct per set, for each population row.

    Args:
        spark: the session.
        combined: the requested features and their sets.
        plan_of: the storage plan of a set.
        population: rows with the key columns of every requested set and
            ``point_in_time_column``; all of its columns are kept.
        point_in_time_column: the population's timestamp column.
        keep_order: sort the result in population order (for a local result).

    Returns:
        The population's columns, then one column per requested feature (named by its
        reference), then ``"<set>.<timestamp column>"`` per set; one row per population
        row.

    Raises:
        ValueError: the population lacks the point-in-time column or a set's key
            columns, or already has a column named like a result column.
    """
    columns = population.columns
    if point_in_time_column not in columns:
        raise ValueError(
            f"population lacks the point-in-time column '{point_in_time_column}' "
            f"(point_in_time_column=); it has {columns}"
        )
    for fs in combined.feature_sets:
        missing = [k for k in fs.key if k not in columns]
        if missing:
            raise ValueError(
                f"population for '{fs.name}' lacks columns {missing}: its key is "
                f"({', '.join(fs.key)}); the population has {columns}"
            )
    clashes = [c for c in [*combined.resolved.columns, *combined.time_columns] if c in columns]
    if clashes:
        raise ValueError(
            f"population columns {clashes} have the names of requested features; rename them"
        )
    # The id must be the same in every branch of the joins below; a checkpoint fixes it
    # (a recomputed population, e.g. after a shuffle, may number its rows otherwise).
    numbered = population.withColumn(_ROW, F.monotonically_increasing_id()).localCheckpoint()
    result = numbered
    for fs in combined.feature_sets:
        # Only the row id, the set's key and the time go in: no population column can
        # clash with the set's feature names.
        narrow = numbered.select(
            F.col(_ROW),
            *[F.col(k) for k in fs.key],
            F.col(spark_identifier(point_in_time_column)).alias(_AT),
        )
        values = point_in_time_features(
            spark, fs, plan_of(fs), narrow, _AT, event_time_column=_EVENT
        )
        time = F.col(_AT) if fs.is_aggregated else F.col(_EVENT)
        part = values.select(
            F.col(_ROW),
            *[
                F.col(feature).alias(reference_name(fs.name, feature))
                for feature in combined.features_of(fs)
            ],
            time.cast("timestamp").alias(reference_name(fs.name, fs.timestamp_column)),
        )
        result = result.join(part, on=_ROW, how="left")
    if keep_order:
        result = result.orderBy(_ROW)
    names = [*columns, *combined.resolved.columns, *combined.time_columns]
    return result.select(*[F.col(spark_identifier(c)) for c in names])
