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

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.aggregation.states import state_kind
from fs_dagster.aggregation.tiles import edge_resolution, rung_parents
from fs_dagster.definitions.aggregations import AggregateSpec

__all__ = [
    "StateColumn",
    "StateType",
    "columnar_supported",
    "columnar_window_values",
    "state_columns",
    "state_types",
]

_KINDS = frozenset({"sum", "count", "min", "max", "bool"})
_INTEGER = frozenset({"long", "int"})
_ORDERED = frozenset({"long", "int", "double", "float", "timestamp"})
_SUMMED = frozenset({"long", "int", "double", "float", "decimal"})
# Tile starts are seconds since the epoch, offset to be positive; key ids go in the bits
# above them. Starts and read times must lie in [-2^33, 2^33) s: the years 1698 to 2242.
_START_BITS = 34
_START_OFFSET = 1 << (_START_BITS - 1)
#: Reads whose windows are evaluated together (see :func:`_window_values`).
_READS_PER_CHUNK = 1 << 16


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
    """One number per tile partial taken from one state: a column of the tile table
    :func:`columnar_window_values` reads.

    Attributes:
        name: the column's name: the state key for the state itself, with ``|present``
            (1 when the partial has the state: min and max only), ``|t`` and ``|n`` (a
            boolean state's true and non-null counts).
        state: the state's key in a tile's JSON.
        part: ``value``, ``present``, ``t`` or ``n`` (see ``name``).
        merge: how partials (and tiles) combine: ``sum``, ``min`` or ``max``.
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
    """The columns of the tile table of ``plan`` (see :func:`columnar_supported`)."""
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


#: How a state is written in a tile's JSON: an integer, a float, or the boolean
#: states' ``[true, non-null]`` counts.
StateType = Literal["long", "double", "counts"]


def state_types(plan: AggregationPlan) -> dict[str, StateType]:
    """The JSON type of each state :func:`state_columns` reads, for the SQL that takes
    them out of the tiles (DuckDB's and Spark's)."""
    types: dict[str, StateType] = {}
    for column in state_columns(plan):
        if column.part in ("t", "n"):
            types[column.state] = "counts"
        elif column.part == "value":
            # A min or max's presence count is no clue to its type: its value is.
            types[column.state] = "long" if column.integer else "double"
    return types


def _positions(key_ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Key id and tile start in one int64, ordered by key id, then start."""
    seconds: np.ndarray = starts.astype(np.int64)
    _check_seconds(seconds, "tile starts")
    positions: np.ndarray = (key_ids.astype(np.int64) << _START_BITS) + seconds + _START_OFFSET
    return positions


def _check_seconds(seconds: np.ndarray, what: str) -> None:
    if len(seconds) and (seconds.min() < -_START_OFFSET or seconds.max() >= _START_OFFSET):
        raise ValueError(
            f"{what} must fall between the years 1698 and 2242 for column-wise window "
            f"values; got {int(seconds.min())} .. {int(seconds.max())} s since the epoch"
        )


def _identity(kind: str, dtype: Any) -> float:
    """What changes nothing when merged by ``kind`` (``min``, ``max``, else a sum)."""
    integer = np.dtype(dtype) == np.int64
    if kind == "min":
        return float(np.inf) if not integer else np.iinfo(np.int64).max
    if kind == "max":
        return float(-np.inf) if not integer else np.iinfo(np.int64).min
    return 0


