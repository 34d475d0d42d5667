"""Windowed aggregation in Spark: tile partials, tile upserts, reads.

- :func:`tile_partials` computes, in one shuffle for all resolutions, one partial state
  per (key, resolution, tile) from a batch's rows; every trigger uses it (see
  :mod:`fs_dagster.engine.writers` for who writes them where).
- :func:`apply_partials` merges partials into the stored online tiles and writes full
  states with the batch id as version. A tile whose stored version is already this
  batch's was written before a crash and is left alone, so a replayed batch counts every
  event once; an older write never replaces a newer version (Cassandra ``USING
  TIMESTAMP``). A tile that starts after the newest event time of the earlier batches
  can hold nothing but this batch's events, so it is written without being read first.
- :func:`read_aggregates` (online) and :func:`point_in_time_aggregates` (offline, from
  the Delta tile partials) pick and merge tiles with the same window code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.pandas.types import to_arrow_type
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DoubleType,
    LongType,
    NumericType,
    StringType,
    StructField,
    StructType,
)

from fs_dagster.aggregation.columnar import (
    columnar_supported,
    columnar_window_values,
    state_columns,
    state_types,
)
from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.aggregation.states import (
    StateSpec,
    finalize,
    merge_distinct,
    merge_last,
    merge_states,
    sketch_from_values,
)
from fs_dagster.aggregation.tiles import TileIndex, read_spans, window_bounds
from fs_dagster.definitions.aggregations import BOOLEAN_FUNCTIONS, NUMERIC_FUNCTIONS
from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.names import spark_identifier
from fs_dagster.engine.arrow_map import (
    ArrowMap,
    arrow_map_function,
    map_in_arrow,
    map_in_driver,
    without_gc,
)
from fs_dagster.engine.encoding import online_kind
from fs_dagster.engine.spark_session import one_wave
from fs_dagster.stores.online.base import (
    ColumnKind,
    OnlineColumn,
    OnlineStore,
    OnlineTable,
    TileWrite,
    feature_array,
    key_array,
    micros_array,
    now_micros,
)

__all__ = [
    "DRIVER_WRITE_TILES",
    "TilePartials",
    "TileWriter",
    "aggregation_plan",
    "apply_partials",
    "check_aggregations",
    "point_in_time_aggregates",
    "prepare_online_tiles",
    "read_aggregates",
    "tile_numbers",
    "tile_partials",
    "window_result_type",
    "write_partials",
]

_MICROS = "__fs_event_micros"
_RES = "__fs_resolution"
_TILE = "__fs_tile_start"


def check_aggregations(feature_set: FeatureSet, schema: StructType) -> None:
    """Check each aggregate's column exists and has a type the function accepts."""
    types = {f.name: f.dataType for f in schema.fields}
    produced = ", ".join(types)
    for spec in feature_set.aggregations:
        data_type = types.get(spec.column)
        where = f"Aggregation.{spec.function}('{spec.column}')"
        if data_type is None:
            raise FeatureSetDefinitionError(
                feature_set.name,
                "aggregate",
                f"{where}: column '{spec.column}' is not in the transformation output ({produced})",
            )
        if spec.function in NUMERIC_FUNCTIONS and not isinstance(data_type, NumericType):
            raise FeatureSetDefinitionError(
                feature_set.name,
                "aggregate",
                f"{where} needs a numeric column; '{spec.column}' is {data_type.simpleString()}",
            )
        if spec.function in BOOLEAN_FUNCTIONS and not isinstance(data_type, BooleanType):
            raise FeatureSetDefinitionError(
                feature_set.name,
                "aggregate",
                f"{where} needs a boolean column; '{spec.column}' is {data_type.simpleString()}",
            )
        if spec.function in ("min", "max", "last_n", "last_distinct_n") and isinstance(
            data_type, ArrayType | StructType
        ):
            raise FeatureSetDefinitionError(
                feature_set.name,
                "aggregate",
                f"{where} cannot order nested values of type {data_type.simpleString()}",
            )


def aggregation_plan(feature_set: FeatureSet, schema: StructType) -> AggregationPlan:
    """Compile ``feature_set``'s aggregation against its output schema."""
    check_aggregations(feature_set, schema)
    types = {f.name: f.dataType for f in schema.fields}
    return AggregationPlan(
        feature_set=feature_set,
        key_kinds={k: online_kind(types[k]) for k in feature_set.key},
        column_kinds={
            spec.column: online_kind(types[spec.column]) for spec in feature_set.aggregations
        },
    )


