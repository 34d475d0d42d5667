"""One writer per destination; a trigger picks its writers when its run starts.

Each writer takes the :class:`~fs_dagster.engine.computation.Computed` result of a batch
and the batch's :class:`~fs_dagster.engine.computation.BatchContext`, writes its one
destination idempotently and says what it did in an :class:`Outcome`:

| writer | destination |
| --- | --- |
| :class:`DeadLetters` | the dead-letter table: unparsed records, rows without key or time |
| :class:`SetAside` | the late-events table: rows outside the range the trigger owns |
| :class:`OnlineRows` | the online store: the latest row per key, by event time |
| :class:`OnlineTiles` | the online tiles: watermark split, merge into stored tiles, late events |
| :class:`SeedOnlineTiles` | the online tiles of a backfilled range, written whole |
| :class:`OfflineRows` | the offline feature table (Delta) |
| :class:`OfflineTiles` | the offline tile partials (Delta), every event counted |
| :class:`~fs_dagster.engine.sinks.KafkaSinkWriter` | an auxiliary Kafka topic |

A trigger's :class:`BatchWriters` say which of its writers may run side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, reduce
from typing import Any, Protocol

import pyarrow as pa
from pyspark import inheritable_thread_target
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F  # noqa: N812

from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.sources import KafkaSource
from fs_dagster.engine.aggregates import (
    TilePartials,
    TileWriter,
    encode_partials,
    tile_partials,
    write_partials,
)
from fs_dagster.engine.arrow_map import (
    ArrowMap,
    arrow_map_function,
    map_in_arrow,
    map_in_driver,
    without_gc,
)
from fs_dagster.engine.computation import (
    INSIDE_COLUMN,
    MICROS_COLUMN,
    MISSING_COLUMN,
    BatchContext,
    Computed,
    EventRange,
    event_micros,
    event_micros_sql,
    range_sql,
)
from fs_dagster.engine.delta import AppendOnce, ReplaceRange, WriteMode, write_delta
from fs_dagster.engine.sources import (
    ERROR_COLUMN,
    PAYLOAD_COLUMN,
    POSITION_COLUMN,
    parse_schema,
)
from fs_dagster.engine.spark_session import one_wave
from fs_dagster.planning.plan import EVENT_DATE_COLUMN, StoragePlan
from fs_dagster.stores.online.base import (
    EVENT_MICROS_COLUMN,
    ColumnKind,
    OnlineStore,
    OnlineTable,
    now_micros,
)

__all__ = [
    "BatchWriters",
    "DeadLetters",
    "OfflineRows",
    "OfflineTiles",
    "OnlineRows",
    "OnlineTiles",
    "Outcome",
    "SeedOnlineTiles",
    "SetAside",
    "Writer",
    "delta_mode",
]

_TILE_START = "__fs_tile_start"


@dataclass(frozen=True)
class Outcome:
    """What one writer did with one batch."""

    rows_written: int = 0
    tiles_written: int = 0
    late_events: int = 0
    set_aside: int = 0
    dead_letters: int = 0
    watermark: int | None = None
    sink_messages: Mapping[str, int] = field(default_factory=dict)


class Writer(Protocol):
    """Writes one destination from a computed batch."""

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        """Write this writer's destination; idempotent for a repeated ``ctx``."""
        ...


@dataclass(frozen=True)
class BatchWriters:
    """The writers a trigger hands each of its batches to, and in what order.

    ``together`` write destinations of their own (a Delta table each, or the online
    store) and read nothing another writes: with more than one, they run side by side,
    each on a thread of its own: Delta appends overlap their waits on the file system
    or object store (measured on 2 cores: 7-12% less time for a 100-event offline
    batch). ``then`` run after all of them, one after another, in order (the sinks,
    then the live-update callback, which follow every write of the batch).
    """

    together: Sequence[Writer]
    then: Sequence[Writer] = ()

    def write(self, computed: Computed, ctx: BatchContext) -> list[Outcome]:
        """Run every writer on the batch; their outcomes, ``together``'s then ``then``'s.

        Raises:
            Exception: the first failing writer's error (in ``together`` order), once
                every writer of ``together`` has finished.
        """
        if len(self.together) > 1:
            # Every writer reads the counts: one job takes them before the threads start
            # (each would otherwise run the statistics job itself).
            computed.counts  # noqa: B018
            # The threads' Spark jobs keep the batch's job group, properties and session
            # tags, so that stopping the query cancels them too.
            inherit = inheritable_thread_target(computed.classified().sparkSession)
            with ThreadPoolExecutor(len(self.together)) as pool:
                futures = [pool.submit(inherit(w.write), computed, ctx) for w in self.together]
            outcomes = [f.result() for f in futures]
        else:
            outcomes = [w.write(computed, ctx) for w in self.together]
        return outcomes + [w.write(computed, ctx) for w in self.then]