def columnar_window_values(
    plan: AggregationPlan,
    tiles: Mapping[str, np.ndarray | pd.Series | pa.ChunkedArray],
    tile_keys: Sequence[str],
    population_keys: Sequence[np.ndarray | pd.Series],
    at_micros: np.ndarray,
    *,
    threads: int = 1,
) -> dict[str, pd.Series]:
    """Every feature of ``plan`` for each (key, read time) of a population.

    Args:
        plan: an aggregation plan for which :func:`columnar_supported` holds.
        tiles: tile partials as numbers: the key columns ``tile_keys``,
            ``__fs_resolution``, ``__fs_tile_start`` and the :func:`state_columns` of
            ``plan`` (a state a partial lacks holds the column's ``identity``). A tile may
            have several partials: the reductions over a window's tiles merge them.
        tile_keys: the key columns of ``tiles``.
        population_keys: the population's key columns, in ``tile_keys`` order.
        at_micros: read times in microseconds (float, NaN for none: every value null).
        threads: threads evaluating the windows, each for its share of the reads (1: all
            in the caller's, as within a Spark task, where the tasks already use every
            core).

    Raises:
        ValueError: a tile start or read time outside the years 1698-2242.
    """
    tile_ids, row_ids = _key_ids([tiles[k] for k in tile_keys], population_keys)
    resolutions = np.asarray(tiles["__fs_resolution"], np.int64)
    positions = _positions(tile_ids, np.asarray(tiles["__fs_tile_start"], np.int64))
    order = np.lexsort((positions, resolutions))
    table = {
        "res": resolutions[order],
        "pos": positions[order],
        **{c.name: np.asarray(tiles[c.name], c.dtype)[order] for c in state_columns(plan)},
    }
    return _window_values(plan, table, row_ids, at_micros, threads)


def _key_ids(
    tile_keys: Sequence[np.ndarray | pd.Series | pa.ChunkedArray],
    population_keys: Sequence[np.ndarray | pd.Series],
) -> tuple[np.ndarray, np.ndarray]:
    """One id per distinct key over tiles and population together (-1 for a null key)."""
    if len(tile_keys) == 1 and isinstance(tile_keys[0], pa.ChunkedArray):
        found = _arrow_key_ids(tile_keys[0], population_keys[0])
        if found is not None:
            return found
    tile_count = len(tile_keys[0])
    combined = [
        pd.concat(
            [_series(t).reset_index(drop=True), pd.Series(p).reset_index(drop=True)],
            ignore_index=True,
        )
        for t, p in zip(tile_keys, population_keys, strict=True)
    ]
    if len(combined) == 1:
        codes, _ = pd.factorize(combined[0])
    else:
        codes, _ = pd.factorize(pd.MultiIndex.from_arrays(combined))
    return codes[:tile_count], codes[tile_count:]


def _series(values: np.ndarray | pd.Series | pa.ChunkedArray) -> pd.Series:
    if isinstance(values, pa.ChunkedArray):
        converted: pd.Series = values.to_pandas()
        return converted
    return pd.Series(values)


