"""Brute-force reference for windowed aggregates: pandas over the raw events.

It applies the window semantics the README documents, written here again without the
library's tile code: window ``W`` read at ``t`` covers event times in ``[S, E)``, ``E`` the
end of the second holding ``t``, ``S = E - W`` rounded up to the window's edge
resolution; everything else is computed from the raw values with no tiles and no merging.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from fs_dagster.definitions.aggregations import AggregateSpec
from fs_dagster.definitions.feature_set import FeatureSet


def _edge_resolution(window_seconds: int) -> int:
    """README: the finest of 1 s, 1 min, 1 h, 1 day dividing W into at most 1,440 tiles."""
    for rung in (1, 60, 3600, 86400):
        if window_seconds % rung == 0 and window_seconds // rung <= 1440:
            return rung
    for rung in (86400, 3600, 60, 1):
        if window_seconds % rung == 0:
            return rung
    return 1


def window_bounds(window_seconds: int, at_micros: int) -> tuple[int, int]:
    """``(S, E)`` in seconds for window ``W`` read at ``at_micros`` (README semantics)."""
    end = at_micros // 1_000_000 + 1
    rung = _edge_resolution(window_seconds)
    start = end - window_seconds
    return (start + rung - 1) // rung * rung, end


def _newest_first(item: tuple[int, Any]) -> tuple[Any, ...]:
    return (-item[0], repr(item[1]))


def oracle_value(spec: AggregateSpec, rows: pd.DataFrame) -> Any:
    """The aggregate of ``rows`` (columns ``micros`` and the spec's column)."""
    present = rows[rows[spec.column].notna()]
    values = list(present[spec.column])
    f = spec.function
    if f == "sum":
        return sum(values) if values else 0
    if f == "count":
        return len(values)
    if not values:
        return None
    if f == "avg":
        return math.fsum(values) / len(values)
    if f == "min":
        return min(values)
    if f == "max":
        return max(values)
    if f == "boolean_or":
        return any(values)
    if f == "boolean_and":
        return all(values)
    if f in ("sample_variance", "sample_stdev", "population_variance", "population_stdev"):
        series = pd.Series(values, dtype="float64")
        ddof = 1 if f.startswith("sample") else 0
        if len(values) <= ddof:
            return None
        variance = float(series.var(ddof=ddof))
        return math.sqrt(variance) if f.endswith("stdev") else variance
    pairs = list(zip(present["micros"], values, strict=True))
    if f == "last_n":
        return [v for _, v in sorted(pairs, key=_newest_first)[: spec.n]]
    if f == "last_distinct_n":
        latest: dict[Any, int] = {}
        for ts, v in pairs:
            latest[v] = max(latest.get(v, ts), ts)
        ordered = sorted(((ts, v) for v, ts in latest.items()), key=_newest_first)
        return [v for _, v in ordered[: spec.n]]
    if f == "percentile":
        assert spec.p is not None
        ordered_values = sorted(values)
        return ordered_values[math.floor(spec.p * (len(ordered_values) - 1))]
    raise ValueError(f)


def oracle(
    feature_set: FeatureSet, events: pd.DataFrame, key: str, at_micros: int
) -> dict[str, Any]:
    """Every feature of ``feature_set`` for ``key`` at ``at_micros``.

    ``events`` has the key column, ``micros`` (event time) and the value columns.
    """
    mine = events[events[feature_set.key[0]] == key]
    result: dict[str, Any] = {}
    for spec in feature_set.aggregations:
        for window in feature_set.windows:
            start, end = window_bounds(window.seconds, at_micros)
            rows = mine[(mine["micros"] >= start * 1_000_000) & (mine["micros"] < end * 1_000_000)]
            result[spec.feature_name(window)] = oracle_value(spec, rows)
    return result


def _missing(value: Any) -> bool:
    """Null as a read gives it: None, NaN (floats), pd.NA (nullable integers, booleans) or
    NaT (timestamps)."""
    return (
        value is None
        or value is pd.NA
        or value is pd.NaT
        or (isinstance(value, float) and math.isnan(value))
    )


def assert_matches(
    feature_set: FeatureSet, got: Mapping[Any, Any], want: dict[str, Any], where: str
) -> None:
    """Compare feature values: floats within 1e-9 relative, percentiles within 1%."""
    for spec in feature_set.aggregations:
        for window in feature_set.windows:
            name = spec.feature_name(window)
            g, w = got[name], want[name]
            label = f"{where} {name}: got {g!r}, want {w!r}"
            if w is None:
                assert _missing(g), label
                continue
            assert not _missing(g), label
            if spec.function == "percentile":
                assert abs(g - w) <= 0.01 * abs(w) + 1e-12, label
            elif isinstance(w, bool) or spec.function in ("boolean_or", "boolean_and"):
                assert bool(g) == w, label
            elif isinstance(w, list):
                assert list(g) == w, label
            elif isinstance(w, float) or isinstance(g, float):
                assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9), label
            else:
                assert g == w, label


def assert_rows_match(
    feature_set: FeatureSet, values: pd.DataFrame, events: pd.DataFrame, at_micros: int, where: str
) -> None:
    """Every key's row of ``values`` (as read at ``at_micros``) against the oracle."""
    key = feature_set.key[0]
    for record in values.to_dict("records"):
        assert_matches(
            feature_set,
            record,
            oracle(feature_set, events, record[key], at_micros),
            f"{where} {record[key]}",
        )
