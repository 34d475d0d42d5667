"""fs-dagster against its peers, on the same data in one run, in one table.

Peers run in their own virtual environments (:mod:`bench.peers.envs`, created on first
use under ``bench/.peers/``): Feast 0.67 (SQLite online store; ``file`` and ``duckdb``
offline stores), a raw DuckDB ``ASOF LEFT JOIN``, and Quix Streams. Scenarios, each
checked for correctness in the same run:

- ``pit``: point-in-time, row-level: a population joined with feature rows (latest row
  of the key at or before the population row's time), to pandas;
- ``online``: online reads of 1 and 100 keys, p50/p99: fs-dagster's SQLite row table
  against Feast's SQLite online store, over the same feature rows;
- ``agg``: aggregated ingestion Kafka -> store (3 aggregates x 5 windows, 10,000 keys):
  fs-dagster into Cassandra against Quix Streams tumbling windows into Kafka, events/s;
  then fs-dagster's aggregated online reads (15 features, Cassandra), alone;
- ``fresh``: row-level ingestion events/s, and freshness p50/p99 at 500 ev/s (produce ->
  readable by ``get_online_features``) of a row-level set and of an aggregated one (sum
  and count of amount, max of seq over 5 windows; the prober reads max seq over 7 days),
  fs-dagster alone.

``bench/README.md`` ("compare") says what each figure means and how the ratio reads.

Example:
    .venv/bin/python -m bench.compare --scale small
    .venv/bin/python -m bench.compare --scale full --only pit
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import fs_dagster as fs
from bench import aggregations as agg
from bench import online_ingestion as oi
from bench.common import (
    REPO,
    BareTileSlice,
    PeakMemory,
    check_services,
    create_topic,
    delete_topics,
    drop_keyspace,
    fmt,
    kafka_common,
    measured,
    percentile,
    spark_jars,
    storage_plan,
    text_table,
    write_results,
)
from bench.peers.envs import ensure_env, installed_versions, run_peer
from fs_dagster.engine.backfill import run_range
from fs_dagster.engine.duckdb_retrieval import OFFLINE_ENGINES, OfflineEngine

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("bench.compare")

HOST = "127.0.0.1"
SCENARIOS = ("pit", "online", "agg", "aggpit", "aggdense", "fresh")
#: Feature rows' event times are in [START, END): 30 whole days, as backfill ranges are.
START = datetime(2026, 1, 30, tzinfo=UTC)
END = START + timedelta(days=30)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROS = 1_000_000
GIB = 2**30
REL_TOL = 1e-9


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Scale:
    """Sizes of one ``--scale``: ``pit``/``online`` (population, feature rows, keys,
    requests), ``agg`` (events, keys, keys checked), ``fresh`` (events, seconds)."""

    population: int
    feature_rows: int
    keys: int
    agg_events: int
    agg_keys: int
    fresh_events: int
    fresh_seconds: float
    fresh_warmup: float
    # A p99 of 300 requests is their third slowest: it moved by half between runs.
    requests: int = 3_000
    read_warmup: int = 300
    batch_keys: int = 100
    check_keys: int = 100


SCALES = {
    # A smoke test of the harness itself (a minute or two); its figures mean little.
    "tiny": Scale(
        population=5_000,
        feature_rows=50_000,
        keys=5_000,
        agg_events=3_000,
        agg_keys=1_000,
        fresh_events=2_000,
        fresh_seconds=10,
        fresh_warmup=3,
        requests=50,
        read_warmup=5,
        check_keys=30,
    ),
    "small": Scale(
        population=100_000,
        feature_rows=1_000_000,
        keys=100_000,
        agg_events=30_000,
        agg_keys=10_000,
        fresh_events=20_000,
        fresh_seconds=20,
        fresh_warmup=5,
    ),
    "full": Scale(
        population=1_000_000,
        feature_rows=10_000_000,
        keys=1_000_000,
        agg_events=300_000,
        agg_keys=10_000,
        fresh_events=200_000,
        fresh_seconds=60,
        fresh_warmup=10,
    ),
}


@dataclass(frozen=True)
class Config:
    """What to run; built from the command line (see ``--help``)."""

    scale: str = "small"
    only: tuple[str, ...] = SCENARIOS
    bootstrap: str = f"{HOST}:9092"
    cassandra_port: int = 9042
    master: str = "local[2]"
    driver_memory: str = "6g"
    root: Path = Path(tempfile.gettempdir())
    keep: bool = False
    seed: int = 5
    label: str = ""
    results_dir: Path = REPO / "bench" / "results"
    offline_engine: OfflineEngine = "auto"
    #: ``fresh``: the prober's pause after each read of the store (see
    #: ``bench.online_ingestion.BenchConfig.poll_interval``).
    poll_interval: float = oi.BenchConfig.poll_interval

    @property
    def sizes(self) -> Scale:
        return SCALES[self.scale]


# --------------------------------------------------------------------------- data


@dataclass
class RowData:
    """The feature rows and the population of the row-level scenarios, as arrays.

    Key ``i`` is ``"u<i>"``. Feature rows fall at even microseconds, one per equal slice
    of [START, END) (so no key has two rows at one time); population times at odd ones
    (so no population time equals a feature time and ``<`` versus ``<=`` cannot matter).
    """

    key: np.ndarray
    micros: np.ndarray
    amount: np.ndarray
    remote: np.ndarray
    pop_key: np.ndarray
    pop_micros: np.ndarray


def generate_rows(scale: Scale, seed: int) -> RowData:
    """Seeded feature rows (keys, amounts to the cent, 30% remote) and population."""
    rng = np.random.default_rng(seed)
    n = scale.feature_rows
    span = _micros(END) - _micros(START)
    step = (span // n) // 2 * 2
    micros = _micros(START) + np.arange(n, dtype=np.int64) * step
    micros += rng.integers(0, step // 2, size=n) * 2
    pop_micros = _micros(START) + rng.integers(0, span // 2, size=scale.population) * 2 + 1
    return RowData(
        key=rng.integers(0, scale.keys, size=n),
        micros=micros,
        amount=np.round(rng.uniform(0, 500, size=n), 2),
        remote=rng.random(n) < 0.3,
        pop_key=rng.integers(0, scale.keys, size=scale.population),
        pop_micros=pop_micros,
    )


def _user_ids(keys: np.ndarray) -> pa.Array:
    return pa.array(np.char.add("u", keys.astype(str)))


def write_parquet(data: RowData, features: Path, population: Path) -> None:
    """``features``: ``user_id, amount, is_remote, event_time``; ``population``:
    ``row_id, user_id, event_timestamp`` (timestamps in microseconds, UTC)."""
    timestamp = pa.timestamp("us", tz="UTC")
    features.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "user_id": _user_ids(data.key),
                "amount": pa.array(data.amount),
                "is_remote": pa.array(data.remote),
                "event_time": pa.array(data.micros, type=timestamp),
            }
        ),
        features / "part-0.parquet",
        row_group_size=1_000_000,
    )
    pq.write_table(
        pa.table(
            {
                "row_id": pa.array(np.arange(len(data.pop_key), dtype=np.int64)),
                "user_id": _user_ids(data.pop_key),
                "event_timestamp": pa.array(data.pop_micros, type=timestamp),
            }
        ),
        population,
    )


def oracle_point_in_time(data: RowData) -> pd.DataFrame:
    """``row_id, amount, is_remote`` of the latest feature row at or before each
    population row (nulls when none): pandas ``merge_asof``, independent of every side."""
    population = pd.DataFrame(
        {"row_id": np.arange(len(data.pop_key)), "key": data.pop_key, "t": data.pop_micros}
    ).sort_values("t")
    rows = pd.DataFrame(
        {"key": data.key, "t": data.micros, "amount": data.amount, "is_remote": data.remote}
    ).sort_values("t")
    joined = pd.merge_asof(population, rows, on="t", by="key", direction="backward")
    return normalized(joined)


def oracle_latest(data: RowData) -> dict[str, tuple[float, bool]]:
    """The latest row's ``amount, is_remote`` of every key that has rows."""
    order = np.argsort(data.micros, kind="stable")
    frame = pd.DataFrame({"key": data.key[order], "index": order}).drop_duplicates(
        "key", keep="last"
    )
    return {
        f"u{k}": (float(data.amount[i]), bool(data.remote[i]))
        for k, i in zip(frame["key"], frame["index"], strict=True)
    }