def _value(column: str, kind: ColumnKind) -> Column:
    """A column's value as it is kept in states (timestamps in micros, dates as text)."""
    col = F.col(column)
    if kind == "timestamp":
        return F.unix_micros(col.cast("timestamp"))
    if kind in ("date", "decimal"):
        return col.cast("string") if kind == "date" else col.cast("double")
    return col


def _partial_aggregates(plan: AggregationPlan) -> list[Column]:
    aggregates: list[Column] = []
    for state in plan.states:
        value = F.col(f"__v_{state.column}")
        name = _partial_column(state.key)
        if state.kind == "sum":
            aggregates.append(F.sum(value).alias(name))
        elif state.kind == "count":
            aggregates.append(F.count(value).alias(name))
        elif state.kind in ("min", "max"):
            aggregates.append(getattr(F, state.kind)(value).alias(name))
        elif state.kind == "bool":
            aggregates.append(
                F.struct(F.sum(value.cast("long")).alias("t"), F.count(value).alias("n")).alias(
                    name
                )
            )
        elif state.kind == "moments":
            pivot = F.col(f"__p_{state.column}")
            offset = value.cast("double") - pivot
            aggregates.append(
                F.struct(
                    F.count(value).alias("n"),
                    F.min(pivot).alias("pivot"),
                    F.avg(offset).alias("d"),
                    (F.var_pop(offset) * F.count(value)).alias("m2"),
                ).alias(name)
            )
        elif state.kind in ("last", "distinct"):
            entry = F.when(value.isNotNull(), F.struct(F.col(_MICROS).alias("t"), value.alias("v")))
            aggregates.append(F.collect_list(entry).alias(name))
        elif state.kind == "sketch":
            aggregates.append(F.collect_list(value.cast("double")).alias(name))
    return aggregates


class TilePartials:
    """:func:`tile_partials` prepared once for a plan: its columns are built here, so that
    a stream's batch costs a few calls into the JVM rather than several per state."""

    def __init__(self, plan: AggregationPlan) -> None:
        fs = plan.feature_set
        keys = list(fs.key)
        columns = sorted({s.column for s in plan.states})
        micros = F.unix_micros(F.col(fs.timestamp_column).cast("timestamp"))
        # Every event once per resolution, with its tile there (one generator, so one
        # projection), then one shuffle for all resolutions' tiles.
        tiles = F.inline(
            F.array(
                *[
                    F.struct(
                        F.lit(r).cast("long").alias(_RES),
                        (F.floor(micros / F.lit(r * 1_000_000)) * F.lit(r))
                        .cast("long")
                        .alias(_TILE),
                    )
                    for r in plan.resolutions
                ]
            )
        )
        self._tiled = [
            *[F.col(k) for k in keys],
            micros.alias(_MICROS),
            *[_value(c, plan.column_kinds[c]).alias(f"__v_{c}") for c in columns],
            tiles,
        ]
        group = [*keys, _RES, _TILE]
        self._group = [F.col(c) for c in group]
        # The tile's minimum is its pivot: deterministic, and close to every value.
        by_tile = Window.partitionBy(*[F.col(c) for c in group])
        self._pivots = [
            (f"__p_{c}", F.min(F.col(f"__v_{c}").cast("double")).over(by_tile))
            for c in sorted({s.column for s in plan.states if s.kind == "moments"})
        ]
        self._aggregates = _partial_aggregates(plan)

    def __call__(self, on_time: DataFrame) -> DataFrame:
        """One row per (key, resolution, tile) with ``on_time``'s partial states."""
        tiled = on_time.select(*self._tiled)
        for name, pivot in self._pivots:
            tiled = tiled.withColumn(name, pivot)
        return tiled.groupBy(*self._group).agg(*self._aggregates)


def tile_partials(on_time: DataFrame, plan: AggregationPlan) -> DataFrame:
    """One row per (key, resolution, tile) with the batch's partial states."""
    return TilePartials(plan)(on_time)


def prepare_online_tiles(store: OnlineStore, plan: AggregationPlan) -> None:
    """Create the tile table, record its layout for Spark-free readers and its creation."""
    store.ensure_tile_table(plan.tile_table)
    store.record_layout(aggregation_layout(plan))
    store.mark_tiles_created(plan.tile_table)


def aggregation_layout(plan: AggregationPlan) -> OnlineTable:
    """The layout recorded for Spark-free online reads of an aggregated feature set."""
    fs = plan.feature_set
    return OnlineTable(
        name=plan.tile_table.name,
        keys=plan.tile_table.keys,
        features=tuple(OnlineColumn(c, k) for c, k in plan.column_kinds.items()),
        timestamp_column=fs.timestamp_column,
    )


