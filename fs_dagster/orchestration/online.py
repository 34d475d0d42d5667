"""Online ingestion as a long-running Dagster job, and the sensor that supervises it.

The job owns one Spark streaming query and runs until it is stopped (run termination),
until the query fails, or for ``run_for_seconds`` when configured. While it runs it
writes a heartbeat into a run tag and reports the online store asset's materializations
(batches, rows, dead letters, freshness, Kafka lag).

The sensor keeps exactly one such run per feature set: it launches one when none is in
progress, skips while one is, and launches a new one (with a new run key) after a
failure, a cancellation, or a heartbeat gone stale, which it first marks failed.
"""

import queue
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    AssetsDefinition,
    AssetSpec,
    Config,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    multi_asset,
    sensor,
)
from dagster_pyspark import LazyPySparkResource
from pydantic import Field

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.pipeline import BatchReport, IngestionQuery, start_ingestion
from fs_dagster.orchestration.naming import (
    FEATURE_SET_TAG,
    HEARTBEAT_TAG,
    PIPELINE_TAG,
    metadata_key,
    online_asset_key,
    online_job_name,
    source_asset_key,
    supervisor_sensor_name,
)
from fs_dagster.orchestration.offline import feature_set_job, feature_set_metadata, owners
from fs_dagster.orchestration.resources import FeatureStoreResource, run_spark_session
from fs_dagster.orchestration.sinks import failure_observations, sink_observations

# Dagster's run tags and unfinished statuses, by value: their constants live in private
# modules (``dagster._core``) that change without notice.
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
NOT_FINISHED_STATUSES = [
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.SUSPENDED,
    DagsterRunStatus.CANCELING,
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
]

__all__ = [
    "OnlineIngestionConfig",
    "build_online_asset",
    "build_supervisor_sensor",
]


class OnlineIngestionConfig(Config):
    """Run configuration of an online ingestion run."""

    run_for_seconds: float | None = Field(
        default=None, description="Stop after this long (None: run until stopped)."
    )
    trigger_interval: float | None = Field(
        default=None, description="Override the feature set's online_trigger_interval."
    )
    debug_table: str | None = Field(
        default=None,
        description="Also write the transformed stream to this Spark in-memory table.",
    )
    report_every_seconds: float = Field(
        default=15.0, description="How often batches are summarised into a materialization."
    )
    heartbeat_every_seconds: float = Field(default=10.0)


def _summary(reports: list[BatchReport], progress: dict[str, Any] | None) -> dict[str, Any]:
    last = reports[-1]
    freshness = [r.freshness_seconds for r in reports if r.freshness_seconds is not None]
    metadata: dict[str, Any] = {
        metadata_key("batches"): len(reports),
        metadata_key("last_batch_id"): last.batch_id,
        metadata_key("rows_in"): sum(r.rows_in for r in reports),
        metadata_key("rows_written"): sum(r.rows_written for r in reports),
        metadata_key("dead_letters"): sum(r.dead_letters for r in reports),
        metadata_key("batch_seconds_max"): max(r.duration_seconds for r in reports),
    }
    if freshness:
        metadata[metadata_key("freshness_seconds")] = freshness[-1]
    if any(r.tiles_written or r.late_events or r.watermark for r in reports):
        metadata[metadata_key("tiles_written")] = sum(r.tiles_written for r in reports)
        metadata[metadata_key("late_events")] = sum(r.late_events for r in reports)
        watermarks = [r.watermark for r in reports if r.watermark is not None]
        if watermarks:
            metadata[metadata_key("watermark")] = MetadataValue.timestamp(watermarks[-1])
    if last.max_event_time is not None:
        metadata[metadata_key("max_event_time")] = MetadataValue.timestamp(last.max_event_time)
    lag = _kafka_lag(progress)
    if lag is not None:
        metadata[metadata_key("kafka_offsets_behind_latest")] = lag
    return metadata


def _kafka_lag(progress: dict[str, Any] | None) -> int | None:
    if not progress:
        return None
    for source in progress.get("sources", []):
        value = source.get("metrics", {}).get("maxOffsetsBehindLatest")
        if value is not None:
            return int(float(value))
    return None


def _drain(reports: queue.Queue[BatchReport], into: list[BatchReport]) -> None:
    while True:
        try:
            into.append(reports.get_nowait())
        except queue.Empty:
            return