# --------------------------------------------------------------------------- checks


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """``row_id`` (int64), ``amount`` (float, NaN for none), ``is_remote`` (nullable bool),
    sorted by ``row_id``: the shape every side's result is compared in."""
    remote = frame["is_remote"].astype("object").where(frame["is_remote"].notna(), None)
    return (
        pd.DataFrame(
            {
                "row_id": frame["row_id"].astype("int64"),
                "amount": pd.to_numeric(frame["amount"], errors="coerce").astype("float64"),
                "is_remote": remote.astype("boolean"),
            }
        )
        .sort_values("row_id", kind="stable")
        .reset_index(drop=True)
    )


def compare_rows(result: pd.DataFrame, oracle: pd.DataFrame) -> dict[str, Any]:
    """Row counts and every value of ``result`` against the oracle, by ``row_id``.

    ``missing_rows`` are population rows absent from the result, of which
    ``missing_unmatched`` have no feature row at or before their time (the oracle's
    nulls): a store that drops those returns only the rows it could match.
    """
    result = normalized(result)
    duplicates = int(result["row_id"].duplicated().sum())
    merged = oracle.merge(
        result.drop_duplicates("row_id"),
        on="row_id",
        how="left",
        suffixes=("", "_got"),
        indicator=True,
    )
    present = merged["_merge"] == "both"
    missing = merged[~present]
    both = merged[present]
    amount_equal = (both["amount"].isna() & both["amount_got"].isna()) | np.isclose(
        both["amount"].fillna(np.inf), both["amount_got"].fillna(-np.inf), rtol=REL_TOL, atol=0
    )
    remote_equal = (both["is_remote"].isna() & both["is_remote_got"].isna()) | (
        both["is_remote"] == both["is_remote_got"]
    ).fillna(False)
    bad = both[~(amount_equal & remote_equal)]
    return {
        "population_rows": len(oracle),
        "rows": len(result),
        "duplicate_rows": duplicates,
        "missing_rows": len(missing),
        "missing_unmatched": int(missing["amount"].isna().sum()),
        "values_compared": 2 * len(both),
        "rows_differing": len(bad),
        "examples": bad.head(5).astype(str).to_dict("records"),
        "ok": duplicates == 0 and len(missing) == 0 and len(bad) == 0,
    }


