"""The feature computation: one code path for every trigger.

Source rows (from a stream's micro-batch, or from batch sources through a backfill
transformation) go through the same steps whichever trigger runs them:

1. split off records that did not parse (they carry ``__fs_error``);
2. apply the feature set's row-level transformation;
3. split off output rows without a key or an event time;
4. split off rows whose event time lies outside the range this trigger owns (before a
   backfill's ``end_date`` for the streams; outside the partition range for a backfill);
5. hand the rest, and what was set aside, to the writers the trigger chose at its start.

Tile partials of aggregated feature sets are computed from :attr:`Computed.rows` by the
tile writers (:func:`fs_dagster.engine.aggregates.tile_partials`), because the online tile
writer first applies its watermark while the offline ones count every event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, reduce

from py4j.protocol import Py4JJavaError
from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F  # noqa: N812

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.names import spark_identifier, sql_view_name
from fs_dagster.definitions.transformations import SparkSqlTransformation
from fs_dagster.engine.sources import ERROR_COLUMN, internal_columns, user_columns
from fs_dagster.engine.transform import (
    VIEW_LOCK,
    apply_transformation,
    first_line,
    register_functions,
    run_sql,
)

__all__ = [
    "INSIDE_COLUMN",
    "MICROS_COLUMN",
    "MISSING_COLUMN",
    "BatchContext",
    "BatchCounts",
    "Computation",
    "Computed",
    "EventRange",
    "compute",
    "event_micros",
    "event_micros_sql",
    "range_sql",
    "to_micros",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOG = logging.getLogger(__name__)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch of a datetime (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def event_micros_sql(feature_set: FeatureSet) -> str:
    """The output's event time in microseconds since the epoch, as Spark SQL."""
    return f"unix_micros(CAST({spark_identifier(feature_set.timestamp_column)} AS TIMESTAMP))"


def event_micros(feature_set: FeatureSet) -> Column:
    """The output's event time in microseconds since the epoch."""
    return F.expr(event_micros_sql(feature_set))


def range_sql(column: str, start: int | None, end: int | None) -> str:
    """A Spark SQL condition: ``start <= column < end``; ``None`` leaves a side open."""
    parts = []
    if start is not None:
        parts.append(f"{column} >= {start}")
    if end is not None:
        parts.append(f"{column} < {end}")
    return " AND ".join(parts) or "true"


@dataclass(frozen=True)
class EventRange:
    """Event times ``[start, end)`` in microseconds; ``None`` leaves a side open.

    Attributes:
        start: first event time the trigger owns.
        end: first event time it no longer owns.
        reason: why rows outside it are set aside (shown in the late-events table).
    """

    start: int | None
    end: int | None
    reason: str

    def contains(self, micros: Column) -> Column:
        """A condition true for event times inside the range."""
        inside = F.lit(True)
        if self.start is not None:
            inside = inside & (micros >= F.lit(self.start))
        if self.end is not None:
            inside = inside & (micros < F.lit(self.end))
        return inside

    def sql(self, micros: str) -> str:
        """:meth:`contains` as Spark SQL over the SQL expression ``micros``."""
        return range_sql(f"({micros})", self.start, self.end)


@dataclass(frozen=True)
class BatchContext:
    """What one run of the computation is: its trigger, version and transaction id.

    Attributes:
        trigger: ``online``, ``offline``, ``backfill`` or ``batch``.
        version: the micro-batch id (streams) or the run's version (ranged runs: its
            start time in microseconds); online tiles carry it, so a newer write wins.
        app_id: the stable id of this run's Delta transactions (a streaming query's
            checkpoint-stable id, or the range of a ranged run).
        txn_version: Delta's ``txnVersion`` for appends under ``app_id``.
        replace: for ranged runs, the event-time range whose offline rows and tiles the
            run replaces; ``None`` for streams, which append once per batch.
    """

    trigger: str
    version: int
    app_id: str
    txn_version: int
    replace: EventRange | None = None


