"""The online store interface and the column encoding every store shares.

The engine hands a store *encoded* rows: plain Python values, with every timestamp as
microseconds since the epoch (UTC) and nested values as JSON text. That keeps event-time
precision in stores whose timestamp type has milliseconds (Cassandra), and keeps the
Python worker's local time zone out of the data.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

__all__ = [
    "EVENT_MICROS_COLUMN",
    "ColumnKind",
    "OnlineColumn",
    "OnlineStore",
    "OnlineTable",
    "StoredTile",
    "TileTable",
    "TileWrite",
    "feature_array",
    "key_array",
    "micros_array",
    "now_micros",
]

#: The progress-log name under which a tile table's creation time is kept.
_CREATED_SUFFIX = "#created"
#: ... and the time of its latest backfill seeding.
_SEEDED_SUFFIX = "#seeded"

#: Event time of the stored vector, in microseconds; compared on every upsert.
EVENT_MICROS_COLUMN = "__fs_event_micros"

ColumnKind = Literal[
    "string",
    "long",
    "int",
    "double",
    "float",
    "boolean",
    "timestamp",
    "date",
    "binary",
    "json",
    "decimal",
]


def now_micros() -> int:
    """Wall-clock time in microseconds since the epoch."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class OnlineColumn:
    """A column of an online table: its name and how its values are encoded."""

    name: str
    kind: ColumnKind