def _same(expected: Any, got: Any) -> bool:
    def plain(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if value is pd.NA:
            return None
        return value

    expected, got = plain(expected), plain(got)
    if expected is None or got is None:
        return expected is None and got is None
    if isinstance(expected, bool) or isinstance(got, bool | np.bool_):
        return bool(expected) == bool(got)
    return math.isclose(float(expected), float(got), rel_tol=REL_TOL)


# --------------------------------------------------------------------------- fs-dagster side


def row_feature_set(name: str, features: Path, stream_dir: Path) -> fs.FeatureSet:
    """Row-level set passing ``amount, is_remote`` through, backfilled from the Parquet
    (its stream, a file source, stays empty), no TTL."""
    batch = fs.BatchSource(
        name=f"{name}-rows", path=str(features), format="parquet", timestamp_column="event_time"
    )
    stream = fs.FileSource(
        name=f"{name}-stream",
        path=str(stream_dir),
        schema="user_id STRING, amount DOUBLE, is_remote BOOLEAN, ts TIMESTAMP",
    )

    def transformation() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(
            f"SELECT user_id, amount, is_remote, ts FROM {stream.name.replace('-', '_')}"
        )

    backfill = fs.streaming.backfill(
        start_date=START,
        end_date=END,
        data_sources=[fs.BackfillBatchDataSourceSpec(data_source_name=batch.name)],
        backfill_transformation=fs.SparkSqlTransformation(
            "SELECT user_id, amount, is_remote, event_time AS ts "
            f"FROM {batch.name.replace('-', '_')}"
        ),
    )
    return fs.streaming.feature_set(
        name=name, key="user_id", data_sources=[stream], timestamp_column_name="ts"
    )(backfill(transformation))


def latency(times: Sequence[float]) -> dict[str, Any]:
    return {
        "requests": len(times),
        "p50_ms": 1000 * (percentile(times, 50) or 0),
        "p99_ms": 1000 * (percentile(times, 99) or 0),
    }


# --------------------------------------------------------------------------- scenarios


@dataclass
class Context:
    """What the scenarios share within one run."""

    cfg: Config
    workdir: Path
    memory: PeakMemory
    spark: SparkSession
    run_id: str
    rows: RowData | None = None
    features: Path | None = None
    population: Path | None = None
    row_set: fs.FeatureSet | None = None
    row_store: fs.FeatureStore | None = None


def prepare_rows(ctx: Context) -> dict[str, Any]:
    """Generate the row-level data and load it into fs-dagster (offline rows and the
    SQLite online table, by one backfill run). Not compared: setup."""
    scale = ctx.cfg.sizes
    ctx.rows = generate_rows(scale, ctx.cfg.seed)
    ctx.features = ctx.workdir / "features"
    ctx.population = ctx.workdir / "population.parquet"
    write_parquet(ctx.rows, ctx.features, ctx.population)
    name = f"cmp-{ctx.run_id}"
    feature_set = row_feature_set(name, ctx.features, ctx.workdir / "stream")
    ctx.row_set = feature_set
    online = fs.SqliteOnlineStore(ctx.workdir / "online.db")
    plan = storage_plan(feature_set, ctx.workdir)
    log.info("fs-dagster: loading %d feature rows (backfill run)", scale.feature_rows)
    seconds, report, machine = measured(
        ctx.memory,
        lambda: run_range(ctx.spark, feature_set, plan, START, END, online_store=online),
    )
    ctx.row_store = fs.FeatureStore(
        online_store=online,
        offline_root=str(ctx.workdir / "offline"),
        checkpoint_root=str(ctx.workdir / "checkpoints"),
        feature_sets=[feature_set],
        spark=ctx.spark,
        offline_engine=ctx.cfg.offline_engine,
    )
    return {"seconds": seconds, "rows_in": report.rows_in, **machine}


def scenario_pit(ctx: Context) -> dict[str, Any]:
    """Point-in-time, row-level, to pandas: fs-dagster, Feast duckdb and file, raw DuckDB."""
    assert ctx.rows is not None and ctx.features is not None and ctx.population is not None
    assert ctx.row_store is not None and ctx.row_set is not None
    log.info("pit: oracle (pandas merge_asof)")
    oracle = oracle_point_in_time(ctx.rows)
    population = pd.read_parquet(ctx.population)
    store, feature_set = ctx.row_store, ctx.row_set
    log.info("pit: fs-dagster get_offline_features, %d rows", len(population))
    seconds, result, machine = measured(
        ctx.memory,
        lambda: store.get_offline_features(population, feature_set, "event_timestamp"),
    )
    sides: dict[str, Any] = {
        "fs-dagster": {"seconds": seconds, **machine, "check": compare_rows(result, oracle)}
    }
    del result
    peers = {
        "feast-duckdb": ("feast_peer.py", ["offline", "--store", "duckdb"]),
        "feast-file": ("feast_peer.py", ["offline", "--store", "file"]),
        "duckdb-asof": ("duckdb_peer.py", []),
    }
    for side, (script, command) in peers.items():
        out = ctx.workdir / f"{side}.parquet"
        args = [*command, "--features", str(ctx.features / "part-0.parquet")]
        args += ["--population", str(ctx.population), "--out", str(out)]
        if script == "feast_peer.py":
            args += ["--repo", str(ctx.workdir / f"repo-{side}")]
        load_before = os.getloadavg()[0]
        run = run_peer("feast", script, args)
        sides[side] = {
            **run.result,
            "load_average_before": load_before,
            "process_seconds": run.process_seconds,
            "peak_tree_bytes": run.peak_tree_bytes,
            "check": compare_rows(pd.read_parquet(out), oracle),
        }
        out.unlink()
    matched = int(oracle["amount"].notna().sum())
    keyless = int((~np.isin(ctx.rows.pop_key, np.unique(ctx.rows.key))).sum())
    return {
        "population_rows": len(population),
        "feature_rows": len(ctx.rows.key),
        "keys": ctx.cfg.sizes.keys,
        "oracle_matched_rows": matched,
        "oracle_unmatched_rows": len(oracle) - matched,
        "oracle_rows_of_keys_without_features": keyless,
        "sides": sides,
    }


def in_own_process(
    function: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any]
) -> dict[str, Any]:
    """``function(spec)`` in a fresh (spawned) process; its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(function, spec).result()


def reads_in_own_process(
    reads: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any]
) -> dict[str, Any]:
    """``reads(spec)`` in a fresh process, as a peer's reads run: the bench's process runs
    Spark, the memory sampler's thread and the other scenarios' leftovers, whose turns at
    the interpreter lock land in a read's latency (1-key SQLite p99 0.29 ms there against
    0.10-0.12 ms alone, 2026-12-03). Each request size's figures get the load averages
    around the run."""
    load_before = os.getloadavg()[0]
    results = in_own_process(reads, spec)
    for size in results.values():
        size["load_average_before"] = load_before
        size["load_average_after"] = os.getloadavg()[0]
    return results


def row_level_reads(spec: dict[str, Any]) -> dict[str, Any]:
    """fs-dagster's side of ``online``, run in a process of its own: the requests of
    ``spec["requests"]`` against the SQLite table, latencies and the first values read."""
    feature_set = row_feature_set(spec["name"], Path(spec["features"]), Path(spec["stream_dir"]))
    store = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(spec["online_db"]),
        offline_root=spec["offline_root"],
        feature_sets=[feature_set],
    )
    requests = json.loads(Path(spec["requests"]).read_text())
    warmup = int(requests["warmup"])
    reads: dict[str, Any] = {}
    for size, batches in requests.items():
        if size == "warmup":
            continue
        times: list[float] = []
        values: dict[str, list[Any]] = {}
        for index, batch in enumerate(batches):
            began = time.perf_counter()
            frame = store.get_online_features(feature_set, batch)
            elapsed = time.perf_counter() - began
            if index < warmup:
                continue
            times.append(elapsed)
            if index < warmup + 10:
                for row in frame.itertuples(index=False):
                    values[str(row.user_id)] = [row.amount, row.is_remote]
        reads[size] = {**latency(times), "values": values}
    return reads


def scenario_online(ctx: Context) -> dict[str, Any]:
    """Online reads of 1 and 100 keys: fs-dagster's SQLite table against Feast's."""
    assert ctx.rows is not None and ctx.features is not None
    assert ctx.row_store is not None and ctx.row_set is not None
    scale = ctx.cfg.sizes
    rng = random.Random(ctx.cfg.seed + 1)
    keys = [f"u{i}" for i in range(scale.keys)]
    total = scale.read_warmup + scale.requests
    requests: dict[str, Any] = {
        "warmup": scale.read_warmup,
        "1": [rng.sample(keys, 1) for _ in range(total)],
        str(scale.batch_keys): [rng.sample(keys, scale.batch_keys) for _ in range(total)],
    }
    requests_path = ctx.workdir / "requests.json"
    requests_path.write_text(json.dumps(requests))
    latest = oracle_latest(ctx.rows)
    ctx.memory.reset()
    spec = {
        "online_db": str(ctx.workdir / "online.db"),
        "name": ctx.row_set.name,
        "features": str(ctx.features),
        "stream_dir": str(ctx.workdir / "stream"),
        "offline_root": str(ctx.workdir / "offline"),
        "requests": str(requests_path),
    }
    fs_reads = reads_in_own_process(row_level_reads, spec)
    ctx.memory.sample()
    for size in fs_reads.values():
        size["peak_memory_bytes"] = ctx.memory.peak_bytes
    load_before = os.getloadavg()[0]
    feast = run_peer(
        "feast",
        "feast_peer.py",
        [
            "online",
            "--features",
            str(ctx.features / "part-0.parquet"),
            "--repo",
            str(ctx.workdir / "repo-online"),
            "--requests",
            str(requests_path),
        ],
    )
    feast_reads = feast.result["reads"]
    checks: dict[str, Any] = {}
    for side, reads in (("fs-dagster", fs_reads), ("feast-sqlite", feast_reads)):
        compared = equal = 0
        examples: list[dict[str, Any]] = []
        for size in reads:
            for key, (amount, remote) in reads[size]["values"].items():
                want = latest.get(key, (None, None))
                compared += 2
                ok = [_same(want[0], amount), _same(want[1], remote)]
                equal += sum(ok)
                if not all(ok) and len(examples) < 5:
                    examples.append({"key": key, "expected": want, "got": [amount, remote]})
        checks[side] = {"values_compared": compared, "values_equal": equal, "examples": examples}
    for reads in (fs_reads, feast_reads):
        for size in reads:
            reads[size]["values_checked_keys"] = len(reads[size].pop("values"))
    return {
        "keys": scale.keys,
        "fs-dagster": fs_reads,
        "feast-sqlite": {
            **feast.result,
            "load_average_before": load_before,
            "peak_tree_bytes": feast.peak_tree_bytes,
        },
        "check": checks,
    }


def agg_config(cfg: Config) -> agg.BenchConfig:
    """``bench.aggregations``' settings for the ``agg`` and ``aggpit`` events: uniform
    keys, batches of an eighth of the events."""
    scale = cfg.sizes
    return agg.BenchConfig(
        events=scale.agg_events,
        keys=scale.agg_keys,
        hot_keys=0,
        hot_share=0.0,
        max_offsets_per_trigger=max(scale.agg_events // 8, 1),
        bootstrap=cfg.bootstrap,
        cassandra_port=cfg.cassandra_port,
        seed=cfg.seed,
    )


def scenario_agg(ctx: Context) -> dict[str, Any]:
    """Aggregated ingestion, fs-dagster (Cassandra) against Quix Streams (Kafka); then
    fs-dagster's aggregated online reads alone; then the window values checked."""
    cfg, scale = ctx.cfg, ctx.cfg.sizes
    acfg = agg_config(cfg)
    keyspace = f"fs_bench_cmp_{ctx.run_id}"
    store = fs.CassandraOnlineStore(hosts=[HOST], port=cfg.cassandra_port, keyspace=keyspace)
    topic = f"fs-bench-{ctx.run_id}-agg"
    out_topic = f"{topic}-quix-out"
    group = f"fs-bench-{ctx.run_id}-quix"
    topics = [topic, out_topic]
    try:
        store.ensure_keyspace()
        create_topic(cfg.bootstrap, topic, acfg.partitions)
        create_topic(cfg.bootstrap, out_topic, acfg.partitions)
        # Event times end now, as a live stream's do: the reads below at the newest event
        # are then recent reads, one round trip each. Ending at the fixed END_TIME, months
        # ago, every read was one at a past time, which also reads the tile table's
        # history (its creation and seeding) and took two requests.
        now_seconds = int(time.time())
        events = agg.generate_events(
            acfg.events, acfg.keys, acfg.span_micros, acfg.seed, end_micros=now_seconds * 10**6
        )
        log.info("agg: preloading %d events", acfg.events)
        agg.preload(cfg.bootstrap, topic, events)
        feature_set = agg.aggregated_feature_set(
            f"cmpagg-{ctx.run_id}",
            topic,
            acfg,
            max_offsets_per_trigger=acfg.max_offsets_per_trigger,
        )
        outputs = agg.outputs_of(feature_set)
        # A throwaway ingestion of the same topic into another tile table first: the
        # JVM compiles its Kafka, JSON and aggregation paths and the Python workers
        # start, as in the fresh scenario's warm-up (a cold JVM's first batch took
        # 7.5-8.2 s of a 19-20 s run). Quix Streams has no such start.
        log.info("agg: fs-dagster warm-up (not measured)")
        warm_up = agg.fs_ingestion(
            ctx.spark,
            acfg,
            store,
            agg.aggregated_feature_set(
                f"cmpagg-{ctx.run_id}-warm",
                topic,
                acfg,
                max_offsets_per_trigger=acfg.max_offsets_per_trigger,
            ),
            events=acfg.events,
            workdir=ctx.workdir / "agg-warm-up",
            timeout=acfg.run_timeout,
        )
        log.info("agg: fs-dagster ingestion")
        ctx.memory.reset()
        fs_row = agg.fs_ingestion(
            ctx.spark,
            acfg,
            store,
            feature_set,
            events=acfg.events,
            workdir=ctx.workdir / "agg",
            timeout=acfg.run_timeout,
        )
        ctx.memory.sample()
        fs_row["peak_memory_bytes"] = ctx.memory.peak_bytes
        fs_row["peak_pss_bytes"] = ctx.memory.peak_pss_bytes
        sample_rng = random.Random(cfg.seed + 3)
        with_events = sorted(set(events.user.tolist()))
        sample = sample_rng.sample(with_events, min(scale.check_keys, len(with_events)))
        sample_path = ctx.workdir / "agg-sample.json"
        sample_path.write_text(json.dumps([f"u{k}" for k in sample]))
        windows_ms = sorted({o.seconds * 1000 for o in outputs})
        log.info("agg: Quix Streams")
        load_before = os.getloadavg()[0]
        quix = run_peer(
            "quix",
            "quix_peer.py",
            [
                "--bootstrap",
                cfg.bootstrap,
                "--topic",
                topic,
                "--out-topic",
                out_topic,
                "--events",
                str(acfg.events),
                "--windows-ms",
                ",".join(map(str, windows_ms)),
                "--sample-keys",
                str(sample_path),
                "--state-dir",
                str(ctx.workdir / "quix-state"),
                "--group",
                group,
            ],
            # Quix stops on its count only; a stalled run must not hold the bench for long.
            timeout=300 + acfg.events / 100,
        )
        client = fs.FeatureStore(
            online_store=store,
            offline_root=str(ctx.workdir / "agg" / "offline"),
            feature_sets=[feature_set],
            spark=ctx.spark,
        )
        reads = aggregated_reads(ctx, store, events, (f"cmpagg-{ctx.run_id}", topic, acfg))
        check = check_tumbling(
            client,
            feature_set,
            outputs=outputs,
            events=events,
            sample=sample,
            quix_values=quix.result["values"],
        )
    finally:
        store.close()
        drop_keyspace(HOST, cfg.cassandra_port, keyspace)
        delete_topics(cfg.bootstrap, topics + quix_topics(cfg.bootstrap, group))
    return {
        "events": acfg.events,
        "keys": acfg.keys,
        "span_days": acfg.span_days,
        "fs-dagster": fs_row,
        "fs-dagster-warm-up": {
            k: warm_up.get(k) for k in ("complete", "span_seconds", "events_per_second")
        },
        "quix": {
            **{k: v for k, v in quix.result.items() if k != "values"},
            "load_average_before": load_before,
            "process_seconds": quix.process_seconds,
            "peak_tree_bytes": quix.peak_tree_bytes,
        },
        "online_reads": reads,
        "check": check,
    }


