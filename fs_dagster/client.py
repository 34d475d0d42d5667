"""Reading features back: online by key, offline point-in-time, and previews.

Example:
    >>> store = FeatureStore(online_store=SqliteOnlineStore(".fs_dagster/online.db"),
    ...                      offline_root=".fs_dagster/offline", feature_sets=[user_spend])
    ... # doctest: +SKIP
    >>> store.get_online_features("user-spend", ["u1", "u2"])  # doctest: +SKIP
    >>> store.get_online_features(
    ...     features=["user-spend.sum_amount_1h", "user-profile.*"], keys=["u1", "u2"]
    ... )  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, overload

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812

from fs_dagster.aggregation.plan import AggregationPlan
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.combined import (
    CombinedFeatures,
    KeysLike,
    OnlineReader,
    key_rows,
    online_vectors,
)
from fs_dagster.engine.duckdb_retrieval import (
    OFFLINE_ENGINES,
    DuckDBUnsupportedTableError,
    OfflineEngine,
    delta_location,
    duckdb_point_in_time_aggregates,
    duckdb_point_in_time_join,
)
from fs_dagster.engine.pipeline import BatchReport
from fs_dagster.engine.replay import DEFAULT_SLICE, CombinedFeatureEvent, FeatureEvent, replay
from fs_dagster.engine.spark_session import S3Settings
from fs_dagster.engine.training_sets import combined_point_in_time, point_in_time_features
from fs_dagster.engine.updates import UpdateCallback
from fs_dagster.planning.plan import INTERNAL_PREFIX, StoragePlan
from fs_dagster.stores.online.base import OnlineStore

__all__ = ["FeatureStore"]


class FeatureStore:
    """Reads features of the given feature sets from the online and offline stores.

    Args:
        online_store: where online ingestion writes.
        offline_root: root of the offline store (local path or ``s3a://`` URL).
        feature_sets: the feature sets it can read, so they can be named by string.
        spark: the session for offline reads; the active or a local one by default.
        checkpoint_root: root of the checkpoints (only needed to build storage plans
            that match the ingestion's; defaults next to the offline root).
        offline_engine: what computes a point-in-time read of one set to pandas
            (single-set form, pandas population): ``"duckdb"`` (in-process, no JVM),
            ``"spark"``, or ``"auto"`` (default): DuckDB, unless the read is one it
            does not do (deletion vectors, column mapping, a root other than a local
            path, ``file://``, ``s3a://`` or ``s3://``; for an aggregated set also an
            aggregate other than sum, count, min, max and the boolean ones, or a time
            column that does not hold datetimes; a table ``deltalake`` cannot reach,
            e.g. an S3 root without keys of its own), then Spark. Both give the same
            frames. The combined form and ``output="spark"`` run on Spark whatever the
            choice.
        s3: endpoint, keys and region the DuckDB engine reads an ``s3a://`` root with;
            by default from the environment
            (:func:`~fs_dagster.engine.duckdb_retrieval.s3_settings_from_environment`).
    """

    def __init__(
        self,
        *,
        online_store: OnlineStore,
        offline_root: str,
        feature_sets: Iterable[FeatureSet] = (),
        spark: SparkSession | None = None,
        checkpoint_root: str | None = None,
        offline_engine: OfflineEngine = "auto",
        s3: S3Settings | None = None,
    ):
        if offline_engine not in OFFLINE_ENGINES:
            raise ValueError(
                f"offline_engine={offline_engine!r} is not one of {list(OFFLINE_ENGINES)}"
            )
        self.offline_engine: OfflineEngine = offline_engine
        self._s3 = s3
        self.online_store = online_store
        self.offline_root = offline_root
        self.checkpoint_root = checkpoint_root or offline_root.rstrip("/") + "/_checkpoints"
        self._feature_sets = {fs.name: fs for fs in feature_sets}
        self._spark = spark
        self._online = OnlineReader(online_store)

    def feature_set(self, feature_set_or_name: FeatureSet | str) -> FeatureSet:
        """Resolve a feature set given by object or name."""
        if isinstance(feature_set_or_name, FeatureSet):
            return feature_set_or_name
        try:
            return self._feature_sets[feature_set_or_name]
        except KeyError:
            known = ", ".join(sorted(self._feature_sets)) or "none"
            raise KeyError(
                f"unknown feature set {feature_set_or_name!r} (known: {known})"
            ) from None

    def plan(self, feature_set: FeatureSet) -> StoragePlan:
        """Storage locations of ``feature_set``."""
        return StoragePlan(feature_set, self.offline_root, self.checkpoint_root)

    @property
    def spark(self) -> SparkSession:
        """The Spark session used for offline reads."""
        if self._spark is None:
            from fs_dagster.engine.analysis import analysis_session

            self._spark = analysis_session()
        return self._spark

    def _combined(
        self, features: object, feature_names: Callable[[FeatureSet], Sequence[str]]
    ) -> CombinedFeatures:
        """Resolve feature references against the feature sets this store knows."""
        return CombinedFeatures.resolve(features, self._feature_sets, feature_names)

    def get_online_features(
        self,
        feature_set_or_name: FeatureSet | str | None = None,
        keys: KeysLike = None,
        *,
        features: Sequence[str] | str | None = None,
        at: datetime | None = None,
    ) -> pd.DataFrame:
        """The current feature vector of each key, one row per key in the order given.

        Either one feature set (``get_online_features("user-spend", keys)``), or features
        of several, combined into one vector per key
        (``get_online_features(features=["user-spend.sum_amount_1h", "user-profile.*"],
        keys=...)``).

        Args:
            feature_set_or_name: the feature set (single-set form).
            keys: one key value, a list of them (single-column keys), a dict or list of
                dicts of key columns, or a pandas DataFrame with the key columns. With
                ``features``, the keys hold the key columns of every requested set; the
                value and tuple forms need every set to have the same key columns.
            features: references ``"<feature set>.<feature>"`` or ``"<feature set>.*"``
                of registered feature sets (combined form).
            at: for aggregated feature sets, the read time windows end at (default now;
                a naive datetime is UTC). Online tiles answer read times back to the
                retention of the finest tiles a read needs (minutes for second tiles);
                an older ``at`` raises ``ValueError`` rather than return values with
                tiles missing. Row-level feature sets keep only the latest vector per key,
                so ``at`` is refused there; ``get_offline_features`` serves any time.

        Returns:
            Single set, row-level: key columns, the event time of the vector, then the
            features; a key with no vector (never seen, or past the TTL) has nulls.
            Single set, aggregated: key columns, the read time, then every window value
            (``count``/``sum`` 0 and the others null for an empty window), each column
            with one dtype whatever the values (README, "Aggregations").
            Combined: the key columns of all requested sets, one column per requested
            feature named by its reference (``"user-spend.sum_amount_1h"``), then per
            set ``"<set>.<timestamp column>"`` (event time of its vector, or read time).

        Raises:
            FeatureReferenceError: a malformed reference, or an unknown set or feature.
            ValueError: the keys lack a requested set's key columns (the message names
                the set and the columns), or ``at`` for a row-level set.

        Example:
            >>> store.get_online_features(
            ...     features=["user-spend.sum_amount_1h", "merchant-risk.*"],
            ...     keys=[{"user_id": "u1", "merchant_id": "m7"}],
            ... )  # doctest: +SKIP
        """
        at_micros = None if at is None else _micros(at)
        if features is not None:
            if feature_set_or_name is not None:
                raise ValueError(
                    "get_online_features: give either a feature set (single-set form) or "
                    f"features= (combined form), not both; got {feature_set_or_name!r} and "
                    f"features={features!r}"
                )
            combined = self._combined(features, self._online.feature_names)
            owner = ", ".join(f"'{fs.name}'" for fs in combined.feature_sets)
            rows = key_rows(keys, combined.key_columns, owner)
            return online_vectors(self._online, combined, rows, at_micros)
        if feature_set_or_name is None:
            raise ValueError(
                "get_online_features needs a feature set (get_online_features('user-spend', "
                "keys)) or features=['<feature set>.<feature>', ...]"
            )
        feature_set = self.feature_set(feature_set_or_name)
        key_tuples = _normalize_keys(feature_set, keys)
        return self._online.read(feature_set, key_tuples, at_micros)

    def _aggregation_plan(self, feature_set: FeatureSet) -> AggregationPlan:
        # bench/aggregations.py times this step of an online read on its own.
        return self._online.aggregation_plan(feature_set)

    @overload
    def get_offline_features(
        self,
        population: pd.DataFrame | DataFrame,
        feature_set_or_name: FeatureSet | str | None = ...,
        point_in_time_column: str = ...,
        *,
        features: Sequence[str] | str | None = ...,
        output: Literal["pandas"] = ...,
    ) -> pd.DataFrame: ...

    @overload
    def get_offline_features(
        self,
        population: pd.DataFrame | DataFrame,
        feature_set_or_name: FeatureSet | str | None = ...,
        point_in_time_column: str = ...,
        *,
        features: Sequence[str] | str | None = ...,
        output: Literal["spark"],
    ) -> DataFrame: ...

    def get_offline_features(
        self,
        population: pd.DataFrame | DataFrame,
        feature_set_or_name: FeatureSet | str | None = None,
        point_in_time_column: str = "timestamp",
        *,
        features: Sequence[str] | str | None = None,
        output: Literal["pandas", "spark"] = "pandas",
    ) -> pd.DataFrame | DataFrame:
        """Point-in-time correct features for each population row.

        One set read to pandas from a pandas population runs in-process on DuckDB
        (an aggregated set's windows with numpy), everything else on Spark (see
        ``offline_engine`` of the store).

        Either one feature set (``get_offline_features(population, "user-spend")``), or
        features of several combined into one training set
        (``get_offline_features(population, features=[...])``).

        Args:
            population: rows with the key columns and ``point_in_time_column``.
            feature_set_or_name: the feature set (single-set form).
            point_in_time_column: the population's timestamp column.
            features: references ``"<feature set>.<feature>"`` or ``"<feature set>.*"``
                of registered feature sets (combined form).
            output: ``pandas`` (default) or ``spark`` to keep the result distributed.

        Returns:
            Single set: the population's columns, then the features (and, row-level,
            the matched event time); for ``pandas``, one row per population row in
            population order. Combined: exactly one row per population row (in
            population order for ``pandas``), the population's columns, one column per
            requested feature named by its reference, then per set
            ``"<set>.<timestamp column>"``: the matched row's event time (row-level,
            null when none matched) or the read time of the windows (aggregated).

        Raises:
            FeatureReferenceError: a malformed reference, or an unknown set or feature.
            ValueError: the population lacks a set's key columns or the time column.

        Example:
            >>> store.get_offline_features(
            ...     population, features=["user-spend.*", "user-profile.age"]
            ... )  # doctest: +SKIP
        """
        target: FeatureSet | CombinedFeatures
        if features is not None:
            if feature_set_or_name is not None:
                raise ValueError(
                    "get_offline_features: give either a feature set (single-set form) or "
                    f"features= (combined form), not both; got {feature_set_or_name!r} and "
                    f"features={features!r}"
                )
            target = self._combined(features, _definition_features)
        elif feature_set_or_name is not None:
            target = self.feature_set(feature_set_or_name)
        else:
            raise ValueError(
                "get_offline_features needs a feature set (get_offline_features(population, "
                "'user-spend')) or features=['<feature set>.<feature>', ...]"
            )
        if (
            isinstance(target, FeatureSet)
            and output == "pandas"
            and isinstance(population, pd.DataFrame)
        ):
            local = self._duckdb_point_in_time(target, population, point_in_time_column)
            if local is not None:
                return local
        spark = self.spark
        ordered = output == "pandas" and isinstance(target, FeatureSet)
        if ordered:
            # A single-set read to pandas comes back in population order, as the DuckDB
            # engine's does: the rows are numbered here and sorted by it at the end.
            population = (
                population.withColumn(_POPULATION_ROW, F.monotonically_increasing_id())
                if isinstance(population, DataFrame)
                else population.assign(**{_POPULATION_ROW: range(len(population))})
            )
        pop = (
            population
            if isinstance(population, DataFrame)
            else spark.createDataFrame(_to_spark_precision(population))
        )
        if isinstance(target, CombinedFeatures):
            result = combined_point_in_time(
                spark,
                target,
                self.plan,
                pop,
                point_in_time_column,
                keep_order=output == "pandas",
            )
        else:
            plan = self.plan(target)
            result = point_in_time_features(spark, target, plan, pop, point_in_time_column)
        if ordered:
            result = result.orderBy(_POPULATION_ROW).drop(_POPULATION_ROW)
        return result if output == "spark" else result.toPandas()

    def _duckdb_point_in_time(
        self, feature_set: FeatureSet, population: pd.DataFrame, point_in_time_column: str
    ) -> pd.DataFrame | None:
        """The read on DuckDB, or ``None`` when the engine choice sends it to Spark."""
        if self.offline_engine == "spark":
            return None
        plan = self.plan(feature_set)
        paths = [plan.features_path, *([plan.tiles_path] if feature_set.is_aggregated else [])]
        if self.offline_engine == "auto" and not all(_duckdb_reads(p) for p in paths):
            return None
        features = delta_location(plan.features_path, self._s3)
        try:
            if feature_set.is_aggregated:
                return duckdb_point_in_time_aggregates(
                    feature_set,
                    delta_location(plan.tiles_path, self._s3),
                    features,
                    population,
                    point_in_time_column,
                )
            return duckdb_point_in_time_join(
                feature_set, features, population, point_in_time_column
            )
        except (DuckDBUnsupportedTableError, OSError):
            # OSError: deltalake could not reach the table (e.g. no S3 credentials in its
            # environment where Spark has its own): Spark reads it under "auto".
            if self.offline_engine == "auto":
                return None
            raise

    def ingest(
        self,
        feature_set_or_name: FeatureSet | str,
        *,
        pipelines: Sequence[Literal["online", "offline"]] = ("online", "offline"),
        until: Literal["caught_up"] = "caught_up",
        on_update: UpdateCallback | None = None,
        features: Sequence[str] | str | None = None,
    ) -> list[BatchReport]:
        """Run ingestion of ``feature_set`` until its source is caught up, then stop.

        What a notebook or a test wants: everything the source holds now lands in the
        stores, exactly as the Dagster runs would write it (same checkpoints, so a later
        run goes on from here). ``online`` fills the online store, ``offline`` the offline
        tables (rows, and tile partials of aggregated sets).

        Args:
            feature_set_or_name: the feature set to ingest.
            pipelines: which pipelines run, one after the other.
            until: ``caught_up`` (the only mode).
            on_update: called, after each online batch's writes, with the combined vector
                (a dict, columns as ``get_online_features(features=...)``) of each key the
                batch updated; see :class:`~fs_dagster.engine.updates.CombinedUpdates`.
            features: references of the vectors' features, of this or other registered
                sets whose key columns are output columns of this one; all of this set's
                features by default.

        Returns:
            The report of every micro-batch, online ones first.

        Example:
            >>> store.ingest("user-spend")  # doctest: +SKIP
            >>> store.ingest("user-spend", pipelines=["online"], on_update=print,
            ...              features=["user-spend.*", "user-profile.age"])  # doctest: +SKIP
        """
        from fs_dagster.engine.pipeline import start_ingestion

        if until != "caught_up":
            raise ValueError(f"until={until!r}: only 'caught_up' is supported")
        feature_set = self.feature_set(feature_set_or_name)
        combined = None
        if on_update is not None:
            if "online" not in pipelines:
                raise ValueError(
                    f"ingest('{feature_set.name}'): on_update= needs the online pipeline; "
                    f"got pipelines={list(pipelines)}"
                )
            known = {**self._feature_sets, feature_set.name: feature_set}
            # This set's features from its definition (its online table may predate a
            # new column), the others' as their online reads return them.
            combined = CombinedFeatures.resolve(
                features if features is not None else [f"{feature_set.name}.*"],
                known,
                lambda fs: (
                    _definition_features(fs)
                    if fs is feature_set
                    else self._online.feature_names(fs)
                ),
            )
        elif features is not None:
            raise ValueError(
                f"ingest('{feature_set.name}'): features= only applies with on_update="
            )
        reports: list[BatchReport] = []
        for pipeline in pipelines:
            online = pipeline == "online"
            ingestion = start_ingestion(
                self.spark,
                feature_set,
                self.plan(feature_set),
                pipeline,
                online_store=self.online_store if online else None,
                on_update=on_update if online else None,
                features=combined if online else None,
            )
            try:
                if pipeline == "online":
                    ingestion.query.processAllAvailable()
                else:
                    ingestion.query.awaitTermination()
                error = ingestion.query.exception()
                if error is not None:
                    raise RuntimeError(
                        f"{pipeline} ingestion of '{feature_set.name}' failed: {error}"
                    )
            finally:
                ingestion.stop()
            reports += ingestion.reports
        return reports

    def backfill(
        self,
        feature_set_or_name: FeatureSet | str,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        online: bool = True,
    ) -> BatchReport:
        """Compute ``feature_set`` over ``[start, end)`` from its batch sources, as one run.

        The range defaults to the whole backfill. Its offline rows and tiles are
        replaced (running it again changes nothing) and, with ``online``, the online
        store is seeded. See :func:`fs_dagster.engine.backfill.run_range`.
        """
        from fs_dagster.engine.backfill import run_range

        feature_set = self.feature_set(feature_set_or_name)
        spec = feature_set.backfill
        first = start if start is not None else spec.start if spec is not None else None
        last = end if end is not None else spec.end if spec is not None else None
        if first is None or last is None:
            raise ValueError(f"'{feature_set.name}': give the start and end of the range")
        return run_range(
            self.spark,
            feature_set,
            self.plan(feature_set),
            first,
            last,
            online_store=self.online_store if online else None,
        )

    @overload
    def replay(
        self,
        feature_sets_or_names: FeatureSet | str | Sequence[FeatureSet | str],
        start: datetime,
        end: datetime,
        combine: Literal[False] = ...,
        *,
        slice_length: timedelta = ...,
    ) -> Iterator[FeatureEvent]: ...

    @overload
    def replay(
        self,
        feature_sets_or_names: FeatureSet | str | Sequence[FeatureSet | str],
        start: datetime,
        end: datetime,
        combine: Literal[True],
        *,
        slice_length: timedelta = ...,
    ) -> Iterator[CombinedFeatureEvent]: ...

    def replay(
        self,
        feature_sets_or_names: FeatureSet | str | Sequence[FeatureSet | str],
        start: datetime,
        end: datetime,
        combine: bool = False,
        *,
        slice_length: timedelta = DEFAULT_SLICE,
    ) -> Iterator[FeatureEvent] | Iterator[CombinedFeatureEvent]:
        """Feature events recomputed from the raw-event archive, in event-time order.

        The offline run archives the source events it reads; replay runs the same
        transformation and aggregation code over them, so a replayed value at a time is
        the offline point-in-time value at that time. It streams: one event-time slice
        at a time, so memory stays bounded over long ranges. See
        :mod:`fs_dagster.engine.replay` for the order of ties and the cost of windows.

        Args:
            feature_sets_or_names: one feature set or several (objects or names).
            start: first event time replayed (naive is UTC).
            end: first event time not replayed.
            combine: yield, for every event, one :class:`CombinedFeatureEvent` with the
                latest features of every given set for its key (``None`` for a set with
                no event for the key yet); the sets must share their key columns.
            slice_length: event time per Spark pass (default one day).

        Returns:
            An iterator of :class:`FeatureEvent` (or :class:`CombinedFeatureEvent`):
            row-level sets give each transformed row, aggregated sets every window value
            at each event's time.

        Raises:
            ValueError: an empty range, sets with different keys and ``combine``.
            LookupError: a feature set has no archive yet (run its offline ingestion).

        Example:
            >>> for event in store.replay(["user-spend", "user-clicks"], start, end,
            ...                           combine=True):  # doctest: +SKIP
            ...     print(event.timestamp, event.key, event.features["user-spend"])
        """
        given = (
            [feature_sets_or_names]
            if isinstance(feature_sets_or_names, FeatureSet | str)
            else list(feature_sets_or_names)
        )
        resolved = [self.feature_set(f) for f in given]
        return replay(
            self.spark,
            [(f, self.plan(f)) for f in resolved],
            start,
            end,
            combine=combine,
            slice_length=slice_length,
        )

    def late_events(self, feature_set_or_name: FeatureSet | str) -> pd.DataFrame:
        """Events that arrived after the watermark, with the reason (aggregated sets)."""
        feature_set = self.feature_set(feature_set_or_name)
        path = self.plan(feature_set).late_events_path
        return self.spark.read.format("delta").load(path).toPandas()

    def dead_letters(self, feature_set_or_name: FeatureSet | str) -> pd.DataFrame:
        """Malformed records set aside for ``feature_set`` (payload, position, reason)."""
        feature_set = self.feature_set(feature_set_or_name)
        path = self.plan(feature_set).dead_letter_path
        return self.spark.read.format("delta").load(path).toPandas()


_POPULATION_ROW = INTERNAL_PREFIX + "population_row"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _duckdb_reads(path: str) -> bool:
    """Whether the DuckDB engine reads tables under ``path`` (by its URL scheme)."""
    try:
        delta_location(path)
    except ValueError:
        return False
    return True


def _definition_features(feature_set: FeatureSet) -> list[str]:
    return feature_set.feature_names


def _micros(at: datetime) -> int:
    """Microseconds since the epoch of ``at`` (naive is UTC)."""
    if type(at) is datetime:
        # Plain arithmetic: pandas' conversion costs a one-key online read 5%.
        moment = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        delta = moment - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    timestamp = pd.Timestamp(at)
    if timestamp.tzinfo is not None:
        timestamp = timestamp.tz_convert("UTC").tz_localize(None)
    return int(timestamp.value // 1000)


def _to_spark_precision(frame: pd.DataFrame) -> pd.DataFrame:
    """Spark keeps microseconds: drop finer precision so Arrow converts without loss."""
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].dt.floor("us")
    return frame


def _normalize_keys(feature_set: FeatureSet, keys: KeysLike) -> list[tuple[Any, ...]]:
    return key_rows(keys, feature_set.key, f"'{feature_set.name}'").tuples(feature_set)
