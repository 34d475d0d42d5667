"""The offline schedule: its cron, its run requests, and the ticks the scheduler makes of it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunsFilter,
    ScheduleDefinition,
    build_schedule_context,
    instance_for_test,
)
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.storage.tags import SCHEDULED_EXECUTION_TIME_TAG
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._scheduler.scheduler import launch_scheduled_runs
from dagster._utils.schedules import cron_string_iterator
from dagster_shared.error import SerializableErrorInfo

import fs_dagster as fs
from fs_dagster.orchestration.naming import FEATURE_SET_TAG, PIPELINE_TAG
from fs_dagster.orchestration.offline import build_offline_schedule
from tests.integration.scenario import SCHEMA, to_cents

pytestmark = [pytest.mark.dagster]

EVERY_TEN_MINUTES = "*/10 * * * *"
OFFLINE_JOB = "card_spend__offline_ingestion"
OFFLINE_KEY = AssetKey(["card_spend", "offline"])
SCHEDULE = "card_spend__offline_schedule"


def card_spend(stream: Path, policy: str = EVERY_TEN_MINUTES) -> fs.FeatureSet:
    """A feature set over a directory of JSON files, ingested offline on ``policy``."""
    source = fs.FileSource(name="card_events", path=str(stream), schema=SCHEMA)

    def card_spend() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(
            "SELECT user_id, amount, to_cents(amount) AS cents, ts FROM card_events",
            functions=[to_cents],
        )

    return fs.streaming.feature_set(
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        offline_scheduling_policy=policy,
    )(card_spend)


def card_spend_definitions(home: Path, policy: str = EVERY_TEN_MINUTES) -> Definitions:
    return fs.build_definitions(
        feature_sets=[card_spend(home / "stream", policy)],
        feature_store=fs.FeatureStoreResource(
            offline_root=str(home / "offline"),
            checkpoint_root=str(home / "checkpoints"),
            sqlite_path=str(home / "online.db"),
        ),
        pyspark=fs.spark_resource(fs.SparkSettings()),
    )


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


@pytest.mark.parametrize("policy", [EVERY_TEN_MINUTES, "15 3 * * *", "0 6 * * 1-5"])
def test_cron_is_the_offline_scheduling_policy_in_utc(tmp_path: Path, policy: str) -> None:
    defs = card_spend_definitions(tmp_path, policy)
    schedule = defs.get_schedule_def(SCHEDULE)
    assert schedule.cron_schedule == policy
    assert schedule.execution_timezone == "UTC"
    assert schedule.job_name == OFFLINE_JOB
    job = defs.get_job_def(OFFLINE_JOB)
    assert job.asset_layer.executable_asset_keys == {OFFLINE_KEY}
    assert job.tags[FEATURE_SET_TAG] == "card-spend"
    assert job.tags[PIPELINE_TAG] == "offline"


def test_stopped_when_not_started_automatically(tmp_path: Path) -> None:
    from dagster import DefaultScheduleStatus

    feature_set = card_spend(tmp_path / "stream")
    assert build_offline_schedule(feature_set).default_status == DefaultScheduleStatus.RUNNING
    stopped = build_offline_schedule(feature_set, DefaultScheduleStatus.STOPPED)
    assert stopped.default_status == DefaultScheduleStatus.STOPPED


def test_evaluation_requests_the_offline_job(instance: DagsterInstance, tmp_path: Path) -> None:
    defs = card_spend_definitions(tmp_path)
    schedule: ScheduleDefinition = defs.get_schedule_def(SCHEDULE)
    when = datetime(2026, 3, 1, 12, 10, tzinfo=UTC)
    context = build_schedule_context(instance=instance, scheduled_execution_time=when)
    data = schedule.evaluate_tick(context)
    assert data.skip_message is None
    assert data.run_requests is not None and len(data.run_requests) == 1
    request = data.run_requests[0]
    # No job name in the request: the run is of the schedule's own job, whose tags
    # (feature set, pipeline) the run gets when it is created (see the scheduler test).
    assert request.job_name is None
    assert schedule.job_name == OFFLINE_JOB
    assert request.run_key is None
    assert request.run_config == {}
    assert request.tags == {"dagster/schedule_name": SCHEDULE}
    assert request.asset_selection is None


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (EVERY_TEN_MINUTES, ["2026-03-01T12:10", "2026-03-01T12:20", "2026-03-01T12:30"]),
        ("15 3 * * *", ["2026-03-02T03:15", "2026-03-03T03:15", "2026-03-04T03:15"]),
        # 2026-03-01 is a Sunday.
        ("0 6 * * 1-5", ["2026-03-02T06:00", "2026-03-03T06:00", "2026-03-04T06:00"]),
    ],
)
def test_tick_times_from_a_fixed_start(tmp_path: Path, policy: str, expected: list[str]) -> None:
    schedule = card_spend_definitions(tmp_path, policy).get_schedule_def(SCHEDULE)
    assert isinstance(schedule.cron_schedule, str)
    start = datetime(2026, 3, 1, 12, 7, tzinfo=UTC)
    ticks = cron_string_iterator(
        start.timestamp(), schedule.cron_schedule, schedule.execution_timezone
    )
    got = [next(ticks) for _ in expected]
    assert [t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") for t in got] == expected
    assert all(t.utcoffset() == timedelta(0) for t in got)  # UTC, not local time


def test_scheduler_queues_one_offline_run_per_tick(tmp_path: Path) -> None:
    """The scheduler daemon's own tick logic, on a code location loaded like dagster dev's."""
    location = tmp_path / "location.py"
    location.write_text(
        "from pathlib import Path\n"
        "from tests.dagster.test_offline_schedule import card_spend_definitions\n"
        "defs = card_spend_definitions(Path(__file__).parent)\n"
    )
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=str(location), attribute="defs"),
        location_name="card_spend_location",
    )
    queued = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
        }
    }
    logger = logging.getLogger("test_scheduler")
    with (
        instance_for_test(overrides=queued) as instance,
        create_test_daemon_workspace_context(
            InProcessWorkspaceLoadTarget(origin), instance
        ) as workspace,
    ):
        iteration_times: dict[str, object] = {}

        def scheduler_iteration(hour: int, minute: int) -> None:
            end = datetime(2026, 3, 1, hour, minute, tzinfo=UTC)
            results = list(
                launch_scheduled_runs(workspace, logger, end, iteration_times)  # type: ignore[arg-type]
            )
            errors = [r for r in results if isinstance(r, SerializableErrorInfo)]
            assert not errors, errors[0].to_string()

        def runs() -> list[tuple[str, DagsterRunStatus, str]]:
            found = instance.get_runs(RunsFilter(job_name=OFFLINE_JOB), ascending=True)
            return [(r.job_name, r.status, r.tags[SCHEDULED_EXECUTION_TIME_TAG]) for r in found]

        # The daemon first sees the (default-running) schedule at 12:07: nothing is due.
        scheduler_iteration(12, 7)
        scheduler_iteration(12, 9)
        assert runs() == []
        scheduler_iteration(12, 12)
        scheduler_iteration(12, 15)
        scheduler_iteration(12, 25)
        scheduler_iteration(12, 33)
        assert [tag for *_, tag in runs()] == [
            "2026-03-01T12:10:00+00:00",
            "2026-03-01T12:20:00+00:00",
            "2026-03-01T12:30:00+00:00",
        ]
        assert {(job, status) for job, status, _ in runs()} == {
            (OFFLINE_JOB, DagsterRunStatus.QUEUED)
        }
        for run in instance.get_runs(RunsFilter(job_name=OFFLINE_JOB)):
            # The run's plan is the one step materializing the offline asset.
            assert run.execution_plan_snapshot_id is not None
            plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
            assert [step.key for step in plan.steps] == ["card_spend__offline"]
            assert run.tags[FEATURE_SET_TAG] == "card-spend"
            assert run.tags[PIPELINE_TAG] == "offline"

        states = [s for s in instance.all_instigator_state() if s.instigator_name == SCHEDULE]
        assert len(states) == 1
        ticks = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id)
        assert sorted(
            datetime.fromtimestamp(t.timestamp, UTC).strftime("%H:%M") for t in ticks
        ) == ["12:10", "12:20", "12:30"]
        assert {t.status for t in ticks} == {TickStatus.SUCCESS}
