"""Aggregated point-in-time reads: the DuckDB engine and the Spark engine agree.

Both engines read the same offline tile tables, written by the offline pipeline in
several runs and micro-batches (so most tiles hold several partials), locally and on the
S3 server. Both results are checked against the brute-force oracle of
``aggregation_oracle`` (pandas over the raw events, no tiles) as well as against each
other. Values are chosen so that float sums are exact in any order of addition: the two
engines merge partials in different orders, and then return identical frames.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster import Aggregation
from fs_dagster.engine.duckdb_retrieval import (
    DuckDBUnsupportedTableError,
    delta_location,
    duckdb_point_in_time_aggregates,
)
from fs_dagster.engine.pipeline import start_ingestion
from fs_dagster.engine.spark_session import S3Settings
from tests.fixtures.services import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.integration.aggregation_oracle import assert_matches, oracle
from tests.integration.scenario import write_json_file

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SCHEMA = "user_id STRING, amount DOUBLE, qty INT, flag BOOLEAN, seen TIMESTAMP, ts TIMESTAMP"
T_END = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
WINDOWS = ("10 seconds", "1m", "1 hour", "1d", "7d")


def _numeric(source: str) -> fs.SparkSqlTransformation:
    return (
        fs.SparkSqlTransformation(f"SELECT user_id, amount, qty, flag, seen, ts FROM {source}")
        .aggregate(Aggregation.sum("amount"))
        .aggregate(Aggregation.sum("qty"))
        .aggregate(Aggregation.count("amount"))
        .aggregate(Aggregation.min("amount"))
        .aggregate(Aggregation.max("qty"))
        .aggregate(Aggregation.min("seen"))
        .aggregate(Aggregation.max("seen"))
        .aggregate(Aggregation.boolean_or("flag"))
        .aggregate(Aggregation.boolean_and("flag").alias("all_flag"))
        .by_windows(*WINDOWS)
    )


def _with_avg(source: str) -> fs.SparkSqlTransformation:
    """A state the DuckDB engine does not merge (moments)."""
    return (
        fs.SparkSqlTransformation(f"SELECT user_id, amount, ts FROM {source}")
        .aggregate(Aggregation.sum("amount"))
        .aggregate(Aggregation.avg("amount"))
        .by_windows(*WINDOWS)
    )


def _feature_set(
    name: str, source: fs.FileSource, build: Any = _numeric, *, offline_root: str | None = None
) -> fs.FeatureSet:
    return fs.streaming.feature_set(
        name=name, key="user_id", data_sources=[source], timestamp_column_name="ts"
    )(lambda: build(source.name))


def _events(seed: int, count: int) -> list[dict[str, Any]]:
    """Events over ~9 days, denser near T_END; amounts in quarters (exact float sums)."""
    rng = random.Random(seed)
    events = []
    for _ in range(count):
        offset = rng.choice([rng.uniform(0, 9 * 86400), rng.uniform(0, 7200), rng.uniform(0, 90)])
        ts = T_END - timedelta(seconds=offset)
        events.append(
            {
                "user_id": f"k{rng.randrange(5)}",
                "amount": None if rng.random() < 0.1 else rng.randrange(-400, 4000) / 4,
                "qty": None if rng.random() < 0.1 else rng.randrange(-1000, 1000),
                "flag": None if rng.random() < 0.1 else rng.random() < 0.7,
                "seen": None
                if rng.random() < 0.1
                else (ts - timedelta(seconds=rng.randrange(10**6))).isoformat(),
                "ts": ts.isoformat(),
            }
        )
    return events


def _ingest(
    spark: SparkSession,
    tmp_path: Path,
    offline_root: str,
    feature_sets: list[fs.FeatureSet],
    source_path: Path,
) -> list[dict[str, Any]]:
    """Two offline runs of each set, three files each: several partials per tile."""
    written: list[dict[str, Any]] = []
    for run in range(2):
        for part in range(3):
            events = _events(seed=10 * run + part, count=90)
            write_json_file(source_path, [json.dumps(e) for e in events])
            written += events
        for feature_set in feature_sets:
            plan = _store(tmp_path, offline_root, feature_set, spark, "spark").plan(feature_set)
            start_ingestion(spark, feature_set, plan, "offline").query.awaitTermination()
    return written


def _store(
    tmp_path: Path,
    offline_root: str,
    feature_set: fs.FeatureSet,
    spark: SparkSession,
    engine: Any,
    s3: S3Settings | None = None,
) -> fs.FeatureStore:
    return fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "o.db"),
        offline_root=offline_root,
        checkpoint_root=str(tmp_path / "ckpt"),
        feature_sets=[feature_set],
        spark=spark,
        offline_engine=engine,
        s3=s3,
    )


def _population(seed: int, rows: int = 400) -> pd.DataFrame:
    rng = random.Random(seed)
    end = pd.Timestamp(T_END).tz_convert(None)
    times = [
        end
        - pd.Timedelta(seconds=rng.choice([0, 5, 59, 61, 3599, 86400, 6 * 86400, 12 * 86400]))
        + pd.Timedelta(microseconds=rng.randrange(-3_000_000, 3_000_000))
        for _ in range(rows)
    ]
    population = pd.DataFrame(
        {
            "user_id": [rng.choice(["k0", "k1", "k2", "k3", "k4", "nobody"]) for _ in range(rows)],
            "timestamp": times,
            "label": range(rows),
        }
    )
    population.loc[3, "timestamp"] = pd.NaT
    return population


def _oracle_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(events)
    frame["micros"] = [int(datetime.fromisoformat(t).timestamp() * 1_000_000) for t in frame["ts"]]
    frame["seen"] = [None if s is None else pd.Timestamp(s).tz_convert(None) for s in frame["seen"]]
    return frame


def _check_oracle(
    feature_set: fs.FeatureSet, result: pd.DataFrame, events: list[dict[str, Any]]
) -> None:
    frame = _oracle_frame(events)
    checked = 0
    for record in result.to_dict("records"):
        if pd.isna(record["timestamp"]):
            assert all(pd.isna(record[n]) for n in feature_set.feature_names), record
            continue
        at = int(pd.Timestamp(record["timestamp"]).value // 1000)
        want = oracle(feature_set, frame, record["user_id"], at)
        assert_matches(feature_set, record, want, f"{record['user_id']}@{record['timestamp']}")
        checked += 1
    assert checked == len(result) - 1


def _engines_agree(
    spark: SparkSession, tmp_path: Path, offline_root: str, s3: S3Settings | None
) -> None:
    source = fs.FileSource(
        name=f"ev_{uuid.uuid4().hex[:6]}",
        path=str(tmp_path / "in"),
        schema=SCHEMA,
        options={"maxFilesPerTrigger": "1"},
    )
    feature_set = _feature_set("pit-agg-duck", source)
    events = _ingest(spark, tmp_path, offline_root, [feature_set], tmp_path / "in")
    population = _population(seed=3)
    duck = _store(tmp_path, offline_root, feature_set, spark, "duckdb", s3)
    on_spark = _store(tmp_path, offline_root, feature_set, spark, "spark")
    got = duck.get_offline_features(population, feature_set, "timestamp")
    expected = on_spark.get_offline_features(population, feature_set, "timestamp")
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert list(got.columns) == ["user_id", "timestamp", "label", *feature_set.feature_names]
    pd.testing.assert_frame_equal(got[list(population.columns)], population)
    _check_oracle(feature_set, got, events)
    # A time zone on the population's times: the same instants, the same values.
    zoned = population.assign(timestamp=population["timestamp"].dt.tz_localize("UTC"))
    again = duck.get_offline_features(zoned, feature_set, "timestamp")
    pd.testing.assert_frame_equal(
        again[feature_set.feature_names], got[feature_set.feature_names], check_exact=True
    )


def test_engines_agree_on_ingested_tiles(spark: SparkSession, tmp_path: Path) -> None:
    _engines_agree(spark, tmp_path, str(tmp_path / "offline"), None)


@pytest.mark.s3
def test_engines_agree_on_s3(
    spark: SparkSession, tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    storage = S3Settings(endpoint=s3_endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY)
    _engines_agree(spark, tmp_path, f"s3a://{s3_bucket}/pit-agg-{uuid.uuid4().hex[:8]}", storage)


def test_reads_duckdb_does_not_do_go_to_spark_unless_duckdb_is_asked_for(
    spark: SparkSession, tmp_path: Path
) -> None:
    source = fs.FileSource(
        name=f"ev_{uuid.uuid4().hex[:6]}", path=str(tmp_path / "in"), schema=SCHEMA
    )
    offline_root = str(tmp_path / "offline")
    numeric = _feature_set("pit-agg-numeric", source)
    with_avg = _feature_set("pit-agg-avg", source, _with_avg)
    _ingest(spark, tmp_path, offline_root, [numeric, with_avg], tmp_path / "in")
    population = _population(seed=4, rows=60)

    # An aggregate DuckDB does not merge (avg keeps moments).
    plan = _store(tmp_path, offline_root, with_avg, spark, "duckdb").plan(with_avg)
    with pytest.raises(DuckDBUnsupportedTableError, match="'pit-agg-avg' has aggregates"):
        duckdb_point_in_time_aggregates(
            with_avg,
            delta_location(plan.tiles_path),
            delta_location(plan.features_path),
            population,
            "timestamp",
        )
    # A time column of text: Spark casts it, DuckDB does not.
    known = population.dropna(subset=["timestamp"]).reset_index(drop=True)
    texts = known.assign(timestamp=known["timestamp"].astype(str))
    for feature_set, frame, cause in (
        (with_avg, population, "has aggregates"),
        (numeric, texts, "not datetimes"),
    ):
        with pytest.raises(DuckDBUnsupportedTableError, match=cause):
            _store(tmp_path, offline_root, feature_set, spark, "duckdb").get_offline_features(
                frame, feature_set
            )
        automatic = _store(tmp_path, offline_root, feature_set, spark, "auto")
        on_spark = _store(tmp_path, offline_root, feature_set, spark, "spark")
        result = automatic.get_offline_features(frame, feature_set)
        pd.testing.assert_frame_equal(
            result, on_spark.get_offline_features(frame, feature_set), check_exact=True
        )
        assert result[feature_set.feature_names[0]].notna().any()


def test_population_errors_name_the_columns(spark: SparkSession, tmp_path: Path) -> None:
    source = fs.FileSource(
        name=f"ev_{uuid.uuid4().hex[:6]}", path=str(tmp_path / "in"), schema=SCHEMA
    )
    offline_root = str(tmp_path / "offline")
    feature_set = _feature_set("pit-agg-errors", source)
    write_json_file(tmp_path / "in", [json.dumps(e) for e in _events(seed=1, count=20)])
    plan = _store(tmp_path, offline_root, feature_set, spark, "spark").plan(feature_set)
    start_ingestion(spark, feature_set, plan, "offline").query.awaitTermination()
    population = _population(seed=5, rows=20)
    clash = feature_set.feature_names[0]
    for engine in ("duckdb", "spark"):
        store = _store(tmp_path, offline_root, feature_set, spark, engine)
        with pytest.raises(ValueError, match=r"lacks columns \['user_id'\]"):
            store.get_offline_features(population.drop(columns="user_id"), feature_set)
        with pytest.raises(ValueError, match=rf"\['{clash}'\] have the names of features"):
            store.get_offline_features(population.assign(**{clash: 1}), feature_set)