def _report(
    context: AssetExecutionContext,
    feature_set: FeatureSet,
    ingestion: IngestionQuery,
    pending: list[BatchReport],
) -> int:
    if not pending:
        return 0
    context.log_event(
        AssetMaterialization(
            asset_key=online_asset_key(feature_set),
            metadata=_summary(pending, ingestion.query.lastProgress),
        )
    )
    for observation in sink_observations(feature_set, "online", pending):
        context.log_event(observation)
    return len(pending)


def _run_until_stopped(
    context: AssetExecutionContext,
    ingestion: IngestionQuery,
    reports: queue.Queue[BatchReport],
    config: OnlineIngestionConfig,
    feature_set: FeatureSet,
) -> int:
    started = time.monotonic()
    last_report = last_heartbeat = 0.0
    pending: list[BatchReport] = []
    total_batches = 0
    try:
        while True:
            now = time.monotonic()
            if now - last_heartbeat >= config.heartbeat_every_seconds:
                context.instance.add_run_tags(
                    context.run_id, {HEARTBEAT_TAG: datetime.now(UTC).isoformat()}
                )
                last_heartbeat = now
            _drain(reports, pending)
            if pending and now - last_report >= config.report_every_seconds:
                total_batches += _report(context, feature_set, ingestion, pending)
                pending = []
                last_report = now
            error = ingestion.query.exception()
            if error is not None:
                raise Failure(
                    description=f"online ingestion of '{feature_set.name}' failed: {error}",
                    metadata={metadata_key("batches"): total_batches},
                )
            if not ingestion.query.isActive:
                break
            if config.run_for_seconds is not None and now - started >= config.run_for_seconds:
                break
            ingestion.query.awaitTermination(1)
    finally:
        # Also when the run is terminated: batches written since the last report count.
        _drain(reports, pending)
        total_batches += _report(context, feature_set, ingestion, pending)
    return total_batches


def build_online_asset(feature_set: FeatureSet, store_kind: str) -> AssetsDefinition:
    """The online store asset, whose materialization is the run that keeps it current.

    The run does not end by itself: it reports a materialization every
    ``report_every_seconds`` while it ingests. Being the asset's own computation (rather
    than an unrelated job), the supervisor sensor that launches it shows on the asset.
    """
    sensor_name = supervisor_sensor_name(feature_set)
    spec = AssetSpec(
        key=online_asset_key(feature_set),
        deps=[source_asset_key(s) for s in feature_set.data_sources],
        description=(
            f"Latest feature vector per key of '{feature_set.name}', kept current by the "
            f"online ingestion run that the sensor '{sensor_name}' keeps running"
        ),
        group_name=feature_set.storage_name,
        kinds={"spark", store_kind},
        metadata={
            **feature_set_metadata(feature_set),
            metadata_key("supervised_by"): sensor_name,
            metadata_key("ingestion_job"): online_job_name(feature_set),
        },
        owners=owners(feature_set),
        # Materializations are reported while the run goes on, none at its end.
        skippable=True,
    )

    @multi_asset(
        specs=[spec],
        name=f"{feature_set.storage_name}__online_ingestion_op",
        description=f"Continuous online ingestion of '{feature_set.name}'.",
        op_tags={FEATURE_SET_TAG: feature_set.name, PIPELINE_TAG: "online"},
    )
    def online_ingestion(
        context: AssetExecutionContext,
        config: OnlineIngestionConfig,
        feature_store: FeatureStoreResource,
        pyspark: LazyPySparkResource,
    ) -> Iterator[MaterializeResult[None]]:
        reports: queue.Queue[BatchReport] = queue.Queue()
        spark = run_spark_session(
            pyspark, feature_set.execution_specification.online_cluster_template
        )
        ingestion = start_ingestion(
            spark,
            feature_set,
            feature_store.plan(feature_set),
            "online",
            online_store=feature_store.create_online_store(),
            on_batch=reports.put,
            trigger_interval=config.trigger_interval,
            debug_table=config.debug_table,
        )
        context.log.info(
            f"online ingestion of '{feature_set.name}' started (query {ingestion.query.id})"
        )
        try:
            batches = _run_until_stopped(context, ingestion, reports, config, feature_set)
        finally:
            ingestion.stop()
        context.log.info(
            f"online ingestion of '{feature_set.name}' stopped after {batches} batches"
        )
        yield from ()

    return online_ingestion


