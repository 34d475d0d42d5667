"""Benchmark of windowed aggregations, Kafka -> Cassandra: fs-dagster against naive recomputes.

One aggregated feature set of 3 aggregates x 5 windows (``sum``, ``count`` and ``max`` of
``amount`` over ``1m``, ``10m``, ``1h``, ``1d`` and ``7d``) is fed from a preloaded Kafka
topic, and three figures are measured, each beside a naive baseline measured in the same
run on the same events:

1. **ingestion throughput**: fs-dagster's online pipeline (tiles into Cassandra) against
   a Spark batch job that stores the raw events in Cassandra and recomputes the 15 window
   values of every key at one read time from them;
2. **online read latency** for 1 and 100 keys per request: ``get_online_features(at=...)``
   against reading each key's raw events (7 days) from Cassandra and aggregating in Python;
3. **offline point-in-time retrieval** for a population: ``get_offline_features`` against
   Spark range-frame window functions over the raw feature rows; a sample of rows is
   checked between the two (and against a Python oracle for each semantics).

``bench/README.md`` says exactly what each side does and what each figure means.
Everything runs against Kafka and Cassandra on 127.0.0.1 (``--bootstrap``,
``--cassandra-port``); every topic, keyspace and temporary directory it creates is removed
at the end. Results are printed as a table and written as JSON to ``bench/results/``.

Example:
    .venv/bin/python -m bench.aggregations --events 20000 --keys 10000 --population 50000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
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
    percentile,
    ratio,
    run_bench,
    spark_jars,
    stop_when_idle,
    storage_plan,
    text_table,
)
from fs_dagster.aggregation.tiles import window_bounds
from fs_dagster.engine.pipeline import start_ingestion

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger("bench.aggregations")

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SCHEMA = "user_id STRING, amount DOUBLE, seq BIGINT, ts TIMESTAMP"
FUNCTIONS = ("sum", "count", "max")
WINDOWS = ("1m", "10m", "1h", "1d", "7d")
#: The newest preloaded event is just before this; events spread over ``--span-days``.
END_TIME = datetime(2026, 1, 9, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROS = 1_000_000
RAW_TABLE = "naive_raw_events"
WINDOWS_TABLE = "naive_windows"
PHASES = ("online", "offline")


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


END_MICROS = _micros(END_TIME)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BenchConfig:
    """What to run; built from the command line (see ``--help``)."""

    events: int = 300_000
    keys: int = 100_000
    span_days: float = 8.0
    partitions: int = 4
    max_offsets_per_trigger: int = 37_500
    hot_keys: int = 100
    hot_share: float = 0.1
    allowed_lateness: str = "1 day"
    requests: int = 300
    read_warmup: int = 30
    batch_keys: int = 100
    population: int = 1_000_000
    check_rows: int = 2_000
    warmup_events: int = 500
    master: str = "local[*]"
    driver_memory: str = "4g"
    run_timeout: float = 1800.0
    action_timeout: float = 3600.0
    phases: tuple[str, ...] = PHASES
    label: str = ""
    results_dir: Path = REPO / "bench" / "results"
    bootstrap: str = f"{HOST}:9092"
    cassandra_host: str = HOST
    cassandra_port: int = 9042
    seed: int = 11

    @property
    def span_micros(self) -> int:
        """Length of the preloaded event times."""
        return int(self.span_days * 86_400 * MICROS)


# --------------------------------------------------------------------------- events


@dataclass
class Events:
    """Every preloaded event, as arrays (the oracles read them)."""

    user: np.ndarray  # key index i of key "u<i>"
    micros: np.ndarray  # event time
    amount: np.ndarray
    seq: np.ndarray
    _order: np.ndarray | None = None
    _starts: np.ndarray | None = None

    def of_key(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Event times, amounts and sequence numbers of key ``u<index>``."""
        if self._order is None or self._starts is None:
            self._order = np.argsort(self.user, kind="stable")
            self._starts = np.searchsorted(self.user[self._order], np.arange(self.user.max() + 2))
        rows = self._order[self._starts[index] : self._starts[index + 1]]
        return self.micros[rows], self.amount[rows], self.seq[rows]


