"""A real ``dagster dev`` for acceptance tests: starting, driving and stopping it.

``dagster dev`` runs headless on a free port in its own session, with an environment
from :func:`project_env`; tests talk to it only through its HTTP and GraphQL API, as a
user's browser would. Processes are found through ``/proc``, so that a test can kill a
run's whole process tree and check that nothing outlives the server.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from fs_dagster.orchestration.naming import HEARTBEAT_TAG
from tests.jvm_archive import short_lived

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def popen_stoppable(args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
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


def project_env(home: Path, dagster_yaml: str = "") -> dict[str, str]:
    """The environment of the example project's embedded defaults, all under ``home``.

    The demo schedule stays off (``FS_DEMO_SCHEDULE=off``): its runs would start and stop
    beside the ones a test watches.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FS_", "DAGSTER_"))
        and k not in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    }
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(dagster_yaml)
    env["FS_DAGSTER_HOME"] = str(home)
    env["FS_DEMO_SCHEDULE"] = "off"
    env["DAGSTER_HOME"] = str(dagster_home)
    env["PYTHONUNBUFFERED"] = "1"
    return short_lived(env)  # the runs' Spark drivers live for seconds to minutes


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Proc:
    """One process as ``/proc`` shows it; ``started`` tells a reused pid apart."""

    pid: int
    ppid: int
    pgid: int
    state: str
    started: int  # clock ticks after boot
    command: str

    def __str__(self) -> str:
        return f"{self.pid} {self.command[:200]}"


def processes() -> list[Proc]:
    """Every live (non-zombie) process."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            continue
        found.append(
            Proc(
                pid=int(stat.parent.name),
                ppid=int(fields[1]),
                pgid=int(fields[2]),
                state=fields[0],
                started=int(fields[19]),
                command=cmdline.replace(b"\0", b" ").decode(errors="replace").strip(),
            )
        )
    return found


def descendants(pid: int, among: Iterable[Proc] | None = None) -> list[Proc]:
    """The live descendants of ``pid``, whatever their process group."""
    children: dict[int, list[Proc]] = {}
    for proc in processes() if among is None else among:
        children.setdefault(proc.ppid, []).append(proc)
    found: list[Proc] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def still_alive(procs: Iterable[Proc]) -> list[Proc]:
    """Those of ``procs`` that have not exited (a pid since reused does not count)."""
    live = {(p.pid, p.started) for p in processes()}
    return [p for p in procs if (p.pid, p.started) in live]


def wait_gone(procs: list[Proc], timeout: float) -> list[Proc]:
    """Wait up to ``timeout`` for ``procs`` to exit; returns those still alive."""
    deadline = time.monotonic() + timeout
    left = still_alive(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = still_alive(left)
    return left


def signal_all(procs: Iterable[Proc], sig: signal.Signals) -> None:
    """Send ``sig`` to each of ``procs`` that is still there."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def kill_tree(pid: int) -> list[Proc]:
    """SIGKILL process ``pid`` and all its descendants at once; returns what was killed.

    Everything is stopped first (SIGSTOP), so no process reacts to another's death or
    starts a child between the listing and the kill; the listing is then repeated until
    it holds still.
    """
    roots = [p for p in processes() if p.pid == pid]
    assert roots, f"process {pid} is not running"
    root = roots[0]
    tree = [root, *descendants(pid)]
    while True:
        signal_all(tree, signal.SIGSTOP)
        again = [root, *descendants(pid)]
        if {p.pid for p in again} <= {p.pid for p in tree}:
            break
        tree += [p for p in again if p.pid not in {t.pid for t in tree}]
    signal_all(tree, signal.SIGKILL)
    left = wait_gone(tree, timeout=30)
    assert not left, f"still alive after SIGKILL: {[str(p) for p in left]}"
    return tree


