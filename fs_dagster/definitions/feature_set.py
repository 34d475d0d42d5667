"""The streaming feature set: its declaration, validation and decorators.

Example:
    >>> import fs_dagster as fs
    >>> @fs.streaming.feature_set(
    ...     name="user-transactions", key="user_id", data_sources=["transactions"],
    ...     timestamp_column_name="ts", offline_scheduling_policy="*/30 * * * *",
    ...     online_trigger_interval=5,
    ... )
    ... @fs.streaming.metadata(owner="risk-team", description="Spend per user")
    ... def user_transactions():
    ...     return fs.SparkSqlTransformation("SELECT user_id, amount, ts FROM transactions")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import Enum
from typing import Any

from fs_dagster.definitions.aggregations import AggregateSpec, Window, parse_window
from fs_dagster.definitions.cron import cron_problem
from fs_dagster.definitions.durations import parse_duration
from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.names import feature_set_name_problem, identifier_problem, storage_name
from fs_dagster.definitions.sinks import AuxiliarySink, check_sinks
from fs_dagster.definitions.sources import DataSource, FileSource, KafkaSource, default_sources
from fs_dagster.definitions.transformations import (
    SparkSqlTransformation,
    Transformation,
    UdfTransformation,
)

__all__ = [
    "ClusterTemplate",
    "ExecutionSpecification",
    "FeatureSet",
    "FeatureSetMetadata",
]

MAX_TRIGGER_INTERVAL_SECONDS = 24 * 3600
DEFAULT_ALLOWED_LATENESS = timedelta(minutes=10)


class ClusterTemplate(Enum):
    """Sizes of the Spark resources a feature set's runs ask for on a cluster.

    Each size maps to executor settings (see :meth:`spark_conf`); with a local master
    they are ignored, because a local Spark has only the driver.
    """

    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"
    XLARGE = "xlarge"

    def spark_conf(self) -> dict[str, str]:
        """The Spark resource settings this size stands for."""
        cores, memory, instances = {
            "small": (2, "4g", 1),
            "medium": (4, "8g", 2),
            "large": (4, "16g", 4),
            "xlarge": (8, "32g", 8),
        }[self.value]
        return {
            "spark.executor.cores": str(cores),
            "spark.executor.memory": memory,
            "spark.executor.instances": str(instances),
            "spark.driver.memory": "2g" if self is ClusterTemplate.SMALL else "4g",
        }


@dataclass(frozen=True)
class FeatureSetMetadata:
    """Who owns a feature set and what it is; shown in the Dagster UI."""

    owner: str | None = None
    description: str | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class ExecutionSpecification:
    """Cluster sizes for the online (streaming) and offline (batch) runs."""

    online_cluster_template: ClusterTemplate = ClusterTemplate.SMALL
    offline_cluster_template: ClusterTemplate = ClusterTemplate.SMALL


@dataclass(frozen=True)
class FeatureSet:
    """A validated streaming feature set.

    Build one with :func:`fs_dagster.streaming.feature_set`. All fields are checked when
    it is created; checks that need Spark (output columns, UDF schemas) run in
    :func:`fs_dagster.validate` and at the start of every run.

    Attributes:
        name: letters, digits and hyphens, starting with a letter, at most 40 characters.
        key: key column names of the output.
        data_sources: the sources the transformation reads.
        timestamp_column: the output's event-time column.
        transformation: what turns source rows into feature rows.
        offline_scheduling_policy: cron of the offline ingestion.
        online_trigger_interval: seconds between online micro-batches (0: as fast as
            possible).
        online_ttl: how long after its event time an online value is still served.
        auxiliary_sinks: further sinks the ingestion writes to.
        metadata: owner, description, display name.
        execution_specification: cluster sizes.
        windows: parsed sliding windows of an aggregated feature set (declared order).
        allowed_lateness: how far behind the newest event time an event may arrive and
            still update its windows (aggregated feature sets).
    """

    name: str
    key: tuple[str, ...]
    data_sources: tuple[DataSource, ...]
    timestamp_column: str
    transformation: Transformation
    offline_scheduling_policy: str = "*/30 * * * *"
    online_trigger_interval: float = 5
    online_ttl: timedelta | None = None
    auxiliary_sinks: tuple[AuxiliarySink, ...] = ()
    metadata: FeatureSetMetadata = field(default_factory=FeatureSetMetadata)
    execution_specification: ExecutionSpecification = field(default_factory=ExecutionSpecification)
    windows: tuple[Window, ...] = ()
    allowed_lateness: timedelta = DEFAULT_ALLOWED_LATENESS

    @property
    def aggregations(self) -> tuple[AggregateSpec, ...]:
        """The declared aggregates (empty for a row-level feature set)."""
        return self.transformation.aggregations

    @property
    def is_aggregated(self) -> bool:
        """Whether this feature set computes windowed aggregates."""
        return bool(self.aggregations)

    @property
    def storage_name(self) -> str:
        """Name for this feature set's tables and directories."""
        return storage_name(self.name)

    @property
    def feature_names(self) -> list[str]:
        """Names of the features, in output order (key and timestamp excluded).

        An aggregated feature set lists ``<agg>_<column>_<window>`` (or
        ``<alias>_<window>``) for each aggregate in declared order, each window in
        declared order. For a row-level Spark SQL transformation the output columns are
        only known to Spark's analyzer, so the first call analyses the SQL against the
        sources' schemas (no data is read) in the active Spark session or a local one.
        """
        if self.is_aggregated:
            return aggregate_feature_names(self.aggregations, self.windows)
        from fs_dagster.engine.analysis import feature_columns

        return feature_columns(self)

    @property
    def source(self) -> DataSource:
        """The single source, for transformations that read one."""
        return self.data_sources[0]


