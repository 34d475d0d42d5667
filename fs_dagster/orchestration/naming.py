"""Dagster names, keys and tags of a feature set, in one place."""

from __future__ import annotations

from dagster import AssetKey

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.sinks import KafkaSink
from fs_dagster.definitions.sources import AnySource

__all__ = [
    "FEATURE_SET_TAG",
    "HEARTBEAT_TAG",
    "PIPELINE_TAG",
    "metadata_key",
    "offline_asset_key",
    "offline_job_name",
    "online_asset_key",
    "online_job_name",
    "sink_asset_key",
    "source_asset_key",
    "supervisor_sensor_name",
]

NAMESPACE = "fs_dagster"
FEATURE_SET_TAG = f"{NAMESPACE}/feature_set"
PIPELINE_TAG = f"{NAMESPACE}/pipeline"
HEARTBEAT_TAG = f"{NAMESPACE}/heartbeat"


def metadata_key(name: str) -> str:
    """A namespaced metadata key (``fs_dagster/<name>``)."""
    return f"{NAMESPACE}/{name}"


def source_asset_key(source: AnySource) -> AssetKey:
    """The external asset standing for a source topic or directory."""
    return AssetKey(["sources", source.name])


def offline_asset_key(feature_set: FeatureSet) -> AssetKey:
    """The offline store asset of a feature set."""
    return AssetKey([feature_set.storage_name, "offline"])


def online_asset_key(feature_set: FeatureSet) -> AssetKey:
    """The online store (external) asset of a feature set."""
    return AssetKey([feature_set.storage_name, "online"])


def online_job_name(feature_set: FeatureSet) -> str:
    """The job that runs online ingestion until stopped."""
    return f"{feature_set.storage_name}__online_ingestion"


def offline_job_name(feature_set: FeatureSet) -> str:
    """The job the offline schedule launches."""
    return f"{feature_set.storage_name}__offline_ingestion"


def supervisor_sensor_name(feature_set: FeatureSet) -> str:
    """The sensor that starts and restarts online ingestion."""
    return f"{feature_set.storage_name}__online_supervisor"


def sink_asset_key(feature_set: FeatureSet, sink: KafkaSink) -> AssetKey:
    """The (external) asset of an auxiliary sink's topic, downstream of its feature set."""
    return AssetKey([feature_set.storage_name, "sinks", sink.name])
