"""The ``batch`` namespace: decorators that declare a batch feature set.

A batch feature set reads :class:`~fs_dagster.BatchSource` files on a schedule, one daily
partition at a time from ``@batch.backfill(start_date=...)`` on. Its transformation and
aggregations are declared as for a streaming feature set.

Example:
    >>> history = BatchSource(name="tx-history", path="s3a://lake/tx", timestamp_column="ts")
    >>> @batch.feature_set(name="user-spend-daily", key="user_id",
    ...                    data_sources=["tx-history"], timestamp_column_name="ts")
    ... @batch.backfill(start_date=date(2024, 1, 1))
    ... def user_spend_daily():
    ...     return SparkSqlTransformation("SELECT user_id, amount, ts FROM tx_history")
    ... # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

from fs_dagster.definitions.backfill import DateLike
from fs_dagster.definitions.decorators import Target, attach, execution_specification, metadata
from fs_dagster.definitions.feature_set import (
    BATCH_BACKFILL_ATTRIBUTE,
    FeatureSet,
    build_feature_set,
    with_partitions_start,
)
from fs_dagster.definitions.sources import BatchSource
from fs_dagster.definitions.transformations import Transformation

__all__ = ["backfill", "execution_specification", "feature_set", "metadata"]


def feature_set(
    *,
    name: str | None = None,
    key: str | Sequence[str],
    data_sources: Sequence[str | BatchSource],
    timestamp_column_name: str,
    scheduling_policy: str = "0 0 * * *",
    online_ttl: str | int | float | timedelta | None = None,
) -> Callable[[Callable[[], Transformation]], FeatureSet]:
    """Declare a batch feature set from a function that returns its transformation.

    Needs :func:`backfill` below it. Every parameter is validated when the decorator
    runs, and an error names the feature set and the parameter.

    Args:
        name: letters, digits, hyphens and underscores, starting with a letter, at most 40
            characters; defaults to the function's name with ``_`` turned into ``-``.
        key: the key column, or a list of key columns.
        data_sources: names of declared batch sources (or the objects); several with a
            :class:`~fs_dagster.SparkSqlTransformation` (which reads each by its name with
            ``-`` turned into ``_``), exactly one with a
            :class:`~fs_dagster.UdfTransformation`.
        timestamp_column_name: the output's event-time column.
        scheduling_policy: cron of the batch runs (``FeatureSet.offline_scheduling_policy``).
        online_ttl: how long after its event time an online value is served; ``None``
            keeps values forever.
    """

    def decorate(function: Callable[[], Transformation]) -> FeatureSet:
        return build_feature_set(
            function,
            kind="batch",
            name=name,
            key=key,
            data_sources=data_sources,
            timestamp_column_name=timestamp_column_name,
            offline_scheduling_policy=scheduling_policy,
            online_ttl=online_ttl,
        )

    return decorate


def backfill(*, start_date: DateLike) -> Callable[[Target], Target]:
    """Say where a batch feature set's daily partitions start (required).

    Args:
        start_date: midnight UTC of the first partition (a naive datetime means UTC, a
            ``date`` its midnight).

    Place it below :func:`feature_set`, which needs it; above, it replaces the start of a
    feature set already declared.
    """
    return attach(
        BATCH_BACKFILL_ATTRIBUTE, start_date, lambda fs: with_partitions_start(fs, start_date)
    )
