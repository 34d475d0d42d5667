"""Acceptance: aggregated online ingestion killed mid-stream, restarted by its sensor.

``dagster dev -m tests.dagster.aggregated_project`` serves one aggregated feature set
over a directory of JSON files. The test turns the supervisor sensor on and writes events
in files over time; three times, while the run still has files to read, it SIGKILLs the
online run's whole process tree (run worker, Spark JVM and its Python workers).
Only the sensor starts runs. In the end every window value of every key, at several read
times, must equal a brute-force oracle over the events: none lost, none counted twice.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import fs_dagster as fs
from tests.dagster.aggregated_project import card_spend, stream_dir
from tests.dagster.dagster_dev import (
    DagsterDev,
    descendants,
    kill_tree,
    project_env,
    run_tags,
)
from tests.integration.aggregation_oracle import assert_rows_match
from tests.integration.scenario import write_json_file

pytestmark = [pytest.mark.dagster, pytest.mark.spark, pytest.mark.slow]

MODULE = "tests.dagster.aggregated_project"
STORAGE = "card_spend"
ONLINE_JOB = f"{STORAGE}__online_ingestion"
SENSOR = f"{STORAGE}__online_supervisor"
KILLS = 3
FILES_PER_PHASE = 3
EVENTS_PER_FILE = 20
USERS = [f"u{i}" for i in range(6)]
T_END = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Every event lies in the 20 days before T_END, so the 30-day count read at T_END is the
# number of events counted so far.
SPAN = timedelta(days=20)


def _micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def _events(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Events of the 20 days before ``T_END``, denser towards it, in stream order.

    Ordered by event time, then shuffled within 20-minute buckets: out of order, but well
    inside the feature set's hour of allowed lateness, so every event counts.
    """
    spans = [SPAN.total_seconds(), 2 * 86400, 3 * 3600, 120]
    events: list[dict[str, Any]] = []
    for i in range(count):
        ts = T_END - timedelta(seconds=rng.uniform(0, spans[i % len(spans)]))
        events.append(
            {
                "user_id": rng.choice(USERS),
                "amount": round(rng.uniform(-50, 500), 3),
                "ts": ts.isoformat(),
            }
        )
    events.sort(key=lambda e: e["ts"])
    buckets: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        bucket = _micros(datetime.fromisoformat(event["ts"])) // 1_200_000_000
        buckets.setdefault(bucket, []).append(event)
    shuffled: list[dict[str, Any]] = []
    for bucket in sorted(buckets):
        rng.shuffle(buckets[bucket])
        shuffled += buckets[bucket]
    return shuffled


def _read_times(df: pd.DataFrame, rng: random.Random) -> list[int]:
    """Read times around the newest event, far after it, and next to random events."""
    newest = int(df["micros"].max())
    second, day = 1_000_000, 86_400_000_000
    times = [newest, newest + 5 * second, newest + 150 * second, newest + 7200 * second]
    times += [newest + 2 * day, newest + 15 * day, newest + 40 * day]
    times += [
        int(rng.choice(list(df["micros"]))) + rng.randrange(-3 * second, 3 * second)
        for _ in range(6)
    ]
    return times


class OnlineCounts:
    """How many events the online store has counted so far, read as a client would."""

    def __init__(self, home: Path, feature_set: fs.FeatureSet) -> None:
        self.path = home / "online.db"
        self.feature_set = feature_set
        self.client = fs.FeatureStore(
            online_store=fs.SqliteOnlineStore(self.path),
            offline_root=str(home / "offline"),
            feature_sets=[feature_set],
        )

    def __call__(self) -> int:
        if not self.path.exists():  # a reader must not be the one to create it
            return 0
        try:
            values = self.client.get_online_features(self.feature_set, USERS, at=T_END)
        except LookupError:  # no tiles yet
            return 0
        return int(values["count_amount_30d"].sum())


def _new_started_run(dev: DagsterDev, finished: list[str]) -> dict[str, Any]:
    """Wait for a STARTED online run other than ``finished``; returns it."""
    started: list[dict[str, Any]] = []

    def running() -> bool:
        nonlocal started
        runs = dev.runs(ONLINE_JOB)
        started = [r for r in runs if r["status"] == "STARTED" and r["runId"] not in finished]
        return bool(started)

    dev.wait_until(running, timeout=240, what=f"an online run after {len(finished)} kills")
    [run] = started
    return run


