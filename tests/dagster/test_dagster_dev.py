"""Acceptance: the example project under a real ``dagster dev``, and the asset CLI.

``dagster dev -m definitions`` is started headless on a free port with everything under a
temporary ``FS_DAGSTER_HOME``; the test drives it only through its HTTP and GraphQL API,
as a user's browser would (online runs, a backfill of user-spend, one partition again,
a restart), and looks at the online store and the offline tables the runs fill.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance
from dagster._core.instance.ref import InstanceRef
from pandas.testing import assert_frame_equal
from pyspark.sql import SparkSession

from fs_dagster.orchestration.naming import HEARTBEAT_TAG
from tests.dagster.dagster_dev import (
    REPO,
    UNFINISHED,
    VENV_BIN,
    DagsterDev,
    group_members,
    popen_stoppable,
    project_env,
    repository_of,
    run_tags,
    stop_group,
    tail,
)

pytestmark = [pytest.mark.dagster, pytest.mark.spark, pytest.mark.slow]

STORAGE = "user_transactions"
ONLINE_JOB = f"{STORAGE}__online_ingestion"
SENSOR = f"{STORAGE}__online_supervisor"
SEED_EVENTS = 200
SPEND = "user_spend"
SPEND_ONLINE_JOB = f"{SPEND}__online_ingestion"
ONLINE_JOBS = (ONLINE_JOB, SPEND_ONLINE_JOB)
SCHEDULES = (f"{STORAGE}__offline_schedule", f"{SPEND}__offline_schedule")
BACKFILL = [SPEND, "backfill"]
# Tile columns of the offline tile table, and the resolutions user-spend keeps tiles at:
# every rung (1 s, 1 min, 1 h, 1 day) up to its longest window, 7 days.
RESOLUTION, TILE_START = "__fs_resolution", "__fs_tile_start"
TILE_RESOLUTIONS = (1, 60, 3600, 86400)


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


def _history(home: Path) -> tuple[pd.DataFrame, datetime, datetime]:
    """The example's history as written under ``home`` (event times naive UTC), and the
    range it covers."""
    directory = home / "history" / "transactions"
    rows = pd.read_parquet(directory)
    rows["ts"] = rows["ts"].dt.tz_convert(None)
    span = json.loads((directory / "_range.json").read_text())
    return rows, datetime.fromisoformat(span["start"]), datetime.fromisoformat(span["end"])


def _in_range(rows: pd.DataFrame, column: str, lo: datetime, hi: datetime) -> pd.DataFrame:
    naive_lo, naive_hi = lo.replace(tzinfo=None), hi.replace(tzinfo=None)
    return rows[(rows[column] >= naive_lo) & (rows[column] < naive_hi)]


def _offline(spark: SparkSession, home: Path, table: str) -> pd.DataFrame:
    """A Delta table of user-spend's offline store, in a stable order."""
    rows = spark.read.format("delta").load(str(home / "offline" / SPEND / table)).toPandas()
    if "ts" in rows:
        rows["ts"] = rows["ts"].astype("datetime64[us]")  # as the history's Parquet has it
    order = list(rows.columns) if table == "features" else ["user_id", RESOLUTION, TILE_START]
    return rows.sort_values(order).reset_index(drop=True)


def _delta_version(spark: SparkSession, home: Path, table: str) -> int:
    path = home / "offline" / SPEND / table
    newest = spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").first()
    assert newest is not None, path
    return int(newest["version"])


def _expected_tiles(events: pd.DataFrame) -> pd.DataFrame:
    """Oracle: count and sum of amounts per user and tile, for every tile resolution."""
    seconds = events["ts"].astype("datetime64[us]").astype("int64") // 1_000_000
    tiles = []
    for resolution in TILE_RESOLUTIONS:
        keyed = events[["user_id", "amount"]].copy()
        keyed[RESOLUTION] = resolution
        keyed[TILE_START] = seconds // resolution * resolution
        tiles.append(
            keyed.groupby(["user_id", RESOLUTION, TILE_START])["amount"]
            .agg(["count", "sum"])
            .reset_index()
        )
    return pd.concat(tiles).sort_values(["user_id", RESOLUTION, TILE_START]).reset_index(drop=True)


