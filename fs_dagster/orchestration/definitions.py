"""Turning feature sets into one ``dagster.Definitions``."""

from __future__ import annotations

from collections.abc import Sequence

from dagster import (
    AssetKey,
    AssetSpec,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
)
from dagster_pyspark import LazyPySparkResource

from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.sources import BatchSource, DataSource, KafkaSource
from fs_dagster.orchestration.naming import (
    metadata_key,
    source_asset_key,
)
from fs_dagster.orchestration.offline import (
    build_offline_asset,
    build_offline_schedule,
)
from fs_dagster.orchestration.online import build_online_asset, build_supervisor_sensor
from fs_dagster.orchestration.ranged import (
    build_backfill_asset,
    build_batch_asset,
    build_batch_schedule,
)
from fs_dagster.orchestration.resources import FeatureStoreResource
from fs_dagster.orchestration.sinks import chained_sinks, sink_spec

__all__ = ["build_definitions", "check_unique_names"]


def check_unique_names(feature_sets: Sequence[FeatureSet]) -> None:
    """Raise if two feature sets share a name (or a storage name)."""
    seen: dict[str, str] = {}
    for feature_set in feature_sets:
        if not isinstance(feature_set, FeatureSet):
            raise TypeError(
                f"expected FeatureSet objects (from @streaming.feature_set), got "
                f"{type(feature_set).__name__}"
            )
        other = seen.get(feature_set.storage_name)
        if other is not None:
            raise FeatureSetDefinitionError(
                feature_set.name,
                "name",
                f"another feature set is already named '{other}'; names must be unique",
            )
        seen[feature_set.storage_name] = feature_set.name


def _source_spec(source: DataSource | BatchSource, upstream: list[AssetKey]) -> AssetSpec:
    if isinstance(source, KafkaSource):
        _, topics = source.subscription
        description = f"Kafka {source.subscription[0]} {topics} on {source.bootstrap_servers}"
        kinds = {"kafka"}
    elif isinstance(source, BatchSource):
        description = f"{source.format} table at {source.path} (batch)"
        kinds = {source.format}
    else:
        description = f"{source.format} files in {source.path}"
        kinds = {"file"}
    return AssetSpec(
        key=source_asset_key(source),
        # A topic another feature set's sink writes: the chain shows in the asset graph.
        deps=upstream,
        description=description,
        kinds=kinds,
        group_name="sources",
        metadata={metadata_key("schema"): source.schema or "as stored"},
    )


def _sources(feature_set: FeatureSet) -> list[DataSource | BatchSource]:
    """Every source a feature set reads: its stream or batch sources, and its backfill's."""
    found: list[DataSource | BatchSource] = [*feature_set.data_sources, *feature_set.batch_sources]
    if feature_set.backfill is not None:
        found += [r.source for r in feature_set.backfill.sources]
    return found


def build_definitions(
    *,
    feature_sets: Sequence[FeatureSet],
    feature_store: FeatureStoreResource,
    pyspark: LazyPySparkResource,
    supervisor_interval_seconds: int = 15,
    heartbeat_timeout_seconds: float | None = None,
    start_automatically: bool = True,
) -> Definitions:
    """Dagster definitions for ``feature_sets``.

    Per streaming feature set: an offline asset materialized on its cron schedule, an
    external asset for its online table, a job that runs online ingestion until stopped
    and a sensor that keeps one such run going, with a backfill a daily-partitioned
    backfill asset, and an asset per auxiliary sink topic. Per batch feature set: an
    offline asset partitioned on its cron and the schedule that materializes each closed
    partition. Source topics, directories
    and batch tables become external assets upstream.

    Args:
        feature_sets: the feature sets (names must be unique).
        feature_store: where the stores and checkpoints are.
        pyspark: the Spark session resource (see :func:`fs_dagster.spark_resource`).
        supervisor_interval_seconds: how often each supervisor sensor looks.
        heartbeat_timeout_seconds: when a silent online run is replaced.
        start_automatically: sensors and schedules run as soon as the location loads.

    Example:
        >>> defs = build_definitions(
        ...     feature_sets=[user_transactions],
        ...     feature_store=FeatureStoreResource(offline_root=".fs/offline",
        ...                                        checkpoint_root=".fs/checkpoints"),
        ...     pyspark=spark_resource(SparkSettings()),
        ... )  # doctest: +SKIP
    """
    check_unique_names(feature_sets)
    sources: dict[str, AssetSpec] = {}
    assets: list[object] = []
    sensors = []
    schedules = []
    sensor_status = (
        DefaultSensorStatus.RUNNING if start_automatically else DefaultSensorStatus.STOPPED
    )
    schedule_status = (
        DefaultScheduleStatus.RUNNING if start_automatically else DefaultScheduleStatus.STOPPED
    )
    for feature_set in feature_sets:
        for source in _sources(feature_set):
            sources.setdefault(
                source.name, _source_spec(source, chained_sinks(source, feature_sets))
            )
        if feature_set.kind == "batch":
            assets.append(build_batch_asset(feature_set))
            schedules.append(build_batch_schedule(feature_set, schedule_status))
            continue
        assets.append(build_offline_asset(feature_set))
        assets.append(build_online_asset(feature_set, feature_store.online_store_kind))
        assets += [sink_spec(feature_set, sink) for sink in feature_set.auxiliary_sinks]
        if feature_set.backfill is not None:
            assets.append(build_backfill_asset(feature_set))
        # Its job (materializing the online asset) comes with it.
        sensors.append(
            build_supervisor_sensor(
                feature_set,
                minimum_interval_seconds=supervisor_interval_seconds,
                heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                default_status=sensor_status,
            )
        )
        schedules.append(build_offline_schedule(feature_set, schedule_status))
    return Definitions(
        assets=[*sources.values(), *assets],  # type: ignore[list-item]
        sensors=sensors,
        schedules=schedules,
        resources={"feature_store": feature_store, "pyspark": pyspark},
    )
