"""Window values for many read times at once, with numpy, for additive and ordered states.

Point-in-time reads evaluate every window at every population row. For the states that
are plain numbers (``sum``, ``count``, ``min``, ``max`` and the boolean counts) this
module does it column-wise: the same tiles as :class:`~fs_dagster.aggregation.tiles.TileIndex`
picks (those inside ``[S, E)`` whose parent tile is not), found by ``searchsorted`` and
reduced with ``reduceat``. Within one rung those tiles form at most two runs: the part
of ``[S, E)`` before its first whole parent tile and the part after its last one (or all
of ``[S, E)`` when no parent tile fits, or at the coarsest rung).

Values equal the row-by-row merge's, except that float sums may add in another order
(differences of a few units in the last place).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.aggregation.states import state_kind
from fs_dagster.aggregation.tiles import edge_resolution
from fs_dagster.definitions.aggregations import AggregateSpec

__all__ = [
    "StateColumn",
    "columnar_supported",
    "columnar_window_values",
    "merged_window_values",
    "state_columns",
]

_KINDS = frozenset({"sum", "count", "min", "max", "bool"})
_INTEGER = frozenset({"long", "int"})
_ORDERED = frozenset({"long", "int", "double", "float", "timestamp"})
_SUMMED = frozenset({"long", "int", "double", "float", "decimal"})
# Tile starts are seconds since the epoch; key ids go in the bits above them.
_START_BITS = 34


def columnar_supported(plan: AggregationPlan) -> bool:
    """Whether every state of ``plan`` is one this module computes."""
    for state in plan.states:
        kind = plan.column_kinds[state.column]
        if state.kind not in _KINDS:
            return False
        if state.kind in ("min", "max") and kind not in _ORDERED:
            return False
        if state.kind == "sum" and kind not in _SUMMED:
            return False
    return True


def _dtype(plan: AggregationPlan, kind: str, column: str) -> Any:
    if kind in ("count", "bool") or plan.column_kinds[column] in _INTEGER | {"timestamp"}:
        return np.int64
    return np.float64


@dataclass(frozen=True)
class StateColumn:
    """One number per tile taken from one state: a column of the merged tile table.

    Attributes:
        name: the column's name: the state key for the state itself, with ``|present``
            (1 when the tile has the state: min and max only), ``|t`` and ``|n`` (a
            boolean state's true and non-null counts).
        state: the state's key in a tile's JSON.
        part: ``value``, ``present``, ``t`` or ``n`` (see ``name``).
        merge: how partials of one tile combine: ``sum``, ``min`` or ``max``.
        integer: int64 values (else float64).
    """

    name: str
    state: str
    part: Literal["value", "present", "t", "n"]
    merge: Literal["sum", "min", "max"]
    integer: bool

    @property
    def dtype(self) -> Any:
        """The numpy type of the column."""
        return np.int64 if self.integer else np.float64

    @property
    def identity(self) -> float:
        """The value of a tile without the state (it had only nulls): changes no merge."""
        return _identity(self.merge, self.dtype)


def state_columns(plan: AggregationPlan) -> list[StateColumn]:
    """The columns of the merged tile table of ``plan`` (see :func:`columnar_supported`)."""
    columns: list[StateColumn] = []
    for spec in plan.states:
        name = spec.key
        if spec.kind == "bool":
            columns += [
                StateColumn(f"{name}|t", name, "t", "sum", True),
                StateColumn(f"{name}|n", name, "n", "sum", True),
            ]
            continue
        integer = _dtype(plan, spec.kind, spec.column) == np.int64
        if spec.kind in ("min", "max"):
            # Which tiles have a value (the identity could be a value of an int column).
            columns.append(StateColumn(f"{name}|present", name, "present", "sum", True))
            merge: Literal["min", "max"] = "min" if spec.kind == "min" else "max"
            columns.append(StateColumn(name, name, "value", merge, integer))
        else:
            columns.append(StateColumn(name, name, "value", "sum", integer))
    return columns


def _tile_arrays(
    plan: AggregationPlan,
    key_ids: np.ndarray,
    resolutions: np.ndarray,
    starts: np.ndarray,
    states: Sequence[str],
) -> pd.DataFrame:
    """One row per distinct tile, sorted by (resolution, key id, start), partials merged.

    Columns: ``res``, ``pos`` (key id and start in one int64) and the
    :func:`state_columns` of ``plan``.
    """
    columns: dict[str, Any] = {
        "res": resolutions.astype(np.int64),
        "pos": _positions(key_ids, starts),
    }
    parsed = [json.loads(s) for s in states]
    merge: dict[str, str] = {}
    for column in state_columns(plan):
        values = [p.get(column.state) for p in parsed]
        if column.part == "t":
            taken = [v[0] if v else 0 for v in values]
        elif column.part == "n":
            taken = [v[1] if v else 0 for v in values]
        elif column.part == "present":
            taken = [v is not None for v in values]
        else:
            taken = [column.identity if v is None else v for v in values]
        columns[column.name] = np.array(taken, column.dtype)
        merge[column.name] = column.merge
    frame = pd.DataFrame(columns)
    if frame.empty:
        return frame
    # Several batches may have written partials of one tile: merge them.
    merged = frame.groupby(["res", "pos"], sort=True).agg(merge).reset_index()
    return merged


def _positions(key_ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Key id and tile start in one int64, ordered by key id, then start."""
    return (key_ids.astype(np.int64) << _START_BITS) + starts.astype(np.int64)


def _identity(kind: str, dtype: Any) -> float:
    """What changes nothing when merged by ``kind`` (``min``, ``max``, else a sum)."""
    integer = np.dtype(dtype) == np.int64
    if kind == "min":
        return float(np.inf) if not integer else np.iinfo(np.int64).max
    if kind == "max":
        return float(-np.inf) if not integer else np.iinfo(np.int64).min
    return 0


def _runs(
    lows: np.ndarray, highs: np.ndarray, resolution: int, parent: int | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per read, the start ranges ``[first, last]`` of the rung's tiles in its window."""
    # Tile starts are never negative; a window reaching before the epoch starts there
    # (a negative bound would reach into the previous key's positions).
    lows = np.maximum(lows, 0)
    if parent is None:
        return [(lows, highs - resolution)]
    first_whole = -(-lows // parent) * parent
    last_whole = highs // parent * parent
    split = first_whole <= last_whole
    left = (lows, np.where(split, first_whole, highs) - resolution)
    right = (np.where(split, last_whole, highs), highs - resolution)
    return [left, right]


def columnar_window_values(
    plan: AggregationPlan,
    tiles: pd.DataFrame,
    tile_keys: Sequence[str],
    population_keys: Sequence[np.ndarray | pd.Series],
    at_micros: np.ndarray,
) -> dict[str, pd.Series]:
    """Every feature of ``plan`` for each (key, read time) of a population.

    Args:
        plan: an aggregation plan for which :func:`columnar_supported` holds.
        tiles: tile partials: the key columns ``tile_keys``, ``__fs_resolution``,
            ``__fs_tile_start`` and ``state`` (JSON).
        tile_keys: the key columns of ``tiles``.
        population_keys: the population's key columns, in ``tile_keys`` order.
        at_micros: read times in microseconds (float, NaN for none: every value null).
    """
    tile_ids, row_ids = _key_ids([tiles[k] for k in tile_keys], population_keys)
    table = _tile_arrays(
        plan,
        tile_ids,
        tiles["__fs_resolution"].to_numpy(),
        tiles["__fs_tile_start"].to_numpy(),
        list(tiles["state"]),
    )
    return _window_values(plan, table, row_ids, at_micros)


def merged_window_values(
    plan: AggregationPlan,
    tiles: Mapping[str, np.ndarray | pd.Series],
    tile_keys: Sequence[str],
    population_keys: Sequence[np.ndarray | pd.Series],
    at_micros: np.ndarray,
) -> dict[str, pd.Series]:
    """:func:`columnar_window_values` over tiles whose partials are merged already.

    Args:
        plan: an aggregation plan for which :func:`columnar_supported` holds.
        tiles: one row per (key, resolution, start): the key columns ``tile_keys``,
            ``__fs_resolution``, ``__fs_tile_start`` and the :func:`state_columns` of
            ``plan`` (each state merged by its ``merge``, a missing one its
            ``identity``).
        tile_keys: the key columns of ``tiles``.
        population_keys: the population's key columns, in ``tile_keys`` order.
        at_micros: read times in microseconds (float, NaN for none: every value null).
    """
    tile_ids, row_ids = _key_ids([tiles[k] for k in tile_keys], population_keys)
    resolutions = np.asarray(tiles["__fs_resolution"], np.int64)
    positions = _positions(tile_ids, np.asarray(tiles["__fs_tile_start"], np.int64))
    order = np.lexsort((positions, resolutions))
    table = pd.DataFrame(
        {
            "res": resolutions[order],
            "pos": positions[order],
            **{c.name: np.asarray(tiles[c.name], c.dtype)[order] for c in state_columns(plan)},
        }
    )
    return _window_values(plan, table, row_ids, at_micros)


def _key_ids(
    tile_keys: Sequence[np.ndarray | pd.Series], population_keys: Sequence[np.ndarray | pd.Series]
) -> tuple[np.ndarray, np.ndarray]:
    """One id per distinct key over tiles and population together (-1 for a null key)."""
    tile_count = len(tile_keys[0])
    combined = [
        pd.concat(
            [pd.Series(t).reset_index(drop=True), pd.Series(p).reset_index(drop=True)],
            ignore_index=True,
        )
        for t, p in zip(tile_keys, population_keys, strict=True)
    ]
    if len(combined) == 1:
        codes, _ = pd.factorize(combined[0])
    else:
        codes, _ = pd.factorize(pd.MultiIndex.from_arrays(combined))
    return codes[:tile_count], codes[tile_count:]


def _window_values(
    plan: AggregationPlan, table: pd.DataFrame, row_ids: np.ndarray, at_micros: np.ndarray
) -> dict[str, pd.Series]:
    """The features for each (key id, read time) from the merged tiles of
    :func:`_tile_arrays`."""
    rows = len(at_micros)
    known = ~np.isnan(at_micros)
    at_seconds = np.where(known, at_micros, 0).astype(np.int64) // 1_000_000
    rungs = sorted(plan.resolutions)
    parents: dict[int, int | None] = {r: next((c for c in rungs if c > r), None) for r in rungs}
    base = row_ids.astype(np.int64) << _START_BITS
    # A missing key (code -1) must find no tile: push its positions below every tile.
    base = np.where(row_ids < 0, np.int64(-1) << 62, base)
    by_rung: dict[int, pd.DataFrame] = {}
    if not table.empty:
        for resolution, part in table.groupby("res", sort=True):
            by_rung[int(str(resolution))] = part.reset_index(drop=True)

    # Reads in (key, time) order make searchsorted and reduceat walk memory in order
    # (several times faster than random order); results go back to the rows' order.
    order = np.lexsort((at_seconds, base))
    restore = np.empty_like(order)
    restore[order] = np.arange(len(order))
    base, at_seconds = base[order], at_seconds[order]
    values: dict[str, pd.Series] = {}
    for window in plan.window_seconds:
        edge = edge_resolution(window)
        highs = at_seconds + 1
        lows = -(-(highs - window) // edge) * edge
        reduced = _reduce_window(
            by_rung=by_rung, parents=parents, base=base, lows=lows, highs=highs
        )
        totals = {column: array[restore] for column, array in reduced.items()}
        for output in plan.outputs:
            if output.window.seconds == window:
                values[output.name] = _finalize(plan, output.spec, totals, known, rows)
    return values


def _reduce_window(
    *,
    by_rung: Mapping[int, pd.DataFrame],
    parents: Mapping[int, int | None],
    base: np.ndarray,
    lows: np.ndarray,
    highs: np.ndarray,
) -> dict[str, np.ndarray]:
    """Each state column reduced over the window's tiles, per read."""
    totals: dict[str, np.ndarray] = {}
    for resolution, part in by_rung.items():
        positions = part["pos"].to_numpy()
        prefixes: dict[str, np.ndarray] = {}
        for first, last in _runs(lows, highs, resolution, parents[resolution]):
            begin = np.searchsorted(positions, base + first, side="left")
            end = np.searchsorted(positions, base + last, side="right")
            empty = end <= begin
            # reduceat over interleaved (begin, end) pairs: row k of the result reduces
            # part[begin_k:end_k]; a padding row makes end == len(part) a valid index.
            # reduceat also reduces each gap [end_k, begin_k+1) (thrown away); reads in
            # order keep the gaps short, and an empty read's pair (begin, begin) keeps its
            # gap short too: (0, 0) there made the next gap start at 0, so that empty
            # reads cost the length of the table each (18 s for a 1M-row population).
            indices = np.empty(2 * len(begin), np.int64)
            indices[0::2] = begin
            indices[1::2] = np.where(empty, begin, end)
            for column in part.columns:
                if column in ("res", "pos"):
                    continue
                kind = column.split(":", 1)[0]
                values = part[column].to_numpy()
                ufunc: Any
                if kind in ("count", "bool") or column.endswith("|present"):
                    # Counts: differences of prefix sums (exact for integers, and O(1)).
                    prefix = prefixes.get(column)
                    if prefix is None:
                        prefix = prefixes[column] = np.concatenate(([0], np.cumsum(values)))
                    counted = np.where(empty, 0, prefix[end] - prefix[np.minimum(begin, end)])
                    current = totals.get(column)
                    totals[column] = counted if current is None else current + counted
                    continue
                if kind in ("min", "max") and "|" not in column:
                    ufunc = np.minimum if kind == "min" else np.maximum
                else:
                    kind, ufunc = "sum", np.add
                identity = values.dtype.type(_identity(kind, values.dtype))
                padded = np.append(values, identity)
                reduced = ufunc.reduceat(padded, indices)[0::2]
                reduced = np.where(empty, identity, reduced)
                current = totals.get(column)
                totals[column] = reduced if current is None else ufunc(current, reduced)
    return totals


def _column(values: np.ndarray, valid: np.ndarray) -> pd.Series:
    """``values`` where ``valid``, null elsewhere, as typed as the nulls allow."""
    if valid.all():
        return pd.Series(values)
    if values.dtype.kind == "f":
        return pd.Series(np.where(valid, values, np.nan))
    nullable = [v if ok else None for v, ok in zip(values.tolist(), valid.tolist(), strict=True)]
    return pd.Series(nullable, dtype="object")


def _finalize(
    plan: AggregationPlan,
    spec: AggregateSpec,
    totals: Mapping[str, np.ndarray],
    known: np.ndarray,
    rows: int,
) -> pd.Series:
    kind = state_kind(spec)
    name = f"{kind}:{spec.column}"
    function = spec.function
    zeros = np.zeros(rows, np.int64)
    if kind == "bool":
        t = totals.get(f"{name}|t", zeros)
        n = totals.get(f"{name}|n", zeros)
        result = (t > 0) if function == "boolean_or" else (t == n)
        return _column(result, known & (n > 0))
    value = totals.get(name)
    if function == "count":
        return _column(zeros if value is None else value, known)
    if function == "sum":
        # An empty window sums to 0 (a tile without the state holds only nulls).
        sums = np.zeros(rows, _dtype(plan, kind, spec.column)) if value is None else value
        return _column(sums, known)
    # min and max: null when no tile of the window had a value.
    present = totals.get(f"{name}|present", zeros)
    filled = known & (present > 0)
    if value is None:
        return pd.Series([None] * rows, dtype=object)
    if plan.column_kinds[spec.column] == "timestamp":
        stamps = pd.Series(pd.to_datetime(np.where(filled, value, 0), unit="us"))
        return stamps.where(filled)
    return _column(value, filled)
