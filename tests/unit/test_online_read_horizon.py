"""Online reads are honoured or refused, never silently wrong.

Tiles expire a resolution's retention after they are written; a read whose tiles may be
gone raises, a row-level read with ``at=`` raises. SQLite is the real embedded store.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import fs_dagster as fs
from fs_dagster import Aggregation
from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.engine.aggregates import prepare_online_tiles, read_aggregates
from fs_dagster.stores.online.base import TileWrite, now_micros

pytestmark = [pytest.mark.unit]

NOW = int(datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp())


def _plan(windows: tuple[str, ...] = ("1 minute", "1 hour", "7 days")) -> AggregationPlan:
    source = fs.FileSource(
        name=f"h_{uuid.uuid4().hex[:6]}",
        path="/tmp/unused",
        schema="u STRING, x DOUBLE, ts TIMESTAMP",
    )
    feature_set = fs.streaming.feature_set(
        name="horizon", key="u", data_sources=[source], timestamp_column_name="ts"
    )(
        lambda: (
            fs.SparkSqlTransformation(f"SELECT u, x, ts FROM {source.name}")
            .aggregate(Aggregation.sum("x"))
            .by_windows(*windows)
        )
    )
    return AggregationPlan(feature_set, {"u": "string"}, {"x": "double"})


def test_reads_near_now_are_always_complete() -> None:
    plan = _plan()
    for back in (0, 30, 300):
        assert plan.expired_rung((NOW - back) * 1_000_000, NOW, None) is None


def test_a_read_past_the_finest_retention_is_refused() -> None:
    plan = _plan()
    finest = plan.resolutions[0]
    too_old = NOW - plan.retention(finest) - 5
    assert plan.expired_rung(too_old * 1_000_000, NOW, None) == finest
    # Tiles written after the table was created live a retention past that, whatever
    # their event time: a table created a minute ago answers reads of last March.
    march = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())
    assert plan.expired_rung(march * 1_000_000, NOW, NOW - 60) is None
    assert plan.expired_rung(march * 1_000_000, NOW, NOW - 3 * 86400) is not None
    # A backfill seeding skips tiles already past their retention: reads needing them
    # are refused even in a table created a minute ago.
    assert plan.expired_rung(march * 1_000_000, NOW, NOW - 60, seeded_at=NOW - 30) == finest
    assert plan.expired_rung((NOW - 10) * 1_000_000, NOW, NOW - 60, seeded_at=NOW - 30) is None


def test_store_refuses_reads_whose_tiles_may_be_gone(tmp_path: Path) -> None:
    plan = _plan(("1 minute", "1 hour"))
    store = fs.SqliteOnlineStore(tmp_path / "online.db")
    table = plan.tile_table
    long_ago = now_micros() - 2 * 86400 * 1_000_000
    store.ensure_tile_table(table)
    store.record_progress(f"{table.name}#created", 0, long_ago)  # created two days ago
    prepare_online_tiles(store, plan)  # keeps the recorded creation time
    assert store.tiles_created_at(table) == long_ago
    second = now_micros() // 1_000_000 - 30
    state = json.dumps({plan.states[0].key: 2.5})
    store.write_tiles(table, [TileWrite(("a",), 1, second, 1, state, 600)])
    values = read_aggregates(store, plan, [("a",)], now_micros())
    assert values.loc[0, "sum_x_1m"] == 2.5
    with pytest.raises(ValueError, match="online tiles cannot answer a read"):
        read_aggregates(store, plan, [("a",)], long_ago)


def test_row_level_at_is_refused(tmp_path: Path) -> None:
    source = fs.FileSource(
        name=f"r_{uuid.uuid4().hex[:6]}", path="/tmp/unused", schema="u STRING, ts TIMESTAMP"
    )
    feature_set = fs.streaming.feature_set(
        name="rows", key="u", data_sources=[source], timestamp_column_name="ts"
    )(lambda: fs.SparkSqlTransformation(f"SELECT u, ts FROM {source.name}"))
    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        feature_sets=[feature_set],
    )
    with pytest.raises(ValueError, match="row-level"):
        client.get_online_features(feature_set, "a", at=datetime.now(UTC) - timedelta(hours=1))
