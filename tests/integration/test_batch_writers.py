"""A trigger's writers: those of ``together`` side by side, then those of ``then`` in order."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.computation import BatchContext, Computation, Computed, EventRange
from fs_dagster.engine.sources import read_source
from fs_dagster.engine.writers import BatchWriters, Outcome

pytestmark = pytest.mark.spark

SCHEMA = "user_id STRING, amount DOUBLE, ts TIMESTAMP"
CTX = BatchContext(trigger="offline", version=0, app_id="app", txn_version=0)


def _computed(spark: SparkSession, tmp_path: Path) -> Computed:
    """Three good records and one that does not parse, computed as a cached batch."""
    name = f"ev_{uuid.uuid4().hex[:6]}"
    lines = [
        json.dumps({"user_id": f"u{i}", "amount": float(i), "ts": "2026-03-01T10:00:00Z"})
        for i in range(3)
    ]
    (tmp_path / "part.json").write_text("\n".join([*lines, "{not json"]) + "\n")
    source = fs.FileSource(name=name, path=str(tmp_path), schema=SCHEMA)

    def build() -> object:
        return fs.SparkSqlTransformation(f"SELECT user_id, amount, ts FROM {name}")

    fset = fs.streaming.feature_set(
        name="writers", key="user_id", data_sources=[source], timestamp_column_name="ts"
    )(build)  # type: ignore[arg-type]
    batch = read_source(spark, source, required_columns=["user_id", "ts"], streaming=False)
    return Computation(fset, EventRange(None, None, ""), {name: batch}, cache=True).run(
        {name: batch}
    )


class Meeting:
    """A writer that waits for the others of its meeting: it can finish only when they
    all run at the same time."""

    def __init__(self, barrier: threading.Barrier, log: list[str], name: str) -> None:
        self.barrier, self.log, self.name = barrier, log, name

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        self.barrier.wait(timeout=60)
        self.log.append(self.name)
        return Outcome(rows_written=computed.row_count, dead_letters=computed.malformed)


class After:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        self.log.append(self.name)
        return Outcome(sink_messages={self.name: computed.rows_in})


def test_together_run_side_by_side_then_the_rest_in_order(
    spark: SparkSession, tmp_path: Path
) -> None:
    computed = _computed(spark, tmp_path)
    log: list[str] = []
    barrier = threading.Barrier(2)  # one after the other, the first would wait in vain
    writers = BatchWriters(
        together=[Meeting(barrier, log, "rows"), Meeting(barrier, log, "archive")],
        then=[After(log, "sink"), After(log, "updates")],
    )
    outcomes = writers.write(computed, CTX)
    assert [o.rows_written for o in outcomes[:2]] == [3, 3]
    assert [o.dead_letters for o in outcomes[:2]] == [1, 1]
    assert [o.sink_messages for o in outcomes[2:]] == [{"sink": 4}, {"updates": 4}]
    assert sorted(log[:2]) == ["archive", "rows"]
    assert log[2:] == ["sink", "updates"]
    computed.release()


class Failing:
    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        raise RuntimeError("the offline table refused the append")


class Slow:
    def __init__(self) -> None:
        self.finished = False

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        time.sleep(1.0)
        self.finished = True
        return Outcome()


def test_a_failing_writer_fails_the_batch_once_the_others_are_done(
    spark: SparkSession, tmp_path: Path
) -> None:
    computed = _computed(spark, tmp_path)
    slow = Slow()
    sink = After([], "sink")
    writers = BatchWriters(together=[Failing(), slow], then=[sink])
    with pytest.raises(RuntimeError, match="refused the append"):
        writers.write(computed, CTX)
    assert slow.finished
    assert sink.log == []  # nothing after a failed write
    computed.release()


class Properties:
    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self.seen: list[str | None] = []

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        self.seen.append(self.spark.sparkContext.getLocalProperty("fs.test.batch"))
        self.seen.append(self.spark.sparkContext.getLocalProperty("spark.jobGroup.id"))
        return Outcome()


def test_writers_on_threads_keep_the_batch_job_group(spark: SparkSession, tmp_path: Path) -> None:
    computed = _computed(spark, tmp_path)
    context = spark.sparkContext
    context.setLocalProperty("fs.test.batch", "batch-7")
    context.setJobGroup("stream-run-1", "a streaming query's batch")
    try:
        first, second = Properties(spark), Properties(spark)
        BatchWriters(together=[first, second]).write(computed, CTX)
    finally:
        context.setLocalProperty("fs.test.batch", None)  # type: ignore[arg-type]
        context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        context.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
    assert first.seen == second.seen == ["batch-7", "stream-run-1"]
    computed.release()
