"""What an aggregated feature set keeps and serves: states, resolutions, retention."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fs_dagster.aggregation.states import StateSpec, state_specs
from fs_dagster.aggregation.tiles import read_spans, resolutions_for, retention_seconds
from fs_dagster.definitions.aggregations import AggregateSpec, Window
from fs_dagster.definitions.feature_set import FeatureSet
from fs_dagster.stores.online.base import ColumnKind, OnlineColumn, TileTable

__all__ = ["AggregationPlan", "FeatureOutput"]


@dataclass(frozen=True)
class FeatureOutput:
    """One served feature: its name, aggregate and window."""

    name: str
    spec: AggregateSpec
    window: Window


@dataclass(frozen=True)
class AggregationPlan:
    """The compiled aggregation of one feature set (derived lists are computed once).

    Attributes:
        feature_set: the feature set.
        key_kinds: encoding of each key column.
        column_kinds: encoding of each aggregated column (as the transformation outputs it).
    """

    feature_set: FeatureSet
    key_kinds: Mapping[str, ColumnKind]
    column_kinds: Mapping[str, ColumnKind]

    @cached_property
    def outputs(self) -> list[FeatureOutput]:
        """Features in :attr:`FeatureSet.feature_names` order."""
        fs = self.feature_set
        return [
            FeatureOutput(spec.feature_name(window), spec, window)
            for spec in fs.aggregations
            for window in fs.windows
        ]

    @cached_property
    def states(self) -> list[StateSpec]:
        """States kept per tile."""
        return state_specs(self.feature_set.aggregations)

    @cached_property
    def window_seconds(self) -> list[int]:
        """Window lengths in seconds, in declared order."""
        return [w.seconds for w in self.feature_set.windows]

    @cached_property
    def resolutions(self) -> tuple[int, ...]:
        """Tile resolutions written for these windows."""
        return resolutions_for(self.window_seconds)

    @cached_property
    def _retentions(self) -> dict[int, int]:
        lateness = int(self.feature_set.allowed_lateness.total_seconds())
        return {r: retention_seconds(r, self.window_seconds, lateness) for r in self.resolutions}

    def retention(self, resolution: int) -> int:
        """Seconds tiles of ``resolution`` are kept behind the newest event."""
        return self._retentions[resolution]

    def expired_rung(
        self,
        at_micros: int,
        now_seconds: int,
        written_since: int | None,
        seeded_at: int | None = None,
    ) -> int | None:
        """A resolution whose tiles a read at ``at_micros`` needs but may have lost, or None.

        Tiles expire ``retention(r)`` seconds after their last write, and a tile is never
        written before its start (events are not ingested before they happen) nor before
        ``written_since`` (when its table was created, if known). A backfill seeding at
        ``seeded_at`` skips tiles whose retention had passed by then. So a read is
        complete when, for each resolution, its first needed tile cannot be gone.
        """
        for needed in read_spans(tuple(self.window_seconds), at_micros, self.resolutions):
            retention = self.retention(needed.resolution)
            written = max(needed.first, written_since or needed.first)
            skipped = seeded_at is not None and needed.first + retention < seeded_at
            if skipped or written + retention <= now_seconds:
                return needed.resolution
        return None

    @property
    def tile_table(self) -> TileTable:
        """The online tile table."""
        return TileTable(
            name=f"{self.feature_set.storage_name}__tiles",
            keys=tuple(OnlineColumn(k, self.key_kinds[k]) for k in self.feature_set.key),
        )

    def layout(self) -> dict[str, Any]:
        """What a Spark-free reader needs besides the definition: column encodings."""
        return {"keys": dict(self.key_kinds), "columns": dict(self.column_kinds)}
