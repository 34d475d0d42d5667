"""What the benchmarks share: Kafka topics, Cassandra sessions, fs-dagster queries,
service checks, results files, text tables and the peak memory of the process tree."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fs_dagster as fs
from fs_dagster.engine.pipeline import BatchReport, IngestionQuery
from fs_dagster.planning.plan import StoragePlan

if TYPE_CHECKING:
    from pyspark.sql.streaming.query import StreamingQuery

    from fs_dagster.aggregation.plan import AggregationPlan

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench")


def check_services(bootstrap: str, cassandra_host: str, cassandra_port: int) -> None:
    """Fail early, saying what to run, when Kafka or Cassandra is not listening."""
    host, _, port = bootstrap.rpartition(":")
    for service, address in (
        ("kafka", (host, int(port))),
        ("cassandra", (cassandra_host, cassandra_port)),
    ):
        try:
            socket.create_connection(address, timeout=5).close()
        except OSError:
            raise SystemExit(
                f"{service} is not listening on {address[0]}:{address[1]}; "
                "start it with scripts/services.sh start kafka cassandra"
            ) from None


def write_results(results: dict[str, Any], results_dir: Path, bench: str) -> Path:
    """Write ``results`` as ``<results_dir>/<bench>-<UTC time>.json``; returns the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = results_dir / f"{bench}-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def run_bench(
    name: str,
    argv: Sequence[str] | None,
    *,
    logger: logging.Logger,
    parse_args: Callable[[Sequence[str] | None], Any],
    run: Callable[[Any], dict[str, Any]],
    format_results: Callable[[dict[str, Any]], str],
) -> tuple[Any, dict[str, Any]]:
    """What every benchmark's ``main`` does: log its progress at INFO (py4j and the
    Cassandra driver stay at WARNING), parse ``argv``, run, write the results as
    ``<results_dir>/<name>-<UTC time>.json``, print the summary and that path; returns
    the configuration and the results, for the caller's exit status."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    logger.setLevel(logging.INFO)
    cfg = parse_args(argv)
    results = run(cfg)
    path = write_results(results, cfg.results_dir, name)
    print(format_results(results))
    print(f"\nresults: {path}")
    return cfg, results


def kafka_common(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "broker.address.family": "v4"}


def create_topic(bootstrap: str, name: str, partitions: int, timeout: float = 30) -> None:
    """Create ``name`` and wait until every partition has a leader."""
    # NewTopic is documented here; confluent-kafka's stubs just do not re-export it.
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(kafka_common(bootstrap))
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)],
        operation_timeout=timeout,
    )
    futures[name].result(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
        if (
            topic is not None
            and topic.error is None
            and len(topic.partitions) == partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
        ):
            return
        time.sleep(0.2)
    raise TimeoutError(f"Kafka topic {name} had no leaders after {timeout} s")


def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Delete ``names``; a failure is logged, not raised (this runs during cleanup)."""
    if not names:
        return
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_common(bootstrap))
    for name, future in admin.delete_topics(list(names), operation_timeout=30).items():
        try:
            future.result(timeout=30)
        except Exception as exc:
            log.warning("could not delete topic %s: %s", name, exc)


@dataclass
class ReportLog:
    """Batch reports with the monotonic time each one reached the driver."""

    target_rows: int | None = None
    entries: list[tuple[BatchReport, float]] = field(default_factory=list)
    reached: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, report: BatchReport) -> None:
        with self.lock:
            self.entries.append((report, time.monotonic()))
            rows = sum(r.rows_in for r, _ in self.entries)
        if self.target_rows is not None and rows >= self.target_rows:
            self.reached.set()

    def snapshot(self) -> list[tuple[BatchReport, float]]:
        with self.lock:
            return list(self.entries)


def check_query(ingestion: IngestionQuery) -> None:
    if not ingestion.query.isActive:
        raise RuntimeError(f"the ingestion query stopped: {ingestion.query.exception()}")


def wait_idle(query: StreamingQuery, timeout: float = 60) -> None:
    """Wait (up to ``timeout``) until ``query`` is between batches: stopping one
    mid-batch interrupts Spark jobs, which Spark logs as errors that are not the bench's."""
    deadline = time.monotonic() + timeout
    while query.isActive and time.monotonic() < deadline:
        if not query.status["isTriggerActive"]:
            break
        time.sleep(0.1)


