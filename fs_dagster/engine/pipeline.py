"""The streaming triggers: online and offline ingestion of a feature set's stream.

Both pipelines are Spark streaming queries over the feature set's source with their own
checkpoint. Each micro-batch runs the one feature computation
(:func:`fs_dagster.engine.computation.compute`) and hands its result to the writers the
pipeline chose when it started (:func:`stream_writers`):

- **online**: triggered every ``online_trigger_interval`` seconds; upserts the latest
  vector per key (by event time), or merges tile partials after the watermark split,
  into the online store, and feeds online-attached auxiliary sinks;
- **offline**: ``availableNow`` (everything new since the last run, then stop); appends
  every feature row and, for aggregated sets, the tile partials of every event to the
  offline Delta tables.

Delta appends carry ``txnAppId`` (the query's checkpoint-stable id and the destination)
and ``txnVersion`` (the batch id), so a batch replayed after a crash is skipped by Delta:
every source record lands in the offline store exactly once. Online writes are versioned
and idempotent. When the feature set has a backfill, events before its ``end_date``
belong to the backfill: both streams set them aside (counted, and kept in the
late-events table) instead of counting them twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.streaming.query import StreamingQuery
from pyspark.sql.types import StructType

from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.aggregates import aggregation_plan, prepare_online_tiles
from fs_dagster.engine.archive import RawArchive
from fs_dagster.engine.combined import CombinedFeatures, OnlineReader
from fs_dagster.engine.computation import (
    BatchContext,
    Computation,
    Computed,
    EventRange,
    to_micros,
)
from fs_dagster.engine.encoding import online_kind
from fs_dagster.engine.sinks import (
    KafkaSinkWriter,
    OfflineWindowVectors,
    OnlineWindowVectors,
    RowVectors,
    SinkVectors,
)
from fs_dagster.engine.sources import ERROR_COLUMN, read_source, user_columns
from fs_dagster.engine.transform import apply_transformation, feature_fields, output_schema
from fs_dagster.engine.updates import CombinedUpdates, UpdateCallback
from fs_dagster.engine.writers import (
    BatchWriters,
    DeadLetters,
    OfflineRows,
    OfflineTiles,
    OnlineRows,
    OnlineTiles,
    Outcome,
    SetAside,
    Writer,
)
from fs_dagster.planning.plan import Pipeline, StoragePlan
from fs_dagster.stores.online.base import OnlineColumn, OnlineStore, OnlineTable

__all__ = [
    "BatchReport",
    "IngestionQuery",
    "online_table",
    "report",
    "start_ingestion",
    "stream_range",
    "stream_writers",
]


@dataclass(frozen=True)
class BatchReport:
    """What one micro-batch did; reported to Dagster as metadata.

    Attributes:
        pipeline: ``online``, ``offline``, ``backfill`` or ``batch``.
        batch_id: Spark's batch id (stable across replays of the same batch), or a
            ranged run's version.
        rows_in: source records in the batch.
        rows_valid: records that parsed and carried their key and timestamp.
        rows_written: feature rows written (latest per key online, all rows offline,
            tiles for online tile writes).
        dead_letters: records set aside in the dead-letter table.
        max_event_time: newest event time in the batch (UTC), if any.
        freshness_seconds: seconds from the newest event time in the batch to the end of
            the write (the best case of the batch; older events waited longer).
        duration_seconds: wall time of the batch.
        finished_at: when the batch finished (UTC).
        tiles_written: online tile states written (aggregated feature sets).
        late_events: events older than the watermark, set aside (online tiles).
        watermark: the batch's watermark (aggregated feature sets, online).
        set_aside: events outside the range the trigger owns (before a backfill's
            ``end_date`` for the streams), kept in the late-events table.
        sink_messages: messages published per auxiliary sink name.
    """

    pipeline: str
    batch_id: int
    rows_in: int
    rows_valid: int
    rows_written: int
    dead_letters: int
    max_event_time: datetime | None
    freshness_seconds: float | None
    duration_seconds: float
    finished_at: datetime
    tiles_written: int = 0
    late_events: int = 0
    watermark: datetime | None = None
    set_aside: int = 0
    sink_messages: Mapping[str, int] = field(default_factory=dict)


def online_table(feature_set: FeatureSet, schema: StructType) -> OnlineTable:
    """The online table layout of ``feature_set`` given its output schema."""
    types = {f.name: f.dataType for f in schema.fields}
    return OnlineTable(
        name=feature_set.storage_name,
        keys=tuple(OnlineColumn(k, online_kind(types[k])) for k in feature_set.key),
        features=tuple(
            OnlineColumn(name, online_kind(dt)) for name, dt in feature_fields(feature_set, schema)
        ),
        timestamp_column=feature_set.timestamp_column,
        ttl_seconds=feature_set.online_ttl.total_seconds() if feature_set.online_ttl else None,
    )


def stream_range(feature_set: FeatureSet) -> EventRange:
    """The event times the streams own: all of them, or from a backfill's ``end_date``."""
    backfill = feature_set.backfill
    if backfill is None:
        return EventRange(None, None, "")
    return EventRange(
        start=to_micros(backfill.end),
        end=None,
        reason=(
            f"event time is before the backfill's end_date {backfill.end.isoformat()}: "
            "the backfill counts it, the stream does not"
        ),
    )


