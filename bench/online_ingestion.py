"""Benchmark of online ingestion, Kafka -> Cassandra: fs-dagster against a naive consumer.

Measures, for each ``online_trigger_interval`` asked for, the throughput of fs-dagster's
online pipeline on a preloaded topic and the freshness of the online store at a steady
produce rate; and, in the same run, the same two figures for a naive baseline (a Python
Kafka consumer that inserts every event into Cassandra with one synchronous prepared
``INSERT``). ``bench/README.md`` says what each figure means.

Everything runs against the local services (``scripts/services.sh start kafka
cassandra``) on 127.0.0.1; every topic, keyspace and checkpoint the run creates is removed
at the end. Results are printed as a table and written as JSON to ``bench/results/``.

Example:
    .venv/bin/python -m bench.online_ingestion --events 20000 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import queue
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import fs_dagster as fs
from bench.common import (
    ReportLog,
    cassandra_session,
    check_query,
    check_services,
    create_topic,
    delete_topics,
    drop_keyspace,
    fmt,
    kafka_common,
    not_measured,
    percentile,
    ratio,
    run_bench,
    spark_jars,
    stop_when_idle,
    storage_plan,
    text_table,
    wait_idle,
)
from fs_dagster.engine.pipeline import start_ingestion
from fs_dagster.stores.online.base import EVENT_MICROS_COLUMN, OnlineColumn, OnlineTable

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

    from pyspark.sql import SparkSession

log = logging.getLogger("bench.online_ingestion")

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SCHEMA = "user_id STRING, amount DOUBLE, is_remote BOOLEAN, seq BIGINT, ts TIMESTAMP"
#: Event times of the preloaded events: one millisecond apart from here, so that the
#: newest event of a key is also the one with the highest sequence number.
PRELOAD_BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PRIME_KEY = "prime"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BenchConfig:
    """What to run; built from the command line (see ``--help``)."""

    events: int = 200_000
    keys: int = 10_000
    partitions: int = 4
    rate: float = 500.0
    seconds: float = 60.0
    warmup: float = 10.0
    intervals: tuple[float, ...] = (0.0, 1.0, 5.0)
    baseline_events: int = 50_000
    max_offsets_per_trigger: int = 25_000
    sample_every: int = 10
    #: Pause of the prober between two reads of the store. Each read costs the prober and
    #: Cassandra CPU that the pipeline under test shares on a small machine: read back to
    #: back (5 ms apart) they took about a third of a core and slowed aggregated batches
    #: from 0.35 to 0.6-0.7 s on 2 cores (bench/README.md, "Session 34"); 30 ms apart a
    #: sample's latency is over-stated by at most the pause plus one read.
    poll_interval: float = 0.03
    master: str = "local[*]"
    run_timeout: float = 900.0
    drain_timeout: float = 60.0
    phases: tuple[str, ...] = ("throughput", "freshness")
    label: str = ""
    results_dir: Path = REPO / "bench" / "results"
    bootstrap: str = f"{HOST}:9092"
    cassandra_port: int = 9042
    seed: int = 7


def _interval_label(interval: float) -> str:
    return f"i{interval:g}".replace(".", "p")


# --------------------------------------------------------------------------- events


def encode_event(seq: int, user_id: str, ts: datetime, rng: random.Random) -> bytes:
    """One source record: JSON matching :data:`SCHEMA`; ``seq`` identifies the event."""
    return json.dumps(
        {
            "user_id": user_id,
            "amount": round(rng.uniform(1, 500), 2),
            "is_remote": rng.random() < 0.5,
            "seq": seq,
            "ts": ts.isoformat(),
        }
    ).encode()


def event_micros(iso: str) -> int:
    """Microseconds since the epoch of an ISO-8601 time with an offset."""
    return (datetime.fromisoformat(iso) - EPOCH) // timedelta(microseconds=1)


# --------------------------------------------------------------------------- Kafka


def preload(cfg: BenchConfig, topic: str) -> dict[str, int]:
    """Produce ``cfg.events`` events over ``cfg.keys`` keys; return the newest seq per key."""
    from confluent_kafka import Producer

    rng = random.Random(cfg.seed)
    producer = Producer({**kafka_common(cfg.bootstrap), "linger.ms": 20})
    latest: dict[str, int] = {}
    for seq in range(1, cfg.events + 1):
        user = f"u{rng.randrange(cfg.keys)}"
        ts = PRELOAD_BASE_TIME + timedelta(milliseconds=seq)
        value = encode_event(seq, user, ts, rng)
        while True:
            try:
                producer.produce(topic, key=user.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.1)
        latest[user] = seq
        if seq % 1000 == 0:
            producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError(f"preloading {topic}: not every event was delivered within 60 s")
    return latest


def produce_prime(bootstrap: str, topic: str) -> None:
    """Produce the one event whose visibility shows that a pipeline is running."""
    from confluent_kafka import Producer

    producer = Producer(kafka_common(bootstrap))
    value = encode_event(0, PRIME_KEY, datetime.now(UTC), random.Random(0))
    producer.produce(topic, key=PRIME_KEY.encode(), value=value)
    if producer.flush(30) != 0:
        raise RuntimeError(f"priming {topic}: the event was not delivered within 30 s")


# --------------------------------------------------------------------------- Cassandra


def bench_layout(table_name: str) -> OnlineTable:
    """The online table of a bench feature set; the baseline writes one like it."""
    return OnlineTable(
        name=table_name,
        keys=(OnlineColumn("user_id", "string"),),
        features=(
            OnlineColumn("amount", "double"),
            OnlineColumn("is_remote", "boolean"),
            OnlineColumn("seq", "long"),
        ),
        timestamp_column="ts",
    )


def stale_keys(store: fs.CassandraOnlineStore, table: str, expected: dict[str, int]) -> int:
    """Keys whose stored ``seq`` is not the expected newest one (0 when all are right)."""
    layout = bench_layout(table)
    keys = sorted(expected)
    rows = store.read_rows(layout, [(k,) for k in keys])
    return sum(
        1 for key, row in zip(keys, rows, strict=True) if row is None or row["seq"] != expected[key]
    )


def wait_visible(
    store: fs.CassandraOnlineStore,
    feature_set: fs.FeatureSet,
    timeout: float,
    health: Callable[[], None] = lambda: None,
    *,
    workdir: Path,
    aggregated: bool = False,
) -> float:
    """Wait until a read of ``feature_set`` sees the prime event; return how long it took."""
    client = fs.FeatureStore(
        online_store=store, offline_root=str(workdir / "offline"), feature_sets=[feature_set]
    )
    column = probe_column(aggregated)
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        health()
        try:
            frame = client.get_online_features(feature_set, [PRIME_KEY])
        except LookupError:  # no table (or tiles) yet
            frame = None
        if frame is not None and not pd.isna(frame[column].iloc[0]):
            return time.monotonic() - began
        time.sleep(0.2)
    raise TimeoutError(f"the prime event did not reach {feature_set.name} within {timeout} s")


# --------------------------------------------------------------------------- fs-dagster


#: Windows of the aggregated bench set: sum and count of ``amount`` and max of ``seq``
#: over each, 3 aggregates x 5 windows (the prober reads ``max_seq`` over the longest).
AGGREGATED_WINDOWS = ("1m", "10m", "1h", "1d", "7d")


def probe_column(aggregated: bool) -> str:
    """The feature whose value tells the prober which event a key's vector has seen."""
    return f"max_seq_{AGGREGATED_WINDOWS[-1]}" if aggregated else "seq"