@dataclass(frozen=True)
class BatchCounts:
    """How many rows of a batch went where (see :class:`Computed`)."""

    rows_in: int
    malformed: int
    invalid: int
    row_count: int
    outside_count: int
    max_event_micros: int | None


#: Names of the columns that classify output rows (see :meth:`Computed.classified`).
MISSING_COLUMN, INSIDE_COLUMN, MICROS_COLUMN = "__fs_missing", "__fs_inside", "__fs_micros"
_PART, _BAD = "__fs_part", "__fs_bad"
#: The statistics part of the transformation output (source parts are numbered).
_OUTPUT_PART = -1
_CLASSIFICATION = (MISSING_COLUMN, INSIDE_COLUMN, MICROS_COLUMN)


class OutputCounts:
    """The expressions that count a batch's classified output rows on the way through a
    writer's job (:meth:`Computed.observed_rows`); built once per :class:`Computation`,
    as each costs calls into the JVM and a stream counts every batch."""

    def __init__(self) -> None:
        missing, inside, self.micros = (F.col(c) for c in _CLASSIFICATION)
        valid = ~missing
        #: Output rows with key and event time inside the trigger's range.
        self.kept = valid & inside
        #: Counts of the output rows: ``invalid``, ``rows``, ``outside``, ``newest``.
        self.columns = [
            F.count(F.when(missing, F.lit(1))).alias("invalid"),
            F.count(F.when(self.kept, F.lit(1))).alias("rows"),
            F.count(F.when(valid & ~inside, F.lit(1))).alias("outside"),
            F.max(F.when(valid, self.micros)).alias("newest"),
        ]


