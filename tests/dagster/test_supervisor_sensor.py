"""The online supervisor sensor against a real (temporary) Dagster instance.

Runs are created in the instance the way the sensor daemon creates them (with the run
request's tags and run key) and moved through their statuses with real run events, so
the sensor sees exactly what it would see in a deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetObservation,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    JobDefinition,
    RunRequest,
    SensorDefinition,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

import fs_dagster as fs
from fs_dagster.orchestration.naming import (
    FEATURE_SET_TAG,
    HEARTBEAT_TAG,
    PIPELINE_TAG,
    online_job_name,
    supervisor_sensor_name,
)
from fs_dagster.orchestration.online import build_supervisor_sensor
from tests.integration.scenario import SourceSpec, transactions_feature_set

pytestmark = [pytest.mark.dagster]

TIMEOUT = 60.0


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


@pytest.fixture
def feature_set(tmp_path: Path) -> fs.FeatureSet:
    spec = SourceSpec("file", "card_events", str(tmp_path / "stream"))
    # A sink, so that failed runs show on its asset (definitions only: nothing connects).
    sink = fs.KafkaSink(name="scores", topic="card-scores", bootstrap_servers="127.0.0.1:9092")
    return transactions_feature_set(spec, "card-spend", auxiliary_sinks=[sink])


@pytest.fixture
def defs(feature_set: fs.FeatureSet, tmp_path: Path) -> Definitions:
    return fs.build_definitions(
        feature_sets=[feature_set],
        feature_store=fs.FeatureStoreResource(
            offline_root=str(tmp_path / "offline"),
            checkpoint_root=str(tmp_path / "checkpoints"),
            sqlite_path=str(tmp_path / "online.db"),
        ),
        pyspark=fs.spark_resource(fs.SparkSettings()),
        heartbeat_timeout_seconds=TIMEOUT,
    )


@pytest.fixture
def online_job(defs: Definitions, feature_set: fs.FeatureSet) -> JobDefinition:
    return defs.resolve_job_def(online_job_name(feature_set))


@pytest.fixture
def sensor(defs: Definitions, feature_set: fs.FeatureSet) -> SensorDefinition:
    return defs.get_sensor_def(supervisor_sensor_name(feature_set))


class Supervisor:
    """Evaluates the sensor tick after tick, carrying its cursor like the daemon does."""

    def __init__(self, sensor: SensorDefinition, instance: DagsterInstance) -> None:
        self.sensor = sensor
        self.instance = instance
        self.cursor: str | None = None
        self.asset_events: list[object] = []

    def tick(self) -> RunRequest | SkipReason:
        context = build_sensor_context(
            instance=self.instance, cursor=self.cursor, sensor_name=self.sensor.name
        )
        result = self.sensor(context)
        if isinstance(result, SensorResult):
            self.cursor = result.cursor
            self.asset_events = list(result.asset_events or [])
            [request] = result.run_requests or []
            return request
        assert isinstance(result, SkipReason), result
        self.asset_events = []
        return result

    def launch(self, job: JobDefinition, request: RunRequest) -> DagsterRun:
        """Create the run the daemon would create for ``request`` (status NOT_STARTED)."""
        assert request.run_key is not None
        repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("test_location"), "repo")
        return self.instance.create_run_for_job(
            job_def=job,
            tags={**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: self.sensor.name},
            remote_job_origin=repository.get_job_origin(job.name),
        )


def _report(
    instance: DagsterInstance,
    run: DagsterRun,
    event_type: DagsterEventType,
    at: datetime | None = None,
) -> DagsterRun:
    """Store a run event (at time ``at``) and return the run as the instance now has it."""
    instance.report_dagster_event(
        DagsterEvent(event_type_value=event_type.value, job_name=run.job_name),
        run_id=run.run_id,
        log_level=logging.INFO,
        timestamp=at.timestamp() if at is not None else None,
    )
    updated = instance.get_run_by_id(run.run_id)
    assert updated is not None
    return updated


def _start(
    instance: DagsterInstance,
    run: DagsterRun,
    heartbeat: datetime | None,
    started_at: datetime | None = None,
) -> DagsterRun:
    """Move ``run`` to STARTED as a run worker does, with a heartbeat tag if given."""
    run = _report(instance, run, DagsterEventType.RUN_STARTING, started_at)
    assert run.status == DagsterRunStatus.STARTING
    run = _report(instance, run, DagsterEventType.RUN_START, started_at)
    assert run.status == DagsterRunStatus.STARTED
    if heartbeat is not None:
        instance.add_run_tags(run.run_id, {HEARTBEAT_TAG: heartbeat.isoformat()})
    return run


def _status(instance: DagsterInstance, run: DagsterRun) -> DagsterRunStatus:
    current = instance.get_run_by_id(run.run_id)
    assert current is not None
    return current.status


def test_starts_a_run_when_none_is_in_progress(
    instance: DagsterInstance,
    sensor: SensorDefinition,
    feature_set: fs.FeatureSet,
    online_job: JobDefinition,
) -> None:
    assert sensor.job_name == online_job.name == "card_spend__online_ingestion"
    supervisor = Supervisor(sensor, instance)
    request = supervisor.tick()
    assert isinstance(request, RunRequest)
    assert request.run_key == "card_spend-online-1"
    assert request.tags[FEATURE_SET_TAG] == feature_set.name
    assert request.tags[PIPELINE_TAG] == "online"
    assert supervisor.cursor == "1"

    # A run of another job does not count as online ingestion.
    other = instance.create_run_for_job(job_def=_other_job(), tags={})
    _start(instance, other, heartbeat=datetime.now(UTC))
    assert isinstance(supervisor.tick(), RunRequest)
    assert supervisor.cursor == "2"


def _other_job() -> JobDefinition:
    from dagster import job, op

    @op
    def noop() -> None:
        pass

    @job(name="unrelated_job")
    def unrelated() -> None:
        noop()

    return unrelated


def test_skips_while_a_run_is_queued_or_running_and_restarts_after_failure(
    instance: DagsterInstance, sensor: SensorDefinition, online_job: JobDefinition
) -> None:
    supervisor = Supervisor(sensor, instance)
    first = supervisor.tick()
    assert isinstance(first, RunRequest)
    run = supervisor.launch(online_job, first)

    # Created but not yet queued, then queued: the daemon's run is on its way.
    assert run.status == DagsterRunStatus.NOT_STARTED
    skip = supervisor.tick()
    assert isinstance(skip, SkipReason)
    assert run.run_id in (skip.skip_message or "")
    run = _report(instance, run, DagsterEventType.RUN_ENQUEUED)
    assert run.status == DagsterRunStatus.QUEUED
    skip = supervisor.tick()
    assert isinstance(skip, SkipReason)
    assert "QUEUED" in (skip.skip_message or "")

    # Started with a fresh heartbeat: nothing to do, however often the sensor looks.
    run = _start(instance, run, heartbeat=datetime.now(UTC) - timedelta(seconds=5))
    for _ in range(3):
        skip = supervisor.tick()
        assert isinstance(skip, SkipReason)
        assert "ingesting" in (skip.skip_message or "")
    assert supervisor.cursor == "1"

    assert supervisor.asset_events == []  # no failure yet, nothing to say of the sink

    instance.report_run_failed(run, message="Spark query failed")
    assert _status(instance, run) == DagsterRunStatus.FAILURE
    second = supervisor.tick()
    assert isinstance(second, RunRequest)
    assert second.run_key == "card_spend-online-2"
    assert second.run_key != first.run_key
    assert supervisor.cursor == "2"
    # The sink fed by the online run shows the failure as an observation.
    [observation] = supervisor.asset_events
    assert isinstance(observation, AssetObservation)
    assert observation.asset_key == AssetKey(["card_spend", "sinks", "scores"])
    assert observation.metadata["fs_dagster/failures"].value == 1
    assert run.run_id in str(observation.metadata["fs_dagster/failed_runs"].value)


def test_restarts_after_cancellation(
    instance: DagsterInstance, sensor: SensorDefinition, online_job: JobDefinition
) -> None:
    supervisor = Supervisor(sensor, instance)
    first = supervisor.tick()
    assert isinstance(first, RunRequest)
    run = _start(instance, supervisor.launch(online_job, first), heartbeat=datetime.now(UTC))
    assert isinstance(supervisor.tick(), SkipReason)

    # Termination from the UI: CANCELING (still in progress), then CANCELED.
    instance.report_run_canceling(run)
    assert _status(instance, run) == DagsterRunStatus.CANCELING
    skip = supervisor.tick()
    assert isinstance(skip, SkipReason)
    assert "CANCELING" in (skip.skip_message or "")
    instance.report_run_canceled(run)
    assert _status(instance, run) == DagsterRunStatus.CANCELED

    second = supervisor.tick()
    assert isinstance(second, RunRequest)
    assert second.run_key == "card_spend-online-2"

    # The replacement runs; once it succeeds (run_for_seconds elapsed) a third follows.
    replacement = _start(
        instance, supervisor.launch(online_job, second), heartbeat=datetime.now(UTC)
    )
    assert isinstance(supervisor.tick(), SkipReason)
    _report(instance, replacement, DagsterEventType.RUN_SUCCESS)
    third = supervisor.tick()
    assert isinstance(third, RunRequest)
    assert third.run_key == "card_spend-online-3"
    assert len({first.run_key, second.run_key, third.run_key}) == 3


def test_a_run_without_heartbeat_yet_is_judged_by_its_start_time(
    instance: DagsterInstance, sensor: SensorDefinition, online_job: JobDefinition
) -> None:
    # Spark can take a while to start before the first heartbeat is written.
    supervisor = Supervisor(sensor, instance)
    first = supervisor.tick()
    assert isinstance(first, RunRequest)
    started = datetime.now(UTC) - timedelta(seconds=TIMEOUT - 20)
    run = _start(instance, supervisor.launch(online_job, first), None, started_at=started)
    record = instance.get_run_record_by_id(run.run_id)
    assert record is not None and record.start_time == pytest.approx(started.timestamp())
    skip = supervisor.tick()
    assert isinstance(skip, SkipReason)
    assert "heartbeat pending" in (skip.skip_message or "")
    assert _status(instance, run) == DagsterRunStatus.STARTED


@pytest.mark.parametrize("with_heartbeat", [True, False], ids=["stale-heartbeat", "no-heartbeat"])
def test_marks_a_silent_run_failed_and_replaces_it(
    instance: DagsterInstance,
    sensor: SensorDefinition,
    online_job: JobDefinition,
    with_heartbeat: bool,
) -> None:
    supervisor = Supervisor(sensor, instance)
    first = supervisor.tick()
    assert isinstance(first, RunRequest)
    stale = datetime.now(UTC) - timedelta(seconds=TIMEOUT + 30)
    run = _start(
        instance,
        supervisor.launch(online_job, first),
        heartbeat=stale if with_heartbeat else None,
        started_at=stale - timedelta(seconds=60),
    )

    second = supervisor.tick()
    assert isinstance(second, RunRequest), second
    assert second.run_key == "card_spend-online-2"
    assert supervisor.cursor == "2"
    assert _status(instance, run) == DagsterRunStatus.FAILURE
    failures = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
    assert len(failures) == 1
    message = failures[0].dagster_event.message if failures[0].dagster_event else None
    assert message is not None
    assert "heartbeat older than 60s" in message
    assert sensor.name in message

    # The failed run no longer counts; the replacement is judged on its own heartbeat.
    replacement = _start(
        instance, supervisor.launch(online_job, second), heartbeat=datetime.now(UTC)
    )
    assert isinstance(supervisor.tick(), SkipReason)
    assert _status(instance, replacement) == DagsterRunStatus.STARTED


def test_default_heartbeat_timeout_is_ten_trigger_intervals_but_at_least_two_minutes(
    instance: DagsterInstance, feature_set: fs.FeatureSet, online_job: JobDefinition
) -> None:
    assert feature_set.online_trigger_interval == 1  # 10 intervals < 120 s: 120 s applies
    sensor = build_supervisor_sensor(feature_set)
    assert sensor.minimum_interval_seconds == 15
    supervisor = Supervisor(sensor, instance)
    first = supervisor.tick()
    assert isinstance(first, RunRequest)
    run = _start(
        instance,
        supervisor.launch(online_job, first),
        heartbeat=datetime.now(UTC) - timedelta(seconds=100),
    )
    assert isinstance(supervisor.tick(), SkipReason)
    instance.add_run_tags(
        run.run_id, {HEARTBEAT_TAG: (datetime.now(UTC) - timedelta(seconds=130)).isoformat()}
    )
    second = supervisor.tick()
    assert isinstance(second, RunRequest)
    assert _status(instance, run) == DagsterRunStatus.FAILURE


def test_a_lost_cursor_does_not_reuse_run_keys(
    instance: DagsterInstance, sensor: SensorDefinition, online_job: JobDefinition
) -> None:
    # Run keys deduplicate forever: after the sensor's cursor is lost (a sensor reset in the
    # UI, or its state recreated), a request with an old key would never run.
    supervisor = Supervisor(sensor, instance)
    for attempt in (1, 2, 3):
        request = supervisor.tick()
        assert isinstance(request, RunRequest)
        assert request.run_key == f"card_spend-online-{attempt}"
        run = _start(instance, supervisor.launch(online_job, request), datetime.now(UTC))
        instance.report_run_failed(run)

    supervisor.cursor = None
    request = supervisor.tick()
    assert isinstance(request, RunRequest)
    assert request.run_key == "card_spend-online-4"
    assert supervisor.cursor == "4"