def delta_mode(
    ctx: BatchContext, destination: str, predicate: Callable[[EventRange], str]
) -> WriteMode:
    """Streams append once per batch; ranged runs replace their range of the table."""
    if ctx.replace is not None:
        return ReplaceRange(predicate(ctx.replace))
    return AppendOnce(f"{ctx.app_id}-{destination}", ctx.txn_version)


def _time_predicate(feature_set: FeatureSet) -> Callable[[EventRange], str]:
    column = event_micros_sql(feature_set)

    def predicate(owned: EventRange) -> str:
        return owned.sql(column)

    return predicate


#: JSON of a row keeps timestamps to the microsecond, as Spark holds them.
_JSON_OPTIONS = {"timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"}


def row_json(df: DataFrame) -> Any:
    """Every column of ``df`` as one JSON object (the payload of a row set aside)."""
    return F.to_json(F.struct(*[F.col(c) for c in df.columns]), _JSON_OPTIONS)


def _key_json(feature_set: FeatureSet) -> Any:
    return F.to_json(F.struct(*[F.col(k) for k in feature_set.key]))


class DeadLetters:
    """Records that did not parse, and output rows without a key or event time."""

    def __init__(self, feature_set: FeatureSet, plan: StoragePlan) -> None:
        self.feature_set = feature_set
        self.plan = plan

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        count = computed.malformed + computed.invalid
        if not count:
            return Outcome()
        fs = self.feature_set
        parsed_bad = [
            rows.where(F.col(ERROR_COLUMN).isNotNull()).select(
                F.lit(name).alias("source"),
                F.col(PAYLOAD_COLUMN).alias("payload"),
                F.col(POSITION_COLUMN).alias("position"),
                F.col(ERROR_COLUMN).alias("reason"),
            )
            for name, rows in computed.sources.items()
        ]
        invalid = computed.invalid_output
        missing = F.lit(None).cast("string")
        for column in reversed([*fs.key, fs.timestamp_column]):
            missing = F.when(
                F.col(column).isNull(), F.lit(f"transformation output has no value for '{column}'")
            ).otherwise(missing)
        output_bad = invalid.select(
            F.lit(", ".join(computed.sources)).alias("source"),
            row_json(invalid).alias("payload"),
            F.lit("transformation output").alias("position"),
            missing.alias("reason"),
        )
        dead = reduce(DataFrame.unionByName, [*parsed_bad, output_bad]).select(
            F.lit(fs.name).alias("feature_set"),
            F.lit(ctx.trigger).alias("pipeline"),
            "source",
            "position",
            "payload",
            "reason",
            F.lit(ctx.version).cast("long").alias("batch_id"),
            F.current_timestamp().alias("recorded_at"),
        )
        # Dead letters have no event time to replace by: ranged runs append once per range.
        mode = AppendOnce(f"{ctx.app_id}-dead-letter", ctx.txn_version)
        write_delta(dead, self.plan.dead_letter_path, mode, merge_schema=True)
        return Outcome(dead_letters=count)


#: Kafka metadata a transformation may pass through; with all three, a row set aside is
#: traced back to its record (JFrog ML asks aggregated sets to select them).
_KAFKA_POSITION = ("topic", "partition", "offset")


def _with_raw_records(
    feature_set: FeatureSet, rows: DataFrame, sources: Mapping[str, DataFrame]
) -> tuple[DataFrame, Any, Any]:
    """``rows`` with the raw record and position of each, where they can be traced.

    A SQL transformation's output row cannot be traced to its source record in general;
    a Kafka source's can when the output keeps ``topic``, ``partition`` and ``offset``.
    Elsewhere the payload is the output row and the position says so.
    """
    source = feature_set.sources[0] if len(feature_set.sources) == 1 else None
    own_names = (
        set(parse_schema(rows.sparkSession, source.schema).fieldNames())
        if isinstance(source, KafkaSource)
        else set()
    )
    traceable = (
        isinstance(source, KafkaSource)
        and source.name in sources
        and all(c in rows.columns for c in _KAFKA_POSITION)
        and not own_names & set(_KAFKA_POSITION)
    )
    if not traceable:
        return rows, row_json(rows), F.lit("transformation output")
    assert source is not None
    raw = sources[source.name].select(
        *[F.col(c).alias(f"__fs_raw_{c}") for c in _KAFKA_POSITION],
        F.col(PAYLOAD_COLUMN).alias("__fs_raw_payload"),
        F.col(POSITION_COLUMN).alias("__fs_raw_position"),
    )
    joined = rows.join(
        raw,
        on=[rows[c] == raw[f"__fs_raw_{c}"] for c in _KAFKA_POSITION],
        how="left",
    )
    output = F.struct(*[rows[c] for c in rows.columns])
    payload = F.coalesce(F.col("__fs_raw_payload"), F.to_json(output, _JSON_OPTIONS))
    position = F.coalesce(F.col("__fs_raw_position"), F.lit("transformation output"))
    return joined, payload, position


