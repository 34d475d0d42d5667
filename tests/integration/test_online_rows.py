"""Online rows written by the executors' Python workers or by the driver: the same rows
stored, the same counts."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.computation import BatchContext, Computed
from fs_dagster.engine.pipeline import online_table
from fs_dagster.engine.writers import OnlineRows
from fs_dagster.stores.online.base import EVENT_MICROS_COLUMN
from tests.integration.scenario import computed_batch

pytestmark = pytest.mark.spark

SCHEMA = "user_id STRING, amount DOUBLE, ts TIMESTAMP"
CTX = BatchContext(trigger="online", version=0, app_id="app", txn_version=0)
#: (user_id, amount, event time): keys with several events, out of time order, and one
#: whose key the transformation makes null (an invalid output row). (Which of two
#: events of a key at one time wins across partitions is the store's rule, not the
#: writer's: none here.)
EVENTS = [
    ("u0", 1.0, "2026-03-01T10:00:02Z"),
    ("u0", 2.0, "2026-03-01T10:00:01Z"),
    ("u1", 3.0, "2026-03-01T10:00:05Z"),
    ("u1", 4.0, "2026-03-01T10:00:09Z"),
    ("u1", 5.0, "2026-03-01T10:00:07Z"),
    ("u2", 6.0, "2026-03-01T10:00:03Z"),
    ("u2", 7.0, "2026-03-01T10:00:04Z"),
    ("nokey", 8.0, "2026-03-01T10:00:04Z"),
    *[(f"k{i}", float(i), "2026-03-01T11:00:00Z") for i in range(40)],
]


def _micros(iso: str) -> int:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    return int(moment.timestamp()) * 1_000_000


def _expected() -> dict[str, tuple[float, int]]:
    """The newest event of each key (written here from the list, not by the library)."""
    newest: dict[str, tuple[float, int]] = {}
    for user, amount, at in EVENTS:
        if user == "nokey":
            continue
        micros = _micros(at)
        if user not in newest or micros > newest[user][1]:
            newest[user] = (amount, micros)
    return newest


def _feature_set(spark: SparkSession, tmp_path: Path) -> tuple[fs.FeatureSet, Computed]:
    name = f"ev_{uuid.uuid4().hex[:6]}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"user_id": u, "amount": a, "ts": t}) for u, a, t in EVENTS]
    (tmp_path / "part.json").write_text("\n".join([*lines, "{not json"]) + "\n")
    source = fs.FileSource(name=name, path=str(tmp_path), schema=SCHEMA)

    def build() -> object:
        return fs.SparkSqlTransformation(
            f"SELECT NULLIF(user_id, 'nokey') AS user_id, amount, ts FROM {name}"
        )

    fset = fs.streaming.feature_set(
        name=f"rows_{name}", key="user_id", data_sources=[source], timestamp_column_name="ts"
    )(build)  # type: ignore[arg-type]
    computed = computed_batch(spark, fset, source)
    return fset, computed


def test_driver_and_executors_store_the_same_rows_and_counts(
    spark: SparkSession, tmp_path: Path
) -> None:
    store = fs.SqliteOnlineStore(tmp_path / "online.db")
    results: dict[str, dict[str, Any]] = {}
    for where in ("executors", "driver"):
        fset, computed = _feature_set(spark, tmp_path / where)
        table = replace(online_table(fset, computed.rows.schema), name=f"rows_{where}")
        store.ensure_table(table)
        writer = OnlineRows(fset, store, table)
        if where == "driver":
            writer.last_rows = 0  # as after a small batch
        assert writer.in_driver == (where == "driver")
        outcome = writer.write(computed, CTX)
        keys = sorted(_expected())
        stored = store.read_rows(table, [(k,) for k in keys])
        results[where] = {
            "written": outcome.rows_written,
            "counts": (
                computed.rows_in,
                computed.malformed,
                computed.invalid,
                computed.row_count,
                computed.outside_count,
                computed.max_event_micros,
            ),
            "stored": {
                k: (row["amount"], row[EVENT_MICROS_COLUMN]) if row else None
                for k, row in zip(keys, stored, strict=True)
            },
            "last_rows": writer.last_rows,
        }
        computed.release()
    newest = max(_micros(t) for u, _, t in EVENTS if u != "nokey")
    valid = len(EVENTS) - 1
    for where, result in results.items():
        assert result["stored"] == _expected(), where
        assert result["written"] == len(_expected()) or where == "executors", where
        assert result["counts"] == (len(EVENTS) + 1, 1, 1, valid, 0, newest), where
        # Every output row, the invalid one too: small enough for the driver next time.
        assert result["last_rows"] == len(EVENTS), where
    # The executors' partitions each write their newest row of a key: at least one row a
    # key, at most one a key and partition.
    assert len(_expected()) <= results["executors"]["written"] <= 2 * len(_expected())
    store.close()


def test_a_large_batch_sends_the_next_to_the_executors(spark: SparkSession, tmp_path: Path) -> None:
    store = fs.SqliteOnlineStore(tmp_path / "online.db")
    fset, computed = _feature_set(spark, tmp_path / "batch")
    table = online_table(fset, computed.rows.schema)
    store.ensure_table(table)
    writer = OnlineRows(fset, store, table, driver_rows=len(EVENTS) - 1)
    writer.last_rows = 0
    assert writer.in_driver
    writer.write(computed, CTX)
    computed.release()
    assert writer.last_rows == len(EVENTS)
    assert not writer.in_driver
    store.close()
