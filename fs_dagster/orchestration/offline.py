"""Offline ingestion as a Dagster asset, materialized on the feature set's cron."""

from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DefaultScheduleStatus,
    Failure,
    MaterializeResult,
    PartitionsDefinition,
    ScheduleDefinition,
    asset,
    define_asset_job,
    in_process_executor,
)
from dagster_pyspark import LazyPySparkResource

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.pipeline import BatchReport, start_ingestion
from fs_dagster.orchestration.naming import (
    FEATURE_SET_TAG,
    PIPELINE_TAG,
    metadata_key,
    offline_asset_key,
    offline_job_name,
    source_asset_key,
)
from fs_dagster.orchestration.resources import FeatureStoreResource, run_spark_session
from fs_dagster.orchestration.sinks import sink_observations

__all__ = ["build_offline_asset", "build_offline_schedule", "feature_set_metadata", "owners"]


def owners(feature_set: FeatureSet) -> list[str]:
    """Dagster owners from ``streaming.metadata(owner=...)`` (an email or a team)."""
    owner = feature_set.metadata.owner
    if not owner:
        return []
    return [owner if "@" in owner or owner.startswith("team:") else f"team:{owner}"]


def feature_set_metadata(feature_set: FeatureSet) -> dict[str, Any]:
    """Definition metadata shown on every asset of a feature set."""
    meta = feature_set.metadata
    metadata: dict[str, Any] = {
        metadata_key("feature_set"): feature_set.name,
        metadata_key("key"): ", ".join(feature_set.key),
        metadata_key("timestamp_column"): feature_set.timestamp_column,
        metadata_key("sources"): ", ".join(s.name for s in feature_set.data_sources),
        metadata_key("offline_scheduling_policy"): feature_set.offline_scheduling_policy,
        metadata_key("online_trigger_interval_seconds"): feature_set.online_trigger_interval,
    }
    if feature_set.online_ttl is not None:
        metadata[metadata_key("online_ttl_seconds")] = feature_set.online_ttl.total_seconds()
    if feature_set.aggregations:
        # What an aggregated feature set serves, readable in the UI without its code.
        metadata[metadata_key("windows")] = ", ".join(w.label for w in feature_set.windows)
        metadata[metadata_key("allowed_lateness_seconds")] = (
            feature_set.allowed_lateness.total_seconds()
        )
        metadata[metadata_key("features")] = ", ".join(feature_set.feature_names)
    if meta.owner:
        metadata[metadata_key("owner")] = meta.owner
    if meta.display_name:
        metadata[metadata_key("display_name")] = meta.display_name
    return metadata


def _run_metadata(reports: list[BatchReport], path: str) -> dict[str, Any]:
    return {
        metadata_key("batches"): len(reports),
        metadata_key("rows_in"): sum(r.rows_in for r in reports),
        metadata_key("rows_written"): sum(r.rows_written for r in reports),
        metadata_key("dead_letters"): sum(r.dead_letters for r in reports),
        metadata_key("path"): path,
        "dagster/row_count": sum(r.rows_written for r in reports),
    }


def build_offline_asset(feature_set: FeatureSet) -> AssetsDefinition:
    """The asset whose materialization appends everything new to the offline store."""

    @asset(
        key=offline_asset_key(feature_set),
        deps=[source_asset_key(s) for s in feature_set.data_sources],
        group_name=feature_set.storage_name,
        description=feature_set.metadata.description
        or f"Every feature row version of '{feature_set.name}' (Delta, by event date).",
        metadata=feature_set_metadata(feature_set),
        owners=owners(feature_set),
        kinds={"spark", "delta"},
        tags={FEATURE_SET_TAG.replace("/", "_"): feature_set.storage_name},
        op_tags={FEATURE_SET_TAG: feature_set.name, PIPELINE_TAG: "offline"},
    )
    def offline_features(
        context: AssetExecutionContext,
        feature_store: FeatureStoreResource,
        pyspark: LazyPySparkResource,
    ) -> MaterializeResult[None]:
        plan = feature_store.plan(feature_set)
        spark = run_spark_session(
            pyspark, feature_set.execution_specification.offline_cluster_template
        )
        ingestion = start_ingestion(spark, feature_set, plan, "offline")
        ingestion.query.awaitTermination()
        error = ingestion.query.exception()
        if error is not None:
            raise Failure(description=f"offline ingestion of '{feature_set.name}' failed: {error}")
        context.log.info(
            f"offline ingestion of '{feature_set.name}': {len(ingestion.reports)} batches"
        )
        for observation in sink_observations(feature_set, "offline", ingestion.reports):
            context.log_event(observation)
        return MaterializeResult(metadata=_run_metadata(ingestion.reports, plan.features_path))

    return offline_features


def feature_set_job(
    feature_set: FeatureSet,
    name: str,
    asset_key: AssetKey,
    pipeline: str,
    *,
    description: str | None = None,
    partitions_def: PartitionsDefinition | None = None,
) -> Any:
    """The job materializing one asset of ``feature_set`` for ``pipeline``, tagged with
    both. Its one step and its Spark driver run in the run's own process: no step process
    to start (about 9 s of a run's start on 2 cores), one Python process less.

    Returns Dagster's unresolved asset job (its class is not public, hence ``Any``).
    """
    return define_asset_job(
        name,
        selection=[asset_key],
        description=description,
        partitions_def=partitions_def,
        executor_def=in_process_executor,
        tags={FEATURE_SET_TAG: feature_set.name, PIPELINE_TAG: pipeline},
    )


def build_offline_schedule(
    feature_set: FeatureSet,
    default_status: DefaultScheduleStatus = DefaultScheduleStatus.RUNNING,
) -> ScheduleDefinition:
    """The cron schedule of the offline asset (``offline_scheduling_policy``, UTC)."""
    job = feature_set_job(
        feature_set, offline_job_name(feature_set), offline_asset_key(feature_set), "offline"
    )
    return ScheduleDefinition(
        name=f"{feature_set.storage_name}__offline_schedule",
        job=job,
        cron_schedule=feature_set.offline_scheduling_policy,
        execution_timezone="UTC",
        default_status=default_status,
        description=f"Offline ingestion of '{feature_set.name}'.",
    )