def generate_events(
    count: int,
    keys: int,
    span_micros: int,
    seed: int,
    *,
    hot_keys: int = 0,
    hot_share: float = 0.0,
    end_micros: int = END_MICROS,
) -> Events:
    """``count`` events in event-time order over ``span_micros`` ending at ``end_micros``
    (default END_TIME).

    Event ``i`` falls at a random microsecond of the ``i``-th equal slice of the span, so
    the topic is in event-time order (as a live stream would be), to the microsecond.
    Its key is uniform over ``u0 .. u<keys-1>``, except that a ``hot_share`` of the events
    go to the ``hot_keys`` keys ``u0 .. u<hot_keys-1>`` only.
    """
    rng = np.random.default_rng(seed)
    start = end_micros - span_micros
    slice_micros = max(span_micros // max(count, 1), 1)
    base = start + (np.arange(count, dtype=np.int64) * span_micros) // max(count, 1)
    micros = base + rng.integers(0, slice_micros, size=count)
    user = rng.integers(0, keys, size=count)
    if hot_keys > 0 and hot_share > 0:
        hot = rng.random(count) < hot_share
        user[hot] = rng.integers(0, min(hot_keys, keys), size=int(hot.sum()))
    return Events(
        user=user,
        micros=micros.astype(np.int64),
        amount=np.round(rng.uniform(1, 500, size=count), 2),
        seq=np.arange(1, count + 1, dtype=np.int64),
    )


def _iso(micros: int) -> str:
    return (EPOCH + timedelta(microseconds=int(micros))).isoformat()


def preload(bootstrap: str, topic: str, events: Events) -> None:
    """Produce ``events`` in order, keyed by ``user_id``, as JSON matching :data:`SCHEMA`."""
    from confluent_kafka import Producer

    producer = Producer({**kafka_common(bootstrap), "linger.ms": 20})
    for index in range(len(events.seq)):
        user = f"u{events.user[index]}"
        value = json.dumps(
            {
                "user_id": user,
                "amount": float(events.amount[index]),
                "seq": int(events.seq[index]),
                "ts": _iso(events.micros[index]),
            }
        ).encode()
        while True:
            try:
                producer.produce(topic, key=user.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.1)
        if index % 1000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError(f"preloading {topic}: not every event was delivered within 120 s")


# --------------------------------------------------------------------------- feature set


@dataclass(frozen=True)
class Output:
    """One of the 15 features: its name, function and window length."""

    name: str
    function: str
    seconds: int


def kafka_source(
    name: str, topic: str, bootstrap: str, max_offsets_per_trigger: int | None
) -> fs.KafkaSource:
    """The bench topic as a source (``maxOffsetsPerTrigger`` only for streaming reads)."""
    options = {
        "kafka.client.dns.lookup": "use_all_dns_ips",
        "kafka.allow.auto.create.topics": "false",
    }
    if max_offsets_per_trigger is not None:
        options["maxOffsetsPerTrigger"] = str(max_offsets_per_trigger)
    return fs.KafkaSource(
        name=name.replace("-", "_"),
        bootstrap_servers=bootstrap,
        topic=topic,
        schema=SCHEMA,
        options=options,
    )


def aggregated_feature_set(
    name: str, topic: str, cfg: BenchConfig, *, max_offsets_per_trigger: int
) -> fs.FeatureSet:
    """sum, count and max of ``amount`` over the 5 windows, key ``user_id``, time ``ts``."""
    source = kafka_source(name, topic, cfg.bootstrap, max_offsets_per_trigger)

    def transformation() -> fs.SparkSqlTransformation:
        aggregated = fs.SparkSqlTransformation(
            f"SELECT user_id, amount, seq, ts FROM {source.name}"
        )
        for function in FUNCTIONS:
            aggregated = aggregated.aggregate(getattr(fs.Aggregation, function)("amount"))
        return aggregated.by_windows(*WINDOWS)

    return fs.streaming.feature_set(
        name=name,
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        allowed_lateness=cfg.allowed_lateness,
    )(transformation)


def outputs_of(feature_set: fs.FeatureSet) -> list[Output]:
    """The features in :attr:`FeatureSet.feature_names` order."""
    return [
        Output(spec.feature_name(window), spec.function, window.seconds)
        for spec in feature_set.aggregations
        for window in feature_set.windows
    ]


# --------------------------------------------------------------------------- Cassandra


def create_naive_tables(
    session: Any, keyspace: str, outputs: Sequence[Output], suffix: str
) -> None:
    """The baseline's raw-events table (a partition per key, clustered by event time)
    and its table of recomputed window values (a row per key)."""
    session.execute(
        f'CREATE TABLE IF NOT EXISTS "{keyspace}"."{RAW_TABLE}{suffix}" (user_id text, '
        "ts bigint, seq bigint, amount double, PRIMARY KEY ((user_id), ts, seq)) "
        "WITH CLUSTERING ORDER BY (ts DESC, seq DESC)",
        timeout=60,
    )
    columns = ", ".join(
        f'"{o.name}" {"bigint" if o.function == "count" else "double"}' for o in outputs
    )
    session.execute(
        f'CREATE TABLE IF NOT EXISTS "{keyspace}"."{WINDOWS_TABLE}{suffix}" '
        f"(user_id text PRIMARY KEY, read_at bigint, {columns})",
        timeout=60,
    )


def cassandra_writer(
    host: str, port: int, cql: str, concurrency: int = 64
) -> Callable[[Iterable[Any]], None]:
    """A ``foreachPartition`` body inserting each row (a tuple in ``cql``'s order) with
    concurrent prepared statements, as fs-dagster's store does."""

    def write(rows: Iterable[Any]) -> None:
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.concurrent import execute_concurrent_with_args
        from cassandra.policies import RoundRobinPolicy

        profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=30)
        cluster = Cluster(
            [host],
            port=port,
            protocol_version=5,
            connect_timeout=10,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        )
        try:
            session = cluster.connect()
            statement = session.prepare(cql)
            pending: list[tuple[Any, ...]] = []
            for row in rows:
                pending.append(tuple(row))
                if len(pending) >= 2000:
                    execute_concurrent_with_args(
                        session, statement, pending, concurrency=concurrency
                    )
                    pending = []
            if pending:
                execute_concurrent_with_args(session, statement, pending, concurrency=concurrency)
        finally:
            cluster.shutdown()

    return write


# --------------------------------------------------------------------------- Spark helpers


def bounded_action(
    spark: SparkSession, what: str, action: Callable[[], Any], timeout: float
) -> float:
    """Run ``action`` (Spark jobs) in a thread; return its seconds, cancel it after
    ``timeout`` and raise :class:`TimeoutError`."""
    context = spark.sparkContext
    group = f"fs-bench-{uuid.uuid4().hex[:8]}"
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            context.setJobGroup(group, what, interruptOnCancel=True)
            began = time.perf_counter()
            action()
            outcome["seconds"] = time.perf_counter() - began
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"bench-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        context.cancelJobGroup(group)
        thread.join(120)
        raise TimeoutError(f"{what} did not finish within {timeout:g} s (cancelled)")
    if "error" in outcome:
        raise outcome["error"]
    seconds: float = outcome["seconds"]
    return seconds


def _window_value(function: str, column: Column) -> Column:
    from pyspark.sql import functions as F  # noqa: N812

    if function == "sum":
        return F.coalesce(F.sum(column), F.lit(0.0))
    if function == "count":
        return F.count(column)
    return F.max(column)


def parsed_events(spark: SparkSession, source: fs.KafkaSource) -> DataFrame:
    """The topic as a batch, parsed like fs-dagster parses it: user_id, t (micros), seq,
    amount; malformed records dropped."""
    from pyspark.sql import functions as F  # noqa: N812

    from fs_dagster.engine.sources import ERROR_COLUMN, read_source

    raw = read_source(spark, source, required_columns=["user_id", "ts"], streaming=False)
    return raw.where(F.col(ERROR_COLUMN).isNull()).select(
        "user_id",
        F.unix_micros(F.col("ts")).alias("t"),
        "seq",
        "amount",
    )


# --------------------------------------------------------------------------- 1. ingestion


