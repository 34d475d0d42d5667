"""Windowed aggregation in Spark: tile partials, late events, tile upserts, reads.

Per micro-batch of the online ingestion query:

1. the watermark is the newest event time recorded by earlier batches minus
   ``allowed_lateness`` (kept in the online store per batch id, so a replayed batch sees
   the same watermark); events older than it go to the late-events table with a reason;
2. Spark computes, for every resolution, one partial state per (key, tile) from the
   on-time events;
3. each partial is merged into the stored tile and the full state is written back with
   the batch id as its version. A tile whose stored version is already this batch's was
   written before a crash and is left alone, so a replayed batch counts every event once;
   an older write never replaces a newer version (Cassandra ``USING TIMESTAMP``);
4. the same partials are appended to the offline tile table (Delta, idempotent per batch),
   from which point-in-time reads merge tiles exactly like online reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F  # noqa: N812
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

from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.aggregation.states import (
    StateSpec,
    finalize,
    merge_distinct,
    merge_last,
    merge_states,
    sketch_from_values,
)
from fs_dagster.aggregation.tiles import read_ranges
from fs_dagster.definitions.aggregations import BOOLEAN_FUNCTIONS, NUMERIC_FUNCTIONS
from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.encoding import online_kind
from fs_dagster.stores.online.base import (
    ColumnKind,
    OnlineColumn,
    OnlineStore,
    OnlineTable,
    TileWrite,
)

__all__ = [
    "aggregation_plan",
    "apply_partials",
    "check_aggregations",
    "point_in_time_aggregates",
    "read_aggregates",
    "tile_partials",
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
        name = state.key.replace(":", "__")
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


def tile_partials(on_time: DataFrame, plan: AggregationPlan) -> DataFrame:
    """One row per (key, resolution, tile) with the batch's partial states."""
    fs = plan.feature_set
    keys = list(fs.key)
    columns = sorted({s.column for s in plan.states})
    base = on_time.select(
        *[F.col(k) for k in keys],
        F.unix_micros(F.col(fs.timestamp_column).cast("timestamp")).alias(_MICROS),
        *[_value(c, plan.column_kinds[c]).alias(f"__v_{c}") for c in columns],
    )
    moments = sorted({s.column for s in plan.states if s.kind == "moments"})
    parts: list[DataFrame] = []
    for resolution in plan.resolutions:
        tiled = base.withColumn(_RES, F.lit(resolution)).withColumn(
            _TILE, F.floor(F.col(_MICROS) / F.lit(resolution * 1_000_000)) * F.lit(resolution)
        )
        group = [*keys, _RES, _TILE]
        if moments:
            # The tile's minimum is its pivot: deterministic, and close to every value.
            by_tile = Window.partitionBy(*[F.col(c) for c in group])
            for column in moments:
                tiled = tiled.withColumn(
                    f"__p_{column}", F.min(F.col(f"__v_{column}").cast("double")).over(by_tile)
                )
        parts.append(tiled.groupBy(*group).agg(*_partial_aggregates(plan)))
    result = parts[0]
    for part in parts[1:]:
        result = result.unionByName(part)
    return result.withColumn(_TILE, F.col(_TILE).cast("long"))


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

    def encode(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        for batch in batches:
            records: list[dict[str, Any]] = batch.to_dict("records")  # type: ignore[assignment]
            yield pd.DataFrame(
                {
                    **{k: batch[k] for k in keys},
                    _RES: batch[_RES].astype("int64"),
                    _TILE: batch[_TILE].astype("int64"),
                    "state": [
                        json.dumps(partial_state(r, states), separators=(",", ":")) for r in records
                    ],
                }
            )

    return partials.mapInPandas(encode, schema=schema)  # type: ignore[arg-type]


def partial_state(row: Mapping[str, Any], states: Sequence[StateSpec]) -> dict[str, Any]:
    """The tile state of one partial row computed by :func:`tile_partials`."""
    state: dict[str, Any] = {}
    for spec in states:
        raw = _plain(row[spec.key.replace(":", "__")])
        if spec.kind in ("sum", "min", "max"):
            value = raw
        elif spec.kind == "count":
            value = int(raw) if raw else None
        elif spec.kind == "bool":
            value = [int(raw["t"] or 0), int(raw["n"])] if raw and raw["n"] else None
        elif spec.kind == "moments":
            value = (
                [int(raw["n"]), float(raw["pivot"]), float(raw["d"]), float(raw["m2"])]
                if raw and raw["n"]
                else None
            )
        elif spec.kind == "last":
            entries = [[int(e["t"]), e["v"]] for e in raw or []]
            value = merge_last(entries, [], spec.capacity) or None
        elif spec.kind == "distinct":
            entries = [[int(e["t"]), e["v"]] for e in raw or []]
            value = merge_distinct(entries, [], spec.capacity) or None
        else:  # sketch
            value = sketch_from_values(raw) if raw else None
        if value is not None:
            state[spec.key] = value
    return state


def apply_partials(
    store: OnlineStore, plan: AggregationPlan, rows: Iterable[Mapping[str, Any]], version: int
) -> int:
    """Merge encoded partial rows (see :func:`encode_partials`) into the stored tiles and
    write full states at ``version``.

    Tiles already at ``version`` (written before a crash) are skipped: replay-safe.
    """
    keys = list(plan.feature_set.key)
    pending: list[tuple[tuple[Any, ...], int, int, dict[str, Any]]] = []
    written = 0
    for row in rows:
        pending.append(
            (
                tuple(row[k] for k in keys),
                int(row[_RES]),
                int(row[_TILE]),
                json.loads(row["state"]),
            )
        )
        if len(pending) >= 2000:
            written += _flush(store, plan, pending, version)
            pending = []
    if pending:
        written += _flush(store, plan, pending, version)
    return written


def _flush(
    store: OnlineStore,
    plan: AggregationPlan,
    pending: list[tuple[tuple[Any, ...], int, int, dict[str, Any]]],
    version: int,
) -> int:
    table = plan.tile_table
    stored = store.read_tile_versions(table, [(k, r, s) for k, r, s, _ in pending])
    writes: list[TileWrite] = []
    for (key, resolution, start, partial), current in zip(pending, stored, strict=True):
        if current is not None and current.version >= version:
            continue  # this batch already reached the tile before a restart
        base = json.loads(current.state) if current is not None else {}
        merged = merge_states(plan.states, [base, partial])
        writes.append(
            TileWrite(
                key=key,
                resolution=resolution,
                start=start,
                version=version,
                state=json.dumps(merged, separators=(",", ":")),
                ttl_seconds=plan.retention(resolution),
            )
        )
    return store.write_tiles(table, writes)


def _decode(value: Any, kind: ColumnKind) -> Any:
    if value is None:
        return None
    if kind == "timestamp":
        return pd.Timestamp(value, unit="us")
    return value


def window_values(
    plan: AggregationPlan,
    tiles: Mapping[tuple[int, int], dict[str, Any]],
    at_micros: int,
    per_window: Mapping[int, list[tuple[int, int]]] | None = None,
) -> dict[str, Any]:
    """Every feature of ``plan`` at ``at_micros`` from the tiles of one key.

    ``per_window`` (each window's tiles at ``at_micros``) may be passed when the caller
    reads many keys at the same time, so it is computed once.
    """
    if per_window is None:
        per_window, _ = read_ranges(plan.window_seconds, at_micros, plan.resolutions)
    merged = {
        window: merge_states(plan.states, [tiles.get(tile) for tile in tile_list])
        for window, tile_list in per_window.items()
    }
    values: dict[str, Any] = {}
    for output in plan.outputs:
        value = finalize(output.spec, merged[output.window.seconds])
        kind = plan.column_kinds[output.spec.column]
        if output.spec.function in ("min", "max"):
            value = _decode(value, kind)
        elif output.spec.function in ("last_n", "last_distinct_n") and value is not None:
            value = [_decode(v, kind) for v in value]
        values[output.name] = value
    return values


def read_aggregates(
    store: OnlineStore, plan: AggregationPlan, keys: Sequence[tuple[Any, ...]], at_micros: int
) -> pd.DataFrame:
    """Online window values for ``keys`` at ``at_micros``: one row per key, in order."""
    per_window, ranges = read_ranges(plan.window_seconds, at_micros, plan.resolutions)
    spans = [(r.resolution, r.first, r.last) for r in ranges]
    fs = plan.feature_set
    records: list[dict[str, Any]] = []
    stored = store.read_tiles_for_keys(plan.tile_table, keys, spans) if spans else [[]] * len(keys)
    for key, key_tiles in zip(keys, stored, strict=True):
        tiles = {(t.resolution, t.start): json.loads(t.state) for t in key_tiles}
        record: dict[str, Any] = dict(zip(fs.key, key, strict=True))
        record[fs.timestamp_column] = pd.Timestamp(at_micros, unit="us")
        record.update(window_values(plan, tiles, at_micros, per_window))
        records.append(record)
    columns = [*fs.key, fs.timestamp_column, *[o.name for o in plan.outputs]]
    return pd.DataFrame.from_records(records, columns=columns)


def _result_type(function: str, column_type: DataType) -> DataType:
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


def point_in_time_aggregates(
    plan: AggregationPlan,
    population: DataFrame,
    tiles: DataFrame,
    point_in_time_column: str,
    column_types: Mapping[str, DataType],
) -> DataFrame:
    """Window values as of each population row, from the offline tile partials.

    Population rows and tile partials are co-grouped by key on the executors; each
    group merges its tiles with the same code online reads use, so an offline value is
    the online value that was served at that time for the same events.
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
                StructField(o.name, _result_type(o.spec.function, column_types[o.spec.column]))
                for o in outputs
            ],
        ]
    )
    pop_columns = [f.name for f in pop_fields]
    pit = "__fs_pit_micros"
    population = population.withColumn(
        pit, F.unix_micros(F.col(point_in_time_column).cast("timestamp"))
    )

    def per_key(pop: pd.DataFrame, key_tiles: pd.DataFrame) -> pd.DataFrame:
        merged: dict[tuple[int, int], dict[str, Any]] = {}
        for resolution, start, state in zip(
            key_tiles[_RES], key_tiles[_TILE], key_tiles["state"], strict=True
        ):
            tile = (int(resolution), int(start))
            merged[tile] = merge_states(plan.states, [merged.get(tile), json.loads(state)])
        cache: dict[int, dict[str, Any]] = {}
        rows: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = pop.to_dict("records")  # type: ignore[assignment]
        for record in records:
            at = record.pop(pit)
            if at is None or pd.isna(at):
                values: dict[str, Any] = {o.name: None for o in outputs}
            else:
                at = int(at)
                if at // 1_000_000 not in cache:
                    cache[at // 1_000_000] = window_values(plan, merged, at)
                values = cache[at // 1_000_000]
            rows.append({**record, **values})
        return pd.DataFrame.from_records(rows, columns=[*pop_columns, *[o.name for o in outputs]])

    grouped_pop = population.groupBy(*keys)
    grouped_tiles = tiles.select(*keys, _RES, _TILE, "state").groupBy(*keys)
    return grouped_pop.cogroup(grouped_tiles).applyInPandas(per_key, schema=result_schema)
