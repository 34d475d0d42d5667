"""Auxiliary Kafka sinks: the documented JSON message for each computed feature vector.

A message's key is the entity key (the key value itself for a one-column key, a JSON
object of the key columns otherwise); its value::

    {"featureset_name": "user-features", "featureset_id": "<uuid of the name>",
     "timestamp": "2026-12-01T10:00:00.000000Z",
     "key": {"user_id": "u1"}, "features": {"reg_country": "US", ...}}

What a vector is depends on the feature set, chosen once when a run starts:

- row-level, either attachment: one message per feature row of the batch, stamped with
  the row's event time;
- aggregated, online attachment: one message per key the batch updated, with its window
  values read back from the online tiles just written, stamped with the emission time;
- aggregated, offline attachment: the same from the offline tile partials just written.

Delivery is at least once: Spark's Kafka producer flushes before a batch completes, a
failed send fails the batch (and the run, which its supervisor restarts), and a batch
replayed after a crash publishes again.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.types import StringType, StructField, StructType

from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.sinks import KafkaSink, featureset_id
from fs_dagster.engine.aggregates import point_in_time_aggregates, read_aggregates
from fs_dagster.engine.computation import BatchContext, Computed
from fs_dagster.engine.encoding import spark_type
from fs_dagster.engine.sources import check_kafka_access, kafka_client_options
from fs_dagster.engine.writers import Outcome
from fs_dagster.planning.plan import StoragePlan
from fs_dagster.stores.online.base import OnlineStore, now_micros

__all__ = [
    "KafkaSinkWriter",
    "OfflineWindowVectors",
    "OnlineWindowVectors",
    "RowVectors",
    "SinkVectors",
]

_LOG = logging.getLogger(__name__)
_ISO_UTC = "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'"
_MESSAGE_SCHEMA = StructType(
    [StructField("key", StringType(), False), StructField("value", StringType(), False)]
)


class SinkVectors(Protocol):
    """Turns a computed batch into the sink's messages (``key``, ``value`` strings)."""

    def messages(self, computed: Computed) -> tuple[DataFrame, int] | None:
        """The batch's messages and their count, or ``None`` when there are none."""
        ...


def _utc_iso(column: Column) -> Column:
    # Rendered in the session's time zone: shift first, so the text is UTC wall time.
    session_zone = F.current_timezone()
    return F.date_format(F.to_utc_timestamp(column.cast("timestamp"), session_zone), _ISO_UTC)


def _message_frame(
    feature_set: FeatureSet, frame: DataFrame, timestamp: Column, features: Sequence[str]
) -> DataFrame:
    """``frame`` (key columns and features) as Kafka messages, built on the executors."""
    keys = list(feature_set.key)
    message_key = (
        F.col(keys[0]).cast("string")
        if len(keys) == 1
        else F.to_json(F.struct(*[F.col(k) for k in keys]))
    )
    value = F.to_json(
        F.struct(
            F.lit(feature_set.name).alias("featureset_name"),
            F.lit(featureset_id(feature_set.name)).alias("featureset_id"),
            timestamp.alias("timestamp"),
            F.struct(*[F.col(k) for k in keys]).alias("key"),
            F.struct(*[F.col(f) for f in features]).alias("features"),
        ),
        # Nulls are values too: a feature without one is sent as null, not left out.
        {"ignoreNullFields": "false", "timestampFormat": _ISO_UTC.replace("'Z'", "XXX")},
    )
    return frame.select(message_key.alias("key"), value.alias("value"))


class RowVectors:
    """Row-level sets: one message per feature row, stamped with its event time."""

    def __init__(self, feature_set: FeatureSet, features: Sequence[str]) -> None:
        self.feature_set = feature_set
        self.features = list(features)

    def messages(self, computed: Computed) -> tuple[DataFrame, int] | None:
        if not computed.row_count:
            return None
        fs = self.feature_set
        timestamp = _utc_iso(F.col(fs.timestamp_column))
        frame = _message_frame(fs, computed.rows, timestamp, self.features)
        return frame, computed.row_count


def _updated_keys(feature_set: FeatureSet, computed: Computed) -> list[tuple[Any, ...]]:
    rows = computed.rows.select(*feature_set.key).distinct().collect()
    return [tuple(row) for row in rows]


