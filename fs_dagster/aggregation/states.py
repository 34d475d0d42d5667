"""Mergeable partial aggregate states and the feature values they finalize to.

A tile's state is a dict from *state key* (``"moments:amount"``) to a small JSON-able
value. Several aggregates share one state: ``avg``, the variances and the standard
deviations of a column all read ``moments:<column>``. Merging is associative and
commutative, so tiles merge in any order, and merging never subtracts: ``min``/``max``
are merged with ``min``/``max``, never derived by removing values.

**Variance.** ``moments`` keeps ``(n, pivot, d, m2)``: the count, a pivot value taken
from the data (the tile's minimum), the mean's offset from the pivot, and the sum of
squared deviations from the mean. Merging shifts every part to a common pivot first
(Chan et al.'s parallel algorithm on shifted data): offsets between pivots are exact for
nearby values, so a column of values around 1e9 with a spread of 1 keeps its variance
to full precision, where ``E[x²] - E[x]²`` loses every digit.

**Percentiles** use a DDSketch (the ``ddsketch`` library) with 1% relative accuracy:
the value returned for quantile ``p`` is within 1% of the exact ``p`` quantile of the
window's values. Its bucket counts merge exactly, so online and offline agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ddsketch import DDSketch

from fs_dagster.definitions.aggregations import AggregateSpec

__all__ = [
    "SKETCH_RELATIVE_ACCURACY",
    "StateSpec",
    "finalize",
    "merge_distinct",
    "merge_last",
    "merge_states",
    "sketch_key",
    "state_specs",
]

SKETCH_RELATIVE_ACCURACY = 0.01
_SKETCH = DDSketch(SKETCH_RELATIVE_ACCURACY)
_MAPPING = _SKETCH._mapping

State = dict[str, Any]


@dataclass(frozen=True)
class StateSpec:
    """One state kept per tile: its kind, column and (for lists) capacity."""

    kind: str  # sum, count, moments, min, max, bool, last, distinct, sketch
    column: str
    capacity: int = 0

    @cached_property
    def key(self) -> str:
        """The state's key in a tile state dict."""
        return f"{self.kind}:{self.column}"


_KIND = {
    "sum": "sum",
    "count": "count",
    "avg": "moments",
    "sample_variance": "moments",
    "sample_stdev": "moments",
    "population_variance": "moments",
    "population_stdev": "moments",
    "min": "min",
    "max": "max",
    "boolean_or": "bool",
    "boolean_and": "bool",
    "last_n": "last",
    "last_distinct_n": "distinct",
    "percentile": "sketch",
}


def state_kind(spec: AggregateSpec) -> str:
    """The state kind an aggregate reads."""
    return _KIND[spec.function]


def state_specs(aggregations: Iterable[AggregateSpec]) -> list[StateSpec]:
    """The states tiles must keep for these aggregates (shared where possible)."""
    capacities: dict[tuple[str, str], int] = {}
    for spec in aggregations:
        key = (state_kind(spec), spec.column)
        capacities[key] = max(capacities.get(key, 0), spec.n or 0)
    return [StateSpec(kind, column, cap) for (kind, column), cap in capacities.items()]


def sketch_key(value: float) -> int:
    """The DDSketch bucket of a positive value (negatives use ``-sketch_key(-value)``)."""
    return int(_MAPPING.key(value))


def _merge_moments(a: list[float], b: list[float]) -> list[float]:
    n_a, pivot_a, d_a, m2_a = a
    n_b, pivot_b, d_b, m2_b = b
    if n_a == 0:
        return list(b)
    if n_b == 0:
        return list(a)
    pivot = min(pivot_a, pivot_b)
    # Offsets of each part's mean from the common pivot; pivot differences are exact
    # for nearby values (Sterbenz), so the small spread survives.
    delta_a = (pivot_a - pivot) + d_a
    delta_b = (pivot_b - pivot) + d_b
    n = n_a + n_b
    shift = delta_b - delta_a
    d = delta_a + shift * n_b / n
    m2 = m2_a + m2_b + shift * shift * n_a * n_b / n
    return [n, pivot, d, m2]


def merge_last(a: list[list[Any]], b: list[list[Any]], capacity: int) -> list[list[Any]]:
    merged = sorted([*a, *b], key=_newest_first)
    return merged[:capacity]


def _newest_first(entry: list[Any]) -> tuple[Any, ...]:
    # Newest event time first; equal times ordered by value, so merges are deterministic.
    return (-entry[0], repr(entry[1]))


def merge_distinct(a: list[list[Any]], b: list[list[Any]], capacity: int) -> list[list[Any]]:
    latest: dict[Any, int] = {}
    for ts, value in [*a, *b]:
        hashable = tuple(value) if isinstance(value, list) else value
        if hashable not in latest or ts > latest[hashable]:
            latest[hashable] = ts
    entries = [[ts, list(v) if isinstance(v, tuple) else v] for v, ts in latest.items()]
    return sorted(entries, key=_newest_first)[:capacity]


def _merge_sketch(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"z": a.get("z", 0) + b.get("z", 0)}
    for side in ("p", "n"):
        bins: dict[str, int] = dict(a.get(side, {}))
        for key, count in b.get(side, {}).items():
            bins[key] = bins.get(key, 0) + count
        result[side] = bins
    return result