def fs_ingestion(
    spark: SparkSession,
    cfg: BenchConfig,
    store: fs.CassandraOnlineStore,
    feature_set: fs.FeatureSet,
    *,
    events: int,
    workdir: Path,
    timeout: float,
) -> dict[str, Any]:
    """Ingest the topic with a fresh checkpoint and tile table until ``events`` are in."""
    reports = ReportLog(target_rows=events)
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    ingestion = start_ingestion(
        spark,
        feature_set,
        storage_plan(feature_set, workdir),
        "online",
        online_store=store,
        on_batch=reports,
        trigger_interval=0,
    )
    complete = False
    try:
        while time.monotonic() - began < timeout:
            if reports.reached.wait(timeout=1.0):
                complete = True
                break
            check_query(ingestion)
    finally:
        stop_when_idle(ingestion)
    entries = reports.snapshot()
    if not entries:
        raise RuntimeError(f"{feature_set.name}: no batch finished within {timeout} s")
    batches = [r for r, _ in entries]
    rows_in = sum(r.rows_in for r in batches)
    tiles = sum(r.tiles_written for r in batches)
    first_start = batches[0].finished_at - timedelta(seconds=batches[0].duration_seconds)
    span = (batches[-1].finished_at - first_start).total_seconds()
    wall = entries[-1][1] - began
    later = (batches[-1].finished_at - batches[0].finished_at).total_seconds()
    later_rows = rows_in - batches[0].rows_in
    return {
        "pipeline": "fs-dagster",
        "complete": complete,
        "events": rows_in,
        "batches": len(batches),
        "tiles_written": tiles,
        "tiles_per_event": tiles / rows_in if rows_in else None,
        "late_events": sum(r.late_events for r in batches),
        "dead_letters": sum(r.dead_letters for r in batches),
        "span_seconds": span,
        "events_per_second": rows_in / span if span > 0 else None,
        "tiles_per_second": tiles / span if span > 0 else None,
        "wall_seconds": wall,
        "events_per_second_wall": rows_in / wall if wall > 0 else None,
        "first_batch_seconds": batches[0].duration_seconds,
        "events_per_second_after_first": later_rows / later if later > 0 else None,
        "batch_seconds": [round(r.duration_seconds, 3) for r in batches],
        "batch_rows": [r.rows_in for r in batches],
        "batch_tiles": [r.tiles_written for r in batches],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def baseline_ingestion(
    spark: SparkSession,
    cfg: BenchConfig,
    source: fs.KafkaSource,
    *,
    keyspace: str,
    outputs: Sequence[Output],
    read_at: int,
    suffix: str = "",
) -> dict[str, Any]:
    """The naive pipeline, one Spark batch job over the whole topic, in two actions:

    1. store every raw event in ``naive_raw_events`` (the table the naive reads scan);
    2. recompute the 15 window values of every key at ``read_at`` from the raw events
       (conditional aggregates over ``(read_at - W, read_at]`` per window) and write one
       row per key to ``naive_windows``.

    Both re-read the topic from Kafka: a real deployment reruns step 2 at every refresh.
    """
    from pyspark.sql import functions as F  # noqa: N812

    load_before = os.getloadavg()[0]
    events = parsed_events(spark, source)
    host, port = cfg.cassandra_host, cfg.cassandra_port
    raw_cql = (
        f'INSERT INTO "{keyspace}"."{RAW_TABLE}{suffix}" (user_id, ts, seq, amount) '
        "VALUES (?, ?, ?, ?)"
    )
    raw_writer = cassandra_writer(host, port, raw_cql)
    raw_seconds = bounded_action(
        spark,
        "baseline-raw",
        lambda: events.select("user_id", "t", "seq", "amount").foreachPartition(raw_writer),
        cfg.action_timeout,
    )
    aggregates = []
    for output in outputs:
        inside = (F.col("t") > F.lit(read_at - output.seconds * MICROS)) & (
            F.col("t") <= F.lit(read_at)
        )
        value = F.when(inside, F.col("amount"))
        aggregates.append(_window_value(output.function, value).alias(output.name))
    windows = events.groupBy("user_id").agg(*aggregates)
    names = ["user_id", "read_at", *[o.name for o in outputs]]
    columns = ", ".join(f'"{n}"' for n in names)
    windows_cql = (
        f'INSERT INTO "{keyspace}"."{WINDOWS_TABLE}{suffix}" ({columns}) '
        f"VALUES ({', '.join('?' for _ in names)})"
    )
    windows_writer = cassandra_writer(host, port, windows_cql)
    counted: dict[str, int] = {}

    def recompute() -> None:
        rows = windows.select(
            "user_id", F.lit(read_at).alias("read_at"), *[o.name for o in outputs]
        ).persist()
        try:
            counted["keys"] = rows.count()
            rows.foreachPartition(windows_writer)
        finally:
            rows.unpersist()

    recompute_seconds = bounded_action(spark, "baseline-recompute", recompute, cfg.action_timeout)
    count = events.count()
    total = raw_seconds + recompute_seconds
    return {
        "pipeline": "baseline: Spark batch recompute",
        "events": count,
        "keys_written": counted.get("keys"),
        "raw_store_seconds": raw_seconds,
        "recompute_seconds": recompute_seconds,
        "span_seconds": total,
        "events_per_second": count / total if total > 0 else None,
        "events_per_second_recompute_only": (
            count / recompute_seconds if recompute_seconds > 0 else None
        ),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------- checks


@dataclass
class Oracle:
    """Window values computed directly from the preloaded events, in either semantics."""

    events: Events
    outputs: Sequence[Output]
    late_seqs: frozenset[int] = frozenset()

    def values(self, key: str, at: int, semantics: str) -> dict[str, Any]:
        """``exact``: event times in ``(at - W, at]``, every event.
        ``tiles``: fs-dagster's ``[S, E)`` (``tiles.window_bounds``), late events left out.
        ``tiles+late``: the same bounds with the late events in.
        """
        micros, amount, seq = self.events.of_key(int(key[1:]))
        if semantics == "tiles" and self.late_seqs:
            keep = np.array([int(s) not in self.late_seqs for s in seq], dtype=bool)
            micros, amount = micros[keep], amount[keep]
        values: dict[str, Any] = {}
        for output in self.outputs:
            if semantics == "exact":
                inside = (micros > at - output.seconds * MICROS) & (micros <= at)
            else:
                start, end = window_bounds(output.seconds, at)
                inside = (micros >= start * MICROS) & (micros < end * MICROS)
            chosen = amount[inside]
            if output.function == "sum":
                values[output.name] = float(chosen.sum()) if len(chosen) else 0.0
            elif output.function == "count":
                values[output.name] = len(chosen)
            else:
                values[output.name] = float(chosen.max()) if len(chosen) else None
        return values


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def same_value(a: Any, b: Any) -> bool:
    """Equal, nulls included; sums within 1e-9 relative (tiles sum in another order)."""
    a, b = _plain(a), _plain(b)
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)


@dataclass
class Comparison:
    """fs-dagster against the baseline, value by value, with the reason of each difference."""

    rows: int = 0
    values: int = 0
    equal: int = 0
    differ_tile_edges: int = 0
    differ_late_events: int = 0
    differ_unexplained: int = 0
    fs_not_tile_oracle: int = 0
    baseline_not_exact_oracle: int = 0
    per_feature: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        oracle: Oracle,
        key: str,
        at: int,
        fs_values: Mapping[str, Any],
        base_values: Mapping[str, Any],
    ) -> None:
        """Compare the 15 values of one (key, time)."""
        self.rows += 1
        tiles = oracle.values(key, at, "tiles")
        exact = oracle.values(key, at, "exact")
        with_late = oracle.values(key, at, "tiles+late") if oracle.late_seqs else tiles
        for output in oracle.outputs:
            name = output.name
            got, base = fs_values[name], base_values[name]
            self.values += 1
            fs_ok = same_value(got, tiles[name])
            base_ok = same_value(base, exact[name])
            self.fs_not_tile_oracle += not fs_ok
            self.baseline_not_exact_oracle += not base_ok
            if same_value(got, base):
                self.equal += 1
                continue
            self.per_feature[name] = self.per_feature.get(name, 0) + 1
            if fs_ok and base_ok:
                if same_value(with_late[name], exact[name]):
                    self.differ_late_events += 1
                else:
                    self.differ_tile_edges += 1
                continue
            self.differ_unexplained += 1
            if len(self.examples) < 10:
                self.examples.append(
                    {
                        "key": key,
                        "at": _iso(at),
                        "feature": name,
                        "fs_dagster": _plain(got),
                        "baseline": _plain(base),
                        "tile_oracle": tiles[name],
                        "exact_oracle": exact[name],
                    }
                )

    def summary(self) -> dict[str, Any]:
        """The counts as a JSON-able dict."""
        return asdict(self)


# --------------------------------------------------------------------------- 2. online reads


