"""The embedded online store: one SQLite file, one table per feature set."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fs_dagster.stores.online.base import (
    EVENT_MICROS_COLUMN,
    ColumnKind,
    OnlineStore,
    OnlineTable,
    StoredTile,
    TileTable,
    TileWrite,
    now_micros,
)

__all__ = ["SqliteOnlineStore"]

_LAYOUTS = "fs_dagster_tables"
_PROGRESS = "fs_dagster_progress"

_SQL_TYPES: dict[ColumnKind, str] = {
    "string": "TEXT",
    "long": "INTEGER",
    "int": "INTEGER",
    "double": "REAL",
    "float": "REAL",
    "boolean": "INTEGER",
    "timestamp": "INTEGER",
    "date": "TEXT",
    "binary": "BLOB",
    "json": "TEXT",
    "decimal": "TEXT",
}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteOnlineStore(OnlineStore):
    """Online store in a SQLite file, for laptops and the embedded example project.

    Upserts keep the row with the newest event time: an older event never replaces a
    newer value (``ON CONFLICT ... DO UPDATE ... WHERE excluded.event > stored.event``).

    Args:
        path: the database file; created with its directory if missing.
        timeout: seconds to wait for a lock held by another writer.

    Example:
        >>> store = SqliteOnlineStore(".fs_dagster/online.db")  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, timeout: float = 30.0):
        self.path = str(path)
        self.timeout = timeout
        self._local: threading.local | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["timeout"])  # type: ignore[misc]

    def _connection(self) -> sqlite3.Connection:
        if self._local is None:
            self._local = threading.local()
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    def ensure_table(self, table: OnlineTable) -> None:
        """Create the table if missing and add feature columns it lacks."""
        con = self._connection()
        columns = [
            *(f"{_quote(c.name)} {_SQL_TYPES[c.kind]} NOT NULL" for c in table.keys),
            f"{_quote(EVENT_MICROS_COLUMN)} INTEGER NOT NULL",
            *(f"{_quote(c.name)} {_SQL_TYPES[c.kind]}" for c in table.features),
        ]
        keys = ", ".join(_quote(c.name) for c in table.keys)
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {_quote(table.name)} "
            f"({', '.join(columns)}, PRIMARY KEY ({keys}))"
        )
        existing = {row[1] for row in con.execute(f"PRAGMA table_info({_quote(table.name)})")}
        for column in table.features:
            if column.name not in existing:
                con.execute(
                    f"ALTER TABLE {_quote(table.name)} ADD COLUMN "
                    f"{_quote(column.name)} {_SQL_TYPES[column.kind]}"
                )
        self.record_layout(table)

    def record_layout(self, table: OnlineTable) -> None:
        """Record ``table``'s layout."""
        con = self._connection()
        con.execute(f"CREATE TABLE IF NOT EXISTS {_LAYOUTS} (name TEXT PRIMARY KEY, layout TEXT)")
        con.execute(
            f"INSERT INTO {_LAYOUTS} (name, layout) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET layout = excluded.layout",
            (table.name, table.to_json()),
        )

    def layout(self, name: str) -> OnlineTable | None:
        """The recorded layout of table ``name``."""
        con = self._connection()
        try:
            row = con.execute(f"SELECT layout FROM {_LAYOUTS} WHERE name = ?", (name,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return OnlineTable.from_json(row[0]) if row else None

    def write(self, table: OnlineTable, rows: Iterable[Mapping[str, Any]]) -> int:
        """Upsert rows in one transaction, keeping the newest event time per key."""
        names = [*table.key_names, EVENT_MICROS_COLUMN, *table.feature_names]
        placeholders = ", ".join("?" for _ in names)
        updates = ", ".join(
            f"{_quote(n)} = excluded.{_quote(n)}"
            for n in [EVENT_MICROS_COLUMN, *table.feature_names]
        )
        keys = ", ".join(_quote(n) for n in table.key_names)
        statement = (
            f"INSERT INTO {_quote(table.name)} ({', '.join(_quote(n) for n in names)}) "
            f"VALUES ({placeholders}) ON CONFLICT ({keys}) DO UPDATE SET {updates} "
            f"WHERE excluded.{_quote(EVENT_MICROS_COLUMN)} >= "
            f"{_quote(table.name)}.{_quote(EVENT_MICROS_COLUMN)}"
        )
        values = [tuple(row.get(n) for n in names) for row in rows]
        if not values:
            return 0
        return self._write_all(statement, values)

    def _write_all(self, statement: str, values: list[tuple[Any, ...]]) -> int:
        """Run ``statement`` for every row in one transaction (one writer at a time)."""
        con = self._connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(statement, values)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return len(values)

    def read_rows(
        self, table: OnlineTable, keys: Sequence[tuple[Any, ...]]
    ) -> list[dict[str, Any] | None]:
        """Stored rows for ``keys``, in order."""
        names = [EVENT_MICROS_COLUMN, *table.feature_names]
        where = " AND ".join(f"{_quote(n)} = ?" for n in table.key_names)
        statement = (
            f"SELECT {', '.join(_quote(n) for n in names)} FROM {_quote(table.name)} WHERE {where}"
        )
        con = self._connection()
        results: list[dict[str, Any] | None] = []
        booleans = {c.name for c in table.features if c.kind == "boolean"}
        for key in keys:
            row = con.execute(statement, tuple(key)).fetchone()
            if row is None:
                results.append(None)
                continue
            record = dict(zip(names, row, strict=True))
            for name in booleans:
                if record[name] is not None:
                    record[name] = bool(record[name])
            results.append(record)
        return results

    def ensure_tile_table(self, table: TileTable) -> None:
        """Create the tile and progress tables if missing."""
        con = self._connection()
        keys = [f"{_quote(c.name)} {_SQL_TYPES[c.kind]} NOT NULL" for c in table.keys]
        primary = ", ".join([*(_quote(c.name) for c in table.keys), "resolution", "tile_start"])
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {_quote(table.name)} ({', '.join(keys)}, "
            "resolution INTEGER NOT NULL, tile_start INTEGER NOT NULL, "
            "version INTEGER NOT NULL, state TEXT NOT NULL, expires_at INTEGER, "
            f"PRIMARY KEY ({primary}))"
        )
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {_PROGRESS} (name TEXT NOT NULL, "
            "batch_id INTEGER NOT NULL, max_event_micros INTEGER NOT NULL, "
            "PRIMARY KEY (name, batch_id))"
        )

    def _key_where(self, table: TileTable) -> str:
        return " AND ".join(f"{_quote(n)} = ?" for n in table.key_names)

    def read_tiles(
        self, table: TileTable, key: tuple[Any, ...], ranges: Sequence[tuple[int, int, int]]
    ) -> list[StoredTile]:
        """Unexpired tiles of ``key`` in the given ranges."""
        con = self._connection()
        now = now_micros() // 1_000_000
        statement = (
            f"SELECT resolution, tile_start, version, state FROM {_quote(table.name)} "
            f"WHERE {self._key_where(table)} AND resolution = ? AND tile_start BETWEEN ? AND ? "
            "AND (expires_at IS NULL OR expires_at > ?)"
        )
        tiles: list[StoredTile] = []
        for resolution, first, last in ranges:
            for row in con.execute(statement, (*key, resolution, first, last, now)):
                tiles.append(StoredTile(*row))
        return tiles

    def read_tile_versions(
        self, table: TileTable, tiles: Sequence[tuple[tuple[Any, ...], int, int]]
    ) -> list[StoredTile | None]:
        """Stored tiles at exact positions."""
        con = self._connection()
        statement = (
            f"SELECT resolution, tile_start, version, state FROM {_quote(table.name)} "
            f"WHERE {self._key_where(table)} AND resolution = ? AND tile_start = ?"
        )
        found: list[StoredTile | None] = []
        for key, resolution, start in tiles:
            row = con.execute(statement, (*key, resolution, start)).fetchone()
            found.append(StoredTile(*row) if row else None)
        return found

    def write_tiles(self, table: TileTable, writes: Sequence[TileWrite]) -> int:
        """Upsert tile states in one transaction; older versions never win."""
        if not writes:
            return 0
        names = [*table.key_names, "resolution", "tile_start", "version", "state", "expires_at"]
        conflict = ", ".join([*(_quote(n) for n in table.key_names), "resolution", "tile_start"])
        statement = (
            f"INSERT INTO {_quote(table.name)} ({', '.join(_quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)}) ON CONFLICT ({conflict}) DO UPDATE SET "
            "version = excluded.version, state = excluded.state, expires_at = excluded.expires_at "
            f"WHERE excluded.version >= {_quote(table.name)}.version"
        )
        now = now_micros() // 1_000_000
        values = [
            (*w.key, w.resolution, w.start, w.version, w.state, now + w.ttl_seconds) for w in writes
        ]
        return self._write_all(statement, values)

    def progress_before(self, name: str, batch_id: int) -> int | None:
        """Newest event time recorded before ``batch_id``."""
        row = (
            self._connection()
            .execute(
                f"SELECT max_event_micros FROM {_PROGRESS} WHERE name = ? AND batch_id < ? "
                "ORDER BY batch_id DESC LIMIT 1",
                (name, batch_id),
            )
            .fetchone()
        )
        return None if row is None else int(row[0])

    def record_progress(self, name: str, batch_id: int, max_event_micros: int) -> None:
        """Record the newest event time through ``batch_id`` (idempotent)."""
        self._connection().execute(
            f"INSERT INTO {_PROGRESS} (name, batch_id, max_event_micros) VALUES (?, ?, ?) "
            "ON CONFLICT (name, batch_id) DO UPDATE SET "
            "max_event_micros = excluded.max_event_micros",
            (name, batch_id, max_event_micros),
        )

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None) if self._local else None
        if connection is not None:
            connection.close()
            self._local.connection = None  # type: ignore[union-attr]

    def describe(self) -> dict[str, str]:
        """Kind and file path."""
        return {"kind": "sqlite", "path": self.path}
