"""One behaviour suite for every online store: SQLite and Cassandra (real server)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fs_dagster import CassandraOnlineStore, OnlineStore, SqliteOnlineStore
from fs_dagster.stores.online.base import (
    EVENT_MICROS_COLUMN,
    OnlineColumn,
    OnlineTable,
    StoredTile,
    TileTable,
    TileWrite,
    now_micros,
)

T0 = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z in microseconds


@pytest.fixture(params=["sqlite", "cassandra"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    if request.param == "sqlite":
        yield SqliteOnlineStore(tmp_path / "online.db")
        return
    request.applymarker(pytest.mark.cassandra)
    host, port = request.getfixturevalue("cassandra_contact")
    keyspace = request.getfixturevalue("cassandra_keyspace")
    cassandra = CassandraOnlineStore([host], port=port, keyspace=keyspace, consistency="ONE")
    yield cassandra
    cassandra.close()


def table(name: str | None = None, ttl: float | None = None) -> OnlineTable:
    return OnlineTable(
        name=name or f"t_{uuid.uuid4().hex[:10]}",
        keys=(OnlineColumn("user_id", "string"),),
        features=(
            OnlineColumn("amount", "double"),
            OnlineColumn("count", "long"),
            OnlineColumn("flag", "boolean"),
            OnlineColumn("seen_at", "timestamp"),
            OnlineColumn("day", "date"),
            OnlineColumn("tags", "json"),
            OnlineColumn("raw", "binary"),
        ),
        timestamp_column="ts",
        ttl_seconds=ttl,
    )


def row(user: str, event: int, amount: float, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "user_id": user,
        EVENT_MICROS_COLUMN: event,
        "amount": amount,
        "count": 7,
        "flag": True,
        "seen_at": T0 + 123_456,
        "day": date(2026, 3, 1),
        "tags": '["a","b"]',
        "raw": b"\x00\x01",
    }
    values.update(extra)
    return values


def test_write_and_read_round_trip_types(store: OnlineStore) -> None:
    layout = table()
    store.ensure_table(layout)
    store.ensure_table(layout)  # idempotent
    assert store.write(layout, [row("u1", T0, 1.5), row("u2", T0 + 1, 2.5, flag=False)]) == 2
    result = store.read(layout, [("u2",), ("u1",), ("nobody",)])
    assert list(result["user_id"]) == ["u2", "u1", "nobody"]
    assert list(result.columns) == [
        "user_id",
        "ts",
        "amount",
        "count",
        "flag",
        "seen_at",
        "day",
        "tags",
        "raw",
    ]
    first = result.iloc[1]
    assert first["amount"] == 1.5
    assert first["count"] == 7
    assert bool(first["flag"]) is True
    assert not bool(result.iloc[0]["flag"])
    assert first["ts"] == pd.Timestamp("2026-03-01T12:00:00")
    assert first["seen_at"] == pd.Timestamp("2026-03-01T12:00:00.123456")
    assert first["day"] == date(2026, 3, 1)
    assert first["tags"] == '["a","b"]'
    assert bytes(first["raw"]) == b"\x00\x01"
    missing = result.iloc[2]
    assert pd.isna(missing["amount"]) and pd.isna(missing["ts"])


def test_older_event_never_overwrites_newer(store: OnlineStore) -> None:
    layout = table()
    store.ensure_table(layout)
    store.write(layout, [row("u1", T0 + 10, 10.0)])
    store.write(layout, [row("u1", T0 + 5, 5.0)])  # late, older event
    assert store.read(layout, [("u1",)]).iloc[0]["amount"] == 10.0
    store.write(layout, [row("u1", T0 + 20, 20.0)])
    assert store.read(layout, [("u1",)]).iloc[0]["amount"] == 20.0
    # Replaying the same write changes nothing.
    store.write(layout, [row("u1", T0 + 20, 20.0)])
    assert store.read(layout, [("u1",)]).iloc[0]["amount"] == 20.0


def test_layout_is_recorded_for_spark_free_readers(store: OnlineStore) -> None:
    layout = table()
    assert store.layout(layout.name) is None
    store.ensure_table(layout)
    assert store.layout(layout.name) == layout


def test_new_feature_columns_are_added(store: OnlineStore) -> None:
    layout = table()
    store.ensure_table(layout)
    store.write(layout, [row("u1", T0, 1.0)])
    wider = OnlineTable(
        name=layout.name,
        keys=layout.keys,
        features=(*layout.features, OnlineColumn("score", "double")),
        timestamp_column="ts",
    )
    store.ensure_table(wider)
    store.write(wider, [row("u2", T0, 2.0, score=0.5)])
    result = store.read(wider, [("u1",), ("u2",)])
    assert pd.isna(result.iloc[0]["score"])
    assert result.iloc[1]["score"] == 0.5


def test_ttl_is_by_event_time(store: OnlineStore) -> None:
    layout = table(ttl=3600)
    store.ensure_table(layout)
    now = now_micros()
    store.write(
        layout, [row("fresh", now - 60_000_000, 1.0), row("stale", now - 7_200_000_000, 2.0)]
    )
    result = store.read(layout, [("fresh",), ("stale",)])
    assert result.iloc[0]["amount"] == 1.0
    assert pd.isna(result.iloc[1]["amount"])


def test_composite_keys(store: OnlineStore) -> None:
    layout = OnlineTable(
        name=f"t_{uuid.uuid4().hex[:10]}",
        keys=(OnlineColumn("user_id", "string"), OnlineColumn("merchant_id", "long")),
        features=(OnlineColumn("amount", "double"),),
        timestamp_column="ts",
    )
    store.ensure_table(layout)
    store.write(
        layout,
        [
            {"user_id": "u1", "merchant_id": 1, EVENT_MICROS_COLUMN: T0, "amount": 1.0},
            {"user_id": "u1", "merchant_id": 2, EVENT_MICROS_COLUMN: T0, "amount": 2.0},
        ],
    )
    result = store.read(layout, [("u1", 2), ("u1", 1), ("u2", 1)])
    assert result["amount"].tolist()[:2] == [2.0, 1.0]
    assert pd.isna(result.iloc[2]["amount"])


TILE_KEYS = {
    "string": (OnlineColumn("user_id", "string"),),
    # Keys that share every column but the last, and a float that Cassandra returns as
    # another Python value than the one written (float32).
    "composite-float": (OnlineColumn("region", "string"), OnlineColumn("score", "float")),
    # Strings and integers come back as the values asked for (rows matched by value).
    "composite-long": (OnlineColumn("region", "string"), OnlineColumn("shard", "long")),
}


def tile_keys(kind: str) -> list[tuple[Any, ...]]:
    if kind == "string":
        return [(f"u{i}",) for i in range(37)]
    if kind == "composite-long":
        return [(region, i * 7) for region in ("eu", "us", "apac") for i in range(13)]
    return [(region, i / 10 + 0.1) for region in ("eu", "us", "apac") for i in range(13)]


#: A key of each kind with nothing stored.
NOBODY = {"string": ("nobody",), "composite-float": ("eu", 99.5), "composite-long": ("eu", 1)}


@pytest.mark.parametrize("kind", list(TILE_KEYS))
def test_tiles_of_many_keys(store: OnlineStore, kind: str) -> None:
    """Tiles written and read for many keys at once come back to the right key: reads and
    writes may serve several keys per request."""
    table = TileTable(name=f"tiles_{uuid.uuid4().hex[:10]}", keys=TILE_KEYS[kind])
    store.ensure_tile_table(table)
    keys = tile_keys(kind)
    day = 86_400
    stored: dict[tuple[tuple[Any, ...], int, int], StoredTile] = {}
    writes: list[TileWrite] = []
    for i, key in enumerate(keys):
        # Key 0 has more tiles than one request carries; key 1 a state past a batch's size.
        starts = range(40) if i == 0 else range(i % 4 + 1)
        for n in starts:
            for resolution in (60, 3600):
                start = 1_772_366_400 + n * resolution
                state = json.dumps({"sum": i * 1000 + n, "pad": "x" * (3000 if i == 1 else i)})
                writes.append(TileWrite(key, resolution, start, 5, state, 30 * day))
                stored[(key, resolution, start)] = StoredTile(resolution, start, 5, state)
    assert store.write_tiles(table, writes) == len(writes)
    # An older version of a stored tile never wins.
    older = writes[7]
    store.write_tiles(table, [TileWrite(older.key, older.resolution, older.start, 4, "{}", day)])

    # Every key asks for other positions: some stored, some not.
    wanted = [
        (key, resolution, 1_772_366_400 + n * resolution)
        for i, key in enumerate(keys)
        for resolution in (60, 3600)
        for n in range(i % 3, i % 3 + 3)
    ]
    assert store.read_tile_versions(table, wanted) == [stored.get(w) for w in wanted]

    ranges = [(60, 1_772_366_400 + 60, 1_772_366_400 + 120), (3600, 1_772_366_400, 1_772_370_000)]
    shuffled = [*keys[::-1], NOBODY[kind]]
    per_key = store.read_tiles_for_keys(table, shuffled, ranges)
    for key, tiles in zip(shuffled, per_key, strict=True):
        expected = [
            tile
            for (k, resolution, start), tile in stored.items()
            if k == key
            and any(r == resolution and first <= start <= last for r, first, last in ranges)
        ]
        assert sorted(tiles, key=lambda t: (t.resolution, t.start)) == sorted(
            expected, key=lambda t: (t.resolution, t.start)
        ), key


def test_rows_of_many_keys(store: OnlineStore) -> None:
    """Rows written and read for many keys at once come back to the right key, floats too."""
    layout = OnlineTable(
        name=f"t_{uuid.uuid4().hex[:10]}",
        keys=TILE_KEYS["composite-float"],
        features=(OnlineColumn("amount", "double"), OnlineColumn("note", "string")),
        timestamp_column="ts",
    )
    store.ensure_table(layout)
    keys = tile_keys("composite-float")
    rows = [
        {"region": r, "score": s, EVENT_MICROS_COLUMN: T0 + i, "amount": float(i), "note": "n" * i}
        for i, (r, s) in enumerate(keys)
    ]
    assert store.write(layout, rows) == len(rows)
    asked = [*keys[::-1], ("eu", 99.5), ("mars", 0.1)]
    result = store.read(layout, asked)
    assert result["amount"].tolist()[: len(keys)] == [float(i) for i in range(len(keys))][::-1]
    assert result["note"].tolist()[: len(keys)] == ["n" * i for i in range(len(keys))][::-1]
    assert result["amount"].iloc[len(keys) :].isna().all()


def test_tile_history_and_one_key_reads(store: OnlineStore) -> None:
    """Creation and seeding times come back together; the first creation time stays. A
    one-key read (one request) finds the key's tiles in range, and a row-level one the row."""
    tiles = TileTable(name=f"tiles_{uuid.uuid4().hex[:10]}", keys=(OnlineColumn("u", "string"),))
    store.ensure_tile_table(tiles)
    assert store.tiles_history(tiles) == (None, None)
    store.mark_tiles_created(tiles)
    created = store.tiles_created_at(tiles)
    assert created is not None and abs(created - now_micros()) < 60_000_000
    store.mark_tiles_created(tiles)
    store.mark_tiles_seeded(tiles, T0)
    assert store.tiles_history(tiles) == (created, T0)
    store.mark_tiles_seeded(tiles, T0 + 1)
    assert store.tiles_history(tiles) == (created, T0 + 1)

    start = 1_772_366_400
    store.write_tiles(
        tiles,
        [TileWrite(("a",), 60, start + n * 60, 3, f'{{"n":{n}}}', 86_400) for n in range(4)],
    )
    assert store.read_tiles_for_keys(tiles, [("a",)], [(60, start + 60, start + 120)]) == [
        [StoredTile(60, start + 60, 3, '{"n":1}'), StoredTile(60, start + 120, 3, '{"n":2}')]
    ]
    assert store.read_tiles_for_keys(tiles, [("b",)], [(60, start, start + 240)]) == [[]]
    # A read at a past time asks for the tiles and the history together.
    asked = [("b",), ("a",)]
    ranges = [(60, start + 60, start + 120), (3600, start, start)]
    assert store.read_tiles_with_history(tiles, asked, ranges) == (
        store.read_tiles_for_keys(tiles, asked, ranges),
        (created, T0 + 1),
    )
    assert store.read_tiles_with_history(tiles, asked, []) == ([[], []], (created, T0 + 1))
    fresh = TileTable(name=f"tiles_{uuid.uuid4().hex[:10]}", keys=(OnlineColumn("u", "string"),))
    store.ensure_tile_table(fresh)
    assert store.read_tiles_with_history(fresh, [("a",)], ranges) == ([[]], (None, None))

    rows = table()
    store.ensure_table(rows)
    store.write(rows, [row("u1", T0, 1.5)])
    found = store.read_rows(rows, [("u1",)])[0]
    assert found is not None and found["amount"] == 1.5
    assert store.read_rows(rows, [("u2",)]) == [None]