class NaiveReader:
    """The naive online read: each key's raw events of the longest window from Cassandra
    (one range query per key, all keys concurrently), aggregated in Python per window over
    ``(at - W, at]``."""

    def __init__(
        self, session: Any, keyspace: str, outputs: Sequence[Output], suffix: str = ""
    ) -> None:
        self.session = session
        self.outputs = list(outputs)
        self.longest = max(o.seconds for o in outputs) * MICROS
        self.statement = session.prepare(
            f'SELECT ts, amount FROM "{keyspace}"."{RAW_TABLE}{suffix}" '
            "WHERE user_id = ? AND ts > ? AND ts <= ?"
        )
        self.columns = ["user_id", "ts", *[o.name for o in self.outputs]]
        self.last_events_read = 0

    def read(self, keys: Sequence[str], at: int) -> pd.DataFrame:
        """One row per key, in order: the 15 window values at ``at``."""
        from cassandra.concurrent import execute_concurrent_with_args

        results = execute_concurrent_with_args(
            self.session,
            self.statement,
            [(key, at - self.longest, at) for key in keys],
            concurrency=64,
            raise_on_first_error=True,
        )
        read_time = pd.Timestamp(at, unit="us")
        records: list[dict[str, Any]] = []
        self.last_events_read = 0
        for key, (_ok, rows) in zip(keys, results, strict=True):
            events = [(row.ts, row.amount) for row in rows]
            self.last_events_read += len(events)
            record: dict[str, Any] = {"user_id": key, "ts": read_time}
            for output in self.outputs:
                low = at - output.seconds * MICROS
                values = [a for t, a in events if t > low and a is not None]
                if output.function == "sum":
                    record[output.name] = sum(values) if values else 0.0
                elif output.function == "count":
                    record[output.name] = len(values)
                else:
                    record[output.name] = max(values) if values else None
            records.append(record)
        return pd.DataFrame.from_records(records, columns=self.columns)


def _by(frame: pd.DataFrame, column: str) -> dict[Any, dict[str, Any]]:
    """Rows of ``frame`` as dicts, by the value of ``column`` (which they keep)."""
    records: list[dict[str, Any]] = frame.to_dict("records")  # type: ignore[assignment]
    return {record[column]: record for record in records}


def _latency_row(values: list[float]) -> dict[str, Any]:
    return {
        "requests": len(values),
        "p50_ms": (percentile(values, 50) or 0) * 1000,
        "p99_ms": (percentile(values, 99) or 0) * 1000,
        "mean_ms": sum(values) / len(values) * 1000 if values else None,
        "max_ms": max(values) * 1000 if values else None,
    }


