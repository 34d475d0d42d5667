"""Dagster resources: where the feature store keeps data, and the Spark session."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from dagster import ConfigurableResource
from dagster_pyspark import LazyPySparkResource
from pydantic import Field
from pyspark.sql import SparkSession

from fs_dagster.definitions.feature_set import ClusterTemplate, FeatureSet
from fs_dagster.engine.spark_session import SparkSettings, spark_conf
from fs_dagster.planning.plan import StoragePlan, join_path
from fs_dagster.stores.online.base import OnlineStore
from fs_dagster.stores.online.cassandra import CassandraOnlineStore
from fs_dagster.stores.online.sqlite import SqliteOnlineStore

__all__ = [
    "FeatureStoreResource",
    "interrupts_deferred",
    "run_spark_conf",
    "run_spark_session",
    "spark_resource",
]


class FeatureStoreResource(ConfigurableResource):  # type: ignore[type-arg]
    """Where a feature store keeps its data.

    Secrets (``cassandra_password``) should be given as ``dagster.EnvVar("NAME")``: the
    UI then shows the variable's name, never its value.

    Example:
        >>> FeatureStoreResource(offline_root="s3a://features/offline",
        ...                      checkpoint_root="s3a://features/checkpoints",
        ...                      online_store="cassandra", cassandra_hosts=["10.0.0.5"],
        ...                      cassandra_password=EnvVar("CASSANDRA_PASSWORD"))
        ... # doctest: +SKIP
    """

    offline_root: str = Field(description="Offline store root: a local path or s3a:// URL.")
    checkpoint_root: str = Field(description="Root of the streaming checkpoints.")
    online_store: str = Field(default="sqlite", description="'sqlite' or 'cassandra'.")
    sqlite_path: str = Field(default=".fs_dagster/online.db")
    cassandra_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    cassandra_port: int = 9042
    cassandra_keyspace: str = "fs_dagster"
    cassandra_username: str | None = None
    cassandra_password: str | None = None
    cassandra_replication_factor: int = 1

    def create_online_store(self) -> OnlineStore:
        """The configured online store."""
        if self.online_store == "sqlite":
            return SqliteOnlineStore(self.sqlite_path)
        if self.online_store == "cassandra":
            return CassandraOnlineStore(
                self.cassandra_hosts,
                port=self.cassandra_port,
                keyspace=self.cassandra_keyspace,
                username=self.cassandra_username,
                password=self.cassandra_password,
                replication={
                    "class": "SimpleStrategy",
                    "replication_factor": self.cassandra_replication_factor,
                },
            )
        raise ValueError(
            f"online_store '{self.online_store}' is not supported; use 'sqlite' or 'cassandra'"
        )

    @property
    def online_store_kind(self) -> str:
        """``sqlite`` or ``cassandra`` (for Dagster kinds)."""
        return self.online_store

    @property
    def offline_location(self) -> str:
        """The offline root, for metadata (URLs carry no credentials here)."""
        return self.offline_root

    def plan(self, feature_set: FeatureSet) -> StoragePlan:
        """Storage locations of ``feature_set``."""
        return StoragePlan(feature_set, self.offline_root, self.checkpoint_root)

    def checkpoint(self, feature_set: FeatureSet, pipeline: str) -> str:
        """Checkpoint path of one pipeline, for metadata."""
        return join_path(self.checkpoint_root, feature_set.storage_name, pipeline)


def spark_resource(settings: SparkSettings) -> LazyPySparkResource:
    """A dagster-pyspark resource configured like :func:`create_spark_session`.

    The session is created when a run first asks for it, so loading the code location
    does not start Spark.
    """
    if settings.master.startswith("local"):
        # pyspark picks the worker interpreter from this variable when the context starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    s3 = settings.s3
    if s3 is not None and s3.access_key and s3.secret_key:
        # Resource config is shown in the Dagster UI: keys go to the environment, where
        # s3a's default credential chain reads them, never into the Spark config.
        os.environ["AWS_ACCESS_KEY_ID"] = s3.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = s3.secret_key
        settings = replace(settings, s3=replace(s3, access_key=None, secret_key=None))
    return LazyPySparkResource(spark_config=spark_conf(settings))


def run_spark_conf(base: Mapping[str, Any], template: ClusterTemplate) -> dict[str, str]:
    """A run's Spark settings: the resource's, sized by the feature set's cluster template.

    On a local master the template is ignored (a local Spark has only the driver); on a
    cluster the template's executor and driver sizes win over the resource's defaults.
    """
    conf = {str(k): str(v) for k, v in base.items()}
    if not conf.get("spark.master", "local[*]").startswith("local"):
        conf.update(template.spark_conf())
    return conf


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT back while Spark's JVM starts, and deliver it once it is up.

    PySpark starts its JVM with SIGINT ignored and then waits for a connection file in a
    temporary directory. Interrupted in that wait, it deletes the directory; the JVM's
    main thread then fails, but its py4j thread keeps the JVM alive with no parent: an
    orphan that only SIGKILL ends. Deferred, the interrupt stops a run whose Spark is up,
    and the JVM exits with it. Only the main thread can handle signals; elsewhere this
    does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, _frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)  # to the handler the run had


def run_spark_session(pyspark: LazyPySparkResource, template: ClusterTemplate) -> SparkSession:
    """The Spark session of a run (each Dagster run is its own process and session)."""
    conf = run_spark_conf(pyspark.spark_config, template)
    with interrupts_deferred():
        if conf == {str(k): str(v) for k, v in pyspark.spark_config.items()}:
            session: SparkSession = pyspark.spark_session
            return session
        builder = SparkSession.builder
        for key, value in conf.items():
            builder = builder.config(key, value)
        return builder.getOrCreate()
