"""Benchmark of replay: events/s and peak memory over a month of archived events.

``N`` synthetic events over 30 days (``K`` keys) are written by Spark straight into the
raw-event archive's layout (:mod:`fs_dagster.engine.archive`: the source's columns plus
event micros, trigger ``offline`` and the event-date partition, through the one
idempotent Delta write), as the offline run would archive them; this part is not timed.
Then, one after the other, over the whole month:

1. **baseline**: a plain Spark read of the archived rows, sorted by event time and
   brought to the driver with ``toLocalIterator`` (Row objects, one partition at a
   time): what streaming the archive in order costs without any feature computation;
   and the same brought over as one Arrow table (the whole range in the driver at once:
   the fastest transfer, unbounded memory);
2. **replay, aggregated**: ``FeatureStore.replay`` of a streaming feature set with sum,
   count and max of ``amount`` over 1 minute, 1 hour and 1 day (9 values per event, each
   the offline point-in-time value at the event's time);
3. **replay, row-level**: ``FeatureStore.replay`` of a row-level feature set over the same
   rows (a copy of the archive under its own storage name);
4. **check**: about 200 sampled aggregated events against an oracle over the raw rows
   that follows the README's window rule without importing fs-dagster's window code, the
   sampled row-level events against their raw rows, the count and the event-time order
   of every event of both replays.

Events/s is ``N`` over wall-clock seconds from the call to the last event; the ratio is
the replay's over the baseline's, both measured in the same run and Spark session. Peak
memory is the resident memory of the whole process tree (driver, JVM, Python workers);
the driver's own resident memory is also sampled every 100,000 events to show that it
stays flat. ``bench/README.md`` ("replay") says what each figure means.

Example:
    .venv/bin/python -m bench.replay --events 1000000
    .venv/bin/python -m bench.replay --events 100000 --keys 1000     # quick check
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F  # noqa: N812

import fs_dagster as fs
from bench.common import PeakMemory, fmt, ratio, run_bench, spark_jars, text_table
from fs_dagster.engine.archive import (
    ARCHIVE_DATE_COLUMN,
    ARCHIVE_MICROS_COLUMN,
    ARCHIVE_TRIGGER_COLUMN,
)
from fs_dagster.engine.delta import AppendOnce, write_delta
from fs_dagster.engine.replay import FeatureEvent

log = logging.getLogger("bench.replay")

REPO = Path(__file__).resolve().parents[1]
END = datetime(2026, 3, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROS = 1_000_000
STREAM_SCHEMA = "user_id STRING, amount DOUBLE, is_remote BOOLEAN, ts TIMESTAMP"
FUNCTIONS = ("sum", "count", "max")
WINDOWS = ("1 minute", "1 hour", "1 day")
WINDOW_SECONDS = {"1m": 60, "1h": 3600, "1d": 86400}
#: Tile sizes of the README's edge rule, and the most tiles a window's edge may split into.
EDGE_RESOLUTIONS = (1, 60, 3600, 86400)
MAX_EDGE_TILES = 1440
SAMPLE_EVERY = 100_000
REL_TOL = 1e-9
GIB = 2**30


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class BenchConfig:
    """What to run; built from the command line (see ``--help``)."""

    events: int = 1_000_000
    keys: int = 10_000
    days: int = 30
    slice_hours: int = 24
    check_events: int = 200
    warmup: bool = True
    root: Path = Path(tempfile.gettempdir())
    keep: bool = False
    master: str = "local[2]"
    shuffle_partitions: int = 4
    driver_memory: str = "4g"
    seed: int = 7
    label: str = ""
    results_dir: Path = REPO / "bench" / "results"

    @property
    def start(self) -> datetime:
        return END - timedelta(days=self.days)


# --------------------------------------------------------------------------- setup


def feature_sets(name: str, stream_dir: Path) -> tuple[fs.FeatureSet, fs.FeatureSet]:
    """An aggregated and a row-level streaming feature set over the same source."""
    source = fs.FileSource(name=f"{name}-stream", path=str(stream_dir), schema=STREAM_SCHEMA)
    view = source.name.replace("-", "_")

    def aggregated() -> fs.SparkSqlTransformation:
        sql = fs.SparkSqlTransformation(f"SELECT user_id, amount, is_remote, ts FROM {view}")
        for function in FUNCTIONS:
            sql = sql.aggregate(getattr(fs.Aggregation, function)("amount"))
        return sql.by_windows(*WINDOWS)

    def rows() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(
            f"SELECT user_id, amount, amount * 100 AS cents, is_remote, ts FROM {view}"
        )

    common: dict[str, Any] = {
        "key": "user_id",
        "data_sources": [source],
        "timestamp_column_name": "ts",
    }
    return (
        fs.streaming.feature_set(name=f"{name}-agg", **common)(aggregated),
        fs.streaming.feature_set(name=f"{name}-rows", **common)(rows),
    )


def write_archive(spark: SparkSession, cfg: BenchConfig, path: str) -> None:
    """``cfg.events`` events, uniform over the keys and the days, in the archive's layout.

    Written directly rather than by the offline run (whose cost ``bench.backfill`` and
    ``bench.aggregations`` measure): the same columns ``RawArchive`` writes, through the
    same Delta write.
    """
    start = _micros(cfg.start)
    span = _micros(END) - start
    seed = cfg.seed
    events = spark.range(0, cfg.events, numPartitions=max(2, math.ceil(cfg.events / 500_000)))
    rows = events.select(
        F.concat(F.lit("u"), F.floor(F.rand(seed) * cfg.keys).cast("string")).alias("user_id"),
        F.round(F.rand(seed + 1) * 500, 2).alias("amount"),
        (F.rand(seed + 2) < 0.3).alias("is_remote"),
        F.timestamp_micros(F.lit(start) + F.floor(F.rand(seed + 3) * span)).alias("ts"),
    )
    archived = rows.select(
        "*",
        F.unix_micros(F.col("ts")).alias(ARCHIVE_MICROS_COLUMN),
        F.lit("offline").alias(ARCHIVE_TRIGGER_COLUMN),
        F.to_date(F.col("ts")).alias(ARCHIVE_DATE_COLUMN),
    )
    write_delta(archived, path, AppendOnce("bench-replay", 0), partition_by=[ARCHIVE_DATE_COLUMN])


# --------------------------------------------------------------------------- the sides


@dataclass
class Pass:
    """What one side did: events, seconds, memory, samples kept for the check."""

    events: int = 0
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    driver_rss_bytes: list[int] = field(default_factory=list)
    out_of_order: int = 0
    samples: list[FeatureEvent] = field(default_factory=list)
    load_average: tuple[float, float] = (0.0, 0.0)

    def summary(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": self.seconds,
            "events_per_second": ratio(self.events, self.seconds),
            "peak_memory_bytes": self.peak_memory_bytes,
            "driver_rss_bytes_every_100k": self.driver_rss_bytes,
            "out_of_order": self.out_of_order,
            "load_average_before_after": self.load_average,
        }


def _driver_rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def drain(
    memory: PeakMemory,
    produce: Callable[[], Iterable[Any]],
    time_of: Callable[[Any], int],
    keep: set[int] | None = None,
) -> Pass:
    """Consume ``produce()``, timing it, checking order and keeping the ``keep``-th items."""
    result = Pass()
    before = os.getloadavg()[0]
    memory.reset()
    began = time.perf_counter()
    last = -(2**63)
    for item in produce():
        at = time_of(item)
        if at < last:
            result.out_of_order += 1
        last = at
        if keep is not None and result.events in keep:
            result.samples.append(item)
        result.events += 1
        if result.events % SAMPLE_EVERY == 0:
            result.driver_rss_bytes.append(_driver_rss())
    result.seconds = time.perf_counter() - began
    memory.sample()
    result.peak_memory_bytes = memory.peak_bytes
    result.load_average = (before, os.getloadavg()[0])
    return result


# --------------------------------------------------------------------------- the check


def edge_resolution(window_seconds: int) -> int:
    """README: the finest tile size dividing W into at most 1,440 tiles."""
    for rung in EDGE_RESOLUTIONS:
        if window_seconds % rung == 0 and window_seconds // rung <= MAX_EDGE_TILES:
            return rung
    return EDGE_RESOLUTIONS[-1]


def window_rows(raw: pd.DataFrame, window_seconds: int, at_micros: int) -> pd.DataFrame:
    """README: ``[S, E)``, E the end of t's second, S = E - W rounded up to the edge tile."""
    end = at_micros // MICROS + 1
    rung = edge_resolution(window_seconds)
    start = -(-(end - window_seconds) // rung) * rung
    inside = (raw["micros"] >= start * MICROS) & (raw["micros"] < end * MICROS)
    return raw[inside]


def _same(expected: float | None, got: Any) -> bool:
    if expected is None or got is None:
        return expected is None and (got is None or (isinstance(got, float) and math.isnan(got)))
    return math.isclose(float(expected), float(got), rel_tol=REL_TOL, abs_tol=1e-9)


def check(
    spark: SparkSession, archive_path: str, aggregated: Pass, row_level: Pass
) -> dict[str, Any]:
    """Sampled replayed values against an oracle over the raw archived rows."""
    users = sorted({e.key["user_id"] for e in [*aggregated.samples, *row_level.samples]})
    raw_all = (
        spark.read.format("delta")
        .load(archive_path)
        .where(F.col("user_id").isin(users))
        .select("user_id", F.col(ARCHIVE_MICROS_COLUMN).alias("micros"), "amount")
        .toPandas()
    )
    by_user = {user: rows for user, rows in raw_all.groupby("user_id")}
    values = matched = 0
    mismatches: list[dict[str, Any]] = []
    for event in aggregated.samples:
        raw = by_user[event.key["user_id"]]
        at = _micros(event.timestamp)
        for function in FUNCTIONS:
            for suffix, seconds in WINDOW_SECONDS.items():
                amounts = window_rows(raw, seconds, at)["amount"].to_numpy()
                expected: float | None
                if function == "sum":
                    expected = float(np.sum(amounts))
                elif function == "count":
                    expected = float(len(amounts))
                else:
                    expected = float(np.max(amounts)) if len(amounts) else None
                got = event.features[f"{function}_amount_{suffix}"]
                values += 1
                if _same(expected, got):
                    matched += 1
                elif len(mismatches) < 10:
                    mismatches.append(
                        {"event": str(event), "feature": f"{function}_{suffix}", "want": expected}
                    )
    rows_matched = 0
    for event in row_level.samples:
        raw = by_user[event.key["user_id"]]
        same_time = raw[raw["micros"] == _micros(event.timestamp)]
        if any(math.isclose(a, event.features["amount"]) for a in same_time["amount"]):
            rows_matched += 1
    return {
        "aggregated_values": values,
        "aggregated_matched": matched,
        "row_events": len(row_level.samples),
        "row_events_matched": rows_matched,
        "mismatches": mismatches,
    }


# --------------------------------------------------------------------------- run


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark and return the result document."""
    from fs_dagster.engine.spark_session import SparkSettings, create_spark_session

    run_id = uuid.uuid4().hex[:8]
    workdir = cfg.root / f"fs-bench-replay-{run_id}"
    workdir.mkdir(parents=True)
    results: dict[str, Any] = {
        "label": cfg.label,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {**asdict(cfg), "root": str(cfg.root), "results_dir": str(cfg.results_dir)},
        "environment": {
            "cpus": os.cpu_count(),
            "load_average_start": os.getloadavg()[0],
            "python": platform.python_version(),
            "platform": platform.platform(),
            "workdir": str(workdir),
        },
    }
    spark: SparkSession | None = None
    memory = PeakMemory().start()
    try:
        spark = create_spark_session(
            SparkSettings(
                master=cfg.master,
                app_name="fs-dagster-bench-replay",
                jars=spark_jars(),
                shuffle_partitions=cfg.shuffle_partitions,
                conf={"spark.driver.memory": cfg.driver_memory},
            )
        )
        results["environment"]["spark"] = spark.version
        agg_set, row_set = feature_sets(f"rp_{run_id}", workdir / "stream")
        store = fs.FeatureStore(
            online_store=fs.SqliteOnlineStore(workdir / "online.db"),
            offline_root=str(workdir / "offline"),
            checkpoint_root=str(workdir / "checkpoints"),
            feature_sets=[agg_set, row_set],
            spark=spark,
        )
        agg_archive = store.plan(agg_set).archive_path
        row_archive = store.plan(row_set).archive_path
        log.info("writing %d events over %d days to %s", cfg.events, cfg.days, agg_archive)
        began = time.perf_counter()
        write_archive(spark, cfg, agg_archive)
        shutil.copytree(agg_archive, row_archive)
        results["archive_seconds"] = time.perf_counter() - began
        start, end = cfg.start, END
        slice_length = timedelta(hours=cfg.slice_hours)

        def baseline(first: datetime, last: datetime) -> Iterable[Any]:
            archive = spark.read.format("delta").load(agg_archive)
            micros = F.col(ARCHIVE_MICROS_COLUMN)
            ordered = archive.where((micros >= _micros(first)) & (micros < _micros(last))).orderBy(
                micros, "user_id"
            )
            return ordered.toLocalIterator()

        def baseline_arrow(first: datetime, last: datetime) -> Iterable[Any]:
            archive = spark.read.format("delta").load(agg_archive)
            micros = F.col(ARCHIVE_MICROS_COLUMN)
            ordered = archive.where((micros >= _micros(first)) & (micros < _micros(last))).orderBy(
                micros, "user_id"
            )
            for batch in ordered.toArrow().to_batches():
                yield from batch.to_pylist()

        def replay(name: str, first: datetime, last: datetime) -> Callable[[], Iterable[Any]]:
            return lambda: store.replay(name, first, last, slice_length=slice_length)

        def row_time(row: Any) -> int:
            return int(row[ARCHIVE_MICROS_COLUMN])

        def event_time(event: FeatureEvent) -> int:
            return _micros(event.timestamp)

        if cfg.warmup:
            # Python workers, JIT and Delta's first snapshot: paid by no timed side.
            log.info("warming up on the first day")
            day = start + timedelta(days=1)
            drain(memory, lambda: baseline(start, day), row_time)
            drain(memory, lambda: baseline_arrow(start, day), row_time)
            drain(memory, replay(agg_set.name, start, day), event_time)
            drain(memory, replay(row_set.name, start, day), event_time)
        rng = random.Random(cfg.seed)
        keep = set(rng.sample(range(cfg.events), min(cfg.check_events, cfg.events)))
        log.info("baseline: read and sort the archive into the driver")
        base = drain(memory, lambda: baseline(start, end), row_time)
        log.info("baseline: the same through one Arrow table (the whole range in the driver)")
        base_arrow = drain(memory, lambda: baseline_arrow(start, end), row_time)
        log.info("replay of the aggregated feature set")
        aggregated = drain(memory, replay(agg_set.name, start, end), event_time, keep)
        log.info("replay of the row-level feature set")
        row_level = drain(memory, replay(row_set.name, start, end), event_time, keep)
        log.info("checking sampled values against the oracle")
        results["baseline"] = base.summary()
        results["baseline_arrow"] = base_arrow.summary()
        results["replay_aggregated"] = aggregated.summary()
        results["replay_row_level"] = row_level.summary()
        results["check"] = check(spark, agg_archive, aggregated, row_level)
    finally:
        if spark is not None:
            spark.stop()
        memory.stop()
        if not cfg.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["environment"]["load_average_end"] = os.getloadavg()[0]
    results["environment"]["overall_peak_memory_bytes"] = memory.overall_peak_bytes
    return results


# --------------------------------------------------------------------------- output


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def format_results(results: dict[str, Any]) -> str:
    """A text table of the sides, the check and how the driver's memory evolved."""
    cfg = results["config"]
    base = results["baseline"]
    lines = [
        f"replay over {cfg['events']:,} archived events, {cfg['days']} days, "
        f"{cfg['keys']:,} keys, {cfg['slice_hours']} h slices ({cfg['master']}, "
        f"{cfg['shuffle_partitions']} shuffle partitions, driver memory {cfg['driver_memory']})",
        "",
    ]
    rows = []
    for label, key in (
        ("baseline: read + sort, rows", "baseline"),
        ("baseline: read + sort, Arrow", "baseline_arrow"),
        ("replay, aggregated (9 values)", "replay_aggregated"),
        ("replay, row-level", "replay_row_level"),
    ):
        side = results[key]
        rows.append(
            [
                label,
                f"{side['events']:,}",
                fmt(side["seconds"], 1),
                fmt(side["events_per_second"]),
                fmt(ratio(side["events_per_second"], base["events_per_second"])),
                _gib(side["peak_memory_bytes"]),
                _gib(max(side["driver_rss_bytes_every_100k"], default=None)),
                str(side["out_of_order"]),
            ]
        )
    headers = [
        "side",
        "events",
        "s",
        "events/s",
        "x baseline",
        "peak GiB (tree)",
        "driver GiB",
        "out of order",
    ]
    lines.append(text_table(headers, rows))
    check = results["check"]
    lines += [
        "",
        f"check: aggregated {check['aggregated_matched']}/{check['aggregated_values']} values "
        f"equal to the oracle; row-level {check['row_events_matched']}/{check['row_events']} "
        "events equal to their raw rows",
        "driver resident MiB every 100k events:",
    ]
    for label, key in (
        ("  replay, aggregated", "replay_aggregated"),
        ("  replay, row-level", "replay_row_level"),
        ("  baseline, Arrow", "baseline_arrow"),
    ):
        samples = results[key]["driver_rss_bytes_every_100k"]
        lines.append(f"{label}: " + ", ".join(f"{v / 2**20:.0f}" for v in samples))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    """The :class:`BenchConfig` of the command line."""
    d = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=d.events, help="archived events")
    parser.add_argument("--keys", type=int, default=d.keys, help="distinct user_id values")
    parser.add_argument("--days", type=int, default=d.days, help="days the events span")
    parser.add_argument("--slice-hours", type=int, default=d.slice_hours, help="replay slice")
    parser.add_argument("--check-events", type=int, default=d.check_events)
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first day")
    parser.add_argument("--root", type=Path, default=d.root)
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--master", default=d.master)
    parser.add_argument("--shuffle-partitions", type=int, default=d.shuffle_partitions)
    parser.add_argument("--driver-memory", default=d.driver_memory)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--label", default=d.label)
    parser.add_argument("--results-dir", type=Path, default=d.results_dir)
    args = parser.parse_args(argv)
    return BenchConfig(
        events=args.events,
        keys=args.keys,
        days=args.days,
        slice_hours=args.slice_hours,
        check_events=args.check_events,
        warmup=not args.no_warmup,
        root=args.root,
        keep=args.keep,
        master=args.master,
        shuffle_partitions=args.shuffle_partitions,
        driver_memory=args.driver_memory,
        seed=args.seed,
        label=args.label,
        results_dir=args.results_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the summary, write the JSON; return the exit status."""
    cfg, results = run_bench(
        "replay", argv, logger=log, parse_args=parse_args, run=run, format_results=format_results
    )
    check_result = results["check"]
    sides = [results[k] for k in ("baseline", "baseline_arrow")] + [
        results[k] for k in ("replay_aggregated", "replay_row_level")
    ]
    failed = (
        check_result["aggregated_matched"] != check_result["aggregated_values"]
        or check_result["row_events_matched"] != check_result["row_events"]
        or any(side["events"] != cfg.events or side["out_of_order"] for side in sides)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
