"""Column-wise window values equal the row-by-row merge's, for the states they cover."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import fs_dagster as fs
from fs_dagster import Aggregation
from fs_dagster.aggregation import columnar
from fs_dagster.aggregation.columnar import (
    columnar_supported,
    columnar_window_values,
    state_columns,
)
from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.aggregation.states import merge_states, partial_from_values
from fs_dagster.aggregation.tiles import TileIndex
from fs_dagster.engine.aggregates import _WindowReader
from fs_dagster.stores.online.base import ColumnKind

pytestmark = [pytest.mark.unit]

T = 1_790_000_000  # seconds; reads fall around here
COLUMNS: dict[str, ColumnKind] = {
    "amount": "double",
    "qty": "long",
    "flag": "boolean",
    "seen": "timestamp",
}


def _plan(*aggregates: Any, windows: tuple[str, ...]) -> AggregationPlan:
    source = fs.FileSource(
        name="tx",
        path="/tmp/fs-dagster-unit-columnar",
        schema="user_id STRING, amount DOUBLE, qty BIGINT, flag BOOLEAN, seen TIMESTAMP, "
        "ts TIMESTAMP",
    )
    transformation = fs.SparkSqlTransformation("SELECT * FROM tx")
    for aggregate in aggregates:
        transformation = transformation.aggregate(aggregate)
    feature_set = fs.streaming.feature_set(
        name="columnar", key="user_id", data_sources=[source], timestamp_column_name="ts"
    )(lambda: transformation.by_windows(*windows))
    return AggregationPlan(feature_set, {"user_id": "string"}, COLUMNS)


NUMERIC = _plan(
    Aggregation.sum("amount"),
    Aggregation.sum("qty"),
    Aggregation.count("amount"),
    Aggregation.min("amount"),
    Aggregation.max("qty"),
    Aggregation.min("seen"),
    Aggregation.max("seen"),
    Aggregation.boolean_or("flag"),
    Aggregation.boolean_and("flag"),
    windows=("10 seconds", "1m", "10 minutes", "1 hour", "1d", "7d", "30d"),
)


def _events(rng: random.Random, keys: list[str], end: int = T) -> list[dict[str, Any]]:
    events = []
    for _ in range(rng.randrange(0, 400)):
        micros = (end - int(rng.expovariate(1 / 86_400) * rng.choice([0.001, 0.1, 1, 10]))) * 10**6
        micros += rng.randrange(10**6)
        events.append(
            {
                "user_id": rng.choice(keys),
                "micros": micros,
                "amount": None if rng.random() < 0.1 else rng.uniform(-1e6, 1e6),
                "qty": None if rng.random() < 0.1 else rng.randrange(-(2**40), 2**40),
                "flag": None if rng.random() < 0.1 else rng.random() < 0.8,
                "seen": None if rng.random() < 0.1 else micros - rng.randrange(10**9),
            }
        )
    return events


def _partials(
    plan: AggregationPlan, events: list[dict[str, Any]], rng: random.Random
) -> pd.DataFrame:
    """Tile partials as ingestion writes them: a tile's events split over 1 to 3 batches."""
    cells: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for event in events:
        for resolution in plan.resolutions:
            start = event["micros"] // 10**6 // resolution * resolution
            cells.setdefault((event["user_id"], resolution, start), []).append(event)
    rows = []
    for (key, resolution, start), members in cells.items():
        batches = rng.randrange(1, 4)
        for batch in range(batches):
            part = members[batch::batches]
            if not part:
                continue
            state = {}
            for spec in plan.states:
                value = partial_from_values(spec, [(e["micros"], e[spec.column]) for e in part])
                if value is not None:
                    state[spec.key] = value
            rows.append((key, resolution, start, json.dumps(state)))
    return pd.DataFrame(rows, columns=["user_id", "__fs_resolution", "__fs_tile_start", "state"])