@dataclass(frozen=True)
class OnlineTable:
    """The layout of one feature set's online table.

    Attributes:
        name: table name (the feature set's storage name).
        keys: key columns.
        features: feature columns, in output order.
        timestamp_column: name under which the event time is returned on reads.
        ttl_seconds: values older than this (by event time) are not served.
    """

    name: str
    keys: tuple[OnlineColumn, ...]
    features: tuple[OnlineColumn, ...]
    timestamp_column: str
    ttl_seconds: float | None = None

    def to_json(self) -> str:
        """The layout as JSON, kept in the store so readers need no Spark."""
        return json.dumps(
            {
                "name": self.name,
                "keys": [[c.name, c.kind] for c in self.keys],
                "features": [[c.name, c.kind] for c in self.features],
                "timestamp_column": self.timestamp_column,
                "ttl_seconds": self.ttl_seconds,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> OnlineTable:
        """Read a layout written by :meth:`to_json`."""
        data = json.loads(text)
        return cls(
            name=data["name"],
            keys=tuple(OnlineColumn(n, k) for n, k in data["keys"]),
            features=tuple(OnlineColumn(n, k) for n, k in data["features"]),
            timestamp_column=data["timestamp_column"],
            ttl_seconds=data["ttl_seconds"],
        )

    @property
    def key_names(self) -> list[str]:
        """Key column names."""
        return [c.name for c in self.keys]

    @property
    def feature_names(self) -> list[str]:
        """Feature column names."""
        return [c.name for c in self.features]

    def decode(
        self, rows: Sequence[Mapping[str, Any] | None], keys: Sequence[tuple[Any, ...]]
    ) -> pd.DataFrame:
        """Build the read result: one row per requested key, in order; nulls when absent.

        Absent means never written, or older than the TTL by event time.
        """
        cutoff = None if self.ttl_seconds is None else now_micros() - int(self.ttl_seconds * 1e6)
        served = [
            None
            if row is None or (cutoff is not None and row[EVENT_MICROS_COLUMN] < cutoff)
            else row
            for row in rows
        ]
        data: dict[str, Any] = {}
        for index, column in enumerate(self.keys):
            data[column.name] = key_array([key[index] for key in keys], column.kind)
        data[self.timestamp_column] = micros_array(
            [row[EVENT_MICROS_COLUMN] if row is not None else None for row in served]
        )
        for column in self.features:
            name = column.name
            data[name] = feature_array(
                [row.get(name) if row is not None else None for row in served], column.kind
            )
        # Typed arrays in, one frame out: a one-key read is dominated by pandas otherwise.
        return pd.DataFrame(data, index=pd.RangeIndex(len(served)), copy=False)


@dataclass(frozen=True)
class TileTable:
    """The layout of one aggregated feature set's tile table.

    Rows are keyed by the entity key, the tile resolution (seconds) and the tile start
    (seconds since the epoch); each holds the tile's full partial state (JSON) and the
    version (micro-batch id) that wrote it.
    """

    name: str
    keys: tuple[OnlineColumn, ...]

    @property
    def key_names(self) -> list[str]:
        """Key column names."""
        return [c.name for c in self.keys]


class StoredTile(NamedTuple):
    """A tile as stored: resolution and start (seconds), version and state JSON (a named
    tuple: reads build thousands of them from the driver's row tuples)."""

    resolution: int
    start: int
    version: int
    state: str


@dataclass(frozen=True)
class TileWrite:
    """A full tile state to store, with its version and time to live (seconds)."""

    key: tuple[Any, ...]
    resolution: int
    start: int
    version: int
    state: str
    ttl_seconds: int


def micros_array(micros: list[Any]) -> np.ndarray:
    """A read result's time column from microseconds (``None`` for missing), as naive UTC
    ``datetime64[ns]``; integer arithmetic throughout, so no precision is lost and no NaN
    float is converted."""
    return np.array(micros, dtype="datetime64[us]").astype("datetime64[ns]")


def _masked(values: list[Any], fill: Any) -> tuple[list[Any], np.ndarray]:
    mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    return [fill if v is None else v for v in values], mask


def feature_array(values: list[Any], kind: ColumnKind) -> Any:
    """One feature column of a read result, typed by its kind; missing values are nulls.

    The same kind gives the same dtype whatever the values: integers as pandas' nullable
    ``Int64``, booleans as nullable ``boolean``, floats as ``float64`` (NaN for null),
    timestamps (microseconds) as ``datetime64[ns]``, everything else as objects.

    Example:
        >>> feature_array([3, None], "long").tolist()
        [3, <NA>]
    """
    if kind == "timestamp":
        return micros_array(values)
    if kind in ("long", "int"):
        filled, mask = _masked(values, 0)
        return pd.arrays.IntegerArray(np.array(filled, dtype=np.int64), mask)
    if kind == "boolean":
        filled, mask = _masked(values, False)
        return pd.arrays.BooleanArray(np.array(filled, dtype=bool), mask)
    if kind in ("double", "float"):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if kind == "date":
        values = [_as_date(v) for v in values]
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def key_array(values: list[Any], kind: ColumnKind) -> Any:
    """A read result's key column, as given by the caller (keys are never null)."""
    if kind in ("long", "int"):
        return np.array(values, dtype=np.int64)
    if kind in ("double", "float"):
        return np.array(values, dtype=np.float64)
    if kind == "string":
        column = np.empty(len(values), dtype=object)
        column[:] = values
        return column
    return pd.Series(values).to_numpy()


def _as_date(value: Any) -> Any:
    if value is None or isinstance(value, date):
        return value
    if hasattr(value, "date"):
        return value.date()
    return date.fromisoformat(str(value))


class OnlineStore(ABC):
    """Keeps the latest feature vector per key, by event time.

    Implementations must be picklable (configuration only; connections opened lazily),
    because Spark ships them to the Python workers that write partitions.
    """

    @abstractmethod
    def ensure_table(self, table: OnlineTable) -> None:
        """Create the table if it does not exist, add missing feature columns, and record
        the layout (see :meth:`layout`)."""

    @abstractmethod
    def record_layout(self, table: OnlineTable) -> None:
        """Record a layout for Spark-free readers (done by :meth:`ensure_table` too)."""

    @abstractmethod
    def layout(self, name: str) -> OnlineTable | None:
        """The layout recorded for table ``name`` by :meth:`ensure_table`, if any."""

    @abstractmethod
    def write(self, table: OnlineTable, rows: Iterable[Mapping[str, Any]]) -> int:
        """Upsert encoded rows; a row older (by event time) than the stored one is ignored.

        Each row holds the key columns, :data:`EVENT_MICROS_COLUMN` and the features.
        Returns the number of rows sent.
        """

    @abstractmethod
    def read_rows(
        self, table: OnlineTable, keys: Sequence[tuple[Any, ...]]
    ) -> list[dict[str, Any] | None]:
        """The stored rows for ``keys`` (``None`` where there is none), in order."""

    def read(self, table: OnlineTable, keys: Sequence[tuple[Any, ...]]) -> pd.DataFrame:
        """The latest feature vectors for ``keys`` as a DataFrame, one row per key."""
        return table.decode(self.read_rows(table, keys), keys)

    @abstractmethod
    def ensure_tile_table(self, table: TileTable) -> None:
        """Create the tile table (and the progress table) if missing."""

    @abstractmethod
    def read_tiles(
        self, table: TileTable, key: tuple[Any, ...], ranges: Sequence[tuple[int, int, int]]
    ) -> list[StoredTile]:
        """Tiles of ``key`` with ``first <= start <= last`` for each
        ``(resolution, first, last)`` in ``ranges``."""

    def read_tiles_for_keys(
        self,
        table: TileTable,
        keys: Sequence[tuple[Any, ...]],
        ranges: Sequence[tuple[int, int, int]],
    ) -> list[list[StoredTile]]:
        """:meth:`read_tiles` for several keys, in order (stores may read concurrently)."""
        return [self.read_tiles(table, key, ranges) for key in keys]

    @abstractmethod
    def read_tile_versions(
        self, table: TileTable, tiles: Sequence[tuple[tuple[Any, ...], int, int]]
    ) -> list[StoredTile | None]:
        """The stored tiles at exact ``(key, resolution, start)`` positions, in order."""

    @abstractmethod
    def write_tiles(self, table: TileTable, writes: Sequence[TileWrite]) -> int:
        """Store full tile states; a write never replaces a tile of a newer version."""

    @abstractmethod
    def progress_before(self, name: str, batch_id: int) -> int | None:
        """The newest event time (micros) recorded by a batch before ``batch_id``."""

    @abstractmethod
    def record_progress(self, name: str, batch_id: int, max_event_micros: int) -> None:
        """Record the newest event time seen up to and including ``batch_id``."""

    def mark_tiles_created(self, table: TileTable) -> None:
        """Record when ``table`` was first written (once; see :meth:`tiles_created_at`)."""
        name = f"{table.name}{_CREATED_SUFFIX}"
        if self.progress_before(name, 1) is None:
            self.record_progress(name, 0, now_micros())

    def tiles_created_at(self, table: TileTable) -> int | None:
        """When ``table`` was first written (micros), if recorded: no tile is older."""
        return self.progress_before(f"{table.name}{_CREATED_SUFFIX}", 1)

    def mark_tiles_seeded(self, table: TileTable, at_micros: int) -> None:
        """Record the latest seeding of ``table`` by a backfill, which skips tiles whose
        retention had passed at ``at_micros``."""
        self.record_progress(f"{table.name}{_SEEDED_SUFFIX}", 0, at_micros)

    def tiles_seeded_at(self, table: TileTable) -> int | None:
        """When ``table`` was last seeded (micros), if ever."""
        return self.progress_before(f"{table.name}{_SEEDED_SUFFIX}", 1)

    def tiles_history(self, table: TileTable) -> tuple[int | None, int | None]:
        """:meth:`tiles_created_at` and :meth:`tiles_seeded_at` of ``table``; a store
        with round trips asks both at once."""
        return self.tiles_created_at(table), self.tiles_seeded_at(table)

    def read_tiles_with_history(
        self,
        table: TileTable,
        keys: Sequence[tuple[Any, ...]],
        ranges: Sequence[tuple[int, int, int]],
    ) -> tuple[list[list[StoredTile]], tuple[int | None, int | None]]:
        """:meth:`read_tiles_for_keys` and :meth:`tiles_history` together, what a read at
        a past time needs; a store with round trips asks for both at once."""
        return self.read_tiles_for_keys(table, keys, ranges), self.tiles_history(table)

    @staticmethod
    def _history_names(table: TileTable) -> tuple[str, str]:
        """Progress-log names of ``table``'s creation and seeding times."""
        return f"{table.name}{_CREATED_SUFFIX}", f"{table.name}{_SEEDED_SUFFIX}"

    def close(self) -> None:  # noqa: B027 - optional for stores without connections
        """Release connections held by this process."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """Non-secret facts for Dagster metadata (kind, location)."""