class Computed:
    """What the computation made of one batch of source rows.

    Every output row is classified on the way out of the transformation
    (:meth:`classified`); the other views of the output are filters of it. Its counts
    come from one Spark job over the batch: the first writer that runs a job over every
    output row may count them on the way (:meth:`classified`,
    :meth:`record_output_counts`); otherwise the first reader of a count runs a
    statistics job of its own.

    Attributes:
        sources: the batch as read, per source name, with ``__fs_payload``,
            ``__fs_position`` and ``__fs_error``.
        range: the range this trigger owns.
    """

    def __init__(
        self,
        sources: Mapping[str, DataFrame],
        classified: DataFrame,
        owned: EventRange,
        observations: Sequence[Observation],
        output_counts: OutputCounts,
    ) -> None:
        self.sources = sources
        self.range = owned
        self._classified = classified
        self._observations = observations
        self._output_counts = output_counts
        self._output_observation: Observation | None = None
        self._counts: BatchCounts | None = None

    # Built when a writer asks: each DataFrame costs Spark an analysis and Python a few
    # calls into the JVM, and a small batch's latency is mostly such fixed costs.
    def _where(self, condition: Column) -> DataFrame:
        return self._classified.where(condition).drop(*_CLASSIFICATION)

    @cached_property
    def features(self) -> DataFrame:
        """Every transformation output row (persisted while writers run when the trigger
        caches)."""
        return self._classified.drop(*_CLASSIFICATION)

    @cached_property
    def rows(self) -> DataFrame:
        """Output rows with key and event time inside the trigger's range."""
        return self._where(~F.col(MISSING_COLUMN) & F.col(INSIDE_COLUMN))

    @cached_property
    def invalid_output(self) -> DataFrame:
        """Output rows without a key or an event time."""
        return self._where(F.col(MISSING_COLUMN))

    @cached_property
    def outside(self) -> DataFrame:
        """Output rows with key and time outside the trigger's range."""
        return self._where(~F.col(MISSING_COLUMN) & ~F.col(INSIDE_COLUMN))

    def classified(self) -> DataFrame:
        """Every output row with :data:`MISSING_COLUMN` (no key or event time),
        :data:`INSIDE_COLUMN` (inside the trigger's range) and :data:`MICROS_COLUMN`
        (event time): what a writer needs to count rows while it writes."""
        return self._classified

    def observed_rows(self, late_before: int | None = None) -> DataFrame:
        """:attr:`rows` whose event time is at or after ``late_before`` (all of them when
        ``None``), counting every output row on the way.

        For a writer whose one job reads the output through a shuffle (where it cannot
        count rows itself): after that job's action, :meth:`record_observed_counts` takes
        the counts and says how many rows of :attr:`rows` were older than ``late_before``.
        """
        counts = self._output_counts
        observation = Observation()
        if late_before is None:
            observed = self._classified.observe(observation, *counts.columns)
            kept = counts.kept
        else:
            # A one-element array, not a number: Spark writes a number literal into the
            # generated code, so a watermark that moves every batch would compile the
            # stage again every batch; an array literal reaches the code by reference.
            # (Kept rows have an event time: no null reaches the comparison.)
            late = counts.kept & (F.array(counts.micros) < F.lit([late_before]))
            observed = self._classified.observe(
                observation, *counts.columns, F.count(F.when(late, F.lit(1))).alias("late")
            )
            kept = counts.kept & ~late
        self._output_observation = observation
        return observed.where(kept).drop(*_CLASSIFICATION)

    def record_observed_counts(self) -> int:
        """Record the counts observed by the action over :meth:`observed_rows`; returns
        how many rows it left out as older than its ``late_before``."""
        observation = self._output_observation
        if observation is None:
            raise RuntimeError("record_observed_counts needs a finished observed_rows action")
        self._output_observation = None
        try:
            observed = observation.get
        except Py4JJavaError:
            # Spark proved the output empty and never computed it: nothing was late.
            self._counts = self._count()
            return 0
        self.record_output_counts(
            invalid=int(observed["invalid"]),
            row_count=int(observed["rows"]),
            outside_count=int(observed["outside"]),
            max_event_micros=observed["newest"],
        )
        return int(observed.get("late", 0))

    def record_output_counts(
        self, invalid: int, row_count: int, outside_count: int, max_event_micros: int | None
    ) -> None:
        """Counts of the output rows, taken by a writer's SQL job over
        :meth:`classified`; the source rows were counted by that same job."""
        if not self._observations:
            # A cached batch: Spark counts a cached plan's rows when it caches them, not
            # in the writer's job, so the sources are counted by a job of their own.
            self._counts = self._count()
            return
        source_rows = malformed = 0
        for observation in self._observations:
            try:
                observed = observation.get
            except Py4JJavaError:
                # Spark proved the output empty and never read the source: count it.
                self._counts = self._count()
                return
            source_rows += int(observed["rows"])
            malformed += int(observed["bad"])
        self._counts = BatchCounts(
            source_rows, malformed, invalid, row_count, outside_count, max_event_micros
        )

    @property
    def counts(self) -> BatchCounts:
        """The batch's counts; one statistics job unless a writer took them already."""
        if self._counts is None:
            self._counts = self._count()
        return self._counts

    def _count(self) -> BatchCounts:
        # Sources and output in one union, so that one job counts both.
        parts = [
            rows.select(
                F.lit(index).alias(_PART),
                F.col(ERROR_COLUMN).isNotNull().alias(_BAD),
                F.lit(None).cast("boolean").alias(MISSING_COLUMN),
                F.lit(None).cast("boolean").alias(INSIDE_COLUMN),
                F.lit(None).cast("long").alias(MICROS_COLUMN),
            )
            for index, rows in enumerate(self.sources.values())
        ]
        parts.append(
            self.classified().select(
                F.lit(_OUTPUT_PART).alias(_PART),
                F.lit(None).cast("boolean").alias(_BAD),
                MISSING_COLUMN,
                INSIDE_COLUMN,
                MICROS_COLUMN,
            )
        )
        source_row = F.col(_PART) != F.lit(_OUTPUT_PART)
        valid = ~F.col(MISSING_COLUMN)
        stats = (
            reduce(DataFrame.unionByName, parts)
            .agg(
                F.count(F.when(source_row, F.lit(1))).alias("rows_in"),
                F.count(F.when(source_row & F.col(_BAD), F.lit(1))).alias("malformed"),
                F.count(F.when(F.col(MISSING_COLUMN), F.lit(1))).alias("invalid"),
                F.count(F.when(valid & F.col(INSIDE_COLUMN), F.lit(1))).alias("rows"),
                F.count(F.when(valid & ~F.col(INSIDE_COLUMN), F.lit(1))).alias("outside"),
                F.max(F.when(valid, F.col(MICROS_COLUMN))).alias("max_micros"),
            )
            .first()
        )
        if stats is None:
            return BatchCounts(0, 0, 0, 0, 0, None)
        return BatchCounts(
            int(stats["rows_in"]),
            int(stats["malformed"]),
            int(stats["invalid"]),
            int(stats["rows"]),
            int(stats["outside"]),
            stats["max_micros"],
        )

    @property
    def rows_in(self) -> int:
        """Source rows in the batch."""
        return self.counts.rows_in

    @property
    def malformed(self) -> int:
        """Source rows that did not parse."""
        return self.counts.malformed

    @property
    def invalid(self) -> int:
        """Count of :attr:`invalid_output`."""
        return self.counts.invalid

    @property
    def row_count(self) -> int:
        """Count of :attr:`rows`."""
        return self.counts.row_count

    @property
    def outside_count(self) -> int:
        """Count of :attr:`outside`."""
        return self.counts.outside_count

    @property
    def max_event_micros(self) -> int | None:
        """Newest event time among :attr:`rows` and :attr:`outside`."""
        return self.counts.max_event_micros

    @property
    def max_event_time(self) -> datetime | None:
        """:attr:`max_event_micros` as a UTC datetime."""
        if self.max_event_micros is None:
            return None
        return _EPOCH + timedelta(microseconds=self.max_event_micros)

    def release(self) -> None:
        """Drop the cached output once every writer is done."""
        self._classified.unpersist()


