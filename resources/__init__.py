"""Resource wiring of the example project, chosen by environment variables.

With no variables set everything is embedded: a directory of JSON files is the stream,
SQLite the online store and a local directory the offline store, all under
``FS_DAGSTER_HOME`` (default ``.fs_dagster``). Each variable below switches one part to
a real service:

- ``FS_KAFKA_BOOTSTRAP_SERVERS``: read the example stream from Kafka.
- ``FS_ONLINE_STORE=cassandra`` with ``FS_CASSANDRA_HOSTS``, ``FS_CASSANDRA_PORT``,
  ``FS_CASSANDRA_KEYSPACE``, ``FS_CASSANDRA_USERNAME``, ``FS_CASSANDRA_PASSWORD``.
- ``FS_OFFLINE_ROOT`` / ``FS_CHECKPOINT_ROOT``: e.g. ``s3a://bucket/offline``, with
  ``FS_S3_ENDPOINT`` for an S3-compatible server and ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` for credentials.
- ``FS_SPARK_MASTER``: a Spark master URL (default ``local[*]``);
  ``FS_SPARK_JARS``: comma-separated connector jars, or ``FS_SPARK_JARS_DIR``: a
  directory of them (default ``.services/spark/lib``, filled by
  ``scripts/services.sh fetch spark``).

``FS_DEMO_SCHEDULE=off`` leaves the ``demo_events_every_minute`` schedule stopped (it
runs by default), for tests that must see only the runs they start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dagster import EnvVar
from dagster_pyspark import LazyPySparkResource

from fs_dagster import FeatureStoreResource, S3Settings, SparkSettings, spark_resource

__all__ = ["ProjectSettings", "project_resources", "project_settings"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ProjectSettings:
    """The example project's environment, read once."""

    home: Path
    kafka_bootstrap_servers: str | None
    stream_dir: Path
    demo_schedule: bool

    @property
    def uses_kafka(self) -> bool:
        """Whether the example stream is Kafka rather than files."""
        return bool(self.kafka_bootstrap_servers)


def project_settings() -> ProjectSettings:
    """Read the environment."""
    home = Path(os.environ.get("FS_DAGSTER_HOME", PROJECT_ROOT / ".fs_dagster")).resolve()
    return ProjectSettings(
        home=home,
        kafka_bootstrap_servers=os.environ.get("FS_KAFKA_BOOTSTRAP_SERVERS") or None,
        stream_dir=home / "stream",
        demo_schedule=_on_or_off("FS_DEMO_SCHEDULE", default=True),
    )


def _on_or_off(variable: str, *, default: bool) -> bool:
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    if raw.lower() in ("on", "off"):
        return raw.lower() == "on"
    raise ValueError(f"{variable}={raw!r} is not understood; use 'on' or 'off'")


def _spark_jars() -> tuple[str, ...]:
    listed = os.environ.get("FS_SPARK_JARS")
    if listed:
        return tuple(j for j in listed.split(",") if j)
    directory = Path(os.environ.get("FS_SPARK_JARS_DIR", PROJECT_ROOT / ".services/spark/lib"))
    return tuple(sorted(str(p) for p in directory.glob("*.jar")))


def spark_settings() -> SparkSettings:
    """Spark settings from the environment."""
    endpoint = os.environ.get("FS_S3_ENDPOINT")
    offline = os.environ.get("FS_OFFLINE_ROOT", "")
    s3 = None
    if endpoint or offline.startswith("s3a://"):
        s3 = S3Settings(endpoint=endpoint)
    return SparkSettings(
        master=os.environ.get("FS_SPARK_MASTER", "local[*]"),
        app_name="fs-dagster-example",
        jars=_spark_jars(),
        s3=s3,
        shuffle_partitions=int(os.environ.get("FS_SPARK_SHUFFLE_PARTITIONS", "4")),
    )


def feature_store_resource(settings: ProjectSettings) -> FeatureStoreResource:
    """The feature store resource from the environment."""
    kind = os.environ.get("FS_ONLINE_STORE", "sqlite")
    password = EnvVar("FS_CASSANDRA_PASSWORD") if os.environ.get("FS_CASSANDRA_PASSWORD") else None
    return FeatureStoreResource(
        offline_root=os.environ.get("FS_OFFLINE_ROOT", str(settings.home / "offline")),
        checkpoint_root=os.environ.get("FS_CHECKPOINT_ROOT", str(settings.home / "checkpoints")),
        online_store=kind,
        sqlite_path=os.environ.get("FS_SQLITE_PATH", str(settings.home / "online.db")),
        cassandra_hosts=os.environ.get("FS_CASSANDRA_HOSTS", "127.0.0.1").split(","),
        cassandra_port=int(os.environ.get("FS_CASSANDRA_PORT", "9042")),
        cassandra_keyspace=os.environ.get("FS_CASSANDRA_KEYSPACE", "fs_dagster"),
        cassandra_username=os.environ.get("FS_CASSANDRA_USERNAME") or None,
        cassandra_password=password,
    )


def project_resources() -> tuple[FeatureStoreResource, LazyPySparkResource]:
    """The feature store and Spark resources of the example project."""
    return feature_store_resource(project_settings()), spark_resource(spark_settings())
