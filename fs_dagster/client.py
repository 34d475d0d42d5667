"""Reading features back: online by key, offline point-in-time, and previews.

Example:
    >>> store = FeatureStore(online_store=SqliteOnlineStore(".fs_dagster/online.db"),
    ...                      offline_root=".fs_dagster/offline", feature_sets=[user_spend])
    ... # doctest: +SKIP
    >>> store.get_online_features("user-spend", ["u1", "u2"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, overload

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.pipeline import BatchReport
from fs_dagster.planning.plan import StoragePlan
from fs_dagster.stores.online.base import OnlineStore, OnlineTable

__all__ = ["FeatureStore"]

KeysLike = Any


class FeatureStore:
    """Reads features of the given feature sets from the online and offline stores.

    Args:
        online_store: where online ingestion writes.
        offline_root: root of the offline store (local path or ``s3a://`` URL).
        feature_sets: the feature sets it can read, so they can be named by string.
        spark: the session for offline reads; the active or a local one by default.
        checkpoint_root: root of the checkpoints (only needed to build storage plans
            that match the ingestion's; defaults next to the offline root).
    """

    def __init__(
        self,
        *,
        online_store: OnlineStore,
        offline_root: str,
        feature_sets: Iterable[FeatureSet] = (),
        spark: SparkSession | None = None,
        checkpoint_root: str | None = None,
    ):
        self.online_store = online_store
        self.offline_root = offline_root
        self.checkpoint_root = checkpoint_root or offline_root.rstrip("/") + "/_checkpoints"
        self._feature_sets = {fs.name: fs for fs in feature_sets}
        self._spark = spark
        self._layouts: dict[str, OnlineTable] = {}
        self._plans: dict[str, Any] = {}

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

    def _layout(self, feature_set: FeatureSet) -> OnlineTable:
        layout = self._layouts.get(feature_set.name)
        if layout is None:
            layout = self.online_store.layout(feature_set.storage_name)
            if layout is None:
                raise LookupError(
                    f"feature set '{feature_set.name}' has no online table yet; "
                    "start its online ingestion first"
                )
            self._layouts[feature_set.name] = layout
        return layout

    def get_online_features(
        self,
        feature_set_or_name: FeatureSet | str,
        keys: KeysLike,
        *,
        at: datetime | None = None,
    ) -> pd.DataFrame:
        """The current feature vector of each key, one row per key in the order given.

        Args:
            feature_set_or_name: the feature set.
            keys: one key value, a list of them (single-column keys), a dict or list of
                dicts of key columns, or a pandas DataFrame with the key columns.
            at: for aggregated feature sets, the read time windows end at (default now;
                a naive datetime is UTC). Online tiles answer read times back to the
                retention of the finest tiles a read needs (minutes for second tiles);
                an older ``at`` raises ``ValueError`` rather than return values with
                tiles missing. Row-level feature sets keep only the latest vector per key,
                so ``at`` is refused there; ``get_offline_features`` serves any time.

        Returns:
            Row-level feature sets: key columns, the event time of the vector, then the
            features; a key with no vector (never seen, or past the TTL) has nulls.
            Aggregated feature sets: key columns, the read time, then every window value
            (``count``/``sum`` 0 and the others null for an empty window).
        """
        feature_set = self.feature_set(feature_set_or_name)
        key_tuples = _normalize_keys(feature_set, keys)
        if feature_set.is_aggregated:
            from fs_dagster.engine.aggregates import read_aggregates

            plan = self._aggregation_plan(feature_set)
            return read_aggregates(self.online_store, plan, key_tuples, _micros(at))
        if at is not None:
            raise ValueError(
                f"'{feature_set.name}' is row-level: its online store keeps only the latest "
                "vector per key, so at= cannot be honoured; use get_offline_features with a "
                "population at that time for a past vector"
            )
        return self.online_store.read(self._layout(feature_set), key_tuples)

    def _aggregation_plan(self, feature_set: FeatureSet) -> Any:
        from fs_dagster.aggregation.plan import AggregationPlan

        cached = self._plans.get(feature_set.name)
        if cached is not None and cached.feature_set is feature_set:
            return cached
        layout = self.online_store.layout(f"{feature_set.storage_name}__tiles")
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

    @overload
    def get_offline_features(
        self,
        population: pd.DataFrame | DataFrame,
        feature_set_or_name: FeatureSet | str,
        point_in_time_column: str = ...,
        *,
        output: Literal["pandas"] = ...,
    ) -> pd.DataFrame: ...

    @overload
    def get_offline_features(
        self,
        population: pd.DataFrame | DataFrame,
        feature_set_or_name: FeatureSet | str,
        point_in_time_column: str = ...,
        *,
        output: Literal["spark"],
    ) -> DataFrame: ...

    def get_offline_features(
        self,
        population: pd.DataFrame | DataFrame,
        feature_set_or_name: FeatureSet | str,
        point_in_time_column: str = "timestamp",
        *,
        output: Literal["pandas", "spark"] = "pandas",
    ) -> pd.DataFrame | DataFrame:
        """Point-in-time correct features for each population row, computed by Spark.

        Args:
            population: rows with the key columns and ``point_in_time_column``.
            feature_set_or_name: the feature set.
            point_in_time_column: the population's timestamp column.
            output: ``pandas`` (default) or ``spark`` to keep the result distributed.
        """
        from fs_dagster.engine.retrieval import point_in_time_join

        feature_set = self.feature_set(feature_set_or_name)
        spark = self.spark
        pop = (
            population
            if isinstance(population, DataFrame)
            else spark.createDataFrame(_to_spark_precision(population))
        )
        if feature_set.is_aggregated:
            from fs_dagster.engine.aggregates import aggregation_plan, point_in_time_aggregates
            from fs_dagster.engine.backfill import feature_schema
            from fs_dagster.engine.encoding import spark_type

            # From the definition and Spark: offline reads never need the online store.
            schema = feature_schema(spark, feature_set)
            plan = aggregation_plan(feature_set, schema)
            tiles = spark.read.format("delta").load(self.plan(feature_set).tiles_path)
            types = {c: spark_type(k) for c, k in plan.column_kinds.items()}
            result = point_in_time_aggregates(plan, pop, tiles, point_in_time_column, types)
        else:
            features = spark.read.format("delta").load(self.plan(feature_set).features_path)
            result = point_in_time_join(feature_set, pop, features, point_in_time_column)
        return result if output == "spark" else result.toPandas()

    def ingest(
        self,
        feature_set_or_name: FeatureSet | str,
        *,
        pipelines: Sequence[Literal["online", "offline"]] = ("online", "offline"),
        until: Literal["caught_up"] = "caught_up",
    ) -> list[BatchReport]:
        """Run ingestion of ``feature_set`` until its source is caught up, then stop.

        What a notebook or a test wants: everything the source holds now lands in the
        stores, exactly as the Dagster runs would write it (same checkpoints, so a later
        run goes on from here). ``online`` fills the online store, ``offline`` the offline
        tables (rows, and tile partials of aggregated sets).

        Returns:
            The report of every micro-batch, online ones first.

        Example:
            >>> store.ingest("user-spend")  # doctest: +SKIP
        """
        from fs_dagster.engine.pipeline import start_ingestion

        if until != "caught_up":
            raise ValueError(f"until={until!r}: only 'caught_up' is supported")
        feature_set = self.feature_set(feature_set_or_name)
        reports: list[BatchReport] = []
        for pipeline in pipelines:
            store = self.online_store if pipeline == "online" else None
            ingestion = start_ingestion(
                self.spark, feature_set, self.plan(feature_set), pipeline, online_store=store
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


def _micros(at: datetime | None) -> int:
    if at is None:
        from fs_dagster.stores.online.base import now_micros

        return now_micros()
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
    names = list(feature_set.key)
    if isinstance(keys, pd.DataFrame):
        missing = [n for n in names if n not in keys.columns]
        if missing:
            raise ValueError(f"keys for '{feature_set.name}' lack columns {missing}")
        return [tuple(row) for row in keys[names].itertuples(index=False, name=None)]
    if isinstance(keys, Mapping):
        keys = [keys]
    if not isinstance(keys, Sequence) or isinstance(keys, str | bytes):
        keys = [keys]
    result: list[tuple[Any, ...]] = []
    for key in keys:
        if isinstance(key, Mapping):
            missing = [n for n in names if n not in key]
            if missing:
                raise ValueError(f"key {key!r} for '{feature_set.name}' lacks {missing}")
            result.append(tuple(key[n] for n in names))
        elif isinstance(key, tuple):
            if len(key) != len(names):
                raise ValueError(
                    f"key {key!r} for '{feature_set.name}' is not ({', '.join(names)})"
                )
            result.append(key)
        elif len(names) == 1:
            result.append((key,))
        else:
            raise ValueError(
                f"'{feature_set.name}' has a composite key ({', '.join(names)}); "
                "pass dicts or tuples"
            )
    return result