def aggregate_feature_names(
    aggregations: tuple[AggregateSpec, ...], windows: tuple[Window, ...]
) -> list[str]:
    """Feature names of aggregates over windows, aggregates outer, windows inner."""
    return [spec.feature_name(window) for spec in aggregations for window in windows]


def _check_aggregations(name: str, transformation: Transformation) -> tuple[Window, ...]:
    if not transformation.is_aggregated:
        return ()
    if not transformation.aggregations:
        raise _error(name, "transformation", "by_windows() needs at least one .aggregate(...)")
    if not transformation.windows:
        raise _error(
            name, "transformation", "aggregates need windows: add .by_windows('1m', '1h', ...)"
        )
    windows: list[Window] = []
    for text in transformation.windows:
        try:
            windows.append(parse_window(text))
        except ValueError as exc:
            raise _error(name, "windows", str(exc)) from None
    lengths = [w.seconds for w in windows]
    if len(set(lengths)) != len(lengths):
        raise _error(name, "windows", f"a window is listed twice: {list(transformation.windows)}")
    names = aggregate_feature_names(transformation.aggregations, tuple(windows))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _error(
            name,
            "transformation",
            f"feature names are not unique: {', '.join(duplicates)}; give one aggregate "
            "another .alias(...)",
        )
    return tuple(windows)


def _error(name: str | None, parameter: str, reason: str) -> FeatureSetDefinitionError:
    return FeatureSetDefinitionError(name, parameter, reason)


def _resolve_sources(name: str, data_sources: object) -> tuple[DataSource, ...]:
    if isinstance(data_sources, str | KafkaSource | FileSource):
        data_sources = [data_sources]
    if not isinstance(data_sources, Sequence) or not data_sources:
        raise _error(name, "data_sources", "expected a non-empty list of source names")
    resolved: list[DataSource] = []
    for entry in data_sources:
        if isinstance(entry, KafkaSource | FileSource):
            resolved.append(entry)
            continue
        source = default_sources.get(entry) if isinstance(entry, str) else None
        if source is None:
            known = ", ".join(default_sources.names()) or "none declared yet"
            raise _error(name, "data_sources", f"unknown source {entry!r} (known: {known})")
        resolved.append(source)
    names = [s.name for s in resolved]
    if len(set(names)) != len(names):
        raise _error(name, "data_sources", f"a source is listed twice: {names}")
    return tuple(resolved)


def _check_transformation(
    name: str, transformation: object, sources: tuple[DataSource, ...]
) -> None:
    if isinstance(transformation, SparkSqlTransformation):
        if not isinstance(transformation.sql, str) or not transformation.sql.strip():
            raise _error(name, "transformation", "the SQL of SparkSqlTransformation is empty")
        udf_names = [f.name for f in transformation.functions]
        if len(set(udf_names)) != len(udf_names):
            raise _error(name, "transformation", f"two functions share a name: {udf_names}")
        return
    if isinstance(transformation, UdfTransformation):
        if len(sources) != 1:
            raise _error(
                name,
                "data_sources",
                f"UdfTransformation reads exactly one source; got {len(sources)}",
            )
        return
    raise _error(
        name,
        "transformation",
        "the decorated function must return a SparkSqlTransformation or UdfTransformation, "
        f"got {type(transformation).__name__}",
    )


