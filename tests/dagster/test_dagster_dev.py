"""Acceptance: the example project under a real ``dagster dev``, and the asset CLI.

``dagster dev -m definitions`` is started headless on a free port with everything under a
temporary ``FS_DAGSTER_HOME``; the test drives it only through its HTTP and GraphQL API,
as a user's browser would, and looks at the online store the run fills.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests
from dagster import AssetKey, DagsterInstance
from dagster._core.instance.ref import InstanceRef
from pyspark.sql import SparkSession

pytestmark = [pytest.mark.dagster, pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
STORAGE = "user_transactions"
ONLINE_JOB = f"{STORAGE}__online_ingestion"
SENSOR = f"{STORAGE}__online_supervisor"
SEED_EVENTS = 200


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _popen_stoppable(args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``args`` in a new session, with SIGINT and SIGTERM at their defaults.

    A non-interactive shell may have started pytest with SIGINT ignored, and children
    inherit ignored signals, which would make dagster dev deaf to SIGINT. Handled (rather
    than ignored) signals are reset to their defaults by exec, so while starting the child
    an ignored signal gets a no-op handler in this process: the same for this process,
    the default for the child. (No ``preexec_fn``: it is unsafe with threads, and the
    session's Spark runs py4j threads.)
    """
    ignored = [
        sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) == signal.SIG_IGN
    ]
    for sig in ignored:
        signal.signal(sig, lambda *_: None)
    try:
        return subprocess.Popen(args, start_new_session=True, **kwargs)
    finally:
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)


def _project_env(home: Path) -> dict[str, str]:
    """The environment of the example project's embedded defaults, all under ``home``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FS_", "DAGSTER_"))
        and k not in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    }
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("")
    env["FS_DAGSTER_HOME"] = str(home)
    env["DAGSTER_HOME"] = str(dagster_home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


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


def _stop_group(process: subprocess.Popen[Any], grace: float) -> bool:
    """SIGINT the process group, then SIGKILL whatever of it is left after ``grace``.

    Returns whether everything stopped on SIGINT alone.
    """
    pgid = process.pid  # the leader of its own session and group (start_new_session)
    try:
        os.killpg(pgid, signal.SIGINT)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    # Run workers and Spark JVMs share the group: wait for them too.
    while _group_alive(pgid) and time.monotonic() < deadline + 10:
        time.sleep(0.5)
    graceful = not _group_alive(pgid)
    if not graceful:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    process.wait(timeout=30)
    return graceful


def _group_members(pgid: int) -> list[str]:
    """Live (non-zombie) processes of process group ``pgid``, as ``pid command`` lines."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
            members.append(f"{stat.parent.name} {command}")
    return members


def _group_alive(pgid: int) -> bool:
    return bool(_group_members(pgid))