def report(
    pipeline: str, batch_id: int, computed: Computed, outcomes: list[Outcome], began: float
) -> BatchReport:
    """The :class:`BatchReport` of one run of the computation and its writers."""
    finished = datetime.now(UTC)
    max_event = computed.max_event_time
    watermarks = [o.watermark for o in outcomes if o.watermark is not None]
    return BatchReport(
        pipeline=pipeline,
        batch_id=batch_id,
        rows_in=computed.rows_in,
        rows_valid=computed.row_count + computed.outside_count,
        # Offline rows, online rows (keys) or online tiles: the largest destination's.
        rows_written=max((o.rows_written for o in outcomes), default=0),
        dead_letters=sum(o.dead_letters for o in outcomes),
        max_event_time=max_event,
        freshness_seconds=(finished - max_event).total_seconds() if max_event else None,
        duration_seconds=time.monotonic() - began,
        finished_at=finished,
        tiles_written=sum(o.tiles_written for o in outcomes),
        late_events=sum(o.late_events for o in outcomes),
        set_aside=sum(o.set_aside for o in outcomes),
        watermark=(datetime.fromtimestamp(watermarks[0] / 1e6, UTC) if watermarks else None),
        sink_messages={name: n for o in outcomes for name, n in o.sink_messages.items()},
    )


@dataclass
class IngestionQuery:
    """A running ingestion query and the reports of its finished batches."""

    query: StreamingQuery
    feature_set: FeatureSet
    pipeline: Pipeline
    reports: list[BatchReport] = field(default_factory=list)
    debug_query: StreamingQuery | None = None

    def stop(self) -> None:
        """Stop the query (and the debug query) gracefully."""
        if self.debug_query is not None and self.debug_query.isActive:
            self.debug_query.stop()
        if self.query.isActive:
            self.query.stop()


class _MicroBatch:
    """The ``foreachBatch`` body: compute, hand the result to each writer, report."""

    #: How long a batch waits for ``start()`` to hand over the query id.
    START_TIMEOUT_SECONDS = 600.0

    def __init__(
        self,
        computation: Computation,
        pipeline: Pipeline,
        writers: BatchWriters,
        on_batch: Callable[[BatchReport], None],
    ):
        self.feature_set = computation.feature_set
        self.computation = computation
        self.pipeline = pipeline
        self.writers = writers
        self.on_batch = on_batch
        self.query_id: str | None = None
        self.started = threading.Event()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        # The query id names the Delta transactions and is stable for a checkpoint;
        # without it exactly-once cannot hold, so a batch never runs without it.
        if not self.started.wait(timeout=self.START_TIMEOUT_SECONDS) or not self.query_id:
            raise RuntimeError(
                f"ingestion of '{self.feature_set.name}' has no query id after "
                f"{self.START_TIMEOUT_SECONDS:.0f} s; refusing to write batch {batch_id}"
            )
        began = time.monotonic()
        ctx = BatchContext(
            trigger=self.pipeline, version=batch_id, app_id=self.query_id, txn_version=batch_id
        )
        if self.computation.cache:
            batch = batch.persist()
        try:
            computed = self.computation.run({self.feature_set.source.name: batch})
            try:
                outcomes = self.writers.write(computed, ctx)
            finally:
                computed.release()
        finally:
            batch.unpersist()
        self.on_batch(report(self.pipeline, batch_id, computed, outcomes, began))


