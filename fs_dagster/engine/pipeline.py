"""The ingestion pipelines: one micro-batch body shared by online and offline ingestion.

Both pipelines are Spark streaming queries over the feature set's source with their own
checkpoint; they differ only in trigger and sink:

- **online**: triggered every ``online_trigger_interval`` seconds; upserts the latest
  vector per key (by event time) into the online store and feeds online-attached
  auxiliary sinks;
- **offline**: ``availableNow`` (everything new since the last run, then stop); appends
  every feature row to the offline Delta table, partitioned by event date.

Each micro-batch sets malformed records aside in the dead-letter Delta table. Delta
writes carry ``txnAppId`` (the query's checkpoint-stable id) and ``txnVersion`` (the
batch id), so a batch replayed after a crash is skipped by Delta: every source record
lands in the offline store exactly once. Online upserts are idempotent by construction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.streaming.query import StreamingQuery
from pyspark.sql.types import (
    StructType,
)

from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.sinks import KafkaSink
from fs_dagster.engine.aggregates import (
    aggregation_layout,
    aggregation_plan,
    apply_partials,
    encode_partials,
    tile_partials,
)
from fs_dagster.engine.encoding import online_kind
from fs_dagster.engine.sources import (
    ERROR_COLUMN,
    PAYLOAD_COLUMN,
    POSITION_COLUMN,
    kafka_client_options,
    read_source,
    user_columns,
)
from fs_dagster.engine.transform import apply_transformation, feature_fields, output_schema
from fs_dagster.planning.plan import EVENT_DATE_COLUMN, Pipeline, StoragePlan
from fs_dagster.stores.online.base import (
    EVENT_MICROS_COLUMN,
    ColumnKind,
    OnlineColumn,
    OnlineStore,
    OnlineTable,
)

__all__ = [
    "BatchReport",
    "IngestionQuery",
    "online_table",
    "start_ingestion",
]

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class BatchReport:
    """What one micro-batch did; reported to Dagster as metadata.

    Attributes:
        pipeline: ``online`` or ``offline``.
        batch_id: Spark's batch id (stable across replays of the same batch).
        rows_in: source records in the batch.
        rows_valid: records that parsed and carried their key and timestamp.
        rows_written: feature rows written (latest per key online, all rows offline).
        dead_letters: records set aside in the dead-letter table.
        max_event_time: newest event time in the batch (UTC), if any.
        freshness_seconds: seconds from the newest event time in the batch to the end of
            the write (the best case of the batch; older events waited longer).
        duration_seconds: wall time of the batch.
        finished_at: when the batch finished (UTC).
        tiles_written: tile states written (aggregated feature sets, online).
        late_events: events older than the watermark, set aside.
        watermark: the batch's watermark (aggregated feature sets).
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


def _encode(column: str, kind: ColumnKind) -> Any:
    col = F.col(column)
    if kind == "timestamp":
        return F.unix_micros(col.cast("timestamp")).alias(column)
    if kind == "json":
        return F.to_json(col).alias(column)
    if kind == "decimal":
        return col.cast("string").alias(column)
    return col.alias(column)


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