def _check_backfilled(
    features: pd.DataFrame, tiles: pd.DataFrame, home: Path, lo: datetime, hi: datetime
) -> None:
    """Of the backfill's range, the offline tables hold exactly the history's events of
    ``[lo, hi)`` and their tiles. (The offline run, the only other writer, is off; it
    would write the stream's events, all at or after the backfill's end.)"""
    history, start, end = _history(home)
    expected = _in_range(history, "ts", lo, hi)
    columns = ["user_id", "ts", "amount"]
    got = _in_range(features, "ts", start, end)[columns]
    assert_frame_equal(
        got.sort_values(columns).reset_index(drop=True),
        expected[columns].sort_values(columns).reset_index(drop=True),
    )

    seconds = tiles[TILE_START]
    owned = tiles[(seconds >= start.timestamp()) & (seconds < end.timestamp())]
    states = [json.loads(state) for state in owned["state"]]
    got_tiles = owned[["user_id", RESOLUTION, TILE_START]].assign(
        count=[s["count:amount"] for s in states], sum=[s["sum:amount"] for s in states]
    )
    assert_frame_equal(
        got_tiles.reset_index(drop=True), _expected_tiles(expected), check_dtype=False, rtol=1e-9
    )


@dataclass(frozen=True)
class Backfilled:
    """A backfill's one run and the offline tables after it."""

    run_id: str
    features: pd.DataFrame
    tiles: pd.DataFrame
    versions: dict[str, int]


def _check_backfill(
    dev: DagsterDev, home: Path, spark: SparkSession, backfill_id: str, days: list[str]
) -> Backfilled:
    """The backfill of ``days`` is one successful run that wrote exactly their history."""
    runs: list[dict[str, Any]] = []

    def backfill_ran() -> bool:
        nonlocal runs
        runs = dev.backfill(backfill_id)["runs"]
        failed = [r for r in runs if r["status"] not in {"SUCCESS", *UNFINISHED}]
        assert not failed, f"backfill run failed: {failed}\n{dev.output()}"
        return any(r["status"] == "SUCCESS" for r in runs)

    dev.wait_until(backfill_ran, timeout=420, what="the backfill's run to succeed")
    [run] = runs
    tags = run_tags(run)
    assert tags["dagster/asset_partition_range_start"] == days[0], tags
    assert tags["dagster/asset_partition_range_end"] == days[-1], tags

    lo = datetime.fromisoformat(days[0]).replace(tzinfo=UTC)
    hi = datetime.fromisoformat(days[-1]).replace(tzinfo=UTC) + timedelta(days=1)
    features, tiles = _offline(spark, home, "features"), _offline(spark, home, "tiles")
    _check_backfilled(features, tiles, home, lo, hi)
    versions = {t: _delta_version(spark, home, t) for t in ("features", "tiles")}
    return Backfilled(run["runId"], features, tiles, versions)


def _check_rerun(
    dev: DagsterDev, home: Path, spark: SparkSession, backfilled: Backfilled, run_id: str
) -> None:
    """A finished re-run of one backfilled day rewrote its tables and changed nothing."""
    assert dev.run(run_id)["status"] == "SUCCESS", dev.output()
    for table, version in backfilled.versions.items():
        assert _delta_version(spark, home, table) > version, table
    assert_frame_equal(_offline(spark, home, "features"), backfilled.features)
    # Tile rows carry the version of the run that wrote them.
    assert_frame_equal(
        _offline(spark, home, "tiles").drop(columns="batch_id"),
        backfilled.tiles.drop(columns="batch_id"),
    )


