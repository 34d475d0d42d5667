"""Ranged runs as time-partitioned Dagster assets: backfills and batch feature sets.

- A streaming feature set with ``@streaming.backfill`` gets a ``<fs>/backfill`` asset
  with daily partitions over ``[start_date, end_date)`` and a single-run backfill policy:
  a range picked in the UI (or ``dagster asset materialize --partition-range A...B``)
  is one Spark run over exactly that range.
- A batch feature set's ``<fs>/offline`` asset is partitioned on its cron from its
  ``@batch.backfill(start_date=...)``; its schedule materializes the partition that just
  closed at each tick.

Both call :func:`fs_dagster.engine.backfill.run_range`: the range's offline rows and
tiles are replaced (a re-run changes nothing) and the online store is seeded.
"""

from datetime import datetime
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    MaterializeResult,
    PartitionsDefinition,
    TimeWindowPartitionsDefinition,
    asset,
    build_schedule_from_partitioned_job,
)
from dagster_pyspark import LazyPySparkResource

from fs_dagster.definitions.feature_set import ClusterTemplate, FeatureSet
from fs_dagster.engine.backfill import run_range
from fs_dagster.engine.pipeline import BatchReport
from fs_dagster.orchestration.naming import (
    FEATURE_SET_TAG,
    PIPELINE_TAG,
    metadata_key,
    offline_asset_key,
    offline_job_name,
    source_asset_key,
)
from fs_dagster.orchestration.offline import feature_set_job, feature_set_metadata, owners
from fs_dagster.orchestration.resources import FeatureStoreResource, run_spark_session

__all__ = [
    "backfill_asset_key",
    "build_backfill_asset",
    "build_batch_asset",
    "build_batch_schedule",
]


def backfill_asset_key(feature_set: FeatureSet) -> AssetKey:
    """The backfill asset of a streaming feature set."""
    return AssetKey([feature_set.storage_name, "backfill"])


def _range_metadata(report: BatchReport, start: datetime, end: datetime) -> dict[str, Any]:
    return {
        metadata_key("range_start"): start.isoformat(),
        metadata_key("range_end"): end.isoformat(),
        metadata_key("rows_in"): report.rows_in,
        metadata_key("rows_written"): report.rows_written,
        metadata_key("online_tiles_written"): report.tiles_written,
        metadata_key("dead_letters"): report.dead_letters,
        metadata_key("set_aside"): report.set_aside,
        metadata_key("duration_seconds"): report.duration_seconds,
        "dagster/row_count": report.rows_written,
    }


def _materialize_range(
    context: AssetExecutionContext,
    feature_set: FeatureSet,
    feature_store: FeatureStoreResource,
    pyspark: LazyPySparkResource,
    template: ClusterTemplate,
) -> MaterializeResult[None]:
    window = context.partition_time_window
    spark = run_spark_session(pyspark, template)
    store = feature_store.create_online_store()
    try:
        report = run_range(
            spark,
            feature_set,
            feature_store.plan(feature_set),
            window.start,
            window.end,
            online_store=store,
        )
    finally:
        store.close()
    context.log.info(
        f"'{feature_set.name}' over [{window.start.isoformat()}, {window.end.isoformat()}): "
        f"{report.rows_in} source rows, {report.set_aside} set aside, "
        f"{report.dead_letters} dead letters"
    )
    return MaterializeResult(metadata=_range_metadata(report, window.start, window.end))


def build_backfill_asset(feature_set: FeatureSet) -> AssetsDefinition:
    """The daily-partitioned backfill asset of a streaming feature set with a backfill."""
    spec = feature_set.backfill
    assert spec is not None
    partitions = DailyPartitionsDefinition(
        start_date=spec.start, end_date=spec.end, timezone="UTC", fmt="%Y-%m-%d"
    )
    template = spec.cluster_template or feature_set.execution_specification.offline_cluster_template
    metadata = feature_set_metadata(feature_set)
    metadata[metadata_key("backfill_start")] = spec.start.isoformat()
    metadata[metadata_key("backfill_end")] = spec.end.isoformat()
    metadata[metadata_key("backfill_sources")] = ", ".join(r.source.name for r in spec.sources)

    @asset(
        key=backfill_asset_key(feature_set),
        deps=[source_asset_key(r.source) for r in spec.sources],
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        group_name=feature_set.storage_name,
        description=(
            f"History of '{feature_set.name}' before {spec.end.date().isoformat()}, computed "
            "from batch sources: offline rows and tiles of the range, and the online store."
        ),
        metadata=metadata,
        owners=owners(feature_set),
        kinds={"spark", "delta"},
        op_tags={FEATURE_SET_TAG: feature_set.name, PIPELINE_TAG: "backfill"},
    )
    def backfill(
        context: AssetExecutionContext,
        feature_store: FeatureStoreResource,
        pyspark: LazyPySparkResource,
    ) -> MaterializeResult[None]:
        return _materialize_range(context, feature_set, feature_store, pyspark, template)

    return backfill


def _batch_partitions(feature_set: FeatureSet) -> PartitionsDefinition[Any]:
    assert feature_set.partitions_start is not None
    return TimeWindowPartitionsDefinition(
        start=feature_set.partitions_start,
        cron_schedule=feature_set.offline_scheduling_policy,
        timezone="UTC",
        fmt="%Y-%m-%dT%H:%M",
    )


def build_batch_asset(feature_set: FeatureSet) -> AssetsDefinition:
    """The offline asset of a batch feature set, one partition per cron interval."""

    @asset(
        key=offline_asset_key(feature_set),
        deps=[source_asset_key(s) for s in feature_set.batch_sources],
        partitions_def=_batch_partitions(feature_set),
        backfill_policy=BackfillPolicy.single_run(),
        group_name=feature_set.storage_name,
        description=feature_set.metadata.description
        or f"Feature rows of '{feature_set.name}' computed from batch sources, by partition.",
        metadata=feature_set_metadata(feature_set),
        owners=owners(feature_set),
        kinds={"spark", "delta"},
        op_tags={FEATURE_SET_TAG: feature_set.name, PIPELINE_TAG: "batch"},
    )
    def batch_features(
        context: AssetExecutionContext,
        feature_store: FeatureStoreResource,
        pyspark: LazyPySparkResource,
    ) -> MaterializeResult[None]:
        return _materialize_range(
            context,
            feature_set,
            feature_store,
            pyspark,
            feature_set.execution_specification.offline_cluster_template,
        )

    return batch_features


def build_batch_schedule(
    feature_set: FeatureSet,
    default_status: DefaultScheduleStatus = DefaultScheduleStatus.RUNNING,
) -> Any:
    """Each tick of the batch feature set's cron materializes the partition that closed.

    Returns Dagster's schedule for a partitioned asset job (resolved by ``Definitions``;
    its class is not public, hence ``Any``).
    """
    job = feature_set_job(
        feature_set,
        offline_job_name(feature_set),
        offline_asset_key(feature_set),
        "batch",
        partitions_def=_batch_partitions(feature_set),
    )
    return build_schedule_from_partitioned_job(
        job,
        name=f"{feature_set.storage_name}__batch_schedule",
        default_status=default_status,
        description=f"Batch computation of '{feature_set.name}', one partition per tick.",
    )