class _BatchWriter:
    """The ``foreachBatch`` body of one ingestion query."""

    def __init__(
        self,
        feature_set: FeatureSet,
        plan: StoragePlan,
        pipeline: Pipeline,
        *,
        schema: StructType,
        online_store: OnlineStore | None,
        on_batch: Callable[[BatchReport], None] | None,
        aggregation: AggregationPlan | None = None,
    ):
        self.feature_set = feature_set
        self.plan = plan
        self.pipeline = pipeline
        self.schema = schema
        self.online_store = online_store
        self.table = online_table(feature_set, schema)
        self.on_batch = on_batch
        self.aggregation = aggregation
        self.sinks = [s for s in feature_set.auxiliary_sinks if s.pipeline == pipeline]
        self.query_id: str | None = None
        self.started = threading.Event()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        # The query id is stable for a checkpoint; wait until start() returned it.
        self.started.wait(timeout=60)
        began = time.monotonic()
        batch = batch.persist()
        try:
            report = self._process(batch, batch_id, began)
        finally:
            batch.unpersist()
        if self.on_batch is not None:
            self.on_batch(report)

    def _process(self, batch: DataFrame, batch_id: int, began: float) -> BatchReport:
        fs = self.feature_set
        counts = batch.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.col(ERROR_COLUMN)).alias("bad"),
        ).first()
        rows_in = int(counts["rows"]) if counts else 0
        bad = int(counts["bad"]) if counts else 0

        good = batch.where(F.col(ERROR_COLUMN).isNull()).select(*user_columns(batch))
        features = apply_transformation(fs, {fs.source.name: good})
        features = features.persist()
        try:
            null_keys = F.lit(False)
            for column in [*fs.key, fs.timestamp_column]:
                null_keys = null_keys | F.col(column).isNull()
            derived_bad = features.where(null_keys)
            valid = features.where(~null_keys)
            # One job for every count the batch needs (each Spark action costs ~0.3 s).
            stats = features.agg(
                F.count(F.when(null_keys, F.lit(1))).alias("derived_bad"),
                F.count(F.when(~null_keys, F.lit(1))).alias("n"),
                F.max(
                    F.when(~null_keys, F.unix_micros(F.col(fs.timestamp_column).cast("timestamp")))
                ).alias("max_micros"),
                # Keys written are only counted where rows are written per key.
                (
                    F.count_distinct(F.when(~null_keys, F.struct(*[F.col(k) for k in fs.key])))
                    if self.pipeline == "online" and self.aggregation is None
                    else F.lit(0)
                ).alias("keys"),
            ).first()
            derived = int(stats["derived_bad"]) if stats else 0
            rows_valid = int(stats["n"]) if stats else 0
            distinct_keys = int(stats["keys"]) if stats else 0
            max_micros: int | None = stats["max_micros"] if stats else None
            if bad or derived:
                self._dead_letters(batch, derived_bad, batch_id)
            dead_count = bad + derived
            written = tiles = late = 0
            watermark: int | None = None
            if rows_valid:
                if self.pipeline == "online" and self.aggregation is not None:
                    tiles, late, watermark = self._write_aggregates(valid, batch_id, max_micros)
                    written = tiles
                elif self.pipeline == "online":
                    self._write_online(valid)
                    written = distinct_keys
                else:
                    self._write_offline(valid, batch_id)
                    written = rows_valid
                for sink in self.sinks:
                    self._write_kafka_sink(valid, sink)
        finally:
            features.unpersist()
        finished = datetime.now(UTC)
        max_event = _EPOCH + timedelta(microseconds=max_micros) if max_micros is not None else None
        return BatchReport(
            pipeline=self.pipeline,
            batch_id=batch_id,
            rows_in=rows_in,
            rows_valid=rows_valid,
            rows_written=written,
            dead_letters=dead_count,
            max_event_time=max_event,
            freshness_seconds=(finished - max_event).total_seconds() if max_event else None,
            duration_seconds=time.monotonic() - began,
            finished_at=finished,
            tiles_written=tiles,
            late_events=late,
            watermark=(
                datetime.fromtimestamp(watermark / 1e6, UTC) if watermark is not None else None
            ),
        )

    def _dead_letters(self, batch: DataFrame, derived_bad: DataFrame, batch_id: int) -> None:
        fs = self.feature_set
        parsed_bad = batch.where(F.col(ERROR_COLUMN).isNotNull()).select(
            F.col(PAYLOAD_COLUMN).alias("payload"),
            F.col(POSITION_COLUMN).alias("position"),
            F.col(ERROR_COLUMN).alias("reason"),
        )
        missing = F.lit(None).cast("string")
        for column in reversed([*fs.key, fs.timestamp_column]):
            missing = F.when(
                F.col(column).isNull(), F.lit(f"transformation output has no value for '{column}'")
            ).otherwise(missing)
        output_bad = derived_bad.select(
            F.to_json(F.struct(*[F.col(c) for c in derived_bad.columns])).alias("payload"),
            F.lit("transformation output").alias("position"),
            missing.alias("reason"),
        )
        dead = parsed_bad.unionByName(output_bad).select(
            F.lit(fs.name).alias("feature_set"),
            F.lit(self.pipeline).alias("pipeline"),
            F.lit(fs.source.name).alias("source"),
            "position",
            "payload",
            "reason",
            F.lit(batch_id).cast("long").alias("batch_id"),
            F.current_timestamp().alias("recorded_at"),
        )
        (
            dead.write.format("delta")
            .mode("append")
            .option("txnAppId", f"{self.query_id}-dead-letter")
            .option("txnVersion", batch_id)
            .option("mergeSchema", "true")
            .save(self.plan.dead_letter_path)
        )

    def _write_online(self, valid: DataFrame) -> None:
        fs = self.feature_set
        table = self.table
        store = self.online_store
        assert store is not None
        ordered = Window.partitionBy(*[F.col(k) for k in fs.key]).orderBy(
            F.col(EVENT_MICROS_COLUMN).desc()
        )
        latest = (
            valid.withColumn(
                EVENT_MICROS_COLUMN, F.unix_micros(F.col(fs.timestamp_column).cast("timestamp"))
            )
            .withColumn("__fs_rank", F.row_number().over(ordered))
            .where(F.col("__fs_rank") == 1)
            .select(
                *[_encode(c.name, c.kind) for c in table.keys],
                F.col(EVENT_MICROS_COLUMN),
                *[_encode(c.name, c.kind) for c in table.features],
            )
        )

        def write_partition(rows: Any) -> None:
            store.write(table, (row.asDict() for row in rows))

        latest.foreachPartition(write_partition)

    def _write_aggregates(
        self, valid: DataFrame, batch_id: int, newest_in_batch: int | None
    ) -> tuple[int, int, int | None]:
        """Late split, tile partials into the online store and the offline tile table.

        ``newest_in_batch`` is the batch's newest event time in microseconds.
        """
        fs = self.feature_set
        plan = self.aggregation
        store = self.online_store
        assert plan is not None and store is not None
        micros = F.unix_micros(F.col(fs.timestamp_column).cast("timestamp"))
        progress = plan.tile_table.name
        previous = store.progress_before(progress, batch_id)
        lateness = int(fs.allowed_lateness.total_seconds() * 1_000_000)
        watermark = previous - lateness if previous is not None else None
        late_count = 0
        on_time = valid
        if watermark is not None:
            on_time = valid.where(micros >= F.lit(watermark))
            late_count = self._write_late(
                valid.where(micros < F.lit(watermark)), batch_id, watermark, previous
            )
        encoded = encode_partials(tile_partials(on_time, plan), plan).persist()
        try:
            tiles = encoded.count()
            if tiles:

                def write_partition(rows: Any) -> None:
                    partials = (row.asDict() for row in rows)
                    apply_partials(store, plan, partials, batch_id, fresh_after=previous)

                encoded.foreachPartition(write_partition)
                (
                    encoded.withColumn("batch_id", F.lit(batch_id).cast("long"))
                    .write.format("delta")
                    .mode("append")
                    .option("txnAppId", f"{self.query_id}-tiles")
                    .option("txnVersion", batch_id)
                    .save(self.plan.tiles_path)
                )
        finally:
            encoded.unpersist()
        candidates = [v for v in (previous, newest_in_batch) if v is not None]
        if candidates:
            store.record_progress(progress, batch_id, max(candidates))
        return tiles, late_count, watermark

    def _write_late(
        self, late: DataFrame, batch_id: int, watermark: int, newest: int | None
    ) -> int:
        fs = self.feature_set
        late = late.persist()
        try:
            count = late.count()
            if not count:
                return 0
            reason = (
                f"event time is older than the watermark: newest event time seen "
                f"{datetime.fromtimestamp((newest or 0) / 1e6, UTC).isoformat()} minus "
                f"allowed_lateness {fs.allowed_lateness}"
            )
            (
                late.select(
                    F.lit(fs.name).alias("feature_set"),
                    F.to_json(F.struct(*[F.col(k) for k in fs.key])).alias("key"),
                    F.col(fs.timestamp_column).cast("timestamp").alias("event_time"),
                    F.timestamp_micros(F.lit(watermark)).alias("watermark"),
                    F.lit(reason).alias("reason"),
                    F.to_json(F.struct(*[F.col(c) for c in late.columns])).alias("payload"),
                    F.lit(batch_id).cast("long").alias("batch_id"),
                    F.current_timestamp().alias("recorded_at"),
                )
                .write.format("delta")
                .mode("append")
                .option("txnAppId", f"{self.query_id}-late")
                .option("txnVersion", batch_id)
                .save(self.plan.late_events_path)
            )
            return count
        finally:
            late.unpersist()

    def _write_offline(self, valid: DataFrame, batch_id: int) -> None:
        fs = self.feature_set
        out = valid.withColumn(EVENT_DATE_COLUMN, F.to_date(F.col(fs.timestamp_column)))
        (
            out.write.format("delta")
            .mode("append")
            .partitionBy(EVENT_DATE_COLUMN)
            .option("txnAppId", f"{self.query_id}-features")
            .option("txnVersion", batch_id)
            .option("mergeSchema", "true")
            .save(self.plan.features_path)
        )

    def _write_kafka_sink(self, valid: DataFrame, sink: KafkaSink) -> None:
        fs = self.feature_set
        records = valid.select(
            F.to_json(F.struct(*[F.col(k) for k in fs.key])).alias("key"),
            F.to_json(F.struct(*[F.col(c) for c in valid.columns])).alias("value"),
        )
        writer = records.write.format("kafka").option("topic", sink.topic)
        for key, value in kafka_client_options(sink.bootstrap_servers, sink.auth).items():
            writer = writer.option(key, value)
        for key, value in sink.options.items():
            writer = writer.option(key, value)
        writer.save()