def test_dagster_dev_keeps_online_ingestion_running(
    tmp_path: Path, start_dagster_dev: Callable[..., DagsterDev], spark: SparkSession
) -> None:
    home = tmp_path / "home"
    env = project_env(home)
    _seed(env)
    dev = start_dagster_dev(env)
    selector = dev.wait_until_serving(SENSOR)
    repository = repository_of(selector)
    # The offline schedules are turned off, as in the UI: only the supervisors' runs and
    # those the test launches run (an offline run starting at a 10-minute mark would
    # compete for the 2 cores and could still be launching its Spark at the SIGINT).
    for schedule in SCHEDULES:
        dev.stop_schedule(repository, schedule)
    # The last 3 days of user-spend's history, backfilled as the UI's "Launch backfill"
    # does; launched now, it runs while the online runs start.
    node = dev.asset_node(BACKFILL)
    assert node["backfillPolicy"]["policyType"] == "SINGLE_RUN", node
    assert len(node["partitionKeys"]) == 7, node
    days = node["partitionKeys"][-3:]
    backfill_id = dev.launch_backfill(BACKFILL, days)

    sensor = dev.sensor(selector)
    assert [t["pipelineName"] for t in sensor["targets"]] == [ONLINE_JOB]
    # The online asset's page shows the sensor that keeps its run going.
    online_node = dev.asset_node([STORAGE, "online"])
    assert {"__typename": "Sensor", "name": SENSOR} in online_node["targetingInstigators"]
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
        return HEARTBEAT_TAG in run_tags(dev.run(run["runId"]))

    dev.wait_until(heartbeat, timeout=60, what="the run's heartbeat tag")
    ticks = dev.sensor(selector)["sensorState"]["ticks"]
    # One tick launched the run; every other finished tick skipped (the run was on its way
    # or running); the newest tick may still be evaluating.
    assert [t["runKeys"] for t in ticks if t["runKeys"]] == [[f"{STORAGE}-online-1"]], ticks
    finished = [t["status"] for t in ticks if t["status"] != "STARTED"]
    assert set(finished) <= {"SUCCESS", "SKIPPED"}, ticks

    backfilled = _check_backfill(dev, home, spark, backfill_id, days)

    # SIGINT stops dagster dev and everything it started, the runs and their Spark
    # included; the interrupted runs are recorded as finished, not left STARTED. Sent once
    # both online runs beat and nothing else runs: a run still launching its Spark (whose
    # JVM ignores SIGINT and exits only once its Python driver is gone) may outlive the
    # grace period.
    first_runs = dev.wait_until_settled(ONLINE_JOBS, timeout=240)
    members = group_members(dev.process.pid)
    assert any("java" in m for m in members), members  # the runs' Spark drivers
    left = stop_group(dev.process, grace=30)
    assert not left, f"SIGKILL was needed for {left}"

    # Started again on the same instance: each supervisor starts a new run, with a new run
    # key (a reused key would be deduplicated and never run). Meanwhile one backfilled day
    # is materialized again, as the UI's "Materialize" of one partition does.
    dev = start_dagster_dev(env)
    dev.wait_until_serving(SENSOR)
    again = dev.launch_partition_run(repository, BACKFILL, days[1])
    second_runs = dev.wait_until_settled(ONLINE_JOBS, timeout=420)
    assert not set(second_runs) & set(first_runs)
    for job, storage in ((ONLINE_JOB, STORAGE), (SPEND_ONLINE_JOB, SPEND)):
        first, second = dev.runs(job)[1:], dev.runs(job)[:1]
        assert [r["status"] for r in first] in (["FAILURE"], ["CANCELED"]), first
        assert [run_tags(r)["dagster/run_key"] for r in second] == [f"{storage}-online-2"]
    _check_rerun(dev, home, spark, backfilled, again)
    # The backfill is complete, with its one run (the daemon looks every 30 s).
    dev.wait_until(
        lambda: dev.backfill(backfill_id)["status"] in {"COMPLETED", "COMPLETED_SUCCESS"},
        timeout=120,
        what="the backfill to complete",
    )
    runs = dev.backfill(backfill_id)["runs"]
    assert [r["runId"] for r in runs] == [backfilled.run_id], runs

    # SIGINT alone stops it again. (The demo schedule is off in tests: FS_DEMO_SCHEDULE=off.)
    left = stop_group(dev.process, grace=30)
    assert not left, f"SIGKILL was needed for {left}"


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