def quix_topics(bootstrap: str, group: str) -> list[str]:
    """The changelog (and repartition) topics Quix created for ``group``."""
    from confluent_kafka.admin import AdminClient

    names = AdminClient(kafka_common(bootstrap)).list_topics(timeout=10).topics
    return [name for name in names if group in name]


def aggregated_reads(
    ctx: Context,
    store: fs.CassandraOnlineStore,
    events: agg.Events,
    rebuild: tuple[str, str, agg.BenchConfig],
) -> dict[str, Any]:
    """fs-dagster's online reads of the 15 aggregated features (Cassandra), 1 and 100
    keys, at the newest event time; no peer serves them. In a process of their own
    (:func:`reads_in_own_process`); ``rebuild`` is what
    :func:`bench.aggregations.aggregated_feature_set` made the feature set of (name,
    topic, config): a feature set does not pickle."""
    scale = ctx.cfg.sizes
    rng = random.Random(ctx.cfg.seed + 4)
    keys = [f"u{i}" for i in range(ctx.cfg.sizes.agg_keys)]
    total = scale.read_warmup + scale.requests
    spec = {
        "rebuild": rebuild,
        "keyspace": store.keyspace,
        "port": ctx.cfg.cassandra_port,
        "offline_root": str(ctx.workdir / "agg" / "offline"),
        "at_micros": int(events.micros.max()),
        "warmup": scale.read_warmup,
        "requests": {
            str(size): [rng.sample(keys, size) for _ in range(total)]
            for size in (1, scale.batch_keys)
        },
    }
    return reads_in_own_process(_aggregated_reads, spec)


def _aggregated_reads(spec: dict[str, Any]) -> dict[str, Any]:
    """The timed reads of :func:`aggregated_reads`, each followed by the same keys' tile
    slice through the bare driver (:class:`~bench.common.BareTileSlice`): the floor of the
    read on this machine, measured beside it."""
    name, topic, acfg = spec["rebuild"]
    feature_set = agg.aggregated_feature_set(
        name, topic, acfg, max_offsets_per_trigger=acfg.max_offsets_per_trigger
    )
    store = fs.CassandraOnlineStore(hosts=[HOST], port=spec["port"], keyspace=spec["keyspace"])
    client = fs.FeatureStore(
        online_store=store, offline_root=spec["offline_root"], feature_sets=[feature_set]
    )
    at = EPOCH + timedelta(microseconds=spec["at_micros"])
    bare = BareTileSlice(store, client._aggregation_plan(feature_set))  # a diagnostic
    bounds = bare.bounds(spec["at_micros"])
    results: dict[str, Any] = {}
    for size, batches in spec["requests"].items():
        times: list[float] = []
        bare_times: list[float] = []
        bare_rows = 0
        for index, batch in enumerate(batches):
            began = time.perf_counter()
            client.get_online_features(feature_set, batch, at=at)
            elapsed = time.perf_counter() - began
            began = time.perf_counter()
            rows = bare.read(batch, bounds)
            bare_elapsed = time.perf_counter() - began
            if index >= spec["warmup"]:
                times.append(elapsed)
                bare_times.append(bare_elapsed)
                bare_rows += rows
        results[size] = {
            **latency(times),
            "bare_driver": {**latency(bare_times), "tile_rows": bare_rows},
        }
    return results


