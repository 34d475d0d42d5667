"""The DuckDB engine's ASOF join by a hash of the keys gives the answer of the join by the
keys themselves, also when keys share a hash (checked with a deliberately weak hash)
and when one side's integer key is of another width.

The expected rows come from a brute-force oracle written here; the Delta tables are
written by the ``deltalake`` package (no Spark)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

import fs_dagster as fs
from fs_dagster.engine import duckdb_retrieval
from fs_dagster.engine.duckdb_retrieval import delta_location, duckdb_point_in_time_join

pytestmark = pytest.mark.unit

T0 = pd.Timestamp("2026-03-01 00:00:00")


def _feature_set(key_type: str, ttl: str | None) -> fs.FeatureSet:
    source = fs.FileSource(
        name="hashed_keys",
        path="/nonexistent/hashed_keys",
        schema=f"user_id {key_type}, amount DOUBLE, ts TIMESTAMP",
    )
    return fs.streaming.feature_set(
        name="hashed-keys",
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        online_ttl=ttl,
    )(lambda: fs.SparkSqlTransformation("SELECT user_id, amount, ts FROM hashed_keys"))


def _rows(keys: Sequence[Any], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for key in keys:
        for _ in range(rng.randrange(1, 12)):
            at = T0 + pd.Timedelta(seconds=rng.randrange(0, 3600, 5))  # coarse: some ties
            rows.append(
                {"user_id": key, "amount": rng.choice([None, float(rng.randrange(50))]), "ts": at}
            )
    return rows


def _write(path: Path, rows: list[dict[str, Any]], key_type: pa.DataType) -> None:
    table = pa.table(
        {
            "user_id": pa.array([r["user_id"] for r in rows], key_type),
            "amount": pa.array([r["amount"] for r in rows], pa.float64()),
            "ts": pa.array([r["ts"] for r in rows], pa.timestamp("us", tz="UTC")),
        }
    )
    write_deltalake(str(path), table)


def _population(keys: Sequence[Any], seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame(
        {
            "user_id": [rng.choice(keys) for _ in range(600)],
            "timestamp": [T0 + pd.Timedelta(seconds=rng.randrange(-300, 4000)) for _ in range(600)],
        }
    )


def _expected(
    rows: Sequence[dict[str, Any]], key: Any, at: pd.Timestamp, ttl: timedelta | None
) -> tuple[Any, Any]:
    """Brute force: the key's newest row at or before ``at`` (within the TTL); among equal
    times the largest amount (None lowest). ``(amount, ts)`` or ``(None, None)``."""
    candidates = [
        r
        for r in rows
        if key is not None
        and r["user_id"] == key
        and r["ts"] <= at
        and (ttl is None or r["ts"] >= at - ttl)
    ]
    if not candidates:
        return None, None
    best = max(
        candidates,
        key=lambda r: (r["ts"], r["amount"] is not None, r["amount"] or 0.0),
    )
    return best["amount"], best["ts"]


def _check(result: pd.DataFrame, rows: Sequence[dict[str, Any]], ttl: timedelta | None) -> int:
    matched = 0
    for record in result.to_dict("records"):
        amount, ts = _expected(rows, record["user_id"], record["timestamp"], ttl)
        if ts is None:
            assert pd.isna(record["amount"]) and pd.isna(record["ts"]), record
            continue
        matched += 1
        assert record["ts"] == ts, record
        assert (pd.isna(record["amount"]) and amount is None) or record["amount"] == amount
    return matched


class _Queries:
    """Records which key comparison each query of a read used."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hashed: list[bool] = []
        real = duckdb_retrieval._asof_sql

        def recording(*args: Any, **kwargs: Any) -> str:
            self.hashed.append(kwargs.get("hashed_keys") is not None)
            return real(*args, **kwargs)

        monkeypatch.setattr(duckdb_retrieval, "_asof_sql", recording)


@pytest.mark.parametrize("ttl", [None, "20 minutes"])
def test_string_keys_are_joined_by_their_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ttl: str | None
) -> None:
    keys = [f"u{i}" for i in range(40)]
    rows = _rows(keys, seed=1)
    _write(tmp_path / "t", rows, pa.string())
    feature_set = _feature_set("STRING", ttl)
    population = _population([*keys, "unseen", None], seed=2)
    queries = _Queries(monkeypatch)
    result = duckdb_point_in_time_join(
        feature_set, delta_location(str(tmp_path / "t")), population, "timestamp"
    )
    assert queries.hashed == [True]  # no two of these keys share DuckDB's 64-bit hash
    assert len(result) == len(population)
    matched = _check(result, rows, feature_set.online_ttl)
    assert 0 < matched < len(population)


def test_keys_sharing_a_hash_are_read_again_by_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"u{i}" for i in range(40)]
    rows = _rows(keys, seed=3)
    _write(tmp_path / "t", rows, pa.string())
    feature_set = _feature_set("STRING", None)
    population = _population([*keys, None], seed=4)
    # Three hash values for forty keys: rows match other keys' newer rows.
    monkeypatch.setattr(duckdb_retrieval, "_KEY_HASH", "hash({}) % 3")
    queries = _Queries(monkeypatch)
    result = duckdb_point_in_time_join(
        feature_set, delta_location(str(tmp_path / "t")), population, "timestamp"
    )
    assert queries.hashed == [True, False]
    assert len(result) == len(population)
    assert 0 < _check(result, rows, None) < len(population)


def test_integer_keys_of_other_widths_are_hashed_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = list(range(-20, 20))
    rows = _rows(keys, seed=5)
    _write(tmp_path / "t", rows, pa.int32())
    feature_set = _feature_set("INT", None)
    population = _population(keys, seed=6)  # int64 in pandas
    queries = _Queries(monkeypatch)
    result = duckdb_point_in_time_join(
        feature_set, delta_location(str(tmp_path / "t")), population, "timestamp"
    )
    assert queries.hashed == [True]
    assert 0 < _check(result, rows, None) < len(population)


def test_a_string_key_against_an_integer_column_compares_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = list(range(10))
    rows = _rows(keys, seed=7)
    _write(tmp_path / "t", rows, pa.int64())
    feature_set = _feature_set("BIGINT", None)
    population = _population([str(k) for k in keys], seed=8)
    queries = _Queries(monkeypatch)
    result = duckdb_point_in_time_join(
        feature_set, delta_location(str(tmp_path / "t")), population, "timestamp"
    )
    assert queries.hashed == [False]
    as_numbers = result.assign(user_id=result["user_id"].astype(int))
    assert 0 < _check(as_numbers, rows, None) < len(population)
