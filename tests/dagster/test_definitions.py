"""The example project's ``definitions`` module, loaded as ``dagster dev -m definitions`` would.

The module reads ``FS_DAGSTER_HOME`` and friends when it is imported, so every test
imports it afresh under its own environment.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import (
    AssetKey,
    BackfillPolicy,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    EnvVar,
    TimeWindowPartitionsDefinition,
)
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value

from fs_dagster import FeatureStoreResource

pytestmark = [pytest.mark.dagster]

REPO = Path(__file__).resolve().parents[2]
PROJECT_MODULES = ("definitions", "jobs", "resources")
VARIABLES = (
    "FS_KAFKA_BOOTSTRAP_SERVERS",
    "FS_ONLINE_STORE",
    "FS_OFFLINE_ROOT",
    "FS_CHECKPOINT_ROOT",
    "FS_SQLITE_PATH",
    "FS_CASSANDRA_HOSTS",
    "FS_CASSANDRA_USERNAME",
    "FS_CASSANDRA_PASSWORD",
    "FS_S3_ENDPOINT",
    "FS_SPARK_JARS",
    "FS_SPARK_MASTER",
)
PASSWORD = "Sup3r-s3cret-Cassandra-pw"
STORAGE = "user_transactions"
OFFLINE = AssetKey([STORAGE, "offline"])
ONLINE = AssetKey([STORAGE, "online"])
SOURCE = AssetKey(["sources", "transactions"])
SPEND = "user_spend"
BACKFILL = AssetKey([SPEND, "backfill"])
HISTORY_SOURCE = AssetKey(["sources", "transactions-history"])


def _forget_project_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in PROJECT_MODULES:
            del sys.modules[name]


def _resources(defs: Definitions) -> Mapping[str, Any]:
    assert defs.resources is not None
    return defs.resources


@pytest.fixture
def load_example(tmp_path: Path) -> Iterator[Callable[..., types.ModuleType]]:
    """Import ``definitions`` with ``FS_DAGSTER_HOME`` (and any given variables) set.

    The environment is restored afterwards, including what ``spark_resource`` sets for
    the run's Spark (``PYSPARK_PYTHON``).
    """
    saved = dict(os.environ)
    for name in VARIABLES:
        os.environ.pop(name, None)
    os.environ["FS_DAGSTER_HOME"] = str(tmp_path / "home")

    def load(**env: str) -> types.ModuleType:
        os.environ.update(env)
        _forget_project_modules()
        return importlib.import_module("definitions")

    try:
        yield load
    finally:
        _forget_project_modules()
        os.environ.clear()
        os.environ.update(saved)


def test_example_definitions_load(
    load_example: Callable[..., types.ModuleType], tmp_path: Path
) -> None:
    module = load_example()
    defs: Definitions = module.defs
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    home = tmp_path / "home"

    # Offline store: a materializable asset, downstream of the source.
    offline = graph.get(OFFLINE)
    assert offline.is_materializable
    assert offline.kinds == {"spark", "delta"}
    assert offline.owners == ["team:risk-team"]
    assert offline.group_name == STORAGE
    assert SOURCE in offline.parent_keys
    assert offline.description == "The latest card transaction of each user, for fraud scoring."

    # Online store: materialized by the long-running online run (which reports a
    # materialization while it goes on); its supervisor sensor targets it.
    online = graph.get(ONLINE)
    assert online.is_materializable
    assert online.metadata["fs_dagster/supervised_by"] == f"{STORAGE}__online_supervisor"
    assert online.kinds == {"spark", "sqlite"}
    assert online.owners == ["team:risk-team"]
    assert SOURCE in online.parent_keys

    # The source directory: external, upstream of both.
    source = graph.get(SOURCE)
    assert source.is_external and not source.is_materializable
    assert source.kinds == {"file"}
    assert str(home / "stream" / "transactions") in (source.description or "")

    for node in (offline, online):
        metadata = node.metadata
        assert metadata, node.key
        assert all(key.startswith("fs_dagster/") for key in metadata), sorted(metadata)
        assert metadata["fs_dagster/feature_set"] == "user-transactions"
        assert metadata["fs_dagster/key"] == "user_id"
        assert metadata["fs_dagster/timestamp_column"] == "ts"
        assert metadata["fs_dagster/offline_scheduling_policy"] == "*/10 * * * *"
        assert metadata["fs_dagster/online_trigger_interval_seconds"] == 5
        assert metadata["fs_dagster/online_ttl_seconds"] == 30 * 24 * 3600
        assert metadata["fs_dagster/owner"] == "risk-team"
    assert set(source.metadata) == {"fs_dagster/schema"}

    # The online ingestion job and the sensor that keeps it going.
    online_job = repo.get_job(f"{STORAGE}__online_ingestion")
    assert online_job.tags["fs_dagster/feature_set"] == "user-transactions"
    assert online_job.tags["fs_dagster/pipeline"] == "online"
    assert {"feature_store", "pyspark"} <= online_job.required_resource_keys
    sensor = repo.get_sensor_def(f"{STORAGE}__online_supervisor")
    assert sensor.job_name == online_job.name
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 15

    # The offline schedule materializes exactly the offline asset, on the feature set's cron.
    schedule = repo.get_schedule_def(f"{STORAGE}__offline_schedule")
    assert schedule.cron_schedule == "*/10 * * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert schedule.job_name == f"{STORAGE}__offline_ingestion"
    offline_job = repo.get_job(schedule.job_name)
    assert offline_job.asset_layer.executable_asset_keys == {OFFLINE}

    # The aggregated example: its own assets, supervisor and schedule over the same stream,
    # with what it serves in its metadata.
    spend_online = graph.get(AssetKey([SPEND, "online"]))
    assert SOURCE in spend_online.parent_keys
    assert spend_online.metadata["fs_dagster/windows"] == "1h, 1d, 7d"
    features = spend_online.metadata["fs_dagster/features"].split(", ")
    assert features[:3] == ["sum_amount_1h", "sum_amount_1d", "sum_amount_7d"]
    assert len(features) == 9
    assert "fs_dagster/windows" not in online.metadata  # row-level sets have none
    assert repo.get_sensor_def(f"{SPEND}__online_supervisor").job_name == (
        f"{SPEND}__online_ingestion"
    )

    # ... and its backfill: one daily partition per day of the history written under
    # FS_DAGSTER_HOME (the 7 days before today's midnight UTC), one run per range.
    history = home / "history" / "transactions"
    span = json.loads((history / "_range.json").read_text())
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert span == {
        "start": (end - timedelta(days=7)).isoformat(),
        "end": end.isoformat(),
        "rows": 3500,
    }
    rows = pd.read_parquet(history)
    assert len(rows) == 3500
    assert rows["ts"].min() >= end - timedelta(days=7) and rows["ts"].max() < end
    assert set(rows.columns) == {"user_id", "amount", "merchant", "is_remote", "ts"}
    backfill = graph.get(BACKFILL)
    assert backfill.is_materializable
    assert HISTORY_SOURCE in backfill.parent_keys
    assert graph.get(HISTORY_SOURCE).kinds == {"parquet"}
    assert backfill.backfill_policy == BackfillPolicy.single_run()
    partitions = backfill.partitions_def
    assert isinstance(partitions, TimeWindowPartitionsDefinition)
    days = [(end - timedelta(days=n)).date().isoformat() for n in range(7, 0, -1)]
    assert partitions.get_partition_keys() == days

    # The demo generator of the example project.
    assert repo.get_schedule_def("demo_events_every_minute").job_name == "demo_events"

    # Everything lives under FS_DAGSTER_HOME.
    store = _resources(defs)["feature_store"]
    assert isinstance(store, FeatureStoreResource)
    assert store.offline_root == str(home / "offline")
    assert store.checkpoint_root == str(home / "checkpoints")
    assert store.sqlite_path == str(home / "online.db")
    assert store.online_store == "sqlite"


def test_history_is_written_once_and_keeps_its_range(
    load_example: Callable[..., types.ModuleType], tmp_path: Path
) -> None:
    # Loaded again (another process, or after midnight): the same history, not rewritten.
    load_example()
    history = tmp_path / "home" / "history" / "transactions"
    written = {p.name: p.stat().st_mtime_ns for p in history.iterdir()}
    load_example()
    assert {p.name: p.stat().st_mtime_ns for p in history.iterdir()} == written

    # A history written on an earlier day keeps that day's range: the partitions of one
    # deployment do not move at midnight.
    generator = sys.modules["jobs.generator"]
    settings = sys.modules["resources"].project_settings()
    other = tmp_path / "other"
    earlier = datetime(2026, 1, 8, tzinfo=UTC)
    generator.ensure_history(replace(settings, home=other), end=earlier)
    module = load_example(FS_DAGSTER_HOME=str(other))
    graph = module.defs.get_repository_def().asset_graph
    partitions = graph.get(BACKFILL).partitions_def
    assert isinstance(partitions, TimeWindowPartitionsDefinition)
    assert partitions.get_partition_keys() == [f"2026-01-0{d}" for d in range(1, 8)]
    # The same end date always gives the same rows.
    again = generator.history_frame(earlier)
    pd.testing.assert_frame_equal(pd.read_parquet(other / "history" / "transactions"), again)


def test_loading_the_code_location_starts_no_spark(tmp_path: Path) -> None:
    # A fresh interpreter, as a code server is: loading must not launch a JVM.
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env["FS_DAGSTER_HOME"] = str(tmp_path / "home")
    script = (
        "import definitions\n"
        "from dagster import Definitions\n"
        "from pyspark import SparkContext\n"
        "Definitions.validate_loadable(definitions.defs)\n"
        "print('gateway', SparkContext._gateway, SparkContext._active_spark_context)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "gateway None None" in result.stdout


def test_cassandra_password_never_appears_in_definitions(
    load_example: Callable[..., types.ModuleType],
) -> None:
    module = load_example(
        FS_ONLINE_STORE="cassandra",
        FS_CASSANDRA_HOSTS="10.1.2.3,10.1.2.4",
        FS_CASSANDRA_USERNAME="feature_writer",
        FS_CASSANDRA_PASSWORD=PASSWORD,
    )
    defs: Definitions = module.defs
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert repo.asset_graph.get(ONLINE).kinds == {"spark", "cassandra"}

    resources = _resources(defs)
    store = resources["feature_store"]
    assert isinstance(store, FeatureStoreResource)
    assert store.online_store == "cassandra"
    assert store.cassandra_hosts == ["10.1.2.3", "10.1.2.4"]
    # The resource holds a reference to the variable, resolved only when a run starts.
    assert isinstance(store.cassandra_password, EnvVar)
    assert store.cassandra_password.env_var_name == "FS_CASSANDRA_PASSWORD"

    # What the webserver and the daemon get from the code location: the repository snapshot
    # (resources and their config, jobs with their run config schema, asset metadata).
    snapshot = serialize_value(RepositorySnap.from_def(repo))
    assert "FS_CASSANDRA_PASSWORD" in snapshot
    assert "feature_writer" in snapshot
    assert PASSWORD not in snapshot

    texts = [repr(store), str(store), str(resources["pyspark"])]
    for job in repo.get_all_jobs():
        texts.append(serialize_value(job.get_job_snapshot()))
    for key in repo.asset_graph.get_all_asset_keys():
        texts.append(str(repo.asset_graph.get(key).metadata))
    for text in texts:
        assert PASSWORD not in text

    # The run resolves the variable: the resource a run gets does carry it.
    resolved = store.process_config_and_initialize()
    assert resolved.cassandra_password == PASSWORD


def test_example_with_kafka_chains_merchant_activity_on_a_sink(
    load_example: Callable[..., types.ModuleType],
) -> None:
    """With Kafka, user-transactions publishes to a topic that merchant-activity reads."""
    module = load_example(FS_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9092")
    defs: Definitions = module.defs
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    sink = AssetKey([STORAGE, "sinks", "features_topic"])
    chained_source = AssetKey(["sources", "user-transaction-features"])

    node = graph.get(sink)
    assert node.is_external and node.kinds == {"kafka"}
    assert node.parent_keys == {ONLINE}
    assert node.metadata["fs_dagster/topic"] == "user-transactions-features"
    assert node.metadata["fs_dagster/attachment_point"] == "online"
    assert graph.get(chained_source).parent_keys == {sink}
    for pipeline in ("online", "offline"):
        assert chained_source in graph.get(AssetKey(["merchant_activity", pipeline])).parent_keys
    # The online asset names the sensor that keeps its run going.
    assert graph.get(ONLINE).metadata["fs_dagster/supervised_by"] == (
        f"{STORAGE}__online_supervisor"
    )
    assert repo.get_sensor_def("merchant_activity__online_supervisor").job_name == (
        "merchant_activity__online_ingestion"
    )
