"""The ``streaming`` namespace: decorators that declare a streaming feature set.

Names and parameters follow the JFrog ML streaming feature set API, so that its users can
port definitions by changing imports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from fs_dagster.definitions.feature_set import (
    ClusterTemplate,
    ExecutionSpecification,
    FeatureSet,
    FeatureSetMetadata,
    build_feature_set,
    with_execution_specification,
    with_metadata,
)
from fs_dagster.definitions.sinks import AuxiliarySink
from fs_dagster.definitions.sources import DataSource
from fs_dagster.definitions.transformations import Transformation

__all__ = ["execution_specification", "feature_set", "metadata"]

_Target = TypeVar("_Target", bound=Callable[..., Any] | FeatureSet)


def feature_set(
    *,
    name: str | None = None,
    key: str | Sequence[str],
    data_sources: Sequence[str | DataSource],
    timestamp_column_name: str,
    offline_scheduling_policy: str = "*/30 * * * *",
    online_trigger_interval: float = 5,
    online_ttl: str | int | float | timedelta | None = None,
    auxiliary_sinks: Sequence[AuxiliarySink] = (),
    allowed_lateness: str | int | float | timedelta = "10 minutes",
) -> Callable[[Callable[[], Transformation]], FeatureSet]:
    """Declare a streaming feature set from a function that returns its transformation.

    Every parameter is validated when the decorator runs (at import), and an error names
    the feature set and the parameter.

    Args:
        name: letters, digits and hyphens, starting with a letter, at most 40 characters;
            defaults to the function's name with ``_`` turned into ``-``.
        key: the key column, or a list of key columns.
        data_sources: names of declared sources (or the source objects).
        timestamp_column_name: the output's event-time column.
        offline_scheduling_policy: cron of the offline ingestion.
        online_trigger_interval: seconds between online micro-batches; 0 starts the next
            batch as soon as the previous one ends.
        online_ttl: how long after its event time an online value is served
            (``"7 days"``, seconds or a ``timedelta``); ``None`` keeps values forever.
        auxiliary_sinks: further sinks, such as :class:`~fs_dagster.KafkaSink`.
        allowed_lateness: for aggregations, how far behind the newest event time seen an
            event may be and still update its windows; later events go to the late-events
            table.

    Example:
        >>> @feature_set(name="user-transactions", key="user_id",
        ...              data_sources=["transactions"], timestamp_column_name="ts")
        ... def user_transactions():
        ...     return SparkSqlTransformation("SELECT user_id, amount, ts FROM transactions")
        ... # doctest: +SKIP
    """

    def decorate(function: Callable[[], Transformation]) -> FeatureSet:
        return build_feature_set(
            function,
            name=name,
            key=key,
            data_sources=data_sources,
            timestamp_column_name=timestamp_column_name,
            offline_scheduling_policy=offline_scheduling_policy,
            online_trigger_interval=online_trigger_interval,
            online_ttl=online_ttl,
            auxiliary_sinks=auxiliary_sinks,
            allowed_lateness=allowed_lateness,
        )

    return decorate


def metadata(
    *, owner: str | None = None, description: str | None = None, display_name: str | None = None
) -> Callable[[_Target], _Target]:
    """Attach owner, description and display name to a feature set (shown in Dagster)."""
    value = FeatureSetMetadata(owner=owner, description=description, display_name=display_name)

    def decorate(target: _Target) -> _Target:
        if isinstance(target, FeatureSet):
            return with_metadata(target, value)  # type: ignore[return-value]
        target.__fs_metadata__ = value  # type: ignore[attr-defined]
        return target

    return decorate


def execution_specification(
    *,
    online_cluster_template: ClusterTemplate = ClusterTemplate.SMALL,
    offline_cluster_template: ClusterTemplate = ClusterTemplate.SMALL,
) -> Callable[[_Target], _Target]:
    """Choose the cluster sizes of a feature set's online and offline runs."""
    value = ExecutionSpecification(
        online_cluster_template=online_cluster_template,
        offline_cluster_template=offline_cluster_template,
    )

    def decorate(target: _Target) -> _Target:
        if isinstance(target, FeatureSet):
            return with_execution_specification(target, value)  # type: ignore[return-value]
        target.__fs_execution_specification__ = value  # type: ignore[attr-defined]
        return target

    return decorate