class Computation:
    """The computation of one feature set for one run of a trigger, prepared once.

    A stream runs it on every micro-batch. What does not depend on a batch's rows is built
    here, once: the SQL text that filters each source's records that did not parse, runs a
    SQL transformation over the rest and classifies its output, and the expressions that
    count the sources. A batch then costs Python a few dozen calls into Spark's JVM rather
    than one or more per column it touches (on 2 cores each costs 0.5-1 ms; a micro-batch
    made about 180 of them, a third of its time).

    A whole-DataFrame pandas UDF, or SQL Spark cannot analyse inside that text (checked
    here, once), runs through :func:`~fs_dagster.engine.transform.apply_transformation`
    as before: same rows, more calls.

    Args:
        feature_set: the feature set.
        owned: the range of event times this trigger owns.
        shapes: one DataFrame per source name shaped like the rows each run gets (the
            stream itself, or the batch inputs); only their columns are read.
        cache: persist the output while writers run (see :func:`compute`).
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        owned: EventRange,
        shapes: Mapping[str, DataFrame],
        *,
        cache: bool,
    ) -> None:
        self.feature_set = feature_set
        self.owned = owned
        self.cache = cache
        self._views = {name: f"__fs_source_{index}" for index, name in enumerate(shapes)}
        self._source_counts = [
            F.count(F.lit(1)).alias("rows"),
            F.count(F.col(ERROR_COLUMN)).alias("bad"),
        ]
        required = [*feature_set.key, feature_set.timestamp_column]
        missing = " OR ".join(f"{spark_identifier(c)} IS NULL" for c in required)
        micros = event_micros_sql(feature_set)
        #: The classification of an output row (see :meth:`Computed.classified`).
        self._classification = {
            MISSING_COLUMN: f"({missing})",
            INSIDE_COLUMN: f"({owned.sql(micros)})",
            MICROS_COLUMN: micros,
        }
        self._sql = self._prepared_sql(shapes)
        self._output_counts = OutputCounts()

    def _prepared_sql(self, shapes: Mapping[str, DataFrame]) -> str | None:
        """The one SQL statement of a batch, if the transformation is SQL that Spark
        analyses inside it (over ``shapes``); ``None`` otherwise."""
        transformation = self.feature_set.transformation
        if not isinstance(transformation, SparkSqlTransformation):
            return None
        inputs = ", ".join(
            f"{spark_identifier(sql_view_name(name))} AS (SELECT "
            + ", ".join(spark_identifier(c) for c in user_columns(df))
            + f" FROM {self._views[name]} WHERE {ERROR_COLUMN} IS NULL)"
            for name, df in shapes.items()
        )
        classification = ", ".join(f"{sql} AS {name}" for name, sql in self._classification.items())
        # The user's SQL stays as written, in a subquery of its own: its own WITH clause
        # and a trailing comment still work; a trailing semicolon would not.
        query = transformation.sql.rstrip().rstrip(";")
        sql = f"WITH {inputs}\nSELECT *, {classification} FROM (\n{query}\n) AS __fs_output"
        spark = next(iter(shapes.values())).sparkSession
        with VIEW_LOCK:
            register_functions(spark, transformation)
            for name, df in shapes.items():
                df.createOrReplaceTempView(self._views[name])
            try:
                spark.sql(sql)
            except Exception as exc:
                # The transformation's own errors are output_schema's to say; this one is
                # only that the faster form does not fit, which an operator may want to know.
                _LOG.info(
                    "feature set '%s': its SQL runs through DataFrames, not as one statement "
                    "per batch (%s)",
                    self.feature_set.name,
                    first_line(exc),
                )
                return None
        return sql

    @property
    def single_statement(self) -> bool:
        """Whether a batch runs as one SQL statement (see the class description)."""
        return self._sql is not None

    def run(self, sources: Mapping[str, DataFrame]) -> Computed:
        """Run the transformation over one batch of source rows and classify its output.

        ``sources`` maps each source name to its rows, with the columns of the shapes the
        computation was prepared with. No job runs here: see :class:`Computed`.
        """
        observations: list[Observation] = []
        observed: dict[str, DataFrame] = {}
        for name, source_rows in sources.items():
            observed[name] = source_rows
            if not self.cache:
                # Counted on the way by the first SQL job that reads the source.
                observation = Observation()
                observed[name] = source_rows.observe(observation, *self._source_counts)
                observations.append(observation)
        if self._sql is not None:
            classified = self._run_sql(observed)
        else:
            classified = self._run_transformation(observed)
        if self.cache:
            classified = classified.persist()
        return Computed(sources, classified, self.owned, observations, self._output_counts)

    def _run_sql(self, sources: Mapping[str, DataFrame]) -> DataFrame:
        assert self._sql is not None
        transformation = self.feature_set.transformation
        assert isinstance(transformation, SparkSqlTransformation)
        spark = next(iter(sources.values())).sparkSession
        with VIEW_LOCK:
            if transformation.functions:
                register_functions(spark, transformation)
            for name, rows in sources.items():
                rows.createOrReplaceTempView(self._views[name])
            return run_sql(self.feature_set.name, "transformation", spark, self._sql)

    def _run_transformation(self, sources: Mapping[str, DataFrame]) -> DataFrame:
        good = {
            name: rows.where(F.col(ERROR_COLUMN).isNull()).drop(*internal_columns(rows))
            for name, rows in sources.items()
        }
        features = apply_transformation(self.feature_set, good)
        return features.select(
            "*", *[F.expr(sql).alias(name) for name, sql in self._classification.items()]
        )


def compute(
    feature_set: FeatureSet,
    sources: Mapping[str, DataFrame],
    owned: EventRange,
    *,
    cache: bool = True,
) -> Computed:
    """Run the transformation over the source rows and split its output (a
    :class:`Computation` prepared for these rows and run once).

    ``sources`` maps each source name the transformation reads to its rows (a stream's
    micro-batch has one). With ``cache`` the output is persisted so that several writers
    do not recompute it (call :meth:`Computed.release` when they are done); without it,
    each writer's job recomputes its input, which costs less than caching when one
    writer does the work (the online pipeline of a row-level set, where a batch's
    latency counts). No job runs here: see :class:`Computed` for the counts.
    """
    return Computation(feature_set, owned, sources, cache=cache).run(sources)
