"""Benchmark of the online tile store on its own: what Cassandra and the Python driver allow.

Aggregated online ingestion ends, for every micro-batch, in two calls of the Cassandra
online store: ``read_tile_versions`` (the stored tiles a batch merges into) and
``write_tiles`` (the merged full states, ``USING TIMESTAMP``). This benchmark times those
two calls alone, with no Spark and no merge, on the tile table of the aggregated
benchmarks' feature set (sum, count and max of ``amount`` over 1m, 10m, 1h, 1d and 7d):
the most tiles per second that the write path of the aggregated pipeline could reach on
this machine, whatever Spark and the merge code do.

Measured, each ``--rounds`` times over the same ``--tiles`` tiles of ``--keys`` keys
(median reported), with the CPU seconds of this process (the client: the driver and the
store's request building) and of the Cassandra server in the same interval:

1. **write_tiles**: the store's writes (unlogged batches of keys that share replicas);
2. **read_tile_versions**: the store's reads of the same positions (one query per group of
   keys and up to 100 positions);
3. **baseline**: the same rows written by the bare driver, one prepared ``INSERT`` a
   request, ``execute_concurrent_with_args`` at the store's concurrency: what a writer
   without batching gets.

4. **online read, one key**: ``FeatureStore.get_online_features`` of one random key at the
   current time (the 15 window values from the key's tiles; ``--reads`` of them), each
   beside the bare driver's slice query of another random key's tiles (the rows the read
   needs, no merge, no DataFrame): p50 and p99 of both and their ratio.

**check**: the last read finds every tile, at the last version written, with its state;
every online read returns one row, of the key asked for.

Tiles per second become events per second through the tiles a batch writes per event:
``--tiles-per-event`` (default 3.19, from ``bench.compare --scale full``'s aggregated
scenario: 957,914 tiles for 300,000 events over 10,000 keys). ``bench/README.md``
("tile_store") says what each figure means.

Example:
    .venv/bin/python -m bench.tile_store                       # 100,000 tiles, 10,000 keys
    .venv/bin/python -m bench.tile_store --tiles 20000 --rounds 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

import fs_dagster as fs
from bench.aggregations import FUNCTIONS, WINDOWS
from bench.common import (
    BareTileSlice,
    PeakMemory,
    drop_keyspace,
    fmt,
    percentile,
    ratio,
    run_bench,
    text_table,
)
from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.engine.aggregates import aggregation_plan, prepare_online_tiles
from fs_dagster.stores.online.base import TileWrite

log = logging.getLogger("bench.tile_store")

REPO = Path(__file__).resolve().parents[1]
SCHEMA = StructType(
    [
        StructField("user_id", StringType()),
        StructField("amount", DoubleType()),
        StructField("seq", LongType()),
        StructField("ts", StringType()),
    ]
)


@dataclass(frozen=True)
class Config:
    tiles: int = 100_000
    keys: int = 10_000
    rounds: int = 3
    reads: int = 3000
    tiles_per_event: float = 3.19
    cassandra_host: str = "127.0.0.1"
    cassandra_port: int = 9042
    seed: int = 7
    results_dir: Path = REPO / "bench" / "results"


def tile_plan() -> AggregationPlan:
    """The aggregated benchmarks' plan: sum, count and max of amount over five windows."""
    source = fs.FileSource(
        name="tile_events",
        path="/nonexistent",
        format="json",
        schema="user_id STRING, amount DOUBLE, seq BIGINT, ts STRING",
    )

    def transformation() -> fs.SparkSqlTransformation:
        aggregated = fs.SparkSqlTransformation("SELECT user_id, amount, seq, ts FROM tile_events")
        for function in FUNCTIONS:
            aggregated = aggregated.aggregate(getattr(fs.Aggregation, function)("amount"))
        return aggregated.by_windows(*WINDOWS)

    feature_set = fs.streaming.feature_set(
        name="tile-store-bench",
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
    )(transformation)
    return aggregation_plan(feature_set, SCHEMA)