def write_late_events(
    feature_set: FeatureSet,
    plan: StoragePlan,
    late: DataFrame,
    ctx: BatchContext,
    *,
    sources: Mapping[str, DataFrame],
    reason: str,
    watermark: int | None,
    destination: str,
) -> None:
    """Append rows set aside with their key, event time, reason, and the raw record and
    its position where the row can be traced to it (see :func:`_with_raw_records`)."""
    fs = feature_set
    rows, payload, position = _with_raw_records(fs, late, sources)
    records = rows.select(
        F.lit(fs.name).alias("feature_set"),
        _key_json(fs).alias("key"),
        F.col(fs.timestamp_column).cast("timestamp").alias("event_time"),
        (
            F.timestamp_micros(F.lit(watermark))
            if watermark is not None
            else F.lit(None).cast("timestamp")
        ).alias("watermark"),
        F.lit(reason).alias("reason"),
        payload.alias("payload"),
        F.lit(ctx.version).cast("long").alias("batch_id"),
        F.current_timestamp().alias("recorded_at"),
        F.lit(ctx.trigger).alias("pipeline"),
        position.alias("position"),
    )
    mode = AppendOnce(f"{ctx.app_id}-{destination}", ctx.txn_version)
    write_delta(records, plan.late_events_path, mode, merge_schema=True)


class SetAside:
    """Rows outside the event-time range the trigger owns, kept visibly aside."""

    def __init__(self, feature_set: FeatureSet, plan: StoragePlan) -> None:
        self.feature_set = feature_set
        self.plan = plan

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        if not computed.outside_count:
            return Outcome()
        write_late_events(
            self.feature_set,
            self.plan,
            computed.outside,
            ctx,
            sources=computed.sources,
            reason=computed.range.reason,
            watermark=None,
            destination="set-aside",
        )
        return Outcome(set_aside=computed.outside_count)


def encode_column(column: str, kind: ColumnKind) -> Any:
    """A column as online stores take it (timestamps in micros, nested values as JSON)."""
    col = F.col(column)
    if kind == "timestamp":
        return F.unix_micros(col.cast("timestamp")).alias(column)
    if kind == "json":
        return F.to_json(col).alias(column)
    if kind == "decimal":
        return col.cast("string").alias(column)
    return col.alias(column)


#: :class:`OnlineRows` writes a batch from the driver when the batch before it had at
#: most this many output rows (see there).
DRIVER_WRITE_ROWS = 2_000


