"""Point-in-time correct reads of the offline store, computed by Spark.

For each population row (key, timestamp) the result holds the latest feature row of
that key whose event time is at or before the row's timestamp, and not older than the
feature set's TTL. The join is an *as-of* join done with one sort, not a range join:
population rows and feature rows are unioned, ordered by key and time (a feature row
before a population row at the same instant, so "at or before" holds), and each
population row takes the last feature row seen before it. Ties (rows of one key with the
same event time) are broken by their feature values: the largest, compared column by
column in table order, nulls lowest (atomic types only), as on the DuckDB engine
(:mod:`fs_dagster.engine.duckdb_retrieval`). Its cost is a sort of both
sides; a range join would compare every population row with every feature version of
its key.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.types import AtomicType

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.planning.plan import EVENT_DATE_COLUMN, INTERNAL_PREFIX

__all__ = ["point_in_time_join"]

_TIME = INTERNAL_PREFIX + "time"
_ORDER = INTERNAL_PREFIX + "order"
_FEATURES = INTERNAL_PREFIX + "features"
_IS_POPULATION = INTERNAL_PREFIX + "is_population"


def point_in_time_join(
    feature_set: FeatureSet,
    population: DataFrame,
    features: DataFrame,
    point_in_time_column: str,
    *,
    event_time_column: str | None = None,
) -> DataFrame:
    """Join ``population`` with the feature rows valid at each row's point in time.

    Args:
        feature_set: the feature set the rows belong to (keys, timestamp, TTL).
        population: rows with the key columns and ``point_in_time_column``.
        features: every feature row version (the offline table).
        point_in_time_column: the population's timestamp column.
        event_time_column: name for the matched feature row's event time in the result;
            defaults to the feature set's timestamp column (prefixed with the feature set
            if the population already has that name).

    Returns:
        The population's columns, then the feature columns (null where no row matched)
        and the matched event time.

    Raises:
        ValueError: the population lacks a key or the point-in-time column, or has a
            column named like a feature.
    """
    keys = list(feature_set.key)
    ts = feature_set.timestamp_column
    missing = [c for c in [*keys, point_in_time_column] if c not in population.columns]
    if missing:
        raise ValueError(
            f"population for '{feature_set.name}' lacks columns {missing}; "
            f"it has {population.columns}"
        )
    feature_names = [c for c in features.columns if c not in {*keys, ts, EVENT_DATE_COLUMN}]
    clashes = [c for c in feature_names if c in population.columns]
    if clashes:
        raise ValueError(
            f"population columns {clashes} have the names of features of '{feature_set.name}'"
        )
    if event_time_column is None:
        event_time_column = (
            ts if ts not in population.columns else f"{feature_set.storage_name}_{ts}"
        )

    pop_columns = population.columns
    pop = population.select(
        *[F.col(k) for k in keys],
        F.col(point_in_time_column).cast("timestamp").alias(_TIME),
        F.lit(1).alias(_ORDER),
        F.struct(*[F.col(c) for c in pop_columns]).alias(INTERNAL_PREFIX + "population"),
        F.lit(None).alias(_FEATURES),
    )
    feature_struct = F.struct(
        F.col(ts).cast("timestamp").alias(event_time_column),
        *[F.col(c) for c in feature_names],
    )
    rows = features.select(
        *[F.col(k) for k in keys],
        F.col(ts).cast("timestamp").alias(_TIME),
        F.lit(0).alias(_ORDER),
        F.lit(None).alias(INTERNAL_PREFIX + "population"),
        feature_struct.alias(_FEATURES),
    )
    pop = pop.withColumn(_FEATURES, F.lit(None).cast(rows.schema[_FEATURES].dataType))
    rows = rows.withColumn(
        INTERNAL_PREFIX + "population",
        F.lit(None).cast(pop.schema[INTERNAL_PREFIX + "population"].dataType),
    )
    # Ties (rows of a key with the same event time) sort by their feature values, so the
    # last one, the match, is the same on every run and on the DuckDB engine (TIE_RULE
    # there). Only atomic types order the same way in both.
    ties = [
        F.col(_FEATURES)[c].asc_nulls_first()
        for c in feature_names
        if isinstance(features.schema[c].dataType, AtomicType)
    ]
    ordered = (
        Window.partitionBy(*[F.col(k) for k in keys])
        .orderBy(F.col(_TIME).asc(), F.col(_ORDER).asc(), *ties)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    joined = (
        pop.unionByName(rows)
        .withColumn(
            INTERNAL_PREFIX + "match", F.last(F.col(_FEATURES), ignorenulls=True).over(ordered)
        )
        .where(F.col(_ORDER) == 1)
    )
    match = F.col(INTERNAL_PREFIX + "match")
    valid = match.isNotNull()
    if feature_set.online_ttl is not None:
        ttl_seconds = int(feature_set.online_ttl.total_seconds())
        valid = valid & (
            F.col(_TIME) - F.make_dt_interval(secs=F.lit(ttl_seconds)) <= match[event_time_column]
        )
    return joined.select(
        *[F.col(f"{INTERNAL_PREFIX}population.{c}").alias(c) for c in pop_columns],
        *[F.when(valid, match[c]).alias(c) for c in [*feature_names, event_time_column]],
    )