def _plain(value: Any) -> Any:
    # Arrow hands pandas null numbers as NaN; a missing partial is "no value".
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _key_value(value: Any) -> Any:
    # A key as a Spark row would give it: a timestamp as a naive datetime in the session
    # time zone, UTC (Arrow gives it aware).
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return _plain(value)


def encode_partials(partials: DataFrame, plan: AggregationPlan) -> DataFrame:
    """Turn Spark partial rows into ``(key..., resolution, tile_start, state JSON)``."""
    keys = list(plan.feature_set.key)
    states = plan.states
    schema = StructType(
        [
            *[partials.schema[k] for k in keys],
            StructField(_RES, LongType()),
            StructField(_TILE, LongType()),
            StructField("state", StringType()),
        ]
    )

    def encode(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        for batch in batches:
            texts = [_state_text(state) for state in partial_states(batch, states)]
            yield pa.RecordBatch.from_arrays(
                [
                    *[batch.column(k) for k in keys],
                    batch.column(_RES).cast(pa.int64()),
                    batch.column(_TILE).cast(pa.int64()),
                    pa.array(texts, pa.string()),
                ],
                names=[*keys, _RES, _TILE, "state"],
            )

    return partials.mapInArrow(encode, schema=schema)  # type: ignore[arg-type]


#: :class:`TileWriter` merges a batch in the driver when the batch before it had at most
#: this many partial rows (tiles; see there).
DRIVER_WRITE_TILES = 4_000


class TileWriter:
    """Merges tile partials into the stored online tiles (see :func:`apply_partials`) in
    one Spark job; its Python function is built once, and a batch's version and bounds
    reach it as columns.

    Where the partials are merged depends on the batch before (a stream's batches are
    alike): after one of at most ``driver_tiles`` partial rows, the batch's rows are
    brought to one partition (:meth:`partition`), so that Spark computes the partials
    without a shuffle, and the job brings them to the driver as Arrow, where the same
    function merges and writes them. Otherwise (and first, and for a one-off write) each
    partition of the partials is merged in an executor's Python worker. A steady
    stream's small batches then skip the shuffle and the round trip to the Python
    workers: at 500 events/s on 2 cores a batch took 0.40-0.51 s against 0.71 s
    (``bench/README.md``, "Session 30"). A burst that makes a batch much larger than the
    one before it is still merged in the driver, in one task: slower, not wrong; the
    batch after it goes to the executors.
    """

    def __init__(
        self, store: OnlineStore, plan: AggregationPlan, *, driver_tiles: int = DRIVER_WRITE_TILES
    ) -> None:
        names = [*plan.feature_set.key, _RES, _TILE, *(_partial_column(s.key) for s in plan.states)]
        self._columns = [F.col(spark_identifier(n)) for n in names]
        self._function = without_gc(_tile_merge(store, plan))
        self._write = arrow_map_function(
            self._function, _TILE_WRITE_COUNTS_DDL, [*names, *_WRITE_ARGUMENTS]
        )
        self.driver_tiles = driver_tiles
        #: Partial rows of the last batch merged (``None`` before the first).
        self.last_tiles: int | None = None

    @property
    def in_driver(self) -> bool:
        """Whether the next batch is merged in the driver (see the class)."""
        return self.last_tiles is not None and self.last_tiles <= self.driver_tiles

    def partition(self, rows: DataFrame) -> DataFrame:
        """``rows`` (whose :func:`tile_partials` go to :meth:`write` next) partitioned
        for where they are merged: one partition for the driver (an aggregation over
        one partition needs no shuffle), else one wave of tasks."""
        return rows.coalesce(1) if self.in_driver else one_wave(rows)

    def write(
        self,
        partials: DataFrame,
        version: int,
        *,
        fresh_after: int | None = None,
        overwrite_at: int | None = None,
    ) -> int:
        """Merge ``partials`` (of :func:`tile_partials`) at ``version``; returns how many
        tiles were written. ``fresh_after`` and ``overwrite_at``: see
        :func:`apply_partials`."""
        # As text: Spark writes a number literal into the generated code, which a new
        # value then compiles again every batch; a string literal is passed by reference.
        arguments = {
            name: None if value is None else str(value)
            for name, value in zip(
                _WRITE_ARGUMENTS, (version, fresh_after, overwrite_at), strict=True
            )
        }
        if self.in_driver:
            # The partials of one partition: brought as they are, the arguments added to
            # the Arrow rows (two DataFrame operations less to plan, 4-15 ms each).
            counts = map_in_driver(partials, self._function, constants=arguments)
        else:
            rows = one_wave(partials).select(
                *self._columns,
                *[F.lit(value).cast("string").alias(name) for name, value in arguments.items()],
            )
            counts = [c.asDict() for c in map_in_arrow(rows, self._write).collect()]
        self.last_tiles = sum(int(c["tiles"]) for c in counts)
        return sum(int(c["written"]) for c in counts)


_WRITE_ARGUMENTS = ("__fs_version", "__fs_fresh_after", "__fs_overwrite_at")
#: What each partition of a :class:`TileWriter` job reports.
_TILE_WRITE_COUNTS = pa.schema([("written", pa.int64()), ("tiles", pa.int64())])
_TILE_WRITE_COUNTS_DDL = "written long, tiles long"


def _partial_column(state_key: str) -> str:
    """The column of a partial state in :func:`tile_partials`' rows."""
    return state_key.replace(":", "__")


def _tile_merge(store: OnlineStore, plan: AggregationPlan) -> ArrowMap:
    """The Python function of a :class:`TileWriter` job: over one partition's partial
    rows, merge them into the stored tiles and report what it wrote."""
    keys = list(plan.feature_set.key)
    states = plan.states

    def argument(batch: pa.RecordBatch, name: str) -> int | None:
        value = batch.column(name)[0].as_py()
        return None if value is None else int(value)

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        written = tiles = 0
        for batch in batches:
            if batch.num_rows == 0:
                continue
            version, fresh_after, overwrite_at = (argument(batch, n) for n in _WRITE_ARGUMENTS)
            if version is None:
                raise ValueError("a tile write needs a version")
            tiles += batch.num_rows
            # A column at a time: the rows' states are built without a dict per row of
            # the batch and reach the merge as values, not as JSON text to parse again.
            key_columns = [[_key_value(v) for v in batch.column(k).to_pylist()] for k in keys]
            partials = zip(
                zip(*key_columns, strict=True),
                batch.column(_RES).to_pylist(),
                batch.column(_TILE).to_pylist(),
                partial_states(batch, states),
                strict=True,
            )
            written += apply_partials(
                store, plan, partials, version, fresh_after=fresh_after, overwrite_at=overwrite_at
            )
        yield pa.RecordBatch.from_pydict(
            {"written": [written], "tiles": [tiles]}, schema=_TILE_WRITE_COUNTS
        )

    return write


def write_partials(
    partials: DataFrame,
    store: OnlineStore,
    plan: AggregationPlan,
    version: int,
    *,
    fresh_after: int | None = None,
    overwrite_at: int | None = None,
) -> int:
    """Merge the partial rows of :func:`tile_partials` into the stored online tiles (a
    :class:`TileWriter` built for one write); returns how many tiles were written."""
    return TileWriter(store, plan).write(
        partials, version, fresh_after=fresh_after, overwrite_at=overwrite_at
    )


def partial_states(batch: pa.RecordBatch, states: Sequence[StateSpec]) -> list[dict[str, Any]]:
    """The tile state of every partial row of ``batch`` (rows of :func:`tile_partials`),
    built a column at a time."""
    result: list[dict[str, Any]] = [{} for _ in range(batch.num_rows)]
    for spec in states:
        key = spec.key
        column = batch.column(_partial_column(key)).to_pylist()
        for state, raw in zip(result, column, strict=True):
            value = _state_value(spec, _plain(raw))
            if value is not None:
                state[key] = value
    return result


def _state_value(spec: StateSpec, raw: Any) -> Any:
    """One state of a partial row from its plain (:func:`_plain`) partial column value;
    ``None`` for no value."""
    kind = spec.kind
    if kind in ("sum", "min", "max"):
        return raw
    if kind == "count":
        return int(raw) if raw else None
    if kind == "bool":
        return [int(raw["t"] or 0), int(raw["n"])] if raw and raw["n"] else None
    if kind == "moments":
        return (
            [int(raw["n"]), float(raw["pivot"]), float(raw["d"]), float(raw["m2"])]
            if raw and raw["n"]
            else None
        )
    if kind == "last":
        entries = [[int(e["t"]), e["v"]] for e in raw or []]
        return merge_last(entries, [], spec.capacity) or None
    if kind == "distinct":
        entries = [[int(e["t"]), e["v"]] for e in raw or []]
        return merge_distinct(entries, [], spec.capacity) or None
    return sketch_from_values(raw) if raw else None  # sketch


def apply_partials(
    store: OnlineStore,
    plan: AggregationPlan,
    partials: Iterable[tuple[tuple[Any, ...], int, int, dict[str, Any]]],
    version: int,
    *,
    fresh_after: int | None = None,
    overwrite_at: int | None = None,
) -> int:
    """Merge partial tiles ``(key, resolution, tile start, state)`` (a state as
    :func:`partial_states` gives it) into the stored tiles and write full states at
    ``version``.

    Tiles already at ``version`` (written before a crash) are skipped: replay-safe.
    ``fresh_after`` is the newest event time (micros) of the batches before this one: a
    tile starting after it holds no earlier event, so its partial is its full state and it
    is written without reading it first (a replay writes the same state again).

    ``overwrite_at`` (seconds, the current time) is for partials that are whole tiles
    already (a backfilled range): every tile is written without reading, except those
    whose retention has passed at that time, which no window can read any more.
    """
    pending: list[tuple[tuple[Any, ...], int, int, dict[str, Any]]] = []
    written = 0
    for key, raw_resolution, raw_start, state in partials:
        resolution, start = int(raw_resolution), int(raw_start)
        if overwrite_at is not None and start + plan.retention(resolution) < overwrite_at:
            continue
        pending.append((key, resolution, start, state))
        if len(pending) >= 2000:
            written += _flush(
                store, plan, pending, version, fresh_after=fresh_after, overwrite_at=overwrite_at
            )
            pending = []
    if pending:
        written += _flush(
            store, plan, pending, version, fresh_after=fresh_after, overwrite_at=overwrite_at
        )
    return written


def _flush(
    store: OnlineStore,
    plan: AggregationPlan,
    pending: list[tuple[tuple[Any, ...], int, int, dict[str, Any]]],
    version: int,
    *,
    fresh_after: int | None,
    overwrite_at: int | None,
) -> int:
    table = plan.tile_table
    writes: list[TileWrite] = []
    merge: list[tuple[tuple[Any, ...], int, int, dict[str, Any]]] = []
    for key, resolution, start, state in pending:
        if overwrite_at is not None or (
            fresh_after is not None and start * 1_000_000 > fresh_after
        ):
            writes.append(
                TileWrite(
                    key, resolution, start, version, _state_text(state), plan.retention(resolution)
                )
            )
        else:
            merge.append((key, resolution, start, state))
    stored = store.read_tile_versions(table, [(k, r, s) for k, r, s, _ in merge])
    for (key, resolution, start, partial), current in zip(merge, stored, strict=True):
        if current is not None and current.version >= version:
            continue  # this batch already reached the tile before a restart
        base = json.loads(current.state) if current is not None else {}
        writes.append(
            TileWrite(
                key=key,
                resolution=resolution,
                start=start,
                version=version,
                state=_state_text(merge_states(plan.states, [base, partial])),
                ttl_seconds=plan.retention(resolution),
            )
        )
    return store.write_tiles(table, writes)


def _state_text(state: Mapping[str, Any]) -> str:
    """A tile state as the JSON text the tile tables keep."""
    return json.dumps(state, separators=(",", ":"))


def _decode(value: Any, kind: ColumnKind) -> Any:
    if value is None:
        return None
    if kind == "timestamp":
        return pd.Timestamp(value, unit="us")
    return value


def window_values(
    plan: AggregationPlan, tiles: Mapping[tuple[int, int], dict[str, Any]], at_micros: int
) -> dict[str, Any]:
    """Every feature of ``plan`` at ``at_micros`` from the tiles of one key.

    ``tiles`` maps ``(resolution, tile_start)`` to a state; tiles outside the windows are
    ignored. Online reads and point-in-time reads both come here.
    """
    return _WindowReader(plan).values(TileIndex(tiles, plan.resolutions), tiles, at_micros)


class _WindowReader:
    """Window values of one plan, with what every key shares computed once."""

    def __init__(self, plan: AggregationPlan) -> None:
        self.plan = plan
        self.states = plan.states
        self.windows = plan.window_seconds
        self.outputs = [
            (o.name, o.spec, o.window.seconds, plan.column_kinds[o.spec.column])
            for o in plan.outputs
        ]
        # Each window's bounds at the last read time, as one value (read and set whole).
        self._bounds: tuple[int | None, list[tuple[int, int, int]]] = (None, [])

    def raw_values(
        self,
        index: TileIndex,
        tiles: Mapping[tuple[int, int], dict[str, Any]],
        at_micros: int,
    ) -> dict[str, Any]:
        """Every feature at ``at_micros`` as states hold values (timestamps in micros)."""
        cached_at, bounds = self._bounds
        if at_micros != cached_at:  # the keys of one read share them
            bounds = [(w, *window_bounds(w, at_micros)) for w in self.windows]
            self._bounds = (at_micros, bounds)
        merged: dict[int, dict[str, Any]] = {}
        for window, start, end in bounds:
            merged[window] = merge_states(
                self.states, [tiles[tile] for tile in index.covering(start, end)]
            )
        return {name: finalize(spec, merged[window]) for name, spec, window, _kind in self.outputs}

    def values(
        self,
        index: TileIndex,
        tiles: Mapping[tuple[int, int], dict[str, Any]],
        at_micros: int,
    ) -> dict[str, Any]:
        """Every feature at ``at_micros``, timestamps as ``pd.Timestamp``."""
        values = self.raw_values(index, tiles, at_micros)
        for name, spec, _window, kind in self.outputs:
            value = values[name]
            if spec.function in ("min", "max"):
                values[name] = _decode(value, kind)
            elif spec.function in ("last_n", "last_distinct_n") and value is not None:
                values[name] = [_decode(v, kind) for v in value]
        return values

    def frame(
        self, keys: Sequence[tuple[Any, ...]], at_micros: int, rows: Sequence[Mapping[str, Any]]
    ) -> pd.DataFrame:
        """The online read result: key columns, the read time, then one typed column per
        feature from :meth:`raw_values` of each key (see :func:`_output_array`)."""
        fs = self.plan.feature_set
        data: dict[str, Any] = {}
        for position, name in enumerate(fs.key):
            data[name] = key_array([key[position] for key in keys], self.plan.key_kinds[name])
        data[fs.timestamp_column] = micros_array([at_micros] * len(keys))
        for name, spec, _window, kind in self.outputs:
            data[name] = _output_array(spec.function, kind, [row[name] for row in rows])
        # Typed arrays in, one frame out: inferring types per row costs a one-key read
        # more than its round trip to the store.
        return pd.DataFrame(data, index=pd.RangeIndex(len(keys)), copy=False)


def _output_array(function: str, kind: ColumnKind, values: list[Any]) -> Any:
    """One feature's online values, with a dtype set by the function and the aggregated
    column's kind, never by the values read: ``count`` and integer ``sum`` as ``int64``
    (never null), ``min``/``max`` typed as their column (see
    :func:`~fs_dagster.stores.online.base.feature_array`), the boolean ones as nullable
    ``boolean``, ``last_n`` lists as objects, every other as ``float64`` (NaN for null)."""
    if function == "count" or (function == "sum" and kind in ("long", "int")):
        return np.array(values, dtype=np.int64)
    if function in ("min", "max"):
        # Decimals are kept as doubles in states (see _value).
        return feature_array(values, "double" if kind == "decimal" else kind)
    if function in BOOLEAN_FUNCTIONS:
        return feature_array(values, "boolean")
    if function in ("last_n", "last_distinct_n"):
        column = np.empty(len(values), dtype=object)
        column[:] = [None if v is None else [_decode(x, kind) for x in v] for v in values]
        return column
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def read_aggregates(
    store: OnlineStore, plan: AggregationPlan, keys: Sequence[tuple[Any, ...]], at_micros: int
) -> pd.DataFrame:
    """Online window values for ``keys`` at ``at_micros``: one row per key, in order.

    Raises:
        ValueError: some tiles the read needs may have expired (``at_micros`` too far
            back); offline point-in-time reads serve any time.
    """
    now_seconds = now_micros() // 1_000_000
    ranges = read_spans(tuple(plan.window_seconds), at_micros, plan.resolutions)
    spans = [(r.resolution, r.first, r.last) for r in ranges]
    # Without the table's creation and seeding times a rung counts as expired as soon as
    # its first needed tile could be: only then can those facts change the answer (a
    # seeding lies in the past, so it cannot expire a tile that is still retained). Recent
    # reads, the usual ones, skip asking the store for them; older ones ask together with
    # the tiles, in one round trip.
    rung = plan.expired_rung(at_micros, now_seconds, None)
    if rung is None:
        stored = store.read_tiles_for_keys(plan.tile_table, keys, spans)
    else:
        stored, (created, seeded) = store.read_tiles_with_history(plan.tile_table, keys, spans)
        rung = plan.expired_rung(
            at_micros,
            now_seconds,
            created // 1_000_000 if created is not None else None,
            seeded // 1_000_000 if seeded is not None else None,
        )
    if rung is not None:
        at = datetime.fromtimestamp(at_micros / 1e6, UTC).isoformat()
        raise ValueError(
            f"'{plan.feature_set.name}': online tiles cannot answer a read at {at}: its "
            f"{rung} s tiles are kept {plan.retention(rung)} s after they are written and "
            "may be gone; read times that recent, or use get_offline_features for any time"
        )
    reader = _WindowReader(plan)
    rows: list[dict[str, Any]] = []
    for key_tiles in stored:
        # One parse for all of a key's tiles: a read needs hundreds of them.
        states = json.loads(f"[{','.join(t.state for t in key_tiles)}]")
        tiles = {(t.resolution, t.start): s for t, s in zip(key_tiles, states, strict=True)}
        rows.append(reader.raw_values(TileIndex(tiles, plan.resolutions), tiles, at_micros))
    return reader.frame(keys, at_micros, rows)


def window_result_type(function: str, column_type: DataType) -> DataType:
    """The Spark type of a window value of ``function`` over a column of ``column_type``."""
    if function == "count":
        return LongType()
    if function == "sum":
        return LongType() if isinstance(column_type, LongType) else column_type
    if function in BOOLEAN_FUNCTIONS:
        return BooleanType()
    if function in ("min", "max"):
        return column_type
    if function in ("last_n", "last_distinct_n"):
        return ArrayType(column_type)
    return DoubleType()


def tile_numbers(tiles: DataFrame, plan: AggregationPlan) -> DataFrame:
    """The offline tile partials ``tiles`` with their states as numbers, one column each
    (:func:`~fs_dagster.aggregation.columnar.state_columns`), parsed from the JSON in
    the JVM, for a plan that :func:`~fs_dagster.aggregation.columnar.columnar_supported`.
    """
    columns = state_columns(plan)
    spark_types = {"long": LongType(), "double": DoubleType(), "counts": ArrayType(LongType())}
    schema = StructType(
        [StructField(state, spark_types[kind]) for state, kind in state_types(plan).items()]
    )
    numbers = []
    for column in columns:
        value = F.col("__fs_state").getField(column.state)
        if column.part == "present":
            number = value.isNotNull().cast(LongType())
        else:
            if column.part in ("t", "n"):
                value = value.getItem(0 if column.part == "t" else 1)
            kind = LongType() if column.integer else DoubleType()
            number = F.coalesce(value, F.lit(column.identity).cast(kind))
        numbers.append(number.alias(column.name))
    position = [*plan.feature_set.key, _RES, _TILE]
    parsed = tiles.select(*position, F.from_json("state", schema).alias("__fs_state"))
    return parsed.select(*position, *numbers)


def point_in_time_aggregates(
    plan: AggregationPlan,
    population: DataFrame,
    tiles: DataFrame,
    point_in_time_column: str,
    column_types: Mapping[str, DataType],
) -> DataFrame:
    """Window values as of each population row, from the offline tile partials.

    Population rows and tile partials are co-grouped by a hash bucket of the key on the
    executors. Each window reads the tiles online reads would read at that time, so an
    offline value is the online value served then for the same events: merged row by row
    with the online code, or, when every state is a sum, count, min, max or boolean count,
    column-wise: the partials' states taken out of their JSON by Spark
    (:func:`tile_numbers`), then every window at every row of a bucket with numpy
    (:func:`~fs_dagster.aggregation.columnar.columnar_window_values`; float sums may then
    differ from the online ones in the last digits, by the order of additions).
    """
    fs = plan.feature_set
    keys = list(fs.key)
    missing = [c for c in [*keys, point_in_time_column] if c not in population.columns]
    if missing:
        raise ValueError(
            f"population for '{fs.name}' lacks columns {missing}; it has {population.columns}"
        )
    outputs = plan.outputs
    clashes = [o.name for o in outputs if o.name in population.columns]
    if clashes:
        raise ValueError(f"population columns {clashes} have the names of features of '{fs.name}'")
    pop_fields = list(population.schema.fields)
    result_schema = StructType(
        [
            *pop_fields,
            *[
                StructField(
                    o.name, window_result_type(o.spec.function, column_types[o.spec.column])
                )
                for o in outputs
            ],
        ]
    )
    pit = "__fs_pit_micros"
    bucket = "__fs_bucket"
    # Co-group by a hash bucket of the key, not by the key: a group per key costs a
    # Python call and an Arrow batch per key, which dominates for many sparse keys.
    buckets = max(1, int(population.sparkSession.conf.get("spark.sql.shuffle.partitions") or 1))
    # Hash the keys as the tiles type them, so an int population key meets its long tiles.
    key_types = {k: tiles.schema[k].dataType for k in keys}
    by_bucket = F.pmod(F.hash(*[F.col(k).cast(key_types[k]) for k in keys]), F.lit(buckets))
    population = population.withColumn(
        pit, F.unix_micros(F.col(point_in_time_column).cast("timestamp"))
    ).withColumn(bucket, by_bucket)
    columnar = columnar_supported(plan)
    # Column-wise: the states as numbers, parsed in the JVM; else the JSON states.
    tiles = tile_numbers(tiles, plan) if columnar else tiles.select(*keys, _RES, _TILE, "state")
    tiles = tiles.withColumn(bucket, by_bucket)
    names = [o.name for o in outputs]
    grouped = population.groupBy(bucket).cogroup(tiles.groupBy(bucket))
    if columnar:
        # Arrow in and out: the population's columns pass through untouched, and only
        # the key columns become pandas objects (to pair keys as the pandas path did).
        # Through pandas, converting 1M population rows each way cost more than the
        # windows (mapInPandas of the population alone: 6.3 s against 0.9 s for
        # mapInArrow, 2 cores, 2026-12-03).
        time_zone = population.sparkSession.conf.get("spark.sql.session.timeZone") or "UTC"
        value_types = {
            f.name: to_arrow_type(f.dataType, timezone=time_zone)
            for f in result_schema.fields[len(pop_fields) :]
        }

        def per_bucket_arrow(pop: pa.Table, bucket_tiles: pa.Table) -> pa.Table:
            found = columnar_window_values(
                plan,
                {
                    c: bucket_tiles.column(c).to_pandas()
                    if c in keys
                    else _numbers(bucket_tiles, c)
                    for c in bucket_tiles.column_names
                },
                keys,
                [pop.column(k).to_pandas() for k in keys],
                _numbers(pop, pit, pa.float64()),
            )
            out = pop.drop_columns([pit, bucket])
            for name in names:
                values = pa.array(found[name], type=value_types[name], from_pandas=True)
                out = out.append_column(name, values)
            return out

        return grouped.applyInArrow(per_bucket_arrow, schema=result_schema)

    def per_bucket(pop: pd.DataFrame, bucket_tiles: pd.DataFrame) -> pd.DataFrame:
        reader = _WindowReader(plan)
        by_key: dict[tuple[Any, ...], dict[tuple[int, int], dict[str, Any]]] = {}
        tile_keys = zip(*[bucket_tiles[k] for k in keys], strict=True)
        for key, resolution, start, state in zip(
            tile_keys, bucket_tiles[_RES], bucket_tiles[_TILE], bucket_tiles["state"], strict=True
        ):
            merged = by_key.setdefault(key, {})
            tile = (int(resolution), int(start))
            merged[tile] = merge_states(plan.states, [merged.get(tile), json.loads(state)])
        indexes: dict[tuple[Any, ...], TileIndex] = {}
        cache: dict[tuple[tuple[Any, ...], int], dict[str, Any]] = {}
        empty: dict[str, Any] = dict.fromkeys(names)
        columns: dict[str, list[Any]] = {name: [] for name in names}
        for key, at in zip(zip(*[pop[k] for k in keys], strict=True), pop[pit], strict=True):
            values = empty
            if at is not None and not pd.isna(at):
                # Window bounds depend on the read time's second only.
                second = int(at) // 1_000_000
                known = cache.get((key, second))
                if known is None:
                    tiles_of_key = by_key.get(key, {})
                    index = indexes.get(key)
                    if index is None:
                        index = indexes[key] = TileIndex(tiles_of_key, plan.resolutions)
                    known = cache[(key, second)] = reader.values(index, tiles_of_key, int(at))
                values = known
            for name in names:
                columns[name].append(values[name])
        result = pop.drop(columns=[pit, bucket])
        for name in names:
            result[name] = pd.Series(columns[name], index=result.index)
        return result

    return grouped.applyInPandas(per_bucket, schema=result_schema)


def _numbers(table: pa.Table, column: str, as_type: pa.DataType | None = None) -> np.ndarray:
    """A numeric column of ``table`` as one numpy array (nulls as NaN when cast to float)."""
    values = table.column(column)
    if as_type is not None:
        values = values.cast(as_type)
    numbers: np.ndarray = values.to_numpy()
    return numbers