def _arrow_key_ids(
    tile_keys: pa.ChunkedArray, population_keys: np.ndarray | pd.Series
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_key_ids` of one string or integer key column, by Arrow's dictionary
    encoding (on 1M population rows of string keys 2-4 times faster than making Python
    strings of the tiles' keys and factorizing both in pandas). ``None`` when the
    population's keys are not of the tiles' kind (pandas then compares them as it does)."""
    kind = tile_keys.type
    people = pd.Series(population_keys)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        usable = people.dtype == object or isinstance(people.dtype, pd.StringDtype)
    else:
        usable = pa.types.is_integer(kind) and people.dtype.kind in "iuf"
    if not usable:
        return None
    try:
        # Exact conversions only: a fractional number or a non-string raises.
        converted = pa.array(people, type=kind, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    # One memo table over every chunk: the chunks share one dictionary.
    encoded = pa.chunked_array([*tile_keys.chunks, converted], type=kind).dictionary_encode()
    indices = pa.chunked_array([chunk.indices for chunk in encoded.chunks], type=pa.int32())
    codes = np.asarray(indices.fill_null(-1).to_numpy(), np.int64)
    tile_count = len(tile_keys)
    return codes[:tile_count], codes[tile_count:]


def _window_values(
    plan: AggregationPlan,
    table: Mapping[str, np.ndarray],
    row_ids: np.ndarray,
    at_micros: np.ndarray,
    threads: int,
) -> dict[str, pd.Series]:
    """The features for each (key id, read time) from tile partials sorted by (``res``,
    ``pos``), with the :func:`state_columns` of ``plan``; on up to ``threads`` threads."""
    rows = len(at_micros)
    known = ~np.isnan(at_micros)
    at_seconds = np.where(known, at_micros, 0).astype(np.int64) // 1_000_000
    parents = rung_parents(tuple(plan.resolutions))
    _check_seconds(at_seconds[known], "read times")
    base = (row_ids.astype(np.int64) << _START_BITS) + _START_OFFSET
    # A missing key (code -1) must find no tile: push its positions below every tile.
    base = np.where(row_ids < 0, np.int64(-1) << 62, base)
    columns = state_columns(plan)
    rungs: dict[int, _Rung] = {}
    resolutions = table["res"]
    cuts = [0, *(np.flatnonzero(np.diff(resolutions)) + 1).tolist(), len(resolutions)]
    for first, end in pairwise(cuts):
        if end > first:
            part = {name: values[first:end] for name, values in table.items()}
            rungs[int(resolutions[first])] = _Rung(part, columns)

    # Reads in (key, time) order make searchsorted and reduceat walk memory in order
    # (several times faster than random order); results go back to the rows' order.
    # One int64 per read: key id and offset second never overlap.
    order = np.argsort(base + at_seconds, kind="stable")
    base, highs = base[order], at_seconds[order] + 1
    windows = list(plan.window_seconds)
    longest = max(windows)

    def window_totals(
        window: int,
        base: np.ndarray,
        highs: np.ndarray,
        after: Mapping[int, Mapping[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """Every state column reduced over ``window`` for each of these reads."""
        edge = edge_resolution(window)
        # A window reaching before the earliest possible tile starts there (a lower bound
        # would reach into the previous key's positions).
        lows = np.maximum(-(-(highs - window) // edge) * edge, -_START_OFFSET)
        totals: dict[str, np.ndarray] = {}
        for resolution, rung in rungs.items():
            if resolution > window:
                continue  # none of its tiles fits inside the window
            parent = parents[resolution]
            if parent is None:
                rung.add(totals, rung.reduce(base + lows, base + highs - resolution))
                continue
            # The rung's tiles before the first and after the last whole parent tile in
            # the window (all of the window's tiles of the rung when no parent tile fits).
            first_whole = -(-lows // parent) * parent
            last_whole = highs // parent * parent
            split = first_whole <= last_whole
            before = base + np.where(split, first_whole, highs) - resolution
            rung.add(totals, rung.reduce(base + lows, before))
            rung.add(totals, after[resolution], where=split)
        return totals

    def after_parents(base: np.ndarray, highs: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
        """Each rung's run after its last whole parent tile: it ends at the read's second
        whatever the window, so it is reduced once and shared by every window."""
        after: dict[int, dict[str, np.ndarray]] = {}
        for resolution, rung in rungs.items():
            parent = parents[resolution]
            if parent is not None and resolution <= longest:
                last_whole = highs // parent * parent
                after[resolution] = rung.reduce(base + last_whole, base + highs - resolution)
        return after

    # Reads a chunk at a time: each step's arrays stay small enough for the allocator to
    # reuse (1M reads at once allocated and faulted in gigabytes of fresh pages, a third
    # of the time on a 2-core VM) and for the CPU caches. numpy's searches, gathers and
    # reductions release the interpreter lock, so chunks also run side by side.
    chunks = [(lo, min(lo + _READS_PER_CHUNK, rows)) for lo in range(0, rows, _READS_PER_CHUNK)]
    chunks = chunks or [(0, 0)]
    afters: list[dict[int, dict[str, np.ndarray]] | None] = [None] * len(chunks)
    # One window's totals at a time, in the rows' order: each task puts its chunk's in
    # place (a scatter per chunk, on the task's thread, instead of a gather of every
    # column after the last task: on 1M reads, 0.3-0.4 s a window, mostly page faults
    # of the fresh arrays, on one thread).
    ordered: dict[str, np.ndarray] = {}
    creating = threading.Lock()

    def chunk_totals(task: tuple[int, int]) -> None:
        """One window's totals for the reads of one chunk (one task per chunk at a time),
        into ``ordered``."""
        index, window = task
        lo, hi = chunks[index]
        chunk_base, chunk_highs = base[lo:hi], highs[lo:hi]
        after = afters[index]
        if after is None:
            after = afters[index] = after_parents(chunk_base, chunk_highs)
        rows_of_chunk = order[lo:hi]
        for name, found in window_totals(window, chunk_base, chunk_highs, after).items():
            with creating:
                target = ordered.get(name)
                if target is None:
                    target = ordered[name] = np.empty(rows, found.dtype)
            target[rows_of_chunk] = found

    values: dict[str, pd.Series] = {}
    pool = ThreadPoolExecutor(threads) if threads > 1 and len(chunks) > 1 else None
    try:
        for window in windows:
            ordered.clear()
            tasks = [(index, window) for index in range(len(chunks))]
            # Every chunk's totals have the same columns: a window's rungs decide them.
            list(pool.map(chunk_totals, tasks) if pool else map(chunk_totals, tasks))
            for output in plan.outputs:
                if output.window.seconds == window:
                    values[output.name] = _finalize(plan, output.spec, ordered, known, rows)
    finally:
        if pool is not None:
            pool.shutdown()
    return values


class _Rung:
    """The tile partials of one resolution, prepared for the reads of every window."""

    def __init__(self, part: Mapping[str, np.ndarray], columns: Sequence[StateColumn]) -> None:
        self.positions = part["pos"]
        #: Integer sums (counts among them): prefix sums, so that a run is a difference.
        self.prefixes: dict[str, np.ndarray] = {}
        #: Float sums, min and max: ufunc, identity and values padded with the identity.
        self.reduced: dict[str, tuple[Any, Any, np.ndarray]] = {}
        for column in columns:
            values = part[column.name]
            if column.merge == "sum" and column.integer:
                self.prefixes[column.name] = np.concatenate(([0], np.cumsum(values)))
            else:
                ufunc = {"sum": np.add, "min": np.minimum, "max": np.maximum}[column.merge]
                identity = values.dtype.type(column.identity)
                self.reduced[column.name] = (ufunc, identity, np.append(values, identity))

    def reduce(self, first: np.ndarray, last: np.ndarray) -> dict[str, np.ndarray]:
        """Per read, each column reduced over the tiles with positions in ``[first, last]``
        (the identity where there is none)."""
        begin = np.searchsorted(self.positions, first, side="left")
        end = np.maximum(np.searchsorted(self.positions, last, side="right"), begin)
        out = {name: prefix[end] - prefix[begin] for name, prefix in self.prefixes.items()}
        if self.reduced:
            empty = end == begin
            # reduceat over interleaved (begin, end) pairs: row k of the result reduces
            # [begin_k, end_k); the padding makes end == len(tiles) a valid index.
            # reduceat also reduces each gap [end_k, begin_k+1), thrown away: reads in
            # order keep the gaps short, and an empty read's pair is (begin, begin), not
            # (0, 0), which made the next gap start at 0 and each empty read cost the
            # length of the table (18 s instead of 4 for a 1M-row population).
            # The last pair's gap runs to the end of the array: cut it after the last end
            # (a chunk of reads ends anywhere in the table). And reduceat copies the whole
            # array it is given: start it at the first begin (a chunk of reads covers a
            # slice of the table; from position 0 every call copied up to all of it, and
            # the copies' fresh pages were a fifth of the read's page faults).
            lowest = int(begin.min()) if len(begin) else 0
            limit = int(end.max()) + 1 if len(end) else 1
            indices = np.empty(2 * len(begin), np.int64)
            indices[0::2] = begin - lowest
            indices[1::2] = end - lowest
            for name, (ufunc, identity, padded) in self.reduced.items():
                found = ufunc.reduceat(padded[lowest:limit], indices)[0::2]
                out[name] = np.where(empty, identity, found)
        return out

    def add(
        self,
        totals: dict[str, np.ndarray],
        reduced: Mapping[str, np.ndarray],
        where: np.ndarray | None = None,
    ) -> None:
        """Merge ``reduced`` (of :meth:`reduce`) into ``totals``, only at ``where``."""
        for name, found in reduced.items():
            ufunc, identity = (np.add, 0) if name in self.prefixes else self.reduced[name][:2]
            merged = found if where is None else np.where(where, found, identity)
            current = totals.get(name)
            totals[name] = merged if current is None else ufunc(current, merged)


def _column(values: np.ndarray, valid: np.ndarray) -> pd.Series:
    """``values`` where ``valid``, null elsewhere, as typed as the nulls allow."""
    if valid.all():
        return pd.Series(values)
    if values.dtype.kind == "f":
        return pd.Series(np.where(valid, values, np.nan))
    if values.dtype.kind == "b":
        return pd.Series(pd.arrays.BooleanArray(values, ~valid))
    return pd.Series(pd.arrays.IntegerArray(values.astype(np.int64), ~valid))


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
