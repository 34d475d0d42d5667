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
)

__all__ = ["SqliteOnlineStore"]

_LAYOUTS = "fs_dagster_tables"

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

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None) if self._local else None
        if connection is not None:
            connection.close()
            self._local.connection = None  # type: ignore[union-attr]

    def describe(self) -> dict[str, str]:
        """Kind and file path."""
        return {"kind": "sqlite", "path": self.path}
