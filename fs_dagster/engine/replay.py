"""Replay: historical feature events recomputed from the raw-event archive.

Replay reads the archive the offline runs wrote (:mod:`fs_dagster.engine.archive`) and
runs the feature computation's steps over it: the feature set's transformation
(:func:`~fs_dagster.engine.transform.apply_transformation`), rows without key or time
left out, each archived row kept only at event times its trigger owns, as in the
offline tables. So a replayed value at a time is the offline point-in-time value at
that time:

- **row-level** feature sets: one event per transformed row (its key, event time and
  features), what ``get_offline_features`` returns for that key at that time;
- **aggregated** feature sets: one event per transformed row, holding every window value
  at the row's event time, computed by the offline path itself: tile partials
  (:func:`~fs_dagster.engine.aggregates.tile_partials`,
  :func:`~fs_dagster.engine.aggregates.encode_partials`) merged by
  :func:`~fs_dagster.engine.aggregates.point_in_time_aggregates` for a population of
  the slice's events. Window values follow the README's tile-edge semantics, so a value
  at ``t`` counts every event of ``t``'s second, even those just after ``t``.

**Bounded memory.** ``[start, end)`` is cut into event-time slices (one day by
default). Each slice reads only its days of the archive (partition pruning), plus, for
aggregated sets, the longest window before it; its events are sorted by Spark and
brought to the driver as one Arrow table, then yielded one by one. So the driver holds
one slice's events at most (choose ``slice_length`` by the event rate); nothing spans
two slices except, with ``combine=True``, the latest values per key. The cost of the
look-back: an aggregated slice reads ``(slice + longest window) / slice`` times its
share of the archive (8x for 1-day slices and a 7-day window); longer slices read less
again and hold more at once.

**Order.** Events come in event-time order. Ties: within one feature set, by key
columns ascending (events with equal key and time in no particular order; for
aggregated sets their values are equal); across feature sets, in the order the sets
were given.

Example:
    >>> for event in store.replay(["user-spend"], start, end):  # doctest: +SKIP
    ...     model.update(event.key, event.features)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.aggregates import (
    aggregation_plan,
    encode_partials,
    point_in_time_aggregates,
    tile_partials,
)
from fs_dagster.engine.archive import (
    ARCHIVE_TRIGGER_COLUMN,
    archive_time_range,
)
from fs_dagster.engine.computation import EventRange, event_micros, to_micros
from fs_dagster.engine.encoding import spark_type
from fs_dagster.engine.pipeline import stream_range
from fs_dagster.engine.sources import user_columns
from fs_dagster.engine.transform import apply_transformation, feature_fields, output_schema
from fs_dagster.planning.plan import INTERNAL_PREFIX, StoragePlan

__all__ = [
    "DEFAULT_SLICE",
    "CombinedFeatureEvent",
    "FeatureEvent",
    "check_combinable",
    "combine_events",
    "merge_events",
    "replay",
    "replay_feature_set",
]

#: Event time covered by one Spark pass of a replay.
DEFAULT_SLICE = timedelta(days=1)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROS = INTERNAL_PREFIX + "replay_micros"
_SECOND = 1_000_000


@dataclass(frozen=True)
class FeatureEvent:
    """The features of one feature set for one key at one event.

    Attributes:
        feature_set: the feature set's name.
        key: the key columns and their values.
        timestamp: the event time (UTC).
        features: row-level sets: the transformed row's feature columns; aggregated
            sets: every window value at ``timestamp``.
    """

    feature_set: str
    key: Mapping[str, Any]
    timestamp: datetime
    features: Mapping[str, Any]


@dataclass(frozen=True)
class CombinedFeatureEvent:
    """The latest features of every replayed feature set for a key, at one event.

    Attributes:
        feature_set: the set whose event this is.
        key: the key columns and their values.
        timestamp: the event time (UTC).
        features: per feature set name, the features of its latest event for this key
            at or before this one (this event's own for ``feature_set``), or ``None``
            where that set has had no event for the key yet in the replay.
    """

    feature_set: str
    key: Mapping[str, Any]
    timestamp: datetime
    features: Mapping[str, Mapping[str, Any] | None]


def _utc_micros(moment: datetime, name: str) -> int:
    if not isinstance(moment, datetime):
        raise TypeError(f"replay: {name} must be a datetime, got {moment!r}")
    return to_micros(moment)


def _ceil_second(micros: int) -> int:
    return -(-micros // _SECOND) * _SECOND


def _intersect(owned: EventRange, start: int, end: int) -> EventRange | None:
    lo = start if owned.start is None else max(owned.start, start)
    hi = end if owned.end is None else min(owned.end, end)
    return EventRange(lo, hi, owned.reason) if lo < hi else None


class _FeatureSetReplay:
    """Replays one feature set from its archive, slice by slice."""

    def __init__(self, spark: SparkSession, feature_set: FeatureSet, plan: StoragePlan) -> None:
        if feature_set.kind != "streaming":
            raise ValueError(
                f"'{feature_set.name}' is a {feature_set.kind} feature set: replay reads the "
                "raw-event archive of a streaming feature set's offline run"
            )
        # Its own session: the transformation's temporary views are per session.
        self.spark = spark.newSession()
        self.feature_set = feature_set
        self.plan = plan
        schema = output_schema(self.spark, feature_set)
        self.aggregation = (
            aggregation_plan(feature_set, schema) if feature_set.is_aggregated else None
        )
        if self.aggregation is not None:
            self.names = [o.name for o in self.aggregation.outputs]
            self.lookback = max(self.aggregation.window_seconds) * _SECOND
            self.types = {c: spark_type(k) for c, k in self.aggregation.column_kinds.items()}
        else:
            self.names = [name for name, _ in feature_fields(feature_set, schema)]
            self.lookback = 0
        # What each archiving trigger owns, as in the offline tables: a backfill's rows
        # before its end_date, the offline stream's rows from it.
        stream = stream_range(feature_set)
        self.owned = {"offline": stream}
        if stream.start is not None:
            self.owned["backfill"] = EventRange(None, stream.start, "")

    def archive(self) -> DataFrame:
        try:
            return self.spark.read.format("delta").load(self.plan.archive_path)
        except AnalysisException:
            raise LookupError(
                f"feature set '{self.feature_set.name}' has no raw-event archive at "
                f"{self.plan.archive_path}; run its offline ingestion first"
            ) from None

    def events(self, start: int, end: int, slice_micros: int) -> Iterator[FeatureEvent]:
        archive = self.archive()
        for slice_start in range(start, end, slice_micros):
            yield from self._slice(archive, slice_start, min(slice_start + slice_micros, end))

    def _rows(self, archive: DataFrame, start: int, end: int) -> DataFrame | None:
        """The transformed rows with key and event time in ``[start, end)``, each from
        an archived row of the trigger that owns its time.

        The steps of :func:`~fs_dagster.engine.computation.compute` without its counts
        and dead letters, which serve the writers of a run (archived rows parsed).
        """
        fs = self.feature_set
        found: DataFrame | None = None
        for trigger, owned in self.owned.items():
            span = _intersect(owned, start, end)
            if span is None:
                continue
            raw = archive.where(
                (F.col(ARCHIVE_TRIGGER_COLUMN) == F.lit(trigger))
                & archive_time_range(span.start, span.end)
            )
            features = apply_transformation(
                fs, {fs.source.name: raw.select(*[F.col(c) for c in user_columns(raw)])}
            )
            valid = span.contains(event_micros(fs))
            for column in [*fs.key, fs.timestamp_column]:
                valid = valid & F.col(column).isNotNull()
            rows = features.where(valid)
            found = rows if found is None else found.unionByName(rows)
        return found

    def _slice(self, archive: DataFrame, start: int, end: int) -> Iterator[FeatureEvent]:
        fs = self.feature_set
        keys = list(fs.key)
        ts = fs.timestamp_column
        # A window read at t ends with t's second, and reaches back at most its length.
        rows = self._rows(archive, start - self.lookback, _ceil_second(end))
        if rows is None:
            return
        # Tiles and the population both read these rows: transform the archive once.
        rows = rows.persist()
        try:
            micros = event_micros(fs)
            in_slice = rows.where((micros >= F.lit(start)) & (micros < F.lit(end)))
            if self.aggregation is not None:
                tiles = encode_partials(tile_partials(rows, self.aggregation), self.aggregation)
                population = in_slice.select(*keys, F.col(ts).cast("timestamp").alias(ts))
                in_slice = point_in_time_aggregates(
                    self.aggregation, population, tiles, ts, self.types
                )
            ordered = in_slice.select(
                *keys, micros.alias(_MICROS), *[F.col(n) for n in self.names]
            ).orderBy(_MICROS, *keys)
            # One slice at a time in the driver, through Arrow (Python values, None for
            # nulls); Row objects from toLocalIterator cost several times more per event.
            for batch in ordered.toArrow().to_batches():
                for values in batch.to_pylist():
                    yield FeatureEvent(
                        feature_set=fs.name,
                        key={k: values[k] for k in keys},
                        timestamp=_EPOCH + timedelta(microseconds=values[_MICROS]),
                        features={n: values[n] for n in self.names},
                    )
        finally:
            rows.unpersist()


def replay_feature_set(
    spark: SparkSession,
    feature_set: FeatureSet,
    plan: StoragePlan,
    start: datetime,
    end: datetime,
    *,
    slice_length: timedelta = DEFAULT_SLICE,
) -> Iterator[FeatureEvent]:
    """The events of one feature set with event times in ``[start, end)``, in order.

    Args:
        spark: the session.
        feature_set: a streaming feature set whose offline run has archived its events.
        plan: its storage locations.
        start: first event time replayed (naive is UTC).
        end: first event time not replayed.
        slice_length: event time per Spark pass (see the module's "Bounded memory").

    Raises:
        ValueError: an empty range, a slice shorter than a second, or a batch feature set.
        LookupError: the feature set has no archive yet.
    """
    first, last = _utc_micros(start, "start"), _utc_micros(end, "end")
    if not first < last:
        raise ValueError(
            f"replay of '{feature_set.name}': start {start.isoformat()} must be before "
            f"end {end.isoformat()}"
        )
    step = slice_length // timedelta(microseconds=1)
    if step < _SECOND:
        raise ValueError(
            f"replay of '{feature_set.name}': slice_length {slice_length} is shorter than a second"
        )
    replayer = _FeatureSetReplay(spark, feature_set, plan)
    replayer.archive()  # a missing archive fails here, not at the first next()
    return replayer.events(first, last, step)


def merge_events(streams: Sequence[Iterable[FeatureEvent]]) -> Iterator[FeatureEvent]:
    """Merge per-feature-set event streams by event time; ties in the streams' order."""
    return heapq.merge(*streams, key=lambda event: event.timestamp)


def check_combinable(feature_sets: Sequence[FeatureSet]) -> None:
    """Raise unless the feature sets share their key columns (``combine=True`` needs it)."""
    keys = {tuple(fs.key) for fs in feature_sets}
    if len(keys) > 1:
        described = ", ".join(f"'{fs.name}' ({', '.join(fs.key)})" for fs in feature_sets)
        raise ValueError(
            "replay(combine=True) needs feature sets with the same key columns to build "
            f"one vector per key; they have: {described}. Replay them with combine=False, "
            "or combine sets that share a key"
        )


def combine_events(
    events: Iterable[FeatureEvent], names: Sequence[str]
) -> Iterator[CombinedFeatureEvent]:
    """For each event, the latest features of every set in ``names`` for its key.

    Keeps the latest features per key and feature set: memory grows with the keys seen,
    not with the events.
    """
    latest: dict[tuple[Any, ...], dict[str, Mapping[str, Any]]] = {}
    for event in events:
        known = latest.setdefault(tuple(event.key.values()), {})
        known[event.feature_set] = event.features
        yield CombinedFeatureEvent(
            feature_set=event.feature_set,
            key=event.key,
            timestamp=event.timestamp,
            features={name: known.get(name) for name in names},
        )


def replay(
    spark: SparkSession,
    feature_sets: Sequence[tuple[FeatureSet, StoragePlan]],
    start: datetime,
    end: datetime,
    *,
    combine: bool = False,
    slice_length: timedelta = DEFAULT_SLICE,
) -> Iterator[FeatureEvent] | Iterator[CombinedFeatureEvent]:
    """The events of several feature sets in ``[start, end)``, merged in event-time order.

    With ``combine``, each event becomes a :class:`CombinedFeatureEvent` holding the
    latest features of every set for its key (the sets must share their key columns).
    Every set is checked and its archive found before the first event is read.

    Raises:
        ValueError: no feature set, a set given twice, sets with different keys and
            ``combine``, or what :func:`replay_feature_set` refuses.
        LookupError: a feature set has no archive yet.
    """
    if not feature_sets:
        raise ValueError("replay needs at least one feature set")
    names = [fs.name for fs, _ in feature_sets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"replay: feature sets given more than once: {', '.join(repeated)}")
    if combine:
        check_combinable([fs for fs, _ in feature_sets])
    streams = [
        replay_feature_set(spark, fs, plan, start, end, slice_length=slice_length)
        for fs, plan in feature_sets
    ]
    merged = streams[0] if len(streams) == 1 else merge_events(streams)
    return combine_events(merged, names) if combine else merged