def stream_writers(
    feature_set: FeatureSet,
    plan: StoragePlan,
    pipeline: Pipeline,
    *,
    schema: StructType,
    online_store: OnlineStore | None,
    aggregation: AggregationPlan | None,
    updates: Writer | None = None,
) -> BatchWriters:
    """The destinations of one streaming pipeline, chosen once when it starts.

    Online: the online rows, or the online tiles (late events split off), then dead
    letters and rows before a backfill's end set aside. Offline, side by side: the offline
    rows, the raw-event archive, the offline tile partials of every event, dead letters
    and rows set aside. Both, after those: the sinks attached to the pipeline, then
    ``updates`` (the live combined-vector callback).
    """
    checks: list[Writer] = [DeadLetters(feature_set, plan), SetAside(feature_set, plan)]
    together: list[Writer]
    then: list[Writer] = []
    if pipeline == "online":
        if online_store is None:
            raise ValueError("online ingestion needs an online store")
        if aggregation is not None:
            together = [OnlineTiles(feature_set, plan, online_store, aggregation)]
        else:
            together = [OnlineRows(feature_set, online_store, online_table(feature_set, schema))]
        # After the online write, whose one job counts the batch on the way; their own
        # writes are rare (most batches have nothing to set aside).
        then += checks
    else:
        together = [OfflineRows(feature_set, plan), RawArchive(feature_set, plan)]
        if aggregation is not None:
            together.append(OfflineTiles(plan, aggregation))
        together += checks
    then += [
        KafkaSinkWriter(
            feature_set,
            sink,
            sink_vectors(
                feature_set,
                plan,
                pipeline,
                schema=schema,
                online_store=online_store,
                aggregation=aggregation,
            ),
        )
        for sink in feature_set.auxiliary_sinks
        if sink.pipeline == pipeline
    ]
    if updates is not None:
        then.append(updates)  # last: after every write of the batch
    return BatchWriters(together, then)


def sink_vectors(
    feature_set: FeatureSet,
    plan: StoragePlan,
    pipeline: Pipeline,
    *,
    schema: StructType,
    online_store: OnlineStore | None,
    aggregation: AggregationPlan | None,
) -> SinkVectors:
    """What a sink attached to ``pipeline`` publishes: feature rows, or window values of
    the keys a batch updated (read back from the tiles this pipeline writes)."""
    if aggregation is None:
        return RowVectors(feature_set, [name for name, _ in feature_fields(feature_set, schema)])
    if pipeline == "online":
        if online_store is None:
            raise ValueError("online ingestion needs an online store")
        return OnlineWindowVectors(feature_set, online_store, aggregation)
    return OfflineWindowVectors(feature_set, plan, aggregation)


def _check_single_source(feature_set: FeatureSet) -> None:
    if len(feature_set.data_sources) != 1:
        raise FeatureSetDefinitionError(
            feature_set.name,
            "data_sources",
            "a streaming feature set reads exactly one source; to read several Kafka "
            "topics use KafkaSource(topics=[...]) or topic_pattern",
        )


def _combined_updates(
    feature_set: FeatureSet,
    pipeline: Pipeline,
    *,
    schema: StructType,
    online_store: OnlineStore | None,
    on_update: UpdateCallback | None,
    features: CombinedFeatures | Sequence[str] | None,
) -> CombinedUpdates | None:
    """The writer of ``on_update``, if asked for."""
    if on_update is None:
        if features is not None:
            raise ValueError(f"'{feature_set.name}': features= only applies with on_update=")
        return None
    if pipeline != "online" or online_store is None:
        raise ValueError(
            f"'{feature_set.name}': on_update= needs the online pipeline and its online store "
            f"(got pipeline {pipeline!r}); offline runs update no online vector"
        )
    if not isinstance(features, CombinedFeatures):
        own = [name for name, _ in feature_fields(feature_set, schema)]
        features = CombinedFeatures.resolve(
            features if features is not None else [f"{feature_set.name}.*"],
            {feature_set.name: feature_set},
            lambda fs: fs.feature_names if fs.is_aggregated else own,
        )
    reader = OnlineReader(online_store)
    return CombinedUpdates(feature_set, features, reader, on_update, schema=schema)