class OnlineRows:
    """The latest row per key into the online store (an older event never wins).

    One Spark job per batch: it classifies every output row, writes the newest valid row
    per key of each partition (the store keeps the newest across partitions, as it
    compares event times, so no shuffle dedupes), and counts the batch on the way
    (:meth:`~fs_dagster.engine.computation.Computed.record_output_counts`). The job's
    columns and its Python function are built with the first batch and reused.

    Where the rows are written depends on the size of the batch before (a stream's
    batches are alike; a batch's own size is known only once its job has run): after one
    of at most ``driver_rows`` output rows the job brings the encoded rows to the driver
    as Arrow and the same function writes them there, one partition; otherwise (and for
    the first batch, which may be a backlog) the executors' Python workers write their
    partitions. A steady stream's small batches then skip the round trip to the Python
    workers, about 0.1 s a batch on 2 cores: at 500 events/s a trigger took 135-238 ms
    against 399 ms, the least Spark pipeline 89-111 ms (``bench/README.md``, "Session 29").
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        store: OnlineStore,
        table: OnlineTable,
        *,
        driver_rows: int = DRIVER_WRITE_ROWS,
    ) -> None:
        self.feature_set = feature_set
        self.store = store
        self.table = table
        self.driver_rows = driver_rows
        #: Output rows of the last batch written (``None`` before the first).
        self.last_rows: int | None = None

    @cached_property
    def _columns(self) -> list[Column]:
        table = self.table
        return [
            *[encode_column(c.name, c.kind) for c in table.keys],
            F.col(MICROS_COLUMN).alias(EVENT_MICROS_COLUMN),
            *[encode_column(c.name, c.kind) for c in table.features],
            F.col(MISSING_COLUMN),
            F.col(INSIDE_COLUMN),
        ]

    @cached_property
    def _function(self) -> ArrowMap:
        return _latest_row_writer(self.store, self.table)

    @cached_property
    def _write(self) -> Column:
        columns = [*_written_names(self.table), *_FLAGS]
        return arrow_map_function(self._function, _ROW_WRITE_COUNTS_DDL, columns)

    @property
    def in_driver(self) -> bool:
        """Whether the next batch is written from the driver (see the class)."""
        return self.last_rows is not None and self.last_rows <= self.driver_rows

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        encoded = one_wave(computed.classified().select(*self._columns))
        if self.in_driver:
            counts = map_in_driver(encoded, self._function)
        else:
            counts = [c.asDict() for c in map_in_arrow(encoded, self._write).collect()]
        newest = [c["newest"] for c in counts if c["newest"] is not None]
        invalid = sum(c["invalid"] for c in counts)
        row_count = sum(c["rows"] for c in counts)
        outside = sum(c["outside"] for c in counts)
        computed.record_output_counts(
            invalid=invalid,
            row_count=row_count,
            outside_count=outside,
            max_event_micros=max(newest) if newest else None,
        )
        self.last_rows = invalid + row_count + outside
        return Outcome(rows_written=sum(c["written"] for c in counts))


_FLAGS = (MISSING_COLUMN, INSIDE_COLUMN)


def _written_names(table: OnlineTable) -> list[str]:
    """The columns of an :class:`OnlineRows` row as the store takes it, in order."""
    return [*table.key_names, EVENT_MICROS_COLUMN, *table.feature_names]


def _latest_row_writer(store: OnlineStore, table: OnlineTable) -> ArrowMap:
    """The function of an :class:`OnlineRows` job: over one partition's encoded rows,
    write the newest valid row per key and report the partition's counts."""
    names = _written_names(table)
    width = len(table.keys)

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        latest: dict[tuple[Any, ...], dict[str, Any]] = {}
        invalid = outside = rows = 0
        newest: int | None = None
        for batch in batches:
            for record in batch.to_pylist():
                if record[MISSING_COLUMN]:
                    invalid += 1
                    continue
                micros = record[EVENT_MICROS_COLUMN]
                newest = micros if newest is None else max(newest, micros)
                if not record[INSIDE_COLUMN]:
                    outside += 1
                    continue
                rows += 1
                key = tuple(record[n] for n in names[:width])
                kept = latest.get(key)
                # Equal event times: the later record wins, as in the store.
                if kept is None or micros >= kept[EVENT_MICROS_COLUMN]:
                    latest[key] = record
        written = store.write(table, latest.values()) if latest else 0
        yield pa.RecordBatch.from_pydict(
            {
                "written": [written],
                "invalid": [invalid],
                "rows": [rows],
                "outside": [outside],
                "newest": [newest],
            },
            schema=_ROW_WRITE_COUNTS,
        )

    return without_gc(write_partition)


#: What each partition of an :class:`OnlineRows` job reports.
_ROW_WRITE_COUNTS = pa.schema(
    [
        ("written", pa.int64()),
        ("invalid", pa.int64()),
        ("rows", pa.int64()),
        ("outside", pa.int64()),
        ("newest", pa.int64()),
    ]
)
_ROW_WRITE_COUNTS_DDL = "written long, invalid long, rows long, outside long, newest long"