def _row_by_row(
    plan: AggregationPlan, tiles: pd.DataFrame, keys: list[Any], at: list[float]
) -> list[dict[str, Any]]:
    by_key: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
    for key, resolution, start, state in tiles.itertuples(index=False):
        merged = by_key.setdefault(key, {})
        tile = (int(resolution), int(start))
        merged[tile] = merge_states(plan.states, [merged.get(tile), json.loads(state)])
    reader = _WindowReader(plan)
    results = []
    for key, when in zip(keys, at, strict=True):
        if math.isnan(when):
            results.append(dict.fromkeys(o.name for o in plan.outputs))
            continue
        tiles_of_key = by_key.get(key, {})
        index = TileIndex(tiles_of_key, plan.resolutions)
        results.append(reader.values(index, tiles_of_key, int(when)))
    return results


def _same(got: Any, want: Any) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return (
            got is None
            or got is pd.NA
            or got is pd.NaT
            or (isinstance(got, float) and math.isnan(got))
        )
    if isinstance(want, float):
        return math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-6)
    if isinstance(want, pd.Timestamp):
        return pd.Timestamp(got) == want
    return bool(got == want) and type(got) is not float


def _numbers_by_hand(tiles: pd.DataFrame, merge: bool = True) -> dict[str, np.ndarray]:
    """The partials' states as numbers, in the columns ``state_columns`` names; with
    ``merge`` each tile's partials merged into one row here, else one row per partial."""
    cells: dict[tuple[Any, int, int, int], list[dict[str, Any]]] = {}
    for index, (key, resolution, start, state) in enumerate(tiles.itertuples(index=False)):
        cell = (key, int(resolution), int(start), 0 if merge else index)
        cells.setdefault(cell, []).append(json.loads(state))
    out: dict[str, list[Any]] = {}
    for (key, resolution, start, _), states in cells.items():
        row: dict[str, Any] = {"user_id": key, "__fs_resolution": resolution}
        row["__fs_tile_start"] = start
        for spec in NUMERIC.states:
            values = [s[spec.key] for s in states if spec.key in s]
            name = spec.key
            if spec.kind == "bool":
                row[f"{name}|t"] = sum(v[0] for v in values)
                row[f"{name}|n"] = sum(v[1] for v in values)
            elif spec.kind in ("min", "max"):
                row[f"{name}|present"] = len(values)
                lowest = spec.kind == "min"
                if values:
                    row[name] = min(values) if lowest else max(values)
                elif NUMERIC.column_kinds[spec.column] == "double":
                    row[name] = math.inf if lowest else -math.inf
                else:  # int64 bounds: a tile without values changes no min or max
                    row[name] = 2**63 - 1 if lowest else -(2**63)
            else:
                row[name] = sum(values)
        for column, value in row.items():
            out.setdefault(column, []).append(value)
    return {column: np.array(values) for column, values in out.items()}


@pytest.mark.parametrize("merge", [True, False], ids=["tiles", "partials"])
@pytest.mark.parametrize(
    ("seed", "end"),
    [*((s, T) for s in range(12)), (12, 0), (13, 3_600), (14, -500_000_000)],
    ids=[*(f"seed{s}" for s in range(12)), "at-the-epoch", "just-after-it", "1954"],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "chunks-on-threads"])
def test_columnar_values_equal_row_by_row(
    seed: int, end: int, merge: bool, chunked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = 1
    if chunked:  # reads a few at a time, on two threads
        monkeypatch.setattr(columnar, "_READS_PER_CHUNK", 7)
        threads = 2
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(rng.randrange(1, 6))]
    tiles = _partials(NUMERIC, _events(rng, keys, end), rng)
    population_keys = [rng.choice([*keys, "unknown", None]) for _ in range(300)]
    at: list[float] = []
    for _ in population_keys:
        if rng.random() < 0.05:
            at.append(math.nan)
        else:
            second = end - rng.choice([0, 1, 59, 60, 61, 3_600, 86_400]) - rng.randrange(0, 86_400)
            at.append(float(second * 10**6 + rng.randrange(10**6)))
    assert columnar_supported(NUMERIC)
    merged = _numbers_by_hand(tiles, merge)
    if len(tiles):
        assert set(merged) == {c.name for c in state_columns(NUMERIC)} | {*tiles.columns} - {
            "state"
        }
    got = columnar_window_values(
        NUMERIC, merged, ["user_id"], [pd.Series(population_keys)], np.array(at), threads=threads
    )
    want = _row_by_row(NUMERIC, tiles, population_keys, at)
    assert len(got) == len(NUMERIC.outputs)
    for row, expected in enumerate(want):
        for name, value in expected.items():
            actual = got[name].iloc[row]
            assert _same(actual, value), (
                f"row {row} key {population_keys[row]} at {at[row]}: {name} {actual!r} != {value!r}"
            )


