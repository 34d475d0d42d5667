"""What keeping tile state in Spark would change for an aggregated micro-batch, measured.

fs-dagster's aggregated online batch computes the batch's tile partials, then reads every
touched tile from the online store, merges and writes it back. The performance issue
suggests instead keeping the tile states in Spark (RocksDB) and writing whole tiles
blind. This benchmark runs, one after the other in one Spark session, the same events
through five pipelines and measures the time of their micro-batches:

1. **floor**: Spark alone: Kafka, JSON, one partial per (key, resolution, tile) of the
   batch (``groupBy`` inside ``foreachBatch``), counted; nothing kept, nothing written.
   Every design pays this much before state and I/O.
2. **jvm-state**: Spark's streaming aggregation keeps the tiles (RocksDB state store,
   changelog checkpointing, output mode ``update``); each batch's updated tiles are
   written whole to Cassandra, without a read, by the store's ``write_tiles``.
3. **tws-rows**: ``transformWithState`` (Python, row API), a ``ValueState`` per key
   holding its tiles; the same blind write.
4. **tws-pandas**: ``transformWithStateInPandas``, otherwise as 3.
5. **fs-dagster**: ``start_ingestion`` of the aggregated benchmarks' feature set (``sum``,
   ``count`` and ``max`` of ``amount`` over 1m, 10m, 1h, 1d and 7d, the same tiles) into
   Cassandra: partials, then read, merge and write of the touched tiles.

Events are produced at ``--rate`` per second for ``--warmup`` + ``--seconds`` seconds to a
topic of each pipeline's own, keys ``u0..u<--keys>``, event time the time of production;
every pipeline runs on a fixed trigger (``--trigger`` seconds), so that batches hold the
same events in every pipeline. Every pipeline first runs ``--warm-pass`` seconds, not
measured (the JVM compiles its code; without it the first pipeline of a run is the
slowest); then ``--rounds`` rounds run them all, every other round in reverse order.
Measured per run: the batches that started after its first ``--warmup`` seconds, their
``addBatch`` time (p50, p90, mean) and rows, and the process tree's peak memory; the
table gives per pipeline the median over the rounds, and the p50 as a multiple of the
floor's.
Pipelines 2-4 keep state without eviction (no watermark): enough for a run of a minute,
not a design: evicting by watermark makes Spark drop later events without counting them.

**check**: after each pipeline has read every event, the stored tiles of ``--check-keys``
keys equal an oracle computed in this file from the produced events (sum within 1e-9,
count and max exactly); none missing, none extra.

Example:
    .venv/bin/python -m bench.tile_state                      # 500 ev/s, 30 s each
    .venv/bin/python -m bench.tile_state --seconds 10 --modes floor,fs-dagster
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pyspark.sql import Row
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.streaming.stateful_processor import StatefulProcessor, StatefulProcessorHandle

import fs_dagster as fs
from bench import aggregations as agg
from bench import tile_store
from bench.common import (
    PeakMemory,
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
    wait_idle,
)
from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.engine.aggregates import aggregation_plan, prepare_online_tiles
from fs_dagster.engine.arrow_map import map_in_pandas, pandas_map_function
from fs_dagster.engine.pipeline import start_ingestion
from fs_dagster.stores.online.base import TileWrite

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

log = logging.getLogger("bench.tile_state")

REPO = Path(__file__).resolve().parents[1]
MODES = ("floor", "jvm-state", "tws-rows", "tws-pandas", "fs-dagster")
HOST = "127.0.0.1"
TILE_ROWS = "user_id STRING, res INT, tile LONG, s DOUBLE, c LONG, m DOUBLE"


@dataclass(frozen=True)
class Config:
    """What to run; built from the command line (see ``--help``)."""

    rate: float = 500.0
    seconds: float = 30.0
    warmup: float = 5.0
    warm_pass: float = 10.0
    rounds: int = 2
    trigger: float = 1.0
    keys: int = 10_000
    partitions: int = 4
    modes: tuple[str, ...] = MODES
    check_keys: int = 300
    drain_timeout: float = 120.0
    bootstrap: str = "127.0.0.1:9092"
    cassandra_port: int = 9042
    master: str = "local[*]"
    seed: int = 11
    results_dir: Path = field(default=REPO / "bench" / "results")


@dataclass
class Produced:
    """The events a run produced: key index, event time (micros) and amount."""

    keys: list[int] = field(default_factory=list)
    micros: list[int] = field(default_factory=list)
    amounts: list[float] = field(default_factory=list)


def feature_set(name: str, topic: str, cfg: Config) -> fs.FeatureSet:
    """The aggregated benchmarks' feature set over ``topic``."""
    bench_cfg = agg.BenchConfig(bootstrap=cfg.bootstrap, cassandra_port=cfg.cassandra_port)
    return agg.aggregated_feature_set(name, topic, bench_cfg, max_offsets_per_trigger=1_000_000)