def _last_attempt(instance: DagsterInstance, job_name: str, sensor_name: str, prefix: str) -> int:
    """The attempt number in the run key of the sensor's latest run (0 if none)."""
    runs = instance.get_runs(
        filters=RunsFilter(job_name=job_name, tags={SENSOR_NAME_TAG: sensor_name}), limit=1
    )
    key = runs[0].tags.get(RUN_KEY_TAG, "") if runs else ""
    number = key[len(prefix) :] if key.startswith(prefix) else ""
    return int(number) if number.isdigit() else 0


#: How many failed runs a failure observation lists.
_FAILED_RUNS_SHOWN = 10


def _failed_runs(instance: DagsterInstance, job_name: str) -> dict[str, str]:
    """The latest failed or canceled runs of ``job_name``, oldest first (id → what)."""
    runs = instance.get_runs(
        filters=RunsFilter(
            job_name=job_name, statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
        ),
        limit=_FAILED_RUNS_SHOWN,
    )
    return {run.run_id: f"run {run.run_id} {run.status.value}" for run in reversed(runs)}


def build_supervisor_sensor(
    feature_set: FeatureSet,
    *,
    minimum_interval_seconds: int = 15,
    heartbeat_timeout_seconds: float | None = None,
    default_status: DefaultSensorStatus = DefaultSensorStatus.RUNNING,
) -> SensorDefinition:
    """The sensor that keeps one online ingestion run of ``feature_set`` going.

    Args:
        feature_set: the feature set.
        minimum_interval_seconds: how often the sensor looks.
        heartbeat_timeout_seconds: a started run whose heartbeat is older than this is
            marked failed and replaced; default ``max(120, 10 x trigger interval)``.
        default_status: whether the sensor runs as soon as the code location loads.
    """
    timeout = heartbeat_timeout_seconds or max(120.0, 10 * feature_set.online_trigger_interval)
    prefix = f"{feature_set.storage_name}-online-"
    job_name = online_job_name(feature_set)

    @sensor(
        name=supervisor_sensor_name(feature_set),
        # The job materializing the online asset: the sensor shows on that asset.
        job=feature_set_job(
            feature_set,
            job_name,
            online_asset_key(feature_set),
            "online",
            description=f"Runs online ingestion of '{feature_set.name}' until stopped.",
        ),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Starts online ingestion of '{feature_set.name}' when none runs, and restarts "
            "it after a failure, a cancellation or a stale heartbeat."
        ),
    )
    def supervise(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        instance = context.instance
        active = instance.get_runs(
            filters=RunsFilter(job_name=job_name, statuses=NOT_FINISHED_STATUSES)
        )
        now = datetime.now(UTC)
        for run in active:
            if run.status != DagsterRunStatus.STARTED:
                return SkipReason(f"run {run.run_id} is {run.status.value}")
            beat = run.tags.get(HEARTBEAT_TAG)
            record = instance.get_run_record_by_id(run.run_id)
            started = record.start_time if record is not None else None
            last_seen = (
                datetime.fromisoformat(beat).timestamp()
                if beat
                else (started if started is not None else now.timestamp())
            )
            if now.timestamp() - last_seen <= timeout:
                return SkipReason(f"run {run.run_id} is ingesting (heartbeat {beat or 'pending'})")
            try:
                # Best effort: a hung process must not keep writing beside its successor.
                instance.run_launcher.terminate(run.run_id)
            except Exception as exc:
                context.log.warning(f"could not terminate run {run.run_id}: {exc}")
            instance.report_run_failed(
                run,
                message=(
                    f"heartbeat older than {timeout:.0f}s; marked failed by {context.sensor_name}"
                ),
            )
            context.log.warning(f"run {run.run_id} stopped heartbeating; starting a new one")
        # Run keys deduplicate forever, so the key must be new even if the cursor was lost
        # (a sensor reset): continue after the key of this sensor's latest run.
        last = _last_attempt(instance, job_name, supervisor_sensor_name(feature_set), prefix)
        attempt = max(int(context.cursor or 0), last) + 1
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=f"{prefix}{attempt}",
                    tags={FEATURE_SET_TAG: feature_set.name, PIPELINE_TAG: "online"},
                )
            ],
            asset_events=failure_observations(
                feature_set, "online", _failed_runs(instance, job_name)
            ),
            cursor=str(attempt),
        )

    return supervise