def test_states_it_does_not_cover_take_the_row_path() -> None:
    assert not columnar_supported(_plan(Aggregation.avg("amount"), windows=("1h",)))
    assert not columnar_supported(_plan(Aggregation.last_n("amount", 3), windows=("1h",)))
    assert not columnar_supported(_plan(Aggregation.percentile("amount", 95), windows=("1h",)))
    assert columnar_supported(_plan(Aggregation.count("flag"), windows=("1h",)))


def test_times_beyond_the_supported_years_are_refused() -> None:
    tiles = pd.DataFrame(
        {"user_id": ["k"], "__fs_resolution": [1], "__fs_tile_start": [2**33], "state": ["{}"]}
    )
    with pytest.raises(ValueError, match="tile starts must fall between the years 1698"):
        columnar_window_values(
            NUMERIC, _numbers_by_hand(tiles), ["user_id"], [pd.Series(["k"])], np.array([0.0])
        )
    with pytest.raises(ValueError, match="read times must fall between"):
        columnar_window_values(
            NUMERIC,
            _numbers_by_hand(tiles.assign(__fs_tile_start=[0])),
            ["user_id"],
            [pd.Series(["k"])],
            np.array([-(2.0**33 + 9) * 1e6]),
        )


def _partition(codes: np.ndarray) -> list[int]:
    """Ids renumbered by first appearance (-1, a null key, kept): equal for two codings
    that group the same keys."""
    seen: dict[int, int] = {}
    return [-1 if c < 0 else seen.setdefault(int(c), len(seen)) for c in codes]


@pytest.mark.parametrize(
    ("tile_keys", "population_keys", "matches"),
    [
        (
            pa.chunked_array([["a", "b", None], ["c"]]),
            pd.Series(["c", "z", None, "a"], dtype=object),
            {0: 3, 3: 0},
        ),
        (
            pa.chunked_array([["a", "b"]], pa.large_string()),
            pd.Series(["b", None], dtype="string"),
            {0: 1},
        ),
        (pa.chunked_array([[1, 2, None]], pa.int64()), pd.Series([2.0, np.nan, 7.0]), {0: 1}),
        (pa.chunked_array([[1, 2]], pa.int32()), np.array([2, 1], np.int64), {0: 1, 1: 0}),
        # Not of the tiles' kind: pandas compares them (2.0 is 2; 1 is not "1").
        (pa.chunked_array([[1, 2]], pa.int64()), pd.Series([1.5, 2.0]), {1: 1}),
        (pa.chunked_array([["1", "2"]]), pd.Series([1, 2]), {}),
    ],
    ids=["strings", "large-strings", "ints-from-floats", "int32", "fractional", "ints-vs-strings"],
)
def test_arrow_key_ids_group_keys_as_pandas_does(
    tile_keys: pa.ChunkedArray,
    population_keys: Any,
    matches: dict[int, int],
    request: pytest.FixtureRequest,
) -> None:
    by_arrow = columnar._arrow_key_ids(tile_keys, population_keys) is not None
    assert by_arrow == (request.node.callspec.id not in ("fractional", "ints-vs-strings"))
    tile_ids, row_ids = columnar._key_ids([tile_keys], [population_keys])
    pandas_tiles, pandas_rows = columnar._key_ids([tile_keys.to_pandas()], [population_keys])
    assert _partition(np.concatenate([tile_ids, row_ids])) == _partition(
        np.concatenate([pandas_tiles, pandas_rows])
    )
    for row, tile in enumerate(row_ids):
        if row in matches:
            assert tile >= 0 and tile == tile_ids[matches[row]], (row, tile_ids, row_ids)
        else:
            assert tile not in set(tile_ids[tile_ids >= 0].tolist()), (row, tile_ids, row_ids)
    assert (tile_ids[np.asarray(tile_keys.is_null())] == -1).all()
