"""The feature set: its declaration, validation and the builder the decorators share.

A streaming feature set (``fs_dagster.streaming``) reads stream sources; a batch feature
set (``fs_dagster.batch``) reads batch sources. Both are one :class:`FeatureSet`, built and
checked by :func:`build_feature_set`.

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
from datetime import datetime, timedelta
from typing import Any, Literal

from fs_dagster.definitions.aggregations import AggregateSpec, Window, parse_window
from fs_dagster.definitions.backfill import (
    BackfillDeclaration,
    BackfillSpec,
    resolve_partitions_start,
)
from fs_dagster.definitions.cron import cron_problem
from fs_dagster.definitions.durations import parse_duration
from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.execution import ClusterTemplate, ExecutionSpecification
from fs_dagster.definitions.names import feature_set_name_problem, identifier_problem, storage_name
from fs_dagster.definitions.sinks import AuxiliarySink, check_sinks
from fs_dagster.definitions.sources import (
    AnySource,
    BatchSource,
    DataSource,
    FileSource,
    KafkaSource,
    check_distinct_sources,
    find_source,
)
from fs_dagster.definitions.transformations import (
    SparkSqlTransformation,
    Transformation,
    UdfTransformation,
    sql_transformation_problem,
)

__all__ = [
    "BATCH_BACKFILL_ATTRIBUTE",
    "EXECUTION_SPECIFICATION_ATTRIBUTE",
    "METADATA_ATTRIBUTE",
    "STREAMING_BACKFILL_ATTRIBUTE",
    "ClusterTemplate",
    "ExecutionSpecification",
    "FeatureSet",
    "FeatureSetKind",
    "FeatureSetMetadata",
    "build_feature_set",
    "with_backfill",
    "with_execution_specification",
    "with_metadata",
    "with_partitions_start",
]

MAX_TRIGGER_INTERVAL_SECONDS = 24 * 3600
DEFAULT_ALLOWED_LATENESS = timedelta(minutes=10)

FeatureSetKind = Literal["streaming", "batch"]

# Where a decorator below the feature set decorator leaves its value on the function,
# for build_feature_set to pick up.
METADATA_ATTRIBUTE = "__fs_metadata__"
EXECUTION_SPECIFICATION_ATTRIBUTE = "__fs_execution_specification__"
STREAMING_BACKFILL_ATTRIBUTE = "__fs_streaming_backfill__"
BATCH_BACKFILL_ATTRIBUTE = "__fs_batch_backfill__"


@dataclass(frozen=True)
class FeatureSetMetadata:
    """Who owns a feature set and what it is; shown in the Dagster UI."""

    owner: str | None = None
    description: str | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class FeatureSet:
    """A validated streaming or batch feature set.

    Build one with :func:`fs_dagster.streaming.feature_set` or
    :func:`fs_dagster.batch.feature_set`. All fields are checked when it is created;
    checks that need Spark (output columns, UDF schemas) run in :func:`fs_dagster.validate`
    and at the start of every run.

    Attributes:
        name: letters, digits, hyphens and underscores, starting with a letter, at most 40
            characters.
        key: key column names of the output.
        data_sources: the stream sources a streaming feature set reads (empty for a batch
            feature set).
        timestamp_column: the output's event-time column.
        transformation: what turns source rows into feature rows.
        offline_scheduling_policy: cron of the offline ingestion (for a batch feature set,
            its ``scheduling_policy``).
        online_trigger_interval: seconds between online micro-batches (0: as fast as
            possible); streaming feature sets only.
        online_ttl: how long after its event time an online value is still served.
        auxiliary_sinks: further sinks the ingestion writes to.
        metadata: owner, description, display name.
        execution_specification: cluster sizes.
        windows: parsed sliding windows of an aggregated feature set (declared order).
        allowed_lateness: how far behind the newest event time an event may arrive and
            still update its windows (aggregated streaming feature sets).
        kind: ``"streaming"`` or ``"batch"``.
        batch_sources: the batch sources a batch feature set reads (empty for a streaming
            feature set).
        backfill: a streaming feature set's backfill from batch sources, if declared.
        partitions_start: where a batch feature set's daily partitions start (tz-aware
            UTC midnight); ``None`` for a streaming feature set.
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
    kind: FeatureSetKind = "streaming"
    batch_sources: tuple[BatchSource, ...] = ()
    backfill: BackfillSpec | None = None
    partitions_start: datetime | None = None

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
        """The single stream source, for transformations that read one (streaming only)."""
        if not self.data_sources:
            raise ValueError(
                f"batch feature set '{self.name}' reads no stream source; see batch_sources"
            )
        return self.data_sources[0]

    @property
    def sources(self) -> tuple[AnySource, ...]:
        """Every source the transformation reads: stream sources, or a batch set's."""
        return (*self.data_sources, *self.batch_sources)


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


