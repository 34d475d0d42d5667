"""The raw-event archive: the parsed source rows the offline store was computed from.

The offline run appends every good source row of each micro-batch (the user columns:
value columns and, for Kafka, the metadata columns ``key``, ``topic``, ``partition``,
``offset`` and ``timestamp``) to one Delta table per feature set, exactly once per batch
(:class:`~fs_dagster.engine.delta.AppendOnce` under the batch's app id and version, as
the other offline writers). Malformed records are not archived: they go to the dead
letters. A backfill run archives its stream-shaped rows (what the backfill
transformation made of the batch sources) over its range, replacing that range
(:class:`~fs_dagster.engine.delta.ReplaceRange`), so the archive covers backfilled
history as the offline tables do. Replay (:mod:`fs_dagster.engine.replay`) and any later
recomputation read it.

Layout, besides the user columns:

- ``__fs_event_micros``: the row's event time in microseconds, from the source column
  named like the feature set's timestamp column (the transformation is expected to pass
  it through), else the Kafka record timestamp, else null (such rows are read by every
  replay slice);
- ``__fs_event_date``: its UTC date, the partition column, so a time range reads only
  its days;
- ``__fs_trigger``: ``offline`` or ``backfill``, the run that archived the row: replay
  gives each the event times that trigger owns, as the offline tables do.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F  # noqa: N812

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.computation import BatchContext, Computed, EventRange
from fs_dagster.engine.delta import write_delta
from fs_dagster.engine.sources import ERROR_COLUMN, user_columns
from fs_dagster.engine.writers import Outcome, delta_mode
from fs_dagster.planning.plan import INTERNAL_PREFIX, StoragePlan

__all__ = [
    "ARCHIVE_DATE_COLUMN",
    "ARCHIVE_MICROS_COLUMN",
    "ARCHIVE_TRIGGER_COLUMN",
    "RawArchive",
    "archive_time_range",
]

ARCHIVE_MICROS_COLUMN = INTERNAL_PREFIX + "event_micros"
ARCHIVE_DATE_COLUMN = INTERNAL_PREFIX + "event_date"
ARCHIVE_TRIGGER_COLUMN = INTERNAL_PREFIX + "trigger"

#: Kafka's record timestamp: the event time when the value carries none.
_KAFKA_TIME = "timestamp"


def _raw_event_micros(feature_set: FeatureSet, rows: DataFrame) -> Column:
    """A source row's event time (micros), as the archive orders and partitions it."""
    for column in (feature_set.timestamp_column, _KAFKA_TIME):
        if column in rows.columns:
            return F.unix_micros(F.col(column).cast("timestamp"))
    return F.lit(None).cast("long")


def archive_time_range(start: int | None, end: int | None) -> Column:
    """Archived rows with event times in ``[start, end)`` (micros), and those without a
    time, which may belong anywhere; the date condition lets Delta skip other days."""
    micros = F.col(ARCHIVE_MICROS_COLUMN)
    inside = F.lit(True)
    dates = F.lit(True)
    if start is not None:
        inside = inside & (micros >= F.lit(start))
        dates = dates & (F.col(ARCHIVE_DATE_COLUMN) >= F.to_date(F.timestamp_micros(F.lit(start))))
    if end is not None:
        inside = inside & (micros < F.lit(end))
        dates = dates & (F.col(ARCHIVE_DATE_COLUMN) <= F.to_date(F.timestamp_micros(F.lit(end))))
    return (dates & inside) | micros.isNull()


class RawArchive:
    """The good source rows of every batch into the raw-event archive (Delta).

    Streams append once per batch; a ranged run replaces the archived rows of its
    trigger and range (only its rows whose event time lies in the range are archived:
    the others are set aside by the run and are no part of the offline store either).
    """

    def __init__(self, feature_set: FeatureSet, plan: StoragePlan) -> None:
        self.feature_set = feature_set
        self.plan = plan

    @staticmethod
    def _predicate(trigger: str) -> Callable[[EventRange], str]:
        def predicate(owned: EventRange) -> str:
            parts = [f"`{ARCHIVE_TRIGGER_COLUMN}` = '{trigger}'"]
            if owned.start is not None:
                parts.append(f"`{ARCHIVE_MICROS_COLUMN}` >= {owned.start}")
            if owned.end is not None:
                parts.append(f"`{ARCHIVE_MICROS_COLUMN}` < {owned.end}")
            return " AND ".join(parts)

        return predicate

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        """Archive the batch's parsed source rows; idempotent for a repeated ``ctx``."""
        if computed.rows_in == computed.malformed and ctx.replace is None:
            return Outcome()
        fs = self.feature_set
        archived: DataFrame | None = None
        for rows in computed.sources.values():
            good = rows.where(F.col(ERROR_COLUMN).isNull())
            shaped = good.select(
                *[F.col(c) for c in user_columns(good)],
                _raw_event_micros(fs, good).alias(ARCHIVE_MICROS_COLUMN),
                F.lit(ctx.trigger).alias(ARCHIVE_TRIGGER_COLUMN),
            ).withColumn(
                ARCHIVE_DATE_COLUMN, F.to_date(F.timestamp_micros(F.col(ARCHIVE_MICROS_COLUMN)))
            )
            archived = (
                shaped
                if archived is None
                else archived.unionByName(shaped, allowMissingColumns=True)
            )
        if archived is None:
            return Outcome()
        if ctx.replace is not None:
            archived = archived.where(ctx.replace.contains(F.col(ARCHIVE_MICROS_COLUMN)))
        predicate = self._predicate(ctx.trigger)
        write_delta(
            archived,
            self.plan.archive_path,
            delta_mode(ctx, "archive", predicate),
            partition_by=[ARCHIVE_DATE_COLUMN],
            merge_schema=True,
        )
        return Outcome()