def check_tumbling(
    client: fs.FeatureStore,
    feature_set: fs.FeatureSet,
    *,
    outputs: Sequence[agg.Output],
    events: agg.Events,
    sample: Sequence[int],
    quix_values: dict[str, dict[str, dict[str, list[Any]]]],
) -> dict[str, Any]:
    """Compare, per sampled key and window size ``W``, the tumbling window holding the
    key's last event, ``[B, B + W)`` with ``B`` a multiple of ``W`` since the epoch.

    fs-dagster read at ``B + W - 1 µs`` covers exactly ``[B, B + W)``: its window ends
    at the end of that second (``B + W``, a whole second) and starts ``W`` earlier,
    already on the edge resolution. Quix's value is its last update of the window
    starting at ``B`` (ms). Both are checked against sums over the raw events.
    """
    by_window: dict[int, list[agg.Output]] = {}
    for output in outputs:
        by_window.setdefault(output.seconds, []).append(output)
    tally = {"fs-dagster": [0, 0], "quix": [0, 0]}
    examples: list[dict[str, Any]] = []
    for index in sample:
        key = f"u{index}"
        micros, amounts, _ = events.of_key(index)
        last = int(micros.max())
        for seconds, window_outputs in by_window.items():
            width = seconds * MICROS
            start = last // width * width
            inside = (micros >= start) & (micros < start + width)
            expected = {
                "sum": float(amounts[inside].sum()),
                "count": int(inside.sum()),
                "max": float(amounts[inside].max()),
            }
            at = EPOCH + timedelta(microseconds=start + width - 1)
            frame = client.get_online_features(feature_set, [key], at=at)
            got_fs = {o.function: frame.iloc[0][o.name] for o in window_outputs}
            quix = quix_values.get(key, {}).get(str(seconds * 1000), {}).get(str(start // 1000))
            got_quix = dict(zip(("sum", "count", "max"), quix or [None] * 3, strict=True))
            for side, got in (("fs-dagster", got_fs), ("quix", got_quix)):
                for function, want in expected.items():
                    same = _same(want, got.get(function))
                    tally[side][0] += 1
                    tally[side][1] += same
                    if not same and len(examples) < 10:
                        examples.append(
                            {
                                "side": side,
                                "key": key,
                                "window_s": seconds,
                                "function": function,
                                "expected": want,
                                "got": got.get(function),
                            }
                        )
    return {
        side: {"values_compared": compared, "values_equal": equal}
        for side, (compared, equal) in tally.items()
    } | {"examples": examples}


def scenario_aggpit(ctx: Context) -> dict[str, Any]:
    """Aggregated point in time to pandas: fs-dagster's read of its offline tiles against
    a hand-written DuckDB query over the raw feature rows, every value compared; ``agg``'s
    events and keys (3 events per key at the default scales)."""
    return aggregated_point_in_time(ctx, "aggpit", agg_config(ctx.cfg))


def scenario_aggdense(ctx: Context) -> dict[str, Any]:
    """``aggpit`` with the same events over a hundredth of the keys (300 events per key at
    the default scales): a window then holds hundreds of a key's events, which the raw-row
    query pairs with every population row of the key, and fs-dagster's tiles do not grow
    with (at most 1,440 per rung and window)."""
    acfg = agg_config(ctx.cfg)
    return aggregated_point_in_time(ctx, "aggdense", replace(acfg, keys=max(acfg.keys // 100, 1)))


def aggregated_point_in_time(ctx: Context, name: str, acfg: agg.BenchConfig) -> dict[str, Any]:
    """The aggregated point-in-time read of ``acfg``'s events, both sides, every value
    compared (``aggpit`` and ``aggdense``)."""
    cfg, scale = ctx.cfg, ctx.cfg.sizes
    topic = f"fs-bench-{ctx.run_id}-{name}"
    workdir = ctx.workdir / name
    events = agg.generate_events(acfg.events, acfg.keys, acfg.span_micros, acfg.seed)
    feature_set = agg.aggregated_feature_set(
        f"cmp{name}-{ctx.run_id}", topic, acfg, max_offsets_per_trigger=acfg.max_offsets_per_trigger
    )
    try:
        create_topic(cfg.bootstrap, topic, acfg.partitions)
        log.info("%s: preloading %d events, offline ingestion (setup)", name, acfg.events)
        agg.preload(cfg.bootstrap, topic, events)
        offline_seconds = agg.offline_rows(ctx.spark, feature_set, workdir, acfg.run_timeout)
    finally:
        delete_topics(cfg.bootstrap, [topic])
    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(workdir / "online.db"),
        offline_root=str(workdir / "offline"),
        checkpoint_root=str(workdir / "checkpoints"),
        feature_sets=[feature_set],
        spark=ctx.spark,
        offline_engine=cfg.offline_engine,
    )
    rng = np.random.default_rng(cfg.seed + 11)
    first = int(events.micros.min())
    span = int(events.micros.max()) + 3600 * MICROS - first
    population = pd.DataFrame(
        {
            "row_id": np.arange(scale.population, dtype=np.int64),
            # Keys beyond the events' (about 1 in 10) have no tiles.
            "user_id": np.char.add(
                "u", rng.integers(0, acfg.keys + acfg.keys // 10, scale.population).astype(str)
            ),
            "timestamp": pd.to_datetime(first + rng.integers(0, span, scale.population), unit="us"),
        }
    )
    outputs = agg.outputs_of(feature_set)
    log.info("%s: fs-dagster, %d population rows to pandas", name, scale.population)
    ctx.memory.reset()
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    got = client.get_offline_features(population, feature_set, "timestamp")
    fs_seconds = time.perf_counter() - began
    ctx.memory.sample()
    peak = ctx.memory.peak_bytes
    log.info("%s: DuckDB SQL over the raw feature rows", name)
    features_path = storage_plan(feature_set, workdir).features_path
    peer_load = os.getloadavg()[0]
    began = time.perf_counter()
    want = duckdb_window_sql(features_path, population, outputs)
    peer_seconds = time.perf_counter() - began
    return {
        "population_rows": scale.population,
        "events": acfg.events,
        "keys": acfg.keys,
        "offline_ingestion_seconds": offline_seconds,
        "fs-dagster": {
            "seconds": fs_seconds,
            "engine": cfg.offline_engine,
            "peak_memory_bytes": peak,
            "load_average_before": load_before,
        },
        "duckdb-sql": {"seconds": peer_seconds, "load_average_before": peer_load},
        "check": compare_windows(got, want, outputs),
    }


def edge_seconds(window: int) -> int:
    """README, "Windows": the finest of 1 s, 1 min, 1 h and 1 day that divides the window
    into at most 1,440 tiles (written here again, not imported)."""
    for edge in (1, 60, 3600, 86400):
        if window % edge == 0 and window // edge <= 1440:
            return edge
    return 86400


def duckdb_window_sql(
    features_path: str, population: pd.DataFrame, outputs: Sequence[agg.Output]
) -> pd.DataFrame:
    """The peer: each population row's window values from the raw feature rows, by a
    DuckDB range join per key with the README's bounds: a window of ``W`` s read at ``t``
    holds the events in ``[S, E)``, ``E`` the end of ``t``'s second, ``S = E - W``
    rounded up to the window's edge."""
    import duckdb
    from deltalake import DeltaTable

    files = DeltaTable(features_path).file_uris()
    listed = ", ".join(f"'{f}'" for f in files)
    windows = sorted({o.seconds for o in outputs})
    starts = ", ".join(
        f"(e - {w} + {edge_seconds(w) - 1}) // {edge_seconds(w)} * {edge_seconds(w)} AS s{w}"
        for w in windows
    )
    aggregates = {
        "sum": "COALESCE(SUM(r.amount) FILTER ({}), 0)",
        "count": "COUNT(r.amount) FILTER ({})",
        "max": "MAX(r.amount) FILTER ({})",
    }
    values = ", ".join(
        aggregates[o.function].format(f"r.us >= b.s{o.seconds} * 1000000") + f' AS "{o.name}"'
        for o in outputs
    )
    sql = f"""
        WITH raw AS (
            SELECT user_id, epoch_us(ts) AS us, amount
            FROM read_parquet([{listed}], hive_partitioning = false)
        ),
        bounds AS (
            SELECT row_id, user_id, e, {starts}
            FROM (SELECT row_id, user_id, epoch_us(timestamp) // 1000000 + 1 AS e FROM population)
        )
        SELECT b.row_id, {values}
        FROM bounds AS b LEFT JOIN raw AS r
          ON r.user_id = b.user_id AND r.us >= b.s{max(windows)} * 1000000 AND r.us < b.e * 1000000
        GROUP BY b.row_id
        ORDER BY b.row_id
    """
    connection = duckdb.connect()
    try:
        connection.execute("SET enable_progress_bar = false")
        connection.register("population", population[["row_id", "user_id", "timestamp"]])
        frame: pd.DataFrame = connection.sql(sql).df()
        return frame
    finally:
        connection.close()


def compare_windows(
    got: pd.DataFrame, want: pd.DataFrame, outputs: Sequence[agg.Output]
) -> dict[str, Any]:
    """Every window value of fs-dagster's rows against the peer's, by ``row_id``: sums
    within 1e-9 relative, counts and maxima exactly, nulls as nulls."""
    merged = want.merge(got, on="row_id", how="left", suffixes=("", "_got"), indicator=True)
    present = merged["_merge"] == "both"
    compared = equal = 0
    examples: list[dict[str, Any]] = []
    for output in outputs:
        a = pd.to_numeric(merged[output.name], errors="coerce").to_numpy(dtype="float64")
        b = pd.to_numeric(merged[f"{output.name}_got"], errors="coerce").to_numpy(dtype="float64")
        both_null = np.isnan(a) & np.isnan(b)
        if output.function == "sum":
            same = both_null | np.isclose(a, b, rtol=REL_TOL, atol=1e-9)
        else:
            same = both_null | (a == b)
        same &= present.to_numpy()
        compared += len(a)
        equal += int(same.sum())
        for index in np.flatnonzero(~same)[: 5 - len(examples)]:
            examples.append(
                {
                    "row_id": int(merged["row_id"].iloc[index]),
                    "feature": output.name,
                    "expected": a[index],
                    "got": b[index],
                }
            )
    return {
        "population_rows": len(want),
        "rows": len(got),
        "missing_rows": int((~present).sum()),
        "values_compared": compared,
        "values_equal": equal,
        "examples": examples,
    }


def scenario_fresh(ctx: Context) -> dict[str, Any]:
    """Row-level ingestion events/s, and freshness at 500 ev/s of a row-level and an
    aggregated set, fs-dagster alone (``bench.online_ingestion``'s runs, trigger 0 s).

    In a process of its own with a Spark JVM of its own (:func:`_fresh_in_own_process`),
    so that each figure's peak memory is that online ingestion run's: in the bench's
    process it included the heap the point-in-time scenarios had grown (2.07-2.25 GiB
    there against 1.33-1.79 GiB with ``--only fresh``, 2026-12-02/03)."""
    spec = {"cfg": ctx.cfg, "workdir": ctx.workdir, "run_id": ctx.run_id}
    return in_own_process(_fresh_in_own_process, spec)


def _fresh_in_own_process(spec: dict[str, Any]) -> dict[str, Any]:
    configure_logging()
    cfg: Config = spec["cfg"]
    with PeakMemory(pss=True) as memory:
        spark = bench_spark(cfg)
        try:
            ctx = Context(
                cfg=cfg, workdir=spec["workdir"], memory=memory, spark=spark, run_id=spec["run_id"]
            )
            return _fresh_runs(ctx)
        finally:
            spark.stop()


def _fresh_runs(ctx: Context) -> dict[str, Any]:
    cfg, scale = ctx.cfg, ctx.cfg.sizes
    ocfg = oi.BenchConfig(
        events=scale.fresh_events,
        keys=10_000,
        seconds=scale.fresh_seconds,
        warmup=scale.fresh_warmup,
        intervals=(0.0,),
        max_offsets_per_trigger=max(scale.fresh_events // 8, 1),
        bootstrap=cfg.bootstrap,
        cassandra_port=cfg.cassandra_port,
        poll_interval=cfg.poll_interval,
    )
    keyspace = f"fs_bench_cmpfr_{ctx.run_id}"
    store = fs.CassandraOnlineStore(hosts=[HOST], port=cfg.cassandra_port, keyspace=keyspace)
    topics: list[str] = []
    workdir = ctx.workdir / "fresh"
    try:
        store.ensure_keyspace()
        for suffix in ("warmup", "preload", "steady", "warmup-agg", "steady-agg", "floor"):
            topics.append(f"fs-bench-{ctx.run_id}-fr-{suffix}")
            create_topic(cfg.bootstrap, topics[-1], ocfg.partitions)
        oi.warm_up(
            ctx.spark, ocfg, store, topic=topics[0], name=f"cmpfr-{ctx.run_id}-w", workdir=workdir
        )
        expected = oi.preload(ocfg, topics[1])
        log.info("fresh: row-level ingestion of %d events", ocfg.events)
        ctx.memory.reset()
        throughput = oi.fs_throughput(
            ctx.spark,
            ocfg,
            store,
            topic=topics[1],
            name=f"cmpfr-{ctx.run_id}-tp",
            interval=0.0,
            expected=expected,
            workdir=workdir,
        )
        ctx.memory.sample()
        throughput["peak_memory_bytes"] = ctx.memory.peak_bytes
        throughput["peak_pss_bytes"] = ctx.memory.peak_pss_bytes

        def freshness(topic: str, name: str, *, aggregated: bool) -> dict[str, Any]:
            ctx.memory.reset()
            run = oi.fs_freshness(
                ctx.spark,
                ocfg,
                store,
                topic=topic,
                name=name,
                interval=0.0,
                workdir=workdir,
                aggregated=aggregated,
            )
            ctx.memory.sample()
            run["peak_memory_bytes"] = ctx.memory.peak_bytes
            run["peak_pss_bytes"] = ctx.memory.peak_pss_bytes
            return run

        log.info("fresh: freshness at %g ev/s for %g s", ocfg.rate, ocfg.seconds)
        row_level = freshness(topics[2], f"cmpfr-{ctx.run_id}-fr", aggregated=False)
        # The same rate and prober through the least a Spark micro-batch pipeline does:
        # the floor of both freshness rows on this machine, run between them.
        log.info("fresh: the Spark floor (Kafka -> collect -> bare driver) at %g ev/s", ocfg.rate)
        floor = oi.spark_floor_freshness(
            ctx.spark,
            ocfg,
            store,
            topic=topics[5],
            name=f"cmpfr-{ctx.run_id}-floor",
            workdir=workdir,
        )
        # An aggregated batch runs code of its own, which a fresh JVM first interprets:
        # warmed the same way, its batches took 0.9-1.2 s at first and ~0.57 s once warm.
        log.info("fresh: warming up an aggregated query (not measured)")
        oi.warm_up(
            ctx.spark,
            ocfg,
            store,
            topic=topics[3],
            name=f"cmpfr-{ctx.run_id}-wa",
            workdir=workdir,
            aggregated=True,
        )
        log.info("fresh: aggregated set (3 aggregates x 5 windows) at %g ev/s", ocfg.rate)
        aggregated = freshness(topics[4], f"cmpfr-{ctx.run_id}-agg", aggregated=True)
    finally:
        store.close()
        drop_keyspace(HOST, cfg.cassandra_port, keyspace)
        delete_topics(cfg.bootstrap, topics)
    return {
        "throughput": throughput,
        "freshness": row_level,
        "aggregated_freshness": aggregated,
        "spark_floor_freshness": floor,
        "poll_interval": ocfg.poll_interval,
    }


# --------------------------------------------------------------------------- run


def bench_spark(cfg: Config) -> SparkSession:
    """The Spark session of the bench's fs-dagster side, as ``cfg`` sets it."""
    from fs_dagster.engine.spark_session import SparkSettings, create_spark_session

    return create_spark_session(
        SparkSettings(
            master=cfg.master,
            app_name="fs-dagster-bench-compare",
            jars=spark_jars(),
            conf={"spark.driver.memory": cfg.driver_memory},
        )
    )


def run(cfg: Config) -> dict[str, Any]:
    """Set up the peers, run the scenarios asked for and return the result document."""
    if {"agg", "aggpit", "aggdense", "fresh"} & set(cfg.only):
        check_services(cfg.bootstrap, HOST, cfg.cassandra_port)
    envs = {"feast"} if {"pit", "online"} & set(cfg.only) else set()
    if "agg" in cfg.only:
        envs.add("quix")
    versions: dict[str, Any] = {}
    for env in sorted(envs):
        ensure_env(env)
    if "feast" in envs:
        versions["feast"] = installed_versions("feast", ("feast", "duckdb", "pandas"))
    if "quix" in envs:
        versions["quix"] = installed_versions("quix", ("quixstreams", "rocksdict"))
    run_id = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="fs-bench-compare-", dir=cfg.root))
    results: dict[str, Any] = {
        "label": cfg.label,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {**asdict(cfg), "sizes": asdict(cfg.sizes)},
        "environment": {
            "cpus": os.cpu_count(),
            "load_average_start": list(os.getloadavg()),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "peers": versions,
        },
        "scenarios": {},
    }
    memory = PeakMemory(pss=True).start()
    spark = bench_spark(cfg)
    results["environment"]["spark"] = spark.version
    ctx = Context(cfg=cfg, workdir=workdir, memory=memory, spark=spark, run_id=run_id)
    scenarios: dict[str, Callable[[Context], dict[str, Any]]] = {
        "pit": scenario_pit,
        "online": scenario_online,
        "agg": scenario_agg,
        "aggpit": scenario_aggpit,
        "aggdense": scenario_aggdense,
        "fresh": scenario_fresh,
    }
    try:
        if {"pit", "online"} & set(cfg.only):
            results["row_setup"] = prepare_rows(ctx)
        for name in SCENARIOS:
            if name not in cfg.only:
                continue
            log.info("scenario %s", name)
            began = time.monotonic()
            try:
                results["scenarios"][name] = scenarios[name](ctx)
            except Exception as exc:  # one failing scenario must not hide the others
                log.exception("scenario %s failed", name)
                results["scenarios"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            log.info("scenario %s took %.0f s", name, time.monotonic() - began)
    finally:
        spark.stop()
        memory.stop()
        if not cfg.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["environment"]["load_average_end"] = list(os.getloadavg())
    results["environment"]["overall_peak_memory_bytes"] = memory.overall_peak_bytes
    return results


# --------------------------------------------------------------------------- table

PEERS = (
    "feast-duckdb",
    "feast-file",
    "duckdb-asof",
    "feast-sqlite",
    "quix",
    "duckdb-sql",
    "bare-driver",
    "spark-floor",
)
HEADERS = ["scenario", "unit", "better", "fs-dagster", *PEERS, "ratio", "fs peak GiB", "load"]


def _row(
    scenario: str,
    unit: str,
    lower_is_better: bool,
    fs_value: float | None,
    peers: dict[str, float | None],
    *,
    peak: int | None,
    load: float | None,
) -> list[str]:
    """One table row: ``peak`` is fs-dagster's peak memory (bytes), ``load`` the load
    average when its figure started."""
    present = [v for v in peers.values() if v is not None]
    best = (min(present) if lower_is_better else max(present)) if present else None
    ratio = fs_value / best if fs_value is not None and best else None
    return [
        scenario,
        unit,
        "lower" if lower_is_better else "higher",
        fmt(fs_value),
        *[fmt(peers.get(p)) for p in PEERS],
        fmt(ratio),
        fmt(peak / GIB) if peak else "-",
        fmt(load),
    ]


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    scenarios = results["scenarios"]
    pit = scenarios.get("pit", {})
    if "sides" in pit:
        sides = pit["sides"]
        name = f"pit {pit['population_rows']:,} x {pit['feature_rows']:,} -> pandas"
        fs_side = sides["fs-dagster"]
        peers = {p: sides[p]["seconds"] for p in ("feast-duckdb", "feast-file", "duckdb-asof")}
        rows.append(
            _row(
                name,
                "s",
                True,
                fs_side["seconds"],
                peers,
                peak=fs_side["peak_memory_bytes"],
                load=fs_side["load_average_before"],
            )
        )
    online = scenarios.get("online", {})
    if "fs-dagster" in online:
        for size, reads in online["fs-dagster"].items():
            feast = online["feast-sqlite"]["reads"][size]
            for q in ("p50", "p99"):
                rows.append(
                    _row(
                        f"online row-level SQLite, {size} key(s) {q}",
                        "ms",
                        True,
                        reads[f"{q}_ms"],
                        {"feast-sqlite": feast[f"{q}_ms"]},
                        peak=reads["peak_memory_bytes"],
                        load=reads["load_average_before"],
                    )
                )
    aggregated = scenarios.get("agg", {})
    if "fs-dagster" in aggregated:
        fs_row, quix = aggregated["fs-dagster"], aggregated["quix"]
        rows.append(
            _row(
                f"agg ingestion 3x5, {aggregated['keys']:,} keys, {aggregated['events']:,} ev",
                "ev/s",
                False,
                fs_row["events_per_second"],
                {"quix": quix["events_per_second"]},
                peak=fs_row["peak_memory_bytes"],
                load=fs_row["load_average_before"],
            )
        )
        rows.append(
            _row(
                "  same, wall (incl. start-up)",
                "ev/s",
                False,
                fs_row["events_per_second_wall"],
                {"quix": quix["events_per_second_wall"]},
                peak=None,
                load=fs_row["load_average_after"],
            )
        )
        for size, reads in aggregated["online_reads"].items():
            for q in ("p50", "p99"):
                rows.append(
                    _row(
                        f"online agg Cassandra 15 feat, {size} key(s) {q}",
                        "ms",
                        True,
                        reads[f"{q}_ms"],
                        {"bare-driver": reads["bare_driver"][f"{q}_ms"]},
                        peak=None,
                        load=reads["load_average_before"],
                    )
                )
    for name in ("aggpit", "aggdense"):
        aggpit = scenarios.get(name, {})
        if "fs-dagster" in aggpit:
            fs_side = aggpit["fs-dagster"]
            per_key = aggpit["events"] // max(aggpit["keys"], 1)
            rows.append(
                _row(
                    f"pit agg 3x5, {aggpit['population_rows']:,} x {aggpit['events']:,} ev, "
                    f"{per_key:,} ev/key -> pandas",
                    "s",
                    True,
                    fs_side["seconds"],
                    {"duckdb-sql": aggpit["duckdb-sql"]["seconds"]},
                    peak=fs_side["peak_memory_bytes"],
                    load=fs_side["load_average_before"],
                )
            )
    fresh = scenarios.get("fresh", {})
    if "throughput" in fresh:
        tp, fr = fresh["throughput"], fresh["freshness"]
        rows.append(
            _row(
                f"row-level ingestion, {tp['events']:,} ev",
                "ev/s",
                False,
                tp["events_per_second"],
                {},
                peak=tp["peak_memory_bytes"],
                load=tp["load_average_before"],
            )
        )
        floor = fresh.get("spark_floor_freshness") or {}
        for shape, run in (("row-level", fr), ("aggregated", fresh.get("aggregated_freshness"))):
            if run is None:
                continue
            for q in ("p50", "p99"):
                rows.append(
                    _row(
                        f"{shape} freshness @{run.get('rate', 500):g} ev/s {q}",
                        "s",
                        True,
                        run.get(q),
                        {"spark-floor": floor.get(q)},
                        peak=run["peak_memory_bytes"],
                        load=run["load_average_before"],
                    )
                )
    return rows


def verdict(side: str, check: dict[str, Any]) -> str:
    """``ok``; or, for Feast's ``file`` store, that it drops exactly the population
    rows with no feature row at or before them (its documented merge); else DIFFERS."""
    if check["ok"]:
        return "ok"
    drops_unmatched = (
        check["missing_rows"] == check["missing_unmatched"]
        and not check["rows_differing"]
        and not check["duplicate_rows"]
    )
    if side == "feast-file" and drops_unmatched:
        return "values ok; drops the population rows with no match"
    return "DIFFERS"


def check_lines(results: dict[str, Any]) -> list[str]:
    """One line per side and scenario: rows kept and values equal."""
    lines: list[str] = []
    scenarios = results["scenarios"]
    for name, scenario in scenarios.items():
        if "error" in scenario:
            lines.append(f"{name}: FAILED: {scenario['error']}")
    pit = scenarios.get("pit", {})
    if "sides" in pit:
        lines.append(
            f"pit oracle (pandas merge_asof): {pit['oracle_matched_rows']:,} population rows "
            f"matched, {pit['oracle_unmatched_rows']:,} with no feature row at or before them "
            f"({pit['oracle_rows_of_keys_without_features']:,} of whose keys have no feature "
            "row at all)"
        )
        for side, values in pit["sides"].items():
            c = values["check"]
            lines.append(
                f"pit {side}: {c['rows']:,} rows of {c['population_rows']:,} "
                f"({c['missing_rows']:,} missing, {c['missing_unmatched']:,} of them unmatched; "
                f"{c['duplicate_rows']:,} duplicates); {c['rows_differing']:,} rows differing "
                f"of those returned -> {verdict(side, c)}"
            )
        peaks = {
            side: values.get("peak_memory_bytes", values.get("peak_tree_bytes"))
            for side, values in pit["sides"].items()
        }
        lines.append(
            "pit peak memory of each side's process tree, GiB: "
            + ", ".join(f"{side} {fmt(peak / GIB)}" for side, peak in peaks.items() if peak)
        )
    online = scenarios.get("online", {})
    for side, c in online.get("check", {}).items():
        lines.append(
            f"online {side}: {c['values_equal']:,} of {c['values_compared']:,} values equal "
            "to the latest feature row"
        )
    aggregated = scenarios.get("agg", {})
    if "check" in aggregated:
        for side in ("fs-dagster", "quix"):
            c = aggregated["check"][side]
            lines.append(
                f"agg {side}: {c['values_equal']:,} of {c['values_compared']:,} tumbling-window "
                "values equal to the raw-event oracle"
            )
    for name in ("aggpit", "aggdense"):
        aggpit = scenarios.get(name, {})
        if "check" in aggpit:
            c = aggpit["check"]
            lines.append(
                f"{name}: {c['rows']:,} rows of {c['population_rows']:,} ({c['missing_rows']:,} "
                f"missing); {c['values_equal']:,} of {c['values_compared']:,} window values "
                "equal to the DuckDB SQL peer's (raw rows, the README's window bounds)"
            )
    fresh = scenarios.get("fresh", {})
    if "freshness" in fresh:
        fr = fresh["freshness"]
        lines.append(
            f"fresh: {fr.get('samples')} samples, {fr.get('missing')} missing, "
            f"stale keys after ingestion: {fresh['throughput'].get('stale_keys')}; the "
            f"prober paused {fmt(fresh.get('poll_interval'), 3)} s after each read of the store "
            f"and used {fmt(fr.get('prober_cpu_seconds'))} s of CPU, start-up included"
        )
        agg = fresh.get("aggregated_freshness")
        if agg is not None:
            lines.append(
                f"fresh, aggregated: {agg.get('samples')} samples, {agg.get('missing')} missing"
            )
        floor = fresh.get("spark_floor_freshness")
        if floor is not None:
            lines.append(
                f"fresh, Spark floor: {floor.get('samples')} samples, {floor.get('missing')} "
                f"missing; {floor.get('batches')} batches of {fmt(floor.get('mean_batch_rows'))} "
                f"events, {fmt(floor.get('mean_batch_seconds'))} s each (fs-dagster row-level: "
                f"{fr.get('batches')} of {fmt(fr.get('mean_batch_rows'))}, "
                f"{fmt(fr.get('mean_batch_seconds'))} s)"
            )
    ingestion = {
        "agg ingestion": aggregated.get("fs-dagster", {}),
        "row-level ingestion": fresh.get("throughput", {}),
        "row-level freshness": fresh.get("freshness", {}),
        "aggregated freshness": fresh.get("aggregated_freshness", {}),
    }
    ingestion_peaks = [
        f"{name} {fmt(run['peak_memory_bytes'] / GIB)} / {fmt(run['peak_pss_bytes'] / GIB)}"
        for name, run in ingestion.items()
        if run and "peak_pss_bytes" in run
    ]
    if ingestion_peaks:
        lines.append(
            "online ingestion peak memory of fs-dagster's process tree, GiB, resident (the "
            "table's, a forked worker's shared pages once per process) / shared pages once "
            "(PSS): " + ", ".join(ingestion_peaks)
        )
    return lines


def format_results(results: dict[str, Any]) -> str:
    env = results["environment"]
    head = (
        f"fs-dagster vs peers, scale {results['config']['scale']}, {env['cpus']} cpus, "
        f"load average {env['load_average_start'][0]:.2f} at start, "
        f"{env['load_average_end'][0]:.2f} at end; peers {env['peers']}"
    )
    ratio_note = (
        "ratio = fs-dagster / best peer (best: lowest time, highest ev/s); with 'lower' "
        "better, a ratio above 1 means fs-dagster is slower; with 'higher', below 1 means "
        "slower. 'load' is the 1-minute load average when fs-dagster's figure started."
    )
    return "\n".join(
        [
            head,
            "",
            text_table(HEADERS, table_rows(results)),
            "",
            ratio_note,
            "",
            *check_lines(results),
        ]
    )


def all_checks_pass(results: dict[str, Any]) -> bool:
    scenarios = results["scenarios"]
    ok = not any("error" in s for s in scenarios.values())
    if "sides" in scenarios.get("pit", {}):
        # Feast's file store dropping unmatched rows is reported, not a failure of ours.
        for side, values in scenarios["pit"]["sides"].items():
            ok = ok and verdict(side, values["check"]) != "DIFFERS"
    for c in scenarios.get("online", {}).get("check", {}).values():
        ok = ok and c["values_equal"] == c["values_compared"]
    for name in ("aggpit", "aggdense"):
        aggpit = scenarios.get(name, {}).get("check")
        if aggpit is not None:
            ok = (
                ok
                and aggpit["values_equal"] == aggpit["values_compared"]
                and not aggpit["missing_rows"]
            )
    checks = scenarios.get("agg", {}).get("check", {})
    for side in ("fs-dagster", "quix"):
        if side in checks:
            ok = ok and checks[side]["values_equal"] == checks[side]["values_compared"]
    fresh = scenarios.get("fresh", {})
    if "throughput" in fresh:
        ok = ok and fresh["throughput"].get("stale_keys") == 0
    for run in ("freshness", "aggregated_freshness", "spark_floor_freshness"):
        if run in fresh:
            ok = ok and fresh[run].get("missing") == 0 and bool(fresh[run].get("samples"))
    return ok


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated, of {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--bootstrap", default=os.environ.get("FS_KAFKA_BOOTSTRAP_SERVERS", f"{HOST}:9092")
    )
    parser.add_argument(
        "--cassandra-port", type=int, default=int(os.environ.get("FS_CASSANDRA_PORT", "9042"))
    )
    parser.add_argument("--master", default=Config.master)
    parser.add_argument("--driver-memory", default=Config.driver_memory)
    parser.add_argument(
        "--root",
        type=Path,
        default=Config.root,
        help="where the run directory (data, stores) is made",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--label", default="", help="stored with the results")
    parser.add_argument("--results-dir", type=Path, default=Config.results_dir)
    parser.add_argument(
        "--offline-engine",
        choices=OFFLINE_ENGINES,
        default=Config.offline_engine,
        help="what computes fs-dagster's point-in-time read (FeatureStore(offline_engine=))",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=Config.poll_interval,
        help="fresh: seconds the prober pauses after each read of the store",
    )
    args = parser.parse_args(argv)
    if args.poll_interval < 0:
        parser.error("--poll-interval: a pause cannot be negative")
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"--only: unknown scenarios {unknown}; choose from {','.join(SCENARIOS)}")
    return replace(
        Config(),
        scale=args.scale,
        only=only,
        bootstrap=args.bootstrap,
        cassandra_port=args.cassandra_port,
        master=args.master,
        driver_memory=args.driver_memory,
        root=args.root,
        keep=args.keep,
        seed=args.seed,
        label=args.label,
        results_dir=args.results_dir,
        offline_engine=args.offline_engine,
        poll_interval=args.poll_interval,
    )


def configure_logging() -> None:
    """The bench's log lines on stderr (the main process and the ones it spawns)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    for noisy in ("py4j", "cassandra", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    cfg = parse_args(argv)
    results = run(cfg)
    path = write_results(results, cfg.results_dir, f"compare-{cfg.scale}")
    print(format_results(results))
    print(f"\nresults: {path}")
    return 0 if all_checks_pass(results) else 1


if __name__ == "__main__":
    sys.exit(main())