def group_members(pgid: int) -> list[str]:
    """Live processes of process group ``pgid``, as ``pid command`` lines."""
    return [str(p) for p in processes() if p.pgid == pgid]


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is alive."""
    return bool(group_members(pgid))


def stop_group(process: subprocess.Popen[Any], grace: float) -> list[str]:
    """SIGINT the process group, then SIGKILL whatever of it is left after ``grace``.

    Returns what was left for SIGKILL (``pid command`` lines): empty when everything
    stopped on SIGINT alone.
    """
    pgid = process.pid  # the leader of its own session and group (start_new_session)
    try:
        os.killpg(pgid, signal.SIGINT)
    except ProcessLookupError:
        return []
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    # Run workers and Spark JVMs share the group: wait for them too.
    while group_alive(pgid) and time.monotonic() < deadline + 10:
        time.sleep(0.5)
    left = group_members(pgid)
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    process.wait(timeout=30)
    return left


def tail(path: Path, lines: int = 80) -> str:
    """The last ``lines`` lines of a log file."""
    if not path.exists():
        return "(no output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- the server


class DagsterDev:
    """A running ``dagster dev`` and a client of its API."""

    def __init__(self, process: subprocess.Popen[Any], port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        """The end of its log."""
        return tail(self.log)

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        """Run a GraphQL query; fails the test on GraphQL errors."""
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate``; fail with the log if it times out or dagster dev exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"dagster dev exited ({self.process.returncode}) while waiting for {what}:\n"
                    + self.output()
                )
            if predicate():
                return
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.output()}")

    def wait_until_serving(self, sensor_name: str) -> dict[str, str]:
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
            "sensorName": sensor_name,
        }

    def sensor(self, selector: dict[str, str]) -> dict[str, Any]:
        """The sensor's targets, status and recent ticks."""
        sensor: dict[str, Any] = self.graphql(SENSOR_STATE, selector=selector)["sensorOrError"]
        assert sensor["__typename"] == "Sensor", sensor
        return sensor

    def start_sensor(self, selector: dict[str, str]) -> None:
        """Turn the sensor on, as the UI's toggle does (a no-op if it is running)."""
        if self.sensor(selector)["sensorState"]["status"] == "RUNNING":
            return
        started = self.graphql(START_SENSOR, selector=selector)["startSensor"]
        assert started["__typename"] == "Sensor", started
        assert started["sensorState"]["status"] == "RUNNING", started

    def runs(self, job_name: str) -> list[dict[str, Any]]:
        """The job's runs, newest first."""
        result = self.graphql(RUNS, filter={"pipelineName": job_name})["runsOrError"]
        assert result["__typename"] == "Runs", result
        runs: list[dict[str, Any]] = result["results"]
        return runs

    def run(self, run_id: str) -> dict[str, Any]:
        """One run."""
        result = self.graphql(RUNS, filter={"runIds": [run_id]})["runsOrError"]
        assert result["__typename"] == "Runs", result
        assert len(result["results"]) == 1, result
        run: dict[str, Any] = result["results"][0]
        return run

    def unfinished_runs(self) -> list[dict[str, Any]]:
        """Every run not finished yet (queued, starting, started or canceling)."""
        result = self.graphql(RUNS, filter={"statuses": UNFINISHED})["runsOrError"]
        assert result["__typename"] == "Runs", result
        runs: list[dict[str, Any]] = result["results"]
        return runs

    def wait_until_settled(self, online_jobs: Iterable[str], timeout: float) -> list[str]:
        """Wait until the only runs in progress are one beating run of each online job.

        A run that is still queued or launching (its Spark starting) may not stop within
        a SIGINT's grace period, so a test stops ``dagster dev`` only once settled.
        Returns the online runs' ids.
        """
        jobs = set(online_jobs)
        settled: list[str] = []

        def check() -> bool:
            nonlocal settled
            runs = self.unfinished_runs()
            beating = [
                r
                for r in runs
                if r["jobName"] in jobs
                and r["status"] == "STARTED"
                and HEARTBEAT_TAG in run_tags(r)
            ]
            settled = [r["runId"] for r in beating]
            return len(runs) == len(beating) and {r["jobName"] for r in beating} == jobs

        what = f"only beating runs of {sorted(jobs)}, one each, in progress"
        self.wait_until(check, timeout=timeout, what=what)
        assert len(settled) == len(jobs), settled
        return settled

    def stop_schedule(self, repository: dict[str, str], name: str) -> None:
        """Turn a schedule off, as the UI's toggle does (stored in the instance)."""
        selector = {**repository, "scheduleName": name}
        schedule = self.graphql(SCHEDULE_ID, selector=selector)["scheduleOrError"]
        assert schedule["__typename"] == "Schedule", schedule
        stopped = self.graphql(STOP_SCHEDULE, id=schedule["id"])["stopRunningSchedule"]
        assert stopped["__typename"] == "ScheduleStateResult", stopped
        assert stopped["scheduleState"]["status"] == "STOPPED", stopped

    def asset_node(self, asset_key: list[str]) -> dict[str, Any]:
        """An asset's partition keys, backfill policy, and the sensors and schedules that
        target it (as its page in the UI lists them)."""
        node: dict[str, Any] = self.graphql(ASSET_NODE, key={"path": asset_key})["assetNodeOrError"]
        assert node["__typename"] == "AssetNode", node
        return node

    def launch_backfill(self, asset_key: list[str], partitions: list[str]) -> str:
        """Backfill ``partitions`` of an asset, as the UI's "Launch backfill" does."""
        params = {"assetSelection": [{"path": asset_key}], "partitionNames": partitions}
        launched = self.graphql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id: str = launched["backfillId"]
        return backfill_id

    def backfill(self, backfill_id: str) -> dict[str, Any]:
        """A backfill's status and runs."""
        found: dict[str, Any] = self.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]
        assert found["__typename"] == "PartitionBackfill", found
        return found

    def launch_partition_run(
        self, repository: dict[str, str], asset_key: list[str], partition: str
    ) -> str:
        """Materialize one partition of an asset, as the UI's "Materialize" does; the run id."""
        params = {
            "mode": "default",
            "selector": {
                **repository,
                "pipelineName": ASSET_JOB,
                "assetSelection": [{"path": asset_key}],
            },
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        }
        launched = self.graphql(LAUNCH_RUN, params=params)["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id: str = launched["run"]["runId"]
        return run_id

    def run_worker_pid(self, run_id: str) -> int:
        """The pid of the run's worker process, as the run's event log records it."""
        logs = self.graphql(RUN_EVENTS, runId=run_id)["logsForRun"]
        assert logs["__typename"] == "EventConnection", logs
        for event in logs["events"]:
            found = re.match(r"Started process for run \(pid: (\d+)\)", event.get("message", ""))
            if found:
                return int(found.group(1))
        raise AssertionError(f"run {run_id} recorded no worker process: {logs['events']}")


def run_tags(run: dict[str, Any]) -> dict[str, str]:
    """A run's tags as a dict."""
    return {t["key"]: t["value"] for t in run["tags"]}


def repository_of(selector: dict[str, str]) -> dict[str, str]:
    """The repository part of a sensor selector (from :meth:`DagsterDev.wait_until_serving`)."""
    return {k: selector[k] for k in ("repositoryLocationName", "repositoryName")}


ASSET_JOB = "__ASSET_JOB"  # the job Dagster materializes selected assets with
UNFINISHED = ["QUEUED", "NOT_STARTED", "MANAGED", "STARTING", "STARTED", "CANCELING"]


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

RUN_EVENTS = """
query ($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
    ... on PythonError { message }
  }
}
"""

SCHEDULE_ID = """
query ($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule { id }
    ... on PythonError { message }
  }
}
"""

STOP_SCHEDULE = """
mutation ($id: String!) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}
"""

ASSET_NODE = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      partitionKeys
      backfillPolicy { policyType maxPartitionsPerRun }
      targetingInstigators { __typename ... on Sensor { name } ... on Schedule { name } }
    }
  }
}
"""

LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""

BACKFILL = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      partitionNames
      runs { runId status tags { key value } }
      error { message }
    }
    ... on Error { message }
  }
}
"""

LAUNCH_RUN = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""
