"""The production online store: Cassandra, one table per feature set.

Every upsert is written ``USING TIMESTAMP <event time in microseconds>``, so Cassandra's
own last-write-wins keeps the vector with the newest *event* time: a late, older event
never overwrites a newer value, and a replayed micro-batch rewrites identical cells.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fs_dagster.definitions.secrets import Secret, SecretLike, as_secret
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

__all__ = ["CassandraOnlineStore"]

_LAYOUTS = "fs_dagster_tables"
_PROGRESS = "fs_dagster_progress"
#: Tombstone grace of tile tables: the default hint window (3 h), not 10 days. Every tile
#: write carries a TTL and tiles are never deleted, so each replica expires a tile on its
#: own; a short grace only keeps expired tiles from piling up in a busy key's partition.
_TILE_GC_GRACE_SECONDS = 3 * 3600
#: Tiles of one key per read or write request: a micro-batch usually touches a few per
#: key (one per resolution); a hot key's many stay well below the batch size warning.
_TILES_PER_REQUEST = 16
#: Keys (partitions) per tile request. Every request costs the driver and the coordinator
#: far more than a row does, so tile reads and writes go for up to this many keys at a
#: time; Cassandra warns above 10 partitions in one unlogged batch.
_KEYS_PER_REQUEST = 10
#: Estimated size of one batch, under Cassandra's 5 KiB batch size warning: text and
#: binary values plus what a row and a value cost beyond them (a tile row of nine values
#: measured about 150 bytes besides its text).
_BATCH_BYTES = 4096
_ROW_BYTES = 100
_VALUE_BYTES = 16
#: Key value types whose equality in Python is equality of their serialized forms: a
#: returned row whose key values are of these types and equal to a requested key belongs
#: to that key, without serializing its values again (``bool`` is not among them: True
#: equals 1; floats are not: Cassandra returns a ``float`` column as another value).
_EXACT_KEY_TYPES = (str, int)

_CQL_TYPES: dict[ColumnKind, str] = {
    "string": "text",
    "long": "bigint",
    "int": "int",
    "double": "double",
    "float": "float",
    "boolean": "boolean",
    "timestamp": "bigint",
    "date": "date",
    "binary": "blob",
    "json": "text",
    "decimal": "text",
}

# One driver session per process and configuration: Spark's Python workers are reused
# across tasks, so partitions of later batches share the connection.
_SESSIONS: dict[tuple[Any, ...], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _estimated_size(row: tuple[Any, ...]) -> int:
    """Rough bytes of one row in a batch (its text and binary values plus overhead)."""
    size = _ROW_BYTES + _VALUE_BYTES * len(row)
    for value in row:  # a loop, not sum() over a generator: once per tile written
        if isinstance(value, str | bytes):
            size += len(value)
    return size


class CassandraOnlineStore(OnlineStore):
    """Online store in Cassandra.

    Creates the keyspace (with the given replication) and the tables idempotently, and
    uses prepared statements for every read and write.

    Args:
        hosts: contact points.
        port: native protocol port.
        keyspace: keyspace of the feature tables.
        username: user for ``PasswordAuthenticator``; ``None`` for no authentication.
        password: the password, a :class:`~fs_dagster.Secret` or a string; never printed.
        replication: the keyspace's replication map, used only when creating it.
        consistency: consistency level name for reads and writes.
        concurrency: requests in flight per writer.

    Example:
        >>> store = CassandraOnlineStore(hosts=["127.0.0.1"], keyspace="features")  # doctest: +SKIP
    """

    def __init__(
        self,
        hosts: Sequence[str] = ("127.0.0.1",),
        *,
        port: int = 9042,
        keyspace: str = "fs_dagster",
        username: str | None = None,
        password: SecretLike | None = None,
        replication: Mapping[str, Any] | None = None,
        consistency: str = "LOCAL_QUORUM",
        concurrency: int = 64,
    ):
        self.hosts = tuple(hosts)
        self.port = port
        self.keyspace = keyspace
        self.username = username
        self.password: Secret | None = as_secret(password)
        self.replication = dict(replication or {"class": "SimpleStrategy", "replication_factor": 1})
        self.consistency = consistency
        self.concurrency = concurrency
        self._prepared: dict[tuple[str, str], Any] = {}

    def __repr__(self) -> str:
        return (
            f"CassandraOnlineStore(hosts={list(self.hosts)}, port={self.port}, "
            f"keyspace={self.keyspace!r}, username={self.username!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_prepared"] = {}
        return state

    def _session(self) -> Any:
        key = (self.hosts, self.port, self.username, self.keyspace)
        with _SESSIONS_LOCK:
            session = _SESSIONS.get(key)
            if session is not None and not session.is_shutdown:
                return session
            from cassandra import ConsistencyLevel
            from cassandra.auth import PlainTextAuthProvider
            from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
            from cassandra.policies import RoundRobinPolicy, TokenAwarePolicy
            from cassandra.query import tuple_factory

            auth = None
            if self.username is not None:
                secret = self.password.get() if self.password is not None else ""
                auth = PlainTextAuthProvider(username=self.username, password=secret)
            profile = ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(RoundRobinPolicy()),
                consistency_level=getattr(ConsistencyLevel, self.consistency),
                request_timeout=30,
                # Rows as plain tuples: the default factory builds a namedtuple class for
                # every page of results, about a quarter of a tile read's client CPU.
                row_factory=tuple_factory,
            )
            cluster = Cluster(
                list(self.hosts),
                port=self.port,
                auth_provider=auth,
                execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                protocol_version=5,
            )
            session = cluster.connect()
            _SESSIONS[key] = session
            return session

    def _statement(self, table: OnlineTable, kind: str, cql: str) -> Any:
        cache_key = (table.name, kind)
        prepared = self._prepared.get(cache_key)
        if prepared is None:
            prepared = self._session().prepare(cql)
            self._prepared[cache_key] = prepared
        return prepared

    def _table(self, table: OnlineTable) -> str:
        return f"{_quote(self.keyspace)}.{_quote(table.name)}"

    def ensure_keyspace(self) -> None:
        """Create the keyspace with the configured replication if it does not exist."""
        options = ", ".join(
            f"'{k}': {v!r}" if isinstance(v, str) else f"'{k}': {v}"
            for k, v in self.replication.items()
        )
        self._session().execute(
            f"CREATE KEYSPACE IF NOT EXISTS {_quote(self.keyspace)} "
            f"WITH replication = {{{options}}}"
        )

    def ensure_table(self, table: OnlineTable) -> None:
        """Create the keyspace and table if missing; add missing feature columns."""
        self.ensure_keyspace()
        session = self._session()
        columns = [
            *(f"{_quote(c.name)} {_CQL_TYPES[c.kind]}" for c in table.keys),
            f"{_quote(EVENT_MICROS_COLUMN)} bigint",
            *(f"{_quote(c.name)} {_CQL_TYPES[c.kind]}" for c in table.features),
        ]
        keys = ", ".join(_quote(c.name) for c in table.keys)
        session.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table(table)} "
            f"({', '.join(columns)}, PRIMARY KEY (({keys})))"
        )
        existing = {
            row[0]
            for row in session.execute(
                "SELECT column_name FROM system_schema.columns "
                "WHERE keyspace_name = %s AND table_name = %s",
                (self.keyspace, table.name),
            )
        }
        for column in table.features:
            if column.name not in existing:
                session.execute(
                    f"ALTER TABLE {self._table(table)} ADD {_quote(column.name)} "
                    f"{_CQL_TYPES[column.kind]}"
                )
        self.record_layout(table)
        self._prepared.clear()

    def record_layout(self, table: OnlineTable) -> None:
        """Record ``table``'s layout (creating the keyspace if needed)."""
        self.ensure_keyspace()
        session = self._session()
        layouts = f"{_quote(self.keyspace)}.{_LAYOUTS}"
        session.execute(
            f"CREATE TABLE IF NOT EXISTS {layouts} (name text PRIMARY KEY, layout text)"
        )
        session.execute(
            session.prepare(f"INSERT INTO {layouts} (name, layout) VALUES (?, ?)"),
            (table.name, table.to_json()),
        )

    def layout(self, name: str) -> OnlineTable | None:
        """The recorded layout of table ``name``."""
        from cassandra import InvalidRequest

        layouts = f"{_quote(self.keyspace)}.{_LAYOUTS}"
        try:
            statement = self._prepared_for(
                _LAYOUTS, "layout-read", f"SELECT layout FROM {layouts} WHERE name = ?"
            )
            row = self._session().execute(statement, (name,)).one()
        except InvalidRequest:
            return None
        return OnlineTable.from_json(row[0]) if row else None

    def write(self, table: OnlineTable, rows: Iterable[Mapping[str, Any]]) -> int:
        """Upsert rows, each at its event time (and remaining TTL), as concurrent unlogged
        batches of keys that share their replicas (see :meth:`_batches`)."""
        names = [*table.key_names, EVENT_MICROS_COLUMN, *table.feature_names]
        cql = (
            f"INSERT INTO {self._table(table)} ({', '.join(_quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)}) USING TIMESTAMP ? AND TTL ?"
        )
        statement = self._statement(table, "write", cql)
        now = now_micros()
        width = len(table.keys)
        by_key: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for row in rows:
            event = int(row[EVENT_MICROS_COLUMN])
            ttl = 0
            if table.ttl_seconds is not None:
                # Expire by event time: what remains of the TTL when the row arrives.
                ttl = int(table.ttl_seconds - (now - event) / 1e6)
                if ttl <= 0:
                    continue
            values = (*(row.get(n) for n in names), event, ttl)
            by_key.setdefault(values[:width], []).append(values)
        if not by_key:
            return 0
        self._execute_all(self._batches(table, statement, by_key))
        return sum(len(rows) for rows in by_key.values())

    def read_rows(
        self, table: OnlineTable, keys: Sequence[tuple[Any, ...]]
    ) -> list[dict[str, Any] | None]:
        """Stored rows for ``keys``, in order: one query per group of keys (see
        :meth:`_key_groups`), all concurrently."""
        names = [EVENT_MICROS_COLUMN, *table.feature_names]
        cql = (
            f"SELECT {self._key_columns(table)}, {', '.join(_quote(n) for n in names)} "
            f"FROM {self._table(table)} WHERE {self._keys_where(table)}"
        )
        statement = self._statement(table, "read", cql)
        groups = self._key_groups(table, dict.fromkeys(tuple(k) for k in keys))
        results = self._concurrently(statement, [self._keys_args(group) for group in groups])
        width = len(table.keys)
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        for group, (_ok, result) in zip(groups, results, strict=True):
            for key, row in self._rows_by_key(table, group, result):
                found[key] = dict(zip(names, row[width:], strict=True))
        return [found.get(tuple(key)) for key in keys]

    def ensure_tile_table(self, table: TileTable) -> None:
        """Create the keyspace, the tile table and the progress table if missing.

        A tile partition is one key, clustered by resolution then tile start, so reading
        every window of a key is one query (a slice from the finest rung's first tile to
        the coarsest rung's last). Tiles expire by TTL (see ``_TILE_GC_GRACE_SECONDS``).
        """
        self.ensure_keyspace()
        session = self._session()
        keys = [f"{_quote(c.name)} {_CQL_TYPES[c.kind]}" for c in table.keys]
        partition = ", ".join(_quote(c.name) for c in table.keys)
        session.execute(
            f"CREATE TABLE IF NOT EXISTS {self._qualified(table.name)} ({', '.join(keys)}, "
            "resolution int, tile_start bigint, version bigint, state text, "
            f"PRIMARY KEY (({partition}), resolution, tile_start)) "
            f"WITH gc_grace_seconds = {_TILE_GC_GRACE_SECONDS}"
        )
        session.execute(
            f"CREATE TABLE IF NOT EXISTS {self._qualified(_PROGRESS)} (name text, batch_id bigint, "
            "max_event_micros bigint, PRIMARY KEY ((name), batch_id)) "
            "WITH CLUSTERING ORDER BY (batch_id DESC)"
        )
        self._prepared.clear()

    def _qualified(self, name: str) -> str:
        return f"{_quote(self.keyspace)}.{_quote(name)}"

    def _key_where(self, table: TileTable | OnlineTable) -> str:
        return " AND ".join(f"{_quote(n)} = ?" for n in table.key_names)

    def read_tiles(
        self, table: TileTable, key: tuple[Any, ...], ranges: Sequence[tuple[int, int, int]]
    ) -> list[StoredTile]:
        """Tiles of ``key`` in the given ranges (one slice query)."""
        return self.read_tiles_for_keys(table, [key], ranges)[0]

    def read_tiles_for_keys(
        self,
        table: TileTable,
        keys: Sequence[tuple[Any, ...]],
        ranges: Sequence[tuple[int, int, int]],
    ) -> list[list[StoredTile]]:
        """One slice query per group of keys (see :meth:`_key_groups`), all concurrently;
        results per key, in order.

        The slice runs from the finest range's first tile to the coarsest range's last;
        tiles of a rung outside that rung's range are dropped here.
        """
        if not ranges:
            return [[] for _ in keys]
        groups, requests = self._tile_slices(table, keys, ranges)
        return self._tiles_of(table, keys, ranges, groups, self._execute_all(requests))

    def read_tiles_with_history(
        self,
        table: TileTable,
        keys: Sequence[tuple[Any, ...]],
        ranges: Sequence[tuple[int, int, int]],
    ) -> tuple[list[list[StoredTile]], tuple[int | None, int | None]]:
        """:meth:`read_tiles_for_keys` and :meth:`tiles_history` in one round of
        concurrent requests: a read at a past time needs both, and a second round trip
        after the first is most of the time such a read takes."""
        history = (self._history_read(), (list(self._history_names(table)), 1))
        groups, requests = self._tile_slices(table, keys, ranges) if ranges else ([], [])
        results = list(self._execute_all([*requests, history]))
        tiles = self._tiles_of(table, keys, ranges, groups, results[:-1])
        return tiles, self._history_of(table, results[-1][1])

    def _tile_slices(
        self,
        table: TileTable,
        keys: Sequence[tuple[Any, ...]],
        ranges: Sequence[tuple[int, int, int]],
    ) -> tuple[list[dict[bytes, tuple[Any, ...]]], list[tuple[Any, tuple[Any, ...]]]]:
        """The key groups of a tile read and one slice request per group."""
        cql = (
            f"SELECT {self._key_columns(table)}, resolution, tile_start, version, state "
            f"FROM {self._qualified(table.name)} WHERE {self._keys_where(table)} "
            "AND (resolution, tile_start) >= (?, ?) AND (resolution, tile_start) <= (?, ?)"
        )
        statement = self._prepared_for(table.name, "tiles", cql)
        ordered = sorted(ranges)
        low = ordered[0][:2]
        high = (ordered[-1][0], ordered[-1][2])
        groups = self._key_groups(table, dict.fromkeys(tuple(k) for k in keys))
        requests = [(statement, (*self._keys_args(group), *low, *high)) for group in groups]
        return groups, requests

    def _tiles_of(
        self,
        table: TileTable,
        keys: Sequence[tuple[Any, ...]],
        ranges: Sequence[tuple[int, int, int]],
        groups: Sequence[Mapping[bytes, tuple[Any, ...]]],
        results: Iterable[tuple[bool, Any]],
    ) -> list[list[StoredTile]]:
        """Each key's tiles from the results of :meth:`_tile_slices`' requests, each rung's
        tiles kept within that rung's range."""
        bounds = {r: (first, last) for r, first, last in ranges}
        found: dict[tuple[Any, ...], list[StoredTile]] = {}
        width = len(table.keys)
        for group, (_ok, result) in zip(groups, results, strict=True):
            for key, row in self._rows_by_key(table, group, result):
                first, last = bounds.get(row[width], (1, 0))
                if first <= row[width + 1] <= last:
                    found.setdefault(key, []).append(StoredTile._make(row[width:]))
        return [found.get(tuple(key), []) for key in keys]

    def read_tile_versions(
        self, table: TileTable, tiles: Sequence[tuple[tuple[Any, ...], int, int]]
    ) -> list[StoredTile | None]:
        """Stored tiles at exact positions: one query per group of keys (see
        :meth:`_key_groups`) and up to ``_TILES_PER_REQUEST`` positions, all concurrently.

        A group asks for every position any of its keys needs; the extra positions cost a
        lookup in a partition already read, and their tiles are not returned.
        """
        cql = (
            f"SELECT {self._key_columns(table)}, resolution, tile_start, version, state "
            f"FROM {self._qualified(table.name)} WHERE {self._keys_where(table)} "
            "AND (resolution, tile_start) IN ?"
        )
        statement = self._prepared_for(table.name, "tile", cql)
        by_key: dict[tuple[Any, ...], set[tuple[int, int]]] = {}
        for key, resolution, start in tiles:
            by_key.setdefault(tuple(key), set()).add((resolution, start))
        requests: list[tuple[dict[bytes, tuple[Any, ...]], tuple[Any, ...]]] = []
        for group in self._key_groups(table, by_key):
            positions = sorted(set().union(*(by_key[k] for k in group.values())))
            for i in range(0, len(positions), _TILES_PER_REQUEST):
                chunk = positions[i : i + _TILES_PER_REQUEST]
                requests.append((group, (*self._keys_args(group), chunk)))
        results = self._concurrently(statement, [args for _group, args in requests])
        found: dict[tuple[tuple[Any, ...], int, int], StoredTile] = {}
        width = len(table.keys)
        for (group, _args), (_ok, result) in zip(requests, results, strict=True):
            for key, row in self._rows_by_key(table, group, result):
                found[(key, row[width], row[width + 1])] = StoredTile._make(row[width:])
        return [found.get((tuple(key), resolution, start)) for key, resolution, start in tiles]

    def write_tiles(self, table: TileTable, writes: Sequence[TileWrite]) -> int:
        """Write full tile states ``USING TIMESTAMP <version>``: an older one never wins.

        Tiles go as concurrent unlogged batches of keys that share their replicas (see
        :meth:`_batches`).
        """
        names = [*table.key_names, "resolution", "tile_start", "version", "state"]
        cql = (
            f"INSERT INTO {self._qualified(table.name)} ({', '.join(_quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)}) USING TIMESTAMP ? AND TTL ?"
        )
        statement = self._prepared_for(table.name, "write-tile", cql)
        by_key: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for w in writes:
            # Cassandra write timestamps must grow with the version; +1 keeps version 0 valid.
            by_key.setdefault(tuple(w.key), []).append(
                (
                    *w.key,
                    w.resolution,
                    w.start,
                    w.version,
                    w.state,
                    w.version + 1,
                    max(w.ttl_seconds, 1),
                )
            )
        if writes:
            self._execute_all(self._batches(table, statement, by_key))
        return len(writes)

    def _batches(
        self,
        table: TileTable | OnlineTable,
        statement: Any,
        by_key: Mapping[tuple[Any, ...], Sequence[tuple[Any, ...]]],
    ) -> list[tuple[Any, tuple[Any, ...]]]:
        """Requests that write ``statement``'s argument rows, grouped by key.

        A request is an unlogged batch of the rows of up to ``_KEYS_PER_REQUEST`` keys that
        share their replicas, within ``_BATCH_BYTES`` (a single row goes alone); a key with
        more than ``_TILES_PER_REQUEST`` rows writes them in batches of its own.
        """
        from cassandra.query import BatchStatement, BatchType

        batches: list[Sequence[tuple[Any, ...]]] = []
        for group in self._key_groups(table, by_key, same_prefix=False):
            batch: list[tuple[Any, ...]] = []
            size = 0
            for key in group.values():
                rows = by_key[key]
                if len(rows) > _TILES_PER_REQUEST:
                    batches.extend(
                        rows[i : i + _TILES_PER_REQUEST]
                        for i in range(0, len(rows), _TILES_PER_REQUEST)
                    )
                    continue
                rows_size = sum(_estimated_size(row) for row in rows)
                if batch and size + rows_size > _BATCH_BYTES:
                    batches.append(batch)
                    batch, size = [], 0
                batch.extend(rows)
                size += rows_size
            if batch:
                batches.append(batch)
        requests: list[tuple[Any, tuple[Any, ...]]] = []
        for rows in batches:
            if len(rows) == 1:
                requests.append((statement, rows[0]))
                continue
            unlogged = BatchStatement(batch_type=BatchType.UNLOGGED)
            for row in rows:
                unlogged.add(statement, row)  # the first key routes the batch
            requests.append((unlogged, ()))
        return requests

    def _key_columns(self, table: TileTable | OnlineTable) -> str:
        return ", ".join(_quote(n) for n in table.key_names)

    def _keys_where(self, table: TileTable | OnlineTable) -> str:
        """Key restriction of a multi-key request: every key column but the last is one
        value, the last is ``IN`` a list (so a composite key never reads a product)."""
        *prefix, last = table.key_names
        return " AND ".join([*(f"{_quote(n)} = ?" for n in prefix), f"{_quote(last)} IN ?"])

    def _routing(self, table: TileTable | OnlineTable) -> Any:
        """A prepared statement whose bound routing key is a key's serialized partition key."""
        cql = (
            f"SELECT {_quote(table.key_names[0])} FROM {self._qualified(table.name)} "
            f"WHERE {self._key_where(table)} LIMIT 1"
        )
        return self._prepared_for(table.name, "routing", cql)

    def _key_groups(
        self,
        table: TileTable | OnlineTable,
        keys: Iterable[tuple[Any, ...]],
        *,
        same_prefix: bool = True,
    ) -> list[dict[bytes, tuple[Any, ...]]]:
        """Keys in groups of up to ``_KEYS_PER_REQUEST`` that have the same replicas, so
        one request serves them all without the coordinator fanning it out further; each
        group maps a key's serialized partition key to the key.

        With ``same_prefix``, a group's keys also agree on every key column but the last
        (what a multi-key read needs, see :meth:`_keys_where` and :meth:`_keys_args`).
        """
        routing = self._routing(table)
        keys = list(keys)
        if len(keys) == 1:  # nothing to group: skip the replica lookup
            return [{routing.bind(keys[0]).routing_key: keys[0]}]
        metadata = self._session().cluster.metadata
        buckets: dict[tuple[Any, ...], list[tuple[bytes, tuple[Any, ...]]]] = {}
        for key in keys:
            serialized = routing.bind(key).routing_key
            hosts = frozenset(metadata.get_replicas(self.keyspace, serialized))
            bucket = (hosts, key[:-1] if same_prefix else ())
            buckets.setdefault(bucket, []).append((serialized, key))
        return [
            dict(members[i : i + _KEYS_PER_REQUEST])
            for members in buckets.values()
            for i in range(0, len(members), _KEYS_PER_REQUEST)
        ]

    @staticmethod
    def _keys_args(group: Mapping[bytes, tuple[Any, ...]]) -> tuple[Any, ...]:
        """Arguments of :meth:`_keys_where` for a group from :meth:`_key_groups`."""
        keys = list(group.values())
        return (*keys[0][:-1], [k[-1] for k in keys])

    def _rows_by_key(
        self,
        table: TileTable | OnlineTable,
        group: Mapping[bytes, tuple[Any, ...]],
        result: Iterable[Any],
    ) -> Iterable[tuple[tuple[Any, ...], Any]]:
        """Each row of a multi-key read with the requested key it belongs to.

        Rows are matched by value where the key's values are of exact types (strings and
        integers, the usual keys), else by serialized partition key: a ``float`` or
        ``date`` key comes back as another Python value than the one asked for.
        """
        width = len(table.keys)
        by_value = {
            key: key for key in group.values() if all(type(v) in _EXACT_KEY_TYPES for v in key)
        }
        routing = self._routing(table)
        previous: tuple[Any, ...] | None = None
        owner: tuple[Any, ...] | None = None
        for row in result:
            values = row[:width]
            if values != previous:  # a partition's rows come together
                previous = values
                owner = by_value.get(tuple(values))
                if owner is None:
                    owner = group.get(routing.bind(values).routing_key)
            if owner is not None:
                yield owner, row

    def progress_before(self, name: str, batch_id: int) -> int | None:
        """Newest event time recorded before ``batch_id``."""
        row = self._session().execute(self._progress_read(), (name, batch_id)).one()
        return None if row is None else int(row[0])

    def tiles_history(self, table: TileTable) -> tuple[int | None, int | None]:
        """Creation and seeding times of ``table``, both in one request: a read at a past
        time needs them, and one round trip more is a quarter of such a read."""
        history = (list(self._history_names(table)), 1)
        result = self._session().execute(self._history_read(), history)
        return self._history_of(table, result)

    def _history_read(self) -> Any:
        """The newest progress entry of each of several names (a list bound to ``IN``)
        before a batch id."""
        cql = (
            f"SELECT name, max_event_micros FROM {self._qualified(_PROGRESS)} "
            "WHERE name IN ? AND batch_id < ? PER PARTITION LIMIT 1"
        )
        return self._prepared_for(_PROGRESS, "history-read", cql)

    def _history_of(self, table: TileTable, result: Iterable[Any]) -> tuple[int | None, int | None]:
        """Creation and seeding times from the rows of :meth:`_history_read`."""
        found = {name: int(micros) for name, micros in result}
        created, seeded = self._history_names(table)
        return found.get(created), found.get(seeded)

    def _progress_read(self) -> Any:
        cql = (
            f"SELECT max_event_micros FROM {self._qualified(_PROGRESS)} "
            "WHERE name = ? AND batch_id < ? LIMIT 1"
        )
        return self._prepared_for(_PROGRESS, "progress-read", cql)

    def record_progress(self, name: str, batch_id: int, max_event_micros: int) -> None:
        """Record the newest event time through ``batch_id`` (idempotent)."""
        cql = (
            f"INSERT INTO {self._qualified(_PROGRESS)} (name, batch_id, max_event_micros) "
            "VALUES (?, ?, ?)"
        )
        self._session().execute(
            self._prepared_for(_PROGRESS, "progress-write", cql), (name, batch_id, max_event_micros)
        )

    def _concurrently(self, statement: Any, args: Sequence[tuple[Any, ...]]) -> Any:
        """Execute ``statement`` for every argument tuple, ``concurrency`` at a time."""
        return self._execute_all([(statement, a) for a in args])

    def _execute_all(self, requests: Sequence[tuple[Any, tuple[Any, ...]]]) -> Any:
        """Execute ``(statement, arguments)`` pairs, ``concurrency`` at a time, in order;
        ``(success, result)`` per request, as ``execute_concurrent`` gives them."""
        from cassandra.concurrent import execute_concurrent

        if len(requests) == 1:
            # A one-key read is one request: the concurrent executor's threads and events
            # cost about a third of the driver's round trip, for nothing to overlap.
            statement, args = requests[0]
            return [(True, self._session().execute(statement, args))]
        return execute_concurrent(
            self._session(), requests, concurrency=self.concurrency, raise_on_first_error=True
        )

    def _prepared_for(self, table_name: str, kind: str, cql: str) -> Any:
        cache_key = (table_name, kind)
        prepared = self._prepared.get(cache_key)
        if prepared is None:
            prepared = self._session().prepare(cql)
            self._prepared[cache_key] = prepared
        return prepared

    def close(self) -> None:
        """Shut down this process's cluster connection for this configuration."""
        key = (self.hosts, self.port, self.username, self.keyspace)
        with _SESSIONS_LOCK:
            session = _SESSIONS.pop(key, None)
        if session is not None:
            session.cluster.shutdown()
        self._prepared.clear()

    def describe(self) -> dict[str, str]:
        """Kind, hosts and keyspace (never credentials)."""
        return {
            "kind": "cassandra",
            "hosts": ",".join(self.hosts),
            "port": str(self.port),
            "keyspace": self.keyspace,
        }