def merge_value(spec: StateSpec, a: Any, b: Any) -> Any:
    """Merge two values of one state (``None`` is the empty state)."""
    if a is None:
        return b
    if b is None:
        return a
    kind = spec.kind
    if kind in ("sum", "count"):
        return a + b
    if kind == "min":
        return min(a, b)
    if kind == "max":
        return max(a, b)
    if kind == "bool":
        return [a[0] + b[0], a[1] + b[1]]
    if kind == "moments":
        return _merge_moments(a, b)
    if kind == "last":
        return merge_last(a, b, spec.capacity)
    if kind == "distinct":
        return merge_distinct(a, b, spec.capacity)
    if kind == "sketch":
        return _merge_sketch(a, b)
    raise ValueError(f"unknown state kind {kind}")


def merge_states(specs: Iterable[StateSpec], states: Iterable[State | None]) -> State:
    """Merge tile states into one (the empty merge is ``{}``)."""
    keyed = [(spec.key, spec) for spec in specs]
    result: State = {}
    for state in states:
        if not state:
            continue
        for key, spec in keyed:
            value = state.get(key)
            if value is not None:
                current = result.get(key)
                result[key] = value if current is None else merge_value(spec, current, value)
    return result


def _quantile(sketch: Mapping[str, Any], p: float) -> float | None:
    zero = int(sketch.get("z", 0))
    positive = {int(k): int(c) for k, c in sketch.get("p", {}).items()}
    negative = {int(k): int(c) for k, c in sketch.get("n", {}).items()}
    count = zero + sum(positive.values()) + sum(negative.values())
    if count == 0:
        return None
    rank = p * (count - 1)
    seen = 0.0
    # Same walk as DDSketch.get_quantile_value: negatives (largest magnitude first),
    # then zeros, then positives, each bucket read at its representative value.
    for key in sorted(negative, reverse=True):
        seen += negative[key]
        if seen > rank:
            return -float(_MAPPING.value(key))
    seen += zero
    if seen > rank:
        return 0.0
    for key in sorted(positive):
        seen += positive[key]
        if seen > rank:
            return float(_MAPPING.value(key))
    return float(_MAPPING.value(max(positive))) if positive else 0.0


def finalize(spec: AggregateSpec, state: State) -> Any:
    """The feature value of ``spec`` from a window's merged state.

    Empty windows give 0 for ``sum`` and ``count`` and ``None`` for everything else.
    """
    value = state.get(f"{state_kind(spec)}:{spec.column}")
    function = spec.function
    if function in ("sum", "count"):
        return 0 if value is None else value
    if value is None:
        return None
    if function in ("min", "max"):
        return value
    if function == "boolean_or":
        return value[0] > 0 if value[1] else None
    if function == "boolean_and":
        return value[0] == value[1] if value[1] else None
    if function in ("last_n", "last_distinct_n"):
        values = [entry[1] for entry in value[: spec.n]]
        return values or None
    if function == "percentile":
        assert spec.p is not None
        return _quantile(value, spec.p)
    n, pivot, d, m2 = value
    if n == 0:
        return None
    if function == "avg":
        return pivot + d
    if function in ("population_variance", "population_stdev"):
        variance = max(m2, 0.0) / n
    elif n < 2:
        return None
    else:
        variance = max(m2, 0.0) / (n - 1)
    return math.sqrt(variance) if function.endswith("stdev") else variance


def partial_from_values(spec: StateSpec, values: list[tuple[int, Any]]) -> Any:
    """A state built directly from ``(event_micros, value)`` pairs (nulls skipped).

    The reference the Spark partials are checked against, and the oracle's building
    block in tests; ingestion computes the same partials in Spark.
    """
    present = [(ts, v) for ts, v in values if v is not None]
    if spec.kind == "sum":
        return sum(v for _, v in present) if present else None
    if spec.kind == "count":
        return len(present)
    if not present:
        return None
    just = [v for _, v in present]
    if spec.kind == "min":
        return min(just)
    if spec.kind == "max":
        return max(just)
    if spec.kind == "bool":
        return [sum(1 for v in just if v), len(just)]
    if spec.kind == "moments":
        pivot = min(just)
        offsets = [v - pivot for v in just]
        d = sum(offsets) / len(offsets)
        m2 = sum((o - d) ** 2 for o in offsets)
        return [len(just), pivot, d, m2]
    if spec.kind == "last":
        return merge_last([[ts, v] for ts, v in present], [], spec.capacity)
    if spec.kind == "distinct":
        return merge_distinct([[ts, v] for ts, v in present], [], spec.capacity)
    if spec.kind == "sketch":
        return sketch_from_values(just)
    raise ValueError(f"unknown state kind {spec.kind}")


def sketch_from_values(values: Iterable[float]) -> dict[str, Any]:
    """Sketch bins of raw values."""
    result: dict[str, Any] = {"z": 0, "p": {}, "n": {}}
    for value in values:
        if value > _MAPPING.min_possible:
            key = str(sketch_key(value))
            result["p"][key] = result["p"].get(key, 0) + 1
        elif value < -_MAPPING.min_possible:
            key = str(sketch_key(-value))
            result["n"][key] = result["n"].get(key, 0) + 1
        else:
            result["z"] += 1
    return result