def online_reads(
    cfg: BenchConfig,
    client: fs.FeatureStore,
    feature_set: fs.FeatureSet,
    naive: NaiveReader,
    oracle: Oracle,
    *,
    read_at: int,
    pools: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """Latency of both reads for 1 and ``batch_keys`` keys per request from each key
    pool, interleaved request by request so that both see the same load; then a value
    check on the first responses."""
    rng = random.Random(cfg.seed + 2)
    at = EPOCH + timedelta(microseconds=read_at)
    results: dict[str, Any] = {"read_at": _iso(read_at), "reads": {}, "breakdown": {}}
    checked: list[tuple[list[str], pd.DataFrame, pd.DataFrame]] = []
    for pool_name, pool in pools.items():
        for size in (1, cfg.batch_keys):
            if size > len(pool):
                continue
            fs_times: list[float] = []
            base_times: list[float] = []
            raw_events: list[int] = []
            load_before = os.getloadavg()[0]
            for index in range(cfg.read_warmup + cfg.requests):
                keys = rng.sample(list(pool), size)
                order = [0, 1] if index % 2 == 0 else [1, 0]
                frames: dict[int, pd.DataFrame] = {}
                for side in order:
                    began = time.perf_counter()
                    if side == 0:
                        frames[0] = client.get_online_features(feature_set, keys, at=at)
                    else:
                        frames[1] = naive.read(keys, read_at)
                    elapsed = time.perf_counter() - began
                    if index >= cfg.read_warmup:
                        (fs_times if side == 0 else base_times).append(elapsed)
                if index < cfg.read_warmup:
                    continue
                raw_events.append(naive.last_events_read)
                if index < cfg.read_warmup + 10:
                    checked.append((keys, frames[0], frames[1]))
            results["reads"][f"{pool_name}/{size}"] = {
                "pool": pool_name,
                "pool_keys": len(pool),
                "keys_per_request": size,
                "fs-dagster": _latency_row(fs_times),
                "baseline": {
                    **_latency_row(base_times),
                    "raw_events_read_mean": sum(raw_events) / max(len(raw_events), 1),
                },
                "load_average_before": load_before,
                "load_average_after": os.getloadavg()[0],
            }
            results["breakdown"][f"{pool_name}/{size}"] = read_breakdown(
                client,
                feature_set,
                pool=pool,
                size=size,
                read_at=read_at,
                rng=rng,
                repeats=min(cfg.requests, 50),
            )
    comparison = Comparison()
    for keys, fs_frame, base_frame in checked:
        fs_rows = _by(fs_frame, "user_id")
        base_rows = _by(base_frame, "user_id")
        for key in keys:
            comparison.add(oracle, key, read_at, fs_rows[key], base_rows[key])
    results["check"] = comparison.summary()
    return results


def read_breakdown(
    client: fs.FeatureStore,
    feature_set: fs.FeatureSet,
    *,
    pool: Sequence[str],
    size: int,
    read_at: int,
    rng: random.Random,
    repeats: int,
) -> dict[str, Any]:
    """Where one fs-dagster read spends its time, part by part (diagnostic).

    The parts ``get_online_features`` runs one after the other, timed separately:
    building the aggregation plan (its layout is read from Cassandra at every call),
    the concurrent tile slice queries (one per group of up to 10 keys with the same
    replicas), and the JSON decoding plus merging in Python.
    """
    from fs_dagster.aggregation.tiles import read_ranges
    from fs_dagster.engine.aggregates import window_values

    store = client.online_store
    assert isinstance(store, fs.CassandraOnlineStore)
    plan_s: list[float] = []
    scan_s: list[float] = []
    merge_s: list[float] = []
    tiles_read: list[int] = []
    queries = 0
    for _ in range(max(repeats, 5)):
        keys = [(k,) for k in rng.sample(list(pool), size)]
        began = time.perf_counter()
        plan = client._aggregation_plan(feature_set)  # a diagnostic: the same call it makes
        planned = time.perf_counter()
        _, ranges = read_ranges(plan.window_seconds, read_at, plan.resolutions)
        spans = [(r.resolution, r.first, r.last) for r in ranges]
        stored = store.read_tiles_for_keys(plan.tile_table, keys, spans)
        scanned = time.perf_counter()
        for key_tiles in stored:
            tiles = {(t.resolution, t.start): json.loads(t.state) for t in key_tiles}
            window_values(plan, tiles, read_at)
        merged = time.perf_counter()
        plan_s.append(planned - began)
        scan_s.append(scanned - planned)
        merge_s.append(merged - scanned)
        tiles_read.append(sum(len(t) for t in stored))
        # One slice query per group of keys (a diagnostic: the grouping the store uses).
        queries = len(store._key_groups(plan.tile_table, keys))
    return {
        "plan_lookup_ms_p50": (percentile(plan_s, 50) or 0) * 1000,
        "tile_scans_ms_p50": (percentile(scan_s, 50) or 0) * 1000,
        "merge_ms_p50": (percentile(merge_s, 50) or 0) * 1000,
        "queries_per_request": queries,
        "tiles_read_mean": sum(tiles_read) / len(tiles_read),
    }


# --------------------------------------------------------------------------- 3. offline PIT


def build_population(spark: SparkSession, cfg: BenchConfig, rows: int) -> DataFrame:
    """``rows`` population rows: a random key (with or without events) and a random
    microsecond between the first event and an hour after the last; cached and counted."""
    from pyspark.sql import functions as F  # noqa: N812

    start = END_MICROS - cfg.span_micros
    length = cfg.span_micros + 3600 * MICROS
    population = (
        spark.range(rows)
        .select(
            F.col("id").alias("row_id"),
            F.concat(F.lit("u"), F.floor(F.rand(cfg.seed) * F.lit(cfg.keys)).cast("long")).alias(
                "user_id"
            ),
            F.timestamp_micros(
                (F.lit(start) + F.floor(F.rand(cfg.seed + 1) * F.lit(length))).cast("long")
            ).alias("timestamp"),
        )
        .persist()
    )
    population.count()
    return population


def naive_point_in_time(
    population: DataFrame, raw_rows: DataFrame, outputs: Sequence[Output]
) -> DataFrame:
    """The naive offline read: population rows unioned with the raw feature rows per key,
    ordered by time, one range frame ``(t - W, t]`` per window over the union."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    events = raw_rows.select(
        "user_id",
        F.unix_micros(F.col("ts").cast("timestamp")).alias("__t"),
        F.col("amount").cast("double").alias("__amount"),
        F.lit(None).cast("long").alias("row_id"),
        F.lit(None).cast("timestamp").alias("timestamp"),
    )
    rows = population.select(
        "user_id",
        F.unix_micros(F.col("timestamp")).alias("__t"),
        F.lit(None).cast("double").alias("__amount"),
        "row_id",
        "timestamp",
    )
    union = events.unionByName(rows)
    columns = []
    for output in outputs:
        frame = (
            Window.partitionBy("user_id")
            .orderBy("__t")
            .rangeBetween(-(output.seconds * MICROS - 1), Window.currentRow)
        )
        value: Column
        if output.function == "sum":
            value = F.coalesce(F.sum("__amount").over(frame), F.lit(0.0))
        elif output.function == "count":
            value = F.count("__amount").over(frame)
        else:
            value = F.max("__amount").over(frame)
        columns.append(value.alias(output.name))
    return (
        union.select("row_id", "user_id", "timestamp", *columns)
        .where(F.col("row_id").isNotNull())
        .select(*population.columns, *[o.name for o in outputs])
    )


def offline_point_in_time(
    spark: SparkSession,
    cfg: BenchConfig,
    *,
    client: fs.FeatureStore,
    feature_set: fs.FeatureSet,
    outputs: Sequence[Output],
    oracle: Oracle,
) -> dict[str, Any]:
    """Both offline reads materialised for the whole population (``noop`` sink), then
    both again on a sample of it, compared value by value."""
    from pyspark.sql import functions as F  # noqa: N812

    result: dict[str, Any] = {"population_requested": cfg.population}
    raw_path = client.plan(feature_set).features_path
    raw_rows = spark.read.format("delta").load(raw_path)
    # Both inputs read once before timing, so that neither pays for a cold Delta log.
    result["raw_rows"] = raw_rows.count()
    tiles_path = client.plan(feature_set).tiles_path
    result["tile_partials"] = spark.read.format("delta").load(tiles_path).count()
    population = build_population(spark, cfg, cfg.population)
    result["population_rows"] = cfg.population

    def fs_run(pop: DataFrame) -> DataFrame:
        return client.get_offline_features(pop, feature_set, "timestamp", output="spark")

    # The same read to pandas from a pandas population: fs-dagster's in-process engine
    # (DuckDB merges the tiles, numpy the windows). The population is converted first.
    local_population = population.toPandas()
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    local = client.get_offline_features(local_population, feature_set, "timestamp")
    seconds = time.perf_counter() - began
    assert len(local) == len(local_population)
    result["fs-dagster-pandas"] = {
        "seconds": seconds,
        "rows_per_second": cfg.population / seconds,
        "engine": client.offline_engine,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    log.info("  fs-dagster to pandas (%s engine): %s s", client.offline_engine, fmt(seconds))
    del local, local_population

    def naive_run(pop: DataFrame) -> DataFrame:
        return naive_point_in_time(pop, raw_rows, outputs)

    for side, run in (("fs-dagster", fs_run), ("baseline", naive_run)):
        load_before = os.getloadavg()[0]

        def materialise(run: Callable[[DataFrame], DataFrame] = run) -> None:
            run(population).write.format("noop").mode("overwrite").save()

        try:
            seconds = bounded_action(spark, f"pit-{side}", materialise, cfg.action_timeout)
            result[side] = {"seconds": seconds, "rows_per_second": cfg.population / seconds}
        except TimeoutError as exc:
            result[side] = {"seconds": None, "timed_out": str(exc)}
        result[side]["load_average_before"] = load_before
        result[side]["load_average_after"] = os.getloadavg()[0]
        log.info("  %s: %s s", side, fmt(result[side]["seconds"]))
    population.unpersist()

    step = max(1, cfg.population // max(cfg.check_rows, 1))
    again = build_population(spark, cfg, cfg.population)
    sample = again.where(F.col("row_id") % step == 0)
    fs_sample = fs_run(sample).toPandas()
    base_rows = _by(naive_run(sample).toPandas(), "row_id")
    comparison = Comparison()
    for row_id, fs_row in _by(fs_sample, "row_id").items():
        at = int(pd.Timestamp(fs_row["timestamp"]).value // 1000)
        comparison.add(oracle, fs_row["user_id"], at, fs_row, base_rows[row_id])
    # The pandas read of the same sample, checked the same way.
    local_sample = client.get_offline_features(sample.toPandas(), feature_set, "timestamp")
    local_comparison = Comparison()
    for row_id, fs_row in _by(local_sample, "row_id").items():
        at = int(pd.Timestamp(fs_row["timestamp"]).value // 1000)
        local_comparison.add(oracle, fs_row["user_id"], at, fs_row, base_rows[row_id])
    again.unpersist()
    result["check"] = {"sample_every": step, **comparison.summary()}
    result["check_pandas"] = {"sample_every": step, **local_comparison.summary()}
    result["breakdown"] = merge_breakdown(spark, client, feature_set, fs_sample, cfg)
    return result


def merge_breakdown(
    spark: SparkSession,
    client: fs.FeatureStore,
    feature_set: fs.FeatureSet,
    sample: pd.DataFrame,
    cfg: BenchConfig,
) -> dict[str, Any]:
    """Python cost of the row-by-row merge fs-dagster's offline read runs for states it
    does not merge column-wise (diagnostic; this bench's sum, count and max are merged
    column-wise): ``window_values`` per population row, timed in the driver."""
    from pyspark.sql import functions as F  # noqa: N812

    from fs_dagster.aggregation.states import merge_states
    from fs_dagster.engine.aggregates import window_values

    plan = client._aggregation_plan(feature_set)  # a diagnostic: the same call it makes
    rows = sample.head(500)
    keys = sorted(set(rows["user_id"]))
    tiles = (
        spark.read.format("delta")
        .load(client.plan(feature_set).tiles_path)
        .where(F.col("user_id").isin(keys))
        .select("user_id", "__fs_resolution", "__fs_tile_start", "state")
        .toPandas()
    )
    per_key: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
    for user, resolution, start, state in tiles.itertuples(index=False, name=None):
        merged = per_key.setdefault(user, {})
        tile = (int(resolution), int(start))
        merged[tile] = merge_states(plan.states, [merged.get(tile), json.loads(state)])
    began = time.perf_counter()
    for user, stamp in zip(rows["user_id"], rows["timestamp"], strict=True):
        window_values(plan, per_key.get(user, {}), int(pd.Timestamp(stamp).value // 1000))
    elapsed = time.perf_counter() - began
    return {
        "rows_timed": len(rows),
        "window_values_us_per_row": elapsed / max(len(rows), 1) * 1e6,
        "tile_partials_per_key": len(tiles) / max(len(keys), 1),
    }


# --------------------------------------------------------------------------- the run


def warm_up(
    spark: SparkSession,
    cfg: BenchConfig,
    store: fs.CassandraOnlineStore,
    session: Any,
    *,
    run_id: str,
    outputs: Sequence[Output],
    workdir: Path,
    topics: list[str],
) -> dict[str, float]:
    """Run both pipelines once on a small topic before anything is measured: the first
    query of a Spark application starts the Python workers (and fs-dagster's Cassandra
    connections in them), which later queries reuse."""
    topic = f"fs-bench-{run_id}-warmup"
    create_topic(cfg.bootstrap, topic, cfg.partitions)
    topics.append(topic)
    events = generate_events(cfg.warmup_events, min(cfg.keys, 100), cfg.span_micros, cfg.seed + 9)
    preload(cfg.bootstrap, topic, events)
    feature_set = aggregated_feature_set(
        f"agg-{run_id}-warmup",
        topic,
        cfg,
        max_offsets_per_trigger=max(1, cfg.warmup_events // 2),
    )
    began = time.monotonic()
    fs_ingestion(
        spark,
        cfg,
        store,
        feature_set,
        events=cfg.warmup_events,
        workdir=workdir,
        timeout=cfg.run_timeout,
    )
    fs_seconds = time.monotonic() - began
    create_naive_tables(session, store.keyspace, outputs, "_warmup")
    began = time.monotonic()
    baseline_ingestion(
        spark,
        cfg,
        kafka_source(f"warm-{run_id}", topic, cfg.bootstrap, None),
        keyspace=store.keyspace,
        outputs=outputs,
        read_at=END_MICROS,
        suffix="_warmup",
    )
    return {"fs_dagster_seconds": fs_seconds, "baseline_seconds": time.monotonic() - began}


def _hot_mean(events: Events, cfg: BenchConfig) -> float | None:
    hot = min(cfg.hot_keys, cfg.keys)
    if cfg.hot_share <= 0 or hot <= 0:
        return None
    return float((events.user < hot).sum()) / hot


def late_seqs(client: fs.FeatureStore, feature_set: fs.FeatureSet) -> frozenset[int]:
    """Sequence numbers of the events fs-dagster set aside as late."""
    late = client.late_events(feature_set)
    return frozenset(int(json.loads(p)["seq"]) for p in late["payload"])


def offline_rows(
    spark: SparkSession, feature_set: fs.FeatureSet, workdir: Path, timeout: float
) -> float:
    """Run fs-dagster's offline pipeline (``availableNow``) to get the raw feature rows
    the naive point-in-time read needs; return its seconds."""
    began = time.monotonic()
    ingestion = start_ingestion(spark, feature_set, storage_plan(feature_set, workdir), "offline")
    try:
        if not ingestion.query.awaitTermination(int(timeout)):
            raise TimeoutError(f"the offline ingestion did not finish within {timeout} s")
        error = ingestion.query.exception()
        if error is not None:
            raise RuntimeError(f"the offline ingestion failed: {error}")
    finally:
        ingestion.stop()
    return time.monotonic() - began


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark and return the result document."""
    from fs_dagster.engine.spark_session import SparkSettings, create_spark_session

    check_services(cfg.bootstrap, cfg.cassandra_host, cfg.cassandra_port)
    run_id = uuid.uuid4().hex[:8]
    keyspace = f"fs_bench_agg_{run_id}"
    store = fs.CassandraOnlineStore(
        hosts=[cfg.cassandra_host], port=cfg.cassandra_port, keyspace=keyspace
    )
    workdir = Path(tempfile.mkdtemp(prefix="fs-bench-agg-"))
    topics: list[str] = []
    spark: SparkSession | None = None
    session: Any = None
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
    }
    try:
        store.ensure_keyspace()
        session = cassandra_session(cfg.cassandra_host, cfg.cassandra_port)
        log.info("keyspace %s; Spark session %s", keyspace, cfg.master)
        spark = create_spark_session(
            SparkSettings(
                master=cfg.master,
                app_name="fs-dagster-bench-aggregations",
                jars=spark_jars(),
                conf={"spark.driver.memory": cfg.driver_memory},
            )
        )
        results["environment"]["spark"] = spark.version
        name = f"agg-{run_id}"
        feature_set = aggregated_feature_set(
            name, f"fs-bench-{run_id}-events", cfg, max_offsets_per_trigger=1
        )
        outputs = outputs_of(feature_set)
        log.info("warming up both pipelines on %d events", cfg.warmup_events)
        results["environment"]["warm_up"] = warm_up(
            spark,
            cfg,
            store,
            session,
            run_id=run_id,
            outputs=outputs,
            workdir=workdir,
            topics=topics,
        )

        topic = f"fs-bench-{run_id}-events"
        create_topic(cfg.bootstrap, topic, cfg.partitions)
        topics.append(topic)
        events = generate_events(
            cfg.events,
            cfg.keys,
            cfg.span_micros,
            cfg.seed,
            hot_keys=cfg.hot_keys,
            hot_share=cfg.hot_share,
        )
        began = time.monotonic()
        preload(cfg.bootstrap, topic, events)
        newest = int(events.micros.max())
        read_at = newest + 500_000
        results["data"] = {
            "events": cfg.events,
            "keys": cfg.keys,
            "keys_with_events": len(np.unique(events.user)),
            "events_per_key_mean": cfg.events / cfg.keys,
            "hot_keys": min(cfg.hot_keys, cfg.keys) if cfg.hot_share > 0 else 0,
            "events_per_hot_key_mean": _hot_mean(events, cfg),
            "first_event": _iso(int(events.micros.min())),
            "last_event": _iso(newest),
            "read_at": _iso(read_at),
            "preload_seconds": time.monotonic() - began,
        }
        log.info("preloaded %d events in %.1f s", cfg.events, results["data"]["preload_seconds"])

        log.info("ingestion: baseline (Spark batch recompute)")
        create_naive_tables(session, keyspace, outputs, "")
        base_row = baseline_ingestion(
            spark,
            cfg,
            kafka_source(f"naive-{run_id}", topic, cfg.bootstrap, None),
            keyspace=keyspace,
            outputs=outputs,
            read_at=read_at,
        )
        log.info("  %s events/s", fmt(base_row["events_per_second"]))
        log.info("ingestion: fs-dagster")
        feature_set = aggregated_feature_set(
            name, topic, cfg, max_offsets_per_trigger=cfg.max_offsets_per_trigger
        )
        fs_row = fs_ingestion(
            spark,
            cfg,
            store,
            feature_set,
            events=cfg.events,
            workdir=workdir,
            timeout=cfg.run_timeout,
        )
        fs_row["ratio_events_per_second"] = ratio(
            fs_row["events_per_second"], base_row["events_per_second"]
        )
        fs_row["ratio_events_per_second_vs_recompute_only"] = ratio(
            fs_row["events_per_second"], base_row["events_per_second_recompute_only"]
        )
        log.info(
            "  %s events/s, %s tiles/s",
            fmt(fs_row["events_per_second"]),
            fmt(fs_row["tiles_per_second"]),
        )
        results["ingestion"] = {"fs-dagster": fs_row, "baseline": base_row}
        if not fs_row["complete"]:
            raise RuntimeError(
                f"fs-dagster ingested {fs_row['events']} of {cfg.events} events in "
                f"{cfg.run_timeout:g} s; raise --timeout or lower --events"
            )

        client = fs.FeatureStore(
            online_store=store,
            offline_root=str(workdir / "offline"),
            checkpoint_root=str(workdir / "checkpoints"),
            feature_sets=[feature_set],
            spark=spark,
        )
        late = late_seqs(client, feature_set) if fs_row["late_events"] else frozenset()
        oracle = Oracle(events, outputs, late)
        if "online" in cfg.phases:
            log.info("online reads: %d requests of 1 and %d keys", cfg.requests, cfg.batch_keys)
            hot = min(cfg.hot_keys, cfg.keys) if cfg.hot_share > 0 else 0
            pools = {
                "uniform": sorted({f"u{u}" for u in np.unique(events.user) if u >= hot}),
                "hot": [f"u{u}" for u in range(hot)],
            }
            naive = NaiveReader(session, keyspace, outputs)
            results["online"] = online_reads(
                cfg,
                client,
                feature_set,
                naive,
                oracle,
                read_at=read_at,
                pools={k: v for k, v in pools.items() if v},
            )
        if "offline" in cfg.phases:
            log.info("offline: raw feature rows through fs-dagster's offline pipeline")
            seconds = offline_rows(spark, feature_set, workdir, cfg.run_timeout)
            log.info("offline: point in time for %d population rows", cfg.population)
            results["offline"] = offline_point_in_time(
                spark, cfg, client=client, feature_set=feature_set, outputs=outputs, oracle=oracle
            )
            results["offline"]["offline_ingestion_seconds"] = seconds
    finally:
        if spark is not None:
            spark.stop()
        if session is not None:
            session.cluster.shutdown()
        store.close()
        drop_keyspace(cfg.cassandra_host, cfg.cassandra_port, keyspace)
        delete_topics(cfg.bootstrap, topics)
        shutil.rmtree(workdir, ignore_errors=True)
    results["environment"]["load_average_end"] = os.getloadavg()[0]
    return results


