"""Online feature vectors combined across feature sets.

One vector per key row holds features of several feature sets, each read through its own
set's online path (:meth:`OnlineStore.read` for row-level sets,
:func:`~fs_dagster.engine.aggregates.read_aggregates` for aggregated ones) and put side by
side. :class:`OnlineReader` is that per-set path; the client's single-set reads, its
combined reads and the live :class:`~fs_dagster.engine.updates.CombinedUpdates` callback
all go through it, so they serve the same values.

Columns of a combined vector: the key columns (the union of the sets' keys, in order of
first appearance), then one column per requested feature named by its reference
(``"user-spend.sum_amount_1h"``), then per feature set ``"<set>.<timestamp column>"``:
the event time of the set's vector (row-level), or the read time its windows end at
(aggregated).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.definitions.references import (
    ResolvedFeatures,
    reference_name,
    resolve_references,
)
from fs_dagster.engine.aggregates import read_aggregates
from fs_dagster.stores.online.base import OnlineStore, OnlineTable, now_micros

__all__ = [
    "CombinedFeatures",
    "KeyRows",
    "KeysLike",
    "OnlineReader",
    "key_rows",
    "online_vectors",
]

#: One key value, a list of them, a dict or list of dicts, or a pandas DataFrame.
KeysLike = Any


@dataclass(frozen=True)
class CombinedFeatures:
    """Requested features resolved to their feature sets.

    Attributes:
        feature_sets: the sets involved, in the order of their first reference.
        resolved: the requested ``(set name, feature)`` pairs in request order.
    """

    feature_sets: tuple[FeatureSet, ...]
    resolved: ResolvedFeatures

    @classmethod
    def resolve(
        cls,
        references: object,
        feature_sets: Mapping[str, FeatureSet],
        feature_names: Callable[[FeatureSet], Sequence[str]],
    ) -> CombinedFeatures:
        """Resolve ``references`` against ``feature_sets`` (by name).

        ``feature_names`` gives the features of a set; it is called only for the sets
        referenced.

        Raises:
            FeatureReferenceError: a malformed reference, an unknown set or feature.
        """
        resolved = resolve_references(
            references, lambda name: feature_names(feature_sets[name]), feature_sets.keys()
        )
        return cls(tuple(feature_sets[n] for n in resolved.feature_sets), resolved)

    @property
    def key_columns(self) -> list[str]:
        """The union of the sets' key columns, in order of first appearance."""
        return list(dict.fromkeys(k for fs in self.feature_sets for k in fs.key))

    @property
    def time_columns(self) -> list[str]:
        """``"<set>.<timestamp column>"`` of each set, in set order."""
        return [reference_name(fs.name, fs.timestamp_column) for fs in self.feature_sets]

    @property
    def columns(self) -> list[str]:
        """Every column of a combined vector, in order (see the module docstring)."""
        return [*self.key_columns, *self.resolved.columns, *self.time_columns]

    def features_of(self, feature_set: FeatureSet) -> list[str]:
        """The requested features of ``feature_set``, in request order."""
        return self.resolved.of(feature_set.name)


@dataclass(frozen=True)
class KeyRows:
    """Key rows as given: one dict per row, and the columns every row has.

    Attributes:
        rows: one mapping per key row, in order.
        columns: the key columns present in every row.
        frame: the rows as given, when they came as a DataFrame (its column types are
            kept in results).
    """

    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    frame: pd.DataFrame | None = None

    def tuples(self, feature_set: FeatureSet) -> list[tuple[Any, ...]]:
        """The key of ``feature_set`` in each row, in order.

        Raises:
            ValueError: the rows lack some of the set's key columns.
        """
        names = list(feature_set.key)
        missing = [n for n in names if n not in self.columns]
        if missing:
            given = ", ".join(self.columns) or "none"
            raise ValueError(
                f"keys for '{feature_set.name}' lack columns {missing}: its key is "
                f"({', '.join(names)}); the keys given have columns ({given})"
            )
        return [tuple(row[n] for n in names) for row in self.rows]

    def key_frame(self, columns: Sequence[str]) -> pd.DataFrame:
        """The key ``columns`` of every row, as a DataFrame (index ``0..n-1``)."""
        if self.frame is not None:
            return self.frame[list(columns)].reset_index(drop=True)
        return pd.DataFrame.from_records(
            [[row[c] for c in columns] for row in self.rows], columns=list(columns)
        )


def key_rows(keys: KeysLike, columns: Sequence[str], owner: str) -> KeyRows:
    """Normalize the ways keys may be given into :class:`KeyRows`.

    Args:
        keys: a pandas DataFrame with key columns; a dict, or a list of dicts, of key
            columns; or, positionally in the order of ``columns``, one value or a list of
            values (``columns`` has one column) or tuples of values.
        columns: the key columns the caller needs, in order.
        owner: who the keys are for, as error messages name it (``"'user-spend'"``).

    Raises:
        ValueError: a positional key that does not fit ``columns``.
    """
    names = list(columns)
    if isinstance(keys, pd.DataFrame):
        present = tuple(n for n in names if n in keys.columns)
        frame = keys[list(present)].reset_index(drop=True)
        rows: list[dict[str, Any]] = frame.to_dict("records")  # type: ignore[assignment]
        return KeyRows(rows, present, frame)
    if isinstance(keys, Mapping):
        keys = [keys]
    if not isinstance(keys, Sequence) or isinstance(keys, str | bytes):
        keys = [keys]
    rows = []
    for key in keys:
        if isinstance(key, Mapping):
            rows.append({n: key[n] for n in names if n in key})
        elif isinstance(key, tuple):
            if len(key) != len(names):
                raise ValueError(
                    f"key {key!r} for {owner} is not a tuple of ({', '.join(names)}); "
                    "pass dicts of key columns or a DataFrame"
                )
            rows.append(dict(zip(names, key, strict=True)))
        elif len(names) == 1:
            rows.append({names[0]: key})
        else:
            raise ValueError(
                f"keys for {owner} have several columns ({', '.join(names)}); "
                "pass dicts of key columns, tuples in that order, or a DataFrame"
            )
    present = tuple(n for n in names if all(n in row for row in rows))
    return KeyRows(rows, present)


