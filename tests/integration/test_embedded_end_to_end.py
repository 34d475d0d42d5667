"""File source -> SQLite online and local Delta offline: the embedded defaults."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.pipeline import start_ingestion
from tests.integration.scenario import (
    SourceSpec,
    expected_latest,
    make_events,
    transactions_feature_set,
    write_json_file,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _assert_online_matches(
    store: fs.FeatureStore, feature_set: fs.FeatureSet, events: list[dict[str, Any]]
) -> None:
    expected = expected_latest(events)
    users = sorted(expected)
    online = store.get_online_features(feature_set, users).set_index("user_id")
    for user in users:
        row = online.loc[user]
        assert row["amount"] == pytest.approx(expected[user]["amount"]), user
        assert row["cents"] == round(expected[user]["amount"] * 100), user
        assert bool(row["is_remote"]) == expected[user]["is_remote"], user
        assert row["ts"] == pd.Timestamp(expected[user]["ts"]).tz_convert(None), user


def test_file_source_to_sqlite_and_local_delta(spark: SparkSession, tmp_path: Path) -> None:
    spec = SourceSpec("file", f"events_{uuid.uuid4().hex[:8]}", str(tmp_path / "stream"))
    feature_set = transactions_feature_set(spec, "embedded-e2e")
    events = make_events(120, users=7, seed=1)
    malformed = [
        "{not json",
        json.dumps({"user_id": "u1", "amount": "lots", "is_remote": False, "ts": events[0]["ts"]}),
        json.dumps({"amount": 3.0, "is_remote": False, "ts": events[0]["ts"]}),
        json.dumps({"user_id": "u2", "amount": 3.0, "is_remote": True}),
    ]
    write_json_file(Path(spec.location), [json.dumps(e) for e in events[:60]] + malformed[:2])
    write_json_file(Path(spec.location), [json.dumps(e) for e in events[60:]] + malformed[2:])

    online_store = fs.SqliteOnlineStore(tmp_path / "online.db")
    client = fs.FeatureStore(
        online_store=online_store,
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        feature_sets=[feature_set],
        spark=spark,
    )
    plan = client.plan(feature_set)

    online = start_ingestion(spark, feature_set, plan, "online", online_store=online_store)
    try:
        online.query.processAllAvailable()
    finally:
        online.stop()
    _assert_online_matches(client, feature_set, events)
    assert sum(r.dead_letters for r in online.reports) == 4
    assert sum(r.rows_valid for r in online.reports) == len(events)

    offline = start_ingestion(spark, feature_set, plan, "offline")
    offline.query.awaitTermination()
    rows = spark.read.format("delta").load(plan.features_path).toPandas()
    assert len(rows) == len(events)
    got = sorted(
        (r.user_id, pd.Timestamp(r.ts).isoformat(), r.amount)  # type: ignore[arg-type]
        for r in rows.itertuples()
    )
    want = sorted(
        (e["user_id"], pd.Timestamp(e["ts"]).tz_convert(None).isoformat(), e["amount"])
        for e in events
    )
    assert got == want
    assert set(rows["event_date"].astype(str)) == {"2026-03-01"}

    dead = client.dead_letters(feature_set)
    offline_dead = dead[dead["pipeline"] == "offline"]
    assert sorted(offline_dead["reason"]) == sorted(
        [
            "malformed JSON or a value that does not fit the source schema",
            "malformed JSON or a value that does not fit the source schema",
            "missing value for 'user_id'",
            "missing value for 'ts'",
        ]
    )
    assert set(offline_dead["payload"]) == set(malformed)
    # A file's dead letter names the file and the line: lines 61-62 of the first file,
    # 61-62 of the second.
    by_payload = dict(zip(offline_dead["payload"], offline_dead["position"], strict=True))
    for line, record in zip((61, 62, 61, 62), malformed, strict=True):
        path, _, number = by_payload[record].rpartition(":")
        assert path.endswith(".json") and int(number) == line, by_payload[record]


def test_late_older_event_does_not_replace_newer_value(spark: SparkSession, tmp_path: Path) -> None:
    spec = SourceSpec("file", f"events_{uuid.uuid4().hex[:8]}", str(tmp_path / "stream"))
    feature_set = transactions_feature_set(spec, "late-events")
    online_store = fs.SqliteOnlineStore(tmp_path / "online.db")
    client = fs.FeatureStore(
        online_store=online_store,
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        feature_sets=[feature_set],
        spark=spark,
    )
    newer = {"user_id": "u1", "amount": 20.0, "is_remote": True, "ts": "2026-03-01T12:00:10+00:00"}
    older = {"user_id": "u1", "amount": 10.0, "is_remote": False, "ts": "2026-03-01T12:00:05+00:00"}
    online = start_ingestion(
        spark, feature_set, client.plan(feature_set), "online", online_store=online_store
    )
    try:
        write_json_file(Path(spec.location), [json.dumps(newer)])
        online.query.processAllAvailable()
        write_json_file(Path(spec.location), [json.dumps(older)])
        online.query.processAllAvailable()
    finally:
        online.stop()
    assert len(online.reports) >= 2
    row = client.get_online_features(feature_set, "u1").iloc[0]
    assert row["amount"] == 20.0
    assert row["ts"] == pd.Timestamp("2026-03-01T12:00:10")


def test_debug_table_shows_transformed_stream(spark: SparkSession, tmp_path: Path) -> None:
    spec = SourceSpec("file", f"events_{uuid.uuid4().hex[:8]}", str(tmp_path / "stream"))
    feature_set = transactions_feature_set(spec, "debug-mode")
    events = make_events(10, users=3, seed=3)
    write_json_file(Path(spec.location), [json.dumps(e) for e in events])
    online_store = fs.SqliteOnlineStore(tmp_path / "online.db")
    plan = fs.FeatureStore(
        online_store=online_store, offline_root=str(tmp_path / "offline"), spark=spark
    ).plan(feature_set)
    table = f"debug_{uuid.uuid4().hex[:8]}"
    online = start_ingestion(
        spark, feature_set, plan, "online", online_store=online_store, debug_table=table
    )
    try:
        assert online.debug_query is not None
        online.debug_query.processAllAvailable()
        seen = spark.sql(f"SELECT user_id, cents FROM {table}").toPandas()
    finally:
        online.stop()
    assert len(seen) == len(events)
    assert sorted(seen["cents"]) == sorted(round(e["amount"] * 100) for e in events)


def _filtered_feature_set(
    spec: SourceSpec, name: str, where: str, *, aggregated: bool = False
) -> fs.FeatureSet:
    source = spec.build()

    def transformation() -> fs.SparkSqlTransformation:
        sql = fs.SparkSqlTransformation(
            f"SELECT CASE WHEN amount > 250 THEN NULL ELSE user_id END AS user_id, amount, ts "
            f"FROM {source.name} WHERE {where}"
        )
        if not aggregated:
            return sql
        return sql.aggregate(fs.Aggregation.count("amount")).by_windows("30d")

    transformation.__name__ = name.replace("-", "_")
    return fs.streaming.feature_set(
        name=name, key="user_id", data_sources=[source], timestamp_column_name="ts"
    )(transformation)


@pytest.mark.parametrize("aggregated", [False, True], ids=["row-level", "aggregated"])
@pytest.mark.parametrize(
    "where", ["true", "false"], ids=["every-row", "nothing-spark-proves-empty"]
)
def test_online_batch_counts_every_record_in_its_one_job(
    spark: SparkSession, tmp_path: Path, where: str, aggregated: bool
) -> None:
    """An online batch (latest rows, or tiles) is written and counted by one job: source
    records, malformed ones and output rows without a key are all counted, also when
    Spark optimises the whole output away (and with it the job's reading of the source)."""
    spec = SourceSpec("file", f"events_{uuid.uuid4().hex[:8]}", str(tmp_path / "stream"))
    feature_set = _filtered_feature_set(
        spec, f"counted-{where}-{aggregated}", where, aggregated=aggregated
    )
    events = make_events(80, users=5, seed=3)
    write_json_file(Path(spec.location), [json.dumps(e) for e in events] + ["{not json"])
    online_store = fs.SqliteOnlineStore(tmp_path / "online.db")
    store = fs.FeatureStore(
        online_store=online_store,
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        feature_sets=[feature_set],
        spark=spark,
    )
    plan = store.plan(feature_set)

    online = start_ingestion(spark, feature_set, plan, "online", online_store=online_store)
    try:
        online.query.processAllAvailable()
    finally:
        online.stop()
    [batch] = online.reports
    keyless = sum(1 for e in events if e["amount"] > 250) if where == "true" else 0
    assert batch.rows_in == len(events) + 1
    assert batch.dead_letters == 1 + keyless
    assert batch.rows_valid == (len(events) - keyless if where == "true" else 0)
    kept = [e for e in events if e["amount"] <= 250] if where == "true" else []
    users = sorted({e["user_id"] for e in events})
    if aggregated:
        # Oracle: the events each user kept, all inside the 30 days before the last one.
        assert batch.tiles_written > 0 if kept else batch.tiles_written == 0
        if kept:
            at = max(datetime.fromisoformat(e["ts"]) for e in events)
            values = store.get_online_features(feature_set, users, at=at)
            expected = [sum(1 for e in kept if e["user_id"] == u) for u in users]
            assert [int(v) if pd.notna(v) else 0 for v in values["count_amount_30d"]] == expected
        return
    stored = online_store.read_rows(
        online_store.layout(feature_set.storage_name),  # type: ignore[arg-type]
        [(u,) for u in sorted({e["user_id"] for e in events})],
    )
    assert sum(r is not None for r in stored) == (
        len({e["user_id"] for e in events if e["amount"] <= 250}) if where == "true" else 0
    )