def _plain(value: Any) -> Any:
    """A value as JSON holds it: NaN and pd.NA as null, times as ISO-8601 UTC text."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        moment = pd.Timestamp(value)
        moment = moment.tz_localize(UTC) if moment.tzinfo is None else moment.tz_convert(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return value


class OnlineWindowVectors:
    """Aggregated sets, online: per key the batch updated, its window values now.

    Read back from the online tiles the batch has just written (the sink writer runs
    after the tile writer), through the online read path, so a message holds what
    ``get_online_features`` serves at that moment.
    """

    def __init__(
        self, feature_set: FeatureSet, store: OnlineStore, aggregation: AggregationPlan
    ) -> None:
        self.feature_set = feature_set
        self.store = store
        self.aggregation = aggregation

    def messages(self, computed: Computed) -> tuple[DataFrame, int] | None:
        if not computed.row_count:
            return None
        fs = self.feature_set
        keys = _updated_keys(fs, computed)
        emitted = now_micros()
        values = read_aggregates(self.store, self.aggregation, keys, emitted)
        names = [o.name for o in self.aggregation.outputs]
        stamp = _plain(pd.Timestamp(emitted, unit="us"))
        fid = featureset_id(fs.name)
        records = []
        for row in values.to_dict(orient="records"):
            key = {k: _plain(row[k]) for k in fs.key}
            message_key = str(key[fs.key[0]]) if len(fs.key) == 1 else json.dumps(key)
            value = {
                "featureset_name": fs.name,
                "featureset_id": fid,
                "timestamp": stamp,
                "key": key,
                "features": {n: _plain(row[n]) for n in names},
            }
            records.append((message_key, json.dumps(value)))
        spark = computed.rows.sparkSession
        return spark.createDataFrame(records, _MESSAGE_SCHEMA), len(records)


class OfflineWindowVectors:
    """Aggregated sets, offline: per key the batch updated, its window values now.

    Computed from the offline tile partials the batch has just written, by the offline
    point-in-time read, so the offline run needs no online store.
    """

    def __init__(
        self, feature_set: FeatureSet, plan: StoragePlan, aggregation: AggregationPlan
    ) -> None:
        self.feature_set = feature_set
        self.plan = plan
        self.aggregation = aggregation

    def messages(self, computed: Computed) -> tuple[DataFrame, int] | None:
        if not computed.row_count:
            return None
        fs = self.feature_set
        spark = computed.rows.sparkSession
        at = "__fs_emitted_at"
        emitted = now_micros()
        population = (
            computed.rows.select(*fs.key)
            .distinct()
            .withColumn(at, F.timestamp_micros(F.lit(emitted)))
            .persist()
        )
        try:
            count = population.count()
            tiles = spark.read.format("delta").load(self.plan.tiles_path)
            types = {c: spark_type(k) for c, k in self.aggregation.column_kinds.items()}
            values = point_in_time_aggregates(self.aggregation, population, tiles, at, types)
            names = [o.name for o in self.aggregation.outputs]
            frame = _message_frame(fs, values, _utc_iso(F.col(at)), names).persist()
            frame.count()  # materialized before the population is released
        finally:
            population.unpersist()
        return frame, count


class KafkaSinkWriter:
    """Computed feature vectors to an auxiliary Kafka topic, at least once."""

    def __init__(self, feature_set: FeatureSet, sink: KafkaSink, vectors: SinkVectors) -> None:
        self.feature_set = feature_set
        self.sink = sink
        self.vectors = vectors
        # When the run starts: a refused login or an unreachable broker fails it at once,
        # with a clear message, instead of at the first batch that has messages.
        absent = check_kafka_access(
            "Kafka sink", sink.name, sink.bootstrap_servers, sink.auth_configuration, [sink.topic]
        )
        if absent:
            _LOG.warning(
                "Kafka sink '%s' of '%s': topic '%s' does not exist on %s; the first write "
                "creates it only if the broker auto-creates topics",
                sink.name,
                feature_set.name,
                sink.topic,
                sink.bootstrap_servers,
            )

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        built = self.vectors.messages(computed)
        if built is None:
            return Outcome(sink_messages={self.sink.name: 0})
        messages, count = built
        try:
            writer = messages.write.format("kafka").option("topic", self.sink.topic)
            client = kafka_client_options(self.sink.bootstrap_servers, self.sink.auth_configuration)
            for key, value in {**client, **self.sink.options}.items():
                writer = writer.option(key, value)
            writer.save()
        finally:
            if messages.is_cached:
                messages.unpersist()
        return Outcome(sink_messages={self.sink.name: count})