def _kill_while_reading(
    dev: DagsterDev,
    run: dict[str, Any],
    counts: OnlineCounts,
    counted: int,
    rest: Callable[[], None],
    delay: float,
) -> int:
    """SIGKILL ``run``'s process tree while it has files left to read; returns the count left.

    Once the run has counted more than ``counted`` events, ``rest`` writes the phase's
    other files; ``delay`` seconds later the tree is killed, so that kills land at
    different moments of a batch. The source reads one file per one-second trigger, so
    the run cannot have read both files written just before the kill. The sensor, not
    this, must notice.
    """
    dev.wait_until(
        lambda: counts() > counted, timeout=180, what=f"run {run['runId']} to count events"
    )
    rest()
    time.sleep(delay)
    worker = dev.run_worker_pid(run["runId"])
    assert worker in {p.pid for p in descendants(dev.process.pid)}, worker
    tree = kill_tree(worker)
    # The run's Spark JVM died with the worker (the step runs in the worker itself).
    assert any(Path(p.command.split()[0]).name == "java" for p in tree), [str(p) for p in tree]
    left = counts()  # before the sensor's next run can add to it
    dev.wait_until(
        lambda: dev.run(run["runId"])["status"] == "FAILURE",
        timeout=120,
        what=f"killed run {run['runId']} to be marked failed",
    )
    return left


def test_sensor_restarts_killed_aggregated_ingestion(
    tmp_path: Path, start_dagster_dev: Callable[..., DagsterDev]
) -> None:
    home = tmp_path / "home"
    env = project_env(home)
    env["FS_SPARK_SHUFFLE_PARTITIONS"] = "2"
    feature_set = card_spend(stream_dir(home))
    events = _events((KILLS + 1) * FILES_PER_PHASE * EVENTS_PER_FILE, random.Random(23))
    files = [events[i : i + EVENTS_PER_FILE] for i in range(0, len(events), EVENTS_PER_FILE)]
    counts = OnlineCounts(home, feature_set)
    jitter = random.Random(29)

    dev = start_dagster_dev(env, MODULE)
    selector = dev.wait_until_serving(SENSOR)
    assert dev.sensor(selector)["sensorState"]["status"] == "STOPPED"  # nothing starts alone
    dev.start_sensor(selector)

    killed: list[str] = []
    written = counted = 0

    def write(chunks: list[list[dict[str, Any]]]) -> None:
        nonlocal written
        for chunk in chunks:
            write_json_file(stream_dir(home), [json.dumps(e) for e in chunk])
            written += len(chunk)

    for phase in range(KILLS + 1):
        first, *rest = files[phase * FILES_PER_PHASE : (phase + 1) * FILES_PER_PHASE]
        write([first])
        run = _new_started_run(dev, killed)
        if phase == KILLS:
            write(rest)
            break
        counted = _kill_while_reading(
            dev, run, counts, counted, partial(write, rest), jitter.uniform(0, 0.6)
        )
        killed.append(run["runId"])
        assert counted < written, f"run {run['runId']} had read everything when killed"

    # The last run reads everything that is left.
    dev.wait_until(
        lambda: counts() >= written, timeout=180, what=f"all {written} events to be counted"
    )
    assert counts() == written, f"{counts() - written} events counted twice"

    # Each run was launched by the sensor, under a new run key; only the last one runs.
    runs = list(reversed(dev.runs(ONLINE_JOB)))  # oldest first
    keys = [run_tags(r).get("dagster/run_key") for r in runs]
    assert len(runs) >= KILLS + 1, keys
    assert keys == [f"{STORAGE}-online-{i}" for i in range(1, len(runs) + 1)], keys
    assert all(run_tags(r)["dagster/sensor_name"] == SENSOR for r in runs), runs
    assert [r["status"] for r in runs] == ["FAILURE"] * (len(runs) - 1) + ["STARTED"], runs
    assert runs[-1]["runId"] == run["runId"] and set(killed) < {r["runId"] for r in runs}
    ticks = dev.sensor(selector)["sensorState"]["ticks"]  # newest first
    assert [t["runKeys"] for t in reversed(ticks) if t["runKeys"]] == [[k] for k in keys], ticks
    # Every finished tick launched a run or skipped (the newest may still be evaluating).
    assert {t["status"] for t in ticks if t["status"] != "STARTED"} <= {"SUCCESS", "SKIPPED"}

    df = pd.DataFrame(events)
    df["micros"] = [_micros(datetime.fromisoformat(t)) for t in df["ts"]]
    users = sorted(df["user_id"].unique())
    assert users == USERS
    for at in _read_times(df, random.Random(31)):
        when = EPOCH + timedelta(microseconds=at)
        online = counts.client.get_online_features(feature_set, users, at=when)
        assert list(online["user_id"]) == users
        assert_rows_match(
            feature_set, online, df, at, f"at {when.isoformat()} after {len(killed)} kills:"
        )
