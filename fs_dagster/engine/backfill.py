"""The ranged triggers: a backfill's partition range, a batch feature set's partition.

A ranged run computes a feature set over event times ``[start, end)`` from batch
sources, with the same computation as the streams
(:func:`fs_dagster.engine.computation.compute`), and hands the result to its writers:

- the offline rows and tile partials of exactly that range are **replaced**, so running
  a range again gives the same tables, with no duplicates;
- the online store is **seeded**: latest rows per key (by event time, an older row never
  wins), or the range's tiles written whole at the run's version, so windows reaching
  into the range are right as soon as the stream starts;
- a streaming feature set's stream-shaped rows of the range replace that range of the
  raw-event archive (:mod:`fs_dagster.engine.archive`), which replay reads;
- rows the transformation puts outside the range are set aside, counted and kept;
  rows without key or time go to the dead letters.

For a streaming feature set the backfill transformation turns the batch sources into
rows shaped like the stream's, and the streaming transformation runs on them. A batch
feature set's own transformation reads its batch sources directly.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.types import StructType

from fs_dagster.aggregation.tiles import resolutions_for
from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.sources import BatchSource
from fs_dagster.engine.aggregates import aggregation_plan, prepare_online_tiles
from fs_dagster.engine.archive import RawArchive
from fs_dagster.engine.computation import BatchContext, EventRange, compute, to_micros
from fs_dagster.engine.pipeline import BatchReport, online_table, report
from fs_dagster.engine.sources import (
    ERROR_COLUMN,
    PAYLOAD_COLUMN,
    POSITION_COLUMN,
    parse_schema,
    source_columns,
)
from fs_dagster.engine.transform import (
    apply_sql,
    apply_transformation,
    check_output_schema,
    output_schema,
)
from fs_dagster.engine.writers import (
    BatchWriters,
    DeadLetters,
    OfflineRows,
    OfflineTiles,
    OnlineRows,
    SeedOnlineTiles,
    SetAside,
    Writer,
    row_json,
)
from fs_dagster.planning.plan import StoragePlan
from fs_dagster.stores.online.base import OnlineStore, now_micros

__all__ = ["check_range", "read_batch_source", "run_range"]


def check_range(feature_set: FeatureSet, start: datetime, end: datetime) -> None:
    """Raise unless ``[start, end)`` is a range a ranged run of ``feature_set`` can own.

    It must be non-empty; for a backfill, whole days inside the backfill's range; for
    an aggregated feature set, aligned to its coarsest tile, so that no tile holds
    events of two ranges (a range's tiles are replaced as a whole).
    """
    what = f"'{feature_set.name}': range [{start.isoformat()}, {end.isoformat()})"
    if not start < end:
        raise ValueError(f"{what} is empty")
    steps: list[tuple[int, str]] = []
    spec = feature_set.backfill
    if spec is not None and feature_set.kind == "streaming":
        if start < spec.start or end > spec.end:
            raise ValueError(
                f"{what} is outside the backfill's "
                f"[{spec.start.isoformat()}, {spec.end.isoformat()})"
            )
        steps.append((spec.partition_seconds, "the backfill's partitions"))
    if feature_set.is_aggregated:
        coarsest = max(resolutions_for(w.seconds for w in feature_set.windows))
        steps.append((coarsest, "the coarsest tile of the windows"))
    for seconds, why in steps:
        for moment in (start, end):
            if to_micros(moment) % (seconds * 1_000_000):
                raise ValueError(f"{what} is not aligned to {why} ({seconds} s)")


def read_batch_source(
    spark: SparkSession, source: BatchSource, start: datetime, end: datetime
) -> DataFrame:
    """The rows of ``source`` with ``timestamp_column`` in ``[start, end)``, tagged like a
    stream's rows (raw record as JSON, the file it came from, no parse error)."""
    reader: Any = spark.read.format(source.format)
    if source.schema:
        reader = reader.schema(parse_schema(spark, source.schema))
    if source.format == "csv":
        reader = reader.option("header", "true")
    for key, value in source.options.items():
        reader = reader.option(key, value)
    df: DataFrame = reader.load(source.path)
    if source.timestamp_column not in df.columns:
        raise FeatureSetDefinitionError(
            source.name,
            "timestamp_column",
            f"'{source.timestamp_column}' is not a column of {source.path} ({df.columns})",
            kind="batch source",
        )
    micros = F.unix_micros(F.col(source.timestamp_column).cast("timestamp"))
    columns = df.columns
    return df.where((micros >= F.lit(to_micros(start))) & (micros < F.lit(to_micros(end)))).select(
        *[F.col(c) for c in columns],
        row_json(df).alias(PAYLOAD_COLUMN),
        F.col("_metadata.file_path").alias(POSITION_COLUMN),
        F.lit(None).cast("string").alias(ERROR_COLUMN),
    )


def _shaped_like_stream(
    spark: SparkSession, feature_set: FeatureSet, backfilled: DataFrame
) -> DataFrame:
    """The backfill transformation's output cast to the stream source's column types,
    checked to hold every stream column the streaming transformation reads."""
    stream_types = {f.name: f.dataType for f in source_columns(spark, feature_set.source).fields}
    shaped = backfilled.select(
        *[
            F.col(c).cast(stream_types[c]).alias(c) if c in stream_types else F.col(c)
            for c in backfilled.columns
        ]
    )
    empty = spark.createDataFrame([], shaped.schema)
    try:
        apply_transformation(feature_set, {feature_set.source.name: empty})
    except FeatureSetDefinitionError as exc:
        raise FeatureSetDefinitionError(
            feature_set.name,
            "backfill.backfill_transformation",
            f"its output ({', '.join(backfilled.columns)}) does not give the streaming "
            f"transformation the columns it reads: {exc.reason}",
        ) from None
    return shaped


def _inputs(
    spark: SparkSession, feature_set: FeatureSet, start: datetime, end: datetime
) -> dict[str, DataFrame]:
    spec = feature_set.backfill
    if feature_set.kind == "batch":
        return {s.name: read_batch_source(spark, s, start, end) for s in feature_set.batch_sources}
    assert spec is not None
    tables: dict[str, DataFrame] = {}
    for entry in spec.sources:
        # Each source over its own range within this one (empty where they do not meet),
        # so that the backfill SQL always finds every source it names.
        lo, hi = max(entry.start, start), min(entry.end, end)
        tables[entry.source.name] = read_batch_source(spark, entry.source, lo, max(lo, hi))
    visible = {
        name: df.drop(PAYLOAD_COLUMN, POSITION_COLUMN, ERROR_COLUMN) for name, df in tables.items()
    }
    backfilled = apply_sql(
        feature_set.name, "backfill.backfill_transformation", spec.transformation, visible
    )
    rows = _shaped_like_stream(spark, feature_set, backfilled)
    return {
        feature_set.source.name: rows.select(
            *[F.col(c) for c in rows.columns],
            row_json(rows).alias(PAYLOAD_COLUMN),
            F.lit("backfill transformation").alias(POSITION_COLUMN),
            F.lit(None).cast("string").alias(ERROR_COLUMN),
        )
    }


def _range_writers(
    feature_set: FeatureSet,
    plan: StoragePlan,
    schema: StructType,
    online_store: OnlineStore | None,
) -> BatchWriters:
    """Side by side: what is set aside, offline rows, archive and tiles of the range;
    then the online store's seed."""
    check_output_schema(feature_set, schema)
    aggregation = aggregation_plan(feature_set, schema) if feature_set.is_aggregated else None
    together: list[Writer] = [
        DeadLetters(feature_set, plan),
        SetAside(feature_set, plan),
        OfflineRows(feature_set, plan),
    ]
    if feature_set.kind == "streaming":
        # Stream-shaped rows: replay recomputes the backfilled history from them too.
        together.append(RawArchive(feature_set, plan))
    if aggregation is not None:
        together.append(OfflineTiles(plan, aggregation))
    then: list[Writer] = []
    if online_store is not None:
        if aggregation is not None:
            prepare_online_tiles(online_store, aggregation)
            then.append(SeedOnlineTiles(online_store, aggregation))
        else:
            table = online_table(feature_set, schema)
            online_store.ensure_table(table)
            then.append(OnlineRows(feature_set, online_store, table))
    return BatchWriters(together, then)


def feature_schema(spark: SparkSession, feature_set: FeatureSet) -> StructType:
    """The transformation's output schema, for a streaming or a batch feature set.

    A stream source declares its schema; a batch source may take it from its files, so a
    batch feature set's transformation is analysed over an empty read of its sources.
    """
    if feature_set.kind != "batch":
        return output_schema(spark, feature_set)
    never = datetime(1970, 1, 1, tzinfo=UTC)
    inputs = {
        s.name: read_batch_source(spark, s, never, never).drop(
            PAYLOAD_COLUMN, POSITION_COLUMN, ERROR_COLUMN
        )
        for s in feature_set.batch_sources
    }
    schema = apply_transformation(feature_set, inputs).schema
    check_output_schema(feature_set, schema)
    return schema


def run_range(
    spark: SparkSession,
    feature_set: FeatureSet,
    plan: StoragePlan,
    start: datetime,
    end: datetime,
    *,
    online_store: OnlineStore | None = None,
) -> BatchReport:
    """Compute ``feature_set`` over event times ``[start, end)`` from its batch sources.

    Replaces the range's offline rows (and tile partials) and, given an online store,
    seeds it. Idempotent: the same range run again leaves the same tables.

    Args:
        spark: the session.
        feature_set: a streaming feature set with a backfill, or a batch feature set.
        plan: its storage locations.
        start: first event time of the range (aligned to the partitions; naive is UTC).
        end: first event time after it.
        online_store: the online store to seed, or ``None`` for offline only.

    Raises:
        ValueError: the range is empty, unaligned or outside the backfill.
        FeatureSetDefinitionError: the transformations do not fit (checked before
            anything is written).
    """
    start, end = _utc(start), _utc(end)
    if feature_set.kind == "streaming" and feature_set.backfill is None:
        raise FeatureSetDefinitionError(
            feature_set.name, "backfill", "has no @streaming.backfill(...) to run"
        )
    check_range(feature_set, start, end)
    trigger = "batch" if feature_set.kind == "batch" else "backfill"
    began = time.monotonic()
    session = spark.newSession()
    owned = EventRange(
        to_micros(start),
        to_micros(end),
        f"event time outside the {trigger} range [{start.isoformat()}, {end.isoformat()})",
    )
    computed = compute(feature_set, _inputs(session, feature_set, start, end), owned)
    try:
        writers = _range_writers(feature_set, plan, computed.features.schema, online_store)
        version = now_micros()
        ctx = BatchContext(
            trigger=trigger,
            version=version,
            app_id=f"{feature_set.storage_name}-{trigger}-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}",
            txn_version=0,
            replace=owned,
        )
        outcomes = writers.write(computed, ctx)
    finally:
        computed.release()
    return report(trigger, version, computed, outcomes, began)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
