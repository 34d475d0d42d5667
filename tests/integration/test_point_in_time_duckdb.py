"""The DuckDB and the Spark offline engines return identical point-in-time frames.

Both engines read the same real Delta tables: written by streaming ingestion (two runs,
so several table versions, late rows and ties on equal event times) or by the project's
one Delta writer (appends, then a backfill's ``ReplaceRange`` that rewrites one
partition's files), locally and on the S3 server. Each result is also checked against a
brute-force oracle written here, independently of both engines.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.delta import AppendOnce, ReplaceRange, write_delta
from fs_dagster.engine.duckdb_retrieval import (
    DuckDBUnsupportedTableError,
    delta_location,
    duckdb_point_in_time_join,
)
from fs_dagster.engine.pipeline import start_ingestion
from fs_dagster.engine.spark_session import S3Settings
from tests.fixtures.services import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.integration.scenario import (
    BASE_TIME,
    SourceSpec,
    make_events,
    transactions_feature_set,
    write_json_file,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

T0 = pd.Timestamp(BASE_TIME).tz_convert(None)


def _stores(
    tmp_path: Path, feature_set: fs.FeatureSet, spark: SparkSession, root: str | None = None
) -> tuple[fs.FeatureStore, fs.FeatureStore]:
    common: dict[str, Any] = {
        "online_store": fs.SqliteOnlineStore(tmp_path / "o.db"),
        "offline_root": root or str(tmp_path / "offline"),
        "checkpoint_root": str(tmp_path / "ckpt"),
        "feature_sets": [feature_set],
        "spark": spark,
    }
    return (
        fs.FeatureStore(**common, offline_engine="duckdb"),
        fs.FeatureStore(**common, offline_engine="spark"),
    )


def _both(
    stores: tuple[fs.FeatureStore, fs.FeatureStore],
    population: pd.DataFrame,
    feature_set: fs.FeatureSet,
) -> pd.DataFrame:
    """Read with both engines, assert the frames are identical, return one."""
    on_duckdb, on_spark = stores
    duck = on_duckdb.get_offline_features(population, feature_set, "timestamp")
    spark = on_spark.get_offline_features(population, feature_set, "timestamp")
    pd.testing.assert_frame_equal(duck, spark, check_exact=True)
    assert len(duck) == len(population)
    pd.testing.assert_frame_equal(duck[list(population.columns)], population)
    return duck


def _oracle(
    rows: Sequence[dict[str, Any]],
    key: dict[str, Any],
    at: pd.Timestamp,
    ttl: timedelta | None,
    features: Sequence[str],
) -> dict[str, Any] | None:
    """Brute force: of the key's rows at or before ``at`` (within the TTL), the newest;
    among equal times the one with the largest feature values (None lowest)."""

    def rank(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["ts"], *[(row[f] is not None, row[f]) for f in features])

    candidates = [
        r
        for r in rows
        if all(r[k] == v for k, v in key.items())
        and r["ts"] <= at
        and (ttl is None or r["ts"] >= at - ttl)
    ]
    return max(candidates, key=rank) if candidates else None


def _check_oracle(
    result: pd.DataFrame,
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    ttl: timedelta | None,
    features: Sequence[str],
) -> int:
    matched = 0
    for record in result.to_dict("records"):
        key = {k: record[k] for k in keys}
        expected = _oracle(rows, key, pd.Timestamp(record["timestamp"]), ttl, features)
        if expected is None:
            assert all(pd.isna(record[f]) for f in [*features, "ts"]), record
            continue
        matched += 1
        assert record["ts"] == expected["ts"], record
        for feature in features:
            if expected[feature] is None:
                assert pd.isna(record[feature]), (feature, record)
            else:
                assert record[feature] == expected[feature], (feature, record, expected)
    return matched


def test_engines_agree_on_ingested_rows(spark: SparkSession, tmp_path: Path) -> None:
    spec = SourceSpec("file", f"ev_{uuid.uuid4().hex[:8]}", str(tmp_path / "stream"))
    feature_set = transactions_feature_set(spec, "pit-duck")
    plan = _stores(tmp_path, feature_set, spark)[0].plan(feature_set)
    first = make_events(150, users=6, seed=5)
    # Ties: the same user at the same event time with other values, some in a later run.
    ties = [dict(e, amount=round(e["amount"] + 7.5, 2)) for e in first[10:40:3]]
    ties += [dict(e, amount=e["amount"], is_remote=not e["is_remote"]) for e in first[41:60:4]]
    late = make_events(60, users=6, seed=6, start=BASE_TIME + timedelta(seconds=30))
    for batch in ([*first, *ties[:5]], [*late, *ties[5:]]):
        write_json_file(Path(spec.location), [json.dumps(e) for e in batch])
        start_ingestion(spark, feature_set, plan, "offline").query.awaitTermination()

    rng = random.Random(11)
    population = pd.DataFrame(
        {
            "user_id": [f"u{rng.randrange(8)}" for _ in range(400)],  # u6, u7 never seen
            "timestamp": [
                T0 + pd.Timedelta(microseconds=rng.randrange(-20_000_000, 200_000_000))
                for _ in range(400)
            ],
            "label": range(400),
        }
    )
    # Exact hits on tied event times, and a time before any feature row.
    for i, event in enumerate(ties):
        population.loc[i, ["user_id", "timestamp"]] = [event["user_id"], _naive(event["ts"])]
    population.loc[len(ties), "timestamp"] = T0 - pd.Timedelta(hours=1)

    rows = [
        {
            "user_id": e["user_id"],
            "ts": _naive(e["ts"]),
            "amount": e["amount"],
            "cents": round(e["amount"] * 100),
            "is_remote": e["is_remote"],
        }
        for e in [*first, *ties, *late]
    ]
    # The same table read without and with a TTL (same name, so the same storage).
    for ttl in (None, "20 seconds"):
        reading = transactions_feature_set(spec, "pit-duck", online_ttl=ttl)
        result = _both(_stores(tmp_path, reading, spark), population, reading)
        assert list(result.columns) == [
            "user_id",
            "timestamp",
            "label",
            "amount",
            "cents",
            "is_remote",
            "ts",
        ]
        matched = _check_oracle(
            result, rows, ["user_id"], reading.online_ttl, ["amount", "cents", "is_remote"]
        )
        assert 0 < matched < len(population)


def _naive(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert(None)


def _merchant_set(tmp_path: Path) -> fs.FeatureSet:
    source = fs.FileSource(
        name=f"pairs_{uuid.uuid4().hex[:6]}",
        path=str(tmp_path / "pairs"),
        schema="user_id STRING, merchant_id INT, amount DOUBLE, visits INT, note STRING, "
        "ts TIMESTAMP",
    )
    return fs.streaming.feature_set(
        name="user-merchant",
        key=["user_id", "merchant_id"],
        data_sources=[source],
        timestamp_column_name="ts",
        online_trigger_interval=1,
        online_ttl="1 hour",
    )(
        lambda: fs.SparkSqlTransformation(
            f"SELECT user_id, merchant_id, amount, visits, note, ts FROM {source.name}"
        )
    )


_PAIR_SCHEMA = (
    "user_id STRING, merchant_id INT, amount DOUBLE, visits INT, note STRING, ts TIMESTAMP, "
    "event_date DATE"
)


def _pair_rows(seed: int, count: int, day: date) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    start = datetime(day.year, day.month, day.day)
    rows = []
    for _ in range(count):
        ts = start + timedelta(minutes=rng.randrange(0, 24 * 60, 7))  # coarse: many ties
        rows.append(
            {
                "user_id": f"u{rng.randrange(3)}",
                "merchant_id": rng.randrange(3),
                "amount": rng.choice([None, 1.5, 2.5, float(rng.randrange(100))]),
                "visits": rng.choice([None, rng.randrange(5)]),
                "note": rng.choice([None, "a", "b", "ab"]),
                "ts": pd.Timestamp(ts),
                "event_date": day,
            }
        )
    return rows


def _write(spark: SparkSession, rows: list[dict[str, Any]], path: str, mode: Any) -> None:
    def plain(value: Any) -> Any:
        return value.to_pydatetime() if isinstance(value, pd.Timestamp) else value

    frame = spark.createDataFrame([tuple(plain(v) for v in r.values()) for r in rows], _PAIR_SCHEMA)
    write_delta(frame, path, mode, partition_by=["event_date"])


def _pair_population(seed: int, days: Sequence[date]) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{rng.randrange(4)}" for _ in range(300)],  # u3 never seen
            "merchant_id": [rng.randrange(4) for _ in range(300)],
            "timestamp": [
                pd.Timestamp(rng.choice(days)) + pd.Timedelta(minutes=rng.randrange(-90, 1500))
                for _ in range(300)
            ],
        }
    )


def _pairs_agree(
    spark: SparkSession, tmp_path: Path, root: str, storage: S3Settings | None
) -> None:
    feature_set = _merchant_set(tmp_path)
    common: dict[str, Any] = {
        "online_store": fs.SqliteOnlineStore(tmp_path / "o.db"),
        "offline_root": root,
        "checkpoint_root": str(tmp_path / "ckpt"),
        "feature_sets": [feature_set],
        "spark": spark,
    }
    stores = (
        fs.FeatureStore(**common, offline_engine="duckdb", s3=storage),
        fs.FeatureStore(**common, offline_engine="spark"),
    )
    path = stores[0].plan(feature_set).features_path
    days = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]
    batches = [_pair_rows(1, 200, days[0]), _pair_rows(2, 200, days[1])]
    batches.append(_pair_rows(3, 120, days[0]) + _pair_rows(4, 120, days[2]))  # late rows
    for version, rows in enumerate(batches):
        _write(spark, rows, path, AppendOnce("test-pairs", version))
    # A backfill rewrites day 2: its files are removed from the table, new ones added.
    replaced = _pair_rows(5, 150, days[1])
    _write(spark, replaced, path, ReplaceRange("event_date = '2026-03-02'"))
    current = [r for r in [*batches[0], *batches[2], *replaced]]

    population = _pair_population(7, days)
    result = _both(stores, population, feature_set)
    assert list(result.columns) == [
        "user_id",
        "merchant_id",
        "timestamp",
        "amount",
        "visits",
        "note",
        "ts",
    ]
    assert "event_date" not in result.columns
    matched = _check_oracle(
        result,
        current,
        ["user_id", "merchant_id"],
        feature_set.online_ttl,
        ["amount", "visits", "note"],
    )
    assert 0 < matched < len(population)


def test_engines_agree_with_two_key_columns_after_a_backfill(
    spark: SparkSession, tmp_path: Path
) -> None:
    _pairs_agree(spark, tmp_path, str(tmp_path / "offline"), None)


@pytest.mark.s3
def test_engines_agree_on_s3(
    spark: SparkSession, tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    storage = S3Settings(endpoint=s3_endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY)
    root = f"s3a://{s3_bucket}/pit-{uuid.uuid4().hex[:8]}"
    _pairs_agree(spark, tmp_path, root, storage)


_DELETION_VECTORS = (
    "ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)",
    "DELETE FROM delta.`{path}` WHERE user_id = 'u0'",
)
_COLUMN_MAPPING = (
    "ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.columnMapping.mode' = 'name', "
    "'delta.minReaderVersion' = '2', 'delta.minWriterVersion' = '5')",
    "ALTER TABLE delta.`{path}` RENAME COLUMN note TO remark",
)


@pytest.mark.parametrize(
    ("statements", "feature"),
    [(_DELETION_VECTORS, "deletionVectors"), (_COLUMN_MAPPING, "columnMapping")],
)
def test_tables_duckdb_cannot_read_go_to_spark_unless_duckdb_is_asked_for(
    spark: SparkSession, tmp_path: Path, statements: Sequence[str], feature: str
) -> None:
    feature_set = _merchant_set(tmp_path)
    stores = _stores(tmp_path, feature_set, spark)
    path = stores[0].plan(feature_set).features_path
    rows = _pair_rows(1, 50, date(2026, 3, 1))
    _write(spark, rows, path, AppendOnce("test-unsupported", 0))
    for statement in statements:
        spark.sql(statement.format(path=path))
    population = _pair_population(3, [date(2026, 3, 1)])
    with pytest.raises(DuckDBUnsupportedTableError, match=feature):
        duckdb_point_in_time_join(feature_set, delta_location(path), population, "timestamp")
    with pytest.raises(DuckDBUnsupportedTableError, match="offline_engine='spark'"):
        stores[0].get_offline_features(population, feature_set)
    automatic = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "o.db"),
        offline_root=str(tmp_path / "offline"),
        feature_sets=[feature_set],
        spark=spark,
    )
    result = automatic.get_offline_features(population, feature_set)
    expected = stores[1].get_offline_features(population, feature_set)
    pd.testing.assert_frame_equal(result, expected, check_exact=True)
    assert result["ts"].notna().any()
    if feature == "deletionVectors":
        assert result.loc[result["user_id"] == "u0", "ts"].isna().all()


def test_population_errors_name_the_columns(spark: SparkSession, tmp_path: Path) -> None:
    feature_set = _merchant_set(tmp_path)
    stores = _stores(tmp_path, feature_set, spark)
    path = stores[0].plan(feature_set).features_path
    _write(spark, _pair_rows(1, 10, date(2026, 3, 1)), path, AppendOnce("test-err", 0))
    population = _pair_population(3, [date(2026, 3, 1)])
    for store in stores:
        with pytest.raises(ValueError, match=r"lacks columns \['merchant_id'\]"):
            store.get_offline_features(population.drop(columns="merchant_id"), feature_set)
        with pytest.raises(ValueError, match=r"\['note'\] have the names of features"):
            store.get_offline_features(population.assign(note="x"), feature_set)
