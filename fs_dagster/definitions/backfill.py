"""Backfills: which history a feature set computes from batch sources, and from when.

A streaming feature set may declare, with ``@streaming.backfill``, a range of event time
whose feature values come from batch sources before its stream takes over (as in the JFrog
ML API). A batch feature set declares, with ``@batch.backfill(start_date=...)``, where its
partitions start. Both are checked here, when they meet their feature set, so that an
error names it.

Dates are in UTC: a naive ``datetime`` means UTC, a ``date`` means its midnight UTC.
Backfill partitions are days, so the range's ends fall on midnight UTC.

Example:
    >>> @streaming.feature_set(name="user-spend", key="user_id",
    ...                        data_sources=["transactions"], timestamp_column_name="ts")
    ... @streaming.backfill(
    ...     start_date=datetime(2022, 1, 1), end_date=datetime(2023, 9, 1),
    ...     data_sources=["transactions-history"],
    ...     backfill_transformation=SparkSqlTransformation(
    ...         "SELECT user_id, amount, ts FROM transactions_history"),
    ... )
    ... def user_spend():
    ...     return (SparkSqlTransformation("SELECT user_id, amount, ts FROM transactions")
    ...             .aggregate(Aggregation.sum("amount")).by_windows("1 hour, 1 day"))
    ... # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.execution import ClusterTemplate
from fs_dagster.definitions.sources import (
    BatchSource,
    check_distinct_sources,
    find_source,
    known_source_names,
)
from fs_dagster.definitions.transformations import (
    SparkSqlTransformation,
    sql_transformation_problem,
)

__all__ = [
    "DAILY_PARTITION_SECONDS",
    "BackfillBatchDataSourceSpec",
    "BackfillDeclaration",
    "BackfillSourceRange",
    "BackfillSpec",
    "DateLike",
    "as_utc",
    "resolve_partitions_start",
]

DAILY_PARTITION_SECONDS = 86400

DateLike = datetime | date
"""A point in time as users write it: a ``datetime`` (naive means UTC) or a ``date``."""


@dataclass(frozen=True)
class BackfillBatchDataSourceSpec:
    """A batch source of a backfill, optionally read over a narrower range than the backfill.

    Checked when the backfill is attached to its feature set: the source must be a
    declared :class:`~fs_dagster.BatchSource`, and ``start_datetime``/``end_datetime``
    must lie within the backfill's ``start_date``/``end_date`` (``None``: the backfill's).

    Attributes:
        data_source_name: the batch source's name.
        start_datetime: read rows from this event time on (naive means UTC).
        end_datetime: read rows before this event time.
    """

    data_source_name: str
    start_datetime: datetime | None = None
    end_datetime: datetime | None = None


@dataclass(frozen=True)
class BackfillSourceRange:
    """One batch source of a resolved backfill and the event-time range read from it.

    Attributes:
        source: the batch source.
        start: first event time read, tz-aware UTC (at or after the backfill's start).
        end: event times before this are read, tz-aware UTC (at or before the backfill's end).
    """

    source: BatchSource
    start: datetime
    end: datetime


@dataclass(frozen=True)
class BackfillSpec:
    """A streaming feature set's validated backfill (``FeatureSet.backfill``).

    Attributes:
        start: first event time backfilled, tz-aware UTC, on a partition boundary.
        end: event times before this are backfilled, tz-aware UTC, on a partition
            boundary.
        sources: the batch sources and the range read from each.
        transformation: SQL over the batch sources (read by their SQL view names) whose
            output has the columns the feature set's own transformation reads from its
            stream; the feature set's aggregation is then applied to it.
        cluster_template: resources of the backfill run (``None``: the offline run's).
        partition_seconds: length of a backfill partition (a day).
    """

    start: datetime
    end: datetime
    sources: tuple[BackfillSourceRange, ...]
    transformation: SparkSqlTransformation
    cluster_template: ClusterTemplate | None
    partition_seconds: int = DAILY_PARTITION_SECONDS


BackfillSourceEntry = BackfillBatchDataSourceSpec | str | BatchSource


@dataclass(frozen=True)
class BackfillDeclaration:
    """The arguments of ``@streaming.backfill``, as written, until a feature set checks them."""

    start_date: DateLike
    end_date: DateLike
    data_sources: Sequence[BackfillSourceEntry]
    backfill_transformation: SparkSqlTransformation
    backfill_cluster_template: ClusterTemplate | None = None

    def resolve(self, owner: str) -> BackfillSpec:
        """Check the declaration for feature set ``owner`` and return the backfill.

        Raises:
            FeatureSetDefinitionError: naming ``owner`` and the ``backfill.*`` parameter.
        """
        start = _partition_boundary(owner, "backfill.start_date", self.start_date)
        end = _partition_boundary(owner, "backfill.end_date", self.end_date)
        if end <= start:
            raise FeatureSetDefinitionError(
                owner,
                "backfill.end_date",
                f"{_show(end)} is not after start_date {_show(start)}",
            )
        return BackfillSpec(
            start=start,
            end=end,
            sources=_source_ranges(owner, self.data_sources, start, end),
            transformation=_transformation(owner, self.backfill_transformation),
            cluster_template=_cluster_template(owner, self.backfill_cluster_template),
        )


def resolve_partitions_start(owner: str, start_date: object) -> datetime:
    """Check ``@batch.backfill(start_date=...)`` for batch feature set ``owner``.

    Returns:
        the first partition's start, tz-aware UTC, at midnight.
    """
    return _partition_boundary(owner, "backfill.start_date", start_date)


def as_utc(owner: str, parameter: str, value: object) -> datetime:
    """``value`` as a tz-aware UTC datetime (naive means UTC; a date means its midnight)."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise FeatureSetDefinitionError(
        owner, parameter, f"expected a datetime or a date, got {type(value).__name__}"
    )


def _partition_boundary(owner: str, parameter: str, value: object) -> datetime:
    moment = as_utc(owner, parameter, value)
    if moment.timestamp() % DAILY_PARTITION_SECONDS:
        raise FeatureSetDefinitionError(
            owner,
            parameter,
            f"{_show(moment)} is not on a partition boundary; partitions are days, so use "
            f"midnight UTC (e.g. {moment.date().isoformat()} or "
            f"datetime({moment.year}, {moment.month}, {moment.day}))",
        )
    return moment


def _source_ranges(
    owner: str, entries: object, start: datetime, end: datetime
) -> tuple[BackfillSourceRange, ...]:
    parameter = "backfill.data_sources"
    if isinstance(entries, str | BatchSource | BackfillBatchDataSourceSpec):
        entries = [entries]
    if not isinstance(entries, Sequence) or not entries:
        raise FeatureSetDefinitionError(
            owner,
            parameter,
            "expected a non-empty list of batch source names, BatchSource objects or "
            "BackfillBatchDataSourceSpec(...)",
        )
    ranges: list[BackfillSourceRange] = []
    for entry in entries:
        spec = entry if isinstance(entry, BackfillBatchDataSourceSpec) else None
        if spec is not None and not isinstance(spec.data_source_name, str):
            raise FeatureSetDefinitionError(
                owner,
                parameter,
                "BackfillBatchDataSourceSpec.data_source_name must be a source name, got "
                f"{type(spec.data_source_name).__name__}",
            )
        source = find_source(owner, parameter, spec.data_source_name if spec else entry, batch=True)
        if not isinstance(source, BatchSource):
            raise FeatureSetDefinitionError(
                owner,
                parameter,
                f"a backfill reads batch sources (BatchSource); '{source.name}' is a stream "
                f"source (known batch sources: {known_source_names(batch=True)})",
            )
        ranges.append(_source_range(owner, source, spec, start, end))
    check_distinct_sources(owner, parameter, [r.source for r in ranges])
    return tuple(ranges)


def _source_range(
    owner: str,
    source: BatchSource,
    spec: BackfillBatchDataSourceSpec | None,
    start: datetime,
    end: datetime,
) -> BackfillSourceRange:
    parameter = "backfill.data_sources"
    bounds = {"start_datetime": start, "end_datetime": end}
    for field_name in bounds:
        value = getattr(spec, field_name, None)
        if value is None:
            continue
        moment = as_utc(owner, parameter, value)
        if not start <= moment <= end:
            raise FeatureSetDefinitionError(
                owner,
                parameter,
                f"source '{source.name}': {field_name} {_show(moment)} is outside the "
                f"backfill's range {_show(start)} to {_show(end)}; a source's range must "
                "lie within start_date and end_date",
            )
        bounds[field_name] = moment
    source_start, source_end = bounds["start_datetime"], bounds["end_datetime"]
    if source_end <= source_start:
        raise FeatureSetDefinitionError(
            owner,
            parameter,
            f"source '{source.name}': end_datetime {_show(source_end)} is not after "
            f"start_datetime {_show(source_start)}",
        )
    return BackfillSourceRange(source=source, start=source_start, end=source_end)


def _transformation(owner: str, transformation: object) -> SparkSqlTransformation:
    parameter = "backfill.backfill_transformation"
    if not isinstance(transformation, SparkSqlTransformation):
        raise FeatureSetDefinitionError(
            owner,
            parameter,
            "expected a SparkSqlTransformation over the batch sources, got "
            f"{type(transformation).__name__}",
        )
    problem = sql_transformation_problem(transformation)
    if problem:
        raise FeatureSetDefinitionError(owner, parameter, problem)
    if transformation.is_aggregated:
        raise FeatureSetDefinitionError(
            owner,
            parameter,
            "a backfill transformation selects rows; the aggregation comes from the feature "
            "set's own transformation, so remove .aggregate(...) and .by_windows(...)",
        )
    return transformation


def _cluster_template(owner: str, template: object) -> ClusterTemplate | None:
    if template is None or isinstance(template, ClusterTemplate):
        return template
    raise FeatureSetDefinitionError(
        owner,
        "backfill.backfill_cluster_template",
        f"expected a ClusterTemplate ({', '.join(t.name for t in ClusterTemplate)}) or None, "
        f"got {template!r}",
    )


def _show(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S" + (".%f" if moment.microsecond else "") + " UTC")
