"""The ``streaming`` namespace: decorators that declare a streaming feature set.

Names and parameters follow the JFrog ML streaming feature set API, so that its users can
port definitions by changing imports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

from fs_dagster.definitions.backfill import (
    BackfillDeclaration,
    BackfillSourceEntry,
    DateLike,
)
from fs_dagster.definitions.decorators import Target, attach, execution_specification, metadata
from fs_dagster.definitions.execution import ClusterTemplate
from fs_dagster.definitions.feature_set import (
    STREAMING_BACKFILL_ATTRIBUTE,
    FeatureSet,
    build_feature_set,
    with_backfill,
)
from fs_dagster.definitions.sinks import AuxiliarySink
from fs_dagster.definitions.sources import DataSource
from fs_dagster.definitions.transformations import SparkSqlTransformation, Transformation

__all__ = ["backfill", "execution_specification", "feature_set", "metadata"]


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
        name: letters, digits, hyphens and underscores, starting with a letter, at most 40
            characters; defaults to the function's name with ``_`` turned into ``-``.
        key: the key column, or a list of key columns.
        data_sources: names of declared stream sources (or the source objects); the SQL
            reads each by its name with ``-`` turned into ``_``. A
            :class:`~fs_dagster.BatchSource` belongs in :func:`backfill` instead.
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
            kind="streaming",
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


def backfill(
    *,
    start_date: DateLike,
    end_date: DateLike,
    data_sources: Sequence[BackfillSourceEntry],
    backfill_transformation: SparkSqlTransformation,
    backfill_cluster_template: ClusterTemplate | None = None,
) -> Callable[[Target], Target]:
    """Fill a streaming feature set's history from batch sources before its stream.

    Works above or below :func:`feature_set`; either way it is checked against the
    feature set it meets, and errors name it and the ``backfill.*`` parameter. The result
    is ``FeatureSet.backfill`` (a :class:`~fs_dagster.definitions.backfill.BackfillSpec`).

    Args:
        start_date: first event time to backfill; midnight UTC (a naive datetime means
            UTC, a ``date`` its midnight), because backfill partitions are days.
        end_date: event times before this are backfilled; midnight UTC, after start_date.
        data_sources: the batch sources read: names, :class:`~fs_dagster.BatchSource`
            objects or :class:`~fs_dagster.BackfillBatchDataSourceSpec` with a narrower
            range inside ``start_date``..``end_date``.
        backfill_transformation: SQL over the batch sources (each read by its name with
            ``-`` turned into ``_``) producing the columns the feature set's transformation
            reads from its stream; no aggregations (they come from the feature set).
        backfill_cluster_template: resources of the backfill run.

    Example:
        >>> @feature_set(name="user-spend", key="user_id", data_sources=["transactions"],
        ...              timestamp_column_name="ts")
        ... @backfill(start_date=datetime(2022, 1, 1), end_date=datetime(2023, 9, 1),
        ...           data_sources=[BackfillBatchDataSourceSpec(
        ...               data_source_name="tx-history", start_datetime=datetime(2023, 1, 1))],
        ...           backfill_transformation=SparkSqlTransformation(
        ...               "SELECT user_id, amount, ts FROM tx_history"))
        ... def user_spend():
        ...     return (SparkSqlTransformation("SELECT user_id, amount, ts FROM transactions")
        ...             .aggregate(Aggregation.avg("amount")).by_windows("1 minute, 1 hour"))
        ... # doctest: +SKIP
    """
    declaration = BackfillDeclaration(
        start_date=start_date,
        end_date=end_date,
        data_sources=data_sources,
        backfill_transformation=backfill_transformation,
        backfill_cluster_template=backfill_cluster_template,
    )
    return attach(
        STREAMING_BACKFILL_ATTRIBUTE, declaration, lambda fs: with_backfill(fs, declaration)
    )