def _resolve_sources(name: str, data_sources: object, *, batch: bool) -> tuple[AnySource, ...]:
    if isinstance(data_sources, str | KafkaSource | FileSource | BatchSource):
        data_sources = [data_sources]
    if not isinstance(data_sources, Sequence) or not data_sources:
        raise _error(name, "data_sources", "expected a non-empty list of source names")
    resolved = tuple(
        find_source(name, "data_sources", entry, batch=batch) for entry in data_sources
    )
    check_distinct_sources(name, "data_sources", resolved)
    return resolved


def _stream_sources(name: str, sources: tuple[AnySource, ...]) -> tuple[DataSource, ...]:
    for source in sources:
        if isinstance(source, BatchSource):
            raise _error(
                name,
                "data_sources",
                "a streaming feature set reads a stream source (KafkaSource or FileSource); "
                f"'{source.name}' is a batch source — use it in "
                "streaming.backfill(data_sources=...) or a batch feature set",
            )
    return tuple(s for s in sources if not isinstance(s, BatchSource))


def _batch_sources(name: str, sources: tuple[AnySource, ...]) -> tuple[BatchSource, ...]:
    for source in sources:
        if not isinstance(source, BatchSource):
            raise _error(
                name,
                "data_sources",
                "a batch feature set reads batch sources (BatchSource); "
                f"'{source.name}' is a stream source — use it in a streaming feature set",
            )
    return tuple(s for s in sources if isinstance(s, BatchSource))


def _check_transformation(name: str, transformation: object, source_count: int) -> None:
    if isinstance(transformation, SparkSqlTransformation):
        problem = sql_transformation_problem(transformation)
        if problem:
            raise _error(name, "transformation", problem)
        return
    if isinstance(transformation, UdfTransformation):
        if source_count != 1:
            raise _error(
                name,
                "data_sources",
                f"UdfTransformation reads exactly one source; got {source_count}",
            )
        return
    raise _error(
        name,
        "transformation",
        "the decorated function must return a SparkSqlTransformation or UdfTransformation, "
        f"got {type(transformation).__name__}",
    )


def _check_backfill_kind(name: str, kind: FeatureSetKind, declared: FeatureSetKind) -> None:
    if kind == declared:
        return
    if kind == "batch":
        raise _error(
            name,
            "backfill",
            "@streaming.backfill(...) declares a streaming feature set's backfill; a batch "
            "feature set takes @batch.backfill(start_date=...)",
        )
    raise _error(
        name,
        "backfill",
        "@batch.backfill(start_date=...) sets where a batch feature set's partitions start; "
        "a streaming feature set takes @streaming.backfill(start_date=..., end_date=..., "
        "data_sources=..., backfill_transformation=...)",
    )