def stop_when_idle(ingestion: IngestionQuery, timeout: float = 60) -> None:
    """Stop the ingestion between batches (see :func:`wait_idle`)."""
    wait_idle(ingestion.query, timeout)
    ingestion.stop()


def storage_plan(feature_set: fs.FeatureSet, workdir: Path) -> StoragePlan:
    return StoragePlan(feature_set, str(workdir / "offline"), str(workdir / "checkpoints"))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def spark_jars() -> tuple[str, ...]:
    """The connector jars ``scripts/services.sh spark-jars`` prints."""
    output = subprocess.run(
        [str(REPO / "scripts" / "services.sh"), "spark-jars"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tuple(p for p in output.strip().split(",") if p)


def cassandra_cluster(host: str, port: int) -> Any:
    """A driver cluster as fs-dagster's store builds it (round robin, 30 s requests)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=30)
    return Cluster(
        [host],
        port=port,
        protocol_version=5,
        connect_timeout=10,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )


def cassandra_session(host: str, port: int) -> Any:
    return cassandra_cluster(host, port).connect()


class BareTileSlice:
    """The tile slice requests of an aggregated online read from a Cassandra store, made
    through the bare driver on the store's own connection: the floor of that read (the
    requests and their rows; no window code, no frame).

    The same query as the store's, its key list in requests of ``keys_per_request`` keys
    (the store's grouping on one node), all in flight together when there are several.
    """

    def __init__(
        self, store: fs.CassandraOnlineStore, plan: AggregationPlan, keys_per_request: int = 10
    ) -> None:
        *prefix, last = plan.tile_table.key_names
        if prefix:
            raise ValueError("BareTileSlice: one key column only")
        self.plan = plan
        self.keys_per_request = keys_per_request
        self.session = store._session()  # the store's connection: the same driver settings
        table = f'"{store.keyspace}"."{plan.tile_table.name}"'
        self.statement = self.session.prepare(
            f'SELECT "{last}", resolution, tile_start, version, state FROM {table} '
            f'WHERE "{last}" IN ? AND (resolution, tile_start) >= (?, ?) '
            "AND (resolution, tile_start) <= (?, ?)"
        )

    def bounds(self, at_micros: int) -> tuple[int, int, int, int]:
        """The slice of a read at ``at_micros``: the finest rung's first tile to the
        coarsest rung's last."""
        from fs_dagster.aggregation.tiles import read_spans

        spans = sorted(
            (r.resolution, r.first, r.last)
            for r in read_spans(tuple(self.plan.window_seconds), at_micros, self.plan.resolutions)
        )
        return (*spans[0][:2], spans[-1][0], spans[-1][2])

    def read(self, keys: Sequence[Any], bounds: tuple[int, int, int, int]) -> int:
        """Rows of ``keys``' tiles within ``bounds``, every row fetched."""
        from cassandra.concurrent import execute_concurrent

        step = self.keys_per_request
        args = [(list(keys[i : i + step]), *bounds) for i in range(0, len(keys), step)]
        if len(args) == 1:
            return len(list(self.session.execute(self.statement, args[0])))
        results = execute_concurrent(
            self.session, [(self.statement, a) for a in args], raise_on_first_error=True
        )
        return sum(len(list(rows)) for _ok, rows in results)


def drop_keyspace(host: str, port: int, keyspace: str) -> None:
    """Drop ``keyspace``; a failure is logged, not raised (this runs during cleanup)."""
    try:
        session = cassandra_session(host, port)
    except Exception as exc:
        log.warning("could not connect to Cassandra to drop %s: %s", keyspace, exc)
        return
    try:
        session.execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=120)
    except Exception as exc:
        log.warning("could not drop keyspace %s: %s", keyspace, exc)
    finally:
        session.cluster.shutdown()


#: Processes that :func:`process_tree_rss` leaves out, with their descendants: load
#: generators a bench starts beside what it measures (see :func:`not_measured`).
_NOT_MEASURED: set[int] = set()


@contextmanager
def not_measured(pid: int) -> Iterator[None]:
    """Leave process ``pid`` and its descendants out of :func:`process_tree_rss` (and so
    out of :class:`PeakMemory`) while the block runs: e.g. the freshness prober, which
    produces and reads as clients would and is not part of the pipeline measured."""
    _NOT_MEASURED.add(pid)
    try:
        yield
    finally:
        _NOT_MEASURED.discard(pid)


def process_tree_rss(root: int | None = None) -> int:
    """Resident bytes of process ``root`` (default: this one) and all its descendants.

    Spark's JVM is a child of the driver and its Python workers children of the JVM, so
    this counts all three; processes marked :func:`not_measured` are left out. Pages
    shared between processes (forked Python workers) count once per process, as
    ``psutil``'s ``rss`` would: an upper bound. Linux only: it reads ``/proc`` because
    psutil is not one of the project's dependencies.
    """
    return process_tree_memory(root, pss=False)[0]


#: Below this resident size a process is measured by its proportional set size too
#: (:func:`process_tree_memory`); reading it costs the kernel a walk of the process's
#: pages: 13 ms for a 0.7 GiB JVM, too much four times a second.
_PSS_BELOW_BYTES = 512 * 2**20


def process_tree_memory(root: int | None = None, *, pss: bool = True) -> tuple[int, int]:
    """:func:`process_tree_rss`, and the same tree with the pages that forked processes
    share counted once (without ``pss``, the resident sum again: no ``smaps_rollup`` read).

    The second figure takes, for each process under ``_PSS_BELOW_BYTES`` (Spark's forked
    Python workers and their daemon), its proportional set size (``Pss`` of
    ``/proc/<pid>/smaps_rollup``: each shared page divided among the processes sharing
    it), and for the larger ones (the driver, Spark's JVM: they share no pages with the
    rest of the tree but libraries) their resident size.
    """
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name (in parentheses) may contain spaces; the parent id follows it.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    page = os.sysconf("SC_PAGE_SIZE")
    total = shared_once = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid in _NOT_MEASURED:
            continue
        pending.extend(children.get(pid, ()))
        try:
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            proportional = _pss(pid) if pss and resident < _PSS_BELOW_BYTES else None
        except OSError:
            continue
        total += resident
        shared_once += resident if proportional is None else proportional
    return total, shared_once


def _pss(pid: int) -> int | None:
    """Proportional set size of ``pid`` in bytes (``None`` where the kernel has no
    ``smaps_rollup``)."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except FileNotFoundError:
        return None
    for line in rollup.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


class PeakMemory:
    """Samples :func:`process_tree_rss` in a daemon thread and keeps the peak.

    ``reset()`` starts a new span; ``peak_bytes`` is the largest sample since then and
    ``overall_peak_bytes`` the largest since ``start()``. With ``pss`` it also reads the
    small processes' ``smaps_rollup`` for ``peak_pss_bytes`` (a few ms a sample, so only
    where that figure is reported).

    Example:
        >>> with PeakMemory() as memory:  # doctest: +SKIP
        ...     memory.reset(); run(); print(memory.peak_bytes)
    """

    def __init__(self, interval: float = 0.25, *, pss: bool = False) -> None:
        self.interval = interval
        self.pss = pss
        self.peak_bytes = 0
        #: With ``pss``, the peak of the tree with shared pages counted once
        #: (:func:`process_tree_memory`); else the same as ``peak_bytes``.
        self.peak_pss_bytes = 0
        self.overall_peak_bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        """Take one sample now, update the peaks and return it."""
        current, shared_once = process_tree_memory(pss=self.pss)
        with self._lock:
            self.peak_bytes = max(self.peak_bytes, current)
            self.peak_pss_bytes = max(self.peak_pss_bytes, shared_once)
            self.overall_peak_bytes = max(self.overall_peak_bytes, current)
        return current

    def reset(self) -> None:
        """Start a new span: the peak becomes the current size."""
        current, shared_once = process_tree_memory(pss=self.pss)
        with self._lock:
            self.peak_bytes = current
            self.peak_pss_bytes = shared_once
            self.overall_peak_bytes = max(self.overall_peak_bytes, current)

    def start(self) -> PeakMemory:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def measured(memory: PeakMemory, action: Callable[[], Any]) -> tuple[float, Any, dict[str, Any]]:
    """Run ``action``; its wall-clock seconds, its result, and the peak memory and load
    average while it ran (for a results row)."""
    load_before = os.getloadavg()[0]
    memory.reset()
    began = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - began
    memory.sample()
    return (
        seconds,
        result,
        {
            "peak_memory_bytes": memory.peak_bytes,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
        },
    )