def bench_feature_set(
    name: str,
    topic: str,
    bootstrap: str,
    *,
    max_offsets_per_trigger: int,
    aggregated: bool = False,
) -> fs.FeatureSet:
    """A feature set passing the source columns through (``seq`` is a feature), or with
    ``aggregated`` sum/count of ``amount`` and max of ``seq`` over 5 windows.

    Kept free of Spark so that the prober process can build it to read the online table
    through :meth:`fs_dagster.FeatureStore.get_online_features`.
    """
    source_name = name.replace("-", "_")
    source = fs.KafkaSource(
        name=source_name,
        bootstrap_servers=bootstrap,
        topic=topic,
        schema=SCHEMA,
        options={
            "kafka.client.dns.lookup": "use_all_dns_ips",
            # Spark closes its cached consumers when the JVM exits; one whose metadata is
            # older than metadata.max.age.ms refreshes it first, and the broker would
            # re-create the topic the bench has just deleted.
            "kafka.allow.auto.create.topics": "false",
            "maxOffsetsPerTrigger": str(max_offsets_per_trigger),
        },
    )

    def transformation() -> fs.SparkSqlTransformation:
        sql = fs.SparkSqlTransformation(
            f"SELECT user_id, amount, is_remote, seq, ts FROM {source_name}"
        )
        if not aggregated:
            return sql
        return (
            sql.aggregate(fs.Aggregation.sum("amount"))
            .aggregate(fs.Aggregation.count("amount"))
            .aggregate(fs.Aggregation.max("seq"))
            .by_windows(*AGGREGATED_WINDOWS)
        )

    transformation.__name__ = source_name
    return fs.streaming.feature_set(
        name=name, key="user_id", data_sources=[source], timestamp_column_name="ts"
    )(transformation)


def warm_up(
    spark: SparkSession,
    cfg: BenchConfig,
    store: fs.CassandraOnlineStore,
    *,
    topic: str,
    name: str,
    workdir: Path,
    aggregated: bool = False,
) -> float:
    """Ingest as many events as the throughput phase with a throwaway query (of an
    aggregated set with ``aggregated``); return how long until the last one (the prime)
    was readable.

    The first query of a Spark application also starts the Python workers and their
    Cassandra connections, which later queries reuse, and a fresh JVM runs its first
    records through interpreted code while it compiles the hot paths (Kafka record
    decoding, JSON parsing): the first batch of 25,000 events took 6-8 s there, the
    same batch 0.6-0.9 s in a JVM that had ingested 200,000, and the batches in between
    sped up one by one. Without this the first measured run would pay for all of it and
    the others would not. An aggregated set's batches run code of their own (tiles, the
    tile merge in Python, tile reads and writes): warmed by an aggregated query only.
    """
    feature_set = bench_feature_set(
        name,
        topic,
        cfg.bootstrap,
        max_offsets_per_trigger=cfg.max_offsets_per_trigger,
        aggregated=aggregated,
    )
    ingestion = start_ingestion(
        spark,
        feature_set,
        storage_plan(feature_set, workdir),
        "online",
        online_store=store,
        trigger_interval=0,
    )
    try:
        preload(cfg, topic)
        produce_prime(cfg.bootstrap, topic)
        return wait_visible(
            store,
            feature_set,
            cfg.run_timeout,
            lambda: check_query(ingestion),
            workdir=workdir,
            aggregated=aggregated,
        )
    finally:
        stop_when_idle(ingestion)