# --------------------------------------------------------------------------- output


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    """One line per figure: fs-dagster, baseline, and how many times faster fs-dagster is."""
    rows: list[list[str]] = []
    ingestion = results.get("ingestion")
    if ingestion:
        fs_row, base = ingestion["fs-dagster"], ingestion["baseline"]
        rows.append(
            [
                "ingestion events/s",
                fmt(fs_row["events_per_second"]),
                fmt(base["events_per_second"]),
                fmt(ratio(fs_row["events_per_second"], base["events_per_second"])),
            ]
        )
        rows.append(
            [
                "  vs recompute step only",
                fmt(fs_row["events_per_second"]),
                fmt(base["events_per_second_recompute_only"]),
                fmt(ratio(fs_row["events_per_second"], base["events_per_second_recompute_only"])),
            ]
        )
        rows.append(["  tiles written/s", fmt(fs_row["tiles_per_second"]), "-", "-"])
    online = results.get("online")
    if online:
        for row in online["reads"].values():
            size = row["keys_per_request"]
            what = f"{size} {row['pool']} key{'s' if size != 1 else ''}"
            for stat in ("p50_ms", "p99_ms"):
                fs_v, base_v = row["fs-dagster"][stat], row["baseline"][stat]
                rows.append(
                    [
                        f"online read {what} {stat[:3]} ms",
                        fmt(fs_v),
                        fmt(base_v),
                        fmt(ratio(base_v, fs_v)),
                    ]
                )
    offline = results.get("offline")
    if offline:
        fs_s, base_s = offline["fs-dagster"]["seconds"], offline["baseline"]["seconds"]
        rows.append(
            [
                f"offline PIT {offline['population_rows']:,} rows s",
                fmt(fs_s),
                fmt(base_s),
                fmt(ratio(base_s, fs_s)),
            ]
        )
        local = offline.get("fs-dagster-pandas")
        if local:
            rows.append(
                [
                    "  to pandas, pandas population s",
                    fmt(local["seconds"]),
                    fmt(base_s),
                    fmt(ratio(base_s, local["seconds"])),
                ]
            )
    return rows


