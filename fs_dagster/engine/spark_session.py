"""Building the one Spark session the engine runs on.

Everything that configures Spark for fs-dagster lives here: connector jars, Delta Lake,
s3a pointed at any S3-compatible endpoint, and the settings that make event-time work
predictable (UTC session time zone). The Dagster resource and the tests both call
:func:`create_spark_session`, so a run and a test see the same Spark.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

__all__ = ["S3Settings", "SparkSettings", "create_spark_session", "one_wave", "spark_conf"]


@dataclass(frozen=True)
class S3Settings:
    """How s3a reaches the offline store's object storage.

    Attributes:
        endpoint: URL of an S3-compatible server (for example ``http://127.0.0.1:9000``);
            ``None`` for AWS S3 itself.
        access_key: access key id; ``None`` to use the default AWS credential chain.
        secret_key: secret access key. Never logged.
        region: signing region.
        path_style: path-style addressing, which most non-AWS servers need.
    """

    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    path_style: bool = True


@dataclass(frozen=True)
class SparkSettings:
    """Settings of the Spark session fs-dagster runs on.

    Attributes:
        master: Spark master URL; ``local[*]`` runs in-process.
        app_name: application name shown in the Spark UI.
        jars: absolute paths of extra connector jars (Kafka source and sink, s3a and its
            AWS SDK, Delta). ``scripts/services.sh spark-jars`` prints the list.
        s3: s3a settings, or ``None`` when the offline store is a local path.
        shuffle_partitions: ``spark.sql.shuffle.partitions``; small by default because
            feature micro-batches are small.
        ui_enabled: whether to start the Spark web UI.
        conf: any further Spark settings; they win over the ones derived above.
    """

    master: str = "local[*]"
    app_name: str = "fs-dagster"
    jars: tuple[str, ...] = ()
    s3: S3Settings | None = None
    shuffle_partitions: int = 4
    ui_enabled: bool = False
    conf: Mapping[str, str] = field(default_factory=dict)


def spark_conf(settings: SparkSettings) -> dict[str, str]:
    """Return the Spark configuration derived from ``settings``.

    Kept separate from :func:`create_spark_session` so that a Dagster ``PySparkResource``
    can be given the same configuration.
    """
    conf: dict[str, str] = {
        "spark.master": settings.master,
        "spark.app.name": settings.app_name,
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        # Delta rebuilds table state with this many tasks (default 50): far too many for
        # feature tables read at every micro-batch.
        "spark.databricks.delta.snapshotPartitions": str(settings.shuffle_partitions),
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": str(settings.ui_enabled).lower(),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
        # With it on, every DataFrame and column function pyspark calls first asks the JVM
        # for the active session and a setting, then records its Python call site there:
        # about 260 of a row-level online micro-batch's 480 Py4J round trips, for error
        # contexts that would point at fs-dagster's engine, not at the user's code.
        "spark.python.sql.dataFrameDebugging.enabled": "false",
        # Spark redacts any setting whose key or value matches this pattern: in the UI's
        # environment tab, in logs (the Kafka connector's included) and, besides
        # spark.sql.redaction.options.regex, in the data source options plans show.
        # keystore.key: a Kafka client's private key, passed inline; PRIVATE KEY: a PEM key.
        "spark.redaction.regex": (
            "(?i)secret|password|token|access[.]key|sasl[.]jaas|keystore[.]key|PRIVATE KEY"
        ),
        "spark.driver.extraJavaOptions": "-Dio.netty.tryReflectionSetAccessible=true",
    }
    if settings.master.startswith("local"):
        # Local Python workers must use the driver's interpreter (its virtualenv has
        # pandas and pyarrow); on a cluster the executors' Python is the cluster's.
        conf["spark.executorEnv.PYSPARK_PYTHON"] = sys.executable
        # The host name may resolve to a non-loopback address; a local Spark stays local.
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        conf.update(_local_checkpoint_conf(settings.jars))
    if settings.jars:
        conf["spark.jars"] = ",".join(settings.jars)
    if settings.s3 is not None:
        conf.update(_s3a_conf(settings.s3))
    ours = conf.get(_DRIVER_CLASS_PATH)
    conf.update(settings.conf)
    theirs = settings.conf.get(_DRIVER_CLASS_PATH)
    if ours and theirs and ours != theirs:
        conf[_DRIVER_CLASS_PATH] = os.pathsep.join([ours, theirs])
    return conf


_DRIVER_CLASS_PATH = "spark.driver.extraClassPath"
#: The jar (in the Spark jar set, ``scripts/maven/spark/pom.xml``) of a local Hadoop file
#: system that sets permissions with java.nio, and the class it provides.
_NIO_LOCAL_FS_JAR = "hadoop-bare-naked-local-fs-"
_NIO_LOCAL_FS_CLASS = "com.globalmentor.apache.hadoop.fs.BareLocalFileSystem"


def _local_checkpoint_conf(jars: tuple[str, ...]) -> dict[str, str]:
    """Settings that keep a local master's streaming checkpoints from forking processes.

    Hadoop's local file system, without its native library (pyspark ships none), runs
    ``chmod`` in a child process for every file it creates, and its ``FileContext``
    (Spark's default checkpoint writer) ``readlink`` for every rename: two commits a
    micro-batch, together about 120 ms of a 470 ms cycle on 2 cores. Checkpoints
    written through the ``FileSystem`` API skip the ``readlink``; the java.nio file
    system, when its jar is in the set, skips the ``chmod``. On a local disk both
    writers check that a batch's file is absent before renaming onto it (neither rename
    is atomic there), so Spark's guard against a second writer of the same batch is what
    it was.
    """
    conf = {
        "spark.sql.streaming.checkpointFileManagerClass": (
            "org.apache.spark.sql.execution.streaming.checkpointing."
            "FileSystemBasedCheckpointFileManager"
        )
    }
    nio = [jar for jar in jars if Path(jar).name.startswith(_NIO_LOCAL_FS_JAR)]
    if nio:
        # Hadoop loads file systems with the JVM's class loader, before spark.jars exist.
        conf[_DRIVER_CLASS_PATH] = nio[0]
        conf["spark.hadoop.fs.file.impl"] = _NIO_LOCAL_FS_CLASS
    return conf


def _s3a_conf(s3: S3Settings) -> dict[str, str]:
    prefix = "spark.hadoop.fs.s3a."
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        prefix + "path.style.access": str(s3.path_style).lower(),
        prefix + "endpoint.region": s3.region,
        prefix + "change.detection.mode": "none",
    }
    if s3.endpoint:
        conf[prefix + "endpoint"] = s3.endpoint
        conf[prefix + "connection.ssl.enabled"] = str(s3.endpoint.startswith("https")).lower()
    if s3.access_key and s3.secret_key:
        conf[prefix + "access.key"] = s3.access_key
        conf[prefix + "secret.key"] = s3.secret_key
        conf[prefix + "aws.credentials.provider"] = (
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        )
    return conf


def create_spark_session(settings: SparkSettings) -> SparkSession:
    """Create (or return the running) Spark session configured by ``settings``.

    Spark allows one active session per driver process; when one is already running its
    runtime-settable options are updated, and static options (jars, master) stay as
    first set.

    Example:
        >>> spark = create_spark_session(SparkSettings(master="local[2]"))  # doctest: +SKIP
    """
    if settings.master.startswith("local"):
        # pyspark picks the worker interpreter from this variable when the context starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def one_wave(df: DataFrame) -> DataFrame:
    """``df`` in at most as many partitions as Spark runs tasks at once, without a shuffle.

    A small streaming batch costs its tasks more than its rows: a Kafka batch has one
    partition per topic partition and a shuffle ``spark.sql.shuffle.partitions``, and a
    second wave of tasks, each starting its Python worker's work again, costs more than
    the first wave's rows (measured in ``bench/README.md``). One wave is as parallel.
    """
    return df.coalesce(df.sparkSession.sparkContext.defaultParallelism)