def build_feature_set(
    function: Callable[[], Transformation],
    *,
    kind: FeatureSetKind = "streaming",
    name: str | None,
    key: str | Sequence[str],
    data_sources: Sequence[str | AnySource],
    timestamp_column_name: str,
    offline_scheduling_policy: str,
    online_trigger_interval: float = 5,
    online_ttl: str | int | float | timedelta | None,
    auxiliary_sinks: Sequence[Any] = (),
    allowed_lateness: str | int | float | timedelta = DEFAULT_ALLOWED_LATENESS,
) -> FeatureSet:
    """Validate every parameter and build the :class:`FeatureSet`.

    Shared by ``streaming.feature_set`` and ``batch.feature_set``; ``kind`` chooses which
    sources ``data_sources`` may name and which backfill decorator applies. The values of
    decorators applied below the feature set decorator are read from ``function``.
    """
    fs_name: object = name
    if name is None:
        # Python names cannot hold hyphens; hyphenated names are the convention here.
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
        parameter = "offline_scheduling_policy" if kind == "streaming" else "scheduling_policy"
        raise _error(fs_name, parameter, problem)

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

    resolved = _resolve_sources(fs_name, data_sources, batch=kind == "batch")
    stream_sources = _stream_sources(fs_name, resolved) if kind == "streaming" else ()
    batch_sources = _batch_sources(fs_name, resolved) if kind == "batch" else ()
    try:
        transformation = function()
    except FeatureSetDefinitionError as exc:
        raise FeatureSetDefinitionError(fs_name, exc.parameter, exc.reason) from None
    _check_transformation(fs_name, transformation, len(resolved))
    windows = _check_aggregations(fs_name, transformation)
    try:
        lateness = parse_duration(allowed_lateness)
    except ValueError as exc:
        raise _error(fs_name, "allowed_lateness", str(exc)) from None
    if lateness < timedelta(0):
        raise _error(fs_name, "allowed_lateness", "must not be negative")

    sinks = check_sinks(fs_name, auxiliary_sinks)

    backfill: BackfillSpec | None = None
    declaration = getattr(function, STREAMING_BACKFILL_ATTRIBUTE, None)
    if isinstance(declaration, BackfillDeclaration):
        _check_backfill_kind(fs_name, kind, "streaming")
        backfill = declaration.resolve(fs_name)
    partitions_start: datetime | None = None
    start_date = getattr(function, BATCH_BACKFILL_ATTRIBUTE, None)
    if start_date is not None:
        _check_backfill_kind(fs_name, kind, "batch")
        partitions_start = resolve_partitions_start(fs_name, start_date)
    elif kind == "batch":
        raise _error(
            fs_name,
            "backfill.start_date",
            "a batch feature set needs @batch.backfill(start_date=...) to know where its "
            "partitions start (place it below @batch.feature_set)",
        )

    return FeatureSet(
        name=fs_name,
        key=keys,
        data_sources=stream_sources,
        timestamp_column=timestamp_column_name,
        transformation=transformation,
        offline_scheduling_policy=offline_scheduling_policy,
        online_trigger_interval=float(online_trigger_interval),
        online_ttl=ttl,
        auxiliary_sinks=sinks,
        metadata=getattr(function, METADATA_ATTRIBUTE, FeatureSetMetadata()),
        execution_specification=getattr(
            function, EXECUTION_SPECIFICATION_ATTRIBUTE, ExecutionSpecification()
        ),
        windows=windows,
        allowed_lateness=lateness,
        kind=kind,
        batch_sources=batch_sources,
        backfill=backfill,
        partitions_start=partitions_start,
    )


def with_metadata(feature_set: FeatureSet, metadata: FeatureSetMetadata) -> FeatureSet:
    """A copy of ``feature_set`` with other metadata (decorators applied in either order)."""
    return replace(feature_set, metadata=metadata)


def with_execution_specification(
    feature_set: FeatureSet, specification: ExecutionSpecification
) -> FeatureSet:
    """A copy of ``feature_set`` with another execution specification."""
    return replace(feature_set, execution_specification=specification)


def with_backfill(feature_set: FeatureSet, declaration: BackfillDeclaration) -> FeatureSet:
    """A copy of streaming ``feature_set`` with the backfill ``declaration`` checked for it."""
    _check_backfill_kind(feature_set.name, feature_set.kind, "streaming")
    return replace(feature_set, backfill=declaration.resolve(feature_set.name))


def with_partitions_start(feature_set: FeatureSet, start_date: object) -> FeatureSet:
    """A copy of batch ``feature_set`` whose partitions start at ``start_date``."""
    _check_backfill_kind(feature_set.name, feature_set.kind, "batch")
    return replace(
        feature_set, partitions_start=resolve_partitions_start(feature_set.name, start_date)
    )
