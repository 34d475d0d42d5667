"""Auxiliary sinks in Dagster: an asset per sink topic, its health as observations.

Each sink topic is an external asset downstream of the store its attachment point
publishes with (the online asset, or the offline asset). The run that publishes reports
what it wrote as observations of the sink asset (messages written, last write); the
online supervisor reports the runs that failed. A Kafka source reading a sink's topic
depends on the sink asset, so chained feature sets show their edge in the asset graph.
"""

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from dagster import AssetKey, AssetObservation, AssetSpec, MetadataValue

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.sinks import KafkaSink, featureset_id
from fs_dagster.definitions.sources import AnySource, KafkaSource
from fs_dagster.engine.pipeline import BatchReport
from fs_dagster.orchestration.naming import (
    metadata_key,
    offline_asset_key,
    online_asset_key,
    sink_asset_key,
)

__all__ = ["chained_sinks", "failure_observations", "sink_observations", "sink_spec"]


def _servers(bootstrap_servers: str) -> frozenset[str]:
    return frozenset(s.strip() for s in bootstrap_servers.split(",") if s.strip())


def sink_spec(feature_set: FeatureSet, sink: KafkaSink) -> AssetSpec:
    """The asset standing for ``sink``'s topic."""
    upstream = (
        online_asset_key(feature_set)
        if sink.pipeline == "online"
        else offline_asset_key(feature_set)
    )
    return AssetSpec(
        key=sink_asset_key(feature_set, sink),
        deps=[upstream],
        description=(
            f"Kafka topic '{sink.topic}' on {sink.bootstrap_servers}: the features of "
            f"'{feature_set.name}', published by its {sink.pipeline} run (at least once)"
        ),
        group_name=feature_set.storage_name,
        kinds={"kafka"},
        metadata={
            metadata_key("topic"): sink.topic,
            metadata_key("bootstrap_servers"): sink.bootstrap_servers,
            metadata_key("message_format"): sink.message_format.value,
            metadata_key("attachment_point"): sink.pipeline,
            metadata_key("featureset_id"): featureset_id(feature_set.name),
        },
    )


def chained_sinks(source: AnySource, feature_sets: Sequence[FeatureSet]) -> list[AssetKey]:
    """The sink assets whose topic ``source`` reads (same topic, same brokers)."""
    if not isinstance(source, KafkaSource):
        return []
    servers = _servers(source.bootstrap_servers)
    return [
        sink_asset_key(fs, sink)
        for fs in feature_sets
        for sink in fs.auxiliary_sinks
        if sink.topic in source.topic_names and _servers(sink.bootstrap_servers) & servers
    ]


def sink_observations(
    feature_set: FeatureSet, pipeline: str, reports: Iterable[BatchReport]
) -> list[AssetObservation]:
    """What the ``pipeline`` run published to each of its sinks over ``reports``."""
    written: dict[str, int] = {}
    last: dict[str, datetime] = {}
    batches = 0
    for report in reports:
        batches += 1
        for name, count in report.sink_messages.items():
            written[name] = written.get(name, 0) + count
            if count:
                last[name] = report.finished_at
    observations = []
    for sink in feature_set.auxiliary_sinks:
        if sink.pipeline != pipeline or not batches:
            continue
        metadata: dict[str, Any] = {
            metadata_key("messages_written"): written.get(sink.name, 0),
            metadata_key("batches"): batches,
        }
        if sink.name in last:
            metadata[metadata_key("last_write")] = MetadataValue.timestamp(last[sink.name])
        observations.append(
            AssetObservation(asset_key=sink_asset_key(feature_set, sink), metadata=metadata)
        )
    return observations


def failure_observations(
    feature_set: FeatureSet, pipeline: str, failed: Mapping[str, str]
) -> list[AssetObservation]:
    """Observations of the ``pipeline`` sinks for runs that failed (run id → message)."""
    return [
        AssetObservation(
            asset_key=sink_asset_key(feature_set, sink),
            metadata={
                metadata_key("failures"): len(failed),
                metadata_key("failed_runs"): ", ".join(failed),
                metadata_key("last_failure"): list(failed.values())[-1][:500],
            },
        )
        for sink in feature_set.auxiliary_sinks
        if sink.pipeline == pipeline and failed
    ]