def make_tiles(plan: AggregationPlan, cfg: Config) -> list[TileWrite]:
    """``cfg.tiles`` distinct tiles, spread evenly over the plan's resolutions, each of a
    random key among ``cfg.keys`` and one of the 50 newest tiles of its resolution, with
    a state as the pipeline writes it (every state of the plan set)."""
    rng = random.Random(cfg.seed)
    now = int(time.time())
    chosen: dict[tuple[str, int, int], int] = {}
    resolutions = plan.resolutions
    while len(chosen) < cfg.tiles:
        resolution = resolutions[len(chosen) % len(resolutions)]
        start = (now // resolution - rng.randrange(50)) * resolution
        key = f"u{rng.randrange(cfg.keys)}"
        chosen.setdefault((key, resolution, start), len(chosen))
    writes = []
    for (key, resolution, start), index in chosen.items():
        state = {s.key: float(index % 997) + 0.25 for s in plan.states}
        writes.append(
            TileWrite(
                key=(key,),
                resolution=resolution,
                start=start,
                version=0,
                state=json.dumps(state, separators=(",", ":")),
                ttl_seconds=plan.retention(resolution),
            )
        )
    return writes


def cassandra_pid() -> int | None:
    """The local Cassandra server's pid (a java process running ``CassandraDaemon``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command and command[0].endswith(b"java") and b"CassandraDaemon" in b" ".join(command):
            return int(entry.name)
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU seconds of process ``pid`` so far (``None``: unknown)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Timing:
    """One measured operation: median wall seconds and CPU seconds over the rounds."""

    operation: str
    tiles: int
    seconds: list[float]
    client_cpu: list[float]
    server_cpu: list[float | None]

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tiles_per_second(self) -> float:
        return self.tiles / self.median_seconds

    def micros_per_tile(self, cpu: Sequence[float | None]) -> float | None:
        known = [c for c in cpu if c is not None]
        return statistics.median(known) / self.tiles * 1e6 if known else None


def timed(
    operation: str, tiles: int, rounds: int, server: int | None, action: Callable[[int], Any]
) -> tuple[Timing, Any]:
    """Run ``action(round)`` ``rounds`` times; the timing and the last result."""
    timing = Timing(operation, tiles, [], [], [])
    result: Any = None
    for number in range(rounds):
        client_before, server_before = cpu_seconds(os.getpid()), cpu_seconds(server)
        began = time.perf_counter()
        result = action(number)
        timing.seconds.append(time.perf_counter() - began)
        client_after, server_after = cpu_seconds(os.getpid()), cpu_seconds(server)
        assert client_before is not None and client_after is not None
        timing.client_cpu.append(client_after - client_before)
        timing.server_cpu.append(
            None if server_before is None or server_after is None else server_after - server_before
        )
        log.info("%s round %d: %.2f s", operation, number + 1, timing.seconds[-1])
    return timing, result


def run(cfg: Config) -> dict[str, Any]:
    """Measure the three operations and check the last read; returns the results."""
    plan = tile_plan()
    table = plan.tile_table
    keyspace = f"bench_tiles_{uuid.uuid4().hex[:8]}"
    store = fs.CassandraOnlineStore(
        [cfg.cassandra_host], port=cfg.cassandra_port, keyspace=keyspace, consistency="ONE"
    )
    server = cassandra_pid()
    if server is None:
        log.warning("no local Cassandra process found: its CPU is not reported")
    writes = make_tiles(plan, cfg)
    positions = [(w.key, w.resolution, w.start) for w in writes]
    log.info(
        "%d tiles of %d keys, %d resolutions; state %d bytes",
        len(writes),
        len({w.key for w in writes}),
        len(plan.resolutions),
        len(writes[0].state),
    )
    memory = PeakMemory().start()
    try:
        prepare_online_tiles(store, plan)

        def write(number: int) -> int:
            versioned = [
                TileWrite(w.key, w.resolution, w.start, number + 1, w.state, w.ttl_seconds)
                for w in writes
            ]
            return store.write_tiles(table, versioned)

        write_timing, _ = timed("write_tiles", len(writes), cfg.rounds, server, write)
        read_timing, stored = timed(
            "read_tile_versions",
            len(writes),
            cfg.rounds,
            server,
            lambda _n: store.read_tile_versions(table, positions),
        )
        last_version = cfg.rounds
        wrong = sum(
            1
            for w, s in zip(writes, stored, strict=True)
            if s is None or s.version != last_version or s.state != w.state
        )

        from cassandra.concurrent import execute_concurrent_with_args

        session = store._session()  # the store's own connection: the same driver settings
        insert = session.prepare(
            f'INSERT INTO "{keyspace}"."{table.name}" ("user_id", resolution, tile_start, '
            "version, state) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?"
        )

        def bare(number: int) -> None:
            version = last_version + 1 + number
            rows = [
                (w.key[0], w.resolution, w.start, version, w.state, version + 1, w.ttl_seconds)
                for w in writes
            ]
            execute_concurrent_with_args(
                session, insert, rows, concurrency=store.concurrency, raise_on_first_error=True
            )

        baseline_timing, _ = timed(
            "baseline: bare driver, one INSERT a request", len(writes), cfg.rounds, server, bare
        )
        reads = online_reads(store, plan, sorted({w.key[0] for w in writes}), cfg)
    finally:
        memory.stop()
        store.close()
        drop_keyspace(cfg.cassandra_host, cfg.cassandra_port, keyspace)

    timings = [write_timing, read_timing, baseline_timing]
    per_event = cfg.tiles_per_event
    # A merged tile is read, then written; a tile no earlier batch can hold is only written.
    merged = 1 / (1 / write_timing.tiles_per_second + 1 / read_timing.tiles_per_second)
    return {
        "bench": "tile_store",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "load_average_after": os.getloadavg()[0],
        "peak_memory_bytes": memory.overall_peak_bytes,
        "timings": [
            {
                "operation": t.operation,
                "tiles": t.tiles,
                "seconds": t.seconds,
                "tiles_per_second": t.tiles_per_second,
                "client_cpu_seconds": t.client_cpu,
                "server_cpu_seconds": t.server_cpu,
                "client_cpu_micros_per_tile": t.micros_per_tile(t.client_cpu),
                "server_cpu_micros_per_tile": t.micros_per_tile(t.server_cpu),
                "ratio_to_baseline": ratio(t.tiles_per_second, baseline_timing.tiles_per_second),
            }
            for t in timings
        ],
        "ceiling": {
            "tiles_per_event": per_event,
            "written_blind_events_per_second": write_timing.tiles_per_second / per_event,
            "read_then_written_events_per_second": merged / per_event,
        },
        "online_reads": reads,
        "check": {"tiles": len(writes), "wrong_or_missing": wrong},
    }


def online_reads(
    store: fs.CassandraOnlineStore, plan: AggregationPlan, keys: Sequence[str], cfg: Config
) -> dict[str, Any]:
    """One-key aggregated online reads at the current time, each beside the bare driver's
    slice query of one key's tiles (:class:`~bench.common.BareTileSlice`); latencies in
    milliseconds."""
    rng = random.Random(cfg.seed + 1)
    client = fs.FeatureStore(
        online_store=store,
        offline_root=tempfile.mkdtemp(prefix="bench-tile-store-"),
        feature_sets=[plan.feature_set],
    )
    bare = BareTileSlice(store, plan)
    wrong = 0
    read_s: list[float] = []
    bare_s: list[float] = []
    warmup = 200
    for number in range(warmup + cfg.reads):
        key = rng.choice(keys)
        began = time.perf_counter()
        frame = client.get_online_features(plan.feature_set, [key])
        elapsed = time.perf_counter() - began
        wrong += len(frame) != 1 or frame["user_id"].iloc[0] != key
        # The bounds outside the timing: the read computes its own.
        bounds = bare.bounds(int(time.time() * 1_000_000))
        other = rng.choice(keys)
        began = time.perf_counter()
        bare.read([other], bounds)
        bare_elapsed = time.perf_counter() - began
        if number >= warmup:
            read_s.append(elapsed)
            bare_s.append(bare_elapsed)
    figures = {
        name: {q: (percentile(values, q) or 0) * 1000 for q in (50, 99)}
        for name, values in (("read", read_s), ("bare", bare_s))
    }
    return {
        "reads": cfg.reads,
        "read_ms": figures["read"],
        "bare_slice_ms": figures["bare"],
        "ratio_p50": ratio(figures["read"][50], figures["bare"][50]),
        "ratio_p99": ratio(figures["read"][99], figures["bare"][99]),
        "wrong_rows": wrong,
    }


def format_results(results: dict[str, Any]) -> str:
    rows = [
        [
            t["operation"],
            fmt(t["tiles_per_second"], 0),
            fmt(t["ratio_to_baseline"]),
            fmt(t["client_cpu_micros_per_tile"], 1),
            fmt(t["server_cpu_micros_per_tile"], 1),
        ]
        for t in results["timings"]
    ]
    table = text_table(
        ["operation", "tiles/s", "x baseline", "client CPU us/tile", "Cassandra CPU us/tile"],
        rows,
    )
    ceiling = results["ceiling"]
    check = results["check"]
    reads = results["online_reads"]
    read_table = text_table(
        ["one-key read", "p50 ms", "p99 ms", "x bare p50", "x bare p99"],
        [
            [
                "get_online_features (15 features)",
                fmt(reads["read_ms"][50], 3),
                fmt(reads["read_ms"][99], 3),
                fmt(reads["ratio_p50"]),
                fmt(reads["ratio_p99"]),
            ],
            [
                "baseline: bare driver, the key's tile slice",
                fmt(reads["bare_slice_ms"][50], 3),
                fmt(reads["bare_slice_ms"][99], 3),
                "1.00",
                "1.00",
            ],
        ],
    )
    return (
        f"{table}\n\n"
        f"At {ceiling['tiles_per_event']:g} tiles per event the store alone allows "
        f"{fmt(ceiling['written_blind_events_per_second'], 0)} events/s when every tile is "
        f"written blind, {fmt(ceiling['read_then_written_events_per_second'], 0)} events/s "
        "when every tile is read before it is written.\n\n"
        f"{read_table}\n\n"
        f"peak memory {results['peak_memory_bytes'] / 2**30:.2f} GiB; load average "
        f"{results['load_average_after']:.2f}\n"
        f"check: {check['tiles'] - check['wrong_or_missing']} of {check['tiles']} tiles read "
        "back at the last version with their state; "
        f"{reads['reads'] - reads['wrong_rows']} of {reads['reads']} online reads returned the "
        "key's row"
    )


def parse_args(argv: Sequence[str] | None) -> Config:
    d = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tiles", type=int, default=d.tiles, help="distinct tiles a round")
    parser.add_argument("--keys", type=int, default=d.keys, help="distinct user_id values")
    parser.add_argument("--rounds", type=int, default=d.rounds)
    parser.add_argument("--reads", type=int, default=d.reads, help="timed one-key reads")
    parser.add_argument("--tiles-per-event", type=float, default=d.tiles_per_event)
    parser.add_argument("--cassandra-host", default=d.cassandra_host)
    parser.add_argument("--cassandra-port", type=int, default=d.cassandra_port)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--results-dir", type=Path, default=d.results_dir)
    args = parser.parse_args(argv)
    if min(args.tiles, args.keys, args.rounds, args.reads) < 1 or args.tiles_per_event <= 0:
        parser.error("--tiles, --keys, --rounds, --reads and --tiles-per-event must be positive")
    if args.tiles > args.keys * 50:
        parser.error("--tiles can be at most 50 per key (--keys x 50)")
    return Config(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the summary, write the JSON; return the exit status."""
    _cfg, results = run_bench(
        "tile_store",
        argv,
        logger=log,
        parse_args=parse_args,
        run=run,
        format_results=format_results,
    )
    failed = results["check"]["wrong_or_missing"] or results["online_reads"]["wrong_rows"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