def _tail(path: Path, lines: int = 80) -> str:
    if not path.exists():
        return "(no output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class DagsterDev:
    """A running ``dagster dev`` and a client of its API."""

    def __init__(self, process: subprocess.Popen[Any], port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        return _tail(self.log)

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"dagster dev exited ({self.process.returncode}) while waiting for {what}:\n"
                    + self.output()
                )
            if predicate():
                return
            time.sleep(2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.output()}")

    def wait_until_serving(self) -> dict[str, str]:
        """Wait for the webserver and the code location; returns the sensor's selector."""

        def server_up() -> bool:
            try:
                return requests.get(f"{self.url}/server_info", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        self.wait_until(server_up, timeout=180, what="/server_info")
        info = requests.get(f"{self.url}/server_info", timeout=10).json()
        assert "dagster_webserver_version" in info, info

        locations: list[dict[str, Any]] = []

        def location_loaded() -> bool:
            nonlocal locations
            workspace = self.graphql(WORKSPACE)["workspaceOrError"]
            assert workspace["__typename"] == "Workspace", workspace
            locations = workspace["locationEntries"]
            return bool(locations) and all(e["loadStatus"] == "LOADED" for e in locations)

        self.wait_until(location_loaded, timeout=180, what="the code location to load")
        [location] = locations
        loaded = location["locationOrLoadError"]
        assert loaded["__typename"] == "RepositoryLocation", loaded
        [repository] = loaded["repositories"]
        return {
            "repositoryLocationName": location["name"],
            "repositoryName": repository["name"],
            "sensorName": SENSOR,
        }

    def online_runs(self) -> list[dict[str, Any]]:
        result = self.graphql(RUNS, filter={"pipelineName": ONLINE_JOB})["runsOrError"]
        assert result["__typename"] == "Runs", result
        runs: list[dict[str, Any]] = result["results"]
        return runs


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


@pytest.fixture
def start_dagster_dev(
    tmp_path: Path, spark_jars: tuple[str, ...]
) -> Iterator[Callable[[dict[str, str]], DagsterDev]]:
    """Starts ``dagster dev -m definitions`` with an environment; all stopped afterwards."""
    assert spark_jars  # the example project reads them from .services/spark/lib
    started: list[subprocess.Popen[Any]] = []
    logs: list[IO[bytes]] = []

    def start(env: dict[str, str]) -> DagsterDev:
        port = _free_port()
        log = tmp_path / f"dagster_dev_{len(started) + 1}.log"
        out: IO[bytes] = log.open("wb")
        logs.append(out)
        process = _popen_stoppable(
            [
                str(VENV_BIN / "dagster"),
                "dev",
                "-m",
                "definitions",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        return DagsterDev(process, port, log)

    try:
        yield start
    finally:
        left: list[str] = []
        for process in started:
            try:
                _stop_group(process, grace=30)
            finally:
                left += _group_members(process.pid)
        for out in logs:
            out.close()
        # Nothing it started may outlive it.
        assert not left, f"processes of dagster dev were left running: {left}"


def _sqlite_rows(path: Path, table: str) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as con:
            (count,) = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    except sqlite3.OperationalError:  # not created yet, or locked by the writer
        return 0
    return int(count)


WORKSPACE = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
          ... on RepositoryLocation { repositories { name } }
        }
      }
    }
  }
}
"""

SENSOR_STATE = """
query ($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      name
      jobOriginId
      targets { pipelineName }
      sensorState {
        status
        ticks(limit: 200) { status skipReason runKeys error { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""

START_SENSOR = """
mutation ($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}
"""

RUNS = """
query ($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs {
      results { runId status jobName tags { key value } }
    }
    ... on PythonError { message }
  }
}
"""


def test_dagster_dev_keeps_online_ingestion_running(
    tmp_path: Path, start_dagster_dev: Callable[[dict[str, str]], DagsterDev]
) -> None:
    home = tmp_path / "home"
    env = _project_env(home)
    _seed(env)
    dev = start_dagster_dev(env)
    selector = dev.wait_until_serving()

    sensor = dev.graphql(SENSOR_STATE, selector=selector)["sensorOrError"]
    assert sensor["__typename"] == "Sensor", sensor
    assert [t["pipelineName"] for t in sensor["targets"]] == [ONLINE_JOB]
    # Declared RUNNING in code, so it runs as soon as the location loads; started
    # explicitly otherwise (as the UI's toggle does).
    if sensor["sensorState"]["status"] != "RUNNING":
        started = dev.graphql(START_SENSOR, selector=selector)["startSensor"]
        assert started["__typename"] == "Sensor", started
        assert started["sensorState"]["status"] == "RUNNING", started

    runs: list[dict[str, Any]] = []
    rows = 0

    def ingesting() -> bool:
        nonlocal runs, rows
        runs = dev.online_runs()
        failed = [r for r in runs if r["status"] == "FAILURE"]
        assert not failed, f"online ingestion run failed: {failed}\n{dev.output()}"
        rows = _sqlite_rows(home / "online.db", STORAGE)
        return any(r["status"] == "STARTED" for r in runs) and rows > 0

    dev.wait_until(ingesting, timeout=240, what="a STARTED online run and online rows")

    # Exactly one online run, started by the supervisor with its first run key.
    [run] = runs
    tags = _tags(run)
    assert tags["dagster/sensor_name"] == SENSOR
    assert tags["dagster/run_key"] == f"{STORAGE}-online-1"
    assert tags["fs_dagster/feature_set"] == "user-transactions"
    assert tags["fs_dagster/pipeline"] == "online"
    # 200 demo events over 50 users: at most one latest row per user.
    assert 0 < rows <= 50

    def heartbeat() -> bool:
        result = dev.graphql(RUNS, filter={"runIds": [run["runId"]]})["runsOrError"]
        return "fs_dagster/heartbeat" in _tags(result["results"][0])

    dev.wait_until(heartbeat, timeout=60, what="the run's heartbeat tag")
    ticks = dev.graphql(SENSOR_STATE, selector=selector)["sensorOrError"]["sensorState"]["ticks"]
    # One tick launched the run; every other tick skipped (the run was on its way or running).
    assert [t["runKeys"] for t in ticks if t["runKeys"]] == [[f"{STORAGE}-online-1"]], ticks
    assert {t["status"] for t in ticks} <= {"SUCCESS", "SKIPPED"}, ticks

    # SIGINT stops dagster dev and everything it started, the run and its Spark included;
    # the interrupted run is recorded as finished, not left STARTED.
    members = _group_members(dev.process.pid)
    assert any("java" in m for m in members), members  # the run's Spark driver
    assert _stop_group(dev.process, grace=30), f"SIGKILL was needed for {members}"

    # Started again on the same instance: the supervisor starts a new run, with a new run
    # key (a reused key would be deduplicated and never run).
    dev = start_dagster_dev(env)
    dev.wait_until_serving()
    second: list[dict[str, Any]] = []

    def restarted() -> bool:
        nonlocal second
        runs = dev.online_runs()
        second = [r for r in runs if r["runId"] != run["runId"]]
        return any(r["status"] == "STARTED" for r in second)

    dev.wait_until(restarted, timeout=240, what="a second online run after the restart")
    runs = dev.online_runs()
    first = next(r for r in runs if r["runId"] == run["runId"])
    assert first["status"] in {"FAILURE", "CANCELED"}, first
    assert [_tags(r)["dagster/run_key"] for r in second] == [f"{STORAGE}-online-2"]
    # Clean-up only: a run the demo schedule launched a moment before may need SIGKILL
    # here; what must hold is that nothing of the group survives.
    _stop_group(dev.process, grace=30)
    deadline = time.monotonic() + 15  # processes killed a moment ago may still be exiting
    while _group_alive(dev.process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _group_alive(dev.process.pid), _group_members(dev.process.pid)


def test_asset_materialize_cli(tmp_path: Path, spark: SparkSession) -> None:
    home = tmp_path / "home"
    env = _project_env(home)
    _seed(env)
    log = tmp_path / "materialize.log"
    with log.open("wb") as out:
        process = _popen_stoppable(
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
            _stop_group(process, grace=10)
    output = _tail(log)
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