class OnlineReader:
    """The online read of one feature set, with the store's layouts cached.

    Args:
        store: the online store the ingestion writes.

    Example:
        >>> reader = OnlineReader(SqliteOnlineStore(".fs_dagster/online.db"))  # doctest: +SKIP
        >>> reader.read(user_spend, [("u1",)], at_micros=None)  # doctest: +SKIP
    """

    def __init__(self, store: OnlineStore) -> None:
        self.store = store
        self._layouts: dict[str, OnlineTable] = {}
        self._plans: dict[str, AggregationPlan] = {}

    def layout(self, feature_set: FeatureSet) -> OnlineTable:
        """The online table of a row-level set, as its ingestion recorded it.

        Raises:
            LookupError: the set has no online table yet.
        """
        layout = self._layouts.get(feature_set.name)
        if layout is None:
            layout = self.store.layout(feature_set.storage_name)
            if layout is None:
                raise LookupError(
                    f"feature set '{feature_set.name}' has no online table yet; "
                    "start its online ingestion first"
                )
            self._layouts[feature_set.name] = layout
        return layout

    def aggregation_plan(self, feature_set: FeatureSet) -> AggregationPlan:
        """The aggregation plan of an aggregated set, typed by its recorded tile layout.

        Raises:
            LookupError: the set has no tiles yet.
        """
        cached = self._plans.get(feature_set.name)
        if cached is not None and cached.feature_set is feature_set:
            return cached
        layout = self.store.layout(f"{feature_set.storage_name}__tiles")
        if layout is None:
            raise LookupError(
                f"feature set '{feature_set.name}' has no tiles yet; "
                "start its online ingestion first"
            )
        plan = AggregationPlan(
            feature_set=feature_set,
            key_kinds={c.name: c.kind for c in layout.keys},
            column_kinds={c.name: c.kind for c in layout.features},
        )
        self._plans[feature_set.name] = plan
        return plan

    def feature_names(self, feature_set: FeatureSet) -> list[str]:
        """The features an online read of ``feature_set`` returns, in order.

        Aggregated sets: from the definition. Row-level sets: from the recorded online
        layout when there is one (no Spark needed), else from the definition.
        """
        if feature_set.is_aggregated:
            return feature_set.feature_names
        try:
            return self.layout(feature_set).feature_names
        except LookupError:
            return feature_set.feature_names

    def read(
        self, feature_set: FeatureSet, keys: Sequence[tuple[Any, ...]], at_micros: int | None
    ) -> pd.DataFrame:
        """The vector of each key: key columns, timestamp column, features.

        Args:
            feature_set: the set to read.
            keys: key tuples in the order of ``feature_set.key``.
            at_micros: the read time of an aggregated set's windows (``None``: now).
                Row-level sets keep only their latest vector and refuse a read time.

        Raises:
            ValueError: ``at_micros`` for a row-level set, or older than the online tiles
                can answer.
            LookupError: the set was never ingested online.
        """
        if feature_set.is_aggregated:
            at = now_micros() if at_micros is None else at_micros
            return read_aggregates(self.store, self.aggregation_plan(feature_set), keys, at)
        if at_micros is not None:
            raise ValueError(
                f"'{feature_set.name}' is row-level: its online store keeps only the latest "
                "vector per key, so at= cannot be honoured; use get_offline_features with a "
                "population at that time for a past vector"
            )
        return self.store.read(self.layout(feature_set), keys)


def online_vectors(
    reader: OnlineReader, combined: CombinedFeatures, keys: KeyRows, at_micros: int | None
) -> pd.DataFrame:
    """The combined vector of each key row, one row per key row in order.

    Each feature set is read once for all rows (see :meth:`OnlineReader.read`); columns
    as in the module docstring. A key with no value in a set has nulls there (and
    ``count``/``sum`` 0 for empty windows), as a single-set read has.

    Raises:
        ValueError: a set's key columns are missing from ``keys``; a read time for a
            row-level set.
    """
    per_set = [(fs, keys.tuples(fs)) for fs in combined.feature_sets]
    columns: dict[str, pd.Series] = {}
    key_frame = keys.key_frame(combined.key_columns)
    for name in combined.key_columns:
        columns[name] = key_frame[name]
    times: dict[str, pd.Series] = {}
    values: dict[str, pd.Series] = {}
    for fs, tuples in per_set:
        frame = reader.read(fs, tuples, at_micros).reset_index(drop=True)
        for feature in combined.features_of(fs):
            values[reference_name(fs.name, feature)] = frame[feature]
        times[reference_name(fs.name, fs.timestamp_column)] = frame[fs.timestamp_column]
    for name in combined.resolved.columns:
        columns[name] = values[name]
    columns.update(times)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(keys.rows)))