class OnlineTiles:
    """Tiles of the online stream: watermark split, merge, versioned whole-tile writes.

    The watermark of a batch is the newest event time recorded by earlier batches (kept
    per batch id in the store, so a replay sees the same one) minus the lateness; older
    events go to the late-events table and change no tile.

    One Spark job per batch: it computes the on-time rows' tile partials, merges them into
    the stored tiles (a :class:`~fs_dagster.engine.aggregates.TileWriter`, which merges a
    small batch in the driver) and counts the batch on the way
    (:meth:`~fs_dagster.engine.computation.Computed.observed_rows`). A batch with late
    events runs a second job that writes them.
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        plan: StoragePlan,
        store: OnlineStore,
        aggregation: AggregationPlan,
    ) -> None:
        self.feature_set = feature_set
        self.plan = plan
        self.store = store
        self.aggregation = aggregation

    # Built with the first batch, reused by the next ones.
    @cached_property
    def _partials(self) -> TilePartials:
        return TilePartials(self.aggregation)

    @cached_property
    def _writer(self) -> TileWriter:
        return TileWriter(self.store, self.aggregation)

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        fs = self.feature_set
        plan = self.aggregation
        store = self.store
        batch_id = ctx.version
        progress = plan.tile_table.name
        previous = store.progress_before(progress, batch_id)
        lateness = int(fs.allowed_lateness.total_seconds() * 1_000_000)
        watermark = previous - lateness if previous is not None else None
        # One job: the on-time rows' partials are merged into the tiles, and the batch is
        # counted on the way (late rows included); late rows, if any, cost a second one.
        on_time = computed.observed_rows(late_before=watermark)
        writer = self._writer
        tiles = writer.write(
            self._partials(writer.partition(on_time)), batch_id, fresh_after=previous
        )
        late_count = computed.record_observed_counts()
        if late_count:
            newest = datetime.fromtimestamp((previous or 0) / 1e6, UTC).isoformat()
            write_late_events(
                fs,
                self.plan,
                computed.rows.where(event_micros(fs) < F.lit(watermark)),
                ctx,
                sources=computed.sources,
                reason=(
                    f"event time is older than the watermark: newest event time "
                    f"seen {newest} minus allowed_lateness {fs.allowed_lateness}"
                ),
                watermark=watermark,
                destination="late",
            )
        candidates = [v for v in (previous, computed.max_event_micros) if v is not None]
        if candidates:
            store.record_progress(progress, batch_id, max(candidates))
        return Outcome(
            rows_written=tiles, tiles_written=tiles, late_events=late_count, watermark=watermark
        )


class SeedOnlineTiles:
    """The online tiles of a backfilled range, written whole at the run's version.

    The range's tiles belong to the backfill alone (the streams set earlier events
    aside), so they are written without reading; tiles no window can read any more at
    the current time are skipped.
    """

    def __init__(self, store: OnlineStore, aggregation: AggregationPlan) -> None:
        self.store = store
        self.aggregation = aggregation

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        if not computed.row_count:
            return Outcome()
        plan = self.aggregation
        store = self.store
        version = ctx.version
        seeded = now_micros()
        now_seconds = seeded // 1_000_000
        # Recorded before writing: a read that needs a skipped tile is refused from now on.
        store.mark_tiles_seeded(plan.tile_table, seeded)
        written = write_partials(
            tile_partials(computed.rows, plan), store, plan, version, overwrite_at=now_seconds
        )
        return Outcome(tiles_written=written)


class OfflineRows:
    """Every feature row into the offline Delta table, partitioned by event date."""

    def __init__(self, feature_set: FeatureSet, plan: StoragePlan) -> None:
        self.feature_set = feature_set
        self.plan = plan
        self.predicate = _time_predicate(feature_set)

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        if not computed.row_count and ctx.replace is None:
            return Outcome()
        fs = self.feature_set
        out = computed.rows.withColumn(EVENT_DATE_COLUMN, F.to_date(F.col(fs.timestamp_column)))
        write_delta(
            out,
            self.plan.features_path,
            delta_mode(ctx, "features", self.predicate),
            partition_by=[EVENT_DATE_COLUMN],
            merge_schema=True,
        )
        return Outcome(rows_written=computed.row_count)


class OfflineTiles:
    """Tile partials of every event into the offline tile table (Delta).

    Offline point-in-time reads merge these partials, so they never need the online run;
    late events count here (the watermark is the online store's concern).
    """

    def __init__(self, plan: StoragePlan, aggregation: AggregationPlan) -> None:
        self.plan = plan
        self.aggregation = aggregation

    @staticmethod
    def _predicate(owned: EventRange) -> str:
        # Ranges are aligned to whole days, so a range's tiles start inside it.
        start = owned.start // 1_000_000 if owned.start is not None else None
        end = owned.end // 1_000_000 if owned.end is not None else None
        return range_sql(_TILE_START, start, end)

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        if not computed.row_count and ctx.replace is None:
            return Outcome()
        partials = encode_partials(tile_partials(computed.rows, self.aggregation), self.aggregation)
        partials = partials.withColumn("batch_id", F.lit(ctx.version).cast("long"))
        write_delta(partials, self.plan.tiles_path, delta_mode(ctx, "tiles", self._predicate))
        return Outcome()
