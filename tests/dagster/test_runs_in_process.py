"""Offline asset and online job run in process on the session's Spark, as a run worker would.

``LazyPySparkResource`` calls ``SparkSession.builder.getOrCreate()``, so the runs reuse the
``spark`` fixture's session (which has the connector jars).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import (
    AssetMaterialization,
    DagsterInstance,
    Definitions,
    instance_for_test,
    materialize,
)
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.orchestration.naming import (
    HEARTBEAT_TAG,
    offline_asset_key,
    online_asset_key,
    online_job_name,
)
from tests.integration.scenario import (
    SourceSpec,
    expected_latest,
    make_events,
    transactions_feature_set,
    write_json_file,
)

pytestmark = [pytest.mark.dagster, pytest.mark.spark, pytest.mark.slow]


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


class Project:
    """A file-source feature set with its Dagster definitions and resources under tmp_path."""

    def __init__(self, tmp_path: Path, spark_jars: tuple[str, ...], name: str) -> None:
        self.stream = tmp_path / "stream"
        spec = SourceSpec("file", f"events_{uuid.uuid4().hex[:8]}", str(self.stream))
        self.feature_set = transactions_feature_set(spec, name)
        self.feature_store = fs.FeatureStoreResource(
            offline_root=str(tmp_path / "offline"),
            checkpoint_root=str(tmp_path / "checkpoints"),
            online_store="sqlite",
            sqlite_path=str(tmp_path / "online.db"),
        )
        # The same settings as the `spark` fixture: getOrCreate() returns its session.
        self.pyspark: LazyPySparkResource = fs.spark_resource(
            fs.SparkSettings(master="local[2]", jars=spark_jars, shuffle_partitions=2)
        )
        self.defs: Definitions = fs.build_definitions(
            feature_sets=[self.feature_set],
            feature_store=self.feature_store,
            pyspark=self.pyspark,
            start_automatically=False,
        )

    @property
    def resources(self) -> dict[str, Any]:
        return {"feature_store": self.feature_store, "pyspark": self.pyspark}

    def write(self, events: list[dict[str, Any]]) -> None:
        write_json_file(self.stream, [json.dumps(e) for e in events])

    def client(self, spark: SparkSession) -> fs.FeatureStore:
        return fs.FeatureStore(
            online_store=self.feature_store.create_online_store(),
            offline_root=self.feature_store.offline_root,
            checkpoint_root=self.feature_store.checkpoint_root,
            feature_sets=[self.feature_set],
            spark=spark,
        )


def _metadata(materialization: AssetMaterialization) -> dict[str, Any]:
    return {key: value.value for key, value in materialization.metadata.items()}


def _assert_online_matches(
    client: fs.FeatureStore, feature_set: fs.FeatureSet, events: Sequence[Mapping[str, Any]]
) -> None:
    expected = expected_latest(events)
    users = sorted(expected)
    online = client.get_online_features(feature_set, users).set_index("user_id")
    assert list(online.index) == users
    for user in users:
        row = online.loc[user]
        assert row["amount"] == pytest.approx(expected[user]["amount"]), user
        assert row["cents"] == round(expected[user]["amount"] * 100), user
        assert bool(row["is_remote"]) == expected[user]["is_remote"], user
        assert row["ts"] == pd.Timestamp(expected[user]["ts"]).tz_convert(None), user


def test_materialize_offline_asset(
    spark: SparkSession, spark_jars: tuple[str, ...], tmp_path: Path, instance: DagsterInstance
) -> None:
    project = Project(tmp_path, spark_jars, "dagster-offline")
    key = offline_asset_key(project.feature_set)
    asset = project.defs.get_assets_def(key)
    events = make_events(90, users=6, seed=11)
    project.write(events[:50])
    project.write(events[50:])

    first = materialize([asset], resources=project.resources, instance=instance)
    assert first.success
    [materialization] = first.asset_materializations_for_node(asset.node_def.name)
    assert materialization.asset_key == key
    metadata = _metadata(materialization)
    assert metadata["fs_dagster/rows_written"] == len(events)
    assert metadata["dagster/row_count"] == len(events)
    assert metadata["fs_dagster/rows_in"] == len(events)
    assert metadata["fs_dagster/dead_letters"] == 0
    assert metadata["fs_dagster/batches"] >= 1
    path = project.feature_store.plan(project.feature_set).features_path
    assert metadata["fs_dagster/path"] == path
    assert spark.read.format("delta").load(path).count() == len(events)

    # The instance records it as the asset's latest materialization.
    latest = instance.get_latest_materialization_event(key)
    assert latest is not None and latest.run_id == first.run_id

    # Nothing new: the checkpoint remembers both files.
    second = materialize([asset], resources=project.resources, instance=instance)
    assert second.success
    [again] = second.asset_materializations_for_node(asset.node_def.name)
    assert _metadata(again)["fs_dagster/rows_written"] == 0
    assert _metadata(again)["dagster/row_count"] == 0

    # A new file: only its rows are appended.
    more = make_events(25, users=6, seed=12, start=datetime.fromisoformat(events[-1]["ts"]))
    project.write(more)
    third = materialize([asset], resources=project.resources, instance=instance)
    [appended] = third.asset_materializations_for_node(asset.node_def.name)
    assert _metadata(appended)["fs_dagster/rows_written"] == len(more)
    assert spark.read.format("delta").load(path).count() == len(events) + len(more)


def test_online_job_in_process(
    spark: SparkSession, spark_jars: tuple[str, ...], tmp_path: Path, instance: DagsterInstance
) -> None:
    project = Project(tmp_path, spark_jars, "dagster-online")
    feature_set = project.feature_set
    job = project.defs.resolve_job_def(online_job_name(feature_set))
    events = make_events(150, users=9, seed=21)
    batches = [events[:60], events[60:110], events[110:]]
    project.write(batches[0])
    client = project.client(spark)

    def online_users() -> int:
        try:
            return len(client.get_online_features(feature_set, sorted({"u0", "u1", "u2"})))
        except LookupError:  # the table is created when the query starts
            return 0

    errors: list[BaseException] = []

    def write_while_running() -> None:
        # Each further file is dropped once the run has written the previous ones, so the
        # run sees the stream grow while it runs.
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and online_users() == 0:
                time.sleep(0.5)
            for batch in batches[1:]:
                time.sleep(2)
                project.write(batch)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write_while_running, daemon=True)
    writer.start()
    op_name = f"{feature_set.storage_name}__online_ingestion_op"
    result = job.execute_in_process(
        run_config={
            "ops": {op_name: {"config": {"run_for_seconds": 30, "report_every_seconds": 2}}}
        },
        resources=project.resources,
        instance=instance,
    )
    writer.join(timeout=150)
    assert not errors, errors
    assert result.success

    materializations = [m for m in result.asset_materializations_for_node(op_name)]
    assert materializations, "no materialization of the online asset was reported"
    assert {m.asset_key for m in materializations} == {online_asset_key(feature_set)}
    # Reported every couple of seconds while the run went on, not once at the end.
    assert len(materializations) >= 2
    summaries = [_metadata(m) for m in materializations]
    assert all(s["fs_dagster/rows_written"] >= 0 for s in summaries)
    assert sum(s["fs_dagster/rows_written"] for s in summaries) > 0
    assert sum(s["fs_dagster/rows_in"] for s in summaries) == len(events)
    assert sum(s["fs_dagster/dead_letters"] for s in summaries) == 0
    assert all(
        "fs_dagster/freshness_seconds" in s for s in summaries if s["fs_dagster/rows_written"]
    )
    last_ids = [s["fs_dagster/last_batch_id"] for s in summaries]
    assert last_ids == sorted(last_ids)

    # The heartbeat tag the supervisor sensor watches.
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    beat = run.tags.get(HEARTBEAT_TAG)
    assert beat, run.tags
    assert datetime.fromisoformat(beat).tzinfo is not None

    # The instance knows the online asset's materializations, as the UI shows them.
    latest = instance.get_latest_materialization_event(online_asset_key(feature_set))
    assert latest is not None and latest.run_id == result.run_id

    _assert_online_matches(client, feature_set, events)
    # The query was stopped when the run ended.
    assert not any(q.name == f"fs_{feature_set.storage_name}_online" for q in spark.streams.active)
