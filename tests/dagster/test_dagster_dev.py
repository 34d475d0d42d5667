"""Acceptance: the example project under a real ``dagster dev``, and the asset CLI.

``dagster dev -m definitions`` is started headless on a free port with everything under a
temporary ``FS_DAGSTER_HOME``; the test drives it only through its HTTP and GraphQL API,
as a user's browser would, and looks at the online store the run fills.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance
from dagster._core.instance.ref import InstanceRef
from pyspark.sql import SparkSession

from tests.dagster.dagster_dev import (
    REPO,
    VENV_BIN,
    DagsterDev,
    group_members,
    popen_stoppable,
    project_env,
    run_tags,
    stop_group,
    tail,
)

pytestmark = [pytest.mark.dagster, pytest.mark.spark, pytest.mark.slow]

STORAGE = "user_transactions"
ONLINE_JOB = f"{STORAGE}__online_ingestion"
SENSOR = f"{STORAGE}__online_supervisor"
SEED_EVENTS = 200


def _seed(env: dict[str, str], events: int = SEED_EVENTS) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "jobs.generator", "--events", str(events)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote {events} events" in result.stdout


def _sqlite_rows(path: Path, table: str) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as con:
            (count,) = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    except sqlite3.OperationalError:  # not created yet, or locked by the writer
        return 0
    return int(count)


def test_dagster_dev_keeps_online_ingestion_running(
    tmp_path: Path, start_dagster_dev: Callable[..., DagsterDev]
) -> None:
    home = tmp_path / "home"
    env = project_env(home)
    _seed(env)
    dev = start_dagster_dev(env)
    selector = dev.wait_until_serving(SENSOR)

    sensor = dev.sensor(selector)
    assert [t["pipelineName"] for t in sensor["targets"]] == [ONLINE_JOB]
    # Declared RUNNING in code, so it runs as soon as the location loads; started
    # explicitly otherwise (as the UI's toggle does).
    dev.start_sensor(selector)

    runs: list[dict[str, Any]] = []
    rows = 0

    def ingesting() -> bool:
        nonlocal runs, rows
        runs = dev.runs(ONLINE_JOB)
        failed = [r for r in runs if r["status"] == "FAILURE"]
        assert not failed, f"online ingestion run failed: {failed}\n{dev.output()}"
        rows = _sqlite_rows(home / "online.db", STORAGE)
        return any(r["status"] == "STARTED" for r in runs) and rows > 0

    dev.wait_until(ingesting, timeout=240, what="a STARTED online run and online rows")

    # Exactly one online run, started by the supervisor with its first run key.
    [run] = runs
    tags = run_tags(run)
    assert tags["dagster/sensor_name"] == SENSOR
    assert tags["dagster/run_key"] == f"{STORAGE}-online-1"
    assert tags["fs_dagster/feature_set"] == "user-transactions"
    assert tags["fs_dagster/pipeline"] == "online"
    # 200 demo events over 50 users: at most one latest row per user.
    assert 0 < rows <= 50

    def heartbeat() -> bool:
        return "fs_dagster/heartbeat" in run_tags(dev.run(run["runId"]))

    dev.wait_until(heartbeat, timeout=60, what="the run's heartbeat tag")
    ticks = dev.sensor(selector)["sensorState"]["ticks"]
    # One tick launched the run; every other finished tick skipped (the run was on its way
    # or running); the newest tick may still be evaluating.
    assert [t["runKeys"] for t in ticks if t["runKeys"]] == [[f"{STORAGE}-online-1"]], ticks
    finished = [t["status"] for t in ticks if t["status"] != "STARTED"]
    assert set(finished) <= {"SUCCESS", "SKIPPED"}, ticks

    # SIGINT stops dagster dev and everything it started, the run and its Spark included;
    # the interrupted run is recorded as finished, not left STARTED.
    members = group_members(dev.process.pid)
    assert any("java" in m for m in members), members  # the run's Spark driver
    assert stop_group(dev.process, grace=30), f"SIGKILL was needed for {members}"

    # Started again on the same instance: the supervisor starts a new run, with a new run
    # key (a reused key would be deduplicated and never run).
    dev = start_dagster_dev(env)
    dev.wait_until_serving(SENSOR)
    second: list[dict[str, Any]] = []

    def restarted() -> bool:
        nonlocal second
        runs = dev.runs(ONLINE_JOB)
        second = [r for r in runs if r["runId"] != run["runId"]]
        return any(r["status"] == "STARTED" for r in second)

    dev.wait_until(restarted, timeout=240, what="a second online run after the restart")
    runs = dev.runs(ONLINE_JOB)
    first = next(r for r in runs if r["runId"] == run["runId"])
    assert first["status"] in {"FAILURE", "CANCELED"}, first
    assert [run_tags(r)["dagster/run_key"] for r in second] == [f"{STORAGE}-online-2"]
    # SIGINT alone stops it again. (The demo schedule, whose runs could outlive the grace
    # period, is off in tests: FS_DEMO_SCHEDULE=off.)
    members = group_members(dev.process.pid)
    assert stop_group(dev.process, grace=30), f"SIGKILL was needed for {members}"


def test_asset_materialize_cli(tmp_path: Path, spark: SparkSession) -> None:
    home = tmp_path / "home"
    env = project_env(home)
    _seed(env)
    log = tmp_path / "materialize.log"
    with log.open("wb") as out:
        process = popen_stoppable(
            [
                str(VENV_BIN / "dagster"),
                "asset",
                "materialize",
                "-m",
                "definitions",
                "--select",
                f"{STORAGE}/offline",
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            returncode = process.wait(timeout=600)
        finally:
            stop_group(process, grace=10)
    output = tail(log)
    assert returncode == 0, output
    assert "RUN_SUCCESS" in log.read_text(errors="replace"), output

    # Recorded in the instance like any materialization, with the rows it wrote.
    with DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"])) as instance:
        event = instance.get_latest_materialization_event(AssetKey([STORAGE, "offline"]))
        assert event is not None and event.asset_materialization is not None
        metadata = event.asset_materialization.metadata
        assert metadata["fs_dagster/rows_written"].value == SEED_EVENTS
        assert metadata["dagster/row_count"].value == SEED_EVENTS

    features = home / "offline" / STORAGE / "features"
    table = spark.read.format("delta").load(str(features))
    assert table.count() == SEED_EVENTS
    assert {"user_id", "amount", "amount_cents", "is_high_value", "ts"} <= set(table.columns)
    assert table.where("amount_cents != round(amount * 100)").count() == 0
