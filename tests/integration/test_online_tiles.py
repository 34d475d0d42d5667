"""Online tiles merged by the executors' Python workers or by the driver: the same tile
states stored, each equal to states computed here from the events."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.engine.aggregates import (
    TilePartials,
    TileWriter,
    aggregation_plan,
    prepare_online_tiles,
)
from fs_dagster.engine.computation import Computed
from tests.integration.scenario import computed_batch

pytestmark = pytest.mark.spark

SCHEMA = "user_id STRING, session TIMESTAMP, amount DOUBLE, qty INT, remote BOOLEAN, ts TIMESTAMP"
SESSION = "2026-03-01T09:00:00Z"
#: (user_id, amount, qty, remote, event time): several events a tile, over two minutes
#: and two hours, a null ``qty`` (an integer state with a missing value) and a null flag.
EVENTS: list[tuple[str, float, int | None, bool | None, str]] = [
    ("u0", 1.0, 3, False, "2026-03-01T10:00:02Z"),
    ("u0", 2.5, None, True, "2026-03-01T10:00:01Z"),
    ("u0", 4.0, 7, None, "2026-03-01T10:01:30Z"),
    ("u1", 3.0, 1, False, "2026-03-01T10:00:05Z"),
    ("u1", 0.5, 9, False, "2026-03-01T10:00:09Z"),
    ("u1", 5.0, 2, True, "2026-03-01T11:00:07Z"),
    ("u2", 6.0, None, None, "2026-03-01T10:00:03Z"),
    *[(f"k{i}", float(i), i, i % 2 == 0, "2026-03-01T11:00:00Z") for i in range(30)],
]


def _seconds(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp())


def _batch(spark: SparkSession, tmp_path: Path) -> tuple[fs.FeatureSet, Computed]:
    name = f"ev_{uuid.uuid4().hex[:6]}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"user_id": u, "session": SESSION, "amount": a, "qty": q, "remote": r, "ts": t})
        for u, a, q, r, t in EVENTS
    ]
    (tmp_path / "part.json").write_text("\n".join([*lines, "{not json"]) + "\n")
    source = fs.FileSource(name=name, path=str(tmp_path), schema=SCHEMA)

    def build() -> object:
        return (
            fs.SparkSqlTransformation(
                f"SELECT user_id, session, amount, qty, remote, ts FROM {name}"
            )
            .aggregate(fs.Aggregation.sum("amount"))
            .aggregate(fs.Aggregation.count("amount"))
            .aggregate(fs.Aggregation.max("qty"))
            .aggregate(fs.Aggregation.boolean_or("remote"))
            .aggregate(fs.Aggregation.last_n("amount", 2))
            .by_windows("1m", "1h")
        )

    # A timestamp in the key: the driver gets it from Arrow with a time zone, the
    # executors' workers without; both must store the same key.
    fset = fs.streaming.feature_set(
        name=f"tiles_{name}",
        key=["user_id", "session"],
        data_sources=[source],
        timestamp_column_name="ts",
    )(build)  # type: ignore[arg-type]
    computed = computed_batch(spark, fset, source)
    return fset, computed


def _expected(resolutions: tuple[int, ...], times: int) -> dict[tuple[str, int, int], Any]:
    """Each tile's states for the events ``times`` over (written here from the list)."""
    tiles: dict[tuple[str, int, int], list[tuple[float, int | None, bool | None, int]]] = {}
    for user, amount, qty, remote, at in EVENTS:
        for resolution in resolutions:
            start = _seconds(at) // resolution * resolution
            tiles.setdefault((user, resolution, start), []).append(
                (amount, qty, remote, _seconds(at) * 1_000_000)
            )
    expected: dict[tuple[str, int, int], Any] = {}
    for position, once in tiles.items():
        events = once * times
        quantities = [q for _, q, _, _ in events if q is not None]
        flags = [r for _, _, r, _ in events if r is not None]
        # Two events at one time with one value are two events: both are kept.
        newest = sorted(((t, a) for a, _, _, t in events), reverse=True)[:2]
        expected[position] = {
            "sum": sum(a for a, _, _, _ in events),
            "count": len(events),
            "max": max(quantities) if quantities else None,
            "or": [sum(flags), len(flags)] if flags else None,
            "last": sorted(newest),
        }
    return expected


def _stored(
    store: fs.SqliteOnlineStore, plan: AggregationPlan, positions: list[tuple[str, int, int]]
) -> dict[tuple[str, int, int], Any]:
    session = datetime.fromisoformat(SESSION.replace("Z", "+00:00")).replace(tzinfo=None)
    found = store.read_tile_versions(
        plan.tile_table, [((user, session), res, start) for user, res, start in positions]
    )
    stored: dict[tuple[str, int, int], Any] = {}
    for position, tile in zip(positions, found, strict=True):
        assert tile is not None, position
        state = json.loads(tile.state)
        stored[position] = {
            "sum": state["sum:amount"],
            "count": state["count:amount"],
            "max": state.get("max:qty"),
            "or": state.get("bool:remote"),
            "last": sorted((int(t), v) for t, v in state["last:amount"]),
            "version": tile.version,
        }
    return stored


def _write(
    writer: TileWriter, plan: AggregationPlan, computed: Computed, version: int
) -> tuple[int, bool]:
    in_driver = writer.in_driver
    partials = TilePartials(plan)(writer.partition(computed.rows))
    return writer.write(partials, version), in_driver


def test_driver_and_executors_store_the_same_tiles(spark: SparkSession, tmp_path: Path) -> None:
    results: dict[str, dict[tuple[str, int, int], Any]] = {}
    for where in ("executors", "driver"):
        fset, computed = _batch(spark, tmp_path / where)
        plan = aggregation_plan(fset, computed.rows.schema)
        store = fs.SqliteOnlineStore(tmp_path / f"{where}.db")
        prepare_online_tiles(store, plan)
        writer = TileWriter(store, plan)
        if where == "executors":
            writer.driver_tiles = -1  # every batch to the executors
        else:
            writer.last_tiles = 0  # as after a small batch
        expected = _expected(plan.resolutions, 1)
        written, in_driver = _write(writer, plan, computed, 1)
        assert (written, in_driver) == (len(expected), where == "driver"), where
        assert writer.last_tiles == len(expected), where
        # The same batch again at the next version: merged into the stored tiles.
        written, in_driver = _write(writer, plan, computed, 2)
        assert (written, in_driver) == (len(expected), where == "driver"), where
        # And once more at that version, as a replay after a crash: nothing changes.
        assert _write(writer, plan, computed, 2)[0] == 0, where
        stored = _stored(store, plan, sorted(expected))
        twice = _expected(plan.resolutions, 2)
        for p, s in twice.items():
            assert {**s, "version": 2} == stored[p], (where, p)
        results[where] = stored
        computed.release()
        store.close()
    assert results["driver"] == results["executors"]


def test_a_large_batch_sends_the_next_to_the_executors(spark: SparkSession, tmp_path: Path) -> None:
    fset, computed = _batch(spark, tmp_path / "batch")
    plan = aggregation_plan(fset, computed.rows.schema)
    store = fs.SqliteOnlineStore(tmp_path / "online.db")
    prepare_online_tiles(store, plan)
    tiles = len(_expected(plan.resolutions, 1))
    writer = TileWriter(store, plan, driver_tiles=tiles - 1)
    assert not writer.in_driver  # the first batch may be a backlog
    _write(writer, plan, computed, 1)
    assert writer.last_tiles == tiles
    assert not writer.in_driver
    writer.driver_tiles = tiles
    assert writer.in_driver
    computed.release()
    store.close()