def plan_of(feature_set: fs.FeatureSet) -> AggregationPlan:
    return aggregation_plan(feature_set, tile_store.SCHEMA)


def produce(cfg: Config, topic: str, produced: Produced, stop_at: float) -> None:
    """Produce ``cfg.rate`` events a second until ``stop_at`` (monotonic), keyed by user."""
    from confluent_kafka import Producer

    producer = Producer({**kafka_common(cfg.bootstrap), "linger.ms": 0})
    rng = random.Random(cfg.seed)
    began = time.monotonic()
    index = 0
    while True:
        due = began + index / cfg.rate
        now = time.monotonic()
        if due >= stop_at:
            break
        if due > now:
            time.sleep(due - now)
        micros = time.time_ns() // 1_000
        key = index % cfg.keys
        amount = round(rng.uniform(1, 500), 2)
        stamp = datetime.fromtimestamp(micros / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        value = {
            "user_id": f"u{key}",
            "amount": amount,
            "seq": index,
            "ts": f"{stamp}.{micros % 1_000_000:06d}Z",
        }
        producer.produce(topic, json.dumps(value).encode(), key=f"u{key}".encode())
        producer.poll(0)
        produced.keys.append(key)
        produced.micros.append(micros)
        produced.amounts.append(amount)
        index += 1
    producer.flush(30)


def tiles_of(events: DataFrame, resolutions: Sequence[int]) -> DataFrame:
    """One row per event and resolution: key, resolution, tile start (s), amount."""
    seconds = F.unix_seconds("ts")
    tiles = F.array(
        *[
            F.struct(F.lit(r).alias("res"), (seconds - seconds % r).alias("tile"))
            for r in resolutions
        ]
    )
    return events.select("user_id", "amount", F.inline(tiles))


def partials(rows: DataFrame) -> DataFrame:
    """Each tile's sum, count and max of ``amount`` over ``rows``."""
    return rows.groupBy("user_id", "res", "tile").agg(
        F.sum("amount").alias("s"), F.count("amount").alias("c"), F.max("amount").alias("m")
    )


def _merge(state: list[Any] | None, amount: float) -> list[Any]:
    if state is None:
        return [amount, 1, amount]
    return [state[0] + amount, state[1] + 1, max(state[2], amount)]


class KeyTiles(StatefulProcessor):
    """A key's tiles in one ``ValueState`` (JSON), for the two state processors below."""

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.tiles = handle.getValueState("tiles", "tiles STRING")

    def fold(self, events: Iterable[tuple[Any, Any, Any]]) -> list[tuple[Any, ...]]:
        """Merge ``(resolution, tile, amount)`` triples into the key's tiles; returns
        each touched tile's ``(resolution, tile, sum, count, max)``."""
        stored = self.tiles.get()
        current: dict[str, list[Any]] = json.loads(stored[0]) if stored else {}
        touched: set[str] = set()
        for res, tile, amount in events:
            name = f"{res}:{tile}"
            current[name] = _merge(current.get(name), float(amount))
            touched.add(name)
        self.tiles.update((json.dumps(current),))
        out: list[tuple[Any, ...]] = []
        for name in touched:
            res, tile = name.split(":")
            out.append((int(res), int(tile), *current[name]))
        return out

    def close(self) -> None:
        pass


class RowTiles(KeyTiles):
    """Emits each touched tile's full state, through ``transformWithState`` (rows)."""

    def handleInputRows(  # noqa: N802 - PySpark's name
        self,
        key: Any,
        rows: Any,
        timerValues: Any,  # noqa: N803
    ) -> Iterator[Row]:
        for res, tile, s, c, m in self.fold((r.res, r.tile, r.amount) for r in rows):
            yield Row(user_id=key[0], res=res, tile=tile, s=s, c=c, m=m)


class PandasTiles(KeyTiles):
    """:class:`RowTiles` through ``transformWithStateInPandas``."""

    def handleInputRows(  # noqa: N802 - PySpark's name
        self,
        key: Any,
        rows: Any,
        timerValues: Any,  # noqa: N803
    ) -> Iterator[pd.DataFrame]:
        events = (
            event
            for frame in rows
            for event in zip(frame["res"], frame["tile"], frame["amount"], strict=True)
        )
        out = [(key[0], *tile) for tile in self.fold(events)]
        yield pd.DataFrame(out, columns=["user_id", "res", "tile", "s", "c", "m"])


def state_keys(plan: AggregationPlan) -> dict[str, str]:
    """The keys of the sum, count and max states in the tile JSON fs-dagster keeps."""
    return {spec.kind: spec.key for spec in plan.states}


def blind_writer(store: fs.CassandraOnlineStore, plan: AggregationPlan) -> Any:
    """A ``mapInPandas`` function writing rows of :data:`TILE_ROWS` (plus the batch id as
    ``version``) as whole tiles, in the states' JSON fs-dagster keeps, without reading."""
    names = state_keys(plan)
    table = plan.tile_table

    def write(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        written = 0
        for batch in batches:
            writes = [
                TileWrite(
                    key=(user,),
                    resolution=int(res),
                    start=int(tile),
                    version=int(version),
                    state=json.dumps(
                        {names["sum"]: float(s), names["count"]: int(c), names["max"]: float(m)},
                        separators=(",", ":"),
                    ),
                    ttl_seconds=plan.retention(int(res)),
                )
                for user, res, tile, s, c, m, version in batch.itertuples(index=False)
            ]
            written += store.write_tiles(table, writes)
        yield pd.DataFrame({"written": [written]})

    return pandas_map_function(
        write, "written LONG", ["user_id", "res", "tile", "s", "c", "m", "version"]
    )


def start_mode(
    spark: SparkSession,
    mode: str,
    cfg: Config,
    *,
    topic: str,
    name: str,
    store: fs.CassandraOnlineStore,
    workdir: Path,
) -> tuple[StreamingQuery, Callable[[], None], AggregationPlan]:
    """Start ``mode``'s query on ``topic``; returns it, how to stop it, and the plan
    whose tile table it writes."""
    fset = feature_set(name, topic, cfg)
    plan = plan_of(fset)
    if mode == "fs-dagster":
        ingestion = start_ingestion(
            spark,
            fset,
            storage_plan(fset, workdir),
            "online",
            online_store=store,
            trigger_interval=cfg.trigger,
        )
        return ingestion.query, lambda: stop_when_idle(ingestion), plan
    prepare_online_tiles(store, plan)
    events = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", cfg.bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        # As the feature set's source: a cached consumer must not re-create the topic
        # that the run deletes at its end.
        .option("kafka.allow.auto.create.topics", "false")
        .load()
        .select(F.from_json(F.col("value").cast("string"), agg.SCHEMA).alias("e"))
        .select("e.*")
    )
    rows = tiles_of(events, plan.resolutions)
    writer = blind_writer(store, plan)

    def write(batch: DataFrame, batch_id: int) -> None:
        versioned = batch.select(
            "user_id", "res", "tile", "s", "c", "m", F.lit(batch_id).cast("long").alias("version")
        )
        map_in_pandas(versioned, writer).agg(F.sum("written")).collect()

    def count(batch: DataFrame, _batch_id: int) -> None:
        partials(batch).count()

    stream: DataFrame
    sink: Callable[[DataFrame, int], None] = write
    if mode == "floor":
        stream, sink = rows, count
    elif mode == "jvm-state":
        stream = partials(rows)
    elif mode == "tws-rows":
        stream = rows.groupBy("user_id").transformWithState(RowTiles(), TILE_ROWS, "Update", "None")
    elif mode == "tws-pandas":
        stream = rows.groupBy("user_id").transformWithStateInPandas(
            PandasTiles(), TILE_ROWS, "Update", "None"
        )
    else:
        raise ValueError(f"unknown mode {mode!r}")
    query = (
        stream.writeStream.outputMode("update")
        .foreachBatch(sink)
        .option("checkpointLocation", str(workdir / "checkpoint"))
        .trigger(processingTime=f"{cfg.trigger} seconds")
        .start()
    )

    def stop() -> None:
        wait_idle(query)
        query.stop()

    return query, stop, plan


def oracle(produced: Produced, keys: set[int], resolutions: Sequence[int]) -> dict[Any, list[Any]]:
    """Per ``(user, resolution, tile start)`` of ``keys``: sum, count, max of amounts.

    Grouped with pandas, apart from the pipelines' code (the state processors' merge)."""
    events = pd.DataFrame(
        {"key": produced.keys, "seconds": [m // 1_000_000 for m in produced.micros]}
    ).assign(amount=produced.amounts)
    events = events[events["key"].isin(keys)]
    tiles: dict[Any, list[Any]] = {}
    for res in resolutions:
        grouped = (
            events.assign(tile=events["seconds"] // res * res)
            .groupby(["key", "tile"])["amount"]
            .agg(["sum", "count", "max"])
        )
        for key, tile, s, c, m in grouped.reset_index().itertuples(index=False):
            tiles[(f"u{key}", res, int(tile))] = [float(s), int(c), float(m)]
    return tiles


def check(
    store: fs.CassandraOnlineStore, plan: AggregationPlan, produced: Produced, cfg: Config
) -> dict[str, Any]:
    """The stored tiles of a sample of keys against :func:`oracle`."""
    rng = random.Random(cfg.seed + 1)
    present = sorted(set(produced.keys))
    sample = set(rng.sample(present, min(cfg.check_keys, len(present))))
    expected = oracle(produced, sample, plan.resolutions)
    seconds = [m // 1_000_000 for m in produced.micros]
    low, high = min(seconds), max(seconds)
    ranges = [(r, low - low % r, high) for r in plan.resolutions]
    keys = [(f"u{k}",) for k in sorted(sample)]
    names = state_keys(plan)
    stored: dict[Any, list[Any]] = {}
    for (user,), tiles in zip(
        keys, store.read_tiles_for_keys(plan.tile_table, keys, ranges), strict=True
    ):
        for tile in tiles:
            state = json.loads(tile.state)
            stored[(user, tile.resolution, tile.start)] = [
                state.get(names["sum"]),
                state.get(names["count"]),
                state.get(names["max"]),
            ]
    equal = wrong = 0
    examples: list[dict[str, Any]] = []
    for name, (s, c, m) in expected.items():
        got = stored.get(name)
        ok = (
            got is not None
            and math.isclose(got[0], s, rel_tol=1e-9, abs_tol=1e-9)
            and got[1] == c
            and got[2] == m
        )
        equal += ok
        if not ok:
            wrong += 1
            if len(examples) < 5:
                examples.append({"tile": name, "expected": [s, c, m], "stored": got})
    extra = sorted(set(stored) - set(expected))
    return {
        "keys": len(sample),
        "tiles_expected": len(expected),
        "tiles_equal": equal,
        "tiles_wrong_or_missing": wrong,
        "tiles_extra": len(extra),
        "examples": examples,
    }


def run_mode(
    spark: SparkSession,
    mode: str,
    cfg: Config,
    *,
    store: fs.CassandraOnlineStore,
    memory: PeakMemory,
    run_id: str,
) -> dict[str, Any]:
    """Run one pipeline on a topic of its own; its batch times, memory and check."""
    topic = f"fs-bench-{run_id}-{mode}"
    name = f"tilestate-{run_id}-{mode}"
    workdir = Path(tempfile.mkdtemp(prefix=f"fs-bench-tile-state-{mode}-"))
    create_topic(cfg.bootstrap, topic, cfg.partitions)
    # The stateful operators keep their state in as many partitions as the shuffle has
    # (fixed by the checkpoint); two cores run two tasks at once. fs-dagster and the floor
    # keep the session's setting (fs-dagster coalesces its batch to one wave itself).
    previous = spark.conf.get("spark.sql.shuffle.partitions") or "4"
    if mode in ("floor", "jvm-state", "tws-rows", "tws-pandas"):
        spark.conf.set("spark.sql.shuffle.partitions", str(spark.sparkContext.defaultParallelism))
    produced = Produced()
    try:
        query, stop, plan = start_mode(
            spark, mode, cfg, topic=topic, name=name, store=store, workdir=workdir
        )
        memory.reset()
        load_before = os.getloadavg()[0]
        began = time.monotonic()
        measure_from = time.time() + cfg.warmup
        producer = threading.Thread(
            target=produce,
            args=(cfg, topic, produced, began + cfg.warmup + cfg.seconds),
            name="bench-producer",
            daemon=True,
        )
        producer.start()
        producer.join()
        read = 0
        deadline = time.monotonic() + cfg.drain_timeout
        while time.monotonic() < deadline:
            if not query.isActive:
                raise RuntimeError(f"{mode}: the query stopped: {query.exception()}")
            progress = query.recentProgress
            read = sum(int(p["numInputRows"]) for p in progress)
            if read >= len(produced.keys) and not query.status["isTriggerActive"]:
                break
            time.sleep(0.2)
        drained = time.monotonic() - began - cfg.warmup - cfg.seconds
        memory.sample()
        progress = list(query.recentProgress)
        stop()
        batches = [
            p
            for p in progress
            if p["numInputRows"] > 0
            and datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp()
            >= measure_from
        ]
        durations = [float(p["durationMs"].get("addBatch", 0)) / 1000 for p in batches]
        rows = [int(p["numInputRows"]) for p in batches]
        result: dict[str, Any] = {
            "mode": mode,
            "events": len(produced.keys),
            "events_read": read,
            "batches": len(batches),
            "mean_batch_rows": sum(rows) / len(rows) if rows else None,
            "batch_seconds_p50": percentile(durations, 50),
            "batch_seconds_p90": percentile(durations, 90),
            "batch_seconds_mean": sum(durations) / len(durations) if durations else None,
            "drain_seconds": drained,
            "peak_memory_bytes": memory.peak_bytes,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
        }
        if read < len(produced.keys):
            result["check"] = {"error": f"read {read} of {len(produced.keys)} events"}
        else:
            result["check"] = check(store, plan, produced, cfg) if mode != "floor" else None
        return result
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
        delete_topics(cfg.bootstrap, [topic])


def run(cfg: Config) -> dict[str, Any]:
    """Run every mode asked for, in order, in one Spark session; returns the results."""
    from fs_dagster.engine.spark_session import SparkSettings, create_spark_session

    check_services(cfg.bootstrap, HOST, cfg.cassandra_port)
    run_id = uuid.uuid4().hex[:8]
    keyspace = f"bench_tile_state_{run_id}"
    spark = create_spark_session(
        SparkSettings(
            master=cfg.master,
            app_name="fs-dagster-bench-tile-state",
            jars=spark_jars(),
            conf={
                "spark.sql.streaming.stateStore.providerClass": (
                    "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
                ),
                "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
                # Every batch's progress is read back: keep more than a run has.
                "spark.sql.streaming.numRecentProgressUpdates": "2000",
            },
        )
    )
    store = fs.CassandraOnlineStore(hosts=[HOST], port=cfg.cassandra_port, keyspace=keyspace)
    memory = PeakMemory().start()
    results: dict[str, Any] = {
        "bench": "tile_state",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "environment": {
            "python": platform.python_version(),
            "spark": spark.version,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
        "warm_pass": [],
        "runs": [],
        "modes": [],
    }
    try:
        store.ensure_keyspace()
        if cfg.warm_pass > 0:
            # The first pipeline would otherwise run on a cold JVM (measured: the floor
            # took 0.26 s a batch first and 0.11 s last in the same run).
            warm = replace(cfg, seconds=cfg.warm_pass, warmup=0.0)
            for mode in cfg.modes:
                log.info("%s: warming up for %g s, not measured", mode, cfg.warm_pass)
                results["warm_pass"].append(
                    run_mode(spark, mode, warm, store=store, memory=memory, run_id=f"{run_id}w")
                )
        for number in range(cfg.rounds):
            # Every other round in reverse order: a drift of the machine weighs on all.
            order = cfg.modes if number % 2 == 0 else cfg.modes[::-1]
            for mode in order:
                log.info(
                    "round %d, %s: %g ev/s for %g + %g s",
                    number + 1,
                    mode,
                    cfg.rate,
                    cfg.warmup,
                    cfg.seconds,
                )
                run = run_mode(
                    spark, mode, cfg, store=store, memory=memory, run_id=f"{run_id}r{number}"
                )
                results["runs"].append({"round": number + 1, **run})
    finally:
        memory.stop()
        store.close()
        drop_keyspace(HOST, cfg.cassandra_port, keyspace)
        spark.stop()
    results["modes"] = summarize(results["runs"], cfg.modes)
    return results


def summarize(runs: Sequence[dict[str, Any]], modes: Sequence[str]) -> list[dict[str, Any]]:
    """Per pipeline over the rounds: the median of each round's batch times, the rows, the
    highest peak memory, the checks added up; and the p50 as a multiple of the floor's."""
    summary: list[dict[str, Any]] = []
    for mode in modes:
        own = [r for r in runs if r["mode"] == mode]
        checks = [r["check"] for r in own if r["check"] is not None]
        errors = [c["error"] for c in checks if "error" in c]
        counted = [c for c in checks if "error" not in c]
        rows = [r["mean_batch_rows"] for r in own if r["mean_batch_rows"] is not None]
        summary.append(
            {
                "mode": mode,
                "rounds": len(own),
                "batches": sum(r["batches"] for r in own),
                "mean_batch_rows": sum(rows) / len(rows) if rows else None,
                **{
                    name: _median([r[name] for r in own])
                    for name in ("batch_seconds_p50", "batch_seconds_p90", "batch_seconds_mean")
                },
                "round_batch_seconds_p50": [r["batch_seconds_p50"] for r in own],
                "peak_memory_bytes": max((r["peak_memory_bytes"] for r in own), default=None),
                "check": None
                if not checks
                else {
                    "errors": errors,
                    **{
                        name: sum(c[name] for c in counted)
                        for name in (
                            "tiles_expected",
                            "tiles_equal",
                            "tiles_wrong_or_missing",
                            "tiles_extra",
                        )
                    },
                },
            }
        )
    floor = next((m for m in summary if m["mode"] == "floor"), None)
    for m in summary:
        m["ratio_to_floor_p50"] = ratio(
            m["batch_seconds_p50"], floor["batch_seconds_p50"] if floor else None
        )
    return summary


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def format_results(results: dict[str, Any]) -> str:
    rows = []
    for m in results["modes"]:
        checked = m["check"]
        if checked is None:
            verdict = "-"
        elif checked["errors"]:
            verdict = "; ".join(checked["errors"])
        else:
            verdict = f"{checked['tiles_equal']:,} of {checked['tiles_expected']:,}"
            if checked["tiles_extra"]:
                verdict += f", {checked['tiles_extra']} extra"
        rows.append(
            [
                m["mode"],
                fmt(m["mean_batch_rows"], 0),
                str(m["batches"]),
                fmt(m["batch_seconds_p50"], 3),
                fmt(m["batch_seconds_p90"], 3),
                fmt(m["batch_seconds_mean"], 3),
                fmt(m["ratio_to_floor_p50"]),
                fmt(m["peak_memory_bytes"] / 2**30),
                verdict,
            ]
        )
    cfg = results["config"]
    table = text_table(
        [
            "pipeline",
            "rows/batch",
            "batches",
            "batch p50 s",
            "p90 s",
            "mean s",
            "x floor p50",
            "peak GiB",
            "tiles equal to the oracle",
        ],
        rows,
    )
    return (
        f"{cfg['rate']:g} events/s, trigger {cfg['trigger']:g} s, {cfg['keys']:,} keys, "
        f"median of {cfg['rounds']} rounds of {cfg['seconds']:g} s, "
        f"{results['environment']['cpus']} cpus, Spark {results['environment']['spark']}\n\n"
        f"{table}\n\n"
        "floor: partials only, nothing kept or written. jvm-state, tws-*: state in Spark, "
        "whole tiles written without a read. fs-dagster: partials, then read-merge-write."
    )


def parse_args(argv: Sequence[str] | None) -> Config:
    d = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=d.rate, help="events per second")
    parser.add_argument("--seconds", type=float, default=d.seconds, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=d.warmup, help="unmeasured seconds")
    parser.add_argument("--trigger", type=float, default=d.trigger, help="trigger, seconds")
    parser.add_argument(
        "--warm-pass", type=float, default=d.warm_pass, help="unmeasured seconds per pipeline first"
    )
    parser.add_argument("--rounds", type=int, default=d.rounds, help="measured rounds")
    parser.add_argument("--keys", type=int, default=d.keys, help="distinct user_id values")
    parser.add_argument("--partitions", type=int, default=d.partitions, help="topic partitions")
    parser.add_argument("--modes", default=",".join(d.modes), help=f"of {', '.join(MODES)}")
    parser.add_argument("--check-keys", type=int, default=d.check_keys)
    parser.add_argument("--drain-timeout", type=float, default=d.drain_timeout)
    parser.add_argument("--bootstrap", default=d.bootstrap)
    parser.add_argument("--cassandra-port", type=int, default=d.cassandra_port)
    parser.add_argument("--master", default=d.master)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--results-dir", type=Path, default=d.results_dir)
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    if min(args.rate, args.seconds, args.trigger, args.keys, args.check_keys, args.rounds) <= 0:
        parser.error(
            "--rate, --seconds, --trigger, --keys, --check-keys and --rounds must be positive"
        )
    return Config(**{**vars(args), "modes": modes})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the summary, write the JSON; return the exit status."""
    _cfg, results = run_bench(
        "tile_state",
        argv,
        logger=log,
        parse_args=parse_args,
        run=run,
        format_results=format_results,
    )
    failed = sorted(
        {
            r["mode"]
            for r in [*results["warm_pass"], *results["runs"]]
            if r["check"] is not None
            and (
                "error" in r["check"]
                or r["check"]["tiles_wrong_or_missing"]
                or r["check"]["tiles_extra"]
            )
        }
    )
    if failed:
        log.error("check failed for %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
