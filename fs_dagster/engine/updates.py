"""Live combined vectors: after each online micro-batch, one vector per updated key.

:class:`CombinedUpdates` is the last writer of an online ingestion started with
``on_update=`` (see :func:`fs_dagster.engine.pipeline.start_ingestion`). It runs after the
batch's online store writes, takes the keys the batch updated, reads their combined
vectors with :func:`~fs_dagster.engine.combined.online_vectors` (the read
``FeatureStore.get_online_features(features=...)`` makes) and calls the callback once per
key: all features in a single object, as real-time inference wants them.

Delivery is at least once: the callback runs on the driver inside the batch, so an error
it raises fails the batch (and stops the query), and a batch replayed after a restart
calls it again for its keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyspark.sql import Window
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.types import StructType

from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.engine.combined import CombinedFeatures, KeyRows, OnlineReader, online_vectors
from fs_dagster.engine.computation import BatchContext, Computed, event_micros
from fs_dagster.engine.writers import Outcome

__all__ = ["CombinedUpdates", "UpdateCallback"]

#: Receives one combined vector: key columns, ``"<set>.<feature>"`` values, and
#: ``"<set>.<timestamp column>"`` per set (see :mod:`fs_dagster.engine.combined`).
UpdateCallback = Callable[[dict[str, Any]], object]

_EVENT = "__fs_update_micros"
_RANK = "__fs_update_rank"


class CombinedUpdates:
    """Calls ``callback`` with the combined vector of each key a batch updated.

    The keys of ``feature_set`` updated by the batch come from its valid rows; key
    columns of other requested sets are taken from each key's newest row in the batch
    (so they must be output columns of ``feature_set``). Keys are called in the order of
    their newest event time. For aggregated sets the vector is read at the current time.

    Args:
        feature_set: the set being ingested online.
        combined: the features each vector holds.
        reader: the online read path (the one the client reads through).
        callback: called with each vector as a dict.
        schema: the output schema of ``feature_set``, to check the key columns.

    Raises:
        ValueError: a requested set's key column is not an output column of
            ``feature_set``.

    Example:
        >>> writer = CombinedUpdates(user_profile, combined, OnlineReader(store), print,
        ...                          schema=schema)  # doctest: +SKIP
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        combined: CombinedFeatures,
        reader: OnlineReader,
        callback: UpdateCallback,
        *,
        schema: StructType,
    ) -> None:
        missing = [c for c in combined.key_columns if c not in schema.fieldNames()]
        if missing:
            needs = ", ".join(
                f"'{fs.name}' ({', '.join(fs.key)})"
                for fs in combined.feature_sets
                if set(fs.key) & set(missing)
            )
            raise ValueError(
                f"on_update for '{feature_set.name}': key columns {missing} of {needs} are "
                f"not output columns of '{feature_set.name}' ({', '.join(schema.fieldNames())}),"
                " so an update cannot name their keys; request features of sets keyed by "
                "its output columns"
            )
        self.feature_set = feature_set
        self.combined = combined
        self.reader = reader
        self.callback = callback

    def write(self, computed: Computed, ctx: BatchContext) -> Outcome:
        """Read the vectors of the batch's updated keys and hand each to the callback."""
        if not computed.row_count:
            return Outcome()
        fs = self.feature_set
        keys = self.combined.key_columns
        # Other sets' key values come from the newest row of each of this set's keys.
        newest = Window.partitionBy(*[F.col(k) for k in fs.key]).orderBy(F.col(_EVENT).desc())
        updated = (
            computed.rows.withColumn(_EVENT, event_micros(fs))
            .withColumn(_RANK, F.row_number().over(newest))
            .where(F.col(_RANK) == 1)
            .orderBy(F.col(_EVENT), *[F.col(k) for k in fs.key])
            .select(*[F.col(k) for k in keys])
            .collect()
        )
        rows = [row.asDict() for row in updated]
        vectors = online_vectors(self.reader, self.combined, KeyRows(rows, tuple(keys)), None)
        records: list[dict[str, Any]] = vectors.to_dict("records")  # type: ignore[assignment]
        for vector in records:
            self.callback(vector)
        return Outcome()