def fs_throughput(
    spark: SparkSession,
    cfg: BenchConfig,
    store: fs.CassandraOnlineStore,
    *,
    topic: str,
    name: str,
    interval: float,
    expected: dict[str, int],
    workdir: Path,
) -> dict[str, Any]:
    """Ingest the preloaded topic with a fresh checkpoint and table; time the batches."""
    feature_set = bench_feature_set(
        name, topic, cfg.bootstrap, max_offsets_per_trigger=cfg.max_offsets_per_trigger
    )
    reports = ReportLog(target_rows=cfg.events)
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    ingestion = start_ingestion(
        spark,
        feature_set,
        storage_plan(feature_set, workdir),
        "online",
        online_store=store,
        on_batch=reports,
        trigger_interval=interval,
    )
    complete = False
    try:
        while time.monotonic() - began < cfg.run_timeout:
            if reports.reached.wait(timeout=1.0):
                complete = True
                break
            check_query(ingestion)
    finally:
        stop_when_idle(ingestion)
    entries = reports.snapshot()
    if not entries:
        raise RuntimeError(f"{name}: no batch finished within {cfg.run_timeout} s")
    batches = [r for r, _ in entries]
    rows_in = sum(r.rows_in for r in batches)
    first_start = batches[0].finished_at - timedelta(seconds=batches[0].duration_seconds)
    span = (batches[-1].finished_at - first_start).total_seconds()
    wall = entries[-1][1] - began
    busy = sum(r.duration_seconds for r in batches)
    # The first batch also starts the Python workers and their Cassandra connections.
    later = (batches[-1].finished_at - batches[0].finished_at).total_seconds()
    later_rows = rows_in - batches[0].rows_in
    return {
        "pipeline": "fs-dagster",
        "trigger_interval": interval,
        "complete": complete,
        "events": rows_in,
        "batches": len(batches),
        "rows_written": sum(r.rows_written for r in batches),
        "dead_letters": sum(r.dead_letters for r in batches),
        "span_seconds": span,
        "events_per_second": rows_in / span if span > 0 else None,
        "wall_seconds": wall,
        "events_per_second_wall": rows_in / wall,
        "batch_seconds": [round(r.duration_seconds, 3) for r in batches],
        "batch_rows": [r.rows_in for r in batches],
        "events_per_busy_second": rows_in / busy if busy > 0 else None,
        "first_batch_seconds": batches[0].duration_seconds,
        "events_per_second_after_first": later_rows / later if later > 0 else None,
        "stale_keys": stale_keys(store, feature_set.storage_name, expected) if complete else None,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def fs_freshness(
    spark: SparkSession,
    cfg: BenchConfig,
    store: fs.CassandraOnlineStore,
    *,
    topic: str,
    name: str,
    interval: float,
    workdir: Path,
    aggregated: bool = False,
) -> dict[str, Any]:
    """Run the online pipeline on an empty topic while the prober produces and reads
    (a row-level set, or with ``aggregated`` 3 aggregates over 5 windows)."""
    feature_set = bench_feature_set(
        name,
        topic,
        cfg.bootstrap,
        max_offsets_per_trigger=cfg.max_offsets_per_trigger,
        aggregated=aggregated,
    )
    reports = ReportLog()
    load_before = os.getloadavg()[0]
    ingestion = start_ingestion(
        spark,
        feature_set,
        storage_plan(feature_set, workdir),
        "online",
        online_store=store,
        on_batch=reports,
        trigger_interval=interval,
    )
    try:
        produce_prime(cfg.bootstrap, topic)
        startup = wait_visible(
            store,
            feature_set,
            cfg.run_timeout,
            lambda: check_query(ingestion),
            workdir=workdir,
            aggregated=aggregated,
        )
        probe = run_prober(
            cfg,
            keyspace=store.keyspace,
            topic=topic,
            feature_set_name=name,
            workdir=workdir,
            aggregated=aggregated,
        )
        check_query(ingestion)
    finally:
        stop_when_idle(ingestion)
    measured_from = probe["measured_from_epoch"]
    measured_to = probe["produced_until_epoch"]
    window = [
        r
        for r, _ in reports.snapshot()
        if r.rows_in and measured_from <= r.finished_at.timestamp() <= measured_to
    ]
    reported = [r.freshness_seconds for r in window if r.freshness_seconds is not None]
    return {
        "pipeline": "fs-dagster",
        "feature_set": "aggregated" if aggregated else "row-level",
        "trigger_interval": interval,
        "startup_seconds": startup,
        **probe,
        "batches": len(window),
        "mean_batch_seconds": (
            sum(r.duration_seconds for r in window) / len(window) if window else None
        ),
        "mean_batch_rows": sum(r.rows_in for r in window) / len(window) if window else None,
        "reported_freshness_p50": percentile(reported, 50),
        "reported_freshness_p99": percentile(reported, 99),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------- baseline


@dataclass(frozen=True)
class BaselineSpec:
    """What the baseline consumer process reads and writes (plain data: it is pickled)."""

    bootstrap: str
    topic: str
    cassandra_port: int
    keyspace: str
    table: str
    limit: int | None
    timeout: float


def baseline_process(spec: BaselineSpec, stop: Event, results: Queue[Any]) -> None:
    """Entry point of the baseline process: consume, insert, report one result."""
    try:
        results.put(("done", _consume_and_insert(spec, stop)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _consume_and_insert(spec: BaselineSpec, stop: Event) -> dict[str, Any]:
    from confluent_kafka import Consumer

    began = time.monotonic()
    session = cassandra_session(HOST, spec.cassandra_port)
    names = ["user_id", EVENT_MICROS_COLUMN, "amount", "is_remote", "seq"]
    columns = ", ".join(f'"{n}"' for n in names)
    insert = session.prepare(
        f'INSERT INTO "{spec.keyspace}"."{spec.table}" ({columns}) '
        f"VALUES ({', '.join('?' for _ in names)})"
    )
    consumer = Consumer(
        {
            **kafka_common(spec.bootstrap),
            "group.id": f"fs-bench-baseline-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([spec.topic])
    written = 0
    first: float | None = None
    latest: dict[str, int] = {}
    try:
        while not stop.is_set() and time.monotonic() - began < spec.timeout:
            if spec.limit is not None and written >= spec.limit:
                break
            # One message at a time: a batch call would hold messages back until the
            # batch fills or its timeout passes, which would cost the baseline freshness.
            message = consumer.poll(0.1)
            if message is None or message.error():
                continue
            if first is None:
                first = time.monotonic()
            record = json.loads(message.value() or b"{}")
            session.execute(
                insert,
                (
                    record["user_id"],
                    event_micros(record["ts"]),
                    record["amount"],
                    record["is_remote"],
                    record["seq"],
                ),
            )
            written += 1
            latest[record["user_id"]] = max(latest.get(record["user_id"], 0), record["seq"])
        finished = time.monotonic()
    finally:
        consumer.close()
        session.cluster.shutdown()
    return {
        "events": written,
        "complete": spec.limit is None or written >= spec.limit,
        "span_seconds": finished - first if first is not None else None,
        "wall_seconds": finished - began,
        "latest": latest,
    }


class BaselineRunner:
    """The baseline consumer in its own process (as it would be deployed)."""

    def __init__(self, spec: BaselineSpec):
        context = mp.get_context("spawn")
        self.stop_event = context.Event()
        self.results: Queue[Any] = context.Queue()
        self.process = context.Process(
            target=baseline_process, args=(spec, self.stop_event, self.results), daemon=True
        )

    def start(self) -> None:
        """Start the process; it connects, subscribes and consumes."""
        self.process.start()

    def check(self) -> None:
        """Raise if the process has exited (used while waiting on it)."""
        if not self.process.is_alive():
            raise RuntimeError(f"the baseline process exited with {self.process.exitcode}")

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` seconds for the process's result, then stop it."""
        try:
            kind, payload = self.results.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the baseline process gave no result within {timeout} s") from None
        finally:
            self.close()
        if kind == "error":
            raise RuntimeError(f"the baseline process failed: {payload}")
        result: dict[str, Any] = payload
        return result

    def close(self) -> None:
        """Ask the process to stop; terminate it if it has not within 30 s."""
        self.stop_event.set()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)


def _baseline_spec(
    cfg: BenchConfig, *, keyspace: str, topic: str, table: str, limit: int | None, timeout: float
) -> BaselineSpec:
    return BaselineSpec(
        bootstrap=cfg.bootstrap,
        topic=topic,
        cassandra_port=cfg.cassandra_port,
        keyspace=keyspace,
        table=table,
        limit=limit,
        timeout=timeout,
    )


def baseline_throughput(
    cfg: BenchConfig, store: fs.CassandraOnlineStore, *, topic: str, name: str
) -> dict[str, Any]:
    """Consume the first ``baseline_events`` of the preloaded topic into a fresh table."""
    table_name = name.replace("-", "_")
    store.ensure_table(bench_layout(table_name))
    limit = min(cfg.baseline_events, cfg.events)
    load_before = os.getloadavg()[0]
    runner = BaselineRunner(
        _baseline_spec(
            cfg,
            keyspace=store.keyspace,
            topic=topic,
            table=table_name,
            limit=limit,
            timeout=cfg.run_timeout,
        )
    )
    runner.start()
    result = runner.result(timeout=cfg.run_timeout + 60)
    latest: dict[str, int] = result.pop("latest")
    span = result["span_seconds"]
    return {
        "pipeline": "baseline",
        "trigger_interval": None,
        **result,
        "events_per_second": result["events"] / span if span else None,
        "events_per_second_wall": result["events"] / result["wall_seconds"],
        "stale_keys": stale_keys(store, table_name, latest),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def baseline_freshness(
    cfg: BenchConfig, store: fs.CassandraOnlineStore, *, topic: str, name: str, workdir: Path
) -> dict[str, Any]:
    """Run the baseline consumer on an empty topic while the prober produces and reads."""
    table_name = name.replace("-", "_")
    store.ensure_table(bench_layout(table_name))
    load_before = os.getloadavg()[0]
    runner = BaselineRunner(
        _baseline_spec(
            cfg,
            keyspace=store.keyspace,
            topic=topic,
            table=table_name,
            limit=None,
            timeout=cfg.run_timeout * 2,
        )
    )
    runner.start()
    try:
        produce_prime(cfg.bootstrap, topic)
        read_as = bench_feature_set(name, topic, cfg.bootstrap, max_offsets_per_trigger=1)
        startup = wait_visible(store, read_as, cfg.run_timeout, runner.check, workdir=workdir)
        probe = run_prober(
            cfg, keyspace=store.keyspace, topic=topic, feature_set_name=name, workdir=workdir
        )
        runner.check()
    finally:
        runner.close()
    return {
        "pipeline": "baseline",
        "trigger_interval": None,
        "startup_seconds": startup,
        **probe,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------- Spark floor


def spark_floor_freshness(
    spark: SparkSession,
    cfg: BenchConfig,
    store: fs.CassandraOnlineStore,
    *,
    topic: str,
    name: str,
    workdir: Path,
) -> dict[str, Any]:
    """Freshness of the least a Spark micro-batch pipeline does to make an event readable
    online, measured by the same prober as fs-dagster's: what Spark, the broker and the
    store allow on this machine, by themselves.

    A streaming query on the same Spark session, trigger 0: Kafka (``kafka.fetch.max.wait.ms``
    and partitions coalesced to the cores, as fs-dagster reads), the JSON parsed by
    ``from_json``, and in ``foreachBatch`` the batch's rows collected to the driver (one
    Spark job) and written there by the bare Cassandra driver into a table of
    :func:`bench_layout`, one prepared ``INSERT ... USING TIMESTAMP <event time>`` per row
    sent concurrently on one session opened before the query. No transformation, no
    classification of bad records, no dead letters, no Python workers, no report: none of
    what fs-dagster's batch does beyond moving the rows.
    """
    from cassandra.concurrent import execute_concurrent_with_args
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F  # noqa: N812

    table_name = name.replace("-", "_")
    store.ensure_table(bench_layout(table_name))
    session = cassandra_session(HOST, cfg.cassandra_port)
    names = ["user_id", EVENT_MICROS_COLUMN, "amount", "is_remote", "seq"]
    columns = ", ".join(f'"{n}"' for n in names)
    insert = session.prepare(
        f'INSERT INTO "{store.keyspace}"."{table_name}" ({columns}) '
        f"VALUES ({', '.join('?' for _ in names)}) USING TIMESTAMP ?"
    )

    def write(batch: DataFrame, batch_id: int) -> None:
        # A failed write raises here and stops the query, which fails the run.
        rows = [(*row, row[1]) for row in batch.collect()]
        execute_concurrent_with_args(session, insert, rows, concurrency=64)

    event = F.from_json(F.col("value").cast("string"), SCHEMA).alias("e")
    events = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", cfg.bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("kafka.fetch.max.wait.ms", "10")
        # As fs-dagster's source: a cached consumer must not re-create the deleted topic.
        .option("kafka.allow.auto.create.topics", "false")
        .option("maxOffsetsPerTrigger", cfg.max_offsets_per_trigger)
        .load()
        .coalesce(spark.sparkContext.defaultParallelism)
        .select(event)
        .select(
            "e.user_id",
            F.unix_micros("e.ts").alias("micros"),
            "e.amount",
            "e.is_remote",
            "e.seq",
        )
    )
    load_before = os.getloadavg()[0]
    query = (
        events.writeStream.foreachBatch(write)
        .option("checkpointLocation", str(workdir / "checkpoints" / f"floor-{name}"))
        .trigger(processingTime="0 seconds")
        .start()
    )

    def health() -> None:
        if not query.isActive:
            raise RuntimeError(f"the Spark floor's query stopped: {query.exception()}")

    try:
        produce_prime(cfg.bootstrap, topic)
        read_as = bench_feature_set(name, topic, cfg.bootstrap, max_offsets_per_trigger=1)
        startup = wait_visible(store, read_as, cfg.run_timeout, health, workdir=workdir)
        probe = run_prober(
            cfg, keyspace=store.keyspace, topic=topic, feature_set_name=name, workdir=workdir
        )
        health()
        batches = [p for p in query.recentProgress if p["numInputRows"] and p.get("durationMs")]
    finally:
        wait_idle(query)
        query.stop()
        session.cluster.shutdown()
    measured = [
        p
        for p in batches
        if probe["measured_from_epoch"]
        <= datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp()
        <= probe["produced_until_epoch"]
    ]
    durations = [p["durationMs"]["triggerExecution"] / 1000 for p in measured]
    return {
        "pipeline": "spark-floor",
        "trigger_interval": 0.0,
        "startup_seconds": startup,
        **probe,
        "batches": len(measured),
        "mean_batch_seconds": sum(durations) / len(durations) if durations else None,
        "mean_batch_rows": (
            sum(p["numInputRows"] for p in measured) / len(measured) if measured else None
        ),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------- prober


@dataclass(frozen=True)
class ProbeSpec:
    """What the prober produces and where it looks (plain data: it is pickled)."""

    bootstrap: str
    topic: str
    feature_set_name: str
    keyspace: str
    cassandra_port: int
    offline_root: str
    rate: float
    seconds: float
    warmup: float
    keys: int
    sample_every: int
    poll_interval: float
    drain_timeout: float
    seed: int
    aggregated: bool = False


@dataclass(frozen=True)
class _Sample:
    seq: int
    key: str
    produced: float  # monotonic
    measured: bool  # produced after the warm-up


def prober_process(spec: ProbeSpec, results: Queue[Any]) -> None:
    """Entry point of the prober process: produce at a steady rate, watch the store."""
    try:
        results.put(("done", _probe(spec)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _probe(spec: ProbeSpec) -> dict[str, Any]:
    import pandas as pd
    from confluent_kafka import Producer

    feature_set = bench_feature_set(
        spec.feature_set_name,
        spec.topic,
        spec.bootstrap,
        max_offsets_per_trigger=1,
        aggregated=spec.aggregated,
    )
    column = probe_column(spec.aggregated)
    store = fs.CassandraOnlineStore(hosts=[HOST], port=spec.cassandra_port, keyspace=spec.keyspace)
    client = fs.FeatureStore(
        online_store=store, offline_root=spec.offline_root, feature_sets=[feature_set]
    )
    client.get_online_features(feature_set, [PRIME_KEY])  # connect, prepare, load the layout
    producer = Producer({**kafka_common(spec.bootstrap), "linger.ms": 0})
    samples: queue.SimpleQueue[_Sample] = queue.SimpleQueue()
    producer_done = threading.Event()
    stats: dict[str, Any] = {}

    def produce() -> None:
        rng = random.Random(spec.seed)
        total = int(spec.rate * (spec.warmup + spec.seconds))
        began = time.monotonic()
        stats["started_epoch"] = time.time()
        behind = 0.0
        try:
            for index in range(total):
                due = began + index / spec.rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                else:
                    behind = max(behind, -pause)
                seq = index + 1
                user = f"u{rng.randrange(spec.keys)}"
                produced = time.monotonic()
                value = encode_event(seq, user, datetime.now(UTC), rng)
                producer.produce(spec.topic, key=user.encode(), value=value)
                producer.poll(0)
                if seq % spec.sample_every == 0:
                    samples.put(_Sample(seq, user, produced, produced - began >= spec.warmup))
            stats["produced"] = total
            stats["produce_seconds"] = time.monotonic() - began
            stats["max_behind_schedule_seconds"] = behind
            stats["undelivered"] = producer.flush(30)
            stats["produced_until_epoch"] = time.time()
        except Exception as exc:
            stats["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            producer_done.set()

    latencies: list[float] = []
    warmup_seen = 0
    missing = 0
    polls: list[float] = []
    pending: dict[int, _Sample] = {}
    thread = threading.Thread(target=produce, name="bench-producer", daemon=True)
    thread.start()
    done_at: float | None = None
    while True:
        while True:
            try:
                sample = samples.get_nowait()
            except queue.Empty:
                break
            pending[sample.seq] = sample
        if producer_done.is_set() and done_at is None:
            done_at = time.monotonic()
        if done_at is not None and (not pending or time.monotonic() - done_at > spec.drain_timeout):
            missing = sum(1 for s in pending.values() if s.measured)
            break
        if not pending:
            time.sleep(0.01)
            continue
        # Read the keys of the oldest pending samples, each key once.
        oldest = sorted(pending.values(), key=lambda s: s.seq)[:5000]
        keys = sorted({s.key for s in oldest})
        began = time.monotonic()
        frame = client.get_online_features(feature_set, keys)
        seen_at = time.monotonic()
        polls.append(seen_at - began)
        stored = {
            key: int(value)
            for key, value in zip(frame["user_id"], frame[column], strict=True)
            if not pd.isna(value)
        }
        for sample in oldest:
            # Newer events of the same key count too: the store is at least this fresh.
            if stored.get(sample.key, -1) >= sample.seq:
                del pending[sample.seq]
                if sample.measured:
                    latencies.append(seen_at - sample.produced)
                else:
                    warmup_seen += 1
        time.sleep(spec.poll_interval)
    thread.join(timeout=60)
    store.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if "error" in stats:
        raise RuntimeError(f"the producer thread failed: {stats['error']}")
    measured_from = stats.get("started_epoch", time.time()) + spec.warmup
    return {
        "rate": spec.rate,
        "seconds": spec.seconds,
        "warmup_seconds": spec.warmup,
        "produced": stats.get("produced"),
        "achieved_rate": (
            stats["produced"] / stats["produce_seconds"] if stats.get("produce_seconds") else None
        ),
        "max_behind_schedule_seconds": stats.get("max_behind_schedule_seconds"),
        "undelivered": stats.get("undelivered"),
        "samples": len(latencies),
        "warmup_samples": warmup_seen,
        "missing": missing,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies) if latencies else None,
        "polls": len(polls),
        "mean_poll_seconds": sum(polls) / len(polls) if polls else None,
        "prober_cpu_seconds": usage.ru_utime + usage.ru_stime,
        "measured_from_epoch": measured_from,
        "produced_until_epoch": stats.get("produced_until_epoch", time.time()),
    }


def run_prober(
    cfg: BenchConfig,
    *,
    keyspace: str,
    topic: str,
    feature_set_name: str,
    workdir: Path,
    aggregated: bool = False,
) -> dict[str, Any]:
    """Run the prober in its own process, so that it shares no interpreter lock with the
    pipeline under test, and return its figures."""
    spec = ProbeSpec(
        bootstrap=cfg.bootstrap,
        topic=topic,
        feature_set_name=feature_set_name,
        keyspace=keyspace,
        cassandra_port=cfg.cassandra_port,
        offline_root=str(workdir / "offline"),
        rate=cfg.rate,
        seconds=cfg.seconds,
        warmup=cfg.warmup,
        keys=cfg.keys,
        sample_every=cfg.sample_every,
        poll_interval=cfg.poll_interval,
        drain_timeout=cfg.drain_timeout,
        seed=cfg.seed + 1,
        aggregated=aggregated,
    )
    context = mp.get_context("spawn")
    results: Queue[Any] = context.Queue()
    process = context.Process(target=prober_process, args=(spec, results), daemon=True)
    process.start()
    # Start-up (imports, connections) plus the run, the drain and a margin.
    timeout = 120 + cfg.warmup + cfg.seconds + cfg.drain_timeout + 60
    # The prober is the clients, not the pipeline: its memory is not the pipeline's.
    with not_measured(process.pid or 0):
        try:
            kind, payload = results.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the prober gave no result within {timeout} s") from None
        finally:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    if kind == "error":
        raise RuntimeError(f"the prober failed: {payload}")
    result: dict[str, Any] = payload
    return result


# --------------------------------------------------------------------------- figures


def add_ratios(throughput: list[dict[str, Any]], freshness: list[dict[str, Any]]) -> None:
    """Put fs-dagster/baseline ratios on every fs-dagster row."""
    base_t = next((r for r in throughput if r["pipeline"] == "baseline"), None)
    for row in throughput:
        if row["pipeline"] == "fs-dagster" and base_t is not None:
            row["ratio_throughput"] = ratio(row["events_per_second"], base_t["events_per_second"])
            row["ratio_throughput_wall"] = ratio(
                row["events_per_second_wall"], base_t["events_per_second_wall"]
            )
    base_f = next((r for r in freshness if r["pipeline"] == "baseline"), None)
    for row in freshness:
        if row["pipeline"] == "fs-dagster" and base_f is not None:
            row["ratio_p50"] = ratio(row["p50"], base_f["p50"])
            row["ratio_p99"] = ratio(row["p99"], base_f["p99"])


def _name(row: dict[str, Any]) -> str:
    if row["pipeline"] == "baseline":
        return "baseline"
    return f"fs-dagster, trigger {row['trigger_interval']:g} s"


def format_results(results: dict[str, Any]) -> str:
    """The human-readable tables of a result document."""
    cfg = results["config"]
    out = [f"# {results['label'] or 'online ingestion benchmark'} ({results['started_at']})"]
    out.append(
        f"# {results['environment']['cpus']} CPUs, Spark master {cfg['master']}, "
        f"load average at start {results['environment']['load_average_start']:.2f}"
    )
    if results["throughput"]:
        out.append(
            f"\nThroughput: preloaded topic of {cfg['events']:,} events, {cfg['keys']:,} keys, "
            f"{cfg['partitions']} partitions; "
            f"maxOffsetsPerTrigger {cfg['max_offsets_per_trigger']:,}"
        )
        rows = [
            [
                _name(r),
                fmt(r["events"]),
                fmt(r.get("batches")),
                fmt(r.get("first_batch_seconds")),
                fmt(r["span_seconds"]),
                fmt(r["events_per_second"]),
                fmt(r.get("events_per_second_after_first")),
                fmt(r["wall_seconds"]),
                fmt(r["events_per_second_wall"]),
                fmt(r.get("ratio_throughput")),
                fmt(r.get("ratio_throughput_wall")),
                fmt(r.get("stale_keys")),
            ]
            for r in results["throughput"]
        ]
        out.append(
            text_table(
                [
                    "pipeline",
                    "events",
                    "batches",
                    "1st batch s",
                    "span s",
                    "ev/s",
                    "ev/s after 1st",
                    "wall s",
                    "ev/s wall",
                    "x base",
                    "x base wall",
                    "stale keys",
                ],
                rows,
            )
        )
    if results["freshness"]:
        out.append(
            f"\nFreshness: {cfg['rate']:g} events/s for {cfg['seconds']:g} s after a "
            f"{cfg['warmup']:g} s warm-up; every {cfg['sample_every']}th event sampled; "
            "seconds from produce to first read that sees it (the prober pauses "
            f"{cfg.get('poll_interval', 0.005):g} s after each read)"
        )
        rows = [
            [
                _name(r),
                fmt(r["achieved_rate"], 0),
                fmt(r["samples"]),
                fmt(r["missing"]),
                fmt(r["p50"]),
                fmt(r["p99"]),
                fmt(r["max"]),
                fmt(r.get("ratio_p50")),
                fmt(r.get("ratio_p99")),
                fmt(r.get("batches")),
                fmt(r.get("mean_batch_seconds")),
                fmt(r.get("reported_freshness_p50")),
                fmt(r["mean_poll_seconds"], 3),
            ]
            for r in results["freshness"]
        ]
        out.append(
            text_table(
                [
                    "pipeline",
                    "ev/s",
                    "samples",
                    "missing",
                    "p50 s",
                    "p99 s",
                    "max s",
                    "x base p50",
                    "x base p99",
                    "batches",
                    "batch s",
                    "reported p50 s",
                    "poll s",
                ],
                rows,
            )
        )
    return "\n".join(out)


# --------------------------------------------------------------------------- the run


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run every phase asked for and return the result document."""
    from fs_dagster.engine.spark_session import SparkSettings, create_spark_session

    check_services(cfg.bootstrap, HOST, cfg.cassandra_port)
    run_id = uuid.uuid4().hex[:8]
    keyspace = f"fs_bench_{run_id}"
    store = fs.CassandraOnlineStore(hosts=[HOST], port=cfg.cassandra_port, keyspace=keyspace)
    workdir = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    topics: list[str] = []
    spark: SparkSession | None = None
    results: dict[str, Any] = {
        "label": cfg.label,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {**asdict(cfg), "results_dir": str(cfg.results_dir)},
        "environment": {
            "cpus": os.cpu_count(),
            "load_average_start": os.getloadavg()[0],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "throughput": [],
        "freshness": [],
    }
    try:
        store.ensure_keyspace()
        log.info("keyspace %s; Spark session %s", keyspace, cfg.master)
        spark = create_spark_session(
            SparkSettings(master=cfg.master, app_name="fs-dagster-bench", jars=spark_jars())
        )
        results["environment"]["spark"] = spark.version
        topic = f"fs-bench-{run_id}-warmup"
        create_topic(cfg.bootstrap, topic, cfg.partitions)
        topics.append(topic)
        warm = warm_up(
            spark, cfg, store, topic=topic, name=f"bench-{run_id}-warmup", workdir=workdir
        )
        results["environment"]["spark_warm_up_seconds"] = warm
        log.info("Spark warmed up in %.1f s", warm)
        if "throughput" in cfg.phases:
            topic = f"fs-bench-{run_id}-preload"
            create_topic(cfg.bootstrap, topic, cfg.partitions)
            topics.append(topic)
            began = time.monotonic()
            expected = preload(cfg, topic)
            log.info("preloaded %d events in %.1f s", cfg.events, time.monotonic() - began)
            log.info("throughput: baseline, %d events", min(cfg.baseline_events, cfg.events))
            row = baseline_throughput(cfg, store, topic=topic, name=f"bench-{run_id}-tp-base")
            results["throughput"].append(row)
            log.info("  %.0f events/s", row["events_per_second"] or 0)
            for interval in cfg.intervals:
                log.info("throughput: fs-dagster, trigger %g s", interval)
                row = fs_throughput(
                    spark,
                    cfg,
                    store,
                    topic=topic,
                    name=f"bench-{run_id}-tp-{_interval_label(interval)}",
                    interval=interval,
                    expected=expected,
                    workdir=workdir,
                )
                results["throughput"].append(row)
                log.info(
                    "  %.0f events/s over %d batches", row["events_per_second"] or 0, row["batches"]
                )
        if "freshness" in cfg.phases:
            runs: list[float | None] = [None, *cfg.intervals]
            for run_interval in runs:
                label = "base" if run_interval is None else _interval_label(run_interval)
                topic = f"fs-bench-{run_id}-steady-{label}"
                create_topic(cfg.bootstrap, topic, cfg.partitions)
                topics.append(topic)
                name = f"bench-{run_id}-fr-{label}"
                if run_interval is None:
                    log.info("freshness: baseline")
                    row = baseline_freshness(cfg, store, topic=topic, name=name, workdir=workdir)
                else:
                    log.info("freshness: fs-dagster, trigger %g s", run_interval)
                    row = fs_freshness(
                        spark,
                        cfg,
                        store,
                        topic=topic,
                        name=name,
                        interval=run_interval,
                        workdir=workdir,
                    )
                results["freshness"].append(row)
                log.info("  p50 %s s, p99 %s s", fmt(row["p50"], 3), fmt(row["p99"], 3))
    finally:
        if spark is not None:
            spark.stop()
        store.close()
        drop_keyspace(HOST, cfg.cassandra_port, keyspace)
        delete_topics(cfg.bootstrap, topics)
        shutil.rmtree(workdir, ignore_errors=True)
    add_ratios(results["throughput"], results["freshness"])
    results["environment"]["load_average_end"] = os.getloadavg()[0]
    return results


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    """The :class:`BenchConfig` the command line asks for."""
    default = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.online_ingestion",
        description="Online ingestion Kafka -> Cassandra: fs-dagster against a naive consumer.",
    )
    parser.add_argument("--events", type=int, default=default.events, help="preloaded events")
    parser.add_argument("--keys", type=int, default=default.keys, help="distinct user_id values")
    parser.add_argument("--partitions", type=int, default=default.partitions)
    parser.add_argument("--rate", type=float, default=default.rate, help="steady events/s")
    parser.add_argument(
        "--seconds", type=float, default=default.seconds, help="measured seconds at --rate"
    )
    parser.add_argument(
        "--warmup", type=float, default=default.warmup, help="seconds at --rate before measuring"
    )
    parser.add_argument(
        "--intervals", default="0,1,5", help="online trigger intervals in seconds, comma-separated"
    )
    parser.add_argument(
        "--baseline-events",
        type=int,
        default=default.baseline_events,
        help="events the baseline consumes in the throughput phase (at most --events)",
    )
    parser.add_argument(
        "--max-offsets-per-trigger",
        type=int,
        default=None,
        help="Spark's maxOffsetsPerTrigger for fs-dagster (default: --events / 8)",
    )
    parser.add_argument("--sample-every", type=int, default=default.sample_every)
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=default.poll_interval,
        help="seconds the prober pauses between two reads of the store",
    )
    parser.add_argument("--master", default=default.master, help="Spark master")
    parser.add_argument(
        "--timeout", type=float, default=default.run_timeout, help="limit of each run in seconds"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=default.drain_timeout,
        help="seconds to wait for the last samples after producing stops",
    )
    parser.add_argument(
        "--phases", default="throughput,freshness", help="throughput, freshness or both"
    )
    parser.add_argument("--label", default="", help="a label stored with the results")
    parser.add_argument("--results-dir", type=Path, default=default.results_dir)
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = set(phases) - {"throughput", "freshness"}
    if unknown:
        parser.error(f"--phases: unknown {sorted(unknown)}; use throughput and/or freshness")
    intervals = tuple(float(v) for v in args.intervals.split(",") if v.strip())
    if args.events < 1 or args.keys < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--events, --keys, --rate and --seconds must be positive")
    if args.poll_interval < 0:
        parser.error("--poll-interval: a pause cannot be negative")
    kafka_port = os.environ.get("FS_KAFKA_PORT", "").strip() or "9092"
    cassandra_port = os.environ.get("FS_CASSANDRA_PORT", "").strip() or "9042"
    return BenchConfig(
        events=args.events,
        keys=args.keys,
        partitions=args.partitions,
        rate=args.rate,
        seconds=args.seconds,
        warmup=args.warmup,
        intervals=intervals,
        baseline_events=args.baseline_events,
        max_offsets_per_trigger=args.max_offsets_per_trigger or max(1, math.ceil(args.events / 8)),
        sample_every=args.sample_every,
        poll_interval=args.poll_interval,
        master=args.master,
        run_timeout=args.timeout,
        drain_timeout=args.drain_timeout,
        phases=phases,
        label=args.label,
        results_dir=args.results_dir,
        bootstrap=f"{HOST}:{kafka_port}",
        cassandra_port=int(cassandra_port),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the JSON; return the exit status."""
    run_bench(
        "online_ingestion",
        argv,
        logger=log,
        parse_args=parse_args,
        run=run,
        format_results=format_results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