def start_ingestion(
    spark: SparkSession,
    feature_set: FeatureSet,
    plan: StoragePlan,
    pipeline: Pipeline,
    *,
    online_store: OnlineStore | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    trigger_interval: float | None = None,
    debug_table: str | None = None,
    on_update: UpdateCallback | None = None,
    features: CombinedFeatures | Sequence[str] | None = None,
) -> IngestionQuery:
    """Check the feature set against Spark, then start its ingestion query.

    Args:
        spark: the session.
        feature_set: what to ingest.
        plan: where its checkpoint, offline tables and online table are.
        pipeline: ``online`` (continuous, into ``online_store``) or ``offline``
            (``availableNow`` into the offline Delta table).
        online_store: required for ``online``.
        on_batch: called with each batch's :class:`BatchReport` (from Spark's thread).
        trigger_interval: overrides the feature set's ``online_trigger_interval``.
        debug_table: also write the transformed stream to this Spark in-memory table,
            which ``spark.sql("SELECT * FROM <debug_table>")`` can query while it runs.
        on_update: ``online`` only: after each batch's online writes, called (on the
            driver) with the combined vector of each key the batch updated, as a dict
            (see :class:`~fs_dagster.engine.updates.CombinedUpdates`).
        features: the features of those vectors: references (``"<set>.<feature>"`` or
            ``"<set>.*"``) of this feature set, or a :class:`CombinedFeatures` spanning
            other sets too (``FeatureStore.ingest`` builds it from references); all
            features of this set by default.

    Raises:
        FeatureSetDefinitionError: the transformation's output does not fit the feature
            set (checked before any record is read).
        ValueError: ``on_update`` for the offline pipeline, or ``features`` that it cannot
            serve (see :class:`~fs_dagster.engine.updates.CombinedUpdates`).
    """
    _check_single_source(feature_set)
    session = spark.newSession()
    schema = output_schema(session, feature_set)
    aggregation = aggregation_plan(feature_set, schema) if feature_set.is_aggregated else None
    updates = _combined_updates(
        feature_set,
        pipeline,
        schema=schema,
        online_store=online_store,
        on_update=on_update,
        features=features,
    )
    if pipeline == "online":
        if online_store is None:
            raise ValueError("online ingestion needs an online store")
        # Adaptive execution re-plans at stage boundaries; for an online micro-batch of a
        # few thousand rows its planning costs more than it can save.
        session.conf.set("spark.sql.adaptive.enabled", "false")
        if aggregation is not None:
            prepare_online_tiles(online_store, aggregation)
        else:
            online_store.ensure_table(online_table(feature_set, schema))
    required = [*feature_set.key, feature_set.timestamp_column]
    stream = read_source(session, feature_set.source, required_columns=required)
    reports: list[BatchReport] = []

    def collect(report: BatchReport) -> None:
        reports.append(report)
        if on_batch is not None:
            on_batch(report)

    computation = Computation(
        feature_set,
        stream_range(feature_set),
        {feature_set.source.name: stream},
        # Offline runs hand every row to several writers (rows, archive, tiles): they read
        # a cached batch. An online batch (rows, or tiles) is written and counted by one
        # job and its latency counts, so it is not cached: caching costs more than it
        # saves there.
        cache=pipeline == "offline",
    )
    body = _MicroBatch(
        computation,
        pipeline,
        stream_writers(
            feature_set,
            plan,
            pipeline,
            schema=schema,
            online_store=online_store,
            aggregation=aggregation,
            updates=updates,
        ),
        collect,
    )
    stream_writer = (
        stream.writeStream.queryName(f"fs_{feature_set.storage_name}_{pipeline}")
        .option("checkpointLocation", plan.checkpoint_path(pipeline))
        .foreachBatch(body)
    )
    if pipeline == "offline":
        stream_writer = stream_writer.trigger(availableNow=True)
    else:
        interval = (
            feature_set.online_trigger_interval if trigger_interval is None else trigger_interval
        )
        stream_writer = stream_writer.trigger(processingTime=f"{interval} seconds")
    query = stream_writer.start()
    body.query_id = str(query.id)
    body.started.set()
    debug_query = None
    if debug_table is not None:
        # On the caller's session, so that spark.sql("SELECT * FROM <debug_table>") there
        # sees the in-memory table (temporary views belong to one session).
        debug_stream = read_source(spark, feature_set.source, required_columns=required)
        good = debug_stream.where(F.col(ERROR_COLUMN).isNull()).select(*user_columns(debug_stream))
        debug_query = (
            apply_transformation(feature_set, {feature_set.source.name: good})
            .writeStream.format("memory")
            .queryName(debug_table)
            .outputMode("append")
            .start()
        )
    return IngestionQuery(
        query=query,
        feature_set=feature_set,
        pipeline=pipeline,
        reports=reports,
        debug_query=debug_query,
    )
