"""A class-data archive that makes the tests' short-lived Spark drivers start faster.

Most of the suite's Spark drivers live for seconds: the crash tests' ingestion processes,
the runs ``dagster dev`` launches, the CLI materialization. Each pays for loading and
verifying Spark's classes and for compiling them hot. A dynamic CDS archive
(Java's ``-XX:ArchiveClassesAtExit``) recorded once by a short ingestion keeps those
classes pre-parsed; with the client compiler alone (``-XX:TieredStopAtLevel=1``, for the
drivers the tests start in their own processes) short-lived drivers finish about 40%
sooner (measured on 2 cores: an online and an offline crash driver, 57-69 s without,
35-39 s with).

``python -m tests.jvm_archive`` records the archive under ``.services/spark/cds/``
(``scripts/test.sh`` does, once per Java, pyspark and jar set); ``tests/conftest.py``
then passes the archive to every JVM the tests start through ``JAVA_TOOL_OPTIONS``, and
:func:`short_lived` adds the client compiler for the tests' driver processes.
Without an archive the tests run as before, only slower. ``scripts/services.py`` keeps
the options away from the long-running Kafka and Cassandra servers.

The options are for tests only: a long-running ingestion wants the optimizing compiler
(the pytest process's own driver, which runs the whole suite, keeps it too).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyspark

REPO = Path(__file__).resolve().parents[1]
SERVICES_SH = REPO / "scripts" / "services.sh"
#: Options for every test JVM, with ``{archive}`` to fill in. The JVM runs without the
#: archive, silently, if it does not match.
OPTIONS = "-XX:SharedArchiveFile={archive} -Xlog:cds=off -Xlog:cds+dynamic=off"
#: Only for the drivers the tests start in their own processes, which live for seconds:
#: the pytest process's own driver runs for the whole suite and is faster optimized.
SHORT_LIVED = "-XX:TieredStopAtLevel=1"


def _services_dir() -> Path:
    raw = os.environ.get("FS_SERVICES_DIR", "").strip()
    return Path(raw).resolve() if raw else REPO / ".services"


def spark_jars() -> list[str]:
    """The connector jars every test Spark driver loads, as ``scripts/services.sh`` lists."""
    out = subprocess.run(
        [str(SERVICES_SH), "spark-jars"], check=True, capture_output=True, text=True
    ).stdout
    return [jar for jar in out.strip().split(",") if jar]


def archive_path(jars: list[str]) -> Path:
    """Where the archive for this Java, this pyspark and these jars lives.

    An archive recorded with other classes would be refused by the JVM (which then runs
    without it); naming it by what it holds keeps one valid archive per combination.
    """
    java = shutil.which("java") or "java"
    version = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    identity = {
        "java": os.path.realpath(java),
        "version": version,
        "pyspark": pyspark.__version__,
        "pyspark_home": str(Path(pyspark.__file__).parent),
        "jars": sorted(jars),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return _services_dir() / "spark" / "cds" / f"spark-{digest}.jsa"


def java_options() -> str | None:
    """The options for test JVMs if the archive is there, else None."""
    try:
        archive = archive_path(spark_jars())
    except (OSError, subprocess.CalledProcessError):  # no jars yet: nothing to speed up
        return None
    return OPTIONS.format(archive=archive) if archive.is_file() else None


def short_lived(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a process whose Spark driver lives for seconds: client compiler only."""
    if "SharedArchiveFile" not in env.get("JAVA_TOOL_OPTIONS", ""):
        return env  # no archive: leave the JVM as it is
    return {**env, "JAVA_TOOL_OPTIONS": f"{env['JAVA_TOOL_OPTIONS']} {SHORT_LIVED}"}


def _workload(work: Path) -> None:
    """A short online and offline ingestion of a row-level set, as the tests run them."""
    import fs_dagster as fs
    from fs_dagster.engine.spark_session import SparkSettings, create_spark_session
    from tests.integration.scenario import (
        SourceSpec,
        ingest_online,
        make_events,
        transactions_feature_set,
        write_json_file,
    )

    spark = create_spark_session(
        SparkSettings(master="local[2]", jars=tuple(spark_jars()), shuffle_partitions=2)
    )
    # Row-level only: an aggregated set as well loads few more classes and takes half as
    # long again to record, which every clean run pays.
    spec = SourceSpec("file", "warm", str(work / "stream"), max_offsets_per_trigger=1)
    events = [json.dumps(e) for e in make_events(60, users=5, seed=1)]
    write_json_file(Path(spec.location), events[:30])
    write_json_file(Path(spec.location), events[30:])
    feature_set = transactions_feature_set(spec, "warm")
    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(work / "online.db"),
        offline_root=str(work / "offline"),
        checkpoint_root=str(work / "checkpoints"),
        feature_sets=[feature_set],
        spark=spark,
    )
    ingest_online(spark, feature_set, client)
    client.get_online_features(feature_set, ["u0"])
    spark.stop()


def record() -> Path | None:
    """Record the archive if it is missing; returns its path (None if Java refused)."""
    jars = spark_jars()
    archive = archive_path(jars)
    if archive.is_file():
        print(f"jvm archive: {archive.name} already recorded")
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    for stale in archive.parent.glob("spark-*.jsa*"):
        stale.unlink()
    partial = archive.with_suffix(".jsa.partial")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fs-jvm-archive-") as work:
        env = dict(os.environ, JAVA_TOOL_OPTIONS=f"-XX:ArchiveClassesAtExit={partial}")
        result = subprocess.run(
            [sys.executable, "-m", "tests.jvm_archive", "--workload", work],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0 or not partial.is_file():
        # The tests run without it, slower; say why and go on.
        print(f"jvm archive: not recorded (exit {result.returncode}):\n{result.stderr[-3000:]}")
        partial.unlink(missing_ok=True)
        return None
    partial.replace(archive)
    took = time.monotonic() - started
    print(f"jvm archive: recorded {archive.name} in {took:.0f} s")
    return archive


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--workload":
        _workload(Path(sys.argv[2]))
    else:
        record()