def _check_line(name: str, check: Mapping[str, Any]) -> str:
    return (
        f"{name}: {check['rows']} rows, {check['values']} values; equal {check['equal']}; "
        f"differ by tile edges {check['differ_tile_edges']}, by late events "
        f"{check['differ_late_events']}, unexplained {check['differ_unexplained']}; "
        f"fs-dagster != tile-edge oracle {check['fs_not_tile_oracle']}, "
        f"baseline != exact oracle {check['baseline_not_exact_oracle']}"
    )


def format_results(results: dict[str, Any]) -> str:
    """The human-readable summary of a result document."""
    cfg = results["config"]
    env = results["environment"]
    out = [f"# {results['label'] or 'aggregations benchmark'} ({results['started_at']})"]
    out.append(
        f"# {env['cpus']} CPUs, Spark master {cfg['master']}, load average at start "
        f"{env['load_average_start']:.2f}, at end {env.get('load_average_end', 0):.2f}"
    )
    data = results.get("data")
    if data:
        out.append(
            f"# {data['events']:,} events over {data['keys']:,} keys "
            f"({data['keys_with_events']:,} with events, {data['events_per_key_mean']:.1f} per "
            f"key; {data['hot_keys']} hot keys with "
            f"{fmt(data['events_per_hot_key_mean'], 1)} each), "
            f"{data['first_event']} .. {data['last_event']}; 3 aggregates x 5 windows; "
            f"reads at {data['read_at']}"
        )
    ingestion = results.get("ingestion")
    if ingestion:
        fs_row = ingestion["fs-dagster"]
        base = ingestion["baseline"]
        out.append(
            f"# fs-dagster: {fs_row['batches']} batches (maxOffsetsPerTrigger "
            f"{cfg['max_offsets_per_trigger']:,}), {fs_row['tiles_written']:,} tiles "
            f"({fs_row['tiles_per_event']:.2f}/event), first batch "
            f"{fs_row['first_batch_seconds']:.1f} s, "
            f"{fmt(fs_row['events_per_second_after_first'])} ev/s after it, "
            f"late events {fs_row['late_events']}; baseline: raw store "
            f"{base['raw_store_seconds']:.1f} s + recompute {base['recompute_seconds']:.1f} s"
        )
    out.append("")
    out.append(
        text_table(
            ["figure", "fs-dagster", "naive baseline", "fs-dagster speed-up (x)"],
            summary_rows(results),
        )
    )
    online = results.get("online")
    if online:
        out.append("\n" + _check_line("online check", online["check"]))
        for name, part in online["breakdown"].items():
            raw = online["reads"][name]["baseline"]["raw_events_read_mean"]
            out.append(
                f"read {name}: baseline reads {raw:.0f} raw events; fs-dagster p50 by part: plan "
                "lookup "
                f"{part['plan_lookup_ms_p50']:.2f} ms, tile scans {part['tile_scans_ms_p50']:.2f} "
                f"ms ({part['queries_per_request']} queries, "
                f"{part['tiles_read_mean']:.1f} tiles), merge {part['merge_ms_p50']:.2f} ms"
            )
    offline = results.get("offline")
    if offline:
        out.append(_check_line("offline check", offline["check"]))
        if "check_pandas" in offline:
            out.append(_check_line("offline check, to pandas", offline["check_pandas"]))
        part = offline["breakdown"]
        out.append(
            f"fs-dagster row-by-row merge (for states not merged column-wise): "
            f"{part['window_values_us_per_row']:.0f} us of Python per population row, "
            f"{part['tile_partials_per_key']:.1f} tile partials per key; "
            f"offline ingestion of the raw rows {offline['offline_ingestion_seconds']:.1f} s"
        )
    out.append(
        "\nspeed-up: fs-dagster's events/s over the baseline's; for times and latencies the "
        "baseline's over fs-dagster's. Above 1 means fs-dagster is faster."
    )
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    """The :class:`BenchConfig` the command line asks for."""
    default = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.aggregations",
        description="Windowed aggregations, Kafka -> Cassandra: fs-dagster against naive "
        "recomputes from raw events.",
    )
    parser.add_argument("--events", type=int, default=default.events, help="preloaded events")
    parser.add_argument("--keys", type=int, default=default.keys, help="distinct user_id values")
    parser.add_argument(
        "--span-days", type=float, default=default.span_days, help="days the event times span"
    )
    parser.add_argument("--partitions", type=int, default=default.partitions)
    parser.add_argument(
        "--max-offsets-per-trigger",
        type=int,
        default=None,
        help="Spark's maxOffsetsPerTrigger for fs-dagster (default: --events / 8)",
    )
    parser.add_argument(
        "--hot-keys", type=int, default=default.hot_keys, help="keys u0.. that get --hot-share"
    )
    parser.add_argument(
        "--hot-share",
        type=float,
        default=default.hot_share,
        help="share of the events that go to the hot keys (0 for uniform keys)",
    )
    parser.add_argument(
        "--allowed-lateness",
        default=default.allowed_lateness,
        help="the feature set's allowed_lateness",
    )
    parser.add_argument(
        "--requests", type=int, default=default.requests, help="measured reads per size"
    )
    parser.add_argument("--read-warmup", type=int, default=default.read_warmup)
    parser.add_argument(
        "--batch-keys", type=int, default=default.batch_keys, help="keys per batch read"
    )
    parser.add_argument(
        "--population", type=int, default=default.population, help="offline population rows"
    )
    parser.add_argument(
        "--check-rows", type=int, default=default.check_rows, help="population rows compared"
    )
    parser.add_argument("--master", default=default.master, help="Spark master")
    parser.add_argument("--driver-memory", default=default.driver_memory)
    parser.add_argument(
        "--timeout",
        type=float,
        default=default.run_timeout,
        help="limit of each ingestion run in seconds",
    )
    parser.add_argument(
        "--action-timeout",
        type=float,
        default=default.action_timeout,
        help="limit of each measured Spark action (baseline job steps, offline reads)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="online and/or offline (ingestion always runs: the other phases read it)",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("FS_KAFKA_BOOTSTRAP_SERVERS", "").strip()
        or f"{HOST}:{os.environ.get('FS_KAFKA_PORT', '').strip() or 9092}",
        help="Kafka bootstrap server (default $FS_KAFKA_BOOTSTRAP_SERVERS or "
        "127.0.0.1:$FS_KAFKA_PORT, else 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--cassandra-host",
        default=(os.environ.get("FS_CASSANDRA_HOSTS", "").strip() or HOST).split(",")[0],
        help="Cassandra contact point (default $FS_CASSANDRA_HOSTS or 127.0.0.1)",
    )
    parser.add_argument(
        "--cassandra-port",
        type=int,
        default=int(os.environ.get("FS_CASSANDRA_PORT", "").strip() or 9042),
        help="Cassandra native port (default $FS_CASSANDRA_PORT or 9042)",
    )
    parser.add_argument("--label", default="", help="a label stored with the results")
    parser.add_argument("--results-dir", type=Path, default=default.results_dir)
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"--phases: unknown {sorted(unknown)}; use online and/or offline")
    if min(args.events, args.keys, args.requests, args.batch_keys, args.population) < 1:
        parser.error("--events, --keys, --requests, --batch-keys and --population must be >= 1")
    if args.batch_keys > args.keys:
        parser.error("--batch-keys cannot exceed --keys")
    return BenchConfig(
        events=args.events,
        keys=args.keys,
        span_days=args.span_days,
        partitions=args.partitions,
        max_offsets_per_trigger=args.max_offsets_per_trigger or max(1, math.ceil(args.events / 8)),
        hot_keys=args.hot_keys,
        hot_share=args.hot_share,
        allowed_lateness=args.allowed_lateness,
        requests=args.requests,
        read_warmup=args.read_warmup,
        batch_keys=args.batch_keys,
        population=args.population,
        check_rows=args.check_rows,
        master=args.master,
        driver_memory=args.driver_memory,
        run_timeout=args.timeout,
        action_timeout=args.action_timeout,
        phases=phases,
        label=args.label,
        results_dir=args.results_dir,
        bootstrap=args.bootstrap,
        cassandra_host=args.cassandra_host,
        cassandra_port=args.cassandra_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the summary, write the JSON; return the exit status."""
    run_bench(
        "aggregations",
        argv,
        logger=log,
        parse_args=parse_args,
        run=run,
        format_results=format_results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