def _check_single_source(feature_set: FeatureSet) -> None:
    if len(feature_set.data_sources) != 1:
        raise FeatureSetDefinitionError(
            feature_set.name,
            "data_sources",
            "a streaming feature set reads exactly one source; to read several Kafka "
            "topics use KafkaSource(topics=[...]) or topic_pattern",
        )


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

    Raises:
        FeatureSetDefinitionError: the transformation's output does not fit the feature
            set (checked before any record is read).
    """
    _check_single_source(feature_set)
    session = spark.newSession()
    schema = output_schema(session, feature_set)
    aggregation = aggregation_plan(feature_set, schema) if feature_set.is_aggregated else None
    if pipeline == "online":
        if online_store is None:
            raise ValueError("online ingestion needs an online store")
        if aggregation is not None:
            online_store.ensure_tile_table(aggregation.tile_table)
            online_store.record_layout(aggregation_layout(aggregation))
        else:
            online_store.ensure_table(online_table(feature_set, schema))
    required = [*feature_set.key, feature_set.timestamp_column]
    stream = read_source(session, feature_set.source, required_columns=required)
    writer = _BatchWriter(
        feature_set,
        plan,
        pipeline,
        schema=schema,
        online_store=online_store,
        on_batch=on_batch,
        aggregation=aggregation,
    )
    checkpoint = plan.checkpoint_path(pipeline)
    stream_writer = (
        stream.writeStream.queryName(f"fs_{feature_set.storage_name}_{pipeline}")
        .option("checkpointLocation", checkpoint)
        .foreachBatch(writer)
    )
    if pipeline == "offline":
        stream_writer = stream_writer.trigger(availableNow=True)
    else:
        interval = (
            feature_set.online_trigger_interval if trigger_interval is None else trigger_interval
        )
        stream_writer = stream_writer.trigger(processingTime=f"{interval} seconds")
    reports: list[BatchReport] = []

    def collect(report: BatchReport) -> None:
        reports.append(report)
        if on_batch is not None:
            on_batch(report)

    writer.on_batch = collect
    query = stream_writer.start()
    writer.query_id = str(query.id)
    writer.started.set()
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