def build_feature_set(
    function: Callable[[], Transformation],
    *,
    name: str | None,
    key: str | Sequence[str],
    data_sources: Sequence[str | DataSource],
    timestamp_column_name: str,
    offline_scheduling_policy: str,
    online_trigger_interval: float,
    online_ttl: str | int | float | timedelta | None,
    auxiliary_sinks: Sequence[Any],
    allowed_lateness: str | int | float | timedelta = DEFAULT_ALLOWED_LATENESS,
) -> FeatureSet:
    """Validate every parameter and build the :class:`FeatureSet` (see ``streaming``)."""
    fs_name: object = name
    if name is None:
        # Python names cannot hold hyphens; feature set names cannot hold underscores.
        fs_name = str(getattr(function, "__name__", "")).replace("_", "-")
    problem = feature_set_name_problem(fs_name)
    if problem:
        raise _error(fs_name if isinstance(fs_name, str) else None, "name", problem)
    assert isinstance(fs_name, str)

    keys = (key,) if isinstance(key, str) else tuple(key) if isinstance(key, Sequence) else ()
    if not keys:
        raise _error(fs_name, "key", "expected a column name or a non-empty list of them")
    for column in keys:
        problem = identifier_problem(column, "key column")
        if problem:
            raise _error(fs_name, "key", problem)
    if len(set(keys)) != len(keys):
        raise _error(fs_name, "key", f"a key column is listed twice: {list(keys)}")

    problem = identifier_problem(timestamp_column_name, "timestamp column")
    if problem:
        raise _error(fs_name, "timestamp_column_name", problem)
    if timestamp_column_name in keys:
        raise _error(
            fs_name, "timestamp_column_name", "the timestamp column cannot be a key column"
        )

    problem = cron_problem(offline_scheduling_policy)
    if problem:
        raise _error(fs_name, "offline_scheduling_policy", problem)

    if (
        isinstance(online_trigger_interval, bool)
        or not isinstance(online_trigger_interval, int | float)
        or not math.isfinite(online_trigger_interval)
        or not 0 <= online_trigger_interval <= MAX_TRIGGER_INTERVAL_SECONDS
    ):
        raise _error(
            fs_name,
            "online_trigger_interval",
            f"{online_trigger_interval!r} is not a number of seconds from 0 to "
            f"{MAX_TRIGGER_INTERVAL_SECONDS}",
        )

    ttl: timedelta | None = None
    if online_ttl is not None:
        try:
            ttl = parse_duration(online_ttl)
        except ValueError as exc:
            raise _error(fs_name, "online_ttl", str(exc)) from None
        if ttl <= timedelta(0):
            raise _error(fs_name, "online_ttl", "must be longer than zero (or None for no TTL)")

    sources = _resolve_sources(fs_name, data_sources)
    try:
        transformation = function()
    except FeatureSetDefinitionError as exc:
        raise FeatureSetDefinitionError(fs_name, exc.parameter, exc.reason) from None
    _check_transformation(fs_name, transformation, sources)
    windows = _check_aggregations(fs_name, transformation)
    try:
        lateness = parse_duration(allowed_lateness)
    except ValueError as exc:
        raise _error(fs_name, "allowed_lateness", str(exc)) from None
    if lateness < timedelta(0):
        raise _error(fs_name, "allowed_lateness", "must not be negative")

    sinks = check_sinks(fs_name, auxiliary_sinks)

    return FeatureSet(
        name=fs_name,
        key=keys,
        data_sources=sources,
        timestamp_column=timestamp_column_name,
        transformation=transformation,
        offline_scheduling_policy=offline_scheduling_policy,
        online_trigger_interval=float(online_trigger_interval),
        online_ttl=ttl,
        auxiliary_sinks=sinks,
        metadata=getattr(function, "__fs_metadata__", FeatureSetMetadata()),
        execution_specification=getattr(
            function, "__fs_execution_specification__", ExecutionSpecification()
        ),
        windows=windows,
        allowed_lateness=lateness,
    )


def with_metadata(feature_set: FeatureSet, metadata: FeatureSetMetadata) -> FeatureSet:
    """A copy of ``feature_set`` with other metadata (decorators applied in either order)."""
    return replace(feature_set, metadata=metadata)


def with_execution_specification(
    feature_set: FeatureSet, specification: ExecutionSpecification
) -> FeatureSet:
    """A copy of ``feature_set`` with another execution specification."""
    return replace(feature_set, execution_specification=specification)
