"""An aggregated online read has one dtype per feature, whatever the values read.

A model server reading one key gets the same columns and dtypes for a key with events, a
key never seen and a batch of both. SQLite is the real embedded store.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import fs_dagster as fs
from fs_dagster import Aggregation
from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.aggregation.states import partial_from_values
from fs_dagster.engine.aggregates import prepare_online_tiles, read_aggregates
from fs_dagster.stores.online.base import TileWrite, now_micros

pytestmark = [pytest.mark.unit]

EXPECTED = {
    "u": "object",
    "ts": "datetime64[ns]",
    "count_x_1h": "int64",
    "sum_x_1h": "float64",
    "sum_n_1h": "int64",
    "max_n_1h": "Int64",
    "min_t_1h": "datetime64[ns]",
    "avg_x_1h": "float64",
    "boolean_or_f_1h": "boolean",
    "last_2_n_1h": "object",
}


def _plan() -> AggregationPlan:
    source = fs.FileSource(
        name=f"d_{uuid.uuid4().hex[:6]}",
        path="/tmp/unused",
        schema="u STRING, x DOUBLE, n BIGINT, t TIMESTAMP, f BOOLEAN, ts TIMESTAMP",
    )
    feature_set = fs.streaming.feature_set(
        name="types", key="u", data_sources=[source], timestamp_column_name="ts"
    )(
        lambda: (
            fs.SparkSqlTransformation(f"SELECT * FROM {source.name}")
            .aggregate(Aggregation.count("x"))
            .aggregate(Aggregation.sum("x"))
            .aggregate(Aggregation.sum("n"))
            .aggregate(Aggregation.max("n"))
            .aggregate(Aggregation.min("t"))
            .aggregate(Aggregation.avg("x"))
            .aggregate(Aggregation.boolean_or("f"))
            .aggregate(Aggregation.last_n("n", 2))
            .by_windows("1 hour")
        )
    )
    kinds: dict[str, Any] = {"x": "double", "n": "long", "t": "timestamp", "f": "boolean"}
    return AggregationPlan(feature_set, {"u": "string"}, kinds)


def test_dtypes_do_not_depend_on_the_values(tmp_path: Path) -> None:
    plan = _plan()
    store = fs.SqliteOnlineStore(tmp_path / "online.db")
    prepare_online_tiles(store, plan)
    now = now_micros()
    second = now // 1_000_000 - 30
    event = second * 1_000_000
    t_micros = 1_767_225_600_123_456  # 2026-01-01 00:00:00.123456
    columns = {"x": 2.5, "n": 7, "t": t_micros, "f": True}
    state = {s.key: partial_from_values(s, [(event, columns[s.column])]) for s in plan.states}
    # One event, in its tile of every resolution, as ingestion writes it.
    store.write_tiles(
        plan.tile_table,
        [
            TileWrite(("a",), r, second // r * r, 1, json.dumps(state), 7200)
            for r in plan.resolutions
        ],
    )

    seen = read_aggregates(store, plan, [("a",)], now)
    unseen = read_aggregates(store, plan, [("never",)], now)
    both = read_aggregates(store, plan, [("a",), ("never",)], now)
    for frame in (seen, unseen, both):
        assert list(frame.columns) == list(EXPECTED)
        assert {c: str(t) for c, t in frame.dtypes.items()} == EXPECTED

    row = both.iloc[0]
    assert (row["count_x_1h"], row["sum_x_1h"], row["sum_n_1h"], row["max_n_1h"]) == (
        1,
        2.5,
        7,
        7,
    )
    assert row["min_t_1h"] == pd.Timestamp(t_micros, unit="us")
    assert row["avg_x_1h"] == 2.5
    assert bool(row["boolean_or_f_1h"]) is True
    assert row["last_2_n_1h"] == [7]
    assert both.loc[0, "ts"] == pd.Timestamp(now, unit="us")

    empty = both.iloc[1]
    assert (empty["count_x_1h"], empty["sum_x_1h"], empty["sum_n_1h"]) == (0, 0.0, 0)
    assert empty["max_n_1h"] is pd.NA and empty["boolean_or_f_1h"] is pd.NA
    assert pd.isna(empty["min_t_1h"]) and pd.isna(empty["avg_x_1h"])
    assert empty["last_2_n_1h"] is None
    pd.testing.assert_frame_equal(both.iloc[[1]].reset_index(drop=True), unseen)
