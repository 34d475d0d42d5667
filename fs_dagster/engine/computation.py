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

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F  # noqa: N812

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.sources import ERROR_COLUMN, user_columns
from fs_dagster.engine.transform import apply_transformation

__all__ = ["BatchContext", "Computed", "EventRange", "compute", "event_micros", "to_micros"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch of a datetime (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def event_micros(feature_set: FeatureSet) -> Column:
    """The output's event time in microseconds since the epoch."""
    return F.unix_micros(F.col(feature_set.timestamp_column).cast("timestamp"))


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


@dataclass
class Computed:
    """What the computation made of one batch of source rows.

    Attributes:
        sources: the batch as read, per source name, with ``__fs_payload``,
            ``__fs_position`` and ``__fs_error``.
        features: every transformation output row (persisted while writers run).
        rows: output rows with key and event time inside the trigger's range.
        invalid_output: output rows without a key or an event time.
        outside: output rows with key and time outside the trigger's range.
        rows_in: source rows in the batch.
        malformed: source rows that did not parse.
        invalid: count of ``invalid_output``.
        row_count: count of ``rows``.
        outside_count: count of ``outside``.
        max_event_micros: newest event time among ``rows`` and ``outside``.
        range: the range this trigger owns.
    """

    sources: Mapping[str, DataFrame]
    features: DataFrame
    rows: DataFrame
    invalid_output: DataFrame
    outside: DataFrame
    rows_in: int
    malformed: int
    invalid: int
    row_count: int
    outside_count: int
    max_event_micros: int | None
    range: EventRange

    @property
    def max_event_time(self) -> datetime | None:
        """:attr:`max_event_micros` as a UTC datetime."""
        if self.max_event_micros is None:
            return None
        return _EPOCH + timedelta(microseconds=self.max_event_micros)

    def release(self) -> None:
        """Drop the cached output once every writer is done."""
        self.features.unpersist()


def compute(
    feature_set: FeatureSet,
    sources: Mapping[str, DataFrame],
    owned: EventRange,
) -> Computed:
    """Run the transformation over the source rows and split its output.

    ``sources`` maps each source name the transformation reads to its rows (a stream's
    micro-batch has one). One Spark job per source and one over the output count
    everything the writers and the report need; the output is persisted so that the
    writers do not recompute it. Call :meth:`Computed.release` when they are done.
    """
    rows_in = malformed = 0
    good: dict[str, DataFrame] = {}
    for name, source_rows in sources.items():
        counts = source_rows.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.col(ERROR_COLUMN)).alias("bad"),
        ).first()
        rows_in += int(counts["rows"]) if counts else 0
        malformed += int(counts["bad"]) if counts else 0
        good[name] = source_rows.where(F.col(ERROR_COLUMN).isNull()).select(
            *user_columns(source_rows)
        )
    features = apply_transformation(feature_set, good).persist()
    missing = F.lit(False)
    for column in [*feature_set.key, feature_set.timestamp_column]:
        missing = missing | F.col(column).isNull()
    micros = event_micros(feature_set)
    inside = owned.contains(micros)
    stats = features.agg(
        F.count(F.when(missing, F.lit(1))).alias("invalid"),
        F.count(F.when(~missing & inside, F.lit(1))).alias("rows"),
        F.count(F.when(~missing & ~inside, F.lit(1))).alias("outside"),
        F.max(F.when(~missing, micros)).alias("max_micros"),
    ).first()
    return Computed(
        sources=sources,
        features=features,
        rows=features.where(~missing & inside),
        invalid_output=features.where(missing),
        outside=features.where(~missing & ~inside),
        rows_in=rows_in,
        malformed=malformed,
        invalid=int(stats["invalid"]) if stats else 0,
        row_count=int(stats["rows"]) if stats else 0,
        outside_count=int(stats["outside"]) if stats else 0,
        max_event_micros=stats["max_micros"] if stats else None,
        range=owned,
    )
